//! The capture producer.
//!
//! Idempotent (`enable.idempotence=true`, `acks=all`), so librdkafka retries never duplicate or
//! reorder messages within a partition. Deliveries are counted by a context callback; capture
//! only checkpoints after [`Producer::commit`] reported that *every* message sent so far was
//! acknowledged without error. Any delivery error is fatal for this producer: capture restarts
//! from its checkpoint, so the failed message is sent again, never skipped.
//!
//! Exactly-once (a `transactional_id`, the default on Apache Kafka): every message is sent
//! inside a Kafka transaction, opened by the first send after a commit; [`Producer::commit`]
//! adds a progress marker to every partition and commits the transaction, so a
//! `read_committed` consumer sees all of it or nothing. `init_transactions` at start fences an
//! older producer with the same id and aborts its open transaction. At-least-once (no id):
//! `commit` writes the markers and waits for every acknowledgement.
//!
//! A muted producer ([`Producer::set_muted`]) drops what it is given: capture mutes it while it
//! re-reads a stretch of binlog whose envelopes a committed transaction already holds.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode as Code;

use super::stats::{KafkaHealth, STATS_INTERVAL_MS};

/// Errors of the producer.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("kafka client setup failed: {0}")]
    Setup(#[source] KafkaError),
    #[error("--kafka-option {0} is fixed by frappe-cdc (idempotent producer, acks=all)")]
    FixedOption(String),
    #[error("kafka delivery failed: {0}")]
    Delivery(String),
    #[error(
        "kafka did not acknowledge {pending} messages within {timeout:?} (brokers {brokers} unreachable?)"
    )]
    FlushTimeout {
        pending: u64,
        timeout: Duration,
        brokers: String,
    },
    #[error(
        "Kafka at {brokers} refused this client: {reason}\n  fix: check security.protocol, sasl.mechanisms, sasl.username/sasl.password and ssl.ca.location in --kafka-config, and the ACLs of this user"
    )]
    Auth { brokers: String, reason: String },
    #[error(
        "Kafka at {brokers} did not answer within 30 s: {reason}\n  fix: check --brokers, that the brokers run, and the listener's security.protocol"
    )]
    Unreachable { brokers: String, reason: String },
    #[error("cannot create or inspect topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error(
        "message of {bytes} bytes exceeds message.max.bytes; raise --kafka-option message.max.bytes and the topic's max.message.bytes"
    )]
    TooLarge { bytes: usize },
    #[error(
        "Kafka transactions failed for transactional.id {id}: {reason}\n  fix: another capture with the same transactional.id (--transactional-id, default frappe-cdc.<topic>.<server-id>) took over: run one capture per id; on brokers without transactions use --delivery at-least-once"
    )]
    Transactions { id: String, reason: String },
}

/// Counts deliveries.
#[derive(Default)]
pub struct AckContext {
    acked: AtomicU64,
    failed: Mutex<Option<String>>,
    health: KafkaHealth,
}

impl ClientContext for AckContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.health.observe(&statistics);
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(e.to_string());
            }
        }
        self.acked.fetch_add(1, Ordering::Release);
    }
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub brokers: String,
    pub topic: String,
    pub partitions: i32,
    /// Replicas of each partition when capture creates the topic (-1: the brokers' default).
    pub replication: i32,
    /// Topic configs when capture creates the topic.
    pub topic_configs: Vec<(String, String)>,
    /// Partition by doctype (all documents of a doctype in one partition, so renames and
    /// cross-document order within a doctype hold) instead of by key.
    pub partition_by_doctype: bool,
    pub max_in_flight: u64,
    pub options: Vec<(String, String)>,
    /// Benchmarks only: drop every message instead of sending it (no broker contacted), to
    /// measure capture without Kafka.
    pub null_sink: bool,
    /// Exactly-once: the Kafka `transactional.id` (module docs); None for at-least-once.
    pub transactional_id: Option<String>,
}

/// The capture producer.
pub struct Producer {
    /// None for the null sink.
    inner: Option<ThreadedProducer<AckContext>>,
    topic: String,
    brokers: String,
    partitions: i32,
    by_doctype: bool,
    sent: u64,
    max_in_flight: u64,
    /// The `transactional.id` when exactly-once.
    transactional_id: Option<String>,
    /// A Kafka transaction is open.
    open: bool,
    /// Messages sent since the last commit.
    since_commit: u64,
    muted: bool,
    /// Transactions committed and aborted (metrics).
    pub commits: u64,
    pub aborts: u64,
}

/// librdkafka settings frappe-cdc relies on; `--kafka-option` may not override these.
const FIXED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];
const DEFAULTS: &[(&str, &str)] = &[
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("message.max.bytes", "16777216"),
    ("queue.buffering.max.kbytes", "65536"),
    ("queue.buffering.max.messages", "100000"),
    ("socket.keepalive.enable", "true"),
    ("statistics.interval.ms", STATS_INTERVAL_MS),
];

/// How long a transaction may stay open on the broker before it aborts it (the brokers'
/// default `transaction.max.timeout.ms` is 15 minutes; a big source transaction or snapshot
/// chunk must commit within this).
const TRANSACTION_TIMEOUT_MS: &str = "600000";

fn client_config(
    brokers: &str,
    options: &[(String, String)],
) -> Result<ClientConfig, ProducerError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in DEFAULTS {
        cfg.set(*k, *v);
    }
    for (k, v) in options {
        if FIXED.iter().any(|(f, _)| f == k) {
            return Err(ProducerError::FixedOption(k.clone()));
        }
        cfg.set(k, v);
    }
    for (k, v) in FIXED {
        cfg.set(*k, *v);
    }
    Ok(cfg)
}

/// A transactional call's error: retriable and abortable ones are delivery failures (capture
/// restarts from its checkpoint), the rest (fenced, unsupported, not authorized) halt.
fn txn_error(id: &str, brokers: &str, e: KafkaError) -> ProducerError {
    match &e {
        KafkaError::Transaction(t) if t.is_retriable() || t.txn_requires_abort() => {
            ProducerError::Delivery(e.to_string())
        }
        KafkaError::Transaction(t)
            if matches!(t.code(), Code::OperationTimedOut | Code::RequestTimedOut) =>
        {
            ProducerError::Unreachable {
                brokers: brokers.to_string(),
                reason: e.to_string(),
            }
        }
        _ => ProducerError::Transactions {
            id: id.to_string(),
            reason: e.to_string(),
        },
    }
}

/// FNV-1a, stable across versions, for doctype partitioning.
pub fn doctype_partition(doctype: &str, partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in doctype.as_bytes() {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % partitions.max(1) as u32) as i32
}

impl Producer {
    /// Creates the producer; exactly-once also initialises transactions (blocks up to 30 s:
    /// call off the async runtime's worker or with `block_in_place`).
    pub fn new(cfg: &ProducerConfig) -> Result<Producer, ProducerError> {
        let transactional_id = cfg.transactional_id.clone().filter(|_| !cfg.null_sink);
        let inner: Option<ThreadedProducer<AckContext>> = if cfg.null_sink {
            None
        } else {
            let mut c = client_config(&cfg.brokers, &cfg.options)?;
            if let Some(id) = &transactional_id {
                c.set("transactional.id", id);
                if !cfg
                    .options
                    .iter()
                    .any(|(k, _)| k == "transaction.timeout.ms")
                {
                    c.set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS);
                }
            }
            let p: ThreadedProducer<AckContext> = c
                .create_with_context(AckContext::default())
                .map_err(ProducerError::Setup)?;
            if let Some(id) = &transactional_id {
                p.init_transactions(Duration::from_secs(30))
                    .map_err(|e| txn_error(id, &cfg.brokers, e))?;
            }
            Some(p)
        };
        Ok(Producer {
            inner,
            topic: cfg.topic.clone(),
            brokers: cfg.brokers.clone(),
            partitions: cfg.partitions,
            by_doctype: cfg.partition_by_doctype,
            sent: 0,
            max_in_flight: cfg.max_in_flight.max(1),
            transactional_id,
            open: false,
            since_commit: 0,
            muted: false,
            commits: 0,
            aborts: 0,
        })
    }

    /// True when the producer writes in Kafka transactions.
    pub fn exactly_once(&self) -> bool {
        self.transactional_id.is_some()
    }

    /// While muted, `send` drops messages (module docs).
    pub fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
    }

    pub fn muted(&self) -> bool {
        self.muted
    }

    /// Number of partitions messages are spread over.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    fn check_failed(&self) -> Result<(), ProducerError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let f = inner
            .context()
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*f {
            Some(e) => Err(ProducerError::Delivery(e.clone())),
            None => Ok(()),
        }
    }

    /// Connection health from the client's statistics (None for the null sink).
    pub fn health(&self) -> Option<&KafkaHealth> {
        self.inner.as_ref().map(|i| &i.context().health)
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        match &self.inner {
            Some(inner) => self
                .sent
                .saturating_sub(inner.context().acked.load(Ordering::Acquire)),
            None => 0,
        }
    }

    /// Sends one message (`payload` None is a tombstone). Blocks while the in-flight window or
    /// librdkafka's queue is full.
    pub fn send(
        &mut self,
        doctype: &str,
        key: &[u8],
        payload: Option<&[u8]>,
    ) -> Result<(), ProducerError> {
        if self.muted {
            return Ok(());
        }
        let Some(inner) = &self.inner else {
            self.sent += 1;
            self.since_commit += 1;
            return Ok(());
        };
        if let Some(id) = &self.transactional_id
            && !self.open
        {
            inner
                .begin_transaction()
                .map_err(|e| txn_error(id, &self.brokers, e))?;
            self.open = true;
        }
        while self.in_flight() >= self.max_in_flight {
            self.check_failed()?;
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut rec: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&self.topic).key(key);
        if let Some(p) = payload {
            rec = rec.payload(p);
        }
        if self.by_doctype {
            rec = rec.partition(doctype_partition(doctype, self.partitions));
        }
        self.enqueue(inner, rec)?;
        self.sent += 1;
        self.since_commit += 1;
        Ok(())
    }

    /// Hands `rec` to librdkafka, waiting while its queue is full (a delivery that failed
    /// meanwhile ends the wait with that failure).
    fn enqueue(
        &self,
        inner: &ThreadedProducer<AckContext>,
        mut rec: BaseRecord<'_, [u8], [u8], ()>,
    ) -> Result<(), ProducerError> {
        let bytes = rec.payload.map_or(0, <[u8]>::len);
        loop {
            match inner.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(Code::QueueFull), r)) => {
                    rec = r;
                    self.check_failed()?;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((KafkaError::MessageProduction(Code::MessageSizeTooLarge), _)) => {
                    return Err(ProducerError::TooLarge { bytes });
                }
                Err((e, _)) => return Err(ProducerError::Delivery(e.to_string())),
            }
        }
    }

    /// Makes everything sent since the last commit durable and visible: a progress marker
    /// (`marker(partition)`) to every partition after it, then the transaction's commit
    /// (exactly-once) or every acknowledgement (at-least-once). Nothing sent: nothing to do.
    /// On an error nothing of this commit is visible to `read_committed` consumers (the
    /// transaction is aborted); capture then restarts from its checkpoint.
    pub fn commit(
        &mut self,
        marker: impl Fn(i32) -> Vec<u8>,
        timeout: Duration,
    ) -> Result<(), ProducerError> {
        if self.since_commit == 0 {
            return Ok(());
        }
        let muted = std::mem::replace(&mut self.muted, false);
        let r = self.send_markers(&marker);
        self.muted = muted;
        r?;
        self.flush(timeout)?;
        if let (Some(inner), Some(id)) = (&self.inner, &self.transactional_id)
            && self.open
        {
            let deadline = Instant::now() + timeout;
            loop {
                match inner.commit_transaction(timeout) {
                    Ok(()) => break,
                    Err(KafkaError::Transaction(e))
                        if e.is_retriable() && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => {
                        self.open = false;
                        let abortable =
                            matches!(&e, KafkaError::Transaction(t) if t.txn_requires_abort());
                        if abortable {
                            let _ = inner.abort_transaction(timeout);
                            self.aborts += 1;
                            return Err(ProducerError::Delivery(format!(
                                "transaction aborted: {e}"
                            )));
                        }
                        return Err(txn_error(id, &self.brokers, e));
                    }
                }
            }
            self.open = false;
            self.commits += 1;
        }
        self.since_commit = 0;
        Ok(())
    }

    fn send_markers(&mut self, marker: &impl Fn(i32) -> Vec<u8>) -> Result<(), ProducerError> {
        use crate::progress::{TYPE_HEADER, TYPE_PROGRESS, key};
        use rdkafka::message::{Header, OwnedHeaders};
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        for p in 0..self.partitions {
            let (k, v) = (key(p), marker(p));
            let headers = OwnedHeaders::new().insert(Header {
                key: TYPE_HEADER,
                value: Some(TYPE_PROGRESS),
            });
            let rec: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&self.topic)
                .key(&k[..])
                .payload(&v[..])
                .partition(p)
                .headers(headers);
            self.enqueue(inner, rec)?;
            self.sent += 1;
        }
        Ok(())
    }

    /// Waits until every message sent so far is acknowledged; errors if any failed.
    pub fn flush(&self, timeout: Duration) -> Result<(), ProducerError> {
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 {
            self.check_failed()?;
            if Instant::now() > deadline {
                return Err(ProducerError::FlushTimeout {
                    pending: self.in_flight(),
                    timeout,
                    brokers: self.brokers.clone(),
                });
            }
            if let Some(inner) = &self.inner {
                let _ = inner.flush(Duration::from_millis(100));
            }
        }
        self.check_failed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctype_partition_is_stable_and_in_range() {
        for p in 1..8 {
            let a = doctype_partition("Sales Invoice", p);
            assert!((0..p).contains(&a));
            assert_eq!(a, doctype_partition("Sales Invoice", p));
        }
        assert_eq!(doctype_partition("x", 0), 0);
    }

    #[test]
    fn fixed_settings_cannot_be_overridden() {
        assert!(client_config("b:1", &[("acks".into(), "1".into())]).is_err());
        assert!(client_config("b:1", &[("linger.ms".into(), "50".into())]).is_ok());
    }
}

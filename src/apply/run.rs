//! The apply loop: consume the topic and apply each envelope in one replica transaction.
//!
//! Consistency: the replica transaction that writes a document also stores the partition's
//! next offset (`_frappe_cdc_offsets`) and the document's applied source position
//! (`_frappe_cdc_applied`). On start the consumer is assigned every partition at the stored
//! offsets, so after a crash anywhere the first message not committed on the replica is read
//! again and nothing is applied twice or skipped. Kafka's own group offsets are committed too,
//! for lag tools only. Transient failures (replica unreachable, deadlock, lock wait) retry
//! the same message with capped backoff; a message that can never apply (a key or value
//! `admit.rs` rejects, a table or value the replica rejects) goes to the dead-letter topic with
//! the reason and its coordinates in headers, and the partition moves on; nothing of it is
//! written. A document whose child rows belong to another document on the replica is a
//! conflict (`ownership.rs`), checked in the same locked transaction as the write.
//!
//! Pipelining: the envelopes of the next polled batch are parsed on a blocking thread while
//! the current batch's replica transaction runs; batches are still applied strictly in
//! order, one at a time, so nothing above changes. A batch parsed but not yet applied when
//! the process stops is simply read again from the stored offsets.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::admit::{Admitted, admit_from};
use super::bulk::{BulkError, BulkItem, BulkMode, BulkResult, apply_bulk};
use super::config::Consistency;
pub use super::config::{ApplyConfig, RowFilter};
use super::control::{self, EventKey};
use super::decision::Comparator;
use super::document::apply_document_held;
use super::infile;
use super::lag::LagWatcher;
pub use super::outcome::Outcome;
use super::policy::{Policies, Policy};
use super::replica::{ReplicaError, SchemaCache};
use super::sequence::{self, Kind, Sequencer};
use crate::envelope::{Envelope, Op};
use crate::failure::{self, Class};
use crate::frappe::catalog::{Filter, IGNORED_COLUMNS};
use crate::kafka::producer::ProducerError;
use crate::kafka::stats::{HealthContext, HealthCounters, STATS_INTERVAL_MS};
use crate::kafka::topic::{
    TopicSpec, client as kafka_client, ensure_topic, is_auth_failure, probe, topic_info,
};
use crate::metrics::{ApplyMetrics, BoundedLabels};

mod batch;
mod idle;
mod one;
mod whole;

use batch::{Pending, bulkable};
use whole::Whole;

/// A polled message as parsed off the apply task: how it can be applied, and what the
/// sequencer needs to know of it.
type Parsed = (Option<Pending>, Kind);

/// Errors that stop apply.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("kafka: {0}")]
    Kafka(String),
    #[error(
        "topic {topic} no longer holds the next offset this replica needs ({detail}): retention deleted messages apply never read, so the replica has missed documents\n  fix: re-snapshot: rebuild the replica (README, \"Kafka in production\"), and give the topic a retention longer than apply's worst outage; or reset the group to accept the gap: DELETE FROM _frappe_cdc_offsets WHERE consumer_group = '<group>' AND topic = '{topic}' on the replica, then start apply (it reads from the oldest message held and writes documents it lacks from their latest message), and run verify"
    )]
    OffsetGone { topic: String, detail: String },
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("the replica refused apply's work: {error}\n  fix: {fix}")]
    Halt {
        error: ReplicaError,
        fix: &'static str,
    },
    #[error("cannot connect to the replica {target}: {error}\n  fix: {fix}")]
    Connect {
        target: String,
        error: Box<mysql_async::Error>,
        fix: &'static str,
    },
    #[error(
        "kafka refused apply ({brokers}): {reason}\n  fix: check --kafka-option / --kafka-config security settings (SASL user and password, TLS CA) and the ACLs of the group and topics"
    )]
    KafkaAuth { brokers: String, reason: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ApplyError {
    /// `Halt` errors exit 2 (an operator must fix something); others exit 1.
    pub fn class(&self) -> Class {
        match self {
            ApplyError::OffsetGone { .. }
            | ApplyError::Halt { .. }
            | ApplyError::Connect { .. }
            | ApplyError::KafkaAuth { .. } => Class::Halt,
            ApplyError::Replica(e) => e.class(),
            ApplyError::Kafka(_) | ApplyError::Internal(_) => Class::Retry,
        }
    }

    fn halt(error: ReplicaError) -> ApplyError {
        let fix = failure::server_fix(error.server_code().unwrap_or(0));
        ApplyError::Halt { error, fix }
    }
}

/// Lock wait timeout, deadlock.
const LOCK_ERRORS: [u16; 2] = [1205, 1213];

/// True for failures a retry can cure (the error policy's `Retry`, `failure.rs`).
fn transient(e: &ReplicaError) -> bool {
    e.class() == Class::Retry
}

/// A lock wait timeout or a deadlock.
fn lock_failure(e: &ReplicaError) -> bool {
    e.server_code().is_some_and(|c| LOCK_ERRORS.contains(&c))
}

/// Capped exponential backoff for retries that must not move past the current message.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    /// Counts and logs a retry of `what`, then waits; false when shutdown came first.
    async fn wait(
        &mut self,
        metrics: &ApplyMetrics,
        what: &str,
        error: &dyn std::fmt::Display,
        shutdown: &CancellationToken,
    ) -> bool {
        metrics.retries.inc();
        metrics.ready.store(false, Ordering::Release);
        tracing::warn!(error = %error, retry_in = ?self.next, "{what}");
        let go_on = tokio::select! {
            _ = tokio::time::sleep(self.next) => true,
            _ = shutdown.cancelled() => false,
        };
        self.next = (self.next * 2).min(self.max);
        go_on
    }
}

struct Applier {
    cfg: ApplyConfig,
    pool: Pool,
    cache: SchemaCache,
    cmp: Comparator,
    metrics: ApplyMetrics,
    missing_logged: std::collections::BTreeSet<(String, String)>,
    /// Doctype labels of the conflict decisions metric (bounded).
    decision_labels: BoundedLabels,
    /// New rows go through `LOAD DATA LOCAL INFILE` until the replica refuses it.
    load_data: bool,
    /// The last split batch failed on a lock: its retry runs as one transaction.
    serial_retry: bool,
    /// The last batch found rows of a new document already on the replica: its retry reads
    /// every copy (see bulk.rs).
    read_new: bool,
    /// Started without stored offsets (a fresh replica): per partition, the high watermark
    /// seen at start. Below it, a document missing on the replica is written from its
    /// message (`Comparator::missing_is_new`): its earlier versions may be compacted away.
    bootstrap_until: BTreeMap<i32, i64>,
    /// The consumer positions last stored while idle (`idle.rs`).
    idle_positions: BTreeMap<i32, i64>,
}

impl Applier {
    /// Counts conflict decisions of a committed transaction.
    fn count_decisions(&mut self, decisions: Vec<(String, &'static str, &'static str)>) {
        for (doctype, policy, decision) in decisions {
            let label = self.decision_labels.get(&doctype);
            self.metrics
                .conflict_decisions
                .with_label_values(&[label, policy, decision])
                .inc();
        }
    }
}

/// Runs apply until shutdown.
pub async fn run(
    cfg: ApplyConfig,
    metrics: ApplyMetrics,
    shutdown: CancellationToken,
) -> Result<(), ApplyError> {
    // Serves the in-memory files of the bulk path's LOAD DATA LOCAL statements (only those);
    // keeps the upserts' prepared statements (`execute/upserts.rs`).
    let opts = mysql_async::OptsBuilder::from_opts(cfg.replica.opts.clone())
        .local_infile_handler(Some(super::infile::handler))
        .stmt_cache_size(super::execute::STMT_CACHE);
    let pool = Pool::new(opts);
    let mut conn = loop {
        match pool.get_conn().await {
            Ok(c) => break c,
            Err(e) if failure::mysql(&e) != Class::Retry => {
                let fix = failure::mysql_fix(&e);
                return Err(ApplyError::Connect {
                    target: cfg.replica.to_string(),
                    error: Box::new(e),
                    fix,
                });
            }
            Err(e) => {
                tracing::warn!(replica = %cfg.replica, error = %e, "cannot reach the replica; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    };
    control::ensure_tables(&mut conn).await?;
    control::ensure_conflicts_table(&mut conn).await?;
    // Attachments: the fetcher works beside apply until it returns (files/fetch.rs).
    let _files = match &cfg.files {
        Some(f) => {
            crate::files::status::ensure_table(&mut conn).await?;
            let stop = shutdown.child_token();
            tokio::spawn(crate::files::fetch::run(
                pool.clone(),
                Arc::clone(f),
                metrics.files.clone(),
                stop.clone(),
            ));
            Some(stop.drop_guard())
        }
        None => None,
    };
    let stored = control::stored_offsets(&mut conn, &cfg.group, &cfg.topic).await?;
    drop(conn);
    let mut consumer_cfg = ClientConfig::new();
    // Tuning defaults, which --kafka-option may override:
    // Bounded prefetch: ~4 MiB queued and 4 MiB a fetch (librdkafka's defaults are 64 MiB
    // and 50 MiB); the 16 MiB of each took ~25 MiB of apply's peak RSS in the backlog
    // bench with no gain in speed. A message larger than a fetch (capture sends up to
    // 16 MiB) still arrives: the broker returns an oversized first batch whole (KIP-74;
    // tests/apply_e2e.rs `a_message_larger_than_a_fetch_is_applied`).
    consumer_cfg
        .set("fetch.wait.max.ms", "50")
        .set("fetch.max.bytes", "4194304")
        .set("queued.max.messages.kbytes", "4096")
        .set("max.partition.fetch.bytes", "1048576");
    for (k, v) in &cfg.kafka_options {
        consumer_cfg.set(k, v);
    }
    // What apply's guarantees rest on, whatever --kafka-option says.
    let consumer: BaseConsumer<HealthContext> = consumer_cfg
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .set("isolation.level", "read_committed")
        // I9 (ARCHITECTURE.md). Offsets come from the replica; one the topic no longer holds must stop apply, not
        // jump to the end (librdkafka's default) and skip documents.
        .set("auto.offset.reset", "error")
        .create_with_context(HealthContext::default())
        .map_err(|e| ApplyError::Kafka(e.to_string()))?;
    let dlq: FutureProducer = kafka_client(&cfg.brokers, &cfg.kafka_options)
        .set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", "16777216")
        .create()
        .map_err(|e| ApplyError::Kafka(e.to_string()))?;
    // Wrong credentials or TLS trust end apply now; an unreachable cluster is waited for.
    match tokio::task::block_in_place(|| probe(&cfg.brokers, &cfg.kafka_options)) {
        Err(ProducerError::Auth { brokers, reason }) => {
            return Err(ApplyError::KafkaAuth { brokers, reason });
        }
        Err(e) => tracing::warn!(error = %e, "kafka not reachable yet; waiting for it"),
        Ok(()) => {}
    }
    // Capture creates the topic; apply started first waits for it (as Kafka consumers do).
    let mut waited = Duration::ZERO;
    let info = loop {
        if let Some(info) = tokio::task::block_in_place(|| topic_info(&consumer, &cfg.topic)) {
            break info;
        }
        if waited.as_secs() % 30 == 0 {
            tracing::warn!(topic = %cfg.topic, waited_s = waited.as_secs(), "topic does not exist yet: waiting for capture to create it");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        waited += Duration::from_secs(1);
    };
    // The dead-letter topic gets the envelope topic's replication: it holds messages that
    // exist nowhere else once the envelope topic's retention passes.
    // Kafka numbers a topic's partitions 0..n.
    let parts: Vec<i32> = (0..info.partitions).collect();
    let dlq_spec = TopicSpec {
        replication: info.replication,
        ..TopicSpec::single()
    };
    ensure_topic(
        &cfg.brokers,
        &cfg.dead_letter_topic,
        &dlq_spec,
        &cfg.kafka_options,
    )
    .await
    .map_err(|e| ApplyError::Kafka(e.to_string()))?;
    let bootstrap_until: BTreeMap<i32, i64> = if stored.is_empty() {
        parts
            .iter()
            .filter_map(|p| {
                consumer
                    .fetch_watermarks(&cfg.topic, *p, Duration::from_secs(10))
                    .ok()
                    .map(|(_, high)| (*p, high))
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    if !bootstrap_until.is_empty() {
        tracing::info!(
            "no offsets stored in the replica: building a fresh replica; up to the current end of the topic, documents missing on it are written from their latest message (earlier versions may have been compacted away)"
        );
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        let off = stored
            .iter()
            .find(|(sp, _)| sp == p)
            .map_or(Offset::Beginning, |(_, o)| Offset::Offset(*o));
        tpl.add_partition_offset(&cfg.topic, *p, off)
            .map_err(|e| ApplyError::Kafka(e.to_string()))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| ApplyError::Kafka(e.to_string()))?;
    consumer.context().health.attach(HealthCounters {
        disconnects: metrics.kafka_disconnects.clone(),
        retries: metrics.kafka_retries.clone(),
        timeouts: metrics.kafka_timeouts.clone(),
    });
    // Kafka's view of the group starts where the replica's offsets are, so lag tools agree
    // with the gauge from the first second (best effort: the replica's copy is the truth).
    let mut start = TopicPartitionList::new();
    for (p, o) in &stored {
        let _ = start.add_partition_offset(&cfg.topic, *p, Offset::Offset(*o));
    }
    if start.count() > 0
        && let Err(e) = consumer.commit(&start, rdkafka::consumer::CommitMode::Sync)
    {
        tracing::warn!(error = %e, "could not commit the replica's offsets to Kafka");
    }
    let _lag = LagWatcher::start(
        kafka_client(&cfg.brokers, &cfg.kafka_options),
        &cfg.group,
        &cfg.topic,
        metrics.consumer_lag.clone(),
        Duration::from_secs(2),
    )
    .map_err(|e| ApplyError::Kafka(e.to_string()))?;
    tracing::info!(topic = %cfg.topic, group = %cfg.group, partitions = parts.len(), "apply started");
    metrics.ready.store(true, Ordering::Release);
    let _conflicts_gauge = control::watch_open_conflicts(
        pool.clone(),
        (
            metrics.open_conflicts.clone(),
            metrics.oldest_open_conflict.clone(),
        ),
        Duration::from_secs(5),
    );
    for p in Policy::ALL {
        let d = if p == Policy::Manual {
            "open"
        } else {
            "accept_primary"
        };
        metrics
            .conflict_decisions
            .with_label_values(&["_other", p.label(), d]);
    }
    if cfg.policies != Policies::default() {
        tracing::info!(policies = %cfg.policies.summary(), "conflict policies");
    }
    let mut applier = Applier {
        cmp: Comparator::new(
            IGNORED_COLUMNS
                .iter()
                .map(|s| s.to_string())
                .chain(cfg.ignore_columns.iter().cloned()),
        )
        .with_policies(cfg.policies.clone()),
        cfg,
        pool,
        cache: SchemaCache::default(),
        metrics,
        missing_logged: Default::default(),
        decision_labels: BoundedLabels::new(500, "_other"),
        load_data: true,
        serial_retry: false,
        read_new: false,
        bootstrap_until,
        idle_positions: BTreeMap::new(),
    };
    let mut io = LoopIo {
        consumer: &consumer,
        dlq: &dlq,
        labels: BoundedLabels::new(500, "_other"),
        shutdown: &shutdown,
    };
    // Envelope parsing of batch N+1 runs on a blocking thread while batch N is applied.
    let rules = Arc::new((applier.cfg.filter.clone(), applier.cfg.row_filters.clone()));
    let mut ready: Option<(Vec<OwnedMessage>, Vec<Parsed>)> = None;
    let mut whole = (applier.cfg.consistency == Consistency::Transaction)
        .then(|| Whole::new(&parts, applier.cfg.max_transaction_docs));
    while !shutdown.is_cancelled() {
        // While a parsed batch waits, only take what is already fetched: the waiting batch
        // is applied right away, and the new one is parsed meanwhile.
        let wait = if ready.is_some() {
            Duration::ZERO
        } else {
            Duration::from_millis(200)
        };
        let msgs = tokio::task::block_in_place(|| {
            poll_batch(&consumer, wait, applier.cfg.batch_size.max(1))
        })
        .map_err(|e| {
            if e.rdkafka_error_code().is_some_and(is_auth_failure) {
                ApplyError::KafkaAuth {
                    brokers: applier.cfg.brokers.clone(),
                    reason: e.to_string(),
                }
            } else {
                ApplyError::OffsetGone {
                    topic: applier.cfg.topic.clone(),
                    detail: e.to_string(),
                }
            }
        })?;
        // Held messages (transaction mode) are behind the consumer's position: only store it
        // when nothing is held.
        if msgs.is_empty() && ready.is_none() && whole.as_ref().is_none_or(|w| w.seq.held() == 0) {
            applier.store_idle_positions(&io).await;
        }
        let parsing = (!msgs.is_empty()).then(|| {
            let rules = Arc::clone(&rules);
            tokio::task::spawn_blocking(move || {
                let parsed: Vec<Parsed> = msgs
                    .iter()
                    .map(|m| bulkable(&rules.0, &rules.1, m))
                    .collect();
                (msgs, parsed)
            })
        });
        if let Some((msgs, parsed)) = ready.take() {
            let done = match whole.as_mut() {
                Some(w) => applier.apply_whole(&mut io, w, msgs, parsed).await?,
                None => applier.apply_batch(&mut io, msgs, parsed).await?,
            };
            if !done {
                return Ok(());
            }
            applier.metrics.ready.store(true, Ordering::Release);
        }
        if let Some(p) = parsing {
            ready = Some(
                p.await
                    .map_err(|_| ApplyError::Internal("envelope parsing task failed"))?,
            );
        }
    }
    Ok(())
}

/// Up to `max` messages: the first waits up to `wait`, the rest only if already fetched.
/// Transient consumer errors are logged and end the batch; halting ones are returned: an
/// offset the topic no longer holds (`auto.offset.reset=error`; skipping to another offset
/// would silently lose documents), and authentication or authorization failures.
fn poll_batch(
    consumer: &BaseConsumer<HealthContext>,
    wait: Duration,
    max: usize,
) -> Result<Vec<OwnedMessage>, KafkaError> {
    let mut msgs = Vec::new();
    let mut timeout = wait;
    while msgs.len() < max {
        match consumer.poll(timeout) {
            Some(Ok(m)) => msgs.push(m.detach()),
            Some(Err(e)) if failure::kafka(&e) == Class::Halt => return Err(e),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka consume error");
                break;
            }
            None => break,
        }
        timeout = Duration::ZERO;
    }
    Ok(msgs)
}

/// What the apply loop hands to the per-batch and per-message paths.
struct LoopIo<'a> {
    consumer: &'a BaseConsumer<HealthContext>,
    dlq: &'a FutureProducer,
    labels: BoundedLabels,
    shutdown: &'a CancellationToken,
}

impl LoopIo<'_> {
    fn commit(&self, topic: &str, offsets: &BTreeMap<i32, i64>) {
        let mut commit = TopicPartitionList::new();
        for (p, next) in offsets {
            let _ = commit.add_partition_offset(topic, *p, Offset::Offset(*next));
        }
        let _ = self
            .consumer
            .commit(&commit, rdkafka::consumer::CommitMode::Async);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_failures_are_transient_and_told_apart() {
        let server = |code: u16| {
            ReplicaError::from(mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: String::new(),
                state: String::new(),
            }))
        };
        for code in [1205, 1213] {
            assert!(
                transient(&server(code)) && lock_failure(&server(code)),
                "{code}"
            );
        }
        for code in [1040, 1053, 2006, 2013, 1927] {
            assert!(
                transient(&server(code)) && !lock_failure(&server(code)),
                "{code}"
            );
        }
        let io = ReplicaError::from(mysql_async::Error::Io(mysql_async::IoError::Io(
            std::io::Error::other("reset"),
        )));
        assert!(transient(&io) && !lock_failure(&io));
        assert!(!transient(&server(1146)) && !lock_failure(&server(1146)));
        let bad = ReplicaError::UnknownTable { table: "t".into() };
        assert!(!transient(&bad) && !lock_failure(&bad));
    }
}

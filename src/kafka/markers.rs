//! Reading the newest committed progress marker (`progress.rs`) of a topic: what an
//! exactly-once capture already committed, read when it starts (after `init_transactions`,
//! which aborted any transaction its previous instance left open, so the last stable offset
//! is the end of the partition).
//!
//! Every commit writes a marker to every partition, so partition 0 holds the newest one. It is
//! found by reading the end of partition 0 with `isolation.level=read_committed`, in windows
//! that grow backwards from the end (a commit's own documents sit before its marker).

use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::producer::ProducerError;
use super::topic::client;
use crate::progress::{Progress, parse_key};

/// Logs client errors like the default context, except the end-of-partition events this
/// reader asks for (`enable.partition.eof`), which are how it knows it read everything.
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(error = %error, reason, "kafka client error while reading progress markers");
        }
    }
}

impl ConsumerContext for Quiet {}

/// The newest committed marker on partition 0 of `topic`, None when there is none. Only
/// markers of `epoch` count: a newer marker of another epoch (another capture state on this
/// topic) means this capture committed nothing after it, and None is returned.
pub fn last_marker(
    brokers: &str,
    options: &[(String, String)],
    topic: &str,
    epoch: &str,
) -> Result<Option<Progress>, ProducerError> {
    let unreachable = |e: KafkaError| ProducerError::Unreachable {
        brokers: brokers.to_string(),
        reason: e.to_string(),
    };
    let mut cfg = client(brokers, options);
    cfg.set("group.id", "frappe-cdc-capture-markers")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10");
    let c: BaseConsumer<Quiet> = cfg
        .create_with_context(Quiet)
        .map_err(ProducerError::Setup)?;
    let (low, high) = c
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .map_err(unreachable)?;
    let mut window: i64 = 4096;
    loop {
        let start = (high - window).max(low);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(start))
            .map_err(unreachable)?;
        c.assign(&tpl).map_err(unreachable)?;
        let mut newest: Option<Progress> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if Instant::now() > deadline {
                return Err(ProducerError::Unreachable {
                    brokers: brokers.to_string(),
                    reason: format!("reading the end of {topic} partition 0 took over 60 s"),
                });
            }
            match c.poll(Duration::from_millis(500)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    if let KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange) = e {
                        break;
                    }
                    return Err(unreachable(e));
                }
                Some(Ok(m)) => {
                    if m.key().and_then(parse_key).is_some()
                        && let Some(Ok(p)) = m.payload().map(Progress::parse)
                    {
                        newest = Some(p);
                    }
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
            }
        }
        if let Some(p) = newest {
            return Ok((p.epoch == epoch).then_some(p));
        }
        if start == low {
            return Ok(None);
        }
        window = window.saturating_mul(8);
    }
}

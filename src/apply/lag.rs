//! Consumer lag per partition, as Kafka sees it: the partition's high watermark minus the
//! offset the apply group has committed to Kafka (what `kafka-consumer-groups --describe`
//! prints as LAG). A thread of its own refreshes the gauge every few seconds with its own
//! client, so the lag keeps growing on the dashboard while apply is stuck (replica down, a
//! lock held), which is when it matters. Apply commits to Kafka the offsets it stored in the
//! replica at start and after every replica commit, so the two views agree; the replica's
//! copy stays the one apply resumes from. Purely observational: nothing here moves offsets.
//!
//! A failed metadata, watermark or offset fetch leaves the gauge at its last value.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// The lag-watching thread; stopped and joined when dropped.
pub struct LagWatcher {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl LagWatcher {
    /// Starts watching `group` on `topic`. `client` holds the bootstrap servers and the
    /// connection settings; the group id is set here (the client never joins the group).
    pub fn start(
        mut client: ClientConfig,
        group: &str,
        topic: &str,
        gauge: IntGaugeVec,
        every: Duration,
    ) -> Result<LagWatcher, KafkaError> {
        let consumer: BaseConsumer = client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let topic = topic.to_string();
        let handle = std::thread::Builder::new()
            .name("consumer-lag".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    refresh(&consumer, &topic, &gauge);
                    let until = Instant::now() + every;
                    while Instant::now() < until && !flag.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .map_err(|_| {
                KafkaError::ClientCreation("cannot start the consumer-lag thread".into())
            })?;
        Ok(LagWatcher {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for LagWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One refresh: partitions, the group's committed offsets, watermarks.
fn refresh(consumer: &BaseConsumer, topic: &str, gauge: &IntGaugeVec) {
    let timeout = Duration::from_secs(5);
    let Ok(md) = consumer.fetch_metadata(Some(topic), timeout) else {
        return;
    };
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Invalid);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, timeout) else {
        return;
    };
    for e in committed.elements_for_topic(topic) {
        let next = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        let Ok((low, high)) = consumer.fetch_watermarks(topic, e.partition(), timeout) else {
            continue;
        };
        gauge
            .with_label_values(&[&e.partition().to_string()])
            .set(lag(low, high, next));
    }
}

/// Messages between the next offset (or the low watermark) and the high watermark, never < 0.
pub fn lag(low: i64, high: i64, next: Option<i64>) -> i64 {
    (high - next.unwrap_or(low).max(low)).max(0)
}

#[cfg(test)]
mod tests {
    use super::lag;

    #[test]
    fn lag_counts_unread_messages() {
        assert_eq!(lag(0, 100, Some(40)), 60);
        assert_eq!(
            lag(0, 100, None),
            100,
            "nothing committed: from the low watermark"
        );
        assert_eq!(lag(50, 100, Some(10)), 50, "compacted or deleted below low");
        assert_eq!(
            lag(0, 100, Some(120)),
            0,
            "a low high watermark never reads negative"
        );
    }
}

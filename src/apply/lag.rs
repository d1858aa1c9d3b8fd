//! Consumer lag per partition: the partition's high watermark minus the next offset apply will
//! read. Refreshed at most once per interval from the broker's watermarks; a failed fetch
//! leaves the gauge at its last value. Purely observational: nothing here affects offsets.
//!
//! (tansu 0.6 reports the high watermark as the last batch's base offset + 1, so on tansu the
//! gauge can read low; it is clamped at zero.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Tracks the next offset of every assigned partition.
pub struct ConsumerLag {
    topic: String,
    next: BTreeMap<i32, Option<i64>>,
    every: Duration,
    last: Option<Instant>,
}

impl ConsumerLag {
    /// Starts from the assignment (stored offsets; `Beginning` counts from the low watermark).
    pub fn new(topic: &str, assigned: &TopicPartitionList, every: Duration) -> Self {
        let next = assigned
            .elements_for_topic(topic)
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), o)
            })
            .collect();
        ConsumerLag {
            topic: topic.to_string(),
            next,
            every,
            last: None,
        }
    }

    /// Records that everything before `next` on `partition` is handled.
    pub fn applied(&mut self, partition: i32, next: i64) {
        self.next.insert(partition, Some(next));
    }

    /// Sets the gauges when the interval has passed (blocking broker calls, 2 s timeout each).
    pub fn refresh(&mut self, consumer: &BaseConsumer, gauge: &IntGaugeVec) {
        if self.last.is_some_and(|l| l.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        for (p, next) in &self.next {
            let Ok((low, high)) =
                consumer.fetch_watermarks(&self.topic, *p, Duration::from_secs(2))
            else {
                continue;
            };
            gauge
                .with_label_values(&[&p.to_string()])
                .set(lag(low, high, *next));
        }
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
            "nothing stored: from the low watermark"
        );
        assert_eq!(lag(50, 100, Some(10)), 50, "compacted or deleted below low");
        assert_eq!(
            lag(0, 100, Some(120)),
            0,
            "a low high watermark never reads negative"
        );
    }
}

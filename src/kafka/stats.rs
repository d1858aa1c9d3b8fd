//! Connection health of a librdkafka client, from its periodic statistics
//! (`statistics.interval.ms`): disconnects, request retries and request timeouts summed over
//! every broker the client talks to. librdkafka reports running totals per client;
//! [`KafkaHealth`] keeps them in atomics and adds their growth to the Prometheus counters
//! attached to it as each report arrives (on librdkafka's polling thread), so the counters
//! only ever go up, also while the process is blocked on Kafka and across client restarts
//! (a new client starts from zero and its growth is added). Observational only.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntCounter;
use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::statistics::Statistics;

/// How often librdkafka emits statistics (ms), for the clients that use [`KafkaHealth`].
pub const STATS_INTERVAL_MS: &str = "1000";

/// Totals from the latest statistics.
#[derive(Default, Debug)]
pub struct KafkaHealth {
    disconnects: AtomicU64,
    retries: AtomicU64,
    timeouts: AtomicU64,
    exported: [AtomicU64; 3],
    counters: OnceLock<HealthCounters>,
}

/// The Prometheus counters a [`KafkaHealth`] feeds.
#[derive(Clone, Debug)]
pub struct HealthCounters {
    pub disconnects: IntCounter,
    pub retries: IntCounter,
    pub timeouts: IntCounter,
}

impl KafkaHealth {
    /// Takes one statistics report.
    pub fn observe(&self, s: &Statistics) {
        let (mut d, mut r, mut t) = (0u64, 0u64, 0u64);
        for b in s.brokers.values() {
            d += b.disconnects.unwrap_or(0).max(0) as u64;
            r += b.txretries;
            t += b.req_timeouts;
        }
        self.disconnects.store(d, Ordering::Relaxed);
        self.retries.store(r, Ordering::Relaxed);
        self.timeouts.store(t, Ordering::Relaxed);
        if let Some(c) = self.counters.get() {
            self.export(c);
        }
    }

    /// From now on, every report adds its growth to `counters` (the first attach wins).
    pub fn attach(&self, counters: HealthCounters) {
        let _ = self.counters.set(counters);
        if let Some(c) = self.counters.get() {
            self.export(c);
        }
    }

    /// (disconnects, retries, timeouts) as last reported.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.disconnects.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.timeouts.load(Ordering::Relaxed),
        )
    }

    /// Adds the growth since the last export to the counters.
    fn export(&self, c: &HealthCounters) {
        let (d, r, t) = self.totals();
        for ((now, counter), done) in [(d, &c.disconnects), (r, &c.retries), (t, &c.timeouts)]
            .into_iter()
            .zip(&self.exported)
        {
            let before = done.swap(now, Ordering::Relaxed);
            if now > before {
                counter.inc_by(now - before);
            }
        }
    }
}

/// A client context that only records statistics (the apply consumer's).
#[derive(Default)]
pub struct HealthContext {
    pub health: KafkaHealth,
}

impl ClientContext for HealthContext {
    fn stats(&self, statistics: Statistics) {
        self.health.observe(&statistics);
    }
}

impl ConsumerContext for HealthContext {}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(disconnects: &[i64], retries: &[u64]) -> Statistics {
        let mut s = Statistics::default();
        for (i, (d, r)) in disconnects.iter().zip(retries).enumerate() {
            let b = rdkafka::statistics::Broker {
                disconnects: Some(*d),
                txretries: *r,
                ..Default::default()
            };
            s.brokers.insert(format!("b{i}"), b);
        }
        s
    }

    #[test]
    fn counters_grow_by_the_difference_and_never_fall() {
        let (d, r, t) = (
            IntCounter::new("d", "d").expect("c"),
            IntCounter::new("r", "r").expect("c"),
            IntCounter::new("t", "t").expect("c"),
        );
        let c = HealthCounters {
            disconnects: d.clone(),
            retries: r.clone(),
            timeouts: t.clone(),
        };
        let h = KafkaHealth::default();
        h.observe(&stats(&[1, 2], &[0, 5]));
        assert_eq!(d.get(), 0, "nothing attached yet");
        h.attach(c.clone());
        assert_eq!((d.get(), r.get(), t.get()), (3, 5, 0), "attach exports");
        h.observe(&stats(&[2, 2], &[1, 5]));
        h.observe(&stats(&[2, 2], &[1, 5]));
        assert_eq!((d.get(), r.get()), (4, 6));
        // A lower total (the client's counters restarted): nothing is subtracted, and growth
        // from there counts again.
        h.observe(&stats(&[0, 1], &[0, 0]));
        assert_eq!((d.get(), r.get()), (4, 6));
        h.observe(&stats(&[0, 3], &[0, 0]));
        assert_eq!(d.get(), 6);
        // A new client (capture restarting its producer) adds its own growth.
        let h2 = KafkaHealth::default();
        h2.attach(c);
        h2.observe(&stats(&[1], &[0]));
        assert_eq!(d.get(), 7);
    }
}

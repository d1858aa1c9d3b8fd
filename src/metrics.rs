//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! Names follow `frappe_cdc_<subsystem>_<name>_<unit>`; labels are bounded (doctype and table on
//! counters only, never document names or GTIDs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Metrics of `capture`.
#[derive(Clone)]
pub struct CaptureMetrics {
    pub registry: Registry,
    pub binlog_events: IntCounter,
    pub binlog_rows: IntCounterVec,
    pub transactions: IntCounterVec,
    pub documents: IntCounterVec,
    pub source_lag: Gauge,
    pub gtid_seq: GaugeVec,
    pub produce_errors: IntCounter,
    pub kafka_transactions: IntCounterVec,
    pub in_flight: IntGauge,
    pub checkpoint_age: Gauge,
    pub checkpoint_ts: Gauge,
    pub state_bytes: IntGauge,
    pub snapshot_rows: IntCounter,
    pub snapshot_rows_estimated: IntGauge,
    pub reconnects: IntCounter,
    pub tx_docs: Histogram,
    pub ddl: IntCounter,
    pub retention_headroom: Gauge,
    pub binlog_behind: IntGauge,
    pub binlog_expire: Gauge,
    pub kafka_disconnects: IntCounter,
    pub kafka_retries: IntCounter,
    pub kafka_timeouts: IntCounter,
}

pub(crate) fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are unique constants, so registration cannot collide.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl CaptureMetrics {
    /// Creates and registers every capture metric.
    pub fn new() -> Self {
        let r = Registry::new();
        register_build_info(&r);
        let m = CaptureMetrics {
            binlog_events: reg(&r, IntCounter::new("frappe_cdc_capture_binlog_events_total", "Binlog events read").unwrap_or_else(|_| unreachable_metric())),
            binlog_rows: reg(&r, IntCounterVec::new(Opts::new("frappe_cdc_capture_binlog_rows_total", "Row images decoded, by table and operation"), &["table", "op"]).unwrap_or_else(|_| unreachable_metric())),
            transactions: reg(&r, IntCounterVec::new(Opts::new("frappe_cdc_capture_transactions_total", "Source transactions, by outcome (emitted, filtered)"), &["outcome"]).unwrap_or_else(|_| unreachable_metric())),
            documents: reg(&r, IntCounterVec::new(Opts::new("frappe_cdc_capture_documents_total", "Document envelopes produced, by doctype and op"), &["doctype", "op"]).unwrap_or_else(|_| unreachable_metric())),
            kafka_transactions: reg(&r, IntCounterVec::new(Opts::new("frappe_cdc_capture_kafka_transactions_total", "Kafka transactions of the exactly-once producer, by outcome (committed, aborted)"), &["outcome"]).unwrap_or_else(|_| unreachable_metric())),
            source_lag: reg(&r, Gauge::new("frappe_cdc_capture_source_lag_seconds", "Now minus the commit time of the last binlog transaction read (0 when caught up and idle)").unwrap_or_else(|_| unreachable_metric())),
            gtid_seq: reg(&r, GaugeVec::new(Opts::new("frappe_cdc_capture_gtid_seq", "Sequence number of the last GTID read, by domain"), &["domain"]).unwrap_or_else(|_| unreachable_metric())),
            produce_errors: reg(&r, IntCounter::new("frappe_cdc_capture_kafka_produce_errors_total", "Kafka produce or delivery errors").unwrap_or_else(|_| unreachable_metric())),
            in_flight: reg(&r, IntGauge::new("frappe_cdc_capture_kafka_in_flight_messages", "Messages sent and not yet acknowledged").unwrap_or_else(|_| unreachable_metric())),
            checkpoint_age: reg(&r, Gauge::new("frappe_cdc_capture_checkpoint_age_seconds", "Seconds since the last durable checkpoint").unwrap_or_else(|_| unreachable_metric())),
            checkpoint_ts: reg(&r, Gauge::new("frappe_cdc_capture_checkpoint_timestamp_seconds", "Unix time of the last durable checkpoint").unwrap_or_else(|_| unreachable_metric())),
            state_bytes: reg(&r, IntGauge::new("frappe_cdc_capture_state_store_bytes", "Size of the state store file").unwrap_or_else(|_| unreachable_metric())),
            snapshot_rows: reg(&r, IntCounter::new("frappe_cdc_capture_snapshot_rows_total", "Rows read by the initial snapshot").unwrap_or_else(|_| unreachable_metric())),
            snapshot_rows_estimated: reg(&r, IntGauge::new("frappe_cdc_capture_snapshot_rows_estimated", "Estimated rows the snapshot will read").unwrap_or_else(|_| unreachable_metric())),
            reconnects: reg(&r, IntCounter::new("frappe_cdc_capture_reconnects_total", "Binlog reconnects and pipeline restarts").unwrap_or_else(|_| unreachable_metric())),
            tx_docs: reg(&r, Histogram::with_opts(HistogramOpts::new("frappe_cdc_capture_transaction_documents", "Documents per source transaction").buckets(vec![1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10000.0, 100000.0])).unwrap_or_else(|_| unreachable_metric())),
            ddl: reg(&r, IntCounter::new("frappe_cdc_capture_ddl_statements_total", "DDL statements seen in the binlog").unwrap_or_else(|_| unreachable_metric())),
            retention_headroom: reg(&r, Gauge::new("frappe_cdc_capture_binlog_retention_headroom_seconds", "Seconds until the primary may purge the oldest binlog file capture still needs (lower bound; +Inf without automatic expiry, 0 once purged, NaN while unknown)").unwrap_or_else(|_| unreachable_metric())),
            binlog_behind: reg(&r, IntGauge::new("frappe_cdc_capture_binlog_behind_bytes", "Bytes of binlog on the primary after the checkpoint").unwrap_or_else(|_| unreachable_metric())),
            binlog_expire: reg(&r, Gauge::new("frappe_cdc_capture_binlog_expire_seconds", "The primary's binlog expiry period (0: binlogs are never purged automatically)").unwrap_or_else(|_| unreachable_metric())),
            kafka_disconnects: reg(&r, IntCounter::new("frappe_cdc_capture_kafka_disconnects_total", "Connections to Kafka brokers lost (librdkafka statistics)").unwrap_or_else(|_| unreachable_metric())),
            kafka_retries: reg(&r, IntCounter::new("frappe_cdc_capture_kafka_request_retries_total", "Produce and other requests to Kafka sent again (librdkafka statistics)").unwrap_or_else(|_| unreachable_metric())),
            kafka_timeouts: reg(&r, IntCounter::new("frappe_cdc_capture_kafka_request_timeouts_total", "Requests to Kafka that timed out (librdkafka statistics)").unwrap_or_else(|_| unreachable_metric())),
            registry: r,
        };
        // Unknown until the retention watcher has compared a checkpoint with the server.
        m.retention_headroom.set(f64::NAN);
        m
    }
}

impl Default for CaptureMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register_build_info(r: &Registry) {
    if let Ok(g) = prometheus::IntGaugeVec::new(
        Opts::new("frappe_cdc_build_info", "Build information"),
        &["version"],
    ) {
        g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let _ = r.register(Box::new(g));
    }
}

/// Metric constructors only fail on invalid names, which are constants here.
pub(crate) fn unreachable_metric<T>() -> T {
    panic!("invalid metric definition (a constant in metrics.rs)")
}

/// Metrics of `apply`.
#[derive(Clone)]
pub struct ApplyMetrics {
    pub registry: Registry,
    pub documents: IntCounterVec,
    pub dead_letters: IntCounter,
    pub retries: IntCounter,
    pub open_conflicts: IntGauge,
    /// Age of the oldest open conflict (0 when none), read from the table with the count.
    pub oldest_open_conflict: IntGauge,
    /// Conflict decisions by doctype, policy and decision (`manual`/`open` for one left to
    /// an operator; `accept_primary`, `keep_local`, `merged` for automatic ones).
    pub conflict_decisions: IntCounterVec,
    pub missing_columns: IntCounterVec,
    pub lag: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub tx_duration: Histogram,
    pub batch_docs: Histogram,
    pub bulk_rows: IntCounterVec,
    pub split_batches: IntCounterVec,
    pub load_rereads: IntCounter,
    /// `--consistency transaction`: source transactions applied, documents in each, waits
    /// for missing documents of one, and transactions applied in parts.
    pub source_transactions: IntCounter,
    pub source_transaction_docs: Histogram,
    pub transaction_waits: IntCounter,
    pub transaction_wait_seconds: Histogram,
    pub transaction_parts: IntCounter,
    /// Source transactions released with fewer documents than their `doc_count` (nothing
    /// more of them could arrive: a forged or damaged message).
    pub incomplete_transactions: IntCounter,
    pub kafka_disconnects: IntCounter,
    pub kafka_retries: IntCounter,
    pub kafka_timeouts: IntCounter,
    /// The file step's metrics (`--files-to`; zero without it).
    pub files: crate::files::metrics::FilesMetrics,
    /// `/readyz`: true once apply consumes and while its last replica work succeeded; false
    /// while it waits for the replica, the topic, or retries a transient failure.
    pub ready: Arc<AtomicBool>,
}

impl ApplyMetrics {
    /// Creates and registers every apply metric.
    pub fn new() -> Self {
        let r = Registry::new();
        register_build_info(&r);
        ApplyMetrics {
            documents: reg(&r, IntCounterVec::new(Opts::new("frappe_cdc_apply_documents_total", "Envelopes handled, by doctype and outcome (applied, skipped, filtered, conflict, dead_letter, tombstone)"), &["doctype", "outcome"]).unwrap_or_else(|_| unreachable_metric())),
            dead_letters: reg(&r, IntCounter::new("frappe_cdc_apply_dead_letters_total", "Messages sent to the dead-letter topic").unwrap_or_else(|_| unreachable_metric())),
            retries: reg(&r, IntCounter::new("frappe_cdc_apply_retries_total", "Retries after transient replica failures").unwrap_or_else(|_| unreachable_metric())),
            open_conflicts: reg(&r, IntGauge::new("frappe_cdc_apply_open_conflicts", "Conflicts recorded and not resolved").unwrap_or_else(|_| unreachable_metric())),
            oldest_open_conflict: reg(&r, IntGauge::new("frappe_cdc_apply_oldest_open_conflict_seconds", "Age of the oldest conflict still open (0 when none)").unwrap_or_else(|_| unreachable_metric())),
            conflict_decisions: reg(&r, IntCounterVec::new(Opts::new("frappe_cdc_apply_conflict_decisions_total", "Conflicts by doctype, the policy that decided them (manual: left to an operator) and the decision (open, accept_primary, keep_local, merged)"), &["doctype", "policy", "decision"]).unwrap_or_else(|_| unreachable_metric())),
            missing_columns: reg(&r, IntCounterVec::new(Opts::new("frappe_cdc_apply_missing_columns_total", "Values not written because the replica table lacks the column, by table"), &["table"]).unwrap_or_else(|_| unreachable_metric())),
            lag: reg(&r, Histogram::with_opts(HistogramOpts::new("frappe_cdc_apply_end_to_end_lag_seconds", "Apply time minus source commit time").buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])).unwrap_or_else(|_| unreachable_metric())),
            consumer_lag: reg(&r, IntGaugeVec::new(Opts::new("frappe_cdc_apply_consumer_lag_messages", "Messages on the topic not yet applied, by partition (high watermark minus next offset)"), &["partition"]).unwrap_or_else(|_| unreachable_metric())),
            tx_duration: reg(&r, Histogram::with_opts(HistogramOpts::new("frappe_cdc_apply_transaction_duration_seconds", "Duration of one replica transaction (checks, writes, offset, commit)").buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0])).unwrap_or_else(|_| unreachable_metric())),
            batch_docs: reg(&r, Histogram::with_opts(HistogramOpts::new("frappe_cdc_apply_batch_documents", "Documents per bulk replica transaction").buckets(vec![1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0])).unwrap_or_else(|_| unreachable_metric())),
            bulk_rows: reg(&r, IntCounterVec::new(Opts::new("frappe_cdc_apply_bulk_rows_total", "Rows written by bulk transactions, by path: load (LOAD DATA LOCAL INFILE, rows of documents new to the replica) or upsert (INSERT ... ON DUPLICATE KEY UPDATE)"), &["path"]).unwrap_or_else(|_| unreachable_metric())),
            split_batches: reg(&r, IntCounterVec::new(Opts::new("frappe_cdc_apply_split_batches_total", "Bulk batches split over several concurrent transactions (--writers), by outcome: committed, or rolled_back (a part failed on a lock; the batch is retried as one transaction)"), &["outcome"]).unwrap_or_else(|_| unreachable_metric())),
            load_rereads: reg(&r, IntCounter::new("frappe_cdc_apply_load_rereads_total", "Bulk batches re-run with every replica copy read, because LOAD DATA found rows of a new document already on the replica (a document created on the replica itself; it becomes a conflict)").unwrap_or_else(|_| unreachable_metric())),
            source_transactions: reg(&r, IntCounter::new("frappe_cdc_apply_source_transactions_total", "Source transactions applied whole (--consistency transaction)").unwrap_or_else(|_| unreachable_metric())),
            source_transaction_docs: reg(&r, Histogram::with_opts(HistogramOpts::new("frappe_cdc_apply_source_transaction_documents", "Documents per source transaction applied (--consistency transaction)").buckets(vec![1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10000.0])).unwrap_or_else(|_| unreachable_metric())),
            transaction_waits: reg(&r, IntCounter::new("frappe_cdc_apply_transaction_waits_total", "Times apply held documents back waiting for the rest of their source transaction, or for a partition to reach it (--consistency transaction)").unwrap_or_else(|_| unreachable_metric())),
            transaction_wait_seconds: reg(&r, Histogram::with_opts(HistogramOpts::new("frappe_cdc_apply_transaction_wait_seconds", "How long such a wait lasted").buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0])).unwrap_or_else(|_| unreachable_metric())),
            transaction_parts: reg(&r, IntCounter::new("frappe_cdc_apply_transaction_parts_total", "Parts of source transactions larger than --max-transaction-docs (or the snapshot) applied separately: a reader can see such a transaction half-applied").unwrap_or_else(|_| unreachable_metric())),
            incomplete_transactions: reg(&r, IntCounter::new("frappe_cdc_apply_incomplete_transactions_total", "Source transactions applied with fewer documents than their doc_count because every partition had moved past them (--consistency transaction): the topic holds a forged or damaged message").unwrap_or_else(|_| unreachable_metric())),
            kafka_disconnects: reg(&r, IntCounter::new("frappe_cdc_apply_kafka_disconnects_total", "Connections to Kafka brokers lost (librdkafka statistics of the consumer)").unwrap_or_else(|_| unreachable_metric())),
            kafka_retries: reg(&r, IntCounter::new("frappe_cdc_apply_kafka_request_retries_total", "Requests to Kafka sent again (librdkafka statistics of the consumer)").unwrap_or_else(|_| unreachable_metric())),
            kafka_timeouts: reg(&r, IntCounter::new("frappe_cdc_apply_kafka_request_timeouts_total", "Requests to Kafka that timed out (librdkafka statistics of the consumer)").unwrap_or_else(|_| unreachable_metric())),
            files: crate::files::metrics::FilesMetrics::register(&r),
            ready: Arc::new(AtomicBool::new(false)),
            registry: r,
        }
    }
}

impl Default for ApplyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
/// Binds the metrics endpoint's address: a port another process holds is a configuration
/// error the caller reports (exit 2), not something to run without.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot listen on {addr} for /metrics: {e}\n  fix: another process (a second capture or apply?) holds port {}; stop it or pass --metrics-addr (FRAPPE_CDC_METRICS_ADDR) with a free port",
            addr.port()
        )
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz` (200 while `ready`, else 503) on `listener`.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "metrics endpoint listening");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let registry = registry.clone();
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => {
                    let mut out = Vec::new();
                    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
                    ("200 OK", "text/plain; version=0.0.4", out)
                }
                "/healthz" => ("200 OK", "text/plain", b"ok\n".to_vec()),
                "/readyz" if ready.load(Ordering::Acquire) => {
                    ("200 OK", "text/plain", b"ready\n".to_vec())
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    b"not ready\n".to_vec(),
                ),
                _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        });
    }
}

/// Caps the number of distinct values of a label (e.g. doctypes named by untrusted messages):
/// the first `cap` values are kept, later ones are reported as `overflow`.
pub struct BoundedLabels {
    seen: std::collections::HashSet<String>,
    cap: usize,
    overflow: &'static str,
}

impl BoundedLabels {
    pub fn new(cap: usize, overflow: &'static str) -> Self {
        BoundedLabels {
            seen: Default::default(),
            cap,
            overflow,
        }
    }

    /// The label to use for `value`.
    pub fn get<'a>(&mut self, value: &'a str) -> &'a str {
        if self.seen.contains(value) {
            return value;
        }
        if self.seen.len() < self.cap {
            self.seen.insert(value.to_string());
            return value;
        }
        self.overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_labels_stop_at_the_cap() {
        let mut l = BoundedLabels::new(2, "_other");
        assert_eq!(l.get("a"), "a");
        assert_eq!(l.get("b"), "b");
        assert_eq!(l.get("c"), "_other");
        assert_eq!(l.get("a"), "a");
    }

    #[test]
    fn names_follow_the_convention() {
        let c = CaptureMetrics::new();
        let a = ApplyMetrics::new();
        let families: Vec<_> = c
            .registry
            .gather()
            .into_iter()
            .chain(a.registry.gather())
            .collect();
        assert!(families.len() >= 20);
        for f in &families {
            let n = f.name();
            assert!(
                n.starts_with("frappe_cdc_capture_")
                    || n.starts_with("frappe_cdc_apply_")
                    || n == "frappe_cdc_build_info",
                "{n}"
            );
            assert!(
                n.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'),
                "{n}"
            );
            let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
            assert_eq!(
                counter,
                n.ends_with("_total"),
                "{n}: counters and only counters end in _total"
            );
            assert!(
                !n.contains("_ms") && !n.contains("millis"),
                "{n}: units are seconds"
            );
        }
    }
}

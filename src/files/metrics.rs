//! Metrics of the file step (registered on apply's registry).

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::fetch::Outcome;
use crate::metrics::{reg, unreachable_metric};

/// The outcome labels of `frappe_cdc_apply_files_total` (`fetch::Outcome::status`).
const OUTCOMES: &str =
    "fetched present missing mismatch too_big collision denied error removed kept";

/// Files copied, by outcome; bytes; statuses in `_frappe_cdc_files`; fetch latency.
#[derive(Clone)]
pub struct FilesMetrics {
    pub files: IntCounterVec,
    pub bytes: IntCounter,
    pub by_status: IntGaugeVec,
    pub seconds: Histogram,
    /// How long the longest-failing file has been failing.
    pub failing_seconds: Gauge,
}

impl FilesMetrics {
    /// Creates the metrics and registers them on `r`.
    pub fn register(r: &Registry) -> Self {
        let m = FilesMetrics {
            files: reg(r, IntCounterVec::new(Opts::new("frappe_cdc_apply_files_total", "File copy attempts, by outcome: fetched, present (already there), missing, mismatch, too_big, collision, denied, error, removed / kept (deletes)"), &["outcome"]).unwrap_or_else(|_| unreachable_metric())),
            bytes: reg(r, IntCounter::new("frappe_cdc_apply_file_bytes_total", "Bytes of files copied to the replica's site folder").unwrap_or_else(|_| unreachable_metric())),
            by_status: reg(r, IntGaugeVec::new(Opts::new("frappe_cdc_apply_files", "Rows of _frappe_cdc_files by status (pending, fetched, missing, mismatch, too_big, collision, denied, error, deleted, skipped)"), &["status"]).unwrap_or_else(|_| unreachable_metric())),
            seconds: reg(r, Histogram::with_opts(HistogramOpts::new("frappe_cdc_apply_file_fetch_seconds", "Duration of one file copy attempt").buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0])).unwrap_or_else(|_| unreachable_metric())),
            failing_seconds: reg(r, Gauge::new("frappe_cdc_apply_files_failing_seconds", "Seconds since the longest-failing file in _frappe_cdc_files first failed (0: none)").unwrap_or_else(|_| unreachable_metric())),
        };
        // Every label value exists from the start (0), so dashboards and alerts have series
        // on a replica that has copied nothing yet.
        for o in OUTCOMES.split(' ') {
            m.files.with_label_values(&[o]);
        }
        for st in super::status::STATUSES {
            m.by_status.with_label_values(&[st]);
        }
        m
    }

    pub(super) fn observe(&self, label: &str, took: Duration, outcome: &Outcome) {
        self.files.with_label_values(&[label]).inc();
        self.seconds.observe(took.as_secs_f64());
        if let Outcome::Fetched { bytes } = outcome {
            self.bytes.inc_by(*bytes);
        }
    }

    pub(super) fn set_counts(&self, counts: &[(String, u64)]) {
        for s in super::status::STATUSES {
            let n = counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
            self.by_status
                .with_label_values(&[s])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

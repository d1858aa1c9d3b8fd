//! Binlog retention headroom: how long until the primary purges the oldest binlog file capture
//! still needs, and how many bytes of binlog capture is behind.
//!
//! The processor publishes its durable checkpoint (file, offset, commit time of the last
//! transaction read) to a [`CheckpointView`]; [`watch`] polls `SHOW BINARY LOGS` and the
//! server's expire setting and sets the gauges. Nothing here affects correctness: if the
//! queries fail (missing BINLOG MONITOR, server down) the gauges keep their last value and a
//! warning is logged once per failure streak.
//!
//! MariaDB purges a closed binlog file once its modification time is older than
//! `binlog_expire_logs_seconds`. A closed file's modification time is at least the commit time
//! of any transaction in it (or in an earlier file), so `commit_ts + expire - now` is a lower
//! bound of the headroom: the gauge errs on the side of alerting early. The active (last) file is
//! never purged; its headroom is reported as the full expire period. A checkpoint whose file is
//! no longer on the server has no headroom left (0). While the headroom is unknown (no file
//! named yet right after a snapshot, or a closed file with no commit time read) the gauge shows
//! NaN, which no alert threshold matches: an unknown value must not page anyone as "0 s left".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use crate::metrics::CaptureMetrics;

/// The last durable checkpoint, as the retention watcher needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointAt {
    pub file: String,
    pub pos: u64,
    /// Commit time (Unix seconds) of the last transaction read at or before the checkpoint; 0
    /// when none has been read since start.
    pub commit_ts: u64,
}

/// Shared, cheaply cloned view of the checkpoint.
#[derive(Debug, Clone, Default)]
pub struct CheckpointView(Arc<Mutex<CheckpointAt>>);

impl CheckpointView {
    pub fn set(&self, at: CheckpointAt) {
        if let Ok(mut g) = self.0.lock() {
            *g = at;
        }
    }

    pub fn get(&self) -> CheckpointAt {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// What the gauges show.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// Seconds until the checkpoint's file may be purged (`+Inf` without automatic expiry, 0
    /// when the file is not on the server any more, `None` when unknown: no file named yet, or
    /// no commit time read).
    pub headroom_seconds: Option<f64>,
    /// Bytes of binlog after the checkpoint (`None` when the file is not on the server).
    pub behind_bytes: Option<u64>,
}

/// Computes retention from `SHOW BINARY LOGS` rows `(name, size)` in server order.
pub fn compute(logs: &[(String, u64)], at: &CheckpointAt, expire: u64, now: u64) -> Retention {
    let Some(i) = logs.iter().position(|(n, _)| *n == at.file) else {
        return Retention {
            headroom_seconds: (!at.file.is_empty()).then_some(0.0),
            behind_bytes: None,
        };
    };
    let behind = logs[i].1.saturating_sub(at.pos) + logs[i + 1..].iter().map(|l| l.1).sum::<u64>();
    let headroom = if expire == 0 {
        Some(f64::INFINITY)
    } else if i + 1 == logs.len() {
        Some(expire as f64)
    } else if at.commit_ts == 0 {
        None
    } else {
        Some(((at.commit_ts + expire) as f64 - now as f64).max(0.0))
    };
    Retention {
        headroom_seconds: headroom,
        behind_bytes: Some(behind),
    }
}

async fn poll(pool: &mysql_async::Pool) -> Result<(Vec<(String, u64)>, u64), mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
    let logs = rows
        .into_iter()
        .filter_map(|r| {
            let name: Option<String> = r.get(0);
            let size: Option<u64> = r.get(1);
            Some((name?, size?))
        })
        .collect();
    let expire: Option<u64> = conn
        .query_first(
            "SELECT IF(@@binlog_expire_logs_seconds > 0, @@binlog_expire_logs_seconds, \
             CAST(@@expire_logs_days * 86400 AS UNSIGNED))",
        )
        .await?;
    Ok((logs, expire.unwrap_or(0)))
}

/// Polls every `every` and sets the retention gauges until `shutdown`.
pub async fn watch(
    opts: mysql_async::Opts,
    view: CheckpointView,
    metrics: CaptureMetrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    let pool = mysql_async::Pool::new(
        mysql_async::OptsBuilder::from_opts(opts).pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(mysql_async::PoolConstraints::new(0, 1).unwrap_or_default()),
        ),
    );
    let mut failing = false;
    metrics.retention_headroom.set(f64::NAN);
    loop {
        match poll(&pool).await {
            Ok((logs, expire)) => {
                failing = false;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                metrics.binlog_expire.set(expire as f64);
                let r = compute(&logs, &view.get(), expire, now);
                metrics
                    .retention_headroom
                    .set(r.headroom_seconds.unwrap_or(f64::NAN));
                if let Some(b) = r.behind_bytes {
                    metrics.binlog_behind.set(b as i64);
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read binlog retention (SHOW BINARY LOGS needs BINLOG MONITOR); retention gauges are stale");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = pool.disconnect().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs() -> Vec<(String, u64)> {
        vec![
            ("b.000001".into(), 1000),
            ("b.000002".into(), 500),
            ("b.000003".into(), 300),
        ]
    }

    fn at(file: &str, pos: u64, ts: u64) -> CheckpointAt {
        CheckpointAt {
            file: file.into(),
            pos,
            commit_ts: ts,
        }
    }

    #[test]
    fn bytes_behind_count_the_rest_of_the_file_and_every_later_one() {
        let r = compute(&logs(), &at("b.000001", 400, 10), 0, 100);
        assert_eq!(r.behind_bytes, Some(600 + 500 + 300));
        let r = compute(&logs(), &at("b.000003", 300, 10), 0, 100);
        assert_eq!(r.behind_bytes, Some(0));
    }

    #[test]
    fn headroom_is_a_lower_bound_from_the_commit_time() {
        // closed file, commit at t=1000, expire 3600, now 2000 → 2600 s left
        let r = compute(&logs(), &at("b.000002", 4, 1000), 3600, 2000);
        assert_eq!(r.headroom_seconds, Some(2600.0));
        // past due: clamped at zero, never negative
        let r = compute(&logs(), &at("b.000002", 4, 1000), 3600, 9000);
        assert_eq!(r.headroom_seconds, Some(0.0));
    }

    #[test]
    fn active_file_no_expiry_and_unknowns() {
        assert_eq!(
            compute(&logs(), &at("b.000003", 4, 1), 3600, 1_000_000).headroom_seconds,
            Some(3600.0),
            "the active file is never purged"
        );
        assert_eq!(
            compute(&logs(), &at("b.000001", 4, 1), 0, 1_000_000).headroom_seconds,
            Some(f64::INFINITY)
        );
        assert_eq!(
            compute(&logs(), &at("b.000001", 4, 0), 60, 100).headroom_seconds,
            None,
            "no commit read yet"
        );
        let gone = compute(&logs(), &at("b.000000", 4, 5), 60, 100);
        assert_eq!(gone.headroom_seconds, Some(0.0), "purged: nothing left");
        assert_eq!(gone.behind_bytes, None);
        let unnamed = compute(&logs(), &at("", 0, 0), 60, 100);
        assert_eq!(unnamed.headroom_seconds, None, "right after a snapshot");
        assert_eq!(unnamed.behind_bytes, None);
    }
}

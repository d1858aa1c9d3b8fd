//! `_frappe_cdc_files`: what the replica's disk should hold, per File document, and how far
//! the copying got.
//!
//! Apply writes a `pending` row **in the same replica transaction** as the File document
//! (`enqueue`), so the two commit together: after any crash, a File row on the replica has
//! its status row, and the fetcher finds what is still to do there. The fetcher then moves
//! each row to `fetched`, or to a failure status with the error and the time of its next
//! attempt (backoff). A later change of the same File resets the row to `pending`.
//!
//! Statuses: `pending`, `fetched`, `missing` (404 / absent on the primary), `mismatch` (bytes
//! whose MD5 is not `content_hash`), `too_big` (over `--files-max-bytes`), `collision` (the
//! replica's path holds different bytes that a replica File row references: never
//! overwritten), `denied` (401/403), `error` (anything else), `deleted` (the File is gone;
//! with `--files-gc` its bytes were removed or kept by Frappe's rule), `skipped` (no bytes to
//! copy: a folder, a remote URL, or a `file_url` that is not a site path; `last_error` says
//! which).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Transaction};

use super::plan::{FileStep, SitePath, Skip};
use crate::apply::replica::ReplicaError;

/// The statuses a row can have (module docs).
pub const STATUSES: [&str; 10] = [
    "pending",
    "fetched",
    "missing",
    "mismatch",
    "too_big",
    "collision",
    "denied",
    "error",
    "deleted",
    "skipped",
];

/// Creates the table if missing.
pub async fn ensure_table(conn: &mut Conn) -> Result<(), ReplicaError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS `_frappe_cdc_files` (
           `name` varchar(255) NOT NULL,
           `file_url` varchar(2000) NOT NULL,
           `content_hash` varchar(32) NULL,
           `moved_from` varchar(2000) NULL,
           `status` varchar(16) NOT NULL DEFAULT 'pending',
           `version` bigint unsigned NOT NULL DEFAULT 1,
           `attempts` int unsigned NOT NULL DEFAULT 0,
           `last_error` varchar(1000) NULL,
           `failing_since` datetime(6) NULL,
           `bytes` bigint unsigned NULL,
           `next_attempt` datetime(6) NOT NULL DEFAULT current_timestamp(6),
           `updated_at` datetime(6) NOT NULL DEFAULT current_timestamp(6),
           PRIMARY KEY (`name`), KEY `due` (`status`, `next_attempt`)
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    )
    .await?;
    Ok(())
}

/// One applied File document: its name, its `file_url` as the row has it, and its step.
pub type Enqueued = (String, Option<String>, FileStep);

/// Records what applied File documents need, inside the transaction that applies them.
pub async fn enqueue(tx: &mut Transaction<'_>, steps: &[Enqueued]) -> Result<(), ReplicaError> {
    for (name, url, step) in steps {
        match step {
            FileStep::Fetch {
                path,
                hash,
                moved_from,
                ..
            } => {
                tx.exec_drop(
                    "INSERT INTO `_frappe_cdc_files` (name, file_url, content_hash, moved_from, status, attempts, last_error, next_attempt, updated_at) \
                     VALUES (?, ?, ?, ?, 'pending', 0, NULL, current_timestamp(6), current_timestamp(6)) \
                     ON DUPLICATE KEY UPDATE file_url = VALUES(file_url), content_hash = VALUES(content_hash), \
                     moved_from = VALUES(moved_from), status = 'pending', version = version + 1, attempts = 0, last_error = NULL, \
                     next_attempt = VALUES(next_attempt), updated_at = VALUES(updated_at)",
                    (name, path.url(), hash, moved_from.as_ref().map(SitePath::url)),
                )
                .await?;
            }
            FileStep::Deleted { path, hash } => {
                tx.exec_drop(
                    "INSERT INTO `_frappe_cdc_files` (name, file_url, content_hash, status, next_attempt, updated_at) \
                     VALUES (?, ?, ?, 'deleted', current_timestamp(6), current_timestamp(6)) \
                     ON DUPLICATE KEY UPDATE status = 'deleted', version = version + 1, attempts = 0, last_error = NULL, \
                     next_attempt = VALUES(next_attempt), updated_at = VALUES(updated_at)",
                    (name, path.url(), hash),
                )
                .await?;
            }
            FileStep::Skip(Skip::Unchanged) => {}
            FileStep::Skip(why) => {
                tx.exec_drop(
                    "INSERT INTO `_frappe_cdc_files` (name, file_url, status, last_error, next_attempt, updated_at) \
                     VALUES (?, ?, 'skipped', ?, '9999-12-31', current_timestamp(6)) \
                     ON DUPLICATE KEY UPDATE file_url = VALUES(file_url), status = 'skipped', version = version + 1, \
                     last_error = VALUES(last_error), next_attempt = VALUES(next_attempt), updated_at = VALUES(updated_at)",
                    (name, url.as_deref().unwrap_or(""), why.label()),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// A row the fetcher works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub name: String,
    pub path: SitePath,
    pub hash: Option<String>,
    pub moved_from: Option<SitePath>,
    pub attempts: u32,
    pub deleted: bool,
    /// The row's version when read: an outcome is recorded only if no change of the File
    /// came in meanwhile.
    pub version: u64,
}

/// Rows whose next attempt is due: pending ones, failures past their backoff, and deletes
/// not yet handled (at most `limit`, oldest first). A row whose URL is not a site path (a
/// hand edit) is marked `error` instead.
pub async fn due(conn: &mut Conn, limit: usize) -> Result<Vec<Due>, ReplicaError> {
    type R = (
        String,
        String,
        Option<String>,
        Option<String>,
        u32,
        String,
        u64,
    );
    let rows: Vec<R> = conn
        .exec(
            "SELECT name, file_url, content_hash, moved_from, attempts, status, version FROM `_frappe_cdc_files` \
             WHERE status IN ('pending', 'missing', 'mismatch', 'denied', 'error', 'deleted') \
             AND next_attempt <= current_timestamp(6) ORDER BY next_attempt LIMIT ?",
            (limit as u64,),
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (name, url, hash, moved, attempts, status, version) in rows {
        match SitePath::from_url(&url) {
            Some(path) => out.push(Due {
                name,
                path,
                hash,
                moved_from: moved.as_deref().and_then(SitePath::from_url),
                attempts,
                deleted: status == "deleted",
                version,
            }),
            None => {
                let at = Attempt {
                    name: &name,
                    version,
                };
                record(
                    conn,
                    at,
                    "error",
                    Some("file_url is not a site path"),
                    None,
                    None,
                )
                .await?
            }
        }
    }
    Ok(out)
}

/// The wait before attempt `attempts + 1` after a failure: `first`, doubling, at most an hour.
pub fn backoff(first: Duration, attempts: u32) -> Duration {
    first
        .saturating_mul(1u32 << attempts.min(16))
        .min(Duration::from_secs(3600))
}

/// Which row version an attempt worked on.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub name: &'a str,
    pub version: u64,
}

/// Records the outcome of an attempt. `retry_in`: when a failure is tried again (None: done,
/// or never again without a change of the File). A row changed by apply while the attempt
/// ran (a newer version) keeps its new state.
pub async fn record(
    conn: &mut Conn,
    at: Attempt<'_>,
    status: &str,
    error: Option<&str>,
    bytes: Option<u64>,
    retry_in: Option<Duration>,
) -> Result<(), ReplicaError> {
    let error = error.map(|e| e.chars().take(1000).collect::<String>());
    conn.exec_drop(
        "UPDATE `_frappe_cdc_files` SET status = ?, last_error = ?, bytes = COALESCE(?, bytes), \
         attempts = attempts + 1, updated_at = current_timestamp(6), \
         failing_since = IF(?, NULL, COALESCE(failing_since, current_timestamp(6))), \
         next_attempt = IF(? IS NULL, '9999-12-31', current_timestamp(6) + INTERVAL ? SECOND) \
         WHERE name = ? AND version = ?",
        (
            status,
            error,
            bytes,
            ["fetched", "deleted", "skipped"].contains(&status),
            retry_in.map(|d| d.as_secs()),
            retry_in.map_or(0, |d| d.as_secs()),
            at.name,
            at.version,
        ),
    )
    .await?;
    Ok(())
}

/// Seconds since the longest-failing file first failed (0 when none fails).
pub async fn failing_seconds(conn: &mut Conn) -> Result<f64, ReplicaError> {
    let v: Option<Option<f64>> = conn
        .query_first(
            "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(failing_since), current_timestamp(6)) / 1e6 \
             FROM `_frappe_cdc_files` WHERE failing_since IS NOT NULL",
        )
        .await?;
    Ok(v.flatten().unwrap_or(0.0).max(0.0))
}

/// Whether this replica has `_frappe_cdc_files` (apply ran with `--files-to`, or `files sync`).
pub async fn table_exists(conn: &mut Conn) -> Result<bool, ReplicaError> {
    let n: Option<u64> = conn
        .query_first(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '_frappe_cdc_files'",
        )
        .await?;
    Ok(n.unwrap_or(0) > 0)
}

/// Files never overwritten because the replica's own bytes are at their path: (File name,
/// file_url), for `conflicts list`. Empty when the table does not exist.
pub async fn collisions(conn: &mut Conn) -> Result<Vec<(String, String)>, ReplicaError> {
    if !table_exists(conn).await? {
        return Ok(Vec::new());
    }
    Ok(conn
        .query("SELECT name, file_url FROM `_frappe_cdc_files` WHERE status = 'collision' ORDER BY name")
        .await?)
}

/// Counts of rows by status (for the pending gauge and `files sync`).
pub async fn counts(conn: &mut Conn) -> Result<Vec<(String, u64)>, ReplicaError> {
    Ok(conn
        .query("SELECT status, COUNT(*) FROM `_frappe_cdc_files` GROUP BY status")
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_to_an_hour() {
        let ten = Duration::from_secs(10);
        assert_eq!(backoff(ten, 0), ten);
        assert_eq!(backoff(ten, 1), Duration::from_secs(20));
        assert_eq!(backoff(ten, 5), Duration::from_secs(320));
        assert_eq!(backoff(ten, 9), Duration::from_secs(3600));
        assert_eq!(backoff(ten, 40), Duration::from_secs(3600));
    }

    #[test]
    fn urls_round_trip_through_site_paths() {
        for u in ["/files/a b.png", "/private/files/x/y.pdf"] {
            let p = SitePath::from_url(u).expect("path");
            assert_eq!(p.url(), u);
        }
        assert!(STATUSES.contains(&"collision"));
    }
}

//! The fetcher: a task beside apply that works through `_frappe_cdc_files` (`status.rs`),
//! copying bytes from the primary (`source.rs`) to the replica's site folder (`store.rs`).
//!
//! It never holds up the stream: apply only writes status rows in its own transactions; the
//! fetcher reads the due ones (every 500 ms while idle). Up to `concurrency` files are copied at once, each streamed. Every
//! attempt ends in a status (module docs of `status.rs`) and failures are retried with
//! backoff. Crash/restart: a download cut short leaves only a temporary file (swept at
//! start); the row is still due, so the file is fetched again.
//!
//! The collision rule: a final path that holds other bytes than the File's `content_hash`
//! while **another** replica File row with that URL has those bytes' hash (or no hash) is a
//! local file of the replica's own: it is never overwritten, the row becomes `collision`.
//! Bytes at a path that no other row claims (an older version of the same File) are replaced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mysql_async::Pool;
use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use super::metrics::FilesMetrics;
use super::plan::SitePath;
use super::source::{FetchError, FilesFrom};
use super::status::{self, Attempt, Due};
use super::store::{Finished, SiteDir, md5_of};
use crate::apply::replica::ReplicaError;

/// The fetcher's settings (`--files-*`).
#[derive(Debug, Clone)]
pub struct FilesConfig {
    pub from: FilesFrom,
    pub to: SiteDir,
    pub max_bytes: u64,
    pub concurrency: usize,
    /// Remove the bytes of deleted (or moved) Files that no replica File row still has.
    pub gc: bool,
    /// First wait before a failed file is tried again (doubling, at most an hour).
    pub retry: Duration,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Fetched {
        bytes: u64,
    },
    /// The final path already held the right bytes.
    Present,
    Missing,
    Mismatch,
    TooBig,
    Collision,
    Denied(String),
    Error(String),
    /// A delete handled (bytes removed, or kept by the rule or without `--files-gc`).
    Deleted {
        removed: bool,
    },
}

impl Outcome {
    /// (status, metric label, retry after the backoff?)
    fn status(&self) -> (&'static str, &'static str, bool) {
        match self {
            Outcome::Fetched { .. } => ("fetched", "fetched", false),
            Outcome::Present => ("fetched", "present", false),
            Outcome::Missing => ("missing", "missing", true),
            Outcome::Mismatch => ("mismatch", "mismatch", true),
            Outcome::TooBig => ("too_big", "too_big", false),
            Outcome::Collision => ("collision", "collision", false),
            Outcome::Denied(_) => ("denied", "denied", true),
            Outcome::Error(_) => ("error", "error", true),
            Outcome::Deleted { removed: true } => ("deleted", "removed", false),
            Outcome::Deleted { removed: false } => ("deleted", "kept", false),
        }
    }

    fn error(&self) -> Option<String> {
        match self {
            Outcome::Denied(e) | Outcome::Error(e) => Some(e.clone()),
            Outcome::Missing => Some(FetchError::Missing.to_string()),
            Outcome::Mismatch => Some("the bytes' MD5 is not the row's content_hash".into()),
            Outcome::TooBig => Some("larger than --files-max-bytes".into()),
            Outcome::Collision => Some(
                "the replica's path holds other bytes that another replica File row references"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// How often the status table is read for due rows while there is nothing to do.
const POLL: Duration = Duration::from_millis(500);

/// Runs until `shutdown`: takes due rows, copies them, records the outcomes.
pub async fn run(
    pool: Pool,
    cfg: Arc<FilesConfig>,
    metrics: FilesMetrics,
    shutdown: CancellationToken,
) {
    match cfg.to.sweep().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            files = n,
            "removed temporary files an interrupted download left"
        ),
        Err(e) => tracing::warn!(error = %e, "could not sweep temporary files"),
    }
    while !shutdown.is_cancelled() {
        let due = match pool.get_conn().await {
            Ok(mut c) => {
                if let Ok(counts) = status::counts(&mut c).await {
                    metrics.set_counts(&counts);
                }
                if let Ok(s) = status::failing_seconds(&mut c).await {
                    metrics.failing_seconds.set(s);
                }
                status::due(&mut c, cfg.concurrency * 4).await
            }
            Err(e) => Err(ReplicaError::from(e)),
        };
        let due = match due {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "files: cannot read _frappe_cdc_files; retrying");
                Vec::new()
            }
        };
        if due.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let done = work(&pool, &cfg, &metrics, due).await;
        // An outcome the replica would not take leaves its row due: wait before trying the
        // files again instead of downloading them in a loop.
        if done.iter().any(Option::is_none) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Attempts every row of `due` (`concurrency` at once) and records each outcome; returns
/// the status each ended in (None: the outcome could not be recorded).
pub async fn work(
    pool: &Pool,
    cfg: &FilesConfig,
    metrics: &FilesMetrics,
    due: Vec<Due>,
) -> Vec<Option<&'static str>> {
    futures::stream::iter(due)
        .map(|d| async move {
            let t0 = Instant::now();
            let outcome = attempt(pool, cfg, &d).await;
            let (st, label, retry) = outcome.status();
            metrics.observe(label, t0.elapsed(), &outcome);
            if retry {
                tracing::warn!(file = %d.name, status = st, attempts = d.attempts + 1, error = ?outcome.error(), "file not copied yet; will retry");
            }
            let bytes = match outcome {
                Outcome::Fetched { bytes } => Some(bytes),
                _ => None,
            };
            let at = Attempt {
                name: &d.name,
                version: d.version,
            };
            let retry_in = retry.then(|| status::backoff(cfg.retry, d.attempts));
            let r = match pool.get_conn().await {
                Ok(mut c) => {
                    status::record(&mut c, at, st, outcome.error().as_deref(), bytes, retry_in).await
                }
                Err(e) => Err(e.into()),
            };
            match r {
                Ok(()) => Some(st),
                Err(e) => {
                    tracing::warn!(error = %e, "files: could not record an outcome; the file is tried again");
                    None
                }
            }
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .collect()
        .await
}

/// One attempt on one due row.
pub async fn attempt(pool: &Pool, cfg: &FilesConfig, d: &Due) -> Outcome {
    let r = if d.deleted {
        delete(pool, cfg, &d.path, d.hash.as_deref(), d.hash.as_deref()).await
    } else {
        fetch(pool, cfg, d).await
    };
    r.unwrap_or_else(Outcome::Error)
}

/// Whether a replica File row other than `name` claims the bytes at `url` whose MD5 is
/// `md5` (its hash is that MD5, or it has none).
async fn claimed_by_other(pool: &Pool, url: &str, name: &str, md5: &str) -> Result<bool, String> {
    let mut c = pool.get_conn().await.map_err(|e| e.to_string())?;
    let n: Option<u64> = c
        .exec_first(
            "SELECT COUNT(*) FROM `tabFile` WHERE file_url = ? AND name <> ? \
             AND (content_hash = ? OR content_hash IS NULL OR content_hash = '')",
            (url, name, md5),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(n.unwrap_or(0) > 0)
}

async fn fetch(pool: &Pool, cfg: &FilesConfig, d: &Due) -> Result<Outcome, String> {
    let target = cfg.to.path(&d.path);
    let url = d.path.url();
    let existing = md5_of(&target)
        .await
        .map_err(|e| format!("reading the replica's file: {e}"))?;
    // What the new bytes must hash to: the row's hash; with none, and a file another row
    // claims, the bytes already there (anything else would overwrite them).
    let mut expect = d.hash.clone();
    let mut guarding = false;
    if let Some(have) = &existing {
        if d.hash.as_deref() == Some(have.as_str()) {
            gc_moved(pool, cfg, d).await;
            return Ok(Outcome::Present);
        }
        if claimed_by_other(pool, &url, &d.name, have).await? {
            if d.hash.is_some() {
                return Ok(Outcome::Collision);
            }
            expect = Some(have.clone());
            guarding = true;
        }
    }
    let mut body = match cfg.from.open(&d.path, &d.name).await {
        Ok(b) => b,
        Err(FetchError::Missing) => return Ok(Outcome::Missing),
        Err(FetchError::Denied(e)) => return Ok(Outcome::Denied(e)),
        Err(FetchError::Transient(e)) => return Ok(Outcome::Error(e)),
    };
    if body.len_hint().is_some_and(|n| n > cfg.max_bytes) {
        return Ok(Outcome::TooBig);
    }
    let mut part = cfg
        .to
        .begin(&d.path, cfg.max_bytes)
        .await
        .map_err(|e| format!("writing the replica's file: {e}"))?;
    loop {
        let chunk = match body.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Ok(Outcome::Error(e.to_string())),
        };
        if !part
            .write(&chunk)
            .await
            .map_err(|e| format!("writing the replica's file: {e}"))?
        {
            return Ok(Outcome::TooBig);
        }
    }
    let done = part
        .finish(expect.as_deref())
        .await
        .map_err(|e| format!("placing the replica's file: {e}"))?;
    Ok(match done {
        Finished::Placed { bytes, .. } => {
            gc_moved(pool, cfg, d).await;
            Outcome::Fetched { bytes }
        }
        Finished::Mismatch { .. } if guarding => Outcome::Collision,
        Finished::Mismatch { .. } => Outcome::Mismatch,
        Finished::TooBig => Outcome::TooBig,
    })
}

/// After a move (`is_private` toggled, a new URL) with `--files-gc`: the old path goes by
/// the delete rule.
async fn gc_moved(pool: &Pool, cfg: &FilesConfig, d: &Due) {
    if let Some(old) = d.moved_from.as_ref().filter(|_| cfg.gc)
        && let Err(e) = delete(pool, cfg, old, None, d.hash.as_deref()).await
    {
        tracing::warn!(error = %e, "files: could not remove a moved file's old copy");
    }
}

/// Frappe's rule for a deleted File's bytes: removed only when no File row has `refs_hash`
/// (None: no row with the same URL — a move, where Frappe rewrote every row with that hash to
/// the new URL), and only bytes that are that file's (`bytes_hash`), with `--files-gc`; kept
/// otherwise.
async fn delete(
    pool: &Pool,
    cfg: &FilesConfig,
    path: &SitePath,
    refs_hash: Option<&str>,
    bytes_hash: Option<&str>,
) -> Result<Outcome, String> {
    if !cfg.gc {
        return Ok(Outcome::Deleted { removed: false });
    }
    let url = path.url();
    let mut c = pool.get_conn().await.map_err(|e| e.to_string())?;
    let refs: Option<u64> = match refs_hash {
        Some(h) => {
            c.exec_first(
                "SELECT COUNT(*) FROM `tabFile` WHERE content_hash = ?",
                (h,),
            )
            .await
        }
        None => {
            c.exec_first("SELECT COUNT(*) FROM `tabFile` WHERE file_url = ?", (&url,))
                .await
        }
    }
    .map_err(|e| e.to_string())?;
    if refs.unwrap_or(0) > 0 {
        return Ok(Outcome::Deleted { removed: false });
    }
    let target = cfg.to.path(path);
    let have = md5_of(&target).await.map_err(|e| e.to_string())?;
    match (have, bytes_hash) {
        (Some(h), Some(want)) if h != want => Ok(Outcome::Deleted { removed: false }),
        (Some(_), _) => {
            tokio::fs::remove_file(&target)
                .await
                .map_err(|e| format!("removing the replica's file: {e}"))?;
            Ok(Outcome::Deleted { removed: true })
        }
        (None, _) => Ok(Outcome::Deleted { removed: false }),
    }
}

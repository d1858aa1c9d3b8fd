//! `frappe-cdc files sync`: copy now everything the replica's File rows need, outside apply.
//!
//! For a replica built before `--files-to` was set (or restored from a dump), File rows
//! without a status row get one (as apply would have written it); fetched files that are no
//! longer on disk with their hash (a fresh site folder, a file deleted or edited by hand) are
//! queued again; every row that failed
//! before (missing, mismatch, denied, error) is made due at once; then the fetcher's own work
//! loop runs until nothing is due, showing progress on a terminal. Exit 0 when every file is
//! fetched (or needs no bytes), 1 when some are not, with the count per status. Safe beside
//! a running apply: both record outcomes by row version, so a row changed meanwhile keeps
//! its newer state.

use std::io::IsTerminal;

use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts};

use super::fetch::{FilesConfig, work};
use super::metrics::FilesMetrics;
use super::plan::{SitePath, file_step};
use super::status::{self, Enqueued};
use crate::image::{Image, Row};

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// File rows that had no status row.
    pub added: u64,
    /// Fetched files no longer on the replica's disk as their row says (deleted, edited),
    /// queued again.
    pub repaired: u64,
    pub attempted: u64,
    /// Rows per status at the end.
    pub counts: Vec<(String, u64)>,
}

impl SyncReport {
    /// Rows not in a settled state (fetched, deleted, skipped).
    pub fn unsettled(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(s, _)| !["fetched", "deleted", "skipped"].contains(&s.as_str()))
            .map(|(_, n)| n)
            .sum()
    }
}

fn err(what: &str) -> impl Fn(mysql_async::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Runs the sync (module docs).
pub async fn sync(pool: &Pool, cfg: &FilesConfig) -> Result<SyncReport, String> {
    let mut rep = SyncReport::default();
    let mut c = pool
        .get_conn()
        .await
        .map_err(err("connecting to the replica"))?;
    status::ensure_table(&mut c)
        .await
        .map_err(|e| format!("creating _frappe_cdc_files: {e}"))?;
    type R = (String, Option<String>, Option<String>, i64);
    let rows: Vec<R> = c
        .query(
            "SELECT f.name, f.file_url, f.content_hash, f.is_folder FROM `tabFile` f \
             WHERE NOT EXISTS (SELECT 1 FROM `_frappe_cdc_files` s WHERE s.name = f.name)",
        )
        .await
        .map_err(err("reading tabFile"))?;
    let steps: Vec<Enqueued> = rows
        .into_iter()
        .map(|(name, url, hash, folder)| {
            // The row as an image: the same decision apply makes for an inserted File.
            let mut row = Row::default();
            row.insert("file_url".into(), url.clone().into());
            row.insert("content_hash".into(), hash.into());
            row.insert("is_folder".into(), folder.into());
            let image = Image {
                parent: Some(row),
                children: Default::default(),
            };
            let step = file_step(&name, None, Some(&image));
            (name, url, step)
        })
        .collect();
    rep.added = steps.len() as u64;
    let mut tx = c
        .start_transaction(TxOpts::default())
        .await
        .map_err(err("starting a transaction"))?;
    status::enqueue(&mut tx, &steps)
        .await
        .map_err(|e| format!("recording File rows: {e}"))?;
    tx.exec_drop(
        "UPDATE `_frappe_cdc_files` SET next_attempt = current_timestamp(6) \
         WHERE status IN ('missing', 'mismatch', 'denied', 'error')",
        (),
    )
    .await
    .map_err(err("making failed files due"))?;
    tx.commit().await.map_err(err("committing"))?;
    rep.repaired = requeue_lost(&mut c, cfg).await?;
    let total: u64 = status::counts(&mut c)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|(s, _)| !["deleted", "skipped"].contains(&s.as_str()))
        .map(|(_, n)| n)
        .sum();
    drop(c);
    let tty = std::io::stderr().is_terminal();
    let metrics = FilesMetrics::register(&prometheus::Registry::new());
    // Rows that fail get a next attempt in the future, so this ends.
    loop {
        let mut c = pool
            .get_conn()
            .await
            .map_err(err("connecting to the replica"))?;
        let due = status::due(&mut c, cfg.concurrency * 4)
            .await
            .map_err(|e| e.to_string())?;
        drop(c);
        if due.is_empty() {
            break;
        }
        rep.attempted += work(pool, cfg, &metrics, due).await.len() as u64;
        if tty {
            eprint!("\rfiles sync: {} of {total} attempted", rep.attempted);
        }
    }
    if tty {
        eprintln!();
    }
    let mut c = pool
        .get_conn()
        .await
        .map_err(err("connecting to the replica"))?;
    rep.counts = status::counts(&mut c).await.map_err(|e| e.to_string())?;
    Ok(rep)
}

/// Queues again the fetched files whose bytes are gone or differ from their hash.
async fn requeue_lost(c: &mut mysql_async::Conn, cfg: &FilesConfig) -> Result<u64, String> {
    let rows: Vec<(String, String, Option<String>, u64)> = c
        .query("SELECT name, file_url, content_hash, version FROM `_frappe_cdc_files` WHERE status = 'fetched'")
        .await
        .map_err(err("reading _frappe_cdc_files"))?;
    let mut n = 0;
    for (name, url, hash, version) in rows {
        let Some(path) = SitePath::from_url(&url) else {
            continue;
        };
        let have = super::store::md5_of(&cfg.to.path(&path))
            .await
            .map_err(|e| format!("reading {}: {e}", path.on_disk().display()))?;
        let lost = match (have, hash) {
            (None, _) => true,
            (Some(h), Some(w)) => !h.eq_ignore_ascii_case(&w),
            (Some(_), None) => false,
        };
        if lost {
            c.exec_drop(
                "UPDATE `_frappe_cdc_files` SET status = 'pending', version = version + 1, attempts = 0, \
                 next_attempt = current_timestamp(6), updated_at = current_timestamp(6) WHERE name = ? AND version = ?",
                (&name, version),
            )
            .await
            .map_err(err("queueing a lost file"))?;
            n += 1;
        }
    }
    Ok(n)
}

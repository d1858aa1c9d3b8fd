//! The initial snapshot (loading and emitting side).
//!
//! Phase 1 loads every tracked row, as of the snapshot position, into the state store and
//! commits it with `SnapshotState::InProgress { cursor: None }`. A crash during phase 1 leaves
//! nothing committed, so the next start takes a new snapshot. Phase 2 emits one `snapshot`
//! envelope per document in a fixed order (doctype, then name, then Singles), committing the
//! cursor after Kafka acknowledged each chunk; a restart resumes after the cursor. When all are
//! acknowledged the checkpoint becomes `Done` at the snapshot position, and streaming starts
//! there.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::CaptureError;
use super::commit::commit;
use super::processor::{DOC_CACHE_BYTES, load_catalog, put_catalog_row, put_routed};
use crate::envelope::{ENVELOPE_VERSION, EnvelopeOut, Op, Source, key_json};
use crate::frappe::catalog::{Catalog, Filter};
use crate::frappe::routing::{Route, route};
use crate::kafka::producer::Producer;
use crate::metrics::CaptureMetrics;
use crate::progress::{PROGRESS_VERSION, Progress as Marker, SnapshotProgress, TYPE_PROGRESS};
use crate::source::conn::DbTarget;
use crate::source::snapshot::{SnapItem, Snapshot};
use crate::state::{Checkpoint, DocCache, DocKey, DocShape, SnapshotState, Store};

/// Documents per acknowledged chunk of the emission phase.
const EMIT_CHUNK: u64 = 20_000;

/// Progress on a terminal (a bar) or in logs (every 5 s).
struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    tty: bool,
    last: Instant,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Self {
        Progress {
            what,
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.show();
        }
    }

    fn show(&self) {
        let pct = if self.total > 0 {
            (self.done as f64 / self.total as f64 * 100.0).min(100.0)
        } else {
            0.0
        };
        if self.tty {
            let filled = (pct / 5.0) as usize;
            eprint!(
                "\r{:<8} [{}{}] {:>5.1}% {}/{}",
                self.what,
                "#".repeat(filled),
                " ".repeat(20 - filled.min(20)),
                pct,
                self.done,
                self.total
            );
        } else {
            tracing::info!(
                phase = self.what,
                done = self.done,
                estimated = self.total,
                "snapshot progress"
            );
        }
    }

    fn finish(&self) {
        if self.tty {
            self.show();
            eprintln!();
        }
        tracing::info!(
            phase = self.what,
            done = self.done,
            "snapshot phase complete"
        );
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Takes the snapshot and loads it into the store (phase 1). Returns the InProgress checkpoint.
pub async fn load(
    target: &DbTarget,
    store: Arc<Store>,
    filter: &Filter,
    metrics: &CaptureMetrics,
    source_server_id: u32,
) -> Result<Checkpoint, CaptureError> {
    let mut snap = Snapshot::begin(target).await?;
    let tables: Vec<(String, u64)> = snap
        .tables()
        .await?
        .into_iter()
        .filter(|(t, _)| filter.reader_wants(t))
        .collect();
    let estimated: u64 = tables.iter().map(|(_, n)| n).sum();
    metrics.snapshot_rows_estimated.set(estimated as i64);
    tracing::info!(position = %snap.position, tables = tables.len(), estimated_rows = estimated, "snapshot started");
    let (tx, mut rx) = mpsc::channel::<SnapItem>(8);
    let filter2 = filter.clone();
    let metrics2 = metrics.clone();
    let store2 = Arc::clone(&store);
    let base = Checkpoint {
        position: snap.position.clone(),
        file: snap.file.clone(),
        pos: snap.pos,
        snapshot: SnapshotState::Done {
            at: snap.position.clone(),
        },
        source_server_id,
        schema: target.database.clone(),
        written_at: 0,
        commit_ts: 0,
        filter: Some(filter.describe()),
        envelope_version: Some(crate::envelope::ENVELOPE_VERSION),
        epoch: Some(crate::progress::new_epoch()),
    };
    // The loader commits only after the reader's `End` marker: a failed read drops the
    // uncommitted batch, and the next start takes a new snapshot.
    let loader = tokio::task::spawn_blocking(move || -> Result<Checkpoint, CaptureError> {
        let mut b = store2.batch()?;
        // Child rows arrive table by table, not document by document: the cache gathers a
        // document's rows across tables and writes it back when the budget is reached.
        let mut docs = DocCache::new(DOC_CACHE_BYTES);
        let mut catalog = Catalog::default();
        let mut parents: BTreeSet<String> = BTreeSet::new();
        let mut progress = Progress::new("load", estimated);
        let mut complete = false;
        while let Some(item) = rx.blocking_recv() {
            match item {
                SnapItem::End => {
                    complete = true;
                    break;
                }
                SnapItem::Rows(desc, rows) => {
                    let n = rows.len() as u64;
                    for row in rows {
                        if desc.table == "tabDocType" {
                            put_catalog_row(&mut b, &desc, &row)?;
                            continue;
                        }
                        let r = route(&desc, &row, &catalog, &filter2);
                        if let Route::Doc {
                            key, link: None, ..
                        } = &r
                        {
                            parents.insert(key.doctype.clone());
                        }
                        put_routed(&mut b, &mut docs, &desc, &r, row)?;
                    }
                    if docs.over_budget() {
                        docs.flush(&mut b)?;
                    }
                    metrics2.snapshot_rows.inc_by(n);
                    progress.add(n);
                }
                SnapItem::TableDone(t) => {
                    if t == "tabDocType" {
                        catalog = load_catalog(&b)?;
                    }
                }
            }
        }
        if !complete {
            docs.discard();
            b.abort()?;
            return Err(CaptureError::Internal("snapshot read ended early"));
        }
        docs.flush(&mut b)?;
        progress.finish();
        let singles: Vec<String> = b
            .single_doctypes()?
            .into_iter()
            .filter(|d| filter2.tracks(d))
            .collect();
        let doctypes: Vec<String> = parents.into_iter().collect();
        let mut total = singles.len() as u64;
        for d in &doctypes {
            total += b.count_docs(d)?;
        }
        let mut cp = base;
        cp.snapshot = SnapshotState::InProgress {
            at: cp.position.clone(),
            emitted: 0,
            total,
            doctypes,
            singles,
            cursor: None,
        };
        cp.written_at = now_secs();
        b.commit(&cp)?;
        Ok(cp)
    });
    let mut read_err = None;
    for (t, _) in &tables {
        if let Err(e) = snap.read_table(t, &tx).await {
            read_err = Some(e);
            break;
        }
    }
    if read_err.is_none() {
        let _ = tx.send(SnapItem::End).await;
    }
    drop(tx);
    let loaded = loader
        .await
        .map_err(|_| CaptureError::Internal("snapshot loader panicked"))?;
    if let Some(e) = read_err {
        return Err(e.into());
    }
    let cp = loaded?;
    snap.finish().await?;
    Ok(cp)
}

/// Emits the snapshot envelopes (phase 2) and returns the `Done` checkpoint.
/// `on_topic`: snapshot envelopes an exactly-once capture of this state already committed
/// (from the newest progress marker); they are emitted again with the producer muted, so the
/// rest follows exactly once (I15).
pub fn emit(
    store: &Store,
    cp: Checkpoint,
    producer: &mut Producer,
    metrics: &CaptureMetrics,
    flush_timeout: Duration,
    on_topic: u64,
) -> Result<Checkpoint, CaptureError> {
    let SnapshotState::InProgress {
        at,
        mut emitted,
        total,
        doctypes,
        singles,
        mut cursor,
    } = cp.snapshot.clone()
    else {
        return Ok(cp);
    };
    let mut progress = Progress::new("emit", total);
    progress.done = emitted;
    let source_for = |index: u64| Source {
        server_id: cp.source_server_id,
        db: cp.schema.clone(),
        gtid: None,
        position: at.to_string(),
        file: cp.file.clone(),
        pos: cp.pos,
        commit_ts: cp.written_at,
        doc_index: index,
        doc_count: total,
        snapshot: true,
    };
    let mut order: Vec<(String, DocShape)> = doctypes
        .iter()
        .map(|d| (d.clone(), DocShape::Table))
        .collect();
    order.extend(singles.iter().map(|d| (d.clone(), DocShape::Single)));
    // Skip the doctypes fully emitted before a restart.
    let mut start = 0;
    if let Some(c) = &cursor {
        start = order.iter().position(|(d, _)| d == &c.doctype).unwrap_or(0);
    }
    let mut since_commit = 0u64;
    let epoch = cp.epoch.clone().unwrap_or_default();
    let marker = |emitted: u64| Marker {
        version: PROGRESS_VERSION,
        kind: TYPE_PROGRESS.into(),
        epoch: epoch.clone(),
        partition: 0,
        position: at.to_string(),
        file: cp.file.clone(),
        pos: cp.pos,
        commit_ts: cp.commit_ts,
        snapshot: Some(SnapshotProgress { emitted, total }),
        written_at: now_secs(),
    };
    if emitted < on_topic {
        tracing::info!(
            committed = on_topic,
            checkpointed = emitted,
            "the topic holds snapshot envelopes past the checkpoint; re-reading them without sending"
        );
    }
    let mut b = store.batch()?;
    for (doctype, shape) in order.iter().skip(start) {
        let mut after_name: Option<String> = match &cursor {
            Some(c) if &c.doctype == doctype => Some(c.name.clone()),
            _ => None,
        };
        if *shape == DocShape::Single && after_name.is_some() {
            continue;
        }
        loop {
            let images: Vec<(String, Option<String>)> = match shape {
                DocShape::Table => b
                    .docs_after(doctype, after_name.as_deref(), 1000)?
                    .into_iter()
                    .map(|(name, img)| (name, Some(img.render())))
                    .collect(),
                DocShape::Single if after_name.is_none() => {
                    let key = DocKey {
                        doctype: doctype.clone(),
                        name: doctype.clone(),
                    };
                    vec![(doctype.clone(), b.assemble(&key, *shape)?)]
                }
                DocShape::Single => Vec::new(),
            };
            if images.is_empty() {
                break;
            }
            after_name = images.last().map(|(n, _)| n.clone());
            for (name, img) in images {
                let Some(img) = img else {
                    continue;
                };
                let key = DocKey {
                    doctype: doctype.clone(),
                    name,
                };
                let name = &key.name;
                let changes = Default::default();
                let source = source_for(emitted);
                let env = EnvelopeOut {
                    version: ENVELOPE_VERSION,
                    op: Op::Snapshot,
                    doctype,
                    name,
                    old_name: None,
                    before: None,
                    after: Some(&img),
                    changes: &changes,
                    source: &source,
                };
                let payload = env.to_vec();
                producer.set_muted(emitted < on_topic);
                producer.send(doctype, &key_json(doctype, name), Some(&payload))?;
                metrics
                    .documents
                    .with_label_values(&[doctype, "snapshot"])
                    .inc();
                emitted += 1;
                since_commit += 1;
                progress.add(1);
                cursor = Some(key);
            }
            if since_commit >= EMIT_CHUNK {
                commit(producer, metrics, &marker(emitted), flush_timeout)?;
                let mut next = cp.clone();
                next.snapshot = SnapshotState::InProgress {
                    at: at.clone(),
                    emitted,
                    total,
                    doctypes: doctypes.clone(),
                    singles: singles.clone(),
                    cursor: cursor.clone(),
                };
                next.written_at = now_secs();
                b.commit(&next)?;
                b = store.batch()?;
                since_commit = 0;
            }
        }
    }
    producer.set_muted(false);
    commit(producer, metrics, &marker(emitted), flush_timeout)?;
    progress.finish();
    let mut done = cp.clone();
    done.position = at.clone();
    done.snapshot = SnapshotState::Done { at };
    done.written_at = now_secs();
    b.commit(&done)?;
    tracing::info!(documents = emitted, position = %done.position, "snapshot complete");
    Ok(done)
}

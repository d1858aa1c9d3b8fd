//! The capture loop's processing half: applies each binlog group's rows to the state store,
//! groups them by document, and at the group's commit emits one envelope per touched document.
//!
//! Consistency: everything runs inside one open store batch. A checkpoint (every
//! `checkpoint_interval`, on idle, and on shutdown, always between groups) first waits until
//! Kafka acknowledged every message sent, then writes the GTID position into the batch and
//! commits it. A crash before that commit loses the batch: the store is back at the previous
//! checkpoint and the groups after it are read and emitted again (same source positions, so
//! consumers can drop the duplicates). Nothing is ever acknowledged before it is durable in
//! Kafka, so no committed change can be skipped.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::envelope::{ENVELOPE_VERSION, EnvelopeOut, Op, RowCounts, Source, key_json};
use crate::frappe::catalog::{Catalog, Filter};
use crate::frappe::routing::{Route, only_ignored_changed, route};
use crate::kafka::producer::Producer;
use crate::metrics::CaptureMetrics;
use crate::position::{Gtid, GtidPosition};
use crate::source::binlog::BinlogItem;
use crate::source::rows::{RowChange, RowImage, RowOp, RowsBatch, TableDesc};
use crate::state::{
    Batch, Checkpoint, ChildRow, DocCache, DocKey, DocShape, PendingDoc, PendingDocs,
    SnapshotState, Store,
};

/// Bytes of document images a transaction keeps in memory before writing them back into the
/// open batch early (a huge transaction then reloads documents it touches again).
pub(crate) const DOC_CACHE_BYTES: usize = 32 << 20;

use super::CaptureError;
use super::retention::{CheckpointAt, CheckpointView};

mod checkpoint;
mod emit;
use super::statement::{self, Statement};

/// Static settings of the processor.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub source_server_id: u32,
    pub schema: String,
    pub checkpoint_interval: Duration,
    pub spill_at: usize,
    pub flush_timeout: Duration,
    /// Where the durable checkpoint is published for the retention watcher.
    pub checkpoint_view: CheckpointView,
    /// The state's epoch, carried by progress markers.
    pub epoch: String,
    /// Exactly-once restart: the position the topic already holds every transaction up to
    /// (its newest committed marker), when that is ahead of the checkpoint. Transactions up to
    /// it are processed with the producer muted (I15, ARCHITECTURE.md).
    pub committed: Option<GtidPosition>,
}

/// Applies binlog items to the store and emits envelopes.
pub struct Processor {
    cfg: ProcessorConfig,
    store: Arc<Store>,
    batch: Option<Batch>,
    pending: PendingDocs,
    /// Documents changed since the last checkpoint (write-back: a document saved many times
    /// between checkpoints is read and written once), flushed into the batch at the
    /// checkpoint or when over budget, always between or inside groups of the same batch.
    docs: DocCache,
    renames: Vec<(usize, DocKey)>,
    changed_count: u64,
    /// Pending documents this transaction found absent (no `before`): the ones it may also
    /// have deleted again, which are not emitted and so not counted in `doc_count`.
    created: Vec<usize>,
    catalog: Catalog,
    filter: Filter,
    producer: Producer,
    metrics: CaptureMetrics,
    position: GtidPosition,
    snapshot_at: GtidPosition,
    file: String,
    pos: u64,
    cur_gtid: Option<Gtid>,
    last_commit_ts: u64,
    catalog_dirty: bool,
    dirty: bool,
    last_checkpoint: Instant,
    /// See `ProcessorConfig::committed`; cleared at the first transaction past it.
    skip_through: Option<GtidPosition>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Loads the catalog from the `tabDocType` rows in the store.
pub fn load_catalog(b: &Batch) -> Result<Catalog, CaptureError> {
    let mut rows = Vec::new();
    b.for_each_row("tabDocType", |_, json| {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) {
            rows.push(v);
        }
        Ok(())
    })?;
    Ok(Catalog::from_rows(rows.iter()))
}

/// Stores a routed row: a document or child row (in the document cache), or a Single's field.
/// Shared by the snapshot loader and the binlog processor so both build the same state.
pub(crate) fn put_routed(
    b: &mut Batch,
    docs: &mut DocCache,
    table: &TableDesc,
    r: &Route,
    row: RowImage,
) -> Result<(), CaptureError> {
    match r {
        Route::Doc {
            key, name, link, ..
        } => {
            let json = row.into_json();
            match link {
                None => docs.set_parent(b, key, Some(json))?,
                Some(l) => docs.put_child(
                    b,
                    key,
                    ChildRow {
                        field: l.parentfield.clone(),
                        idx: l.idx,
                        name: name.clone(),
                        table: table.table.clone(),
                        json,
                    },
                )?,
            }
        }
        Route::Single { key, field } => {
            let v = table
                .column("value")
                .and_then(|i| row.cell(i))
                .unwrap_or("null");
            b.put_single(&key.doctype, field, v.as_bytes())?;
        }
        Route::Skip { .. } => {}
    }
    Ok(())
}

/// Removes a routed row (the route of its before image).
fn delete_routed(
    b: &mut Batch,
    docs: &mut DocCache,
    table: &TableDesc,
    r: &Route,
) -> Result<(), CaptureError> {
    match r {
        Route::Doc {
            key, name, link, ..
        } => match link {
            None => docs.set_parent(b, key, None)?,
            Some(l) => docs.remove_child(b, key, &table.table, name, &l.parentfield, l.idx)?,
        },
        Route::Single { key, field } => b.delete_single(&key.doctype, field)?,
        Route::Skip { .. } => {}
    }
    Ok(())
}

/// Stores a `tabDocType` row (catalog input), keyed by its name.
pub(crate) fn put_catalog_row(
    b: &mut Batch,
    table: &TableDesc,
    row: &RowImage,
) -> Result<(), CaptureError> {
    if let Some(name) = row.text(table.name_col) {
        b.put_row(&table.table, &name, row.json().as_bytes())?;
    }
    Ok(())
}

fn op_slot(op: RowOp) -> usize {
    match op {
        RowOp::Insert => 0,
        RowOp::Update => 1,
        RowOp::Delete => 2,
    }
}

impl Processor {
    /// A processor resuming from `cp`.
    pub fn new(
        cfg: ProcessorConfig,
        store: Arc<Store>,
        cp: &Checkpoint,
        filter: Filter,
        producer: Producer,
        metrics: CaptureMetrics,
    ) -> Result<Self, CaptureError> {
        let batch = store.batch()?;
        let catalog = load_catalog(&batch)?;
        let cfg_committed = cfg.committed.clone();
        let snapshot_at = match &cp.snapshot {
            SnapshotState::Done { at } | SnapshotState::InProgress { at, .. } => at.clone(),
        };
        cfg.checkpoint_view.set(CheckpointAt {
            file: cp.file.clone(),
            pos: cp.pos,
            commit_ts: cp.commit_ts,
        });
        Ok(Processor {
            pending: PendingDocs::new(cfg.spill_at),
            docs: DocCache::new(DOC_CACHE_BYTES),
            cfg,
            store,
            batch: Some(batch),
            renames: Vec::new(),
            changed_count: 0,
            created: Vec::new(),
            catalog,
            filter,
            producer,
            metrics,
            position: cp.position.clone(),
            snapshot_at,
            file: cp.file.clone(),
            pos: cp.pos,
            cur_gtid: None,
            last_commit_ts: cp.commit_ts,
            catalog_dirty: false,
            dirty: false,
            last_checkpoint: Instant::now(),
            skip_through: cfg_committed,
        })
    }

    /// The position after the last group processed.
    pub fn position(&self) -> &GtidPosition {
        &self.position
    }

    /// True while inside a group.
    pub fn in_group(&self) -> bool {
        self.cur_gtid.is_some()
    }

    fn batch(&mut self) -> Result<&mut Batch, CaptureError> {
        if self.batch.is_none() {
            self.batch = Some(self.store.batch()?);
        }
        // Set just above when missing.
        self.batch.as_mut().ok_or(CaptureError::Internal("batch"))
    }

    /// Handles one item from the reader.
    pub fn on_item(&mut self, item: BinlogItem) -> Result<(), CaptureError> {
        self.metrics.binlog_events.inc();
        // A checkpoint commits and closes the batch; the next item works in a new one.
        self.batch()?;
        match item {
            BinlogItem::Begin { gtid, .. } => {
                if self.cur_gtid.is_some() {
                    return Err(CaptureError::Internal("group started inside a group"));
                }
                self.cur_gtid = Some(gtid);
                self.metrics
                    .gtid_seq
                    .with_label_values(&[&gtid.domain_id.to_string()])
                    .set(gtid.seq_no as f64);
            }
            BinlogItem::Rows(rb) => self.on_rows(rb)?,
            BinlogItem::Query { query, .. } => {
                self.metrics.ddl.inc();
                match statement::classify(&query, &self.filter) {
                    Statement::Ignore => {}
                    Statement::Rewrites { verb } => {
                        tracing::warn!(
                            statement = verb,
                            "DDL that renames or drops a table without row events; documents of a renamed or dropped tracked table are not re-emitted"
                        );
                    }
                    Statement::Halt { verb, table } => {
                        return Err(CaptureError::StatementChange {
                            verb,
                            table,
                            file: self.file.clone(),
                            pos: self.pos,
                        });
                    }
                }
            }
            BinlogItem::Commit { ts, file, pos } => self.on_commit(ts, file, pos)?,
            BinlogItem::Heartbeat { file, pos } => {
                if self.cur_gtid.is_none() {
                    self.metrics.source_lag.set(0.0);
                    if !file.is_empty() {
                        self.file = file;
                        self.pos = pos;
                    }
                }
                self.maybe_checkpoint(false)?;
            }
        }
        Ok(())
    }

    /// Records that a row of `table` touched the document `key`: the first touch captures the
    /// before image (from the store, before any change of this transaction is applied) and
    /// sets the flags in one write; later touches only bump the counts.
    fn touch(
        &mut self,
        key: &DocKey,
        shape: DocShape,
        table: &str,
        slot: usize,
        changed: bool,
    ) -> Result<usize, CaptureError> {
        let b = self.batch.as_ref().ok_or(CaptureError::Internal("batch"))?;
        if let Some(i) = self.pending.find(b, key)? {
            let mut flipped = false;
            self.pending.update(b, i, |d| {
                if changed && !d.changed {
                    d.changed = true;
                    flipped = true;
                }
                d.tables.entry(table.to_string()).or_insert([0; 3])[slot] += 1;
            })?;
            if flipped {
                self.changed_count += 1;
            }
            return Ok(i);
        }
        let img = self.docs.get(b, key)?;
        let before = b.render(key, img, shape)?;
        let mut counts = [0; 3];
        counts[slot] = 1;
        let doc = PendingDoc {
            key: key.clone(),
            single: shape == DocShape::Single,
            before,
            changed,
            tables: BTreeMap::from([(table.to_string(), counts)]),
            renamed_to: None,
        };
        if changed {
            self.changed_count += 1;
        }
        let absent = doc.before.is_none();
        let i = self.pending.push(b, doc)?;
        if absent {
            self.created.push(i);
        }
        Ok(i)
    }

    fn route_key(r: &Route) -> Option<(&DocKey, DocShape)> {
        match r {
            Route::Doc { key, shape, .. } => Some((key, *shape)),
            Route::Single { key, .. } => Some((key, DocShape::Single)),
            Route::Skip { .. } => None,
        }
    }

    fn apply_delete(&mut self, table: &TableDesc, r: &Route) -> Result<(), CaptureError> {
        self.batch()?;
        let b = self.batch.as_mut().ok_or(CaptureError::Internal("batch"))?;
        delete_routed(b, &mut self.docs, table, r)
    }

    fn apply_put(
        &mut self,
        table: &TableDesc,
        r: &Route,
        row: RowImage,
    ) -> Result<(), CaptureError> {
        self.batch()?;
        let b = self.batch.as_mut().ok_or(CaptureError::Internal("batch"))?;
        put_routed(b, &mut self.docs, table, r, row)
    }

    fn on_rows(&mut self, rb: RowsBatch) -> Result<(), CaptureError> {
        let op_label = match rb.op {
            RowOp::Insert => "insert",
            RowOp::Update => "update",
            RowOp::Delete => "delete",
        };
        self.metrics
            .binlog_rows
            .with_label_values(&[&rb.table.table, op_label])
            .inc_by(rb.rows.len() as u64);
        let table = rb.table;
        for RowChange { before, after } in rb.rows {
            let rb_route = before
                .as_ref()
                .map(|r| route(&table, r, &self.catalog, &self.filter));
            let ra_route = after
                .as_ref()
                .map(|r| route(&table, r, &self.catalog, &self.filter));
            let catalog_row = matches!(rb_route, Some(Route::Skip { catalog: true }))
                || matches!(ra_route, Some(Route::Skip { catalog: true }));
            if catalog_row {
                let b = self.batch()?;
                if let Some(row) = &before
                    && let Some(name) = row.text(table.name_col)
                {
                    b.delete_row(&table.table, &name)?;
                }
                if let Some(row) = &after {
                    put_catalog_row(b, &table, row)?;
                }
                self.catalog_dirty = true;
                continue;
            }
            let changed = match (&before, &after) {
                (Some(b), Some(a)) => !only_ignored_changed(&table, b, a),
                _ => true,
            };
            let slot = op_slot(rb.op);
            let kb = rb_route
                .as_ref()
                .and_then(Self::route_key)
                .map(|(k, s)| (k.clone(), s));
            let ka = ra_route
                .as_ref()
                .and_then(Self::route_key)
                .map(|(k, s)| (k.clone(), s));
            let ib = match &kb {
                Some((k, s)) => Some(self.touch(k, *s, &table.table, slot, changed)?),
                None => None,
            };
            let ia = match &ka {
                Some((k, _)) if kb.as_ref().is_some_and(|(b, _)| b == k) => ib,
                Some((k, s)) => Some(self.touch(k, *s, &table.table, slot, changed)?),
                None => None,
            };
            if ib.is_none() && ia.is_none() {
                continue;
            }
            if let Some(r) = &rb_route {
                self.apply_delete(&table, r)?;
            }
            if let (Some(r), Some(row)) = (&ra_route, after) {
                self.apply_put(&table, r, row)?;
            }
            // A parent row whose name changed is a rename of the document.
            if let (
                Some(Route::Doc {
                    key: kb,
                    link: None,
                    ..
                }),
                Some(Route::Doc {
                    key: ka,
                    link: None,
                    ..
                }),
                Some(i),
            ) = (&rb_route, &ra_route, ib)
                && kb != ka
            {
                let b = self.batch.as_ref().ok_or(CaptureError::Internal("batch"))?;
                let new_name = ka.name.clone();
                self.pending
                    .update(b, i, |d| d.renamed_to = Some(new_name))?;
                self.renames.push((i, ka.clone()));
            }
        }
        if self.docs.over_budget() {
            let b = self.batch.as_mut().ok_or(CaptureError::Internal("batch"))?;
            self.docs.flush(b)?;
        }
        Ok(())
    }

    fn on_commit(&mut self, ts: u32, file: String, pos: u64) -> Result<(), CaptureError> {
        let Some(gtid) = self.cur_gtid else {
            // A commit without a GTID (cannot happen with capability 4): nothing to do.
            return Ok(());
        };
        if self.catalog_dirty {
            let b = self.batch()?;
            self.catalog = load_catalog(b)?;
            self.catalog_dirty = false;
            tracing::info!(doctypes = self.catalog.len(), "doctype catalog reloaded");
        }
        let mut next = self.position.clone();
        next.advance(gtid)?;
        if !file.is_empty() {
            self.file = file;
        }
        self.pos = pos;
        self.last_commit_ts = ts as u64;
        let lag = now_secs().saturating_sub(ts as u64);
        self.metrics.source_lag.set(lag as f64);
        if self.pending.is_empty() {
            self.metrics
                .transactions
                .with_label_values(&["filtered"])
                .inc();
        } else {
            let source = Source {
                server_id: gtid.server_id,
                db: self.cfg.schema.clone(),
                gtid: Some(gtid.to_string()),
                position: next.to_string(),
                file: self.file.clone(),
                pos,
                commit_ts: ts as u64,
                doc_index: 0,
                doc_count: 0,
                snapshot: false,
            };
            // I15: a transaction the topic already holds is processed but not sent again.
            if let Some(done) = &self.skip_through {
                if done.contains(&gtid) {
                    self.producer.set_muted(true);
                } else {
                    tracing::info!(position = %self.position, "caught up with what the topic holds; sending again");
                    self.producer.set_muted(false);
                    self.skip_through = None;
                }
            }
            let emitted = self.emit_group(source)?;
            self.metrics.tx_docs.observe(emitted as f64);
            self.metrics
                .transactions
                .with_label_values(&[if emitted > 0 { "emitted" } else { "filtered" }])
                .inc();
        }
        let b = self.batch.as_mut().ok_or(CaptureError::Internal("batch"))?;
        if self.docs.over_budget() {
            self.docs.flush(b)?;
        }
        self.pending.clear(b)?;
        self.renames.clear();
        self.changed_count = 0;
        self.created.clear();
        self.position = next;
        self.cur_gtid = None;
        self.dirty = true;
        self.maybe_checkpoint(false)
    }
}

//! The bulk side of the apply loop: which polled messages can share a replica transaction
//! (`bulkable`, parsed off the apply task), runs of them flushed as bulk batches
//! (`bulk.rs`), optionally split over `--writers` connections that commit in order.
//!
//! Consistency and crash behaviour are the loop's (see `run.rs`): every batch stores its
//! partitions' next offsets in its last transaction, so a crash replays it from the stored
//! offsets and the applied positions make the replay a no-op. A batch that fails for good is
//! re-run one message at a time, so only the bad message is dead-lettered.

use super::*;

/// Documents below which a part is not worth its own transaction.
const MIN_PART: usize = 32;

/// How many parts a batch of `docs` documents is split into: up to `writers`, each of at
/// least `MIN_PART` documents.
fn split(docs: usize, writers: usize) -> usize {
    (docs / MIN_PART).clamp(1, writers.max(1))
}

/// The ranges of `n` items cut into up to `parts` consecutive parts of about equal size,
/// never between item `i - 1` and item `i` when `joined(i)` (transaction consistency: both
/// belong to one source transaction, which must stay in one replica transaction). A cut that
/// would fall inside a source transaction moves to the nearer of its ends, so there can be
/// fewer parts.
fn cuts(n: usize, parts: usize, joined: impl Fn(usize) -> bool) -> Vec<std::ops::Range<usize>> {
    let size = n.div_ceil(parts.max(1)).max(1);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for k in 1..parts {
        let even = (k * size).max(start + 1);
        let mut after = even;
        while after < n && joined(after) {
            after += 1;
        }
        let mut before = even;
        while before > start && joined(before) {
            before -= 1;
        }
        let at = if before > start && even - before < after - even {
            before
        } else {
            after
        };
        if at >= n {
            break;
        }
        out.push(start..at);
        start = at;
    }
    if start < n {
        out.push(start..n);
    }
    out
}

/// How `m` can go into a bulk batch: a document to apply, or a message that only moves the
/// offset (a tombstone, a filtered document); None for the one-message path. Pure, so it runs
/// on a blocking thread while the previous batch is being applied.
pub(super) fn bulkable(
    filter: &Filter,
    row_filters: &[RowFilter],
    m: &OwnedMessage,
) -> (Option<Pending>, Kind) {
    let (partition, next) = (m.partition(), m.offset() + 1);
    // A message admit() rejects takes the one-message path, which dead-letters it.
    let (e, key) = match admit_from(m.key(), m.payload(), Some(partition)) {
        Err(_) => return (None, Kind::Other),
        Ok(Admitted::Tombstone(_)) => {
            let skip = Pending::Skip {
                partition,
                next,
                outcome: Outcome::Tombstone,
                doctype: None,
            };
            return (Some(skip), Kind::Other);
        }
        Ok(Admitted::Progress(p)) => {
            let skip = Pending::Skip {
                partition,
                next,
                outcome: Outcome::Progress,
                doctype: None,
            };
            let pos = sequence::pos_of(&p.file, p.pos);
            return (Some(skip), Kind::Marker { pos });
        }
        Ok(Admitted::Doc(e, key)) => (*e, key),
    };
    let kind = kind_of(&e);
    if !filter.tracks(&e.doctype) || !RowFilter::admits(row_filters, &e) {
        let skip = Pending::Skip {
            partition,
            next,
            outcome: Outcome::Filtered,
            doctype: Some(e.doctype),
        };
        return (Some(skip), kind);
    }
    // Renames and Singles take the one-message path. A Single is the document named after
    // its doctype (capture routes `tabSingles` rows so); an ordinary document with such a
    // name only loses the batching, and a Single that slipped past is caught by the bulk
    // path itself (`BulkError::NotBulk`).
    if e.op == Op::Rename || e.old_name.is_some() || e.name == e.doctype {
        return (None, kind);
    }
    let loadable = e.after.as_ref().is_some_and(infile::loadable);
    let item = BulkItem {
        env: e,
        key,
        partition,
        next,
        loadable,
        hold: false,
    };
    (Some(Pending::Doc(Box::new(item))), kind)
}

/// The source transaction an envelope belongs to, for the sequencer.
pub(super) fn kind_of(e: &Envelope) -> Kind {
    let s = &e.source;
    Kind::Doc {
        tx: sequence::tx_id(s),
        pos: sequence::pos_of(&s.file, s.pos),
        index: s.doc_index,
        count: s.doc_count,
    }
}

/// The source transactions (not yet in `held`) with a conflicting document and another
/// that would be applied or marked: `hold-transaction` holds them whole.
fn to_hold<'a>(
    outcomes: impl Iterator<Item = (&'a Envelope, &'a Outcome)>,
    held: &HashSet<String>,
) -> HashSet<String> {
    let mut conflicted = HashSet::new();
    let mut written = HashSet::new();
    for (e, o) in outcomes {
        let tx = sequence::tx_id(&e.source);
        match o {
            Outcome::Conflict => conflicted.insert(tx),
            Outcome::Applied | Outcome::AlreadyApplied => written.insert(tx),
            _ => false,
        };
    }
    conflicted
        .intersection(&written)
        .filter(|t| !held.contains(*t))
        .cloned()
        .collect()
}

/// Test-only fault point (debug builds only): with `FRAPPE_CDC_FAULT_AFTER_PART=k` the
/// process aborts right after part `k` of a split batch committed and before the next part
/// commits: the crash window of the commit protocol, hit deterministically by a test.
#[cfg(debug_assertions)]
fn fault_after_part(k: usize, parts: usize) {
    let at = std::env::var("FRAPPE_CDC_FAULT_AFTER_PART")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if k < parts && at == Some(k) {
        eprintln!("fault point: aborting after part {k} of {parts} committed");
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
fn fault_after_part(_: usize, _: usize) {}

/// Frees `v` on a blocking thread: a batch is ~5 MB in many small allocations, and freeing
/// it on the apply task would hold up the next batch's transaction.
fn drop_later<T: Send + 'static>(v: T) {
    tokio::task::spawn_blocking(move || drop(v));
}

/// A message of a bulk batch.
pub(super) enum Pending {
    /// A document to apply.
    Doc(Box<BulkItem>),
    /// A message that only moves the offset: a tombstone, a progress marker or a filtered
    /// document.
    Skip {
        partition: i32,
        next: i64,
        outcome: Outcome,
        doctype: Option<String>,
    },
}

impl Applier {
    /// Applies one polled batch in order (I8, ARCHITECTURE.md): runs of bulkable messages (no document twice) in
    /// bulk transactions, the others one at a time. False when shutdown interrupted it.
    pub(super) async fn apply_batch(
        &mut self,
        io: &mut LoopIo<'_>,
        msgs: Vec<OwnedMessage>,
        parsed: Vec<Parsed>,
    ) -> Result<bool, ApplyError> {
        self.note_bootstrap(msgs.iter().map(|m| (m.partition(), m.offset())));
        let mut pending: Vec<(usize, Pending)> = Vec::new();
        let mut keys: HashSet<(String, String)> = HashSet::new();
        for (i, (p, _)) in parsed.into_iter().enumerate() {
            match p {
                Some(p) => {
                    if let Pending::Doc(item) = &p {
                        let k = (item.env.doctype.clone(), item.env.name.clone());
                        if keys.contains(&k) {
                            if !self.flush(io, &msgs, &mut pending, Vec::new()).await? {
                                return Ok(false);
                            }
                            keys.clear();
                        }
                        keys.insert(k);
                    }
                    pending.push((i, p));
                }
                None => {
                    if !self.flush(io, &msgs, &mut pending, Vec::new()).await? {
                        return Ok(false);
                    }
                    keys.clear();
                    if !self.process_one(io, &msgs[i]).await? {
                        return Ok(false);
                    }
                }
            }
        }
        let done = self.flush(io, &msgs, &mut pending, Vec::new()).await;
        drop_later(msgs);
        done
    }

    /// Sets `missing_is_new` when `msgs` hold offsets below the high watermarks a fresh
    /// replica started under (see `Applier::bootstrap_until`).
    pub(super) fn note_bootstrap(&mut self, at: impl IntoIterator<Item = (i32, i64)>) {
        self.cmp.missing_is_new = at
            .into_iter()
            .any(|(p, o)| self.bootstrap_until.get(&p).is_some_and(|high| o < *high));
    }

    /// Applies `together` (renames, Singles: one document at a time) and `items` and stores
    /// `offsets` on the replica: in one transaction, or, without `together`, split over up
    /// to `writers` connections (see `split`; in transaction consistency only between source
    /// transactions, see `cuts`). Returns the bulk result and the outcomes of `together`.
    async fn run_bulk(
        &mut self,
        items: &[BulkItem],
        together: &[(Envelope, EventKey)],
        held: &HashSet<String>,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(BulkResult, Vec<Outcome>), BulkError> {
        let whole = self.cfg.consistency == Consistency::Transaction;
        // Transaction consistency splits only between source transactions: the parts commit
        // in source order, so a reader still sees a prefix of the source's history. Holding a
        // source transaction (`hold-transaction`) needs the whole batch's outcomes at once.
        let ranges =
            if self.serial_retry || !together.is_empty() || (whole && self.cfg.hold_transactions) {
                std::iter::once(0..items.len()).collect()
            } else {
                let tx = |i: usize| sequence::tx_id(&items[i].env.source);
                cuts(items.len(), split(items.len(), self.cfg.writers), |i| {
                    whole && tx(i) == tx(i - 1)
                })
            };
        let parts = ranges.len();
        let mut first = Vec::with_capacity(together.len());
        let started = std::time::Instant::now();
        let mut mode = BulkMode {
            load_data: self.load_data,
            read_new: self.read_new,
            files: self.cfg.files.is_some(),
        };
        let r = if parts <= 1 {
            let mut conn = self.pool.get_conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let mut missing = BTreeSet::new();
            let mut decisions = Vec::new();
            for (e, key) in together {
                let hold = held.contains(&sequence::tx_id(&e.source));
                let (o, report) = apply_document_held(
                    &mut tx,
                    &mut self.cache,
                    &self.cmp,
                    e,
                    *key,
                    hold,
                    self.cfg.files.is_some(),
                )
                .await?;
                missing.extend(report.missing_columns);
                decisions.extend(report.decisions);
                first.push(o);
            }
            let r = apply_bulk(
                &mut tx,
                &mut self.cache,
                &self.cmp,
                (&self.cfg.group, &self.cfg.topic),
                items,
                offsets,
                &mut mode,
            )
            .await;
            self.load_data = mode.load_data;
            let mut r = r?;
            r.missing_columns.extend(missing);
            r.decisions.extend(decisions);
            if self.cfg.hold_transactions {
                let hold = to_hold(
                    items
                        .iter()
                        .map(|it| &it.env)
                        .zip(&r.outcomes)
                        .chain(together.iter().map(|(e, _)| e).zip(&first)),
                    held,
                );
                if !hold.is_empty() {
                    // Dropping the transaction rolls it back.
                    return Err(BulkError::Hold(hold));
                }
            }
            tx.commit().await?;
            r
        } else {
            match self.run_parts(items, offsets, &ranges, mode).await {
                Err(BulkError::Replica(e)) if lock_failure(&e) => {
                    // Parts waiting on each other's rows (a table without the index the
                    // locked reads need, say) would wait until they time out: retry alone.
                    tracing::info!(error = %e, "split batch hit a lock; retrying it as one transaction");
                    self.metrics
                        .split_batches
                        .with_label_values(&["rolled_back"])
                        .inc();
                    self.serial_retry = true;
                    return Err(BulkError::Replica(e));
                }
                r => {
                    let r = r?;
                    self.metrics
                        .split_batches
                        .with_label_values(&["committed"])
                        .inc();
                    r
                }
            }
        };
        self.serial_retry = false;
        self.read_new = false;
        self.metrics
            .tx_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            docs = items.len(),
            parts,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "bulk batch committed"
        );
        if !items.is_empty() {
            self.metrics.batch_docs.observe(items.len() as f64);
        }
        self.metrics
            .bulk_rows
            .with_label_values(&["load"])
            .inc_by(r.loaded_rows);
        self.metrics
            .bulk_rows
            .with_label_values(&["upsert"])
            .inc_by(r.upserted_rows);
        Ok((r, first))
    }

    /// I5 (ARCHITECTURE.md). `items` in `parts` consecutive slices, each in its own READ COMMITTED transaction on
    /// its own connection, run concurrently. Nothing commits unless every part succeeded;
    /// then they commit in order and the last one carries the offsets, so a crash (or a failed
    /// commit) between two commits replays the batch and the applied positions written by the
    /// committed parts turn their documents into no-ops. The parts never touch the same rows
    /// (no document twice in a batch, offsets only in the last); READ COMMITTED keeps their
    /// locked reads of documents the replica does not have yet from taking gap locks that
    /// would make their inserts deadlock each other.
    async fn run_parts(
        &mut self,
        items: &[BulkItem],
        offsets: &BTreeMap<i32, i64>,
        ranges: &[std::ops::Range<usize>],
        mode: BulkMode,
    ) -> Result<BulkResult, BulkError> {
        let parts = ranges.len();
        let t0 = std::time::Instant::now();
        let mut conns = Vec::with_capacity(parts);
        for _ in 0..parts {
            let mut c = self.pool.get_conn().await?;
            // A wait on a row another part holds cannot end before that part commits, which
            // it does only after this one finished: give up early and retry serially.
            c.query_drop("SET SESSION innodb_lock_wait_timeout = 5")
                .await?;
            conns.push(c);
        }
        let mut opts = TxOpts::default();
        opts.with_isolation_level(mysql_async::IsolationLevel::ReadCommitted);
        let mut txs = Vec::with_capacity(parts);
        for c in conns.iter_mut() {
            txs.push(c.start_transaction(opts.clone()).await?);
        }
        let mut caches: Vec<SchemaCache> = (0..parts).map(|_| self.cache.clone()).collect();
        let mut modes = vec![mode; parts];
        let none = BTreeMap::new();
        let (cmp, group, topic) = (&self.cmp, &self.cfg.group, &self.cfg.topic);
        let t_setup = t0.elapsed();
        let results = futures::future::join_all(
            txs.iter_mut()
                .zip(caches.iter_mut())
                .zip(modes.iter_mut())
                .zip(ranges.iter().map(|r| &items[r.clone()]))
                .enumerate()
                .map(|(i, (((tx, cache), mode), part))| {
                    let offs = if i + 1 == parts { offsets } else { &none };
                    apply_bulk(tx, cache, cmp, (group, topic), part, offs, mode)
                }),
        )
        .await;
        self.load_data = modes.iter().all(|m| m.load_data);
        let mut merged = BulkResult {
            outcomes: Vec::with_capacity(items.len()),
            missing_columns: Default::default(),
            decisions: Vec::new(),
            loaded_rows: 0,
            upserted_rows: 0,
        };
        for r in results {
            // An error drops every transaction uncommitted: they roll back.
            let r = r?;
            merged.outcomes.extend(r.outcomes);
            merged.missing_columns.extend(r.missing_columns);
            merged.decisions.extend(r.decisions);
            merged.loaded_rows += r.loaded_rows;
            merged.upserted_rows += r.upserted_rows;
        }
        if let Some(c) = caches.into_iter().next() {
            self.cache = c;
        }
        let t_parts = t0.elapsed();
        // The commit protocol (I5): parts commit in order and only the last carries the
        // offsets. Until that last commit, a crash or a failed commit leaves the offsets where
        // they were: the whole batch is read again, and the applied positions the committed
        // parts wrote make their documents no-ops.
        let n = txs.len();
        for (k, tx) in txs.into_iter().enumerate() {
            tx.commit().await?;
            fault_after_part(k + 1, n);
        }
        tracing::debug!(
            setup_ms = t_setup.as_secs_f64() * 1e3,
            parts_ms = (t_parts - t_setup).as_secs_f64() * 1e3,
            commits_ms = (t0.elapsed() - t_parts).as_secs_f64() * 1e3,
            "split batch timings"
        );
        Ok(merged)
    }

    /// Applies the pending batch (see bulk.rs), with the messages `together` (indexes into
    /// `msgs` of renames and Singles) in the same replica transaction; false when shutdown
    /// interrupted a retry.
    pub(super) async fn flush(
        &mut self,
        io: &mut LoopIo<'_>,
        msgs: &[OwnedMessage],
        pending: &mut Vec<(usize, Pending)>,
        together: Vec<usize>,
    ) -> Result<bool, ApplyError> {
        if pending.is_empty() && together.is_empty() {
            return Ok(true);
        }
        let batch = std::mem::take(pending);
        let mut idx: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
        let mut envs: Vec<(Envelope, EventKey)> = Vec::with_capacity(together.len());
        for &i in &together {
            let m = &msgs[i];
            if let Ok(Admitted::Doc(e, key)) = admit_from(m.key(), m.payload(), Some(m.partition()))
            {
                envs.push((*e, key));
            }
        }
        idx.extend(together.iter().copied());
        idx.sort_unstable();
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut items = Vec::new();
        let mut skips = Vec::new();
        for (_, p) in batch {
            let (partition, next) = match &p {
                Pending::Doc(it) => (it.partition, it.next),
                Pending::Skip {
                    partition, next, ..
                } => (*partition, *next),
            };
            let o = offsets.entry(partition).or_insert(next);
            *o = (*o).max(next);
            match p {
                Pending::Doc(it) => items.push(*it),
                skip => skips.push(skip),
            }
        }
        for &i in &together {
            let o = offsets
                .entry(msgs[i].partition())
                .or_insert(msgs[i].offset() + 1);
            *o = (*o).max(msgs[i].offset() + 1);
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), self.cfg.max_backoff);
        let mut held: HashSet<String> = HashSet::new();
        loop {
            match self.run_bulk(&items, &envs, &held, &offsets).await {
                Ok((r, first)) => {
                    for ((e, _), o) in envs.iter().zip(&first) {
                        let label = io.labels.get(&e.doctype);
                        self.metrics
                            .documents
                            .with_label_values(&[label, o.label()])
                            .inc();
                        if *o == Outcome::Conflict {
                            self.metrics.open_conflicts.inc();
                        }
                    }
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    for (it, o) in items.iter().zip(&r.outcomes) {
                        let label = io.labels.get(&it.env.doctype);
                        self.metrics
                            .documents
                            .with_label_values(&[label, o.label()])
                            .inc();
                        if *o == Outcome::Applied
                            && it.env.source.commit_ts > 0
                            && !it.env.source.snapshot
                        {
                            self.metrics
                                .lag
                                .observe((now - it.env.source.commit_ts as f64).max(0.0));
                        }
                        if *o == Outcome::Conflict {
                            self.metrics.open_conflicts.inc();
                        }
                    }
                    self.count_decisions(r.decisions);
                    for (t, c) in r.missing_columns {
                        self.metrics.missing_columns.with_label_values(&[&t]).inc();
                        if self.missing_logged.insert((t.clone(), c.clone())) {
                            tracing::warn!(table = %t, column = %c, "column missing on the replica; its values are not written (add it with bench migrate)");
                        }
                    }
                    for skip in &skips {
                        if let Pending::Skip {
                            outcome, doctype, ..
                        } = skip
                        {
                            let label = io.labels.get(doctype.as_deref().unwrap_or("_unparsed"));
                            self.metrics
                                .documents
                                .with_label_values(&[label, outcome.label()])
                                .inc();
                        }
                    }
                    io.commit(&self.cfg.topic, &offsets);
                    drop_later(items);
                    return Ok(true);
                }
                Err(BulkError::Replica(e)) if transient(&e) => {
                    if !backoff
                        .wait(
                            &self.metrics,
                            "replica unavailable; retrying the batch",
                            &e,
                            io.shutdown,
                        )
                        .await
                    {
                        return Ok(false);
                    }
                    self.cache.clear();
                }
                Err(BulkError::Replica(e)) if e.class() == Class::Halt => {
                    return Err(ApplyError::halt(e));
                }
                Err(BulkError::Hold(txs)) => {
                    tracing::info!(
                        transactions = txs.len(),
                        "holding source transactions with a conflicting document (hold-transaction)"
                    );
                    for it in items.iter_mut() {
                        it.hold = txs.contains(&sequence::tx_id(&it.env.source));
                    }
                    held.extend(txs);
                }
                Err(e @ BulkError::Replica(ReplicaError::LoadMismatch { .. }))
                    if !self.read_new =>
                {
                    tracing::info!(error = %e, "a new document is already on the replica (created there?); re-running the batch with every copy read");
                    self.metrics.load_rereads.inc();
                    self.read_new = true;
                }
                Err(e) => {
                    self.read_new = false;
                    // A Single, or a document the replica rejects: one message at a time, so
                    // only the bad one is dead-lettered.
                    tracing::debug!(error = %e, "batch falls back to one document at a time");
                    self.cache.clear();
                    for i in idx {
                        if !self.process_one(io, &msgs[i]).await? {
                            return Ok(false);
                        }
                    }
                    return Ok(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_are_even_without_transactions() {
        assert_eq!(cuts(100, 2, |_| false), vec![0..50, 50..100]);
        assert_eq!(cuts(101, 2, |_| false), vec![0..51, 51..101]);
        assert_eq!(cuts(90, 3, |_| false), vec![0..30, 30..60, 60..90]);
        assert_eq!(cuts(10, 1, |_| false), vec![0..10]);
        assert_eq!(cuts(0, 2, |_| false), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn cuts_never_split_a_source_transaction() {
        // Transactions of 7 items: 0..7, 7..14, ...; the even cut at 50 moves to 49.
        let joined = |i: usize| i % 7 != 0;
        assert_eq!(cuts(100, 2, joined), vec![0..49, 49..100]);
        // One transaction: one part.
        assert_eq!(cuts(100, 2, |_| true), vec![0..100]);
        // The nearer end of the transaction the even cut falls in.
        assert_eq!(
            cuts(100, 2, |i| i % 7 != 0 || i == 49),
            vec![0..56, 56..100]
        );
        assert_eq!(cuts(100, 2, |i| i >= 40), vec![0..39, 39..100]);
        assert_eq!(cuts(100, 2, |i| i != 10), vec![0..10, 10..100]);
        assert_eq!(cuts(100, 2, |i| i != 60), vec![0..60, 60..100]);
        assert_eq!(cuts(100, 2, |i| i != 0), vec![0..100]);
        // Every range is non-empty and together they cover every item, in order.
        for n in [1usize, 2, 63, 64, 65, 500] {
            for parts in 1..=4 {
                let r = cuts(n, parts, |i| i % 5 != 0);
                assert!(r.len() <= parts && !r.is_empty());
                assert_eq!(r.first().map(|r| r.start), Some(0));
                assert_eq!(r.last().map(|r| r.end), Some(n));
                assert!(
                    r.windows(2)
                        .all(|w| w[0].end == w[1].start && w[0].start < w[0].end)
                );
                assert!(r.iter().skip(1).all(|r| r.start % 5 == 0));
            }
        }
    }
}

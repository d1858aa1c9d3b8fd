//! `--consistency transaction`: polled messages go through the sequencer (`sequence.rs`),
//! which releases whole source transactions in source commit order; runs of them are applied
//! in one replica transaction each (renames and Singles in the same transaction as the bulk
//! documents), with every included partition's next offset; a run of 64+ documents without
//! renames or Singles is split over `--writers` transactions only between source
//! transactions (`batch.rs` `cuts`), committed in order with the offsets in the last.
//!
//! Consistency: a replica transaction holds whole source transactions only, and replica
//! transactions (the parts of a split run too) commit in source order, so a reader of the
//! replica sees a prefix of the source's history, never half a source transaction. Exceptions, each logged and counted:
//! a source transaction larger than `--max-transaction-docs` (and the initial snapshot) goes
//! in parts; a message that must be dead-lettered ends the replica transaction before it; a
//! batch the replica rejects is re-run one message at a time (so only the bad message is
//! dead-lettered). A conflict skips only its own document (recorded); the rest of its source
//! transaction applies.
//!
//! Crash and restart: offsets move only with the replica transaction that applied what they
//! cover; held messages (not yet released) are behind every stored offset, so they are read
//! again after a restart. Applied positions make any replay a no-op.

use std::collections::HashMap;
use std::time::Instant;

use super::*;

/// What transaction mode keeps between polls.
pub(super) struct Whole {
    pub(super) seq: Sequencer,
    held: HashMap<usize, (OwnedMessage, Option<Pending>)>,
    next_id: usize,
    /// Since when released nothing while messages were held.
    waiting: Option<Instant>,
    /// When the last "still waiting" warning was logged.
    warned: Option<Instant>,
}

/// How long a release may wait on partitions before apply says which ones and why.
const WAIT_WARNING: std::time::Duration = std::time::Duration::from_secs(30);

impl Whole {
    pub(super) fn new(partitions: &[i32], max_docs: u64) -> Self {
        Whole {
            seq: Sequencer::new(partitions, max_docs),
            held: HashMap::new(),
            next_id: 0,
            waiting: None,
            warned: None,
        }
    }
}

impl Whole {
    /// A warning every `WAIT_WARNING` while nothing is released: which partitions hold the
    /// release back, and the likely cause (a producer that writes no progress markers).
    fn warn_if_stuck(&mut self) {
        let Some(since) = self.waiting else {
            return;
        };
        let last = self.warned.unwrap_or(since);
        if last.elapsed() < WAIT_WARNING {
            return;
        }
        self.warned = Some(Instant::now());
        tracing::warn!(
            waited_s = since.elapsed().as_secs(),
            held = self.seq.held(),
            partitions = ?self.seq.behind(),
            "transaction consistency: documents are held until these partitions reach their source position; \
             frappe-cdc capture writes a progress marker to every partition at each commit, so this means capture \
             is stopped or lagging, or the topic is written by an older capture or another producer without markers \
             (then run apply with --consistency document)"
        );
    }
}

impl Applier {
    /// Takes a polled, parsed batch into the sequencer and applies what it releases; false
    /// when shutdown interrupted a retry.
    pub(super) async fn apply_whole(
        &mut self,
        io: &mut LoopIo<'_>,
        w: &mut Whole,
        msgs: Vec<OwnedMessage>,
        parsed: Vec<Parsed>,
    ) -> Result<bool, ApplyError> {
        for (m, (p, kind)) in msgs.into_iter().zip(parsed) {
            let id = w.next_id;
            w.next_id += 1;
            w.seq.push(id, m.partition(), m.offset(), kind);
            w.held.insert(id, (m, p));
        }
        let r = w.seq.release();
        if r.txs.is_empty() {
            if w.seq.held() > 0 && w.waiting.is_none() {
                w.waiting = Some(Instant::now());
                self.metrics.transaction_waits.inc();
            }
            w.warn_if_stuck();
            return Ok(true);
        }
        w.warned = None;
        if let Some(since) = w.waiting.take() {
            self.metrics
                .transaction_wait_seconds
                .observe(since.elapsed().as_secs_f64());
        }
        for (tx, arrived, count) in &r.incomplete {
            self.metrics.incomplete_transactions.inc();
            tracing::warn!(
                transaction = %tx,
                arrived,
                doc_count = count,
                "a source transaction on the topic can never complete (every partition is past it): applying the documents that arrived; the topic holds a forged or damaged message, or was written by another producer"
            );
        }
        if r.parts {
            self.metrics.transaction_parts.inc();
            tracing::info!(
                documents = r.txs.last().map_or(0, Vec::len),
                "applying part of a source transaction larger than --max-transaction-docs (or the snapshot): readers can see it half-applied"
            );
        }
        let groups = r.txs;
        let at: Vec<(i32, i64)> = groups
            .iter()
            .flatten()
            .filter_map(|id| w.held.get(id).map(|(m, _)| (m.partition(), m.offset())))
            .collect();
        self.note_bootstrap(at);
        let mut run = Run::default();
        for group in groups {
            let mut group_docs = 0u64;
            let mut group_keys = Vec::new();
            for id in &group {
                if let Some((_, Some(Pending::Doc(it)))) = w.held.get(id) {
                    group_keys.push((it.env.doctype.clone(), it.env.name.clone()));
                }
            }
            // A document twice in one replica transaction: end it before this group.
            let full =
                group_keys.iter().any(|k| run.keys.contains(k)) || run.docs >= self.cfg.batch_size;
            if full && !self.end_run(io, &mut run).await? {
                return Ok(false);
            }
            run.keys.extend(group_keys);
            for id in group {
                let Some((m, p)) = w.held.remove(&id) else {
                    continue;
                };
                let i = run.msgs.len();
                match p {
                    Some(p) => {
                        if matches!(p, Pending::Doc(_)) {
                            run.docs += 1;
                            group_docs += 1;
                        }
                        run.pending.push((i, p));
                        run.msgs.push(m);
                    }
                    None => {
                        let doc = matches!(
                            admit_from(m.key(), m.payload(), Some(m.partition())),
                            Ok(Admitted::Doc(..))
                        );
                        if doc {
                            run.docs += 1;
                            group_docs += 1;
                            run.together.push(i);
                            run.msgs.push(m);
                        } else {
                            // Dead-lettered on its own, after what came before it.
                            tracing::warn!(
                                partition = m.partition(),
                                offset = m.offset(),
                                "a message to dead-letter inside a source transaction: the replica transaction ends before it"
                            );
                            if !self.end_run(io, &mut run).await? {
                                return Ok(false);
                            }
                            if !self.process_one(io, &m).await? {
                                return Ok(false);
                            }
                        }
                    }
                }
            }
            if group_docs > 0 {
                self.metrics.source_transactions.inc();
                self.metrics
                    .source_transaction_docs
                    .observe(group_docs as f64);
            }
        }
        self.end_run(io, &mut run).await
    }

    /// Applies `run` in one replica transaction and starts an empty one; false when shutdown
    /// interrupted a retry.
    async fn end_run(&mut self, io: &mut LoopIo<'_>, run: &mut Run) -> Result<bool, ApplyError> {
        let together = std::mem::take(&mut run.together);
        let done = self
            .flush(io, &run.msgs, &mut run.pending, together)
            .await?;
        run.msgs.clear();
        run.keys.clear();
        run.docs = 0;
        Ok(done)
    }
}

/// Whole source transactions gathered for one replica transaction.
#[derive(Default)]
struct Run {
    msgs: Vec<OwnedMessage>,
    pending: Vec<(usize, Pending)>,
    /// Messages applied one at a time inside the transaction (renames, Singles).
    together: Vec<usize>,
    /// Documents in it (one document may not be twice in a replica transaction).
    keys: HashSet<(String, String)>,
    docs: usize,
}

//! Source commit order across partitions, for `apply --consistency transaction` (pure, no I/O).
//!
//! The documents of one source transaction are spread over partitions (by doctype or by
//! document), and each partition holds its messages in source commit order. The sequencer
//! takes polled messages from every partition and releases **whole source transactions in
//! commit order**: a transaction `T` is released once
//! 1. all `doc_count` of its envelopes arrived, and
//! 2. every partition has delivered a message at or after `T`'s position (a document of `T`
//!    or of a later transaction, or a progress marker at or after it): each partition is in
//!    order, so no earlier transaction can still arrive anywhere.
//!
//! Condition 2 is why capture writes progress markers to every partition at each commit: a
//! partition that carries no document for a while still moves forward.
//!
//! What goes out, per partition, is always a prefix of what came in, so the offsets of the
//! released messages are safe to store. A message without a position (a tombstone) belongs
//! with the message before it on its partition (capture sends it right after its delete or
//! rename). A transaction bigger than `max_docs` envelopes, or the initial snapshot, is
//! released in parts as soon as it is the earliest one (its `parts` flag says so): a reader of
//! the replica can see it half-applied, which the README says.
//!
//! A transaction that can never complete — fewer than `doc_count` envelopes arrived although
//! every partition has moved past it (a later document, or a marker beyond its position:
//! nothing of it can still come) — is a forged or damaged message, not a wait: it is released
//! with what arrived and reported (`Release::incomplete`), so one bad message cannot stop
//! apply.
//!
//! Positions are ordered by binlog file number, then offset in the file: the primary's own
//! commit order, across GTID domains.

use std::collections::{BTreeMap, VecDeque};

/// A source position: (binlog file number, offset).
pub type Pos = (u64, u64);

/// The position of `file:pos`, ordered by the file's numeric extension (`binlog.000042`).
pub fn pos_of(file: &str, pos: u64) -> Pos {
    let n = file
        .rsplit('.')
        .next()
        .and_then(|e| e.parse::<u64>().ok())
        .unwrap_or(0);
    (n, pos)
}

/// The identity of an envelope's source transaction: its GTID, or the snapshot's position.
pub fn tx_id(s: &crate::envelope::Source) -> String {
    match (&s.gtid, s.snapshot) {
        (Some(g), false) => format!("gtid {g}"),
        _ => format!("snapshot {}", s.position),
    }
}

/// What the sequencer knows about one polled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A document envelope of the source transaction `tx` at `pos`: number `index` of
    /// `count`.
    Doc {
        tx: String,
        pos: Pos,
        index: u64,
        count: u64,
    },
    /// A progress marker: the partition is complete up to `pos`.
    Marker { pos: Pos },
    /// Anything else (a tombstone, a message to dead-letter): goes with the message before it.
    Other,
}

/// One message as the sequencer holds it: its index in the caller's store, partition, offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: usize,
    pub partition: i32,
    pub offset: i64,
    kind: Kind,
}

/// What is released at once: messages in source commit order, in whole transactions unless
/// `parts`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Release {
    /// Message ids, grouped by source transaction, in commit order (per partition in offset
    /// order); markers and other messages in their partition's place.
    pub txs: Vec<Vec<usize>>,
    /// The last group is part of a transaction released in parts (large, or the snapshot).
    pub parts: bool,
    /// Transactions released although incomplete (module docs): (id, arrived, doc_count).
    pub incomplete: Vec<(String, u64, u64)>,
}

#[derive(Debug, Default)]
struct Tx {
    pos: Pos,
    count: u64,
    /// Document indexes arrived (a replay from an at-least-once topic counts once).
    arrived: std::collections::HashSet<u64>,
    /// Envelopes of it already released (in parts).
    released: u64,
}

/// Holds messages until their source transactions can be released (module docs).
#[derive(Debug)]
pub struct Sequencer {
    partitions: Vec<i32>,
    queues: BTreeMap<i32, VecDeque<Held>>,
    /// The last position each partition delivered.
    frontier: BTreeMap<i32, Pos>,
    /// Per partition, the position below which every transaction is complete there: a
    /// document at `p` seals everything before `p`, a marker at `p` too (the marker's
    /// position may be the next transaction's, so it is not taken as inclusive).
    sealed: BTreeMap<i32, Pos>,
    txs: BTreeMap<String, Tx>,
    max_docs: u64,
    held: usize,
    /// The position of the last transaction released whole: a document at or before it
    /// that is not part of a held transaction is a replay (already applied).
    done_to: Option<Pos>,
}

impl Sequencer {
    /// A sequencer over `partitions` (all the topic's partitions apply reads).
    pub fn new(partitions: &[i32], max_docs: u64) -> Self {
        Sequencer {
            partitions: partitions.to_vec(),
            queues: partitions.iter().map(|p| (*p, VecDeque::new())).collect(),
            frontier: BTreeMap::new(),
            sealed: BTreeMap::new(),
            txs: BTreeMap::new(),
            max_docs: max_docs.max(1),
            held: 0,
            done_to: None,
        }
    }

    /// Messages held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Takes one polled message.
    pub fn push(&mut self, id: usize, partition: i32, offset: i64, mut kind: Kind) {
        match &kind {
            Kind::Doc {
                tx,
                pos,
                index,
                count,
            } => {
                // A new transaction at a position this partition is already past cannot be
                // genuine (each partition is in commit order): a replay, or forged.
                let behind = self.sealed.get(&partition).is_some_and(|s| *s > *pos);
                let f = self.frontier.entry(partition).or_insert(*pos);
                *f = (*f).max(*pos);
                let sealed = self.sealed.entry(partition).or_insert(*pos);
                *sealed = (*sealed).max(*pos);
                let replay = !self.txs.contains_key(tx)
                    && (behind || self.done_to.is_some_and(|d| *pos <= d));
                let fresh = !replay
                    && self
                        .txs
                        .entry(tx.clone())
                        .or_insert_with(|| Tx {
                            pos: *pos,
                            count: *count,
                            ..Tx::default()
                        })
                        .arrived
                        .insert(*index);
                if !fresh {
                    // Goes with the message before it; its document applies as a no-op.
                    kind = Kind::Other;
                }
            }
            Kind::Marker { pos } => {
                let f = self.frontier.entry(partition).or_insert(*pos);
                *f = (*f).max(*pos);
                let sealed = self.sealed.entry(partition).or_insert(*pos);
                *sealed = (*sealed).max(*pos);
            }
            Kind::Other => {}
        }
        self.queues.entry(partition).or_default().push_back(Held {
            id,
            partition,
            offset,
            kind,
        });
        self.held += 1;
    }

    /// Partitions that have not yet reached the earliest held transaction (nothing
    /// delivered, or only earlier positions): what a release is waiting for.
    pub fn behind(&self) -> Vec<i32> {
        let Some(first) = self.txs.values().map(|t| t.pos).min() else {
            return Vec::new();
        };
        self.partitions
            .iter()
            .filter(|p| self.frontier.get(p).is_none_or(|f| *f < first))
            .copied()
            .collect()
    }

    /// Whether every partition is sealed beyond `pos` (nothing at `pos` can still arrive).
    fn sealed_past(&self, pos: Pos) -> bool {
        self.partitions
            .iter()
            .all(|p| self.sealed.get(p).is_some_and(|s| *s > pos))
    }

    /// The lowest position every partition has reached, None while one has delivered nothing.
    fn low_water(&self) -> Option<Pos> {
        self.partitions
            .iter()
            .map(|p| self.frontier.get(p).copied())
            .collect::<Option<Vec<Pos>>>()?
            .into_iter()
            .min()
    }

    /// Releases what can go (module docs), in commit order.
    pub fn release(&mut self) -> Release {
        let mut out = Release::default();
        // Messages at the heads of the queues before any document: markers and others.
        self.drain_heads(&mut out);
        let Some(low) = self.low_water() else {
            return out;
        };
        let mut order: Vec<(Pos, String)> = self
            .txs
            .iter()
            .filter(|(_, t)| t.pos <= low)
            .map(|(k, t)| (t.pos, k.clone()))
            .collect();
        order.sort();
        // Every transaction reached below is the earliest still held: the ones before it
        // were released in this loop (the loop stops at the first that must wait).
        for (_, key) in order {
            let t = &self.txs[&key];
            let arrived = t.arrived.len() as u64;
            if arrived < t.count {
                let (pos, count) = (t.pos, t.count);
                if self.sealed_past(pos) {
                    // Nothing of it can still arrive: release what came (module docs).
                    self.take_tx(&key, &mut out);
                    self.txs.remove(&key);
                    self.done_to = Some(self.done_to.map_or(pos, |d| d.max(pos)));
                    out.incomplete.push((key, arrived, count));
                    continue;
                }
                // The earliest transaction may go in parts when it is big; nothing after an
                // incomplete one may go.
                let big = count > self.max_docs;
                if big && arrived > t.released {
                    self.take_tx(&key, &mut out);
                    out.parts = true;
                }
                break;
            }
            self.take_tx(&key, &mut out);
        }
        out
    }

    /// Moves the messages of `key` (and the markers and others that follow them at each
    /// queue head) from the queues to a new group of `out`.
    fn take_tx(&mut self, key: &str, out: &mut Release) {
        let mut group = Vec::new();
        let mut taken = 0u64;
        for q in self.queues.values_mut() {
            while let Some(h) = q.front() {
                match &h.kind {
                    Kind::Doc { tx, .. } if tx == key => taken += 1,
                    // A document of a transaction no longer held goes like any other.
                    Kind::Doc { tx, .. } if !self.txs.contains_key(tx) => {}
                    Kind::Doc { .. } => break,
                    Kind::Marker { .. } | Kind::Other => {}
                }
                if let Some(h) = q.pop_front() {
                    group.push(h.id);
                }
            }
        }
        self.held -= group.len();
        if let Some(t) = self.txs.get_mut(key) {
            t.released += taken;
            if t.released >= t.count {
                let pos = t.pos;
                self.txs.remove(key);
                self.done_to = Some(self.done_to.map_or(pos, |d| d.max(pos)));
            }
        }
        if !group.is_empty() {
            out.txs.push(group);
        }
    }

    /// Releases markers and other messages at queue heads (nothing waits on them), as one
    /// group.
    fn drain_heads(&mut self, out: &mut Release) {
        let mut group = Vec::new();
        for q in self.queues.values_mut() {
            while q
                .front()
                .is_some_and(|h| !matches!(h.kind, Kind::Doc { .. }))
            {
                if let Some(h) = q.pop_front() {
                    group.push(h.id);
                }
            }
        }
        self.held -= group.len();
        if !group.is_empty() {
            out.txs.push(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(tx: &str, pos: u64, count: u64) -> Kind {
        doc_i(tx, pos, 0, count)
    }

    fn doc_i(tx: &str, pos: u64, index: u64, count: u64) -> Kind {
        Kind::Doc {
            tx: tx.into(),
            pos: (1, pos),
            index,
            count,
        }
    }

    fn marker(pos: u64) -> Kind {
        Kind::Marker { pos: (1, pos) }
    }

    #[test]
    fn behind_names_the_partitions_a_release_waits_for() {
        let mut s = Sequencer::new(&[0, 1, 2], 100);
        assert!(s.behind().is_empty(), "nothing held, nothing waited for");
        s.push(0, 0, 10, doc("T1", 100, 1));
        s.push(1, 1, 5, marker(50));
        assert!(s.release().txs.iter().flatten().all(|id| *id != 0));
        assert_eq!(
            s.behind(),
            vec![1, 2],
            "1 is before T1, 2 delivered nothing"
        );
        s.push(2, 2, 7, marker(100));
        assert_eq!(s.behind(), vec![1]);
        s.push(3, 1, 6, marker(120));
        assert!(s.behind().is_empty());
        assert!(
            s.release().txs.iter().flatten().any(|id| *id == 0),
            "T1 goes"
        );
    }

    #[test]
    fn a_transaction_that_can_never_complete_is_released_and_reported() {
        // A forged envelope claims 3 documents of T at 100; partition 1 is past it (a later
        // document), partition 0 too once a marker beyond 100 arrives.
        let mut s = Sequencer::new(&[0, 1], 1000);
        s.push(0, 0, 1, doc("T", 100, 3));
        s.push(1, 1, 1, doc("U", 150, 1));
        s.push(2, 0, 2, marker(100));
        let r = s.release();
        assert!(
            r.incomplete.is_empty(),
            "a marker at 100 may be U's own position"
        );
        assert!(
            r.txs.iter().flatten().all(|id| *id != 1),
            "U waits behind T"
        );
        s.push(3, 0, 3, marker(160));
        let r = s.release();
        assert_eq!(r.incomplete, vec![("T".to_string(), 1, 3)]);
        assert_eq!(r.txs, vec![vec![0, 2, 3], vec![1]], "T as it is, then U");
        assert_eq!(s.held(), 0);
        // A late copy of T's document is a replay now, not a new wait.
        s.push(4, 0, 4, doc_i("T", 100, 1, 3));
        s.push(5, 1, 2, marker(200));
        assert_eq!(s.release().txs, vec![vec![4, 5]]);
    }

    #[test]
    fn a_new_transaction_behind_its_partition_is_not_waited_for() {
        // A forged envelope at an old position, between genuine ones.
        let mut s = Sequencer::new(&[0], 1000);
        s.push(0, 0, 1, doc("A", 100, 1));
        s.push(1, 0, 2, doc("FORGED", 50, 7));
        s.push(2, 0, 3, doc("B", 200, 1));
        assert_eq!(s.release().txs, vec![vec![0, 1], vec![2]]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn positions_order_by_file_number_then_offset() {
        assert!(pos_of("binlog.999999", 500) < pos_of("binlog.1000000", 4));
        assert!(pos_of("binlog.000002", 4) < pos_of("binlog.000002", 5));
        assert_eq!(pos_of("weird", 7), (0, 7));
    }

    #[test]
    fn a_transaction_waits_for_all_its_documents_and_every_partition() {
        let mut s = Sequencer::new(&[0, 1], 100);
        // T1 (2 docs) on both partitions, T2 (1 doc) on partition 0.
        s.push(0, 0, 10, doc_i("T1", 100, 0, 2));
        assert_eq!(s.release().txs, Vec::<Vec<usize>>::new(), "T1 incomplete");
        s.push(1, 0, 11, doc("T2", 200, 1));
        assert!(
            s.release().txs.is_empty(),
            "partition 1 has said nothing yet"
        );
        s.push(2, 1, 5, doc_i("T1", 100, 1, 2));
        let r = s.release();
        assert_eq!(
            r.txs,
            vec![vec![0, 2]],
            "T1 whole; T2 waits for partition 1 to reach 200"
        );
        assert!(!r.parts);
        s.push(3, 1, 6, marker(200));
        assert_eq!(
            s.release().txs,
            vec![vec![3], vec![1]],
            "the marker (nothing waits on it), then T2"
        );
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn commit_order_across_partitions_and_tombstones_stay_with_their_document() {
        let mut s = Sequencer::new(&[0, 1], 100);
        // partition 1 is ahead: T3 at 300; partition 0 holds T2 at 200 (a delete + tombstone).
        s.push(0, 1, 1, doc("T3", 300, 1));
        s.push(1, 0, 1, doc("T2", 200, 1));
        s.push(2, 0, 2, Kind::Other);
        s.push(3, 0, 3, marker(300));
        let r = s.release();
        assert_eq!(r.txs, vec![vec![1, 2, 3], vec![0]], "T2 before T3");
    }

    #[test]
    fn replays_count_once_and_late_replays_do_not_block() {
        let mut s = Sequencer::new(&[0], 100);
        s.push(0, 0, 1, doc_i("T", 100, 0, 2));
        s.push(1, 0, 2, doc_i("T", 100, 0, 2));
        assert!(
            s.release().txs.is_empty(),
            "one document twice is not two documents"
        );
        s.push(2, 0, 3, doc_i("T", 100, 1, 2));
        assert_eq!(s.release().txs, vec![vec![0, 1, 2]]);
        // T again, after it was applied (an at-least-once topic): released, not held.
        s.push(3, 0, 4, doc_i("T", 100, 1, 2));
        s.push(4, 0, 5, doc("U", 200, 1));
        assert_eq!(s.release().txs, vec![vec![3], vec![4]]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_big_transaction_goes_in_parts_only_when_it_is_the_earliest() {
        let mut s = Sequencer::new(&[0], 2);
        for i in 0..3 {
            s.push(i as usize, 0, i + 1, doc_i("BIG", 100, i as u64, 5));
        }
        let r = s.release();
        assert_eq!(r.txs, vec![vec![0, 1, 2]]);
        assert!(r.parts);
        s.push(3, 0, 4, doc_i("BIG", 100, 3, 5));
        s.push(4, 0, 5, doc_i("BIG", 100, 4, 5));
        s.push(5, 0, 6, doc("NEXT", 200, 1));
        let r = s.release();
        assert_eq!(
            r.txs,
            vec![vec![3, 4], vec![5]],
            "the rest of BIG completes it, then NEXT"
        );
        assert!(!r.parts);
        // A small incomplete transaction never goes in parts.
        let mut s = Sequencer::new(&[0], 10);
        s.push(0, 0, 1, doc("T", 100, 3));
        s.push(1, 0, 2, marker(100));
        assert!(s.release().txs.is_empty());
    }

    #[test]
    fn markers_alone_are_released_and_a_silent_partition_blocks() {
        let mut s = Sequencer::new(&[0, 1, 2], 10);
        s.push(0, 0, 1, marker(50));
        assert_eq!(s.release().txs, vec![vec![0]], "nothing waits on a marker");
        s.push(1, 0, 2, doc("T", 100, 1));
        s.push(2, 1, 1, marker(100));
        assert_eq!(
            s.release().txs,
            vec![vec![2]],
            "partition 2 never spoke: T waits, the marker goes"
        );
        s.push(3, 2, 7, marker(120));
        assert_eq!(s.release().txs, vec![vec![3], vec![1]]);
    }
}

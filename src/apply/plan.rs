//! The decision over a batch, as a pure function: what apply does with each document given
//! what the replica holds (its locked copy, applied positions, an open conflict, and the
//! owners of the child rows the document would write). No I/O: the one-document path
//! (`document.rs`: Singles, renames, a batch that fell back) calls it with one item, the bulk
//! path (`bulk.rs`) with many, and both hand the result to the one executor (`execute.rs`).
//!
//! The order of the checks is the contract, per document:
//! 1. an applied position of the document covers the envelope's (I14): a replay, skipped;
//! 2. an earlier conflict of the document is still open: recorded again, not written;
//! 3. the conflict decision against the copy (`decision.rs`);
//! 4. a write whose child rows belong to another document on the replica (I7) becomes a
//!    conflict naming both owners;
//! 5. in a held source transaction (transaction consistency with `hold-transaction`, after
//!    another of its documents conflicted) a write or mark becomes a conflict too.
//!
//! Documents of one batch are independent (no document occurs twice; the callers send a
//! batch whose documents share a child row down the one-at-a-time path), so each step
//! depends only on its own item.

use super::control::EventKey;
use super::decision::{Comparator, Decision};
use super::outcome::Outcome;
use super::ownership::{self, ChildOwner};
use super::policy::{Action, Auto};
use crate::envelope::Envelope;
use crate::image::Image;

/// What the replica holds for one document, read (and locked) before deciding.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen<'a> {
    /// The document's applied positions, one per GTID domain.
    pub applied: &'a [EventKey],
    /// An earlier conflict of this document is open.
    pub open: bool,
    /// The copy under the envelope's name (its old name for a rename); `None` when absent.
    pub copy: Option<&'a Image>,
    /// For a rename, the copy under the new name.
    pub copy_new: Option<&'a Image>,
    /// Child rows the document would write that belong to another document.
    pub collisions: &'a [ChildOwner],
    /// The document's child rows on the replica, `(table, name)`: the writer deletes those
    /// its image no longer holds. Not used by the decision.
    pub child_rows: &'a [(String, String)],
    /// Another document of its source transaction conflicts and the transaction is held
    /// (`--on-conflict-in-transaction hold-transaction`): record instead of writing.
    pub hold: bool,
}

/// What to do with one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Already covered by an applied position: nothing to write, nothing to mark.
    Skip,
    /// Write `after` (or delete), then record the applied positions.
    Write,
    /// Write this merge of the primary's changes and the replica's own (no conflict: the two
    /// changed different fields), then record the applied positions.
    WriteMerged(Box<Image>),
    /// The replica already holds the result: record the applied positions only.
    Mark,
    /// Record (or move forward) a conflict with this reason; write nothing.
    Record(String),
    /// A conflict its policy decided: audit it, then write the primary's version or the
    /// merge, or keep the copy, and record the applied positions.
    Auto(Box<Auto>),
}

impl Step {
    /// What the step means for the message.
    pub fn outcome(&self) -> Outcome {
        match self {
            Step::Skip => Outcome::Duplicate,
            Step::Write | Step::WriteMerged(_) => Outcome::Applied,
            Step::Auto(a) if a.action == Action::Local => Outcome::AlreadyApplied,
            Step::Auto(_) => Outcome::Applied,
            Step::Mark => Outcome::AlreadyApplied,
            Step::Record(_) => Outcome::Conflict,
        }
    }

    /// The image the step writes for `e`: `Some(None)` deletes the document, `None` writes
    /// nothing.
    pub fn written<'a>(&'a self, e: &'a Envelope) -> Option<Option<&'a Image>> {
        match self {
            Step::Write => Some(e.after.as_ref()),
            Step::WriteMerged(m) => Some(Some(m)),
            Step::Auto(a) => match &a.action {
                Action::Primary => Some(e.after.as_ref()),
                Action::Merged(m) => Some(Some(m)),
                Action::Local => None,
            },
            Step::Skip | Step::Mark | Step::Record(_) => None,
        }
    }
}

/// The decision for every item of a batch, in item order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.steps.iter().map(Step::outcome).collect()
    }
}

/// The reason recorded while an earlier conflict is open.
pub const STILL_OPEN: &str = "an earlier conflict of this document is still open";

/// The reason recorded for the other documents of a held source transaction.
pub const HELD: &str = "held: another document of its source transaction conflicts (--on-conflict-in-transaction hold-transaction)";

/// Decides one document (see the module docs for the order of checks).
pub fn decide_one(cmp: &Comparator, e: &Envelope, key: EventKey, seen: &Seen<'_>) -> Step {
    if key.covered_by_any(seen.applied) {
        return Step::Skip;
    }
    if seen.open {
        return Step::Record(STILL_OPEN.into());
    }
    let d = cmp.decide_for(
        &e.doctype,
        e.op,
        e.before.as_ref(),
        e.after.as_ref(),
        seen.copy,
        seen.copy_new,
    );
    let writes = match &d {
        Decision::Apply | Decision::Merge(_) => true,
        Decision::Auto(a) => a.action != Action::Local,
        Decision::AlreadyApplied | Decision::Conflict(_) => false,
    };
    match d {
        _ if writes && !seen.collisions.is_empty() => {
            Step::Record(ownership::reason(seen.collisions))
        }
        Decision::Conflict(reason) => Step::Record(reason),
        _ if seen.hold => Step::Record(HELD.into()),
        Decision::Apply => Step::Write,
        Decision::Merge(m) => Step::WriteMerged(m),
        Decision::AlreadyApplied => Step::Mark,
        Decision::Auto(a) => Step::Auto(a),
    }
}

/// Decides every item of a batch; `seen[i]` is what the replica holds for `items[i]`.
pub fn decide_batch(cmp: &Comparator, items: &[(&Envelope, EventKey)], seen: &[Seen<'_>]) -> Plan {
    debug_assert_eq!(items.len(), seen.len());
    Plan {
        steps: items
            .iter()
            .zip(seen)
            .map(|((e, k), s)| decide_one(cmp, e, *k, s))
            .collect(),
    }
}

/// True when `e` needs the ownership check: it writes child rows and the first two checks
/// do not already settle it (the readers skip the check for the others).
pub fn needs_ownership_check(
    e: &Envelope,
    key: EventKey,
    applied: &[EventKey],
    open: bool,
) -> bool {
    e.after.is_some() && !open && !key.covered_by_any(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Op;
    use serde_json::json;

    fn env(op: Op, before: Option<Image>, after: Option<Image>) -> Envelope {
        Envelope {
            version: 1,
            op,
            doctype: "Sales Invoice".into(),
            name: "S1".into(),
            old_name: None,
            before,
            after,
            changes: Default::default(),
            source: crate::envelope::Source {
                server_id: 1,
                db: "site".into(),
                gtid: Some("0-1-10".into()),
                position: "0-1-10".into(),
                file: "b.000001".into(),
                pos: 100,
                commit_ts: 1,
                doc_index: 0,
                doc_count: 1,
                snapshot: false,
            },
        }
    }

    fn img(status: &str) -> Image {
        serde_json::from_value(json!({"parent": {"name": "S1", "status": status}, "children": {}}))
            .expect("image")
    }

    fn key(seq: u64) -> EventKey {
        EventKey {
            domain: 0,
            seq,
            doc_index: 0,
        }
    }

    fn owner() -> ChildOwner {
        ChildOwner {
            table: "tabSales Invoice Item".into(),
            name: "i1".into(),
            parenttype: Some("Sales Invoice".into()),
            parent: Some("S2".into()),
        }
    }

    #[test]
    fn checks_run_in_contract_order() {
        let cmp = Comparator::default();
        let e = env(Op::Update, Some(img("Draft")), Some(img("Paid")));
        let draft = img("Draft");
        let paid = img("Paid");
        let local = img("Local");
        let applied = [key(10)];
        let found = [owner()];
        let seen = |copy, open, applied, collisions| Seen {
            applied,
            open,
            copy,
            collisions,
            ..Seen::default()
        };
        // 1. a covered position wins over everything else
        let s = seen(Some(&local), true, &applied[..], &found[..]);
        assert_eq!(decide_one(&cmp, &e, key(10), &s), Step::Skip);
        assert_eq!(decide_one(&cmp, &e, key(9), &s), Step::Skip);
        // 2. an open conflict wins over the comparison
        let s = seen(Some(&draft), true, &applied[..], &[]);
        assert_eq!(
            decide_one(&cmp, &e, key(11), &s),
            Step::Record(STILL_OPEN.into())
        );
        // 3. the comparison
        let s = seen(Some(&draft), false, &applied[..], &[]);
        assert_eq!(decide_one(&cmp, &e, key(11), &s), Step::Write);
        let s = seen(Some(&paid), false, &[], &[]);
        assert_eq!(decide_one(&cmp, &e, key(11), &s), Step::Mark);
        let s = seen(Some(&local), false, &[], &found[..]);
        assert!(
            matches!(decide_one(&cmp, &e, key(11), &s), Step::Record(r) if r.starts_with("replica copy changed what the primary changed"))
        );
        // 4. ownership turns a write into a conflict, and only a write
        let s = seen(Some(&draft), false, &[], &found[..]);
        assert!(
            matches!(decide_one(&cmp, &e, key(11), &s), Step::Record(r) if r.starts_with(ownership::OWNED_ELSEWHERE))
        );
        let s = seen(Some(&paid), false, &[], &found[..]);
        assert_eq!(decide_one(&cmp, &e, key(11), &s), Step::Mark);
        // 5. a held transaction records what it would have written or marked
        for copy in [&draft, &paid] {
            let s = Seen {
                hold: true,
                ..seen(Some(copy), false, &[], &[])
            };
            assert_eq!(decide_one(&cmp, &e, key(11), &s), Step::Record(HELD.into()));
        }
        let s = Seen {
            hold: true,
            ..seen(Some(&draft), false, &applied[..], &[])
        };
        assert_eq!(
            decide_one(&cmp, &e, key(10), &s),
            Step::Skip,
            "a replay stays a replay"
        );
    }

    #[test]
    fn a_batch_is_its_items_decided_alone() {
        let cmp = Comparator::default();
        let create = env(Op::Create, None, Some(img("Draft")));
        let delete = env(Op::Delete, Some(img("Draft")), None);
        let draft = img("Draft");
        let items = [
            (&create, key(1)),
            (&create, key(2)),
            (&delete, key(3)),
            (&delete, key(4)),
        ];
        let applied = [key(2)];
        let seen = [
            Seen::default(),
            Seen {
                applied: &applied,
                ..Seen::default()
            },
            Seen {
                copy: Some(&draft),
                ..Seen::default()
            },
            Seen::default(),
        ];
        let plan = decide_batch(&cmp, &items, &seen);
        assert_eq!(
            plan.steps,
            vec![Step::Write, Step::Skip, Step::Write, Step::Mark]
        );
        assert_eq!(
            plan.outcomes(),
            vec![
                Outcome::Applied,
                Outcome::Duplicate,
                Outcome::Applied,
                Outcome::AlreadyApplied
            ]
        );
        for (i, (e, k)) in items.iter().enumerate() {
            assert_eq!(plan.steps[i], decide_one(&cmp, e, *k, &seen[i]));
        }
        assert!(needs_ownership_check(&create, key(1), &[], false));
        assert!(!needs_ownership_check(&create, key(2), &applied, false));
        assert!(!needs_ownership_check(&create, key(1), &[], true));
        assert!(!needs_ownership_check(&delete, key(3), &[], false));
    }
}

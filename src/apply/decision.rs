//! The conflict decision: a pure function of the envelope's operation and images, the
//! replica's current copy of the document and the conflict policies (no I/O, exhaustively
//! unit-tested).
//!
//! Detection (`[conflicts] detect`): with `changed_columns` (the default) only what the
//! primary changed between `before` and `after` must match the replica's copy (`merge.rs`
//! says exactly what counts); the replica's own changes to anything else are kept, the
//! document being written as the merge of both. With `row` the copy must equal `before`
//! (ignoring Frappe's bookkeeping columns). A copy equal to `after` means the change is
//! already there (a replay after a capture restart, or a snapshot of a document the replica
//! already holds) and is skipped, not flagged. A conflict then goes to its doctype's policy
//! (`policy.rs`).

use std::collections::BTreeSet;

use serde_json::Value;

use super::merge::{self, Counted, docstatus, modified};
use super::policy::{Action, Auto, Case, Detect, Policies, Policy};
use crate::envelope::Op;
use crate::image::{Image, Row};

/// What to do with one envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write `after` (or delete when `after` is null).
    Apply,
    /// The replica already has the result.
    AlreadyApplied,
    /// No conflict, but the replica changed other fields: write this merge of both sides.
    Merge(Box<Image>),
    /// The replica's copy was changed locally: record for an operator, do not write.
    Conflict(String),
    /// A conflict its policy decided (audited).
    Auto(Box<Auto>),
}

/// What detection found, before the policies.
#[derive(Debug, Clone, PartialEq)]
enum Detected {
    Apply,
    AlreadyApplied,
    Merge(Box<Image>),
    Conflict(Case, String),
}

/// A conflict's reason and, when known, the differing columns.
fn conflict_reason(why: &str, d: Vec<String>) -> String {
    if d.is_empty() {
        why.to_string()
    } else {
        format!("{why}: {}", d.join(", "))
    }
}

/// Compares images on shared columns, ignoring `ignored` columns, and decides conflicts by
/// `policies`.
#[derive(Debug, Clone, Default)]
pub struct Comparator {
    ignored: BTreeSet<String>,
    /// The `[conflicts]` policies (default: detect changed columns, every conflict manual).
    pub policies: Policies,
    /// A fresh replica reading a topic whose early history may be gone (compacted, or
    /// deleted by retention): a document missing on the replica is not a local delete but
    /// one whose earlier versions the topic no longer holds, so an `update` or `rename` of
    /// it writes its `after` image instead of recording a conflict. Set by apply only while
    /// it reads offsets below the high watermarks it saw when it started without stored
    /// offsets.
    pub missing_is_new: bool,
}

impl Comparator {
    /// A comparator that ignores `ignored` columns (besides none by default).
    pub fn new(ignored: impl IntoIterator<Item = String>) -> Self {
        Comparator {
            ignored: ignored.into_iter().collect(),
            policies: Policies::default(),
            missing_is_new: false,
        }
    }

    /// The comparator deciding conflicts by `policies`.
    pub fn with_policies(mut self, policies: Policies) -> Self {
        self.policies = policies;
        self
    }

    fn row_diff(&self, path: &str, a: &Row, b: &Row, out: &mut Vec<String>) {
        // Rows of one table usually list their columns in one order: `get_at` finds each
        // at the same position without a search.
        for (i, (k, va)) in a.pairs().enumerate() {
            if let Some(vb) = b.get_at(i, k)
                && va != vb
                && !self.ignored.contains(&**k)
            {
                out.push(format!("{path}.{k}"));
            }
        }
    }

    /// Column-level differences between two images (paths like `parent.status`,
    /// `items[2].qty`, `items: rows added/removed`); empty when equal.
    pub fn diff(&self, a: Option<&Image>, b: Option<&Image>) -> Vec<String> {
        let (a, b) = match (a, b) {
            (None, None) => return Vec::new(),
            (Some(_), None) => return vec!["document: missing on one side".into()],
            (None, Some(_)) => return vec!["document: missing on one side".into()],
            (Some(a), Some(b)) => (a, b),
        };
        let mut out = Vec::new();
        match (a.parent.as_ref(), b.parent.as_ref()) {
            (Some(pa), Some(pb)) => self.row_diff("parent", pa, pb, &mut out),
            (None, None) => {}
            _ => out.push("parent: missing on one side".into()),
        }
        let fields: BTreeSet<&String> = a.children.keys().chain(b.children.keys()).collect();
        for f in fields {
            let (ra, rb) = (a.rows(f), b.rows(f));
            fn name(r: &Row) -> &Value {
                r.get("name").unwrap_or(&Value::Null)
            }
            if !ra.iter().map(name).eq(rb.iter().map(name)) {
                out.push(format!("{f}: rows added, removed or reordered"));
                continue;
            }
            for (i, (x, y)) in ra.iter().zip(rb.iter()).enumerate() {
                self.row_diff(&format!("{f}[{i}]"), x, y, &mut out);
            }
        }
        out
    }

    fn same(&self, a: Option<&Image>, b: Option<&Image>) -> bool {
        self.diff(a, b).is_empty()
    }

    /// Decides what to do with an envelope of the default policy's doctypes (see
    /// [`Comparator::decide_for`]).
    pub fn decide(
        &self,
        op: Op,
        before: Option<&Image>,
        after: Option<&Image>,
        replica: Option<&Image>,
        replica_new: Option<&Image>,
    ) -> Decision {
        self.decide_for("", op, before, after, replica, replica_new)
    }

    /// Decides what to do with an envelope of `doctype` given the replica's copy. For a
    /// rename, `replica` is the copy under the old name and `replica_new` the copy under the
    /// new name.
    pub fn decide_for(
        &self,
        doctype: &str,
        op: Op,
        before: Option<&Image>,
        after: Option<&Image>,
        replica: Option<&Image>,
        replica_new: Option<&Image>,
    ) -> Decision {
        match self.detect(op, before, after, replica, replica_new) {
            Detected::Apply => Decision::Apply,
            Detected::AlreadyApplied => Decision::AlreadyApplied,
            Detected::Merge(m) => Decision::Merge(m),
            Detected::Conflict(case, reason) => {
                let p = self.policies.of(doctype);
                let sides = Sides {
                    before,
                    after,
                    replica,
                };
                self.resolve(p.for_case(case), p.fallback, case, reason, sides)
            }
        }
    }

    /// A conflict of `op` with the replica's copy, with the case it falls under.
    fn detect(
        &self,
        op: Op,
        before: Option<&Image>,
        after: Option<&Image>,
        replica: Option<&Image>,
        replica_new: Option<&Image>,
    ) -> Detected {
        let conflict = |case, why: &str, d| Detected::Conflict(case, conflict_reason(why, d));
        match op {
            Op::Create | Op::Snapshot => match replica {
                None => Detected::Apply,
                Some(_) if self.same(replica, after) => Detected::AlreadyApplied,
                Some(_) => conflict(
                    Case::InsertExists,
                    "document exists on the replica with other content",
                    self.diff(after, replica),
                ),
            },
            Op::Update if replica.is_none() && self.missing_is_new => Detected::Apply,
            Op::Update => {
                if self.same(replica, before) {
                    return Detected::Apply;
                }
                if self.same(replica, after) {
                    return Detected::AlreadyApplied;
                }
                let (Some(b), Some(a), Some(r)) = (before, after, replica) else {
                    return match replica {
                        None => conflict(
                            Case::UpdateMissing,
                            "document missing on the replica",
                            Vec::new(),
                        ),
                        Some(_) => conflict(
                            Case::UpdateChanged,
                            "replica copy differs from the primary's before image",
                            self.diff(before, replica),
                        ),
                    };
                };
                if self.policies.detect == Detect::Row {
                    return conflict(
                        Case::UpdateChanged,
                        "replica copy differs from the primary's before image",
                        self.diff(before, replica),
                    );
                }
                let overlaps = self.counted().overlaps(b, a, r);
                if !overlaps.is_empty() {
                    return conflict(
                        Case::UpdateChanged,
                        "replica copy changed what the primary changed",
                        overlaps,
                    );
                }
                if submitted(&[b, a, r]) {
                    return conflict(
                        Case::UpdateChanged,
                        "local changes to a submitted document (never field-merged)",
                        self.diff(before, replica),
                    );
                }
                let m = merge::merge(b, a, r);
                if self.same(Some(&m), Some(r)) {
                    Detected::AlreadyApplied
                } else {
                    Detected::Merge(Box::new(m))
                }
            }
            Op::Delete => {
                if replica.is_none() {
                    Detected::AlreadyApplied
                } else if self.same(replica, before) {
                    Detected::Apply
                } else {
                    conflict(
                        Case::DeleteChanged,
                        "replica copy changed locally before a delete",
                        self.diff(before, replica),
                    )
                }
            }
            Op::Rename if self.missing_is_new && replica.is_none() && replica_new.is_none() => {
                Detected::Apply
            }
            Op::Rename => {
                if replica.is_none() && self.same(replica_new, after) {
                    Detected::AlreadyApplied
                } else if replica_new.is_some() {
                    conflict(
                        Case::Rename,
                        "the new name already exists on the replica",
                        Vec::new(),
                    )
                } else if self.same(replica, before) {
                    Detected::Apply
                } else if replica.is_none() {
                    conflict(Case::Rename, "document missing on the replica", Vec::new())
                } else {
                    conflict(
                        Case::Rename,
                        "replica copy differs from the primary's before image",
                        self.diff(before, replica),
                    )
                }
            }
        }
    }

    fn counted(&self) -> Counted<'_> {
        Counted {
            ignored: &self.ignored,
        }
    }

    /// What `policy` makes of a conflict (`fallback`: `merge_fields`' fallback).
    fn resolve(
        &self,
        policy: Policy,
        fallback: Policy,
        case: Case,
        reason: String,
        s: Sides<'_>,
    ) -> Decision {
        let auto = |action, reason: String| {
            Decision::Auto(Box::new(Auto {
                policy,
                action,
                reason,
            }))
        };
        match policy {
            Policy::Manual => Decision::Conflict(reason),
            Policy::ReplicaWins => auto(Action::Local, reason),
            Policy::PrimaryWins => s.guard(policy, case, auto(Action::Primary, reason)),
            Policy::NewestWins => {
                let primary = if case == Case::DeleteChanged {
                    s.before
                } else {
                    s.after
                };
                fn side(i: Option<&Image>) -> Option<&str> {
                    modified(i.and_then(|i| i.parent.as_ref()))
                }
                let newer = match (case, side(primary), side(s.replica)) {
                    (Case::UpdateMissing, _, _) => true,
                    (_, Some(p), Some(r)) => p >= r,
                    _ => {
                        return Decision::Conflict(format!(
                            "newest_wins cannot compare: `modified` missing or not a datetime; {reason}"
                        ));
                    }
                };
                if newer {
                    s.guard(policy, case, auto(Action::Primary, reason))
                } else {
                    auto(Action::Local, reason)
                }
            }
            Policy::MergeFields => {
                let (Some(b), Some(a), Some(r)) = (s.before, s.after, s.replica) else {
                    let reason = format!("merge_fields fell back (nothing to merge): {reason}");
                    return self.resolve(fallback, Policy::Manual, case, reason, s);
                };
                if submitted(&[b, a, r]) {
                    return Decision::Conflict(format!(
                        "merge_fields: a submitted document is never field-merged; {reason}"
                    ));
                }
                let overlaps = self.counted().overlaps(b, a, r);
                if overlaps.is_empty() {
                    auto(Action::Merged(Box::new(merge::merge(b, a, r))), reason)
                } else {
                    let reason = format!(
                        "merge_fields fell back (both sides changed {}): {reason}",
                        overlaps.join(", ")
                    );
                    self.resolve(fallback, Policy::Manual, case, reason, s)
                }
            }
        }
    }
}

/// The images a policy decides between.
#[derive(Clone, Copy)]
struct Sides<'a> {
    before: Option<&'a Image>,
    after: Option<&'a Image>,
    replica: Option<&'a Image>,
}

impl Sides<'_> {
    /// The docstatus guard over a decision that writes the primary's version: a submitted or
    /// cancelled copy is never moved back to a lower docstatus, nor a submitted one deleted.
    fn guard(&self, policy: Policy, case: Case, d: Decision) -> Decision {
        let ds = |i: Option<&Image>| docstatus(i.and_then(|i| i.parent.as_ref()));
        let Some(r) = ds(self.replica) else {
            return d;
        };
        let blocked = match (case, ds(self.after)) {
            (Case::DeleteChanged, _) => r == 1,
            (_, Some(t)) => r > t,
            (_, None) => false,
        };
        match (blocked, d) {
            (true, Decision::Auto(a)) => Decision::Conflict(format!(
                "docstatus guard: {} would move the replica's copy back from docstatus {r}; {}",
                policy.label(),
                a.reason
            )),
            (_, d) => d,
        }
    }
}

/// True when one of the images is submitted or cancelled.
fn submitted(imgs: &[&Image]) -> bool {
    imgs.iter()
        .any(|i| docstatus(i.parent.as_ref()).is_some_and(|d| d >= 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn img_json(status: &str, qty: &str) -> Value {
        json!({"parent": {"name": "S1", "status": status, "_seen": "x"},
               "children": {"items": [{"name": "i1", "qty": qty}]}})
    }

    fn im(v: Value) -> Image {
        serde_json::from_value(v).expect("image")
    }

    fn img(status: &str, qty: &str) -> Image {
        im(img_json(status, qty))
    }

    fn cmp() -> Comparator {
        Comparator::new(["_seen".to_string()])
    }

    #[test]
    fn diff_paths_and_ignored_columns() {
        let c = cmp();
        let a = img("Draft", "1");
        let mut b = img_json("Paid", "2");
        b["parent"]["_seen"] = json!("other");
        let b = im(b);
        assert_eq!(
            c.diff(Some(&a), Some(&b)),
            vec!["parent.status", "items[0].qty"]
        );
        let mut extra = img_json("Draft", "1");
        extra["parent"]["only_here"] = json!(1);
        let extra = im(extra);
        assert!(
            c.diff(Some(&a), Some(&extra)).is_empty(),
            "columns one side lacks are not compared"
        );
        let mut more = img_json("Draft", "1");
        if let Some(a) = more["children"]["items"].as_array_mut() {
            a.push(json!({"name": "i2"}));
        }
        let more = im(more);
        assert_eq!(
            c.diff(Some(&a), Some(&more)),
            vec!["items: rows added, removed or reordered"]
        );
        assert!(!c.diff(Some(&a), None).is_empty());
    }

    #[test]
    fn decision_table() {
        use Decision::*;
        let c = cmp();
        let (b, a, local) = (img("Draft", "1"), img("Paid", "1"), img("Hold", "9"));
        let is_conflict = |d: Decision| matches!(d, Conflict(_));
        // create / snapshot
        for op in [Op::Create, Op::Snapshot] {
            assert_eq!(c.decide(op, None, Some(&a), None, None), Apply);
            assert_eq!(c.decide(op, None, Some(&a), Some(&a), None), AlreadyApplied);
            assert!(is_conflict(c.decide(
                op,
                None,
                Some(&a),
                Some(&local),
                None
            )));
        }
        // update
        assert_eq!(
            c.decide(Op::Update, Some(&b), Some(&a), Some(&b), None),
            Apply
        );
        assert_eq!(
            c.decide(Op::Update, Some(&b), Some(&a), Some(&a), None),
            AlreadyApplied
        );
        assert!(is_conflict(c.decide(
            Op::Update,
            Some(&b),
            Some(&a),
            Some(&local),
            None
        )));
        assert!(is_conflict(c.decide(
            Op::Update,
            Some(&b),
            Some(&a),
            None,
            None
        )));
        // delete
        assert_eq!(c.decide(Op::Delete, Some(&b), None, Some(&b), None), Apply);
        assert_eq!(
            c.decide(Op::Delete, Some(&b), None, None, None),
            AlreadyApplied
        );
        assert!(is_conflict(c.decide(
            Op::Delete,
            Some(&b),
            None,
            Some(&local),
            None
        )));
        // rename
        assert_eq!(
            c.decide(Op::Rename, Some(&b), Some(&a), Some(&b), None),
            Apply
        );
        assert_eq!(
            c.decide(Op::Rename, Some(&b), Some(&a), None, Some(&a)),
            AlreadyApplied
        );
        assert!(is_conflict(c.decide(
            Op::Rename,
            Some(&b),
            Some(&a),
            Some(&b),
            Some(&local)
        )));
        assert!(is_conflict(c.decide(
            Op::Rename,
            Some(&b),
            Some(&a),
            Some(&local),
            None
        )));
        assert!(is_conflict(c.decide(
            Op::Rename,
            Some(&b),
            Some(&a),
            None,
            None
        )));
        // A conflict says which columns differ.
        match c.decide(Op::Update, Some(&b), Some(&a), Some(&local), None) {
            Conflict(why) => assert!(
                why.contains("parent.status") && !why.contains("qty"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fresh_replica_writes_documents_whose_history_was_compacted_away() {
        use Decision::*;
        let is_conflict = |d: Decision| matches!(d, Conflict(_));
        let (b, a) = (img("Draft", "1"), img("Paid", "1"));
        let strict = cmp();
        assert!(is_conflict(strict.decide(
            Op::Update,
            Some(&b),
            Some(&a),
            None,
            None
        )));
        assert!(is_conflict(strict.decide(
            Op::Rename,
            Some(&b),
            Some(&a),
            None,
            None
        )));
        let fresh = Comparator {
            missing_is_new: true,
            ..cmp()
        };
        assert_eq!(
            fresh.decide(Op::Update, Some(&b), Some(&a), None, None),
            Apply
        );
        assert_eq!(
            fresh.decide(Op::Rename, Some(&b), Some(&a), None, None),
            Apply
        );
        // A copy that is there is still checked against the before image.
        let local = img("Hold", "9");
        assert!(is_conflict(fresh.decide(
            Op::Update,
            Some(&b),
            Some(&a),
            Some(&local),
            None
        )));
        assert!(is_conflict(fresh.decide(
            Op::Rename,
            Some(&b),
            Some(&a),
            None,
            Some(&local)
        )));
    }
}

//! The conflict decision: a pure function of the envelope's operation and images and the
//! replica's current copy of the document (no I/O, exhaustively unit-tested).
//!
//! The replica is "as expected" when its copy equals the envelope's `before` image on the
//! columns both sides have, ignoring Frappe's bookkeeping columns. A copy equal to `after`
//! means the change is already there (a replay after a capture restart, or a snapshot of a
//! document the replica already holds) and is skipped, not flagged.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::envelope::Op;
use crate::image::{Image, Row};

/// What to do with one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write `after` (or delete when `after` is null).
    Apply,
    /// The replica already has the result.
    AlreadyApplied,
    /// The replica's copy was changed locally: record, do not write.
    Conflict(String),
}

/// A conflict with its reason and, when known, the differing columns.
fn conflict(why: &str, d: Vec<String>) -> Decision {
    Decision::Conflict(if d.is_empty() {
        why.to_string()
    } else {
        format!("{why}: {}", d.join(", "))
    })
}

/// Compares images on shared columns, ignoring `ignored` columns.
#[derive(Debug, Clone, Default)]
pub struct Comparator {
    ignored: BTreeSet<String>,
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
            missing_is_new: false,
        }
    }

    fn row_diff(&self, path: &str, a: &Row, b: &Row, out: &mut Vec<String>) {
        for (k, va) in a {
            if self.ignored.contains(k) {
                continue;
            }
            if let Some(vb) = b.get(k)
                && va != vb
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

    /// Decides what to do with an envelope given the replica's copy. For a rename, `replica`
    /// is the copy under the old name and `replica_new` the copy under the new name.
    /// Apply when the replica's copy is the primary's `before` image, else a conflict saying
    /// whether the copy is missing or how it differs.
    fn against_before(&self, before: Option<&Image>, replica: Option<&Image>) -> Decision {
        if self.same(replica, before) {
            Decision::Apply
        } else if replica.is_none() {
            conflict("document missing on the replica", Vec::new())
        } else {
            conflict(
                "replica copy differs from the primary's before image",
                self.diff(before, replica),
            )
        }
    }

    pub fn decide(
        &self,
        op: Op,
        before: Option<&Image>,
        after: Option<&Image>,
        replica: Option<&Image>,
        replica_new: Option<&Image>,
    ) -> Decision {
        match op {
            Op::Create | Op::Snapshot => match replica {
                None => Decision::Apply,
                Some(_) if self.same(replica, after) => Decision::AlreadyApplied,
                Some(_) => conflict(
                    "document exists on the replica with other content",
                    self.diff(after, replica),
                ),
            },
            Op::Update if replica.is_none() && self.missing_is_new => Decision::Apply,
            Op::Update => {
                if !self.same(replica, before) && self.same(replica, after) {
                    Decision::AlreadyApplied
                } else {
                    self.against_before(before, replica)
                }
            }
            Op::Delete => {
                if replica.is_none() {
                    Decision::AlreadyApplied
                } else if self.same(replica, before) {
                    Decision::Apply
                } else {
                    conflict(
                        "replica copy changed locally before a delete",
                        self.diff(before, replica),
                    )
                }
            }
            Op::Rename if self.missing_is_new && replica.is_none() && replica_new.is_none() => {
                Decision::Apply
            }
            Op::Rename => {
                if replica.is_none() && self.same(replica_new, after) {
                    Decision::AlreadyApplied
                } else if replica_new.is_some() {
                    conflict("the new name already exists on the replica", Vec::new())
                } else {
                    self.against_before(before, replica)
                }
            }
        }
    }
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
        let (b, a, local) = (img("Draft", "1"), img("Paid", "1"), img("Draft", "9"));
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
            Conflict(why) => assert!(why.contains("items[0].qty"), "{why}"),
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
        let local = img("Draft", "9");
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

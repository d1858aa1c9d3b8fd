//! Detection by changed columns and the field merge: pure functions over the primary's
//! `before` and `after` images and the replica's copy (no I/O).
//!
//! What counts as a change (`detect = "changed_columns"`, the default):
//! - a parent column whose value differs between `before` and `after`;
//! - a child row (matched by its `name`, never by position) the primary added, removed, or
//!   changed a column of;
//! - never: the comparator's ignored columns (`_seen`, `_comments`, `_assign`, `_liked_by`,
//!   `_user_tags`, `--ignore-column`), nor `modified`, `modified_by` and `idx` ([`BOOKKEEPING`]):
//!   every save moves `modified`, so counting it would make every pair of edits overlap, and an
//!   `idx`-only move is a reordering, not an edit.
//!
//! An **overlap** is a change of the primary that the replica's copy changed too, to another
//! value: a column whose replica value is neither the primary's `before` nor its `after`; a
//! changed or removed row the replica changed or removed; an added row the replica holds with
//! other values. Only an overlap is a conflict; a replica that reached the primary's value on
//! its own (the same edit on both sides) is not.
//!
//! The **merge** is the replica's copy with the primary's changes applied: the changed parent
//! columns and child-row columns take `after`'s values, rows the primary removed go, rows it
//! added come in; the replica's own changes to anything else stay. `modified` and
//! `modified_by` are the newer side's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::image::{Image, Row};

/// Columns a change or an overlap never counts, besides the comparator's ignored ones.
pub const BOOKKEEPING: &[&str] = &["modified", "modified_by", "idx"];

/// The columns a change is judged on: everything but `ignored` and [`BOOKKEEPING`].
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    pub ignored: &'a BTreeSet<String>,
}

impl Counted<'_> {
    fn counts(&self, col: &str) -> bool {
        !self.ignored.contains(col) && !BOOKKEEPING.contains(&col)
    }

    /// Columns whose values differ between `a` and `b` (present on both sides).
    fn changed<'r>(&self, a: &'r Row, b: &'r Row) -> Vec<&'r str> {
        a.iter()
            .filter(|(k, va)| self.counts(k) && b.get(k).is_some_and(|vb| vb != *va))
            .map(|(k, _)| k)
            .collect()
    }

    fn differs(&self, a: &Row, b: &Row) -> bool {
        !self.changed(a, b).is_empty()
    }

    /// The primary's changes (`before` → `after`) that the replica's copy changed too, to
    /// another value, as paths (`parent.status`, `items[i1].qty`, `items[i9]: …`). Empty
    /// when the two sides' changes are disjoint.
    pub fn overlaps(&self, before: &Image, after: &Image, replica: &Image) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some(b), Some(a), Some(r)) = (&before.parent, &after.parent, &replica.parent) {
            for c in self.changed(b, a) {
                if let Some(rv) = r.get(c)
                    && Some(rv) != b.get(c)
                    && Some(rv) != a.get(c)
                {
                    out.push(format!("parent.{c}"));
                }
            }
        }
        for f in fields(&[before, after, replica]) {
            let (bm, am, rm) = (
                by_name(before.rows(f)),
                by_name(after.rows(f)),
                by_name(replica.rows(f)),
            );
            let (Some(bm), Some(am), Some(rm)) = (bm, am, rm) else {
                out.push(format!("{f}: rows without a name"));
                continue;
            };
            let names: BTreeSet<&str> = bm.keys().chain(am.keys()).copied().collect();
            for n in names {
                match (bm.get(n), am.get(n), rm.get(n)) {
                    (Some(b), Some(a), r) => {
                        let changed = self.changed(b, a);
                        if changed.is_empty() {
                            continue;
                        }
                        let Some(r) = r else {
                            out.push(format!(
                                "{f}[{n}]: changed on the primary, removed on the replica"
                            ));
                            continue;
                        };
                        for c in changed {
                            if let Some(rv) = r.get(c)
                                && Some(rv) != b.get(c)
                                && Some(rv) != a.get(c)
                            {
                                out.push(format!("{f}[{n}].{c}"));
                            }
                        }
                    }
                    (Some(b), None, Some(r)) if self.differs(b, r) => {
                        out.push(format!(
                            "{f}[{n}]: removed on the primary, changed on the replica"
                        ));
                    }
                    (None, Some(a), Some(r)) if self.differs(a, r) => {
                        out.push(format!("{f}[{n}]: added on both sides with other values"));
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

/// The child fields any of `imgs` has.
fn fields<'a>(imgs: &[&'a Image]) -> BTreeSet<&'a str> {
    imgs.iter()
        .flat_map(|i| i.children.keys().map(String::as_str))
        .collect()
}

/// Rows by `name`; None when a row has no string name or two rows share one.
fn by_name(rows: &[Row]) -> Option<BTreeMap<&str, &Row>> {
    let mut m = BTreeMap::new();
    for r in rows {
        if m.insert(r.str("name")?, r).is_some() {
            return None;
        }
    }
    Some(m)
}

/// `modified` of a row, when it is a `YYYY-MM-DD HH:MM:SS[.ffffff]` string (these order as
/// text).
pub fn modified(r: Option<&Row>) -> Option<&str> {
    r?.str("modified").filter(|s| {
        let b = s.as_bytes();
        b.len() >= 19 && b[4] == b'-' && b[10] == b' ' && b[13] == b':'
    })
}

/// `docstatus` of a row (0 draft, 1 submitted, 2 cancelled), as a number or numeric string.
pub fn docstatus(r: Option<&Row>) -> Option<i64> {
    match r?.get("docstatus")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The replica's copy with the primary's changes (`before` → `after`) applied (module docs).
/// Only meaningful when [`Counted::overlaps`] is empty: on an overlap `after` wins.
pub fn merge(before: &Image, after: &Image, replica: &Image) -> Image {
    let mut out = replica.clone();
    match (&before.parent, &after.parent, &mut out.parent) {
        (Some(b), Some(a), Some(r)) => {
            for (c, av) in a.iter() {
                if c == "modified" || c == "modified_by" {
                    continue;
                }
                if b.get(c) != Some(av) {
                    r.insert(c.to_string(), av.clone());
                }
            }
            if modified(Some(a)) >= modified(Some(r)) {
                for c in ["modified", "modified_by"] {
                    if let Some(v) = a.get(c) {
                        r.insert(c.to_string(), v.clone());
                    }
                }
            }
        }
        (_, Some(a), r @ None) => *r = Some(a.clone()),
        _ => {}
    }
    let names = fields(&[before, after]);
    for f in names {
        let (Some(bm), Some(am)) = (by_name(before.rows(f)), by_name(after.rows(f))) else {
            continue;
        };
        let rows = out.children.entry(f.to_string()).or_default();
        rows.retain(|r| {
            r.str("name")
                .is_none_or(|n| !bm.contains_key(n) || am.contains_key(n))
        });
        for r in rows.iter_mut() {
            let Some(n) = r.str("name").map(str::to_string) else {
                continue;
            };
            if let (Some(b), Some(a)) = (bm.get(n.as_str()), am.get(n.as_str())) {
                for (c, av) in a.iter() {
                    if b.get(c) != Some(av) {
                        r.insert(c.to_string(), av.clone());
                    }
                }
            }
        }
        let present: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r.str("name").map(str::to_string))
            .collect();
        for a in after.rows(f) {
            if let Some(n) = a.str("name")
                && !bm.contains_key(n)
                && !present.contains(n)
            {
                rows.push(a.clone());
            }
        }
        rows.sort_by(|x, y| idx(x).total_cmp(&idx(y)));
        if rows.is_empty() {
            out.children.remove(f);
        }
    }
    out
}

/// A row's `idx` for ordering (rows without one go last, in their order: the sort is stable).
fn idx(r: &Row) -> f64 {
    match r.get("idx") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::MAX),
        Some(Value::String(s)) => s.parse().unwrap_or(f64::MAX),
        _ => f64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn im(v: Value) -> Image {
        serde_json::from_value(v).expect("image")
    }

    fn doc(status: &str, remarks: &str, rows: Value) -> Image {
        im(
            json!({"parent": {"name": "S1", "status": status, "remarks": remarks,
                   "modified": "2026-01-01 10:00:00.000000", "docstatus": 0},
                  "children": {"items": rows}}),
        )
    }

    fn row(name: &str, qty: i64, idx: i64) -> Value {
        json!({"name": name, "qty": qty, "idx": idx})
    }

    #[test]
    fn disjoint_changes_do_not_overlap_and_merge_both() {
        let ignored = BTreeSet::from(["_seen".to_string()]);
        let c = Counted { ignored: &ignored };
        let before = doc("Draft", "", json!([row("i1", 1, 1), row("i2", 2, 2)]));
        // primary: status, i1.qty, removes i2, adds i3
        let mut after = doc("Paid", "", json!([row("i1", 5, 1), row("i3", 3, 2)]));
        after
            .parent
            .as_mut()
            .unwrap()
            .insert("modified".into(), json!("2026-01-01 11:00:00.000000"));
        // replica: remarks, adds its own row i9, moves i1 (idx only)
        let replica = doc(
            "Draft",
            "local",
            json!([row("i9", 9, 0), row("i1", 1, 3), row("i2", 2, 2)]),
        );
        assert!(c.overlaps(&before, &after, &replica).is_empty());
        let m = merge(&before, &after, &replica);
        let p = m.parent.as_ref().unwrap();
        assert_eq!(p.str("status"), Some("Paid"));
        assert_eq!(p.str("remarks"), Some("local"));
        assert_eq!(p.str("modified"), Some("2026-01-01 11:00:00.000000"));
        let names: Vec<&str> = m
            .rows("items")
            .iter()
            .filter_map(|r| r.str("name"))
            .collect();
        assert_eq!(
            names,
            ["i9", "i3", "i1"],
            "i2 removed, i3 added, the local move of i1 kept"
        );
        let i1 = m.rows("items").iter().find(|r| r.str("name") == Some("i1"));
        assert_eq!(i1.and_then(|r| r.get("qty")), Some(&json!(5)));
        assert_eq!(i1.and_then(|r| r.get("idx")), Some(&json!(3)));
    }

    #[test]
    fn overlaps_are_found_per_column_and_row() {
        let ignored = BTreeSet::new();
        let c = Counted { ignored: &ignored };
        let before = doc("Draft", "", json!([row("i1", 1, 1), row("i2", 2, 2)]));
        let after = doc("Paid", "", json!([row("i1", 5, 1), row("i3", 3, 3)]));
        let replica = doc(
            "Hold",
            "",
            json!([row("i1", 7, 1), row("i2", 4, 2), row("i3", 1, 3)]),
        );
        assert_eq!(
            c.overlaps(&before, &after, &replica),
            vec![
                "parent.status",
                "items[i1].qty",
                "items[i2]: removed on the primary, changed on the replica",
                "items[i3]: added on both sides with other values"
            ]
        );
        // the same value reached on both sides is not an overlap; a removed changed row is
        let same = doc("Paid", "", json!([row("i2", 2, 2)]));
        assert_eq!(
            c.overlaps(&before, &after, &same),
            vec!["items[i1]: changed on the primary, removed on the replica"]
        );
        // bookkeeping columns never overlap
        let mut b2 = before.clone();
        let mut r2 = before.clone();
        let mut a2 = before.clone();
        for (img, v) in [(&mut b2, "a"), (&mut a2, "b"), (&mut r2, "c")] {
            img.parent
                .as_mut()
                .unwrap()
                .insert("modified_by".into(), json!(v));
        }
        assert!(c.overlaps(&b2, &a2, &r2).is_empty());
    }

    #[test]
    fn modified_and_docstatus_are_read_leniently() {
        let r: Row =
            serde_json::from_value(json!({"modified": "2026-01-01 10:00:00", "docstatus": "1"}))
                .unwrap();
        assert_eq!(modified(Some(&r)), Some("2026-01-01 10:00:00"));
        assert_eq!(docstatus(Some(&r)), Some(1));
        let bad: Row = serde_json::from_value(json!({"modified": "yesterday"})).unwrap();
        assert_eq!(modified(Some(&bad)), None);
        assert_eq!(docstatus(None), None);
    }
}

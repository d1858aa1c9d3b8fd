//! The three-way view of a conflict: the primary's `before` and `after` and the replica's
//! copy, field by field, with what each side changed; child rows lined up by `name`. Pure (the
//! page renders it, tests check it).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::image::{Image, Row};

/// One field across the three versions.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub column: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub replica: Option<Value>,
    /// The primary changed it (`before` != `after`).
    pub primary_changed: bool,
    /// The replica changed it (`before` != replica).
    pub replica_changed: bool,
}

impl Field {
    /// Both sides changed it, to different values.
    pub fn clash(&self) -> bool {
        self.primary_changed && self.replica_changed && self.after != self.replica
    }
}

/// Where a child row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    Unchanged,
    Changed,
    AddedOnPrimary,
    RemovedOnPrimary,
    AddedOnReplica,
    RemovedOnReplica,
}

impl RowState {
    pub fn label(self) -> &'static str {
        match self {
            RowState::Unchanged => "unchanged",
            RowState::Changed => "changed",
            RowState::AddedOnPrimary => "added on the primary",
            RowState::RemovedOnPrimary => "removed on the primary",
            RowState::AddedOnReplica => "added on the replica",
            RowState::RemovedOnReplica => "removed on the replica",
        }
    }
}

/// One child row across the three versions: its changed fields only (all of them for a row
/// only one version has).
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRow {
    pub name: String,
    pub state: RowState,
    pub fields: Vec<Field>,
}

/// A child table (by parentfield).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub field: String,
    pub rows: Vec<ChildRow>,
}

/// The whole view.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ThreeWay {
    pub parent: Vec<Field>,
    pub tables: Vec<Table>,
}

/// Columns never shown (internal bookkeeping of Frappe's UI).
const HIDDEN: &[&str] = &["_seen", "_comments", "_assign", "_liked_by", "_user_tags"];

fn fields(b: Option<&Row>, a: Option<&Row>, r: Option<&Row>, changed_only: bool) -> Vec<Field> {
    let mut cols: Vec<&str> = Vec::new();
    let mut seen = BTreeSet::new();
    for row in [a, b, r].into_iter().flatten() {
        for k in row.keys() {
            if !HIDDEN.contains(&k) && seen.insert(k) {
                cols.push(k);
            }
        }
    }
    cols.into_iter()
        .map(|c| {
            let get = |x: Option<&Row>| x.and_then(|x| x.get(c)).cloned();
            let (before, after, replica) = (get(b), get(a), get(r));
            Field {
                column: c.to_string(),
                primary_changed: before != after,
                replica_changed: before != replica,
                before,
                after,
                replica,
            }
        })
        .filter(|f| !changed_only || f.primary_changed || f.replica_changed)
        .collect()
}

fn by_name(rows: &[Row]) -> BTreeMap<String, &Row> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            (
                r.str("name")
                    .map_or_else(|| format!("#{i}"), str::to_string),
                r,
            )
        })
        .collect()
}

/// Builds the view of `before`, `after` and `replica` (any may be missing).
pub fn build<'a>(
    before: Option<&'a Image>,
    after: Option<&'a Image>,
    replica: Option<&'a Image>,
) -> ThreeWay {
    fn parent(i: Option<&Image>) -> Option<&Row> {
        i.and_then(|i| i.parent.as_ref())
    }
    let mut out = ThreeWay {
        parent: fields(parent(before), parent(after), parent(replica), false),
        tables: Vec::new(),
    };
    let names: BTreeSet<&str> = [before, after, replica]
        .into_iter()
        .flatten()
        .flat_map(|i| i.children.keys().map(String::as_str))
        .collect();
    for f in names {
        let rows = |i: Option<&'a Image>| by_name(i.map_or(&[][..], |i| i.rows(f)));
        let (bm, am, rm) = (rows(before), rows(after), rows(replica));
        // The rows of `after`, then those only `before` has, then the replica's own; by name
        // within each.
        let mut order: Vec<&String> = am.keys().chain(bm.keys()).chain(rm.keys()).collect();
        let mut seen = BTreeSet::new();
        order.retain(|n| seen.insert(*n));
        let mut table = Table {
            field: f.to_string(),
            rows: Vec::new(),
        };
        for n in order {
            let (b, a, r) = (bm.get(n).copied(), am.get(n).copied(), rm.get(n).copied());
            let state = match (b, a, r) {
                (None, Some(_), _) => RowState::AddedOnPrimary,
                (Some(_), None, _) => RowState::RemovedOnPrimary,
                (None, None, Some(_)) => RowState::AddedOnReplica,
                (Some(_), Some(_), None) => RowState::RemovedOnReplica,
                _ => RowState::Unchanged,
            };
            // `modified` and `idx` move on every save: a child row is only shown for its
            // other changes.
            let changed: Vec<Field> = fields(b, a, r, true)
                .into_iter()
                .filter(|f| !crate::apply::merge::BOOKKEEPING.contains(&f.column.as_str()))
                .collect();
            let state = if state == RowState::Unchanged && !changed.is_empty() {
                RowState::Changed
            } else {
                state
            };
            if state != RowState::Unchanged {
                table.rows.push(ChildRow {
                    name: n.clone(),
                    state,
                    fields: changed,
                });
            }
        }
        if !table.rows.is_empty() {
            out.tables.push(table);
        }
    }
    out
}

/// A value as shown in a cell: text as is, null as `∅`, others as JSON, cut at 300 chars.
pub fn show(v: Option<&Value>) -> String {
    let s = match v {
        None => return "—".into(),
        Some(Value::Null) => return "∅".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    if s.chars().count() > 300 {
        s.chars().take(300).chain("…".chars()).collect()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn im(v: Value) -> Image {
        serde_json::from_value(v).expect("image")
    }

    #[test]
    fn fields_and_rows_line_up_by_name() {
        let before = im(
            json!({"parent": {"name": "S", "status": "Draft", "remarks": "", "_seen": "x"},
            "children": {"items": [{"name": "i1", "qty": 1}, {"name": "i2", "qty": 2}, {"name": "i3", "qty": 3}]}}),
        );
        let after = im(
            json!({"parent": {"name": "S", "status": "Paid", "remarks": "", "_seen": "y"},
            "children": {"items": [{"name": "i1", "qty": 5}, {"name": "i3", "qty": 3}, {"name": "i4", "qty": 4}]}}),
        );
        let replica = im(
            json!({"parent": {"name": "S", "status": "Hold", "remarks": "x"},
            "children": {"items": [{"name": "i1", "qty": 1}, {"name": "i2", "qty": 2}, {"name": "i9", "qty": 9}]}}),
        );
        let v = build(Some(&before), Some(&after), Some(&replica));
        let cols: Vec<&str> = v.parent.iter().map(|f| f.column.as_str()).collect();
        assert_eq!(cols, ["name", "status", "remarks"], "_seen hidden");
        let status = &v.parent[1];
        assert!(status.primary_changed && status.replica_changed && status.clash());
        let remarks = &v.parent[2];
        assert!(!remarks.primary_changed && remarks.replica_changed && !remarks.clash());
        let items = &v.tables[0];
        let rows: Vec<(&str, RowState)> = items
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.state))
            .collect();
        assert_eq!(
            rows,
            [
                ("i1", RowState::Changed),
                ("i3", RowState::RemovedOnReplica),
                ("i4", RowState::AddedOnPrimary),
                ("i2", RowState::RemovedOnPrimary),
                ("i9", RowState::AddedOnReplica),
            ]
        );
        assert_eq!(items.rows[0].fields.len(), 1, "only qty changed in i1");
        assert_eq!(items.rows[0].fields[0].after, Some(json!(5)));
        assert_eq!(show(Some(&json!(null))), "∅");
        assert_eq!(show(None), "—");
        assert_eq!(show(Some(&json!("a".repeat(400)))).chars().count(), 301);
    }

    #[test]
    fn bookkeeping_only_child_changes_are_not_shown() {
        let img = |m: &str| {
            im(
                json!({"parent": null, "children": {"taxes": [{"name": "t1", "rate": 5, "modified": m, "idx": 1}]}}),
            )
        };
        let (b, a) = (img("a"), img("b"));
        assert!(build(Some(&b), Some(&a), Some(&b)).tables.is_empty());
    }
}

//! Pure routing of one row to the document it belongs to (no I/O).
//!
//! * a child row (its doctype has `istable`) belongs to `(parenttype, parent)`;
//! * a `tabSingles` row belongs to `(doctype, doctype)` of the Single;
//! * a `tabDocType` row is catalog input (never streamed by default);
//! * any other `tab<Doctype>` row belongs to `(doctype, name)`.
//!
//! Rows of doctypes the filter does not track are skipped.

use super::catalog::{Catalog, Filter};
use crate::source::rows::{RowImage, TableDesc};
use crate::state::{ChildLink, DocKey, DocShape};

/// Where a row goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// A row of a document's own table or of one of its child tables.
    Doc {
        key: DocKey,
        shape: DocShape,
        name: String,
        link: Option<ChildLink>,
    },
    /// One field of a Single.
    Single { key: DocKey, field: String },
    /// Not streamed; `catalog` is true for `tabDocType` rows the catalog is built from.
    Skip { catalog: bool },
}

/// Text of a key column: strings as they are, numbers (autoincrement names) in decimal.
fn col(row: &RowImage, i: Option<usize>) -> Option<String> {
    row.text(i).map(|t| t.into_owned())
}

/// Routes one row image of `table`.
pub fn route(table: &TableDesc, row: &RowImage, catalog: &Catalog, filter: &Filter) -> Route {
    let skip = Route::Skip { catalog: false };
    if table.table == "tabDocType" {
        return Route::Skip { catalog: true };
    }
    if table.table == "tabSingles" {
        let (Some(dt), Some(field)) = (
            col(row, table.column("doctype")),
            col(row, table.column("field")),
        ) else {
            return skip;
        };
        if !filter.tracks(&dt) {
            return skip;
        }
        return Route::Single {
            key: DocKey {
                doctype: dt.clone(),
                name: dt,
            },
            field,
        };
    }
    let Some(doctype) = table.table.strip_prefix("tab") else {
        return skip;
    };
    let Some(name) = col(row, table.name_col) else {
        return skip;
    };
    let info = catalog.get(doctype).unwrap_or_default();
    if info.istable {
        if !filter.tracks(doctype) && filter_excludes_child(filter, doctype) {
            return skip;
        }
        let (Some(pt), Some(parent)) = (col(row, table.parenttype_col), col(row, table.parent_col))
        else {
            return skip;
        };
        if !filter.tracks(&pt) {
            return skip;
        }
        let shape = if catalog.get(&pt).is_some_and(|i| i.issingle) {
            DocShape::Single
        } else {
            DocShape::Table
        };
        let parentfield = col(row, table.parentfield_col).unwrap_or_default();
        let idx = row.int(table.idx_col).unwrap_or(0);
        let link = ChildLink {
            parenttype: pt.clone(),
            parent: parent.clone(),
            parentfield,
            idx,
        };
        return Route::Doc {
            key: DocKey {
                doctype: pt,
                name: parent,
            },
            shape,
            name,
            link: Some(link),
        };
    }
    if !filter.tracks(doctype) || info.issingle || info.is_virtual {
        return skip;
    }
    Route::Doc {
        key: DocKey {
            doctype: doctype.to_string(),
            name: name.clone(),
        },
        shape: DocShape::Table,
        name,
        link: None,
    }
}

/// A child doctype is dropped only when it is named in `--exclude-doctype` or in the default
/// exclusions; children of tracked parents are otherwise always part of the image.
fn filter_excludes_child(filter: &Filter, doctype: &str) -> bool {
    !filter.reader_wants(&format!("tab{doctype}"))
}

/// True when an update changed only ignored bookkeeping columns.
pub fn only_ignored_changed(table: &TableDesc, before: &RowImage, after: &RowImage) -> bool {
    table.columns.iter().enumerate().all(|(i, c)| {
        before.cell(i) == after.cell(i)
            || super::catalog::IGNORED_COLUMNS.contains(&c.name.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::decode::CellKind;
    use serde_json::json;

    fn table(name: &str, cols: &[&str]) -> TableDesc {
        TableDesc::from_columns(
            "db",
            name,
            cols.iter()
                .map(|c| (c.to_string(), CellKind::Text { latin1: false }))
                .collect(),
        )
    }

    /// A row image of the given cell values (column names do not matter for routing).
    fn row(values: Vec<serde_json::Value>) -> RowImage {
        let names: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        RowImage::from_values(&table("tabT", &names), &values)
    }

    fn catalog() -> Catalog {
        let rows = [
            json!({"name": "Sales Invoice"}),
            json!({"name": "Sales Invoice Item", "istable": 1}),
            json!({"name": "Sales Team", "istable": 1}),
            json!({"name": "Customer"}),
            json!({"name": "Selling Settings", "issingle": 1}),
            json!({"name": "Version"}),
        ];
        Catalog::from_rows(rows.iter())
    }

    #[test]
    fn routes_parent_child_single_and_noise() {
        let c = catalog();
        let f = Filter::new(&[], &[]);
        let si = table("tabSales Invoice", &["name", "customer"]);
        let r = route(&si, &row(vec![json!("SINV-1"), json!("C1")]), &c, &f);
        assert!(
            matches!(r, Route::Doc { ref key, link: None, .. } if key.name == "SINV-1" && key.doctype == "Sales Invoice")
        );

        let team = table(
            "tabSales Team",
            &["name", "parent", "parenttype", "parentfield", "idx"],
        );
        let r = route(
            &team,
            &row(vec![
                json!("t1"),
                json!("C1"),
                json!("Customer"),
                json!("sales_team"),
                json!(2),
            ]),
            &c,
            &f,
        );
        match r {
            Route::Doc {
                key,
                link: Some(l),
                name,
                ..
            } => {
                assert_eq!(
                    key,
                    DocKey {
                        doctype: "Customer".into(),
                        name: "C1".into()
                    }
                );
                assert_eq!(
                    (l.parentfield.as_str(), l.idx, name.as_str()),
                    ("sales_team", 2, "t1")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let r = route(
            &team,
            &row(vec![
                json!("t2"),
                json!("SINV-1"),
                json!("Sales Invoice"),
                json!("sales_team"),
                json!(1),
            ]),
            &c,
            &f,
        );
        assert!(matches!(r, Route::Doc { ref key, .. } if key.doctype == "Sales Invoice"));

        let singles = table("tabSingles", &["doctype", "field", "value"]);
        let r = route(
            &singles,
            &row(vec![
                json!("Selling Settings"),
                json!("cust_master_name"),
                json!("Customer Name"),
            ]),
            &c,
            &f,
        );
        assert_eq!(
            r,
            Route::Single {
                key: DocKey {
                    doctype: "Selling Settings".into(),
                    name: "Selling Settings".into()
                },
                field: "cust_master_name".into()
            }
        );

        let v = table("tabVersion", &["name"]);
        assert_eq!(
            route(&v, &row(vec![json!("v1")]), &c, &f),
            Route::Skip { catalog: false }
        );
        let dt = table("tabDocType", &["name"]);
        assert_eq!(
            route(&dt, &row(vec![json!("X")]), &c, &f),
            Route::Skip { catalog: true }
        );
        // Child of an untracked parent is skipped.
        let f2 = Filter::new(&[], &["Customer".into()]);
        let r = route(
            &team,
            &row(vec![
                json!("t1"),
                json!("C1"),
                json!("Customer"),
                json!("sales_team"),
                json!(1),
            ]),
            &c,
            &f2,
        );
        assert_eq!(r, Route::Skip { catalog: false });
        // NULL name: skipped, never a panic.
        assert_eq!(
            route(&si, &row(vec![json!(null), json!("x")]), &c, &f),
            Route::Skip { catalog: false }
        );
        // Autoincrement (numeric) names are keys too.
        assert!(
            matches!(route(&si, &row(vec![json!(42), json!("x")]), &c, &f), Route::Doc { ref key, .. } if key.name == "42")
        );
    }

    #[test]
    fn ignored_columns() {
        let t = table("tabCustomer", &["name", "_seen", "customer_name"]);
        assert!(only_ignored_changed(
            &t,
            &row(vec![json!("a"), json!("[]"), json!("x")]),
            &row(vec![json!("a"), json!("[\"u\"]"), json!("x")])
        ));
        assert!(!only_ignored_changed(
            &t,
            &row(vec![json!("a"), json!(null), json!("x")]),
            &row(vec![json!("a"), json!(null), json!("y")])
        ));
    }
}

//! Document ownership of child rows on the replica.
//!
//! Child rows are written by `name` (upserts, `LOAD DATA`), and a child table's `name` is
//! unique across all documents. So before a document's child rows are written, every row of
//! that name already on the replica must belong to the same document: the same `parenttype`
//! and `parent` (for a rename, the old name too; that is how a rename moves its own rows).
//! A row owned by any other document (or by none) is a *collision*: the document being
//! applied becomes a conflict that names both owners, and nothing of it is written. The
//! image's own rows were already checked to name this document ([`Envelope::validate`]).
//!
//! `parentfield` is not part of ownership: a row that moves between two table fields of the
//! same document stays within it, and its old place is compared by the before-image check.
//!
//! The owners are read with a locking read on the child table's primary key, in the same
//! transaction as the write, so no other writer can hand a row to another document between
//! the check and the write. Names are matched by the server (its collation), so a row whose
//! name differs only in case or trailing spaces is still found.
//!
//! [`Envelope::validate`]: crate::envelope::Envelope::validate

use std::collections::{BTreeMap, HashSet};

use mysql_async::Transaction;
use mysql_async::Value as MyValue;
use mysql_async::prelude::Queryable;

use super::replica::{CHUNK, ReplicaError, SchemaCache, child_rows, marks, q};
use crate::image::Image;

/// A replica row of a child table and the document it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildOwner {
    pub table: String,
    pub name: String,
    pub parenttype: Option<String>,
    pub parent: Option<String>,
}

impl ChildOwner {
    /// True when the row belongs to document `(doctype, name)`.
    pub fn owned_by(&self, doctype: &str, name: &str) -> bool {
        self.parenttype.as_deref() == Some(doctype) && self.parent.as_deref() == Some(name)
    }
}

/// The rows of `table` named `names`, with their owners, locked for the transaction.
pub(crate) async fn owners(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    table: &str,
    names: &[&str],
) -> Result<Vec<ChildOwner>, ReplicaError> {
    let hint = cache.index_hint(tx, table, "name").await?;
    let mut out = Vec::new();
    for chunk in names.chunks(CHUNK) {
        let sql = format!(
            "SELECT name, parenttype, parent FROM {}{hint} WHERE name IN ({}) FOR UPDATE",
            q(table),
            marks(chunk.len())
        );
        let params: Vec<MyValue> = chunk.iter().map(|n| MyValue::from(*n)).collect();
        let rows: Vec<(String, Option<String>, Option<String>)> = tx.exec(sql, params).await?;
        out.extend(
            rows.into_iter()
                .map(|(name, parenttype, parent)| ChildOwner {
                    table: table.to_string(),
                    name,
                    parenttype,
                    parent,
                }),
        );
    }
    Ok(out)
}

/// I7 (ARCHITECTURE.md). The replica rows that `image`'s child rows would overwrite although they belong to another
/// document than `(doctype, name)` (or `(doctype, old_name)` for a rename). Empty when the
/// document may be written.
pub(crate) async fn collisions(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    doctype: &str,
    name: &str,
    old_name: Option<&str>,
    image: &Image,
) -> Result<Vec<ChildOwner>, ReplicaError> {
    let tables = cache.child_tables(tx, doctype).await?;
    let mut by_table: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (table, row) in child_rows(doctype, image, &tables)? {
        if let Some(n) = row.str("name") {
            by_table.entry(table).or_default().push(n);
        }
    }
    let mut out = Vec::new();
    for (table, names) in by_table {
        for o in owners(tx, cache, table, &names).await? {
            let own =
                o.owned_by(doctype, name) || old_name.is_some_and(|old| o.owned_by(doctype, old));
            if !own {
                out.push(o);
            }
        }
    }
    Ok(out)
}

/// The start of an ownership conflict's reason.
pub const OWNED_ELSEWHERE: &str = "child rows owned by another document on the replica";

/// The conflict reason for `found` (names both owners; stored in the conflicts table, not
/// logged).
pub fn reason(found: &[ChildOwner]) -> String {
    const SHOWN: usize = 10;
    let mut parts: Vec<String> = found
        .iter()
        .take(SHOWN)
        .map(|o| {
            format!(
                "{} row {:?} belongs to {} {:?}",
                o.table,
                o.name,
                o.parenttype.as_deref().unwrap_or("(no parenttype)"),
                o.parent.as_deref().unwrap_or("(no parent)")
            )
        })
        .collect();
    if found.len() > SHOWN {
        parts.push(format!("and {} more", found.len() - SHOWN));
    }
    format!("{OWNED_ELSEWHERE}: {}", parts.join("; "))
}

/// A name folded the way the replica's `utf8mb4_unicode_ci` names mostly compare (case and
/// trailing spaces ignored), for spotting two documents of one batch that claim the same
/// child row. Accents are not folded (see the README's notes on collations).
pub(crate) fn fold(name: &str) -> String {
    name.trim_end_matches(' ').to_lowercase()
}

/// Child rows claimed by more than one document of a batch: true if any (table, folded
/// name) pair repeats.
pub(crate) fn claimed_twice<'a>(claims: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
    let mut seen: HashSet<(&str, String)> = HashSet::new();
    claims.into_iter().any(|(t, n)| !seen.insert((t, fold(n))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_reasons() {
        let o = ChildOwner {
            table: "tabSales Team".into(),
            name: "st1".into(),
            parenttype: Some("Customer".into()),
            parent: Some("C2".into()),
        };
        assert!(o.owned_by("Customer", "C2"));
        assert!(!o.owned_by("Customer", "C1") && !o.owned_by("Supplier", "C2"));
        let orphan = ChildOwner {
            parenttype: None,
            parent: None,
            ..o.clone()
        };
        assert!(!orphan.owned_by("Customer", "C2"));
        let r = reason(&[o.clone(), orphan]);
        assert!(
            r.starts_with(OWNED_ELSEWHERE)
                && r.contains("tabSales Team row \"st1\" belongs to Customer \"C2\"")
                && r.contains("(no parent)"),
            "{r}"
        );
        let many = vec![o; 12];
        assert!(reason(&many).ends_with("and 2 more"));
    }

    #[test]
    fn repeated_claims_are_found_across_case_and_padding() {
        assert!(!claimed_twice([("t", "a"), ("t", "b"), ("u", "a")]));
        assert!(claimed_twice([("t", "a"), ("t", "b"), ("t", "a")]));
        assert!(claimed_twice([("t", "Row-1"), ("t", "row-1  ")]));
    }
}

//! The set-wise writer of a plan (`Writer::SetWise`): the rows of every written document of a
//! batch together, with a few statements per table instead of ~25 round trips per document.
//! Removals first (deleted documents, then child rows that left their document: a child row
//! may move to another document of the batch), then the rows of documents the replica does not
//! have through `LOAD DATA LOCAL INFILE` (`infile.rs`; every row must be stored without a
//! warning, else [`ReplicaError::LoadMismatch`]) and prepared multi-row upserts of the
//! rest (`upserts.rs`). Singles and renames never come here (`bulk.rs` refuses them).

use std::collections::{BTreeMap, HashSet};

use mysql_async::Transaction;
use mysql_async::Value as MyValue;
use mysql_async::prelude::Queryable;

use super::Written;
use super::upserts::Upserts;
use crate::apply::plan::{Plan, Seen};
use crate::apply::replica::ReplicaError;
use crate::apply::replica::{CHUNK, SchemaCache, child_rows, marks, q};
use crate::envelope::Envelope;

async fn delete_in(
    tx: &mut Transaction<'_>,
    sql_head: &str,
    fixed: &[MyValue],
    names: &[String],
) -> Result<(), ReplicaError> {
    for chunk in names.chunks(CHUNK) {
        let sql = format!("{sql_head} ({})", marks(chunk.len()));
        let mut params = fixed.to_vec();
        params.extend(chunk.iter().map(|n| MyValue::from(n.as_str())));
        tx.exec_drop(sql, params).await?;
    }
    Ok(())
}

/// Writes the documents whose step writes ([`Step::written`](crate::apply::plan::Step::written)).
pub(super) async fn write(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    items: &[&Envelope],
    seen: &[Seen<'_>],
    plan: &Plan,
    load_data: &mut bool,
    written: &mut Written,
) -> Result<(), ReplicaError> {
    let mut upserts = Upserts::new(*load_data);
    let mut deleted_docs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut gone_children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((e, s), step) in items.iter().zip(seen).zip(&plan.steps) {
        let Some(image) = step.written(e) else {
            continue;
        };
        let Some(image) = image else {
            deleted_docs
                .entry(e.doctype.as_str())
                .or_default()
                .push(e.name.clone());
            continue;
        };
        // Nothing of this document is on the replica: its rows are all inserts.
        let fresh = s.copy.is_none() && s.child_rows.is_empty();
        let missing = &mut written.missing_columns;
        if let Some(p) = &image.parent {
            let table = format!("tab{}", e.doctype);
            upserts.add(tx, cache, &table, p, fresh, missing).await?;
        }
        let child_tables = cache.child_tables(tx, &e.doctype).await?;
        let mut keep: HashSet<(&str, &str)> = HashSet::new();
        for (table, r) in child_rows(&e.doctype, image, &child_tables)? {
            if let Some(n) = r.str("name") {
                keep.insert((table, n));
            }
            upserts.add(tx, cache, table, r, fresh, missing).await?;
        }
        for (t, n) in s.child_rows {
            if !keep.contains(&(t.as_str(), n.as_str())) {
                gone_children.entry(t.clone()).or_default().push(n.clone());
            }
        }
    }
    for (dt, names) in &deleted_docs {
        let table = format!("tab{dt}");
        let head = format!("DELETE FROM {} WHERE name IN", q(&table));
        delete_in(tx, &head, &[], names).await?;
        for t in cache.child_table_set(tx, dt).await? {
            let head = format!("DELETE FROM {} WHERE parenttype = ? AND parent IN", q(&t));
            delete_in(tx, &head, &[MyValue::from(*dt)], names).await?;
        }
    }
    for (t, names) in &gone_children {
        let head = format!("DELETE FROM {} WHERE name IN", q(t));
        delete_in(tx, &head, &[], names).await?;
    }
    written.loaded_rows += upserts.loads.iter().map(|g| g.rows).sum::<u64>();
    written.upserted_rows += upserts.groups.iter().map(|g| g.rows).sum::<u64>();
    upserts.write(tx, load_data).await
}

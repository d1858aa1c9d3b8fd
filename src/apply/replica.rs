//! Reading and writing whole documents on the replica, inside a caller's transaction.
//!
//! A document is read as the same image capture emits (`{"parent", "children"}`, values in the
//! envelope's JSON forms, via the same decoder as the snapshot). Writing makes the replica's
//! rows equal to an image: the parent is upserted, each child table is made equal to the
//! image's set of rows (rows not in it are deleted, the rest upserted by name), a Single's
//! `tabSingles` rows are changed field by field (only fields that differ), a delete removes the parent and its children. Only columns
//! the replica's table has are written; the others are reported so the caller can count them.
//! Which child table holds a `parentfield` comes from the replica's own `tabDocField` and
//! `tabCustom Field` rows (as in Frappe), cached per doctype.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Row, Transaction, Value as MyValue};
use serde_json::Value;

pub use super::schema::{COLUMNS_RECHECK, SchemaCache};
pub use super::sql::ReplicaError;
pub(crate) use super::sql::{CHUNK, marks, q};
use crate::image::{Col, Image, Row as ImageRow, intern};

use crate::cell::{CellKind, binary_from_json, cell_json};

/// Converts an envelope value into a SQL parameter.
pub fn to_param(v: &Value) -> MyValue {
    match v {
        Value::Null => MyValue::NULL,
        Value::Bool(b) => MyValue::Int(*b as i64),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                MyValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                MyValue::UInt(u)
            } else {
                MyValue::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => MyValue::Bytes(s.clone().into_bytes()),
        Value::Object(_) => match binary_from_json(v) {
            Some(b) => MyValue::Bytes(b),
            None => MyValue::Bytes(v.to_string().into_bytes()),
        },
        Value::Array(_) => MyValue::Bytes(v.to_string().into_bytes()),
    }
}

/// A write that skipped columns the replica lacks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// (table, column) pairs present in the image and missing on the replica.
    pub missing_columns: BTreeSet<(String, String)>,
    /// Conflict decisions taken (see `execute::Written::decisions`).
    pub decisions: Vec<(String, &'static str, &'static str)>,
}

pub(crate) async fn select_rows(
    tx: &mut Transaction<'_>,
    table: &str,
    sql: &str,
    params: Vec<MyValue>,
) -> Result<Vec<ImageRow>, ReplicaError> {
    let rows: Vec<Row> = tx.exec(sql, params).await?;
    let mut out = Vec::with_capacity(rows.len());
    // The result's columns, named once (one table's: distinct names).
    let mut names: Vec<Col> = Vec::new();
    let mut kinds: Vec<CellKind> = Vec::new();
    for row in rows {
        let cols = row.columns();
        if names.is_empty() {
            names = cols.iter().map(|c| intern(&c.name_str())).collect();
            kinds = cols.iter().map(CellKind::from_result_column).collect();
        }
        let vals = row.unwrap();
        let mut pairs = Vec::with_capacity(vals.len());
        for ((c, kind), v) in names.iter().zip(&kinds).zip(vals) {
            let j = cell_json(kind, v, false).map_err(|_| ReplicaError::Decode {
                table: table.to_string(),
                column: c.to_string(),
            })?;
            pairs.push((Arc::clone(c), j));
        }
        out.push(ImageRow::from_distinct(pairs));
    }
    Ok(out)
}

/// Reads the replica's copy of a document (locking its rows), or `None` when absent.
pub async fn read_doc(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    doctype: &str,
    name: &str,
) -> Result<Option<Image>, ReplicaError> {
    read_doc_with(tx, cache, doctype, name, " FOR UPDATE").await
}

/// Reads a document without locking (verify reads the primary this way).
pub async fn read_doc_plain(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    doctype: &str,
    name: &str,
) -> Result<Option<Image>, ReplicaError> {
    read_doc_with(tx, cache, doctype, name, "").await
}

async fn read_doc_with(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    doctype: &str,
    name: &str,
    lock: &str,
) -> Result<Option<Image>, ReplicaError> {
    let parent: Option<ImageRow> = if cache.is_single(tx, doctype).await? {
        let fields: Vec<(String, Option<String>)> = tx
            .exec(
                format!(
                    "SELECT field, value FROM `tabSingles` WHERE doctype = ? ORDER BY field{lock}"
                ),
                (doctype,),
            )
            .await?;
        if fields.is_empty() {
            None
        } else {
            Some(
                fields
                    .into_iter()
                    .map(|(f, v)| (f, v.map(Value::String).unwrap_or(Value::Null)))
                    .collect(),
            )
        }
    } else {
        read_parents(tx, cache, doctype, &[name], lock)
            .await?
            // I12 (ARCHITECTURE.md). The replica matched `name` with its collation: the row it found is this
            // document's copy even when its stored name differs in case, trailing spaces or
            // accents (the decision then sees the different name).
            .into_values()
            .next()
    };
    let mut found = read_children(tx, cache, doctype, &[name], lock)
        .await?
        .children
        .into_values();
    let mut children = found.next().unwrap_or_default();
    // Child rows whose `parent` values differ only by collation: one document to the replica.
    let mut merged = false;
    for more in found {
        merged = true;
        for (field, rows) in more {
            children.entry(field).or_default().extend(rows);
        }
    }
    if merged {
        let key = |r: &ImageRow| {
            (
                r.get("idx").and_then(Value::as_i64).unwrap_or(0),
                r.str("name").unwrap_or("").to_string(),
            )
        };
        for rows in children.values_mut() {
            rows.sort_by_key(key);
        }
    }
    Ok(doc_image(parent, children))
}

/// A document image from its parent row and children by parentfield; None when both are absent.
pub(crate) fn doc_image(
    parent: Option<ImageRow>,
    children: BTreeMap<String, Vec<ImageRow>>,
) -> Option<Image> {
    if parent.is_none() && children.is_empty() {
        return None;
    }
    Some(Image { parent, children })
}

/// Parent rows of `names` from `tab<doctype>`, by name (`lock`: "" or " FOR UPDATE").
pub(crate) async fn read_parents(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    doctype: &str,
    names: &[&str],
    lock: &str,
) -> Result<HashMap<String, ImageRow>, ReplicaError> {
    let table = format!("tab{doctype}");
    cache.columns(tx, &table).await?;
    let hint = cache.index_hint(tx, &table, "name").await?;
    let mut parents = HashMap::new();
    for chunk in names.chunks(CHUNK) {
        let sql = format!(
            "SELECT * FROM {}{hint} WHERE name IN ({}){lock}",
            q(&table),
            marks(chunk.len())
        );
        let params: Vec<MyValue> = chunk.iter().map(|n| MyValue::from(*n)).collect();
        for r in select_rows(tx, &table, &sql, params).await? {
            if let Some(n) = r.str("name") {
                parents.insert(n.to_string(), r);
            }
        }
    }
    Ok(parents)
}

/// Child rows of documents, from every child table of their doctype.
pub(crate) struct Children {
    /// parent name → parentfield → rows ordered by idx, name.
    pub children: HashMap<String, BTreeMap<String, Vec<ImageRow>>>,
    /// parent name → (child table, row name) of every row read.
    pub names: HashMap<String, Vec<(String, String)>>,
}

/// Reads the child rows of `names` (`lock`: "" or " FOR UPDATE").
pub(crate) async fn read_children(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    doctype: &str,
    names: &[&str],
    lock: &str,
) -> Result<Children, ReplicaError> {
    let mut out = Children {
        children: HashMap::new(),
        names: HashMap::new(),
    };
    for t in &cache.child_table_set(tx, doctype).await? {
        let hint = cache.index_hint(tx, t, "parent").await?;
        for chunk in names.chunks(CHUNK) {
            let sql = format!(
                "SELECT * FROM {}{hint} WHERE parenttype = ? AND parent IN ({}) ORDER BY parent, parentfield, idx, name{lock}",
                q(t),
                marks(chunk.len())
            );
            let mut params: Vec<MyValue> = vec![doctype.into()];
            params.extend(chunk.iter().map(|n| MyValue::from(*n)));
            for r in select_rows(tx, t, &sql, params).await? {
                let text = |k: &str| r.str(k).unwrap_or("").to_string();
                let (parent, field) = (text("parent"), text("parentfield"));
                if let Some(n) = r.str("name") {
                    out.names
                        .entry(parent.clone())
                        .or_default()
                        .push((t.clone(), n.to_string()));
                }
                out.children
                    .entry(parent)
                    .or_default()
                    .entry(field)
                    .or_default()
                    .push(r);
            }
        }
    }
    Ok(out)
}

async fn upsert(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    table: &str,
    row: &ImageRow,
    report: &mut WriteReport,
) -> Result<(), ReplicaError> {
    let cols = cache.columns_for(tx, table, row.keys()).await?;
    let mut names = Vec::new();
    let mut params = Vec::new();
    for (k, v) in row {
        if cols.contains(k) {
            names.push(q(k));
            params.push(to_param(v));
        } else {
            report
                .missing_columns
                .insert((table.to_string(), k.to_string()));
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let updates: Vec<String> = names.iter().map(|n| format!("{n} = VALUES({n})")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({}) ON DUPLICATE KEY UPDATE {}",
        q(table),
        names.join(", "),
        marks(names.len()),
        updates.join(", ")
    );
    tx.exec_drop(sql, params).await?;
    Ok(())
}

/// Child rows of a document whose names are bound as parameters; more go as literals
/// (the binary protocol allows 65,535 parameters a statement, and a document may keep more
/// child rows than that in one table).
const KEEP_AS_PARAMS: usize = 1_000;

async fn delete_children(
    tx: &mut Transaction<'_>,
    table: &str,
    doctype: &str,
    parent: &str,
    keep: &[String],
) -> Result<(), ReplicaError> {
    let mut params: Vec<MyValue> = vec![parent.into(), doctype.into()];
    let mut sql = format!(
        "DELETE FROM {} WHERE parent = ? AND parenttype = ?",
        q(table)
    );
    if keep.len() > KEEP_AS_PARAMS {
        sql.push_str(" AND name NOT IN (");
        for (i, k) in keep.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            super::literal::push_str(&mut sql, k);
        }
        sql.push(')');
    } else if !keep.is_empty() {
        sql.push_str(&format!(" AND name NOT IN ({})", marks(keep.len())));
        params.extend(keep.iter().map(|k| MyValue::from(k.as_str())));
    }
    tx.exec_drop(sql, params).await?;
    Ok(())
}

/// A child row of an image and the table it belongs in.
pub(crate) type ChildRow<'a> = (&'a str, &'a ImageRow);

/// The child rows of an image with their tables (parentfield → table from the replica's
/// schema); an unknown parentfield is an error.
pub(crate) fn child_rows<'a>(
    doctype: &str,
    image: &'a Image,
    child_tables: &'a BTreeMap<String, String>,
) -> Result<Vec<ChildRow<'a>>, ReplicaError> {
    let mut out = Vec::new();
    for (field, rows) in &image.children {
        let table = child_tables
            .get(field)
            .ok_or_else(|| ReplicaError::UnknownTableField {
                doctype: doctype.to_string(),
                field: field.clone(),
            })?;
        out.extend(rows.iter().map(|r| (table.as_str(), r)));
    }
    Ok(out)
}

/// The text a Single's value is stored as in `tabSingles.value` (every value is a string
/// there; NULL stays NULL).
fn single_text(v: &Value) -> Option<Vec<u8>> {
    match to_param(v) {
        MyValue::NULL => None,
        MyValue::Bytes(b) => Some(b),
        MyValue::Int(i) => Some(i.to_string().into_bytes()),
        MyValue::UInt(u) => Some(u.to_string().into_bytes()),
        MyValue::Double(d) => Some(d.to_string().into_bytes()),
        other => Some(other.as_sql(true).into_bytes()),
    }
}

/// What to change in `tabSingles` to turn `stored` (field, value rows) into `fields`: fields
/// to update, to insert and to delete. A field stored more than once (the table has no key)
/// is deleted and inserted once.
pub(crate) fn single_changes(
    stored: &[(Vec<u8>, Option<Vec<u8>>)],
    fields: &[(&str, Option<Vec<u8>>)],
) -> SingleChanges {
    let mut by_field: HashMap<&[u8], Vec<&Option<Vec<u8>>>> = HashMap::new();
    for (f, v) in stored {
        by_field.entry(f.as_slice()).or_default().push(v);
    }
    let mut out = SingleChanges::default();
    for (f, v) in fields {
        match by_field.remove(f.as_bytes()).as_deref() {
            Some([old]) if *old == v => {}
            Some([_]) => out.update.push((f.to_string(), v.clone())),
            Some(_) => {
                out.delete.push(f.as_bytes().to_vec());
                out.insert.push((f.to_string(), v.clone()));
            }
            None => out.insert.push((f.to_string(), v.clone())),
        }
    }
    let mut gone: Vec<Vec<u8>> = by_field.into_keys().map(<[u8]>::to_vec).collect();
    gone.sort();
    out.delete.extend(gone);
    out
}

/// Field-wise changes of a Single (see [`single_changes`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SingleChanges {
    pub update: Vec<(String, Option<Vec<u8>>)>,
    pub insert: Vec<(String, Option<Vec<u8>>)>,
    pub delete: Vec<Vec<u8>>,
}

/// Makes `tabSingles` hold exactly the fields of `parent` for `doctype`, touching only the
/// fields that differ, so the replica's binlog shows one row event per changed field (as the
/// primary's does for `set_single_value`), not a delete and re-insert of every field.
async fn write_single(
    tx: &mut Transaction<'_>,
    doctype: &str,
    parent: &ImageRow,
) -> Result<(), ReplicaError> {
    type Bytes = Option<Vec<u8>>;
    let stored: Vec<(Bytes, Bytes)> = tx
        .exec(
            "SELECT field, value FROM `tabSingles` WHERE doctype = ? FOR UPDATE",
            (doctype,),
        )
        .await?;
    let stored: Vec<(Vec<u8>, Option<Vec<u8>>)> = stored
        .into_iter()
        .map(|(f, v)| (f.unwrap_or_default(), v))
        .collect();
    let fields: Vec<(&str, Option<Vec<u8>>)> =
        parent.iter().map(|(f, v)| (f, single_text(v))).collect();
    let c = single_changes(&stored, &fields);
    for f in &c.delete {
        tx.exec_drop(
            "DELETE FROM `tabSingles` WHERE doctype = ? AND field = ?",
            (doctype, f.as_slice()),
        )
        .await?;
    }
    for (f, v) in &c.update {
        tx.exec_drop(
            "UPDATE `tabSingles` SET value = ? WHERE doctype = ? AND field = ?",
            (v.as_deref(), doctype, f),
        )
        .await?;
    }
    for (f, v) in &c.insert {
        tx.exec_drop(
            "INSERT INTO `tabSingles` (doctype, field, value) VALUES (?, ?, ?)",
            (doctype, f, v.as_deref()),
        )
        .await?;
    }
    Ok(())
}

/// Makes the replica's rows of document `(doctype, name)` equal to `image` (`None` deletes it).
/// For a rename, `old_name` is removed and its children move to `name`.
pub async fn write_doc(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    doctype: &str,
    name: &str,
    old_name: Option<&str>,
    image: Option<&Image>,
) -> Result<WriteReport, ReplicaError> {
    let mut report = WriteReport::default();
    let single = cache.is_single(tx, doctype).await?;
    let child_tables = cache.child_tables(tx, doctype).await?;
    let parent_table = format!("tab{doctype}");
    if let Some(old) = old_name
        && !single
    {
        tx.exec_drop(
            format!("DELETE FROM {} WHERE name = ?", q(&parent_table)),
            (old,),
        )
        .await?;
    }
    let Some(image) = image else {
        if single {
            tx.exec_drop("DELETE FROM `tabSingles` WHERE doctype = ?", (doctype,))
                .await?;
        } else {
            tx.exec_drop(
                format!("DELETE FROM {} WHERE name = ?", q(&parent_table)),
                (name,),
            )
            .await?;
        }
        for t in child_tables.values().collect::<BTreeSet<_>>() {
            delete_children(tx, t, doctype, name, &[]).await?;
        }
        return Ok(report);
    };
    match &image.parent {
        Some(p) if single => write_single(tx, doctype, p).await?,
        Some(p) => {
            if p.str("name") != Some(name) {
                return Err(ReplicaError::NotOwnRow {
                    table: parent_table,
                });
            }
            upsert(tx, cache, &parent_table, p, &mut report).await?
        }
        None => {}
    }
    let mut keep: BTreeMap<&str, Vec<String>> = child_tables
        .values()
        .map(|t| (t.as_str(), Vec::new()))
        .collect();
    let rows_by_table = child_rows(doctype, image, &child_tables)?;
    for (table, r) in &rows_by_table {
        if let Some(n) = r.str("name") {
            keep.entry(table).or_default().push(n.to_string());
        }
    }
    for (table, names) in &keep {
        delete_children(tx, table, doctype, name, names).await?;
        if let Some(old) = old_name {
            delete_children(tx, table, doctype, old, names).await?;
        }
    }
    for (table, row) in rows_by_table {
        upsert(tx, cache, table, row, &mut report).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_from_envelope_values() {
        assert_eq!(to_param(&json!(null)), MyValue::NULL);
        assert_eq!(to_param(&json!(-5)), MyValue::Int(-5));
        assert_eq!(
            to_param(&json!(18446744073709551615u64)),
            MyValue::UInt(u64::MAX)
        );
        assert_eq!(to_param(&json!(1.5)), MyValue::Double(1.5));
        assert_eq!(
            to_param(&json!("12.500000000")),
            MyValue::Bytes(b"12.500000000".to_vec())
        );
        assert_eq!(
            to_param(&json!({"$base64": "3q2+7w=="})),
            MyValue::Bytes(vec![0xde, 0xad, 0xbe, 0xef])
        );
        assert_eq!(q("a`b"), "`a``b`");
    }

    #[test]
    fn singles_change_field_by_field() {
        let b = |s: &str| Some(s.as_bytes().to_vec());
        let stored = vec![
            (b"a".to_vec(), b("1")),
            (b"b".to_vec(), b("2")),
            (b"gone".to_vec(), b("x")),
            (b"twice".to_vec(), b("t")),
            (b"twice".to_vec(), b("t")),
            (b"nul".to_vec(), None),
        ];
        let fields = vec![
            ("a", b("1")),
            ("b", b("3")),
            ("new", None),
            ("twice", b("t")),
            ("nul", None),
        ];
        let c = single_changes(&stored, &fields);
        assert_eq!(c.update, vec![("b".to_string(), b("3"))]);
        assert_eq!(
            c.insert,
            vec![("new".to_string(), None), ("twice".to_string(), b("t"))]
        );
        assert_eq!(c.delete, vec![b"twice".to_vec(), b"gone".to_vec()]);
        assert_eq!(
            single_changes(&stored[..2], &fields[..1]).delete,
            vec![b"b".to_vec()]
        );
        assert_eq!(single_text(&json!(5)), b("5"));
        assert_eq!(single_text(&json!(null)), None);
        assert_eq!(single_text(&json!("x")), b("x"));
    }
}

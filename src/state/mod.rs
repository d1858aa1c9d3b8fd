//! Durable state of capture: the current rows of every tracked table, an index of child rows
//! by `(parenttype, parent)`, the `tabSingles` values, and the checkpoint.
//!
//! Consistency: all writes happen inside one open [`Batch`] (a redb write transaction). The
//! capture loop commits a batch only after Kafka acknowledged every envelope produced from the
//! rows in it, and the checkpoint (GTID position) is written into the same batch. So after a
//! crash the store holds exactly the rows as of the checkpoint position, and replaying the binlog
//! from that position rebuilds the same images (duplicates, never gaps).

mod keys;
mod pending;

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

pub use keys::{decode as decode_key, encode as encode_key};
pub use pending::{PendingDoc, PendingDocs};

use crate::position::GtidPosition;

const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows");
const CHILDREN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("children");
const SINGLES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("singles");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const CHECKPOINT_KEY: &str = "checkpoint";

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store error: {0}")]
    Db(Box<redb::Error>),
    #[error(
        "state store {path} cannot be opened: {source}. Is another capture running with the same --state-dir?"
    )]
    Open {
        path: String,
        source: Box<redb::Error>,
    },
    #[error("corrupt state store entry: {0}")]
    Corrupt(String),
}

fn db_err<E: Into<redb::Error>>(e: E) -> StateError {
    StateError::Db(Box::new(e.into()))
}

/// Where capture stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    /// Every group up to this position is in the store and acknowledged by Kafka.
    pub position: GtidPosition,
    /// The binlog file and offset of that position (diagnostics only).
    pub file: String,
    pub pos: u64,
    /// Snapshot state.
    pub snapshot: SnapshotState,
    /// Source server and schema the state belongs to.
    pub source_server_id: u32,
    pub schema: String,
    /// Seconds since the Unix epoch when written.
    pub written_at: u64,
}

/// Progress of the initial snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SnapshotState {
    /// Rows are loaded (durably, as of `at`); envelopes were emitted for `emitted` of `total`
    /// documents, the last one being `cursor`. Emission resumes after `cursor`.
    InProgress {
        at: GtidPosition,
        emitted: u64,
        total: u64,
        doctypes: Vec<String>,
        singles: Vec<String>,
        cursor: Option<DocKey>,
    },
    Done {
        at: GtidPosition,
    },
}

/// Identity of a Frappe document; also the Kafka key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DocKey {
    pub doctype: String,
    pub name: String,
}

/// How a doctype's image is assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocShape {
    /// `tab<Doctype>` row by name.
    Table,
    /// `tabSingles` rows of the doctype.
    Single,
}

/// The durable store.
pub struct Store {
    db: Database,
}

/// An open write transaction over the store.
pub struct Batch {
    wtx: WriteTransaction,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StateError::Corrupt(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("state.redb");
        let db = Database::builder()
            .set_cache_size(64 << 20)
            .create(&path)
            .map_err(|e| StateError::Open {
                path: path.display().to_string(),
                source: Box::new(e.into()),
            })?;
        Ok(Store { db })
    }

    /// Reads the checkpoint of an existing store without creating anything; `None` when the
    /// directory holds no store yet.
    pub fn peek_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, StateError> {
        let path = dir.join("state.redb");
        if !path.exists() {
            return Ok(None);
        }
        let db = Database::open(&path).map_err(|e| StateError::Open {
            path: path.display().to_string(),
            source: Box::new(e.into()),
        })?;
        Store { db }.checkpoint()
    }

    /// Starts a write batch.
    pub fn batch(&self) -> Result<Batch, StateError> {
        let wtx = self.db.begin_write().map_err(db_err)?;
        Ok(Batch { wtx })
    }

    /// Reads the checkpoint, if any.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, StateError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let t = match rtx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        match t.get(CHECKPOINT_KEY).map_err(db_err)? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| StateError::Corrupt(format!("checkpoint: {e}"))),
            None => Ok(None),
        }
    }

    /// Size of the store file in bytes.
    pub fn file_size(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("state.redb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

/// Where a child row hangs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildLink {
    pub parenttype: String,
    pub parent: String,
    pub parentfield: String,
    pub idx: i64,
}

impl Batch {
    /// Stores a row (replacing any previous version) and its child link.
    pub fn put_row(
        &mut self,
        table: &str,
        name: &str,
        row_json: &[u8],
        link: Option<&ChildLink>,
    ) -> Result<(), StateError> {
        let mut rows = self.wtx.open_table(ROWS).map_err(db_err)?;
        rows.insert(keys::encode(&[table, name]).as_slice(), row_json)
            .map_err(db_err)?;
        if let Some(l) = link {
            let mut ch = self.wtx.open_table(CHILDREN).map_err(db_err)?;
            let v = serde_json::to_vec(&(&l.parentfield, l.idx))
                .map_err(|e| StateError::Corrupt(e.to_string()))?;
            ch.insert(
                keys::encode(&[&l.parenttype, &l.parent, table, name]).as_slice(),
                v.as_slice(),
            )
            .map_err(db_err)?;
        }
        Ok(())
    }

    /// Removes a row and its child link.
    pub fn delete_row(
        &mut self,
        table: &str,
        name: &str,
        link: Option<&ChildLink>,
    ) -> Result<(), StateError> {
        let mut rows = self.wtx.open_table(ROWS).map_err(db_err)?;
        rows.remove(keys::encode(&[table, name]).as_slice())
            .map_err(db_err)?;
        if let Some(l) = link {
            let mut ch = self.wtx.open_table(CHILDREN).map_err(db_err)?;
            ch.remove(keys::encode(&[&l.parenttype, &l.parent, table, name]).as_slice())
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Stores one `tabSingles` value (JSON).
    pub fn put_single(
        &mut self,
        doctype: &str,
        field: &str,
        value_json: &[u8],
    ) -> Result<(), StateError> {
        let mut t = self.wtx.open_table(SINGLES).map_err(db_err)?;
        t.insert(keys::encode(&[doctype, field]).as_slice(), value_json)
            .map_err(db_err)?;
        Ok(())
    }

    /// Removes one `tabSingles` value.
    pub fn delete_single(&mut self, doctype: &str, field: &str) -> Result<(), StateError> {
        let mut t = self.wtx.open_table(SINGLES).map_err(db_err)?;
        t.remove(keys::encode(&[doctype, field]).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Reads one row's JSON.
    pub fn get_row(&self, table: &str, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        let rows = self.wtx.open_table(ROWS).map_err(db_err)?;
        Ok(rows
            .get(keys::encode(&[table, name]).as_slice())
            .map_err(db_err)?
            .map(|v| v.value().to_vec()))
    }

    /// Calls `f(name, row_json)` for every row of `table`, in name order.
    pub fn for_each_row(
        &self,
        table: &str,
        mut f: impl FnMut(&str, &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let rows = self.wtx.open_table(ROWS).map_err(db_err)?;
        let prefix = keys::encode(&[table]);
        for item in rows.range(prefix.as_slice()..).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            let parts = keys::decode(k).ok_or_else(|| StateError::Corrupt("row key".into()))?;
            let name = parts
                .get(1)
                .ok_or_else(|| StateError::Corrupt("row key".into()))?;
            f(name, v.value())?;
        }
        Ok(())
    }

    /// Up to `limit` row names of `table` after `after`, in order.
    pub fn names_after(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        let rows = self.wtx.open_table(ROWS).map_err(db_err)?;
        let prefix = keys::encode(&[table]);
        let start = match after {
            Some(a) => {
                let mut k = keys::encode(&[table, a]);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in rows.range(start.as_slice()..).map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let parts = keys::decode(k).ok_or_else(|| StateError::Corrupt("row key".into()))?;
            out.push(
                parts
                    .get(1)
                    .cloned()
                    .ok_or_else(|| StateError::Corrupt("row key".into()))?,
            );
        }
        Ok(out)
    }

    /// Names of the doctypes that have `tabSingles` values.
    pub fn single_doctypes(&self) -> Result<Vec<String>, StateError> {
        let t = self.wtx.open_table(SINGLES).map_err(db_err)?;
        let mut out: Vec<String> = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            if let Some(parts) = keys::decode(k.value())
                && let Some(dt) = parts.into_iter().next()
                && out.last() != Some(&dt)
            {
                out.push(dt);
            }
        }
        Ok(out)
    }

    /// Assembles the full image of a document as JSON:
    /// `{"parent": {...}|null, "children": {"<parentfield>": [rows by idx]}}`, or `None` when
    /// neither the parent row nor any child row exists.
    pub fn assemble(&self, key: &DocKey, shape: DocShape) -> Result<Option<String>, StateError> {
        let parent: Option<Vec<u8>> = match shape {
            DocShape::Table => self.get_row(&format!("tab{}", key.doctype), &key.name)?,
            DocShape::Single => self.single_object(&key.doctype)?,
        };
        let children = self.children_of(&key.doctype, &key.name)?;
        if parent.is_none() && children.is_empty() {
            return Ok(None);
        }
        let mut out = String::with_capacity(256);
        out.push_str("{\"parent\":");
        match &parent {
            Some(p) => out
                .push_str(std::str::from_utf8(p).map_err(|e| StateError::Corrupt(e.to_string()))?),
            None => out.push_str("null"),
        }
        out.push_str(",\"children\":{");
        for (i, (field, rows)) in children.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(
                &serde_json::to_string(field).map_err(|e| StateError::Corrupt(e.to_string()))?,
            );
            out.push_str(":[");
            for (j, (_, _, row)) in rows.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(
                    std::str::from_utf8(row).map_err(|e| StateError::Corrupt(e.to_string()))?,
                );
            }
            out.push(']');
        }
        out.push_str("}}");
        Ok(Some(out))
    }

    fn single_object(&self, doctype: &str) -> Result<Option<Vec<u8>>, StateError> {
        let t = self.wtx.open_table(SINGLES).map_err(db_err)?;
        let prefix = keys::encode(&[doctype]);
        let mut out = Vec::from(&b"{"[..]);
        let mut n = 0;
        for item in t.range(prefix.as_slice()..).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let parts =
                keys::decode(k.value()).ok_or_else(|| StateError::Corrupt("singles key".into()))?;
            let field = parts
                .get(1)
                .ok_or_else(|| StateError::Corrupt("singles key".into()))?;
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(
                serde_json::to_string(field)
                    .map_err(|e| StateError::Corrupt(e.to_string()))?
                    .as_bytes(),
            );
            out.push(b':');
            out.extend_from_slice(v.value());
            n += 1;
        }
        out.push(b'}');
        Ok(if n == 0 { None } else { Some(out) })
    }

    /// Child rows of `(parenttype, parent)`, grouped by parentfield and ordered by idx, name.
    #[allow(clippy::type_complexity)]
    fn children_of(
        &self,
        parenttype: &str,
        parent: &str,
    ) -> Result<Vec<(String, Vec<(i64, String, Vec<u8>)>)>, StateError> {
        let ch = self.wtx.open_table(CHILDREN).map_err(db_err)?;
        let rows = self.wtx.open_table(ROWS).map_err(db_err)?;
        let prefix = keys::encode(&[parenttype, parent]);
        let mut groups: std::collections::BTreeMap<String, Vec<(i64, String, Vec<u8>)>> =
            Default::default();
        for item in ch.range(prefix.as_slice()..).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            let parts = keys::decode(k).ok_or_else(|| StateError::Corrupt("child key".into()))?;
            let (table, name) = match (parts.get(2), parts.get(3)) {
                (Some(t), Some(n)) => (t, n),
                _ => return Err(StateError::Corrupt("child key".into())),
            };
            let (field, idx): (String, i64) = serde_json::from_slice(v.value())
                .map_err(|e| StateError::Corrupt(e.to_string()))?;
            let row = rows
                .get(keys::encode(&[table, name]).as_slice())
                .map_err(db_err)?
                .map(|r| r.value().to_vec())
                .ok_or_else(|| StateError::Corrupt(format!("child link without row in {table}")))?;
            groups
                .entry(field)
                .or_default()
                .push((idx, name.clone(), row));
        }
        Ok(groups
            .into_iter()
            .map(|(f, mut rows)| {
                rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
                (f, rows)
            })
            .collect())
    }

    /// Number of stored rows (all tables).
    pub fn row_count(&self) -> Result<u64, StateError> {
        let rows = self.wtx.open_table(ROWS).map_err(db_err)?;
        rows.len().map_err(db_err)
    }

    /// The redb transaction, for the pending-document scratch tables.
    pub(crate) fn wtx(&self) -> &WriteTransaction {
        &self.wtx
    }

    /// Writes the checkpoint and commits everything in this batch durably.
    pub fn commit(self, cp: &Checkpoint) -> Result<(), StateError> {
        {
            let mut meta = self.wtx.open_table(META).map_err(db_err)?;
            let v = serde_json::to_vec(cp).map_err(|e| StateError::Corrupt(e.to_string()))?;
            meta.insert(CHECKPOINT_KEY, v.as_slice()).map_err(db_err)?;
        }
        self.wtx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Drops every change of this batch.
    pub fn abort(self) -> Result<(), StateError> {
        self.wtx.abort().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(pt: &str, p: &str, f: &str, idx: i64) -> ChildLink {
        ChildLink {
            parenttype: pt.into(),
            parent: p.into(),
            parentfield: f.into(),
            idx,
        }
    }

    #[test]
    fn assemble_orders_children_and_survives_commit() {
        let dir = tempdir();
        let store = Store::open(&dir).unwrap();
        let mut b = store.batch().unwrap();
        b.put_row("tabSales Invoice", "S1", br#"{"name":"S1"}"#, None)
            .unwrap();
        b.put_row(
            "tabSales Invoice Item",
            "b",
            br#"{"name":"b","idx":2}"#,
            Some(&link("Sales Invoice", "S1", "items", 2)),
        )
        .unwrap();
        b.put_row(
            "tabSales Invoice Item",
            "a",
            br#"{"name":"a","idx":1}"#,
            Some(&link("Sales Invoice", "S1", "items", 1)),
        )
        .unwrap();
        b.put_row(
            "tabSales Team",
            "t",
            br#"{"name":"t"}"#,
            Some(&link("Sales Invoice", "S1", "sales_team", 1)),
        )
        .unwrap();
        b.put_row(
            "tabSales Team",
            "u",
            br#"{"name":"u"}"#,
            Some(&link("Customer", "S1", "sales_team", 1)),
        )
        .unwrap();
        let key = DocKey {
            doctype: "Sales Invoice".into(),
            name: "S1".into(),
        };
        let img = b.assemble(&key, DocShape::Table).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&img).unwrap();
        assert_eq!(v["parent"]["name"], "S1");
        assert_eq!(v["children"]["items"][0]["name"], "a");
        assert_eq!(v["children"]["items"][1]["name"], "b");
        assert_eq!(v["children"]["sales_team"].as_array().unwrap().len(), 1);
        let cp = Checkpoint {
            position: "0-1-5".parse().unwrap(),
            file: "f".into(),
            pos: 4,
            snapshot: SnapshotState::Done {
                at: "0-1-1".parse().unwrap(),
            },
            source_server_id: 1,
            schema: "db".into(),
            written_at: 0,
        };
        b.commit(&cp).unwrap();
        assert_eq!(store.checkpoint().unwrap().unwrap(), cp);
        let mut b = store.batch().unwrap();
        b.delete_row("tabSales Invoice", "S1", None).unwrap();
        b.delete_row(
            "tabSales Invoice Item",
            "a",
            Some(&link("Sales Invoice", "S1", "items", 1)),
        )
        .unwrap();
        b.delete_row(
            "tabSales Invoice Item",
            "b",
            Some(&link("Sales Invoice", "S1", "items", 2)),
        )
        .unwrap();
        b.delete_row(
            "tabSales Team",
            "t",
            Some(&link("Sales Invoice", "S1", "sales_team", 1)),
        )
        .unwrap();
        assert!(b.assemble(&key, DocShape::Table).unwrap().is_none());
        b.abort().unwrap();
        let b = store.batch().unwrap();
        assert!(
            b.assemble(&key, DocShape::Table).unwrap().is_some(),
            "abort must drop changes"
        );
    }

    #[test]
    fn singles_image() {
        let dir = tempdir();
        let store = Store::open(&dir).unwrap();
        let mut b = store.batch().unwrap();
        b.put_single("System Settings", "country", b"\"India\"")
            .unwrap();
        b.put_single("System Settings", "enabled", b"\"1\"")
            .unwrap();
        b.put_single("System Settingsx", "x", b"null").unwrap();
        let key = DocKey {
            doctype: "System Settings".into(),
            name: "System Settings".into(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&b.assemble(&key, DocShape::Single).unwrap().unwrap()).unwrap();
        assert_eq!(
            v["parent"],
            serde_json::json!({"country": "India", "enabled": "1"})
        );
        assert_eq!(
            b.single_doctypes().unwrap(),
            vec!["System Settings", "System Settingsx"]
        );
    }

    pub(crate) fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "frappe-cdc-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

//! Durable state of capture: the current rows of every tracked document, stored per document
//! (parent row and child rows together, one value; see [`DocImage`]), the `tabSingles` values,
//! the `tabDocType` rows the catalog is built from, and the checkpoint.
//!
//! Consistency: all writes happen inside one open [`Batch`] (a redb write transaction). The
//! capture loop commits a batch only after Kafka acknowledged every envelope produced from the
//! rows in it, and the checkpoint (GTID position) is written into the same batch. So after a
//! crash the store holds exactly the rows as of the checkpoint position, and replaying the binlog
//! from that position rebuilds the same images (duplicates, never gaps).

mod cache;
mod doc;
mod keys;
mod pending;

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

pub use cache::DocCache;
pub use doc::{ChildRow, DocImage};
pub use keys::{decode as decode_key, encode as encode_key};
pub use pending::{PendingDoc, PendingDocs};

use crate::position::GtidPosition;

/// Catalog rows (`tabDocType`), by (table, name).
const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows");
/// Document images ([`DocImage`]), by (doctype, name).
const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const SINGLES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("singles");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const CHECKPOINT_KEY: &str = "checkpoint";
const FORMAT_KEY: &str = "format";
/// Layout of the store; 2 keeps whole documents (1 kept rows and a child index).
const FORMAT: &[u8] = b"2";

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
    #[error(
        "the state store was written by an older frappe-cdc (layout {found}, this build uses 2). \
         Stop capture, move the --state-dir away and start again: capture takes a new initial \
         snapshot (consumers receive every document again as `snapshot`)"
    )]
    OldFormat { found: String },
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
    /// Commit time (Unix seconds) of the last transaction read at or before `position`; 0 when
    /// unknown (right after a snapshot, or a store written before this field existed).
    #[serde(default)]
    pub commit_ts: u64,
    /// The doctype filter the state was built with (`Filter::describe`); None in stores
    /// written before it was recorded. Capture refuses to run with another filter.
    #[serde(default)]
    pub filter: Option<String>,
    /// The envelope version capture emitted; None in older stores.
    #[serde(default)]
    pub envelope_version: Option<u32>,
    /// Identity of this state, new with every initial snapshot; carried by the progress
    /// markers capture writes (`progress.rs`). None in older stores (capture then gives it one
    /// before it sends anything).
    #[serde(default)]
    pub epoch: Option<String>,
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
        let format = t
            .get(FORMAT_KEY)
            .map_err(db_err)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        match t.get(CHECKPOINT_KEY).map_err(db_err)? {
            Some(_) if format.as_deref().map(str::as_bytes) != Some(FORMAT) => {
                Err(StateError::OldFormat {
                    found: format.unwrap_or_else(|| "1".into()),
                })
            }
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
    /// Stores a catalog row (`tabDocType`), replacing any previous version.
    pub fn put_row(&mut self, table: &str, name: &str, row_json: &[u8]) -> Result<(), StateError> {
        let mut rows = self.wtx.open_table(ROWS).map_err(db_err)?;
        rows.insert(keys::encode(&[table, name]).as_slice(), row_json)
            .map_err(db_err)?;
        Ok(())
    }

    /// Removes a catalog row.
    pub fn delete_row(&mut self, table: &str, name: &str) -> Result<(), StateError> {
        let mut rows = self.wtx.open_table(ROWS).map_err(db_err)?;
        rows.remove(keys::encode(&[table, name]).as_slice())
            .map_err(db_err)?;
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

    /// Reads a document's rows; an absent document is empty.
    pub fn get_doc(&self, key: &DocKey) -> Result<DocImage, StateError> {
        let docs = self.wtx.open_table(DOCS).map_err(db_err)?;
        match docs
            .get(keys::encode(&[&key.doctype, &key.name]).as_slice())
            .map_err(db_err)?
        {
            Some(v) => DocImage::decode(v.value()),
            None => Ok(DocImage::default()),
        }
    }

    /// Writes documents back (removing the empty ones), in the order given.
    pub fn put_docs<'a>(
        &mut self,
        docs_in: impl IntoIterator<Item = (&'a DocKey, &'a DocImage)>,
    ) -> Result<(), StateError> {
        let mut docs = self.wtx.open_table(DOCS).map_err(db_err)?;
        for (key, img) in docs_in {
            let k = keys::encode(&[&key.doctype, &key.name]);
            if img.is_empty() {
                docs.remove(k.as_slice()).map_err(db_err)?;
            } else {
                docs.insert(k.as_slice(), img.encode().as_slice())
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    /// Calls `f(name, row_json)` for every catalog row of `table`, in name order.
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

    /// Up to `limit` documents of `doctype` that have a parent row, named after `after`, in
    /// name order.
    pub fn docs_after(
        &self,
        doctype: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DocImage)>, StateError> {
        let docs = self.wtx.open_table(DOCS).map_err(db_err)?;
        let prefix = keys::encode(&[doctype]);
        let start = match after {
            Some(a) => {
                let mut k = keys::encode(&[doctype, a]);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in docs.range(start.as_slice()..).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let img = DocImage::decode(v.value())?;
            if img.parent.is_none() {
                continue;
            }
            let parts = keys::decode(k).ok_or_else(|| StateError::Corrupt("doc key".into()))?;
            let name = parts
                .into_iter()
                .nth(1)
                .ok_or_else(|| StateError::Corrupt("doc key".into()))?;
            out.push((name, img));
        }
        Ok(out)
    }

    /// Number of documents of `doctype` that have a parent row.
    pub fn count_docs(&self, doctype: &str) -> Result<u64, StateError> {
        let docs = self.wtx.open_table(DOCS).map_err(db_err)?;
        let prefix = keys::encode(&[doctype]);
        let mut n = 0;
        for item in docs.range(prefix.as_slice()..).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            if doc::has_parent(v.value())? {
                n += 1;
            }
        }
        Ok(n)
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

    /// Renders the full image of a document as JSON (see [`DocImage::render`]), or `None`
    /// when neither the parent row (the Single's fields) nor any child row exists.
    pub fn assemble(&self, key: &DocKey, shape: DocShape) -> Result<Option<String>, StateError> {
        let img = self.get_doc(key)?;
        self.render(key, &img, shape)
    }

    /// Renders `img`, the stored rows of `key`, as the image of a document of `shape`: a
    /// Single's parent is the object of its `tabSingles` fields.
    pub fn render(
        &self,
        key: &DocKey,
        img: &DocImage,
        shape: DocShape,
    ) -> Result<Option<String>, StateError> {
        match shape {
            DocShape::Table if img.is_empty() => Ok(None),
            DocShape::Table => Ok(Some(img.render())),
            DocShape::Single => {
                let fields = self.single_object(&key.doctype)?;
                if fields.is_none() && img.children.is_empty() {
                    return Ok(None);
                }
                let fields = fields
                    .map(String::from_utf8)
                    .transpose()
                    .map_err(|e| StateError::Corrupt(e.to_string()))?;
                let mut out = String::with_capacity(img.weight());
                img.render_with(fields.as_deref(), &mut out);
                Ok(Some(out))
            }
        }
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
            meta.insert(FORMAT_KEY, FORMAT).map_err(db_err)?;
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
mod tests;

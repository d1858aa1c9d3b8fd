//! The Kafka message format, version 1 (`schemas/envelope.v1.json`, `schemas/key.v1.json`).
//!
//! Key: `{"doctype": "...", "name": "..."}`. Value: one document's full `before` and `after`
//! images (`{"parent": {...}, "children": {"<parentfield>": [rows by idx]}}`), the operation, the
//! tables the transaction touched for this document, and the source position. A delete is
//! followed by a tombstone (null value) for its key; a rename is keyed by the new name, carries
//! `old_name`, and is followed by a tombstone for the old key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::image::Image;

/// Version of the envelope format.
pub const ENVELOPE_VERSION: u32 = 1;

/// What happened to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    Update,
    Delete,
    Rename,
    Snapshot,
}

impl Op {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Rename => "rename",
            Op::Snapshot => "snapshot",
        }
    }
}

/// Rows of one table that the transaction changed for this document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    pub inserted: u32,
    pub updated: u32,
    pub deleted: u32,
}

/// Where the change came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub server_id: u32,
    pub db: String,
    /// GTID of the source transaction; null for snapshot envelopes.
    pub gtid: Option<String>,
    /// GTID position after the transaction (for snapshots: the snapshot position).
    pub position: String,
    pub file: String,
    pub pos: u64,
    /// Commit time, seconds since the Unix epoch (binlog event timestamp).
    pub commit_ts: u64,
    /// Index of this document within its transaction (or within the snapshot).
    pub doc_index: u64,
    /// Number of documents the transaction (or the snapshot) emitted.
    pub doc_count: u64,
    pub snapshot: bool,
}

/// The key of a message: exactly `{"doctype", "name"}` (`schemas/key.v1.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key<'a> {
    pub doctype: std::borrow::Cow<'a, str>,
    pub name: std::borrow::Cow<'a, str>,
}

/// Longest key accepted, in bytes. Frappe caps doctypes at 140 characters and names at 140
/// (255 for some); 4 KiB leaves room for escapes and still bounds the parse.
pub const KEY_MAX_BYTES: usize = 4096;

impl Key<'static> {
    /// Parses a message key, or says what is wrong with it (a dead-letter reason; it names
    /// the defect, never the key's text).
    pub fn parse(key: Option<&[u8]>) -> Result<Key<'static>, String> {
        let key = match key {
            None => return Err("key: missing".into()),
            Some([]) => return Err("key: empty".into()),
            Some(k) if k.len() > KEY_MAX_BYTES => {
                return Err(format!(
                    "key: {} bytes, more than the {KEY_MAX_BYTES} allowed",
                    k.len()
                ));
            }
            Some(k) => k,
        };
        let text = std::str::from_utf8(key)
            .map_err(|e| format!("key: not UTF-8 at byte {}", e.valid_up_to()))?;
        let k: Key<'static> = serde_json::from_str(text).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => {
                    format!("key: not JSON ({})", position(&e))
                }
                Category::Data => format!(
                    "key: not an object of exactly {{\"doctype\", \"name\"}} strings ({})",
                    shape_error(&e)
                ),
            }
        })?;
        // serde also reads a struct from an array (`["Customer", "C1"]`): not a key.
        if !text.trim_start().starts_with('{') {
            return Err(
                "key: not an object of exactly {\"doctype\", \"name\"} strings (an array)".into(),
            );
        }
        if k.doctype.is_empty() {
            return Err("key: empty doctype".into());
        }
        Ok(k)
    }

    /// Checks that the key names the envelope's document (for a rename: its new name).
    pub fn matches(&self, e: &Envelope) -> Result<(), String> {
        match (self.doctype == e.doctype, self.name == e.name) {
            (true, true) => Ok(()),
            (false, _) => Err("key: names another doctype than the envelope".into()),
            (true, false) => Err("key: names another document than the envelope".into()),
        }
    }
}

/// Where a JSON error is, without the input's text.
fn position(e: &serde_json::Error) -> String {
    format!("line {} column {}", e.line(), e.column())
}

/// serde's message for a shape error without the input's values: `invalid type: string
/// "..."` would copy the message's text into a reason that is logged. Field names in
/// `missing/unknown/duplicate field` messages are kept (cut to 64 characters).
pub fn shape_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let msg = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(m, _)| m);
    let field = ["missing field", "unknown field", "duplicate field"]
        .iter()
        .any(|p| msg.starts_with(p));
    let cut: String = if field {
        let m = msg.split(", expected").next().unwrap_or(msg);
        let mut t: String = m.chars().take(64).collect();
        if t.len() < m.len() {
            t.push_str("…`");
        }
        t
    } else {
        msg[..msg.find(['"', '`']).unwrap_or(msg.len())]
            .trim_end()
            .to_string()
    };
    format!("{cut} at {}", position(e))
}

/// An envelope as produced. `before` and `after` are images rendered by the state store from
/// row JSON it wrote itself; [`EnvelopeOut::to_vec`] copies them into the message as they are
/// (no re-parse: the images are the bulk of every message).
#[derive(Debug)]
pub struct EnvelopeOut<'a> {
    pub version: u32,
    pub op: Op,
    pub doctype: &'a str,
    pub name: &'a str,
    pub old_name: Option<&'a str>,
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
    pub changes: &'a BTreeMap<String, RowCounts>,
    pub source: &'a Source,
}

impl EnvelopeOut<'_> {
    /// The message value: the JSON object of `schemas/envelope.v1.json`.
    pub fn to_vec(&self) -> Vec<u8> {
        let images = self.before.map_or(4, str::len) + self.after.map_or(4, str::len);
        let mut out = Vec::with_capacity(400 + images);
        // Writing JSON into a Vec cannot fail; the results are ignored below for that reason.
        out.extend_from_slice(b"{\"version\":");
        let _ = serde_json::to_writer(&mut out, &self.version);
        out.extend_from_slice(b",\"op\":\"");
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"doctype\":");
        let _ = serde_json::to_writer(&mut out, self.doctype);
        out.extend_from_slice(b",\"name\":");
        let _ = serde_json::to_writer(&mut out, self.name);
        if let Some(old) = self.old_name {
            out.extend_from_slice(b",\"old_name\":");
            let _ = serde_json::to_writer(&mut out, old);
        }
        out.extend_from_slice(b",\"before\":");
        out.extend_from_slice(self.before.unwrap_or("null").as_bytes());
        out.extend_from_slice(b",\"after\":");
        out.extend_from_slice(self.after.unwrap_or("null").as_bytes());
        out.extend_from_slice(b",\"changes\":");
        let _ = serde_json::to_writer(&mut out, self.changes);
        out.extend_from_slice(b",\"source\":");
        let _ = serde_json::to_writer(&mut out, self.source);
        out.push(b'}');
        out
    }
}

/// An envelope as consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub version: u32,
    pub op: Op,
    pub doctype: String,
    pub name: String,
    #[serde(default)]
    pub old_name: Option<String>,
    pub before: Option<Image>,
    pub after: Option<Image>,
    pub changes: BTreeMap<String, RowCounts>,
    pub source: Source,
}

impl Envelope {
    /// Parses a message value. The bytes are checked as UTF-8 once, as a whole, and then parsed
    /// as text: parsing bytes checked every string on its own, ~4 % of apply's CPU.
    pub fn parse(payload: &[u8]) -> Result<Envelope, serde_json::Error> {
        let text = std::str::from_utf8(payload).map_err(|e| {
            <serde_json::Error as serde::de::Error>::custom(format!(
                "not UTF-8 at byte {}",
                e.valid_up_to()
            ))
        })?;
        serde_json::from_str(text)
    }

    /// Checks what serde cannot: a doctype, images that fit `op` (their shapes are checked
    /// while parsing, see [`Image`]), and that the `after` image describes this document
    /// only (see [`Envelope::check_ownership`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.doctype.is_empty() {
            return Err("empty doctype".into());
        }
        if self.old_name.as_deref() == Some(self.name.as_str()) {
            return Err("old_name equals name".into());
        }
        let (b, a) = (self.before.is_some(), self.after.is_some());
        let ok = match self.op {
            Op::Create | Op::Snapshot => !b && a,
            Op::Update => b && a,
            Op::Delete => b && !a,
            Op::Rename => b && a && self.old_name.is_some(),
        };
        if !ok {
            return Err(format!(
                "op {} does not fit the before/after images given",
                self.op.as_str()
            ));
        }
        self.check_ownership()
    }

    /// The `after` image must be this document's and nothing else: the parent row's `name`
    /// is the envelope's `name` (a Single, named after its doctype, may leave it out), and
    /// every child row has a non-empty `name` and names this document as its `parent`, this
    /// doctype as its `parenttype` and the field it is listed under as its `parentfield`.
    /// Apply writes child rows by `name`; without this a message for one document could
    /// write rows into another.
    fn check_ownership(&self) -> Result<(), String> {
        let Some(after) = &self.after else {
            return Ok(());
        };
        if let Some(p) = &after.parent {
            match p.get("name") {
                Some(serde_json::Value::String(n)) if *n == self.name => {}
                None if self.name == self.doctype => {}
                None => return Err("after.parent has no name".into()),
                Some(_) => return Err("after.parent.name is not the envelope's name".into()),
            }
        }
        for (field, rows) in &after.children {
            for (i, r) in rows.iter().enumerate() {
                let at = || format!("after.children.{field}[{i}]");
                if r.str("name").is_none_or(str::is_empty) {
                    return Err(format!("{} has no name", at()));
                }
                if r.str("parent") != Some(self.name.as_str()) {
                    return Err(format!("{}.parent is not the envelope's name", at()));
                }
                if r.str("parenttype") != Some(self.doctype.as_str()) {
                    return Err(format!("{}.parenttype is not the envelope's doctype", at()));
                }
                if r.str("parentfield") != Some(field.as_str()) {
                    return Err(format!("{}.parentfield is not {field:?}", at()));
                }
            }
        }
        Ok(())
    }
}

/// Serializes a key.
pub fn key_json(doctype: &str, name: &str) -> Vec<u8> {
    let k = Key {
        doctype: doctype.into(),
        name: name.into(),
    };
    serde_json::to_vec(&k).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_and_in_agree() {
        let src = Source {
            server_id: 1,
            db: "site".into(),
            gtid: Some("0-1-9".into()),
            position: "0-1-9".into(),
            file: "mysql-bin.000001".into(),
            pos: 1234,
            commit_ts: 1_700_000_000,
            doc_index: 0,
            doc_count: 2,
            snapshot: false,
        };
        let mut changes = BTreeMap::new();
        changes.insert(
            "tabSales Invoice".to_string(),
            RowCounts {
                inserted: 1,
                updated: 0,
                deleted: 0,
            },
        );
        let after = r#"{"parent":{"name":"S/1"},"children":{}}"#;
        let out = EnvelopeOut {
            version: ENVELOPE_VERSION,
            op: Op::Create,
            doctype: "Sales Invoice",
            name: "S/1",
            old_name: None,
            before: None,
            after: Some(after),
            changes: &changes,
            source: &src,
        };
        let bytes = out.to_vec();
        let back = Envelope::parse(&bytes).unwrap();
        // Not UTF-8: an error naming where, not a panic; the same bytes as text parse.
        let mut bad = bytes.clone();
        let at = bad.windows(3).position(|w| w == b"S/1").unwrap();
        bad[at] = 0xff;
        let err = Envelope::parse(&bad).unwrap_err().to_string();
        assert!(err.contains(&format!("not UTF-8 at byte {at}")), "{err}");
        assert!(Envelope::parse(b"{").is_err());
        assert_eq!(back.op, Op::Create);
        assert_eq!(back.old_name, None);
        assert_eq!(back.before, None);
        assert_eq!(
            back.after
                .as_ref()
                .and_then(|a| a.parent.as_ref()?.str("name")),
            Some("S/1")
        );
        assert_eq!(back.changes, changes);
        assert_eq!(back.source, src);
        let renamed = EnvelopeOut {
            op: Op::Rename,
            old_name: Some("S/\"0"),
            before: Some(after),
            ..out
        };
        let back: Envelope = serde_json::from_slice(&renamed.to_vec()).unwrap();
        assert_eq!(back.op, Op::Rename);
        assert_eq!(back.old_name.as_deref(), Some("S/\"0"));
        assert_eq!(back.before, back.after);
        assert_eq!(
            key_json("Sales Invoice", "S/1"),
            br#"{"doctype":"Sales Invoice","name":"S/1"}"#
        );
    }
}

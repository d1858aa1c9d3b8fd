//! Progress markers (`schemas/progress.v1.json`, `schemas/progress-key.v1.json`): at every
//! commit of its output (a Kafka transaction, or a checkpoint in at-least-once mode) capture
//! writes one small record to every partition of the topic, after the documents of that
//! commit, saying "this partition holds everything up to source position `position`".
//!
//! A consumer uses them to know that nothing earlier will arrive on a partition, even one that
//! carried no document for a while (apply's transaction-consistent mode merges partitions
//! with them), and capture reads the last committed one when it starts, to learn what the
//! topic already holds even when its own state store is behind (exactly-once restarts).
//!
//! Key: `{"progress": <partition>}` (one key per partition, so a compacted topic keeps the
//! newest marker of each). Header `frappe-cdc-type: progress` on every marker, so consumers
//! can skip them without parsing. Documents are never keyed like this: a document key is
//! exactly `{"doctype", "name"}`.

use serde::{Deserialize, Serialize};

/// Version of the marker format.
pub const PROGRESS_VERSION: u32 = 1;

/// The header every marker carries, and its value.
pub const TYPE_HEADER: &str = "frappe-cdc-type";
pub const TYPE_PROGRESS: &str = "progress";

/// Snapshot emission progress carried by markers written while the snapshot is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotProgress {
    /// Snapshot envelopes committed on the topic so far (they are emitted in a fixed order).
    pub emitted: u64,
    pub total: u64,
}

/// One marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    pub version: u32,
    /// Always "progress".
    #[serde(rename = "type")]
    pub kind: String,
    /// Identity of the capture state that wrote it (a new one per initial snapshot): markers
    /// of an earlier state on the same topic are not this capture's progress.
    pub epoch: String,
    /// The partition it was written to.
    pub partition: i32,
    /// GTID position up to which every source transaction is on the topic (for a snapshot in
    /// progress: the snapshot's position).
    pub position: String,
    /// Binlog file and offset of that position (diagnostics).
    pub file: String,
    pub pos: u64,
    /// Commit time (Unix seconds) of the last source transaction at or before `position`.
    pub commit_ts: u64,
    /// Set while the initial snapshot is being emitted.
    pub snapshot: Option<SnapshotProgress>,
    /// When the marker was written (Unix seconds).
    pub written_at: u64,
}

/// The key of the marker for `partition`.
pub fn key(partition: i32) -> Vec<u8> {
    format!("{{\"progress\":{partition}}}").into_bytes()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    progress: i32,
}

/// The partition a marker key names, or None when `key` is not a marker key.
pub fn parse_key(key: &[u8]) -> Option<i32> {
    // Cheap test first: document keys start with {"doctype".
    if !key.starts_with(b"{\"progress\"") {
        return None;
    }
    serde_json::from_slice::<Key>(key).ok().map(|k| k.progress)
}

impl Progress {
    /// The message value.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a marker value; the error is the reason, for dead letters.
    pub fn parse(value: &[u8]) -> Result<Progress, String> {
        let p: Progress = serde_json::from_slice(value)
            .map_err(|e| format!("value: not a frappe-cdc progress marker: {e}"))?;
        if p.version != PROGRESS_VERSION {
            return Err(format!(
                "value: unknown progress marker version {}",
                p.version
            ));
        }
        if p.kind != TYPE_PROGRESS {
            return Err("value: a progress marker's type must be \"progress\"".into());
        }
        p.position
            .parse::<crate::position::GtidPosition>()
            .map_err(|_| "value: progress position is not a GTID position".to_string())?;
        Ok(p)
    }
}

/// A fresh random epoch (32 hex digits).
pub fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out = String::new();
    for salt in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(salt);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Progress {
        Progress {
            version: PROGRESS_VERSION,
            kind: TYPE_PROGRESS.into(),
            epoch: new_epoch(),
            partition: 2,
            position: "0-1-42,1-7-3".into(),
            file: "binlog.000003".into(),
            pos: 1234,
            commit_ts: 1_700_000_000,
            snapshot: None,
            written_at: 1_700_000_001,
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let m = marker();
        assert_eq!(m.epoch.len(), 32);
        assert_ne!(m.epoch, new_epoch());
        assert_eq!(Progress::parse(&m.to_vec()), Ok(m.clone()));
        let mut bad = m.clone();
        bad.position = "nonsense".into();
        assert!(Progress::parse(&bad.to_vec()).is_err());
        let mut bad = m.clone();
        bad.version = 9;
        assert!(Progress::parse(&bad.to_vec()).is_err());
        let mut bad = m;
        bad.kind = "document".into();
        assert!(Progress::parse(&bad.to_vec()).is_err());
        assert!(Progress::parse(b"{\"version\":1}").is_err());
    }

    #[test]
    fn keys_are_told_from_document_keys() {
        assert_eq!(parse_key(&key(7)), Some(7));
        assert_eq!(
            parse_key(b"{\"doctype\":\"X\",\"name\":\"progress\"}"),
            None
        );
        assert_eq!(parse_key(b"{\"progress\":1,\"x\":2}"), None);
        assert_eq!(parse_key(b"{\"progress\":\"1\"}"), None);
    }
}

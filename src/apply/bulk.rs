//! Bulk apply: many documents in one replica transaction, read and written set-wise.
//!
//! Same decisions and the same final rows as the one-document path (`run.rs`), with a few
//! statements per table instead of ~25 round trips per document:
//! 1. lock and read, per doctype: applied positions, open conflicts, parent rows, child rows
//!    (`... IN (...) FOR UPDATE`), assembled into the images `read_doc` would return;
//! 2. decide each document exactly as one at a time (no document occurs twice in a batch, so
//!    the decisions are independent);
//! 3. write: deleted documents, child rows that left their document, then multi-row upserts
//!    of parents and children, applied positions, conflicts, and every partition's next offset.
//!
//! Consistency: all of it commits in one transaction with the offsets, so a crash replays the
//! whole batch and the applied positions turn replays into no-ops. Any error aborts the batch;
//! the caller retries transient ones and otherwise re-runs the messages one at a time, so a
//! bad document is dead-lettered alone. Batches never hold Singles or renames
//! ([`BulkError::NotBulk`]); those take the one-document path.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use mysql_async::Transaction;
use mysql_async::Value as MyValue;
use mysql_async::prelude::Queryable;
use serde_json::{Map, Value};

use super::control::{self, ConflictRecord, EventKey};
use super::decision::{Comparator, Decision};
use super::replica::{
    CHUNK, ReplicaError, SchemaCache, child_rows, doc_image, marks, q, read_children, read_parents,
    to_param,
};
use super::run::Outcome;
use crate::envelope::{Envelope, Op};

/// At most this many placeholders in one statement.
const MAX_PARAMS: usize = 60_000;

/// One envelope of a batch, with where it came from.
pub struct BulkItem {
    pub env: Envelope,
    pub key: EventKey,
    pub partition: i32,
    pub next: i64,
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("batch holds a document the bulk path does not handle")]
    NotBulk,
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

impl From<mysql_async::Error> for BulkError {
    fn from(e: mysql_async::Error) -> Self {
        BulkError::Replica(ReplicaError::from(e))
    }
}

/// What the batch did, per item (same order), and columns the replica lacks.
pub struct BulkResult {
    pub outcomes: Vec<Outcome>,
    pub missing_columns: BTreeSet<(String, String)>,
}

type DocKey = (String, String);

/// Rows read for one doctype: the image of each document, and the child row names per table.
struct Copies {
    images: HashMap<String, Value>,
    child_names: HashMap<String, Vec<(String, String)>>,
}

async fn read_copies(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    doctype: &str,
    names: &[&str],
) -> Result<Copies, BulkError> {
    const LOCK: &str = " FOR UPDATE";
    let mut parents = read_parents(tx, cache, doctype, names, LOCK).await?;
    let mut rows = read_children(tx, cache, doctype, names, LOCK).await?;
    let images = names
        .iter()
        .filter_map(|n| {
            let c = rows.children.remove(*n).unwrap_or_default();
            doc_image(parents.remove(*n), c).map(|i| (n.to_string(), i))
        })
        .collect();
    Ok(Copies {
        images,
        child_names: rows.names,
    })
}

/// Rows to upsert, grouped by table and column list.
#[derive(Default)]
struct Upserts {
    rows: BTreeMap<(String, Vec<String>), Vec<Vec<MyValue>>>,
}

impl Upserts {
    async fn add(
        &mut self,
        tx: &mut Transaction<'_>,
        cache: &mut SchemaCache,
        table: &str,
        row: &Map<String, Value>,
        missing: &mut BTreeSet<(String, String)>,
    ) -> Result<(), BulkError> {
        let cols = cache.columns(tx, table).await?;
        let mut names = Vec::new();
        let mut vals = Vec::new();
        for (k, v) in row {
            if cols.contains(k) {
                names.push(k.clone());
                vals.push(to_param(v));
            } else {
                missing.insert((table.to_string(), k.clone()));
            }
        }
        if !names.is_empty() {
            self.rows
                .entry((table.to_string(), names))
                .or_default()
                .push(vals);
        }
        Ok(())
    }

    async fn write(self, tx: &mut Transaction<'_>) -> Result<(), BulkError> {
        for ((table, names), rows) in self.rows {
            let quoted: Vec<String> = names.iter().map(|n| q(n)).collect();
            let one = format!("({})", marks(names.len()));
            let updates: Vec<String> = quoted
                .iter()
                .map(|n| format!("{n} = VALUES({n})"))
                .collect();
            let per = (MAX_PARAMS / names.len().max(1)).clamp(1, CHUNK);
            for chunk in rows.chunks(per) {
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES {} ON DUPLICATE KEY UPDATE {}",
                    q(&table),
                    quoted.join(", "),
                    vec![one.as_str(); chunk.len()].join(", "),
                    updates.join(", ")
                );
                let params: Vec<MyValue> = chunk.iter().flatten().cloned().collect();
                tx.exec_drop(sql, params).await?;
            }
        }
        Ok(())
    }
}

async fn delete_in(
    tx: &mut Transaction<'_>,
    sql_head: &str,
    fixed: &[MyValue],
    names: &[String],
) -> Result<(), BulkError> {
    for chunk in names.chunks(CHUNK) {
        let sql = format!("{sql_head} ({})", marks(chunk.len()));
        let mut params = fixed.to_vec();
        params.extend(chunk.iter().map(|n| MyValue::from(n.as_str())));
        tx.exec_drop(sql, params).await?;
    }
    Ok(())
}

/// Applies `items` (no document twice, no renames) and stores `offsets` in `tx`.
pub async fn apply_bulk(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    cmp: &Comparator,
    group: &str,
    topic: &str,
    items: &[BulkItem],
    offsets: &BTreeMap<i32, i64>,
) -> Result<BulkResult, BulkError> {
    let mut by_doctype: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for it in items {
        if it.env.op == Op::Rename || it.env.old_name.is_some() {
            return Err(BulkError::NotBulk);
        }
        by_doctype
            .entry(&it.env.doctype)
            .or_default()
            .push(&it.env.name);
    }
    for dt in by_doctype.keys() {
        if cache.is_single(tx, dt).await? {
            return Err(BulkError::NotBulk);
        }
    }

    let t0 = std::time::Instant::now();
    // 1. lock and read
    let mut applied: HashMap<DocKey, EventKey> = HashMap::new();
    let mut open: HashSet<DocKey> = HashSet::new();
    let mut copies: HashMap<String, Copies> = HashMap::new();
    for (dt, names) in &by_doctype {
        for chunk in names.chunks(CHUNK) {
            let mut params: Vec<MyValue> = vec![(*dt).into()];
            params.extend(chunk.iter().map(|n| MyValue::from(*n)));
            let rows: Vec<(String, u32, u64, u64)> = tx
                .exec(
                    format!("SELECT name, domain_id, seq_no, doc_index FROM `_frappe_cdc_applied` WHERE doctype = ? AND name IN ({}) FOR UPDATE", marks(chunk.len())),
                    params.clone(),
                )
                .await?;
            for (n, domain, seq, doc_index) in rows {
                applied.insert(
                    ((*dt).to_string(), n),
                    EventKey {
                        domain,
                        seq,
                        doc_index,
                    },
                );
            }
            let rows: Vec<String> = tx
                .exec(
                    format!("SELECT name FROM `_frappe_cdc_conflicts` WHERE doctype = ? AND status = 'open' AND name IN ({}) FOR UPDATE", marks(chunk.len())),
                    params,
                )
                .await?;
            open.extend(rows.into_iter().map(|n| ((*dt).to_string(), n)));
        }
        copies.insert((*dt).to_string(), read_copies(tx, cache, dt, names).await?);
    }

    let t_read = t0.elapsed();
    // 2. decide, 3. collect writes
    let mut outcomes = Vec::with_capacity(items.len());
    let mut missing = BTreeSet::new();
    let mut upserts = Upserts::default();
    let mut deleted_docs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut gone_children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut marks_rows: Vec<(&str, &str, EventKey)> = Vec::new();
    for it in items {
        let e = &it.env;
        let k = (e.doctype.clone(), e.name.clone());
        if applied.get(&k).is_some_and(|l| it.key.covered_by(l)) {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        let c = copies.get(&e.doctype);
        let copy = c.and_then(|c| c.images.get(&e.name));
        let decision = if open.contains(&k) {
            Decision::Conflict("an earlier conflict of this document is still open".into())
        } else {
            cmp.decide(e.op, e.before.as_ref(), e.after.as_ref(), copy, None)
        };
        match decision {
            Decision::Apply => {
                let child_tables = cache.child_tables(tx, &e.doctype).await?;
                let existing = c
                    .and_then(|c| c.child_names.get(&e.name))
                    .cloned()
                    .unwrap_or_default();
                match e.after.as_ref() {
                    None => deleted_docs
                        .entry(e.doctype.as_str())
                        .or_default()
                        .push(e.name.clone()),
                    Some(image) => {
                        match image.get("parent") {
                            Some(Value::Object(p)) => {
                                upserts
                                    .add(tx, cache, &format!("tab{}", e.doctype), p, &mut missing)
                                    .await?
                            }
                            Some(Value::Null) | None => {}
                            Some(_) => {
                                return Err(ReplicaError::BadImage(
                                    "parent is not an object".into(),
                                )
                                .into());
                            }
                        }
                        let mut keep: HashSet<(&str, &str)> = HashSet::new();
                        for (table, r) in child_rows(&e.doctype, image, &child_tables)? {
                            if let Some(n) = r.get("name").and_then(Value::as_str) {
                                keep.insert((table, n));
                            }
                            upserts.add(tx, cache, table, r, &mut missing).await?;
                        }
                        for (t, n) in &existing {
                            if !keep.contains(&(t.as_str(), n.as_str())) {
                                gone_children.entry(t.clone()).or_default().push(n.clone());
                            }
                        }
                    }
                }
                marks_rows.push((&e.doctype, &e.name, it.key));
                outcomes.push(Outcome::Applied);
            }
            Decision::AlreadyApplied => {
                marks_rows.push((&e.doctype, &e.name, it.key));
                outcomes.push(Outcome::AlreadyApplied);
            }
            Decision::Conflict(reason) => {
                control::record_conflict(
                    tx,
                    &ConflictRecord {
                        doctype: &e.doctype,
                        name: &e.name,
                        reason: &reason,
                        before: e.before.as_ref(),
                        after: e.after.as_ref(),
                        replica: copy,
                        source: &e.source,
                    },
                )
                .await?;
                tracing::warn!(doctype = %e.doctype, reason = %reason, "conflict recorded; document skipped");
                outcomes.push(Outcome::Conflict);
            }
        }
    }

    // writes: removals first (a child row may move to another document of the batch)
    for (dt, names) in &deleted_docs {
        let table = format!("tab{dt}");
        delete_in(
            tx,
            &format!("DELETE FROM {} WHERE name IN", q(&table)),
            &[],
            names,
        )
        .await?;
        let tables = cache.child_table_set(tx, dt).await?;
        for t in tables {
            delete_in(
                tx,
                &format!("DELETE FROM {} WHERE parenttype = ? AND parent IN", q(&t)),
                &[MyValue::from(*dt)],
                names,
            )
            .await?;
        }
    }
    for (t, names) in &gone_children {
        delete_in(
            tx,
            &format!("DELETE FROM {} WHERE name IN", q(t)),
            &[],
            names,
        )
        .await?;
    }
    let t_decide = t0.elapsed();
    upserts.write(tx).await?;
    let t_upsert = t0.elapsed();
    for chunk in marks_rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO `_frappe_cdc_applied` (doctype, name, domain_id, seq_no, doc_index, applied_at) VALUES {} \
             ON DUPLICATE KEY UPDATE domain_id = VALUES(domain_id), seq_no = VALUES(seq_no), doc_index = VALUES(doc_index), applied_at = VALUES(applied_at)",
            vec!["(?, ?, ?, ?, ?, current_timestamp(6))"; chunk.len()].join(", ")
        );
        let mut params: Vec<MyValue> = Vec::with_capacity(chunk.len() * 5);
        for (dt, n, k) in chunk {
            params.extend([
                MyValue::from(*dt),
                MyValue::from(*n),
                k.domain.into(),
                k.seq.into(),
                k.doc_index.into(),
            ]);
        }
        tx.exec_drop(sql, params).await?;
    }
    for (p, next) in offsets {
        control::store_offset(tx, group, topic, *p, *next).await?;
    }
    tracing::debug!(
        docs = items.len(),
        read_ms = t_read.as_secs_f64() * 1e3,
        decide_and_deletes_ms = (t_decide - t_read).as_secs_f64() * 1e3,
        upserts_ms = (t_upsert - t_decide).as_secs_f64() * 1e3,
        marks_offsets_ms = (t0.elapsed() - t_upsert).as_secs_f64() * 1e3,
        "bulk batch written"
    );
    Ok(BulkResult {
        outcomes,
        missing_columns: missing,
    })
}

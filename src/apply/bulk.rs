//! Bulk apply: many documents in one replica transaction, read and written set-wise.
//!
//! Same decisions and the same final rows as the one-document path (`document.rs`), with a few
//! statements per table instead of ~25 round trips per document:
//! 1. lock and read, per doctype: applied positions, open conflicts, parent rows, child rows
//!    (`... IN (...) FOR UPDATE`), assembled into the images `read_doc` would return. Not
//!    read: the copies of documents the primary created and this replica never applied (no
//!    applied position, no open conflict) whose rows all go through `LOAD DATA`. They are
//!    taken as absent; should one exist after all (created locally on the replica), `LOAD
//!    DATA` stores fewer rows than sent and the batch fails, and the caller re-runs it with
//!    every copy read ([`BulkMode::read_new`]), which records the conflict. This spares
//!    about a quarter of the replica's work in a backlog of new documents;
//!    Then the ownership check, set-wise (`check_ownership`, see `ownership.rs`);
//! 2. decide every document with the batch decision (`plan.rs`), the same function the
//!    one-document path calls with one item (no document occurs twice in a batch, so the
//!    decisions are independent; a batch where two documents touch one child row goes one at
//!    a time instead, [`BulkError::InOrder`]);
//! 3. carry out the plan with the executor's set-wise writer (`execute.rs`): conflicts,
//!    deletes, `LOAD DATA` of new documents, multi-row upserts, applied positions; then every
//!    partition's next offset.
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

use super::control::{self, EventKey};
use super::decision::Comparator;
use super::execute::{self, Writer};
use super::outcome::Outcome;
use super::ownership::{self, ChildOwner};
use super::plan::{self, Seen};
use super::replica::{
    CHUNK, ReplicaError, SchemaCache, child_rows, doc_image, marks, read_children, read_parents,
};
use crate::envelope::{Envelope, Op};
use crate::image::Image;

/// One envelope of a batch, with where it came from.
pub struct BulkItem {
    pub env: Envelope,
    pub key: EventKey,
    pub partition: i32,
    pub next: i64,
    /// Every value of `after` can go through `LOAD DATA` (`infile::loadable`, computed
    /// where the envelope is parsed, off the apply task).
    pub loadable: bool,
    /// Its source transaction is held (`plan.rs` step 5): recorded, not written.
    pub hold: bool,
}

/// How a batch reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkMode {
    /// Rows of documents the replica does not have go through `LOAD DATA LOCAL INFILE`
    /// (set to false when the replica refuses it).
    pub load_data: bool,
    /// Read the replica's copy of new documents too (the retry after a `LOAD DATA`
    /// mismatch), instead of relying on `LOAD DATA` to find one.
    pub read_new: bool,
    /// Record what applied File documents need (`--files-to`).
    pub files: bool,
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("batch holds a document the bulk path does not handle")]
    NotBulk,
    /// The batch's documents must be applied one at a time, in order, to be judged right
    /// (two of them claim one child row, or one claims a row another of them owns).
    #[error("batch must be applied in order: {0}")]
    InOrder(&'static str),
    /// Includes `ReplicaError::LoadMismatch`: the batch is then re-run with every copy read.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// Transaction consistency with `hold-transaction`: these source transactions have a
    /// conflicting document and others that would apply; the batch rolled back and is re-run
    /// with them held.
    #[error("source transactions to hold")]
    Hold(std::collections::HashSet<String>),
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
    /// Conflict decisions taken (see `execute::Written::decisions`).
    pub decisions: Vec<(String, &'static str, &'static str)>,
    /// Rows written through `LOAD DATA` and through upserts.
    pub loaded_rows: u64,
    pub upserted_rows: u64,
}

type DocKey = (String, String);

/// Rows read for one doctype: the image of each document, and the child row names per table.
struct Copies {
    images: HashMap<String, Image>,
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
    // I12 (ARCHITECTURE.md). The replica matched these names with its collation (case, trailing spaces, accents):
    // a copy stored under a name that differs in bytes belongs to another document as far
    // as the envelope knows, and cannot be paired set-wise. One message at a time, the
    // replica's own lookup pairs it and the decision sees the different name.
    let asked: HashSet<&str> = names.iter().copied().collect();
    if parents
        .keys()
        .chain(rows.children.keys())
        .any(|n| !asked.contains(n.as_str()))
    {
        return Err(BulkError::InOrder(
            "a document name matches a replica copy only by collation",
        ));
    }
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

/// The ownership check of a batch (see `ownership.rs`), set-wise: the child rows that the
/// batch's documents would write and that are not already their own rows on the replica are
/// read, locked, in one statement per table; a row owned by a document outside the batch
/// makes the claiming document a conflict (returned by item index). Documents whose rows all
/// go through `LOAD DATA` (`unread`) are not checked here: `LOAD DATA` cannot overwrite a row
/// (a duplicate fails the batch, which is re-run with every copy read and then checked).
/// Two documents claiming one row, or one claiming a row another document of the batch owns,
/// send the batch to the one-at-a-time path, which judges them in order.
async fn check_ownership(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    items: &[BulkItem],
    unread: &[bool],
    applied: &HashMap<DocKey, Vec<EventKey>>,
    open: &HashSet<DocKey>,
    copies: &HashMap<String, Copies>,
) -> Result<HashMap<usize, Vec<ChildOwner>>, BulkError> {
    let mut tables: HashMap<&str, std::sync::Arc<BTreeMap<String, String>>> = HashMap::new();
    for it in items {
        if !tables.contains_key(it.env.doctype.as_str()) {
            let t = cache.child_tables(tx, &it.env.doctype).await?;
            tables.insert(&it.env.doctype, t);
        }
    }
    let mut claims: Vec<(&str, &str)> = Vec::new();
    let mut ask: BTreeMap<&str, Vec<(&str, usize)>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        let e = &it.env;
        let Some(after) = &e.after else { continue };
        let k = (e.doctype.clone(), e.name.clone());
        let done = applied.get(&k).map_or(&[][..], Vec::as_slice);
        if !plan::needs_ownership_check(e, it.key, done, open.contains(&k)) {
            continue;
        }
        let own: HashSet<(&str, &str)> = copies
            .get(&e.doctype)
            .and_then(|c| c.child_names.get(&e.name))
            .map(|v| v.iter().map(|(t, n)| (t.as_str(), n.as_str())).collect())
            .unwrap_or_default();
        for (table, r) in child_rows(&e.doctype, after, &tables[e.doctype.as_str()])? {
            let Some(n) = r.str("name") else { continue };
            claims.push((table, n));
            if !unread[i] && !own.contains(&(table, n)) {
                ask.entry(table).or_default().push((n, i));
            }
        }
    }
    if ownership::claimed_twice(claims) {
        return Err(BulkError::InOrder("two documents claim one child row"));
    }
    let in_batch: HashSet<(&str, &str)> = items
        .iter()
        .map(|it| (it.env.doctype.as_str(), it.env.name.as_str()))
        .collect();
    let mut collided: HashMap<usize, Vec<ChildOwner>> = HashMap::new();
    for (table, asked) in ask {
        let names: Vec<&str> = asked.iter().map(|(n, _)| *n).collect();
        let by_name: HashMap<&str, usize> = asked.iter().copied().collect();
        for o in ownership::owners(tx, cache, table, &names).await? {
            // A row found under a name that differs in bytes (the collation matched it)
            // cannot be told apart from another claim set-wise.
            let Some(&i) = by_name.get(o.name.as_str()) else {
                return Err(BulkError::InOrder(
                    "a child row name matches only by collation",
                ));
            };
            let e = &items[i].env;
            if o.owned_by(&e.doctype, &e.name) {
                continue;
            }
            let owner = (
                o.parenttype.as_deref().unwrap_or(""),
                o.parent.as_deref().unwrap_or(""),
            );
            if in_batch.contains(&owner) {
                return Err(BulkError::InOrder(
                    "a document claims a row another one owns",
                ));
            }
            collided.entry(i).or_default().push(o);
        }
    }
    Ok(collided)
}

/// Applies `items` (no document twice, no renames) and stores `offsets` in `tx`.
pub async fn apply_bulk(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    cmp: &Comparator,
    (group, topic): (&str, &str),
    items: &[BulkItem],
    offsets: &BTreeMap<i32, i64>,
    mode: &mut BulkMode,
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
    let mut applied: HashMap<DocKey, Vec<EventKey>> = HashMap::new();
    let mut open: HashSet<DocKey> = HashSet::new();
    let mut copies: HashMap<String, Copies> = HashMap::new();
    for (dt, names) in &by_doctype {
        for chunk in names.chunks(CHUNK) {
            let mut params: Vec<MyValue> = vec![(*dt).into()];
            params.extend(chunk.iter().map(|n| MyValue::from(*n)));
            let rows: Vec<(String, u32, u64, u64)> = tx
                .exec(
                    format!("SELECT name, domain_id, seq_no, doc_index FROM `_frappe_cdc_applied` FORCE INDEX (PRIMARY) WHERE doctype = ? AND name IN ({}) FOR UPDATE", marks(chunk.len())),
                    params.clone(),
                )
                .await?;
            for (n, domain, seq, doc_index) in rows {
                applied
                    .entry(((*dt).to_string(), n))
                    .or_default()
                    .push(EventKey {
                        domain,
                        seq,
                        doc_index,
                    });
            }
            // Open conflicts: found with a plain read, then locked by id (only apply opens
            // conflicts, an operator only resolves them, so the locked re-read of status is
            // enough). A locking read over the `doc` index could walk, and wait on, conflict
            // rows of other documents that a concurrent part of the same batch holds.
            let ids: Vec<u64> = tx
                .exec(
                    format!("SELECT id FROM `_frappe_cdc_conflicts` WHERE doctype = ? AND status = 'open' AND name IN ({})", marks(chunk.len())),
                    params,
                )
                .await?;
            if !ids.is_empty() {
                let rows: Vec<String> = tx
                    .exec(
                        format!("SELECT name FROM `_frappe_cdc_conflicts` FORCE INDEX (PRIMARY) WHERE id IN ({}) AND status = 'open' FOR UPDATE", marks(ids.len())),
                        ids,
                    )
                    .await?;
                open.extend(rows.into_iter().map(|n| ((*dt).to_string(), n)));
            }
        }
    }
    // Copies to read: all but those of new documents bound for LOAD DATA (module docs).
    let mut to_read: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut unread = Vec::with_capacity(items.len());
    for it in items {
        let e = &it.env;
        let k = (e.doctype.clone(), e.name.clone());
        let skip = !mode.read_new
            && mode.load_data
            && e.op == Op::Create
            && !applied.contains_key(&k)
            && !open.contains(&k)
            && it.loadable;
        let names = to_read.entry(&e.doctype).or_default();
        if !skip {
            names.push(&e.name);
        }
        unread.push(skip);
    }
    for (dt, names) in &to_read {
        copies.insert((*dt).to_string(), read_copies(tx, cache, dt, names).await?);
    }

    let collided = check_ownership(tx, cache, items, &unread, &applied, &open, &copies).await?;
    let t_read = t0.elapsed();

    // 2. decide, 3. write
    let seen: Vec<Seen<'_>> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let e = &it.env;
            let k = (e.doctype.clone(), e.name.clone());
            let c = copies.get(&e.doctype);
            Seen {
                applied: applied.get(&k).map_or(&[], Vec::as_slice),
                open: open.contains(&k),
                copy: c.and_then(|c| c.images.get(&e.name)),
                copy_new: None,
                collisions: collided.get(&i).map_or(&[], Vec::as_slice),
                child_rows: c
                    .and_then(|c| c.child_names.get(&e.name))
                    .map_or(&[], Vec::as_slice),
                hold: it.hold,
            }
        })
        .collect();
    let subjects: Vec<(&Envelope, EventKey)> = items.iter().map(|it| (&it.env, it.key)).collect();
    let plan = plan::decide_batch(cmp, &subjects, &seen);
    let envs: Vec<&Envelope> = items.iter().map(|it| &it.env).collect();
    let t_decide = t0.elapsed();
    let written = execute::execute(
        tx,
        cache,
        &envs,
        &seen,
        &plan,
        Writer::SetWise {
            load_data: &mut mode.load_data,
        },
        mode.files,
    )
    .await?;
    let t_write = t0.elapsed();
    for (p, next) in offsets {
        control::store_offset(tx, group, topic, *p, *next).await?;
    }
    tracing::debug!(
        docs = items.len(),
        read_ms = t_read.as_secs_f64() * 1e3,
        decide_ms = (t_decide - t_read).as_secs_f64() * 1e3,
        write_ms = (t_write - t_decide).as_secs_f64() * 1e3,
        offsets_ms = (t0.elapsed() - t_write).as_secs_f64() * 1e3,
        "bulk batch written"
    );
    Ok(BulkResult {
        outcomes: plan.outcomes(),
        missing_columns: written.missing_columns,
        decisions: written.decisions,
        loaded_rows: written.loaded_rows,
        upserted_rows: written.upserted_rows,
    })
}

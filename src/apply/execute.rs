//! The one executor of a [`Plan`](super::plan::Plan): conflict records, the writes, and the
//! applied positions of a batch, in the caller's replica transaction. Nothing here commits:
//! the caller stores the offsets in the same transaction and commits (I4), so an error
//! anywhere leaves nothing behind and the batch is re-run whole.
//!
//! The plan's writes go one of two ways ([`Writer`]):
//! - `PerDocument`: each document with `replica::write_doc` (field-wise Singles, renames that
//!   move child rows, a batch that fell back to one message at a time);
//! - `SetWise`: all of them together (`setwise.rs`): deletes per table, `LOAD DATA` for
//!   documents the replica does not have, multi-row upserts for the rest.
//!
//! The final rows are the same either way: the parent equals `after`'s parent, each child
//! table holds exactly `after`'s rows of the document, a delete removes parent and children.
//! Conflicts and applied positions are written the same way for both.

use std::collections::BTreeSet;

use mysql_async::Transaction;
use mysql_async::Value as MyValue;

use super::control::{self, ConflictRecord, EventKey};
use super::outcome::reason_kind;
use super::plan::{Plan, Seen, Step};
use super::replica::{ReplicaError, SchemaCache, write_doc};
use crate::envelope::Envelope;
use crate::files::plan::{file_step, url_of_images};
use crate::files::status::{self, Enqueued};

mod setwise;
mod upserts;

pub(crate) use upserts::STMT_CACHE;

/// How the plan's writes reach the replica (module docs).
pub enum Writer<'m> {
    PerDocument,
    /// `load_data`: rows of documents the replica does not have go through `LOAD DATA
    /// LOCAL INFILE`; set to false when the replica refuses it.
    SetWise {
        load_data: &'m mut bool,
    },
}

/// What the writes did.
#[derive(Debug, Default)]
pub struct Written {
    /// (table, column) pairs the images carry and the replica lacks (not written).
    pub missing_columns: BTreeSet<(String, String)>,
    /// Rows written through `LOAD DATA` and through multi-row upserts (`SetWise` only).
    pub loaded_rows: u64,
    pub upserted_rows: u64,
    /// Conflict decisions taken: (doctype, policy, decision), `("…", "manual", "open")` for
    /// one recorded for an operator. Counted in metrics once the transaction commits.
    pub decisions: Vec<(String, &'static str, &'static str)>,
}

/// Carries out `plan` for `items` (`seen[i]` is what was read for `items[i]`) in `tx`. With
/// `files`, every written File document also gets its `_frappe_cdc_files` row here, in the
/// same transaction (`files/status.rs`).
pub async fn execute(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    items: &[&Envelope],
    seen: &[Seen<'_>],
    plan: &Plan,
    writer: Writer<'_>,
    files: bool,
) -> Result<Written, ReplicaError> {
    let mut written = Written::default();
    for ((e, s), step) in items.iter().zip(seen).zip(&plan.steps) {
        let record = |reason| ConflictRecord {
            doctype: &e.doctype,
            name: e.old_name.as_deref().unwrap_or(&e.name),
            reason,
            before: e.before.as_ref(),
            after: e.after.as_ref(),
            replica: s.copy,
            source: &e.source,
        };
        match step {
            Step::Record(reason) => {
                control::record_conflict(tx, &record(reason)).await?;
                tracing::warn!(doctype = %e.doctype, reason = %reason_kind(reason), "conflict recorded; document skipped");
                written
                    .decisions
                    .push((e.doctype.clone(), "manual", "open"));
            }
            Step::Auto(a) => {
                control::record_auto(tx, &record(&a.reason), a.policy.label(), a.action.label())
                    .await?;
                tracing::info!(doctype = %e.doctype, policy = a.policy.label(), decision = a.action.label(), reason = %reason_kind(&a.reason), "conflict decided by policy");
                written
                    .decisions
                    .push((e.doctype.clone(), a.policy.label(), a.action.label()));
            }
            _ => {}
        }
    }
    match writer {
        Writer::PerDocument => {
            for (e, step) in items.iter().zip(&plan.steps) {
                if let Some(image) = step.written(e) {
                    let r = write_doc(tx, cache, &e.doctype, &e.name, e.old_name.as_deref(), image)
                        .await?;
                    written.missing_columns.extend(r.missing_columns);
                }
            }
        }
        Writer::SetWise { load_data } => {
            setwise::write(tx, cache, items, seen, plan, load_data, &mut written).await?
        }
    }
    let mut marks: Vec<(&str, &str, EventKey)> = Vec::new();
    for (e, step) in items.iter().zip(&plan.steps) {
        let names = match step {
            Step::Skip | Step::Record(_) => continue,
            _ if step.written(e).is_some() => [Some(e.name.as_str()), e.old_name.as_deref()],
            _ => [Some(e.name.as_str()), None],
        };
        for n in names.into_iter().flatten() {
            marks.extend(
                EventKey::all_of(&e.source)
                    .into_iter()
                    .map(|k| (e.doctype.as_str(), n, k)),
            );
        }
    }
    mark_applied(tx, &marks).await?;
    if files {
        let steps: Vec<Enqueued> = items
            .iter()
            .zip(&plan.steps)
            .filter(|(e, step)| e.doctype == "File" && step.written(e).is_some())
            .map(|(e, _)| {
                let (b, a) = (e.before.as_ref(), e.after.as_ref());
                (
                    e.name.clone(),
                    url_of_images(b, a),
                    file_step(&e.name, b, a),
                )
            })
            .collect();
        status::enqueue(tx, &steps).await?;
    }
    Ok(written)
}

/// Records the applied positions `(doctype, name, key)` in multi-row statements; positions
/// of other domains stay as they are.
async fn mark_applied(
    tx: &mut Transaction<'_>,
    marks: &[(&str, &str, EventKey)],
) -> Result<(), ReplicaError> {
    let rows = marks.iter().map(|(dt, n, k)| {
        vec![
            MyValue::from(*dt),
            MyValue::from(*n),
            MyValue::from(k.domain),
            MyValue::from(k.seq),
            MyValue::from(k.doc_index),
        ]
    });
    let sql = (
        "INSERT INTO `_frappe_cdc_applied` (doctype, name, domain_id, seq_no, doc_index, applied_at) VALUES ",
        Some("(?, ?, ?, ?, ?, current_timestamp(6))"),
        " ON DUPLICATE KEY UPDATE seq_no = VALUES(seq_no), doc_index = VALUES(doc_index), applied_at = VALUES(applied_at)",
    );
    upserts::send_prepared(tx, sql, 5, upserts::params_of(rows)).await
}

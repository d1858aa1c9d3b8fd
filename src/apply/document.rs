//! One document applied inside a replica transaction the caller owns: what the replica holds
//! is read and locked (its applied positions, I14; its copy, found the way the replica's
//! collation finds it, I12; an open conflict; the owners of the child rows it would write,
//! I7), the batch decision (`plan.rs`) runs with this one item, and the executor
//! (`execute.rs`) writes it document-wise (Singles field by field, renames moving their child
//! rows). The caller stores the offset in the same transaction and commits (I4); nothing here
//! commits, so a failure anywhere leaves nothing behind. Apply's one-message path uses it, and
//! the tests drive it directly.

use mysql_async::Transaction;

use super::control::{self, EventKey};
use super::decision::Comparator;
use super::execute::{self, Writer};
use super::outcome::Outcome;
use super::ownership;
use super::plan::{self, Seen};
use super::replica::{ReplicaError, SchemaCache, WriteReport, read_doc};
use crate::envelope::{Envelope, Op};

/// Applies `e` (at `key`) in `tx`; returns what happened and the columns the replica lacked.
/// `files`: record what an applied File document needs (`--files-to`).
pub async fn apply_document(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    cmp: &Comparator,
    e: &Envelope,
    key: EventKey,
    files: bool,
) -> Result<(Outcome, WriteReport), ReplicaError> {
    apply_document_held(tx, cache, cmp, e, key, false, files).await
}

/// [`apply_document`], with `hold` set when the document's source transaction is held
/// (another document of it conflicts, `plan.rs` step 5).
pub async fn apply_document_held(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    cmp: &Comparator,
    e: &Envelope,
    key: EventKey,
    hold: bool,
    files: bool,
) -> Result<(Outcome, WriteReport), ReplicaError> {
    let applied = control::last_applied(tx, &e.doctype, &e.name).await?;
    let lookup = e.old_name.as_deref().unwrap_or(&e.name);
    let (mut copy, mut copy_new, mut open, mut collisions) = (None, None, false, Vec::new());
    // A replay needs nothing else read (the decision skips it first).
    if !key.covered_by_any(&applied) {
        copy = read_doc(tx, cache, &e.doctype, lookup).await?;
        if e.op == Op::Rename {
            copy_new = read_doc(tx, cache, &e.doctype, &e.name).await?;
        }
        open = control::open_conflict(tx, &e.doctype, lookup)
            .await?
            .is_some();
        if plan::needs_ownership_check(e, key, &applied, open)
            && let Some(after) = &e.after
        {
            collisions =
                ownership::collisions(tx, cache, &e.doctype, &e.name, e.old_name.as_deref(), after)
                    .await?;
        }
    }
    let seen = [Seen {
        applied: &applied,
        open,
        copy: copy.as_ref(),
        copy_new: copy_new.as_ref(),
        collisions: &collisions,
        child_rows: &[],
        hold,
    }];
    let plan = plan::decide_batch(cmp, &[(e, key)], &seen);
    let written =
        execute::execute(tx, cache, &[e], &seen, &plan, Writer::PerDocument, files).await?;
    let outcome = plan.steps[0].outcome();
    Ok((
        outcome,
        WriteReport {
            missing_columns: written.missing_columns,
            decisions: written.decisions,
        },
    ))
}

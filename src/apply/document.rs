//! One document applied inside a replica transaction the caller owns: the duplicate check
//! against the document's applied positions (I14), the replica's locked copy (found the way
//! the replica's collation finds it, I12), an open conflict, the decision (`decision.rs`), the
//! ownership check of its child rows (I7), then the write and its applied positions, or the
//! conflict record. The caller stores the offset in the same transaction and commits (I4);
//! nothing here commits, so a failure anywhere leaves nothing behind. Apply's one-message path
//! uses it, and the tests drive it directly.

use mysql_async::Transaction;

use super::control::{self, ConflictRecord, EventKey};
use super::decision::{Comparator, Decision};
use super::outcome::{Outcome, reason_kind};
use super::ownership;
use super::replica::{ReplicaError, SchemaCache, WriteReport, read_doc, write_doc};
use crate::envelope::{Envelope, Op};

/// Applies `e` (at `key`) in `tx`; returns what happened and the columns the replica lacked.
pub async fn apply_document(
    tx: &mut Transaction<'_>,
    cache: &mut SchemaCache,
    cmp: &Comparator,
    e: &Envelope,
    key: EventKey,
) -> Result<(Outcome, WriteReport), ReplicaError> {
    if key.covered_by_any(&control::last_applied(tx, &e.doctype, &e.name).await?) {
        return Ok((Outcome::Duplicate, WriteReport::default()));
    }
    let lookup = e.old_name.as_deref().unwrap_or(&e.name);
    let copy = read_doc(tx, cache, &e.doctype, lookup).await?;
    let copy_new = if e.op == Op::Rename {
        read_doc(tx, cache, &e.doctype, &e.name).await?
    } else {
        None
    };
    let open = control::open_conflict(tx, &e.doctype, lookup).await?;
    let mut decision = if open.is_some() {
        Decision::Conflict("an earlier conflict of this document is still open".into())
    } else {
        cmp.decide(
            e.op,
            e.before.as_ref(),
            e.after.as_ref(),
            copy.as_ref(),
            copy_new.as_ref(),
        )
    };
    if decision == Decision::Apply
        && let Some(after) = &e.after
    {
        let found =
            ownership::collisions(tx, cache, &e.doctype, &e.name, e.old_name.as_deref(), after)
                .await?;
        if !found.is_empty() {
            decision = Decision::Conflict(ownership::reason(&found));
        }
    }
    match decision {
        Decision::Apply => {
            let report = write_doc(
                tx,
                cache,
                &e.doctype,
                &e.name,
                e.old_name.as_deref(),
                e.after.as_ref(),
            )
            .await?;
            control::mark_applied(tx, &e.doctype, &e.name, &EventKey::all_of(&e.source)).await?;
            if let Some(old) = &e.old_name {
                control::mark_applied(tx, &e.doctype, old, &EventKey::all_of(&e.source)).await?;
            }
            Ok((Outcome::Applied, report))
        }
        Decision::AlreadyApplied => {
            control::mark_applied(tx, &e.doctype, &e.name, &EventKey::all_of(&e.source)).await?;
            Ok((Outcome::AlreadyApplied, WriteReport::default()))
        }
        Decision::Conflict(reason) => {
            control::record_conflict(
                tx,
                &ConflictRecord {
                    doctype: &e.doctype,
                    name: lookup,
                    reason: &reason,
                    before: e.before.as_ref(),
                    after: e.after.as_ref(),
                    replica: copy.as_ref(),
                    source: &e.source,
                },
            )
            .await?;
            tracing::warn!(doctype = %e.doctype, reason = %reason_kind(&reason), "conflict recorded; document skipped");
            Ok((Outcome::Conflict, WriteReport::default()))
        }
    }
}

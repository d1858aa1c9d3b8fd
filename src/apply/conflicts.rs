//! Operator commands on recorded conflicts: list, show, resolve.
//!
//! `--accept-primary` writes the primary's latest version (the conflict's pending `after`
//! image) over the replica's copy; `--keep-local` keeps the replica's copy. Both close the
//! conflict and record its source position as applied, in one replica transaction, so
//! replays of the envelopes it absorbed are skipped; the next primary change to the document
//! is checked afresh against the replica's copy at that time.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, TxOpts};
use serde_json::Value;

use super::control::{self, EventKey};
use super::decision::Comparator;
use super::ownership;
use super::replica::{ReplicaError, SchemaCache, read_doc_plain, write_doc};
use crate::image::Image;

/// One conflict row.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub id: u64,
    pub doctype: String,
    pub name: String,
    pub status: String,
    pub resolution: Option<String>,
    pub reason: String,
    pub envelopes: u64,
    pub created_at: String,
    pub before: Option<Image>,
    pub after: Option<Image>,
    pub replica: Option<Image>,
    pub source_gtid: Option<String>,
    pub source_position: String,
    pub source_doc_index: u64,
    /// The policy of an automatic decision (status `auto`).
    pub policy: Option<String>,
    /// Seconds since the conflict was recorded.
    pub age_secs: i64,
}

/// Errors of conflict commands.
#[derive(Debug, thiserror::Error)]
pub enum ConflictError {
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("no conflict {0}")]
    NotFound(u64),
    #[error("conflict {0} is already resolved")]
    Resolved(u64),
    #[error(
        "conflict {id}: the primary's version cannot be accepted, it would take rows of another \
         document ({reason}); fix that document first or resolve with --keep-local"
    )]
    OwnedElsewhere { id: u64, reason: String },
}

impl From<mysql_async::Error> for ConflictError {
    fn from(e: mysql_async::Error) -> Self {
        ConflictError::Replica(e.into())
    }
}

const COLS: &str = "id, doctype, name, status, resolution, reason, envelopes, CAST(created_at AS CHAR), primary_before, primary_after, replica_copy, source_gtid, source_position, source_doc_index, policy, TIMESTAMPDIFF(SECOND, created_at, NOW(6))";

fn parse(row: Row) -> Option<Conflict> {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Some(Conflict {
        id: row.get(0)?,
        doctype: row.get(1)?,
        name: row.get(2)?,
        status: row.get(3)?,
        resolution: row.get::<Option<String>, _>(4)?,
        reason: row.get(5)?,
        envelopes: row.get(6)?,
        created_at: row.get(7)?,
        before: json(row.get::<Option<String>, _>(8)?),
        after: json(row.get::<Option<String>, _>(9)?),
        replica: json(row.get::<Option<String>, _>(10)?),
        source_gtid: row.get::<Option<String>, _>(11)?,
        source_position: row.get::<Option<String>, _>(12)?.unwrap_or_default(),
        source_doc_index: row.get(13)?,
        policy: row.get::<Option<String>, _>(14)?,
        age_secs: row.get::<Option<i64>, _>(15)?.unwrap_or(0),
    })
}

/// Which conflicts to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only these statuses (`open`, `resolved`, `auto`); all when empty.
    pub statuses: Vec<String>,
    /// Only this doctype.
    pub doctype: Option<String>,
    /// Only conflicts recorded at least this many seconds ago.
    pub min_age_secs: Option<u64>,
    /// At most this many, newest first when set (oldest first otherwise).
    pub limit: Option<u64>,
}

impl ListFilter {
    /// The open conflicts.
    pub fn open() -> Self {
        ListFilter {
            statuses: vec!["open".into()],
            ..ListFilter::default()
        }
    }

    /// The WHERE clause and its parameters.
    fn clause(&self) -> (String, Vec<mysql_async::Value>) {
        let mut conds = Vec::new();
        let mut params: Vec<mysql_async::Value> = Vec::new();
        if !self.statuses.is_empty() {
            conds.push(format!(
                "status IN ({})",
                vec!["?"; self.statuses.len()].join(",")
            ));
            params.extend(self.statuses.iter().map(|s| s.as_str().into()));
        }
        if let Some(d) = &self.doctype {
            conds.push("doctype = ?".into());
            params.push(d.as_str().into());
        }
        if let Some(a) = self.min_age_secs {
            conds.push("created_at <= NOW(6) - INTERVAL ? SECOND".into());
            params.push(a.into());
        }
        let w = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        (w, params)
    }
}

/// The conflicts `filter` selects, oldest first (newest first with a limit).
pub async fn list(conn: &mut Conn, filter: &ListFilter) -> Result<Vec<Conflict>, ConflictError> {
    control::ensure_conflicts_table(conn).await?;
    let (w, params) = filter.clause();
    let tail = match filter.limit {
        Some(n) => format!(" ORDER BY id DESC LIMIT {n}"),
        None => " ORDER BY id".into(),
    };
    let rows: Vec<Row> = conn
        .exec(
            format!("SELECT {COLS} FROM `_frappe_cdc_conflicts`{w}{tail}"),
            params,
        )
        .await?;
    Ok(rows.into_iter().filter_map(parse).collect())
}

/// Conflicts per doctype and status among those `filter` selects (its limit aside).
pub async fn counts(
    conn: &mut Conn,
    filter: &ListFilter,
) -> Result<Vec<(String, String, u64)>, ConflictError> {
    control::ensure_conflicts_table(conn).await?;
    let (w, params) = filter.clause();
    Ok(conn
        .exec(
            format!("SELECT doctype, status, COUNT(*) FROM `_frappe_cdc_conflicts`{w} GROUP BY doctype, status ORDER BY doctype, status"),
            params,
        )
        .await?)
}

/// One conflict.
pub async fn get(conn: &mut Conn, id: u64) -> Result<Conflict, ConflictError> {
    control::ensure_conflicts_table(conn).await?;
    let row: Option<Row> = conn
        .exec_first(
            format!("SELECT {COLS} FROM `_frappe_cdc_conflicts` WHERE id = ?"),
            (id,),
        )
        .await?;
    row.and_then(parse).ok_or(ConflictError::NotFound(id))
}

/// The replica's copy of the conflict's document as it is now.
pub async fn replica_now(conn: &mut Conn, c: &Conflict) -> Result<Option<Image>, ConflictError> {
    let mut cache = SchemaCache::default();
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let now = read_doc_plain(&mut tx, &mut cache, &c.doctype, &c.name).await?;
    tx.commit().await?;
    Ok(now)
}

/// A conflict with the replica's current copy and column differences, as JSON for `show`.
pub async fn show(conn: &mut Conn, id: u64, cmp: &Comparator) -> Result<Value, ConflictError> {
    let c = get(conn, id).await?;
    let now = replica_now(conn, &c).await?;
    Ok(serde_json::json!({
        "id": c.id, "doctype": c.doctype, "name": c.name, "status": c.status, "resolution": c.resolution, "policy": c.policy,
        "reason": c.reason, "envelopes": c.envelopes, "created_at": c.created_at,
        "source": {"gtid": c.source_gtid, "position": c.source_position, "doc_index": c.source_doc_index},
        "replica_differs_from_primary_before": cmp.diff(c.before.as_ref(), now.as_ref()),
        "primary_before": c.before, "primary_after": c.after, "replica_at_conflict": c.replica, "replica_now": now,
    }))
}

/// How to resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    AcceptPrimary,
    KeepLocal,
}

/// Resolves an open conflict.
pub async fn resolve(conn: &mut Conn, id: u64, how: Resolution) -> Result<(), ConflictError> {
    control::ensure_conflicts_table(conn).await?;
    let mut cache = SchemaCache::default();
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    // Locked: apply folds a newer primary version into an open conflict under the same row
    // lock, so the version written or kept here is the latest one, never one read before a
    // fold that then lands on a closed record.
    let row: Option<Row> = tx
        .exec_first(
            format!("SELECT {COLS} FROM `_frappe_cdc_conflicts` WHERE id = ? FOR UPDATE"),
            (id,),
        )
        .await?;
    let c = row.and_then(parse).ok_or(ConflictError::NotFound(id))?;
    if c.status != "open" {
        return Err(ConflictError::Resolved(id));
    }
    let target = c
        .after
        .as_ref()
        .and_then(|a| a.parent.as_ref()?.str("name"))
        .unwrap_or(&c.name)
        .to_string();
    if how == Resolution::AcceptPrimary {
        let old = (target != c.name).then_some(c.name.as_str());
        if let Some(after) = &c.after {
            let found =
                ownership::collisions(&mut tx, &mut cache, &c.doctype, &target, old, after).await?;
            if !found.is_empty() {
                return Err(ConflictError::OwnedElsewhere {
                    id,
                    reason: ownership::reason(&found),
                });
            }
        }
        write_doc(
            &mut tx,
            &mut cache,
            &c.doctype,
            &target,
            old,
            c.after.as_ref(),
        )
        .await?;
    }
    if let Some(key) = EventKey::from_parts(
        c.source_gtid.as_deref(),
        &c.source_position,
        c.source_doc_index,
    ) {
        control::mark_applied(&mut tx, &c.doctype, &c.name, &[key]).await?;
        if target != c.name {
            control::mark_applied(&mut tx, &c.doctype, &target, &[key]).await?;
        }
    }
    let label = match how {
        Resolution::AcceptPrimary => "accept_primary",
        Resolution::KeepLocal => "keep_local",
    };
    tx.exec_drop(
        "UPDATE `_frappe_cdc_conflicts` SET status = 'resolved', resolution = ?, resolved_at = current_timestamp(6) WHERE id = ? AND status = 'open'",
        (label, id),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

//! frappe-cdc's own tables on the replica (never `tab*`, so Frappe ignores them), written in
//! the same replica transaction as the document they describe:
//!
//! * `_frappe_cdc_applied`: per document, the source position of the last envelope applied
//!   (kept after a delete or rename, so older replays are recognised). An envelope at or
//!   before it is a duplicate from a capture restart and is skipped, which is what makes
//!   at-least-once delivery exactly-once in effect.
//! * `_frappe_cdc_offsets`: the next Kafka offset per topic partition; the consumer seeks
//!   there on start, so a crash between the write and a Kafka commit loses nothing and
//!   repeats nothing.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Transaction};

use super::replica::ReplicaError;
use crate::envelope::Source;
use crate::image::Image;
use crate::position::{Gtid, GtidPosition};

/// Order of envelopes for one document within a GTID domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventKey {
    pub domain: u32,
    pub seq: u64,
    pub doc_index: u64,
}

impl EventKey {
    /// The key of an envelope: its transaction's GTID, or for a snapshot the snapshot
    /// position (the first domain's sequence; 0 on a server without GTIDs yet).
    pub fn of(source: &Source) -> Option<EventKey> {
        Self::from_parts(source.gtid.as_deref(), &source.position, source.doc_index)
    }

    /// The key from a transaction GTID (None for a snapshot), the position and the index.
    pub fn from_parts(gtid: Option<&str>, position: &str, doc_index: u64) -> Option<EventKey> {
        let (domain, seq) = match gtid {
            Some(g) => {
                let g: Gtid = g.parse().ok()?;
                (g.domain_id, g.seq_no)
            }
            None => {
                let p: GtidPosition = position.parse().ok()?;
                p.iter().next().map_or((0, 0), |g| (g.domain_id, g.seq_no))
            }
        };
        Some(EventKey {
            domain,
            seq,
            doc_index,
        })
    }

    /// True when `self` is at or before `other` (same domain only; other domains are not
    /// comparable and never count as duplicates).
    pub fn covered_by(&self, other: &EventKey) -> bool {
        self.domain == other.domain && (self.seq, self.doc_index) <= (other.seq, other.doc_index)
    }

    /// True when one of a document's applied positions (one per GTID domain) covers `self`
    /// (I14, ARCHITECTURE.md).
    pub fn covered_by_any(&self, applied: &[EventKey]) -> bool {
        applied.iter().any(|l| self.covered_by(l))
    }

    /// The applied positions an envelope leaves behind, one per GTID domain it covers: a
    /// change, its transaction's domain; a snapshot, every domain of the snapshot position
    /// (the document then reflects every transaction before it, in all domains, so a replay
    /// of any of them is a duplicate).
    pub fn all_of(source: &Source) -> Vec<EventKey> {
        if source.gtid.is_none()
            && let Ok(p) = source.position.parse::<GtidPosition>()
        {
            let keys: Vec<EventKey> = p
                .iter()
                .map(|g| EventKey {
                    domain: g.domain_id,
                    seq: g.seq_no,
                    doc_index: source.doc_index,
                })
                .collect();
            if !keys.is_empty() {
                return keys;
            }
        }
        EventKey::of(source).into_iter().collect()
    }
}

/// Creates the control tables if missing.
pub async fn ensure_tables(conn: &mut Conn) -> Result<(), ReplicaError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS `_frappe_cdc_applied` (
           `doctype` varchar(140) NOT NULL, `name` varchar(255) NOT NULL,
           `domain_id` int unsigned NOT NULL, `seq_no` bigint unsigned NOT NULL, `doc_index` bigint unsigned NOT NULL,
           `applied_at` datetime(6) NOT NULL DEFAULT current_timestamp(6),
           PRIMARY KEY (`doctype`, `name`, `domain_id`)
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    )
    .await?;
    // Replicas set up before positions were kept per GTID domain: one row per document.
    let key_columns: Option<u64> = conn
        .query_first(
            "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() \
             AND table_name = '_frappe_cdc_applied' AND index_name = 'PRIMARY'",
        )
        .await?;
    if key_columns == Some(2) {
        tracing::info!(
            "upgrading _frappe_cdc_applied to one applied position per document and GTID domain"
        );
        conn.query_drop(
            "ALTER TABLE `_frappe_cdc_applied` DROP PRIMARY KEY, ADD PRIMARY KEY (`doctype`, `name`, `domain_id`)",
        )
        .await?;
    }
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS `_frappe_cdc_offsets` (
           `consumer_group` varchar(255) NOT NULL, `topic` varchar(255) NOT NULL, `kafka_partition` int NOT NULL,
           `next_offset` bigint NOT NULL, `updated_at` datetime(6) NOT NULL DEFAULT current_timestamp(6),
           PRIMARY KEY (`consumer_group`, `topic`, `kafka_partition`)
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    )
    .await?;
    Ok(())
}

/// The applied positions of a document, one per GTID domain (locked until the transaction
/// ends).
pub async fn last_applied(
    tx: &mut Transaction<'_>,
    doctype: &str,
    name: &str,
) -> Result<Vec<EventKey>, ReplicaError> {
    let rows: Vec<(u32, u64, u64)> = tx
        .exec("SELECT domain_id, seq_no, doc_index FROM `_frappe_cdc_applied` WHERE doctype = ? AND name = ? FOR UPDATE", (doctype, name))
        .await?;
    Ok(rows
        .into_iter()
        .map(|(domain, seq, doc_index)| EventKey {
            domain,
            seq,
            doc_index,
        })
        .collect())
}

/// Records that the document's envelope at `keys` (one per domain, `EventKey::all_of`) was
/// handled; positions of other domains stay as they are.
pub async fn mark_applied(
    tx: &mut Transaction<'_>,
    doctype: &str,
    name: &str,
    keys: &[EventKey],
) -> Result<(), ReplicaError> {
    for key in keys {
        tx.exec_drop(
            "INSERT INTO `_frappe_cdc_applied` (doctype, name, domain_id, seq_no, doc_index, applied_at) VALUES (?, ?, ?, ?, ?, current_timestamp(6)) \
             ON DUPLICATE KEY UPDATE seq_no = VALUES(seq_no), doc_index = VALUES(doc_index), applied_at = VALUES(applied_at)",
            (doctype, name, key.domain, key.seq, key.doc_index),
        )
        .await?;
    }
    Ok(())
}

/// Stores the next offset to consume for a partition.
pub async fn store_offset(
    tx: &mut Transaction<'_>,
    group: &str,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<(), ReplicaError> {
    tx.exec_drop(
        "INSERT INTO `_frappe_cdc_offsets` (consumer_group, topic, kafka_partition, next_offset, updated_at) VALUES (?, ?, ?, ?, current_timestamp(6)) \
         ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset), updated_at = VALUES(updated_at)",
        (group, topic, partition, next),
    )
    .await?;
    Ok(())
}

/// The stored next offsets of a topic, by partition.
pub async fn stored_offsets(
    conn: &mut Conn,
    group: &str,
    topic: &str,
) -> Result<Vec<(i32, i64)>, ReplicaError> {
    Ok(conn
        .exec("SELECT kafka_partition, next_offset FROM `_frappe_cdc_offsets` WHERE consumer_group = ? AND topic = ?", (group, topic))
        .await?)
}

/// Creates the conflicts table if missing.
pub async fn ensure_conflicts_table(conn: &mut Conn) -> Result<(), ReplicaError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS `_frappe_cdc_conflicts` (
           `id` bigint unsigned NOT NULL AUTO_INCREMENT,
           `doctype` varchar(140) NOT NULL, `name` varchar(255) NOT NULL,
           `status` varchar(16) NOT NULL DEFAULT 'open',
           `reason` text NOT NULL,
           `primary_before` longtext, `primary_after` longtext, `replica_copy` longtext,
           `source_gtid` varchar(64), `source_position` varchar(255), `source_doc_index` bigint unsigned NOT NULL DEFAULT 0,
           `envelopes` int unsigned NOT NULL DEFAULT 1,
           `created_at` datetime(6) NOT NULL DEFAULT current_timestamp(6),
           `updated_at` datetime(6) NOT NULL DEFAULT current_timestamp(6),
           `resolved_at` datetime(6) NULL, `resolution` varchar(32) NULL,
           `policy` varchar(32) NULL,
           PRIMARY KEY (`id`), KEY `doc` (`doctype`, `name`, `status`)
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    )
    .await?;
    // Tables made before conflict policies: the policy of an automatic decision.
    conn.query_drop(
        "ALTER TABLE `_frappe_cdc_conflicts` ADD COLUMN IF NOT EXISTS `policy` varchar(32) NULL",
    )
    .await?;
    Ok(())
}

/// The open conflict of a document, if any.
pub async fn open_conflict(
    tx: &mut Transaction<'_>,
    doctype: &str,
    name: &str,
) -> Result<Option<u64>, ReplicaError> {
    Ok(tx
        .exec_first("SELECT id FROM `_frappe_cdc_conflicts` WHERE doctype = ? AND name = ? AND status = 'open' ORDER BY id LIMIT 1 FOR UPDATE", (doctype, name))
        .await?)
}

/// One conflict to record.
pub struct ConflictRecord<'a> {
    pub doctype: &'a str,
    pub name: &'a str,
    pub reason: &'a str,
    pub before: Option<&'a Image>,
    pub after: Option<&'a Image>,
    pub replica: Option<&'a Image>,
    pub source: &'a Source,
}

fn json_text(v: Option<&Image>) -> Option<String> {
    v.and_then(|v| serde_json::to_string(v).ok())
}

/// Records a new conflict, or moves an open one's pending primary version forward.
pub async fn record_conflict(
    tx: &mut Transaction<'_>,
    c: &ConflictRecord<'_>,
) -> Result<u64, ReplicaError> {
    if let Some(id) = open_conflict(tx, c.doctype, c.name).await? {
        tx.exec_drop(
            "UPDATE `_frappe_cdc_conflicts` SET primary_after = ?, source_gtid = ?, source_position = ?, source_doc_index = ?, \
             envelopes = envelopes + 1, updated_at = current_timestamp(6) WHERE id = ?",
            (json_text(c.after), c.source.gtid.clone(), c.source.position.clone(), c.source.doc_index, id),
        )
        .await?;
        return Ok(id);
    }
    tx.exec_drop(
        "INSERT INTO `_frappe_cdc_conflicts` (doctype, name, reason, primary_before, primary_after, replica_copy, source_gtid, source_position, source_doc_index) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (c.doctype, c.name, c.reason, json_text(c.before), json_text(c.after), json_text(c.replica), c.source.gtid.clone(), c.source.position.clone(), c.source.doc_index),
    )
    .await?;
    Ok(tx.last_insert_id().unwrap_or(0))
}

/// Audits a conflict its policy decided: a closed record with status `auto`, the policy and
/// what it did (`accept_primary`, `keep_local`, `merged`), in the transaction that carries it
/// out.
pub async fn record_auto(
    tx: &mut Transaction<'_>,
    c: &ConflictRecord<'_>,
    policy: &str,
    decision: &str,
) -> Result<u64, ReplicaError> {
    tx.exec_drop(
        "INSERT INTO `_frappe_cdc_conflicts` (doctype, name, status, reason, primary_before, primary_after, replica_copy, source_gtid, source_position, source_doc_index, resolution, policy, resolved_at) \
         VALUES (?, ?, 'auto', ?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp(6))",
        (c.doctype, c.name, c.reason, json_text(c.before), json_text(c.after), json_text(c.replica), c.source.gtid.clone(), c.source.position.clone(), c.source.doc_index, decision, policy),
    )
    .await?;
    Ok(tx.last_insert_id().unwrap_or(0))
}

/// Keeps `gauge` equal to the number of open conflicts in the replica's table (resolving one
/// with `conflicts resolve`, from another process, brings it down), read every `every`. The
/// task ends when the returned guard is dropped.
pub fn watch_open_conflicts(
    pool: mysql_async::Pool,
    (gauge, oldest): (prometheus::IntGauge, prometheus::IntGauge),
    every: std::time::Duration,
) -> tokio_util::sync::DropGuard {
    let stop = tokio_util::sync::CancellationToken::new();
    let done = stop.clone();
    tokio::spawn(async move {
        loop {
            let open: Result<Option<(u64, Option<i64>)>, mysql_async::Error> = async {
                pool.get_conn()
                    .await?
                    .query_first(
                        "SELECT COUNT(*), TIMESTAMPDIFF(SECOND, MIN(created_at), NOW(6)) FROM `_frappe_cdc_conflicts` WHERE status = 'open'",
                    )
                    .await
            }
            .await;
            match open {
                Ok(n) => {
                    let (n, age) = n.unwrap_or((0, None));
                    gauge.set(n as i64);
                    oldest.set(age.unwrap_or(0).max(0));
                }
                Err(e) => tracing::debug!(error = %e, "cannot count open conflicts"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = done.cancelled() => return,
            }
        }
    });
    stop.drop_guard()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(gtid: Option<&str>, position: &str, doc_index: u64) -> Source {
        Source {
            server_id: 1,
            db: "d".into(),
            gtid: gtid.map(String::from),
            position: position.into(),
            file: String::new(),
            pos: 0,
            commit_ts: 0,
            doc_index,
            doc_count: 1,
            snapshot: gtid.is_none(),
        }
    }

    #[test]
    fn positions_per_domain() {
        let k = |d, s, i| EventKey {
            domain: d,
            seq: s,
            doc_index: i,
        };
        // A change leaves its own domain's position; a snapshot one per domain.
        assert_eq!(
            EventKey::all_of(&src(Some("1-1-7"), "0-1-9,1-1-7", 2)),
            [k(1, 7, 2)]
        );
        assert_eq!(
            EventKey::all_of(&src(None, "0-1-9,1-1-7", 3)),
            [k(0, 9, 3), k(1, 7, 3)]
        );
        assert_eq!(EventKey::all_of(&src(None, "", 0)), [k(0, 0, 0)]);
        // A replay is covered only by its own domain's position.
        let applied = [k(0, 9, 0), k(1, 3, 0)];
        assert!(k(0, 5, 0).covered_by_any(&applied));
        assert!(k(1, 3, 0).covered_by_any(&applied));
        assert!(!k(1, 4, 0).covered_by_any(&applied));
        assert!(!k(2, 1, 0).covered_by_any(&applied));
        assert!(!k(0, 5, 0).covered_by_any(&[]));
    }

    #[test]
    fn ordering_of_snapshot_and_changes() {
        let snap = EventKey::of(&src(None, "0-1-10", 500)).unwrap();
        let change = EventKey::of(&src(Some("0-1-11"), "0-1-11", 0)).unwrap();
        assert!(snap.covered_by(&change));
        assert!(!change.covered_by(&snap));
        assert!(
            change.covered_by(&change),
            "a replay of the same envelope is a duplicate"
        );
        let other_domain = EventKey::of(&src(Some("1-1-5"), "1-1-5", 0)).unwrap();
        assert!(!other_domain.covered_by(&change) && !change.covered_by(&other_domain));
        assert_eq!(
            EventKey::of(&src(None, "", 3)).unwrap(),
            EventKey {
                domain: 0,
                seq: 0,
                doc_index: 3
            }
        );
        assert!(EventKey::of(&src(Some("garbage"), "", 0)).is_none());
    }
}

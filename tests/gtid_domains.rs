//! A primary writing in two GTID domains (e.g. two masters of a multi-source setup, or a
//! session with another `gtid_domain_id`): sequence numbers of different domains are not
//! comparable, so apply keeps one applied position per document and domain. A resent envelope
//! of one domain must be a duplicate even after the document changed in the other domain.
//! (Own test binary: the domain it adds to the primary's GTID position would reach other
//! tests sharing the primary.)

mod common;

use std::time::{Duration, Instant};

use common::rig::Rig;
use common::servers::free_port;
use common::topic::{read_all, send_raw};
use mysql_async::prelude::Queryable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_change_of_one_domain_stays_a_duplicate_after_the_other_domain_moved() {
    let rig = Rig::new("domains").await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    f.insert_customer("CUST-D", "Retail").await;
    rig.capture().await; // the snapshot; the changes below are binlog envelopes
    let mut p = rig.primary().conn(&rig.db).await;
    // Domain 0: v1 -> v2. Domain 1: v2 -> v1 again (a revert, so the stale replay's before
    // image equals the replica's copy and content alone cannot tell it is old).
    p.query_drop("SET SESSION gtid_domain_id = 0")
        .await
        .expect("domain 0");
    p.query_drop("UPDATE `tabCustomer` SET customer_name = 'v2' WHERE name = 'CUST-D'")
        .await
        .expect("v2");
    p.query_drop("SET SESSION gtid_domain_id = 1")
        .await
        .expect("domain 1");
    p.query_drop("UPDATE `tabCustomer` SET customer_name = 'CUST-D Ltd' WHERE name = 'CUST-D'")
        .await
        .expect("back to v1");
    p.query_drop("SET SESSION gtid_domain_id = 0")
        .await
        .expect("domain 0 again");
    rig.capture().await;
    let msgs = read_all(&rig.bootstrap(), &rig.topic);
    let domains: Vec<&str> = msgs
        .iter()
        .filter_map(|m| m.value.as_ref()?["source"]["gtid"].as_str())
        .collect();
    assert!(
        domains.iter().any(|g| g.starts_with("0-")) && domains.iter().any(|g| g.starts_with("1-")),
        "changes in both domains: {domains:?}"
    );
    let port = free_port();
    let _apply = rig.spawn_apply(&rurl, port, &[]);
    rig.wait_in_sync(&rurl, Duration::from_secs(60), "both domains")
        .await;
    // Capture after a crash resends envelopes after its checkpoint: the domain-0 change again.
    let replay = msgs
        .iter()
        .find(|m| {
            m.value.as_ref().is_some_and(|v| {
                v["doctype"] == "Customer"
                    && v["source"]["gtid"]
                        .as_str()
                        .is_some_and(|g| g.starts_with("0-"))
                    && v["after"]["parent"]["customer_name"] == "v2"
            })
        })
        .expect("the domain-0 change");
    send_raw(
        &rig.bootstrap(),
        &rig.topic,
        &[(
            Some(serde_json::to_vec(&replay.key).expect("key")),
            replay
                .value
                .as_ref()
                .map(|v| serde_json::to_vec(v).expect("value")),
        )],
    );
    let end = read_all(&rig.bootstrap(), &rig.topic).len() as i64;
    let mut r = replica.conn(&rig.db).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let next: Option<i64> = r
            .query_first("SELECT MAX(next_offset) FROM `_frappe_cdc_offsets`")
            .await
            .expect("offsets");
        if next >= Some(end) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replay never consumed: {next:?} < {end}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (name, conflicts): (Option<String>, Option<u64>) = r
        .query_first("SELECT (SELECT customer_name FROM `tabCustomer` WHERE name = 'CUST-D'), (SELECT COUNT(*) FROM `_frappe_cdc_conflicts`)")
        .await
        .expect("state")
        .unwrap_or((None, None));
    assert_eq!(
        name.as_deref(),
        Some("CUST-D Ltd"),
        "the stale replay must not win"
    );
    assert_eq!(conflicts, Some(0), "nor be a conflict");
    let positions: Vec<(u32, u64)> = r
        .query("SELECT domain_id, seq_no FROM `_frappe_cdc_applied` WHERE doctype = 'Customer' AND name = 'CUST-D' ORDER BY domain_id")
        .await
        .expect("positions");
    assert_eq!(
        positions.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
        [0, 1],
        "one applied position per domain: {positions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_one_position_per_document_is_upgraded_in_place() {
    let rig = Rig::new("upgrade").await;
    let (replica, _) = rig.replica().await;
    let mut r = replica.conn(&rig.db).await;
    r.query_drop(
        "CREATE TABLE `_frappe_cdc_applied` (`doctype` varchar(140) NOT NULL, `name` varchar(255) NOT NULL, \
         `domain_id` int unsigned NOT NULL, `seq_no` bigint unsigned NOT NULL, `doc_index` bigint unsigned NOT NULL, \
         `applied_at` datetime(6) NOT NULL DEFAULT current_timestamp(6), PRIMARY KEY (`doctype`, `name`)) \
         ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
    )
    .await
    .expect("old layout");
    r.query_drop("INSERT INTO `_frappe_cdc_applied` (doctype, name, domain_id, seq_no, doc_index) VALUES ('Customer', 'C1', 0, 42, 0)")
        .await
        .expect("old row");
    frappe_cdc::apply::control::ensure_tables(&mut r)
        .await
        .expect("upgrade");
    let key: Vec<String> = r
        .query("SELECT column_name FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = '_frappe_cdc_applied' AND index_name = 'PRIMARY' ORDER BY seq_in_index")
        .await
        .expect("key");
    assert_eq!(key, ["doctype", "name", "domain_id"]);
    let seq: Option<u64> = r
        .query_first("SELECT seq_no FROM `_frappe_cdc_applied` WHERE doctype = 'Customer' AND name = 'C1' AND domain_id = 0")
        .await
        .expect("row");
    assert_eq!(seq, Some(42), "positions survive the upgrade");
    // Idempotent.
    frappe_cdc::apply::control::ensure_tables(&mut r)
        .await
        .expect("second run");
}

//! The replica layer against real servers: envelopes captured from every write path are
//! applied to a separate replica MariaDB through apply's one-document path (`apply_document`:
//! duplicate check, `read_doc`, `decide`, ownership, `write_doc`; one replica transaction
//! each); afterwards every document on the replica equals the primary.
//! A document edited on the replica is detected as a conflict and left untouched.

mod common;

use common::doc_image;
use common::rig::Rig;
use common::servers::Mariadb;
use common::topic::{Msg, doc_keys};
use common::workload::{Child, Frappe, Invoice};
use frappe_cdc::apply::control::{EventKey, ensure_conflicts_table, ensure_tables};
use frappe_cdc::apply::decision::Comparator;
use frappe_cdc::apply::document::apply_document;
use frappe_cdc::apply::outcome::Outcome;
use frappe_cdc::apply::replica::SchemaCache;
use frappe_cdc::envelope::Envelope;
use mysql_async::TxOpts;
use mysql_async::prelude::Queryable;

/// Applies envelopes in order through apply's own one-document path (`apply_document`), one
/// replica transaction each; returns what happened to each.
async fn apply(
    replica: &mut mysql_async::Conn,
    cache: &mut SchemaCache,
    msgs: &[Msg],
) -> Vec<(String, Outcome)> {
    let cmp = Comparator::new(
        frappe_cdc::frappe::catalog::IGNORED_COLUMNS
            .iter()
            .map(|s| s.to_string()),
    );
    let mut out = Vec::new();
    for m in msgs {
        let Some(v) = &m.value else { continue };
        let e: Envelope = serde_json::from_value(v.clone()).expect("envelope");
        let key = EventKey::of(&e.source).expect("source position");
        let mut tx = replica
            .start_transaction(TxOpts::default())
            .await
            .expect("tx");
        let (outcome, report) = apply_document(&mut tx, cache, &cmp, &e, key, false)
            .await
            .expect("apply");
        assert!(
            report.missing_columns.is_empty(),
            "replica has the same schema: {report:?}"
        );
        tx.commit().await.expect("commit");
        out.push((format!("{} {}", e.doctype, e.name), outcome));
    }
    out
}

async fn assert_same(
    primary: &mut mysql_async::Conn,
    replica: &mut mysql_async::Conn,
    keys: &[(String, String)],
) {
    for (d, n) in keys {
        assert_eq!(
            doc_image(replica, d, n).await,
            doc_image(primary, d, n).await,
            "{d} {n} differs between replica and primary"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_envelopes_make_the_replica_equal() {
    let mut rig = Rig::new("replica").await;
    let r = Mariadb::start(&[]);
    r.create_site(&rig.db).await;
    let mut replica = r.conn(&rig.db).await;
    ensure_tables(&mut replica).await.expect("control tables");
    ensure_conflicts_table(&mut replica)
        .await
        .expect("conflicts table");
    let mut primary = rig.primary().conn(&rig.db).await;
    let mut cache = SchemaCache::default();
    // The replica starts from the fixture's rows too: the snapshot finds them already there.
    let mut f = rig.frappe().await;
    f.insert_customer("C1", "Commercial").await;
    f.insert_sales_order("SO-1", "C1", "SO-1-it0").await;
    let mut all = rig.round().await;
    let decisions = apply(&mut replica, &mut cache, &all).await;
    assert!(
        decisions.iter().any(|(_, d)| *d == Outcome::AlreadyApplied),
        "fixture documents already equal: {decisions:?}"
    );

    let mut inv = Invoice::draft("SINV-1", "C1", 3);
    f.insert_invoice(&inv).await;
    inv.children.retain(|c| c.name != "SINV-1-it1");
    inv.children.push(Child {
        name: "SINV-1-it9".into(),
        field: "items",
        cols: vec![
            ("item_code", "ITEM-9".into()),
            ("qty", "1.000000000".into()),
        ],
    });
    f.save_invoice(&inv).await;
    f.submit_invoice(&mut inv, "SO-1", "SO-1-it0").await;
    f.rename_customer("C1", "C1-renamed").await;
    f.save_single("Selling Settings", &[("cust_master_name", "Naming Series")])
        .await;
    f.tree_insert("Retail", "All Customer Groups").await;
    let draft = Invoice::draft("SINV-2", "C1-renamed", 2);
    f.insert_invoice(&draft).await;
    f.delete_invoice(&draft).await;
    let ms = rig.round().await;
    let decisions = apply(&mut replica, &mut cache, &ms).await;
    assert!(
        decisions.iter().all(|(_, d)| *d == Outcome::Applied),
        "every change applies cleanly: {decisions:?}"
    );
    all.extend(ms);
    let keys = doc_keys(&all, |_| true);
    assert_same(&mut primary, &mut replica, &keys).await;
    assert!(
        doc_image(&mut replica, "Customer", "C1").await.is_none(),
        "renamed away"
    );
    assert!(
        doc_image(&mut replica, "Sales Invoice", "SINV-2")
            .await
            .is_none(),
        "deleted"
    );

    // Replaying everything (a capture restart) changes nothing and raises no conflict.
    let again = apply(&mut replica, &mut cache, &all).await;
    assert!(
        again.iter().all(|(_, d)| *d != Outcome::Conflict),
        "replays must not conflict: {again:?}"
    );

    // A local edit on the replica, then a change of the same field on the primary: conflict,
    // replica untouched.
    let mut local = Frappe::new(r.conn(&rig.db).await);
    local
        .db_set(
            "tabSales Invoice",
            "SINV-1",
            "status",
            "Overdue".into(),
            true,
        )
        .await;
    let local_copy = doc_image(&mut replica, "Sales Invoice", "SINV-1").await;
    f.db_set("tabSales Invoice", "SINV-1", "status", "Paid".into(), true)
        .await;
    f.db_set("tabSales Order", "SO-1", "status", "Completed".into(), true)
        .await;
    let ms = rig.round().await;
    let decisions = apply(&mut replica, &mut cache, &ms).await;
    assert_eq!(
        decisions[0],
        ("Sales Invoice SINV-1".to_string(), Outcome::Conflict)
    );
    let why: Option<String> = replica
        .query_first("SELECT reason FROM `_frappe_cdc_conflicts` WHERE name = 'SINV-1'")
        .await
        .expect("reason");
    let why = why.unwrap_or_default();
    assert!(why.contains("parent.status"), "{why}");
    assert_eq!(
        decisions[1].1,
        Outcome::Applied,
        "other documents keep flowing"
    );
    assert_eq!(
        doc_image(&mut replica, "Sales Invoice", "SINV-1").await,
        local_copy,
        "conflicting document untouched"
    );
    assert_same(
        &mut primary,
        &mut replica,
        &[("Sales Order".into(), "SO-1".into())],
    )
    .await;
}

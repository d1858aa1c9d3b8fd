//! One integration test per Frappe write path, on a real MariaDB primary and a real broker:
//! each asserts the exact envelopes (op, key, before/after images, child order, source).

mod common;

use common::doc_image;
use common::rig::Rig;
use common::topic::Msg;
use common::workload::Frappe;
use common::workload::{Child, Invoice};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

fn key(m: &Msg) -> (String, String) {
    (
        m.key["doctype"].as_str().unwrap_or("").to_string(),
        m.key["name"].as_str().unwrap_or("").to_string(),
    )
}

fn env(m: &Msg) -> &Value {
    m.value
        .as_ref()
        .unwrap_or_else(|| panic!("expected an envelope, got a tombstone for {:?}", m.key))
}

/// Asserts one envelope's key, op and images.
fn assert_envelope(
    m: &Msg,
    doctype: &str,
    name: &str,
    op: &str,
    before: &Option<Value>,
    after: &Option<Value>,
) {
    assert_eq!(key(m), (doctype.to_string(), name.to_string()), "key");
    let e = env(m);
    assert_eq!(e["version"], 1);
    assert_eq!(e["op"], op, "op of {doctype} {name}");
    assert_eq!(e["doctype"], doctype);
    assert_eq!(e["name"], name);
    assert_eq!(
        e["before"],
        before.clone().unwrap_or(Value::Null),
        "before image of {doctype} {name}"
    );
    assert_eq!(
        e["after"],
        after.clone().unwrap_or(Value::Null),
        "after image of {doctype} {name}"
    );
}

fn keys(ms: &[Msg]) -> Vec<(String, String, bool)> {
    for m in ms {
        common::schema::assert_key(&m.key);
        if let Some(v) = &m.value {
            common::schema::assert_envelope(v);
        }
    }
    ms.iter()
        .map(|m| {
            let (d, n) = key(m);
            (d, n, m.value.is_some())
        })
        .collect()
}

fn k(d: &str, n: &str, v: bool) -> (String, String, bool) {
    (d.to_string(), n.to_string(), v)
}

/// A site with customer C1 (with a Sales Team row), Sales Order SO-1 and, if `with_invoice`,
/// Sales Invoice SINV-1 (3 items), all captured by the initial snapshot.
async fn site(tag: &str, with_invoice: bool) -> (Rig, Frappe, Conn, Invoice, Vec<Msg>) {
    let mut rig = Rig::new(tag).await;
    let mut f = rig.frappe().await;
    let db = rig.primary().conn(&rig.db).await;
    f.insert_customer("C1", "Commercial").await;
    f.insert_sales_order("SO-1", "C1", "SO-1-it0").await;
    let inv = Invoice::draft("SINV-1", "C1", 3);
    if with_invoice {
        f.insert_invoice(&inv).await;
    }
    let snap = rig.round().await;
    keys(&snap);
    (rig, f, db, inv, snap)
}

fn items(m: &Msg) -> Vec<String> {
    env(m)["after"]["children"]["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_emits_every_tracked_document() {
    let (mut rig, _f, mut db, _, snap) = site("snap", false).await;
    let mut got: Vec<(String, String)> = snap.iter().map(key).collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("Customer", "C1"),
        ("Customer Group", "All Customer Groups"),
        ("Customer Group", "Commercial"),
        ("Customer Group", "Individual"),
        ("Sales Order", "SO-1"),
        ("Selling Settings", "Selling Settings"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    want.sort();
    assert_eq!(
        got, want,
        "snapshot documents: tracked doctypes only (no Version, DocType, Series)"
    );
    for (i, m) in snap.iter().enumerate() {
        let e = env(m);
        assert_eq!(e["op"], "snapshot");
        assert_eq!(e["source"]["snapshot"], true);
        assert_eq!(e["source"]["doc_index"], i as u64);
        assert_eq!(e["source"]["doc_count"], snap.len() as u64);
        assert_eq!(e["before"], Value::Null);
        let (d, n) = key(m);
        assert_eq!(
            Some(e["after"].clone()),
            doc_image(&mut db, &d, &n).await,
            "snapshot image of {d} {n}"
        );
    }
    let customer = snap
        .iter()
        .find(|m| key(m).0 == "Customer")
        .map(env)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        customer["after"]["children"]["sales_team"][0]["parenttype"], "Customer",
        "shared child table, Customer side"
    );
    assert_eq!(
        customer["after"]["parent"]["credit_limit"],
        "50000.000000000"
    );
    assert!(
        rig.round().await.is_empty(),
        "a second run of the same state emits nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_emits_create_with_every_child_table_in_order() {
    let (mut rig, mut f, mut db, inv, _) = site("insert", false).await;
    f.insert_invoice(&inv).await;
    let after = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![k("Sales Invoice", "SINV-1", true)],
        "Version/Series rows are not streamed"
    );
    assert_envelope(&ms[0], "Sales Invoice", "SINV-1", "create", &None, &after);
    assert_eq!(
        items(&ms[0]),
        vec!["SINV-1-it0", "SINV-1-it1", "SINV-1-it2"]
    );
    let e = env(&ms[0]);
    let tables: Vec<&String> = e["after"]["children"]
        .as_object()
        .expect("children")
        .keys()
        .collect();
    assert_eq!(
        tables,
        vec!["items", "payment_schedule", "sales_team", "taxes"]
    );
    assert_eq!(
        e["after"]["children"]["sales_team"][0]["parenttype"], "Sales Invoice",
        "shared child table, invoice side"
    );
    assert_eq!(e["after"]["parent"]["remarks"], "line one\nline \"two\" 😀");
    assert_eq!(e["after"]["parent"]["posting_time"], "10:20:30.123456");
    assert_eq!(e["changes"]["tabSales Invoice Item"]["inserted"], 3);
    assert_eq!(e["source"]["doc_count"], 1);
    assert_eq!(e["source"]["snapshot"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_rewrites_children_deleting_removed_ones() {
    let (mut rig, mut f, mut db, mut inv, _) = site("save", true).await;
    let before = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
    inv.children.retain(|c| c.name != "SINV-1-it1");
    inv.children[0].cols[2] = ("qty", "7.000000000".into());
    inv.children.push(Child {
        name: "SINV-1-it9".into(),
        field: "items",
        cols: vec![
            ("item_code", "ITEM-9".into()),
            ("qty", "1.000000000".into()),
        ],
    });
    f.save_invoice(&inv).await;
    let after = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
    let ms = rig.round().await;
    assert_eq!(keys(&ms), vec![k("Sales Invoice", "SINV-1", true)]);
    assert_envelope(&ms[0], "Sales Invoice", "SINV-1", "update", &before, &after);
    assert_eq!(
        items(&ms[0]),
        vec!["SINV-1-it0", "SINV-1-it2", "SINV-1-it9"],
        "idx order after save"
    );
    assert_eq!(
        env(&ms[0])["after"]["children"]["items"][0]["qty"],
        "7.000000000"
    );
    assert_eq!(
        env(&ms[0])["changes"]["tabSales Invoice Item"],
        json!({"inserted": 1, "updated": 2, "deleted": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_is_one_transaction_over_four_documents() {
    let (mut rig, mut f, mut db, mut inv, _) = site("submit", true).await;
    let so_before = doc_image(&mut db, "Sales Order", "SO-1").await;
    let before = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
    f.submit_invoice(&mut inv, "SO-1", "SO-1-it0").await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![
            k("Sales Invoice", "SINV-1", true),
            k("GL Entry", "SINV-1-gl0", true),
            k("GL Entry", "SINV-1-gl1", true),
            k("Sales Order", "SO-1", true)
        ]
    );
    assert_envelope(
        &ms[0],
        "Sales Invoice",
        "SINV-1",
        "update",
        &before,
        &doc_image(&mut db, "Sales Invoice", "SINV-1").await,
    );
    assert_envelope(
        &ms[1],
        "GL Entry",
        "SINV-1-gl0",
        "create",
        &None,
        &doc_image(&mut db, "GL Entry", "SINV-1-gl0").await,
    );
    assert_envelope(
        &ms[2],
        "GL Entry",
        "SINV-1-gl1",
        "create",
        &None,
        &doc_image(&mut db, "GL Entry", "SINV-1-gl1").await,
    );
    assert_envelope(
        &ms[3],
        "Sales Order",
        "SO-1",
        "update",
        &so_before,
        &doc_image(&mut db, "Sales Order", "SO-1").await,
    );
    let gtid = &env(&ms[0])["source"]["gtid"];
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(&env(m)["source"]["gtid"], gtid, "one transaction, one gtid");
        assert_eq!(env(m)["source"]["doc_index"], i as u64);
        assert_eq!(env(m)["source"]["doc_count"], 4);
    }
    assert_eq!(
        env(&ms[0])["after"]["parent"]["status"],
        "Unpaid",
        "final image at commit after several updates of the row"
    );
    assert_eq!(env(&ms[0])["after"]["children"]["items"][0]["docstatus"], 1);
    assert_eq!(
        env(&ms[3])["after"]["children"]["items"][0]["billed_amt"],
        "1000.123456789"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_updates_invoice_and_ledger() {
    let (mut rig, mut f, mut db, mut inv, _) = site("cancel", true).await;
    f.submit_invoice(&mut inv, "SO-1", "SO-1-it0").await;
    rig.round().await;
    let before = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
    f.cancel_invoice(&mut inv).await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![
            k("Sales Invoice", "SINV-1", true),
            k("GL Entry", "SINV-1-gl0", true),
            k("GL Entry", "SINV-1-gl1", true)
        ]
    );
    assert_envelope(
        &ms[0],
        "Sales Invoice",
        "SINV-1",
        "update",
        &before,
        &doc_image(&mut db, "Sales Invoice", "SINV-1").await,
    );
    assert_eq!(env(&ms[0])["after"]["parent"]["docstatus"], 2);
    assert_eq!(env(&ms[1])["after"]["parent"]["is_cancelled"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amend_creates_a_new_document() {
    let (mut rig, mut f, mut db, inv, _) = site("amend", true).await;
    let mut amended = inv.clone();
    amended.name = "SINV-1-1".into();
    amended.amended_from = Some("SINV-1".into());
    for c in &mut amended.children {
        c.name = c.name.replace("SINV-1", "SINV-1-1");
    }
    f.insert_invoice(&amended).await;
    let ms = rig.round().await;
    assert_eq!(keys(&ms), vec![k("Sales Invoice", "SINV-1-1", true)]);
    assert_envelope(
        &ms[0],
        "Sales Invoice",
        "SINV-1-1",
        "create",
        &None,
        &doc_image(&mut db, "Sales Invoice", "SINV-1-1").await,
    );
    assert_eq!(env(&ms[0])["after"]["parent"]["amended_from"], "SINV-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_set_on_parent_gives_full_images() {
    let (mut rig, mut f, mut db, _, _) = site("dbset", true).await;
    for bump in [true, false] {
        let before = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
        f.db_set(
            "tabSales Invoice",
            "SINV-1",
            "remarks",
            format!("set {bump}").into(),
            bump,
        )
        .await;
        let ms = rig.round().await;
        assert_eq!(keys(&ms), vec![k("Sales Invoice", "SINV-1", true)]);
        let after = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
        assert_envelope(&ms[0], "Sales Invoice", "SINV-1", "update", &before, &after);
        assert_eq!(
            items(&ms[0]).len(),
            3,
            "untouched children are part of the image"
        );
        assert_eq!(
            env(&ms[0])["changes"],
            json!({"tabSales Invoice": {"inserted": 0, "updated": 1, "deleted": 0}})
        );
        let moved = env(&ms[0])["before"]["parent"]["modified"]
            != env(&ms[0])["after"]["parent"]["modified"];
        assert_eq!(moved, bump, "modified bumped only with update_modified");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_set_on_child_row_gives_parent_image() {
    let (mut rig, mut f, mut db, _, _) = site("dbchild", true).await;
    let before = doc_image(&mut db, "Sales Order", "SO-1").await;
    f.db_set(
        "tabSales Order Item",
        "SO-1-it0",
        "billed_amt",
        "0.000000001".into(),
        false,
    )
    .await;
    let ms = rig.round().await;
    assert_eq!(keys(&ms), vec![k("Sales Order", "SO-1", true)]);
    assert_envelope(
        &ms[0],
        "Sales Order",
        "SO-1",
        "update",
        &before,
        &doc_image(&mut db, "Sales Order", "SO-1").await,
    );
    assert_eq!(
        env(&ms[0])["after"]["children"]["items"][0]["billed_amt"],
        "0.000000001"
    );
    let before = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
    f.db_set(
        "tabSales Invoice Item",
        "SINV-1-it1",
        "rate",
        "99.000000000".into(),
        true,
    )
    .await;
    let ms = rig.round().await;
    assert_eq!(keys(&ms), vec![k("Sales Invoice", "SINV-1", true)]);
    assert_envelope(
        &ms[0],
        "Sales Invoice",
        "SINV-1",
        "update",
        &before,
        &doc_image(&mut db, "Sales Invoice", "SINV-1").await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookkeeping_only_updates_are_silent() {
    let (mut rig, mut f, _db, _, _) = site("seen", true).await;
    f.db_set(
        "tabSales Invoice",
        "SINV-1",
        "_seen",
        "[\"x\"]".into(),
        false,
    )
    .await;
    f.db_set(
        "tabSales Invoice",
        "SINV-1",
        "_comments",
        "[]".into(),
        false,
    )
    .await;
    assert!(
        rig.round().await.is_empty(),
        "_seen/_comments-only updates must not emit"
    );
    f.db_set(
        "tabSales Invoice",
        "SINV-1",
        "remarks",
        "real".into(),
        false,
    )
    .await;
    let ms = rig.round().await;
    assert_eq!(
        env(&ms[0])["after"]["parent"]["_seen"],
        "[\"x\"]",
        "the next real change carries them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_moves_the_key_and_fixes_links() {
    let (mut rig, mut f, mut db, _, _) = site("rename", true).await;
    let before = doc_image(&mut db, "Customer", "C1").await;
    let si_before = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
    f.rename_customer("C1", "C1-renamed").await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![
            k("Customer", "C1-renamed", true),
            k("Customer", "C1", false),
            k("Sales Invoice", "SINV-1", true),
            k("Sales Order", "SO-1", true)
        ]
    );
    assert_envelope(
        &ms[0],
        "Customer",
        "C1-renamed",
        "rename",
        &before,
        &doc_image(&mut db, "Customer", "C1-renamed").await,
    );
    assert_eq!(env(&ms[0])["old_name"], "C1");
    assert_eq!(
        env(&ms[0])["after"]["children"]["sales_team"][0]["parent"],
        "C1-renamed"
    );
    assert_eq!(
        env(&ms[0])["before"]["parent"]["modified"],
        env(&ms[0])["after"]["parent"]["modified"],
        "rename does not bump modified"
    );
    assert_envelope(
        &ms[2],
        "Sales Invoice",
        "SINV-1",
        "update",
        &si_before,
        &doc_image(&mut db, "Sales Invoice", "SINV-1").await,
    );
    assert_eq!(env(&ms[2])["after"]["parent"]["customer"], "C1-renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_save_rewrites_tabsingles() {
    let (mut rig, mut f, mut db, _, _) = site("single", false).await;
    let before = doc_image(&mut db, "Selling Settings", "Selling Settings").await;
    f.save_single(
        "Selling Settings",
        &[
            ("cust_master_name", "Naming Series"),
            ("selling_price_list", "Standard Selling"),
        ],
    )
    .await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![k("Selling Settings", "Selling Settings", true)]
    );
    assert_envelope(
        &ms[0],
        "Selling Settings",
        "Selling Settings",
        "update",
        &before,
        &doc_image(&mut db, "Selling Settings", "Selling Settings").await,
    );
    assert_eq!(
        env(&ms[0])["after"]["parent"]["cust_master_name"],
        "Naming Series"
    );
    assert_eq!(
        env(&ms[0])["changes"]["tabSingles"],
        json!({"inserted": 4, "updated": 0, "deleted": 4})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_insert_updates_nested_set() {
    let (mut rig, mut f, mut db, _, _) = site("tree", false).await;
    let root_before = doc_image(&mut db, "Customer Group", "All Customer Groups").await;
    f.tree_insert("Retail", "All Customer Groups").await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![
            k("Customer Group", "All Customer Groups", true),
            k("Customer Group", "Retail", true)
        ]
    );
    assert_envelope(
        &ms[0],
        "Customer Group",
        "All Customer Groups",
        "update",
        &root_before,
        &doc_image(&mut db, "Customer Group", "All Customer Groups").await,
    );
    assert_eq!(env(&ms[0])["after"]["parent"]["rgt"], 8);
    assert_envelope(
        &ms[1],
        "Customer Group",
        "Retail",
        "create",
        &None,
        &doc_image(&mut db, "Customer Group", "Retail").await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_emits_before_image_then_tombstone() {
    let (mut rig, mut f, mut db, inv, _) = site("delete", true).await;
    let before = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
    f.delete_invoice(&inv).await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![
            k("Sales Invoice", "SINV-1", true),
            k("Sales Invoice", "SINV-1", false)
        ]
    );
    assert_envelope(&ms[0], "Sales Invoice", "SINV-1", "delete", &before, &None);
    assert_eq!(
        env(&ms[0])["changes"]["tabSales Invoice Item"]["deleted"],
        3
    );
    assert!(
        rig.round().await.is_empty(),
        "nothing more after the delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_and_exclude_doctype_filters() {
    let mut rig = Rig::new("filter").await;
    rig.filter = frappe_cdc::frappe::catalog::Filter::new(
        &["Customer".into(), "Sales Invoice".into()],
        &["Sales Invoice".into()],
    );
    let mut f = rig.frappe().await;
    f.insert_customer("C1", "Commercial").await;
    f.insert_sales_order("SO-1", "C1", "SO-1-it0").await;
    let snap = rig.round().await;
    assert_eq!(
        keys(&snap),
        vec![k("Customer", "C1", true)],
        "only included, not excluded, doctypes"
    );
    assert_eq!(
        env(&snap[0])["after"]["children"]["sales_team"][0]["sales_person"],
        "Bob",
        "children of an included parent are part of it"
    );
    f.insert_invoice(&Invoice::draft("SINV-1", "C1", 1)).await;
    f.db_set("tabCustomer", "C1", "customer_name", "C1 Ltd".into(), true)
        .await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![k("Customer", "C1", true)],
        "the excluded invoice (and its Sales Team row) is not streamed"
    );
    assert_eq!(
        env(&ms[0])["after"]["children"]["sales_team"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_created_and_deleted_in_one_transaction_is_not_counted() {
    let (mut rig, _f, mut db, _inv, _) = site("vanish", false).await;
    db.query_drop(
        "START TRANSACTION; \
         INSERT INTO `tabSales Invoice` (name, creation, modified, modified_by, owner, customer, grand_total, outstanding_amount, remarks) \
           VALUES ('TMP-1', '2024-01-01 00:00:00', '2024-01-01 00:00:00', 'Administrator', 'Administrator', 'C1', 1, 1, 'temporary'); \
         INSERT INTO `tabSales Invoice Item` (name, creation, modified, idx, item_code, qty, rate, parent, parentfield, parenttype) \
           VALUES ('TMP-1-1', '2024-01-01 00:00:00', '2024-01-01 00:00:00', 1, 'ITEM', 1, 1, 'TMP-1', 'items', 'Sales Invoice'); \
         UPDATE `tabCustomer` SET credit_limit = 7 WHERE name = 'C1'; \
         DELETE FROM `tabSales Invoice Item` WHERE parent = 'TMP-1'; \
         DELETE FROM `tabSales Invoice` WHERE name = 'TMP-1'; \
         COMMIT",
    )
    .await
    .expect("one transaction");
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![k("Customer", "C1", true)],
        "the vanished invoice is not emitted"
    );
    let s = &env(&ms[0])["source"];
    assert_eq!(s["doc_count"], 1, "doc_count counts only emitted documents");
    assert_eq!(s["doc_index"], 0);
}

//! One integration test per Frappe write path, on a real MariaDB primary and a real broker:
//! each asserts the exact envelopes (op, key, before/after images, child order, source).

mod common;

use common::doc_image;
use common::rig::Rig;
use common::topic::Msg;
use common::workload::{Child, Invoice};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_path_gives_exact_envelopes() {
    let mut rig = Rig::new("paths").await;
    let mut f = rig.frappe().await;
    let mut db = rig.primary().conn(&rig.db).await;
    f.insert_customer("C1", "Commercial").await;
    f.insert_sales_order("SO-1", "C1", "SO-1-it0").await;

    // Snapshot: every tracked document, nothing from excluded doctypes.
    let snap = rig.round().await;
    keys(&snap);
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
    assert_eq!(got, want, "snapshot documents");
    for m in &snap {
        let e = env(m);
        assert_eq!(e["op"], "snapshot");
        assert_eq!(e["source"]["snapshot"], true);
        assert_eq!(e["before"], Value::Null);
        let (d, n) = key(m);
        if d != "Selling Settings" {
            assert_eq!(
                Some(e["after"].clone()),
                doc_image(&mut db, &d, &n).await,
                "snapshot image of {d} {n}"
            );
        }
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

    // Insert: one create with every child table, children in idx order.
    let mut inv = Invoice::draft("SINV-1", "C1", 3);
    f.insert_invoice(&inv).await;
    let after = doc_image(&mut db, "Sales Invoice", "SINV-1").await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![k("Sales Invoice", "SINV-1", true)],
        "Version/Series rows are not streamed"
    );
    assert_envelope(&ms[0], "Sales Invoice", "SINV-1", "create", &None, &after);
    let e = env(&ms[0]);
    let items: Vec<&str> = e["after"]["children"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(items, vec!["SINV-1-it0", "SINV-1-it1", "SINV-1-it2"]);
    assert_eq!(
        e["after"]["children"]["sales_team"][0]["parenttype"], "Sales Invoice",
        "shared child table, invoice side"
    );
    assert_eq!(e["after"]["parent"]["remarks"], "line one\nline \"two\" 😀");
    assert_eq!(e["after"]["parent"]["posting_time"], "10:20:30.123456");
    assert_eq!(e["changes"]["tabSales Invoice Item"]["inserted"], 3);
    assert_eq!(e["source"]["doc_count"], 1);

    // Save: a removed child is deleted, kept ones rewritten, a new one inserted.
    let before = after;
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
    let items: Vec<&str> = env(&ms[0])["after"]["children"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        items,
        vec!["SINV-1-it0", "SINV-1-it2", "SINV-1-it9"],
        "idx order after save"
    );
    assert_eq!(
        env(&ms[0])["changes"]["tabSales Invoice Item"]["deleted"],
        1
    );

    // Submit: one transaction touching four documents.
    let so_before = doc_image(&mut db, "Sales Order", "SO-1").await;
    let before = after;
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
        &ms[3],
        "Sales Order",
        "SO-1",
        "update",
        &so_before,
        &doc_image(&mut db, "Sales Order", "SO-1").await,
    );
    let gtids: Vec<&Value> = ms.iter().map(|m| &env(m)["source"]["gtid"]).collect();
    assert!(
        gtids.iter().all(|g| *g == gtids[0]),
        "one transaction, one gtid"
    );
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(env(m)["source"]["doc_index"], i as u64);
        assert_eq!(env(m)["source"]["doc_count"], 4);
    }
    assert_eq!(
        env(&ms[0])["after"]["parent"]["status"],
        "Unpaid",
        "final image at commit"
    );
    assert_eq!(env(&ms[0])["after"]["children"]["items"][0]["docstatus"], 1);

    // Cancel.
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
    assert_eq!(env(&ms[1])["after"]["parent"]["is_cancelled"], 1);

    // Amend: a new document named -1.
    let mut amended = inv.clone();
    amended.name = "SINV-1-1".into();
    amended.docstatus = 0;
    amended.status = "Draft".into();
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

    // db_set on a parent, with and without modified: full images all the same.
    for bump in [true, false] {
        let before = doc_image(&mut db, "Sales Invoice", "SINV-1-1").await;
        f.db_set(
            "tabSales Invoice",
            "SINV-1-1",
            "remarks",
            format!("set {bump}").into(),
            bump,
        )
        .await;
        let ms = rig.round().await;
        assert_eq!(keys(&ms), vec![k("Sales Invoice", "SINV-1-1", true)]);
        assert_envelope(
            &ms[0],
            "Sales Invoice",
            "SINV-1-1",
            "update",
            &before,
            &doc_image(&mut db, "Sales Invoice", "SINV-1-1").await,
        );
        assert_eq!(
            env(&ms[0])["changes"],
            json!({"tabSales Invoice": {"inserted": 0, "updated": 1, "deleted": 0}})
        );
    }

    // db_set on a child row (the status updater's raw UPDATE) gives the parent's full image.
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

    // A change to _seen only is bookkeeping: no envelope.
    f.db_set(
        "tabSales Invoice",
        "SINV-1-1",
        "_seen",
        "[\"x\"]".into(),
        false,
    )
    .await;
    assert!(
        rig.round().await.is_empty(),
        "_seen-only update must not emit"
    );

    // Rename: the parent's key, its children's parent, link columns in other doctypes.
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
            k("Sales Invoice", "SINV-1-1", true),
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
    assert_envelope(
        &ms[2],
        "Sales Invoice",
        "SINV-1",
        "update",
        &si_before,
        &doc_image(&mut db, "Sales Invoice", "SINV-1").await,
    );

    // Single saved: tabSingles rows deleted and inserted again.
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
    let e = env(&ms[0]);
    assert_eq!(e["op"], "update");
    assert_eq!(e["before"]["parent"]["cust_master_name"], "Customer Name");
    assert_eq!(e["after"]["parent"]["cust_master_name"], "Naming Series");
    assert_eq!(e["after"]["parent"]["name"], "Selling Settings");

    // Tree: the nested-set shift updates every node to the right, then the insert.
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
    assert_envelope(
        &ms[1],
        "Customer Group",
        "Retail",
        "create",
        &None,
        &doc_image(&mut db, "Customer Group", "Retail").await,
    );

    // Delete: before image, no after image, then a tombstone.
    let before = doc_image(&mut db, "Sales Invoice", "SINV-1-1").await;
    f.delete_invoice(&amended).await;
    let ms = rig.round().await;
    assert_eq!(
        keys(&ms),
        vec![
            k("Sales Invoice", "SINV-1-1", true),
            k("Sales Invoice", "SINV-1-1", false)
        ]
    );
    assert_envelope(
        &ms[0],
        "Sales Invoice",
        "SINV-1-1",
        "delete",
        &before,
        &None,
    );

    // Nothing new: a further run emits nothing (the checkpoint holds).
    assert!(rig.round().await.is_empty());
}

//! Apply trusts nothing it reads (real primary, broker, replica, `frappe-cdc apply` binary):
//!
//! 1. Messages whose key is missing, empty, not UTF-8, not JSON, of the wrong shape, deeply
//!    nested, too long, or names another document than the value, with valid and with null
//!    values, are dead-lettered with a reason that names the defect; nothing of them reaches
//!    the replica. A well-keyed tombstone only moves the offset.
//! 2. A forged new document whose child rows reuse another document's child-row names, inside
//!    a bulk batch of 81 documents split over `--writers 2`, is recorded as a conflict naming
//!    both owners; the other document stays byte-identical; the rest of the batch is applied.
//!    The same through the one-message path (a forged rename); a genuine rename still moves
//!    its own child rows.
//! 3. A one-field change of a Single is one row event in the replica's own binlog.

mod common;

use std::time::Duration;

use common::doc_image;
use common::metrics::{sample, scrape};
use common::rig::Rig;
use common::servers::{KillOnDrop, Mariadb, free_port};
use common::topic::{Msg, Raw, count_all, dead_letter_reasons, read_all, send_raw};
use common::workload::Frappe;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

/// Sends (key, value) pairs in order and waits until the broker has them.
fn send(bootstrap: &str, topic: &str, msgs: &[Raw]) {
    send_raw(bootstrap, topic, msgs)
}

fn key(doctype: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"doctype": doctype, "name": name})).expect("key")
}

/// The last envelope of document `(doctype, name)` on the topic.
fn envelope_of(msgs: &[Msg], doctype: &str, name: &str) -> Value {
    msgs.iter()
        .rev()
        .find(|m| m.key["doctype"] == doctype && m.key["name"] == name && m.value.is_some())
        .and_then(|m| m.value.clone())
        .unwrap_or_else(|| panic!("no envelope of {doctype} {name} on the topic"))
}

/// A create envelope of a new Customer `name` made from `template` (a captured Customer
/// envelope): its child rows renamed to `children` (row name → kept as given).
fn forged_customer(template: &Value, name: &str, children: &[&str], gtid_seq: u64) -> Value {
    let mut v = template.clone();
    v["op"] = "create".into();
    v["name"] = name.into();
    v["before"] = Value::Null;
    v["after"]["parent"]["name"] = name.into();
    v["after"]["parent"]["customer_name"] = format!("{name} (forged)").into();
    let row = template["after"]["children"]["sales_team"][0].clone();
    let rows: Vec<Value> = children
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut r = row.clone();
            r["name"] = (*n).into();
            r["parent"] = name.into();
            r["idx"] = (i + 1).into();
            r
        })
        .collect();
    v["after"]["children"] = json!({ "sales_team": rows });
    let gtid = format!("0-1-{gtid_seq}");
    v["source"]["gtid"] = gtid.clone().into();
    v["source"]["position"] = gtid.into();
    v
}

/// The rows of one Sales Team row and one Customer, as text (byte-level comparison).
async fn rows_text(r: &mut mysql_async::Conn, customer: &str, row: &str) -> String {
    let doc = doc_image(r, "Customer", customer).await;
    let raw: Vec<mysql_async::Row> = r
        .exec("SELECT * FROM `tabSales Team` WHERE name = ?", (row,))
        .await
        .expect("row");
    let raw: Vec<Vec<String>> = raw
        .into_iter()
        .map(|row| row.unwrap().into_iter().map(|v| v.as_sql(false)).collect())
        .collect();
    format!("{doc:?}\n{raw:?}")
}

async fn wait_for_doc(r: &mut mysql_async::Conn, doctype: &str, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while doc_image(r, doctype, name).await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{doctype} {name} never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(c: &mut mysql_async::Conn, sql: &str) -> u64 {
    c.query_first::<u64, _>(sql)
        .await
        .expect(sql)
        .unwrap_or_default()
}

fn spawn_apply(rig: &Rig, replica: &Mariadb, port: u16) -> KillOnDrop {
    rig.spawn_apply(&replica.replica_url(&rig.db), port, &["--writers", "2"])
}

/// Apply with bulk batches split over two writers (document consistency).
fn spawn_split_apply(rig: &Rig, replica: &Mariadb, port: u16) -> KillOnDrop {
    rig.spawn_apply(
        &replica.replica_url(&rig.db),
        port,
        &["--consistency", "document", "--writers", "2"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_dead_lettered_and_change_nothing() {
    let rig = Rig::new("keys").await;
    let (replica, _) = rig.replica().await;
    let mut f: Frappe = rig.frappe().await;
    f.insert_customer("C1", "Commercial").await;
    rig.capture().await;
    let port = free_port();
    let _apply = spawn_apply(&rig, &replica, port);
    let mut r = replica.conn(&rig.db).await;
    wait_for_doc(&mut r, "Customer", "C1").await;
    let before = rows_text(&mut r, "C1", "C1-st0").await;

    // A valid envelope of a new Customer K (unused child row name), under every bad key.
    let all = read_all(&rig.bootstrap(), &rig.topic);
    let k_env = forged_customer(
        &envelope_of(&all, "Customer", "C1"),
        "K",
        &["K-st0"],
        900_000,
    );
    let value = serde_json::to_vec(&k_env).expect("json");
    let deep_ok_size = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000));
    let deep = format!(
        r#"{{"doctype":"Customer","name":{}"K"{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let bad_keys: Vec<(Option<Vec<u8>>, &str)> = vec![
        (None, "key: missing"),
        (Some(Vec::new()), "key: empty"),
        (Some(b"K".to_vec()), "key: not JSON"),
        (Some(b"Customer/K".to_vec()), "key: not JSON"),
        (Some(vec![0xff, 0xfe, b'{']), "key: not UTF-8"),
        (Some(br#"["Customer","K"]"#.to_vec()), "key: not an object"),
        (
            Some(br#"{"doctype":"Customer"}"#.to_vec()),
            "key: not an object",
        ),
        (
            Some(br#"{"doctype":"Customer","name":7}"#.to_vec()),
            "key: not an object",
        ),
        (
            Some(br#"{"doctype":"Customer","name":"K","extra":1}"#.to_vec()),
            "key: not an object",
        ),
        (
            Some(br#"{"doctype":"Customer","name":"C1","name":"K"}"#.to_vec()),
            "key: not an object",
        ),
        (
            Some(br#"{"doctype":"","name":"K"}"#.to_vec()),
            "key: empty doctype",
        ),
        (Some(deep_ok_size.into_bytes()), "key: not "),
        (Some(deep.into_bytes()), "key: 2"),
    ];
    let mut msgs = Vec::new();
    let mut want = Vec::new();
    for (k, why) in &bad_keys {
        msgs.push((k.clone(), Some(value.clone())));
        want.push(*why);
        msgs.push((k.clone(), None));
        want.push(*why);
    }
    // Valid keys naming another document or doctype than the value.
    msgs.push((Some(key("Customer", "C1")), Some(value.clone())));
    want.push("key: names another document");
    msgs.push((Some(key("Supplier", "K")), Some(value.clone())));
    want.push("key: names another doctype");
    // A well-keyed tombstone of a document the replica has: an offset move, nothing else.
    msgs.push((Some(key("Customer", "C1")), None));
    send(&rig.bootstrap(), &rig.topic, &msgs);

    // A genuine change after them: once it is on the replica, they were all handled.
    f.insert_customer("C9", "Commercial").await;
    rig.capture().await;
    wait_for_doc(&mut r, "Customer", "C9").await;

    let dlq = format!("{}.dead-letter", rig.topic);
    common::wait_until(Duration::from_secs(60), "dead letters", || async {
        count_all(&rig.bootstrap(), &dlq) >= want.len() as u64
    })
    .await;
    let reasons = dead_letter_reasons(&rig.bootstrap(), &dlq);
    assert_eq!(reasons.len(), want.len(), "{reasons:#?}");
    for (got, want) in reasons.iter().zip(&want) {
        assert!(got.starts_with(want), "want {want:?}, got {got:?}");
    }
    assert_eq!(
        doc_image(&mut r, "Customer", "K").await,
        None,
        "no forged document on the replica"
    );
    assert_eq!(
        count(
            &mut r,
            "SELECT COUNT(*) FROM `tabSales Team` WHERE name = 'K-st0'"
        )
        .await,
        0
    );
    assert_eq!(
        rows_text(&mut r, "C1", "C1-st0").await,
        before,
        "C1 untouched (the tombstone of its key only moved the offset)"
    );
    let metrics = scrape(port).await;
    assert_eq!(
        sample(&metrics, "frappe_cdc_apply_dead_letters_total"),
        want.len() as f64
    );
    eprintln!(
        "{} badly keyed messages dead-lettered with reasons",
        want.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_never_takes_another_documents_rows() {
    let rig = Rig::new("owners").await;
    let (replica, rurl) = rig.replica().await;
    let mut f: Frappe = rig.frappe().await;
    for c in ["C2", "C3", "C4"] {
        f.insert_customer(c, "Commercial").await;
    }
    rig.capture().await;
    let port = free_port();
    let apply = spawn_apply(&rig, &replica, port);
    let mut r = replica.conn(&rig.db).await;
    wait_for_doc(&mut r, "Customer", "C4").await;
    drop(apply);
    let c2_before = rows_text(&mut r, "C2", "C2-st0").await;
    let c3_before = rows_text(&mut r, "C3", "C3-st0").await;

    // While apply is down: 40 new customers, a forged new customer EVIL that claims C2's
    // Sales Team row, 40 more; then a forged rename of C3 that also claims C2's row (the
    // one-message path); then a genuine rename of C4.
    let all = read_all(&rig.bootstrap(), &rig.topic);
    for i in 0..40 {
        f.insert_customer(&format!("B-{i:02}"), "Commercial").await;
    }
    rig.capture().await;
    let template = envelope_of(&all, "Customer", "C2");
    let evil = forged_customer(&template, "EVIL", &["EVIL-st0", "C2-st0"], 900_001);
    send(
        &rig.bootstrap(),
        &rig.topic,
        &[(
            Some(key("Customer", "EVIL")),
            Some(serde_json::to_vec(&evil).expect("json")),
        )],
    );
    for i in 40..80 {
        f.insert_customer(&format!("B-{i:02}"), "Commercial").await;
    }
    rig.capture().await;
    let c3 = envelope_of(&all, "Customer", "C3");
    let mut rename = forged_customer(&c3, "C3-new", &["C3-st0", "C2-st0"], 900_002);
    rename["op"] = "rename".into();
    rename["old_name"] = "C3".into();
    rename["before"] = c3["after"].clone();
    send(
        &rig.bootstrap(),
        &rig.topic,
        &[(
            Some(key("Customer", "C3-new")),
            Some(serde_json::to_vec(&rename).expect("json")),
        )],
    );
    f.rename_customer("C4", "C4-renamed").await;
    rig.capture().await;

    let _apply = spawn_split_apply(&rig, &replica, port);
    wait_for_doc(&mut r, "Customer", "C4-renamed").await;

    let mut p = rig.primary().conn(&rig.db).await;
    assert_eq!(
        doc_image(&mut r, "Customer", "C4-renamed").await,
        doc_image(&mut p, "Customer", "C4-renamed").await,
        "a genuine rename moves its own child rows"
    );
    assert_eq!(doc_image(&mut r, "Customer", "C4").await, None);
    assert_eq!(
        rows_text(&mut r, "C2", "C2-st0").await,
        c2_before,
        "C2 byte-identical"
    );
    assert_eq!(
        rows_text(&mut r, "C3", "C3-st0").await,
        c3_before,
        "C3 not renamed"
    );
    assert_eq!(doc_image(&mut r, "Customer", "EVIL").await, None);
    assert_eq!(doc_image(&mut r, "Customer", "C3-new").await, None);
    let applied = count(
        &mut r,
        "SELECT COUNT(*) FROM `tabCustomer` WHERE name LIKE 'B-%'",
    )
    .await;
    assert_eq!(applied, 80, "the rest of the batch is applied");
    for i in 0..80 {
        let n = format!("B-{i:02}");
        assert_eq!(
            doc_image(&mut r, "Customer", &n).await,
            doc_image(&mut p, "Customer", &n).await,
            "{n}"
        );
    }
    let conflicts: Vec<(String, String)> = r
        .query("SELECT name, reason FROM `_frappe_cdc_conflicts` ORDER BY name")
        .await
        .expect("conflicts");
    assert_eq!(conflicts.len(), 2, "{conflicts:#?}");
    for ((name, reason), want) in conflicts.iter().zip(["C3", "EVIL"]) {
        assert_eq!(name, want);
        assert!(
            reason.starts_with("child rows owned by another document")
                && reason.contains(r#"tabSales Team row "C2-st0" belongs to Customer "C2""#),
            "{name}: {reason}"
        );
    }
    let metrics = scrape(port).await;
    assert!(
        sample(
            &metrics,
            "frappe_cdc_apply_batch_documents_bucket{le=\"50\"}"
        ) < sample(&metrics, "frappe_cdc_apply_batch_documents_count"),
        "a bulk batch held more than 50 documents"
    );
    assert!(
        sample(
            &metrics,
            "frappe_cdc_apply_split_batches_total{outcome=\"committed\"}"
        ) >= 1.0,
        "the batch was split over two writers"
    );
    // The operator cannot accept EVIL's primary version (it would take C2's row); keeping
    // the local state resolves it.
    let id: u64 = r
        .query_first("SELECT id FROM `_frappe_cdc_conflicts` WHERE name = 'EVIL'")
        .await
        .expect("id")
        .expect("EVIL conflict");
    let resolve = |how: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
            .args([
                "conflicts",
                "--replica",
                &rurl,
                "resolve",
                &id.to_string(),
                how,
            ])
            .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
            .env("RUST_LOG", "error")
            .output()
            .expect("run frappe-cdc conflicts")
    };
    let out = resolve("--accept-primary");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("cannot be accepted") && err.contains("C2-st0"),
        "{err}"
    );
    assert_eq!(rows_text(&mut r, "C2", "C2-st0").await, c2_before);
    assert!(resolve("--keep-local").status.success());
    // verify sees exactly the two conflicts' documents as different.
    let out = rig.verify(&rurl, &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains("different: Customer C2") && !text.contains("Customer B-"),
        "{text}"
    );
    eprintln!(
        "ownership: 2 forged claims recorded as conflicts; 80 documents of the batch applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_field_single_change_is_one_row_event_on_the_replica() {
    let rig = Rig::new("singles").await;
    let replica = Mariadb::start(&["--log-bin=replica-bin", "--binlog-format=ROW"]);
    replica.create_site(&rig.db).await;
    let mut f: Frappe = rig.frappe().await;
    // Capture's snapshot holds the fixture's Single, which the replica has too.
    rig.capture().await;
    let port = free_port();
    let _apply = spawn_apply(&rig, &replica, port);
    let fields = [("cust_master_name", "Customer Name"), ("so_required", "No")];
    f.save_single("Selling Settings", &fields).await;
    rig.capture().await;
    let mut r = replica.conn(&rig.db).await;
    let mut p = rig.primary().conn(&rig.db).await;
    let same = |want: &'static str| {
        let rig = &rig;
        let replica = &replica;
        async move {
            let mut r = replica.conn(&rig.db).await;
            let v: Option<String> = r
                .query_first("SELECT value FROM `tabSingles` WHERE doctype = 'Selling Settings' AND field = 'cust_master_name'")
                .await
                .expect("single");
            v.as_deref() == Some(want)
        }
    };
    // Everything before the change under test is applied and committed: the replica's Single
    // equals the primary's and Kafka's view of the group's lag is zero (the fixture may
    // already hold the saved value, so the value alone proves nothing).
    let fields_of = |conn: &'static str| {
        let rig = &rig;
        let replica = &replica;
        async move {
            let mut c = if conn == "replica" {
                replica.conn(&rig.db).await
            } else {
                rig.primary().conn(&rig.db).await
            };
            let rows: Vec<(String, Option<String>)> = c
                .query("SELECT field, value FROM `tabSingles` WHERE doctype = 'Selling Settings' ORDER BY field")
                .await
                .expect("singles");
            rows
        }
    };
    common::wait_until(Duration::from_secs(60), "Single applied", || async {
        same("Customer Name").await
            && fields_of("replica").await == fields_of("primary").await
            && common::metrics::try_scrape(port).await.is_some_and(|m| {
                m.contains("frappe_cdc_apply_consumer_lag_messages{")
                    && sample(&m, "frappe_cdc_apply_consumer_lag_messages") == 0.0
            })
    })
    .await;

    // Row events of tabSingles in the replica's binlog from here on.
    let (file, pos): (String, u64) = r
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("master status")
        .map(|row: mysql_async::Row| {
            (
                row.get::<String, _>(0).expect("file"),
                row.get::<u64, _>(1).expect("pos"),
            )
        })
        .expect("binlog on");
    let events = |from: u64| {
        let out = std::process::Command::new("mariadb-binlog")
            .arg("-v")
            .arg(format!("--start-position={from}"))
            .arg(replica.dir.join(&file))
            .output()
            .expect("mariadb-binlog");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let table = format!("`{}`.`tabSingles`", rig.db);
        ["### UPDATE", "### INSERT INTO", "### DELETE FROM"].map(|op| {
            text.lines()
                .filter(|l| l.starts_with(op) && l.ends_with(&table))
                .count()
        })
    };

    // db.set_value on one field of the Single (one UPDATE on the primary).
    p.query_drop("UPDATE `tabSingles` SET value = 'Naming Series' WHERE doctype = 'Selling Settings' AND field = 'cust_master_name'")
        .await
        .expect("set value");
    rig.capture().await;
    common::wait_until(Duration::from_secs(60), "one-field change applied", || {
        same("Naming Series")
    })
    .await;
    assert_eq!(
        events(pos),
        [1, 0, 0],
        "one UPDATE row event, no INSERT or DELETE"
    );
    let (_, pos2): (String, u64) = r
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("master status")
        .map(|row: mysql_async::Row| {
            (
                row.get::<String, _>(0).expect("file"),
                row.get::<u64, _>(1).expect("pos"),
            )
        })
        .expect("binlog on");

    // A full save (every row deleted and inserted on the primary) changing one field: on the
    // replica only that field and `modified` change.
    f.save_single(
        "Selling Settings",
        &[
            ("cust_master_name", "Naming Series"),
            ("so_required", "Yes"),
        ],
    )
    .await;
    rig.capture().await;
    common::wait_until(Duration::from_secs(60), "save applied", || async {
        doc_image(
            &mut replica.conn(&rig.db).await,
            "Selling Settings",
            "Selling Settings",
        )
        .await
            == doc_image(
                &mut rig.primary().conn(&rig.db).await,
                "Selling Settings",
                "Selling Settings",
            )
            .await
    })
    .await;
    assert_eq!(events(pos2), [2, 0, 0], "so_required and modified updated");
    eprintln!("Single: one row event per changed field on the replica");
}

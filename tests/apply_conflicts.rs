//! Conflicts on real servers: a document edited on the replica and then changed on the primary
//! is recorded as a conflict and left untouched while other documents keep flowing; later
//! envelopes update the open record instead of piling up; `--accept-primary` makes the replica
//! equal to the primary, `--keep-local` keeps the replica's copy, and verify then lists it as
//! a known divergence.

mod common;

// In this binary rather than their own: every test binary links the whole crate again.
#[path = "conflicts/page.rs"]
mod page;
#[path = "conflicts/policies.rs"]
mod policies;

use std::process::{Command, Output};
use std::time::Duration;

use common::doc_image;
use common::rig::Rig;
use common::servers::free_port;
use common::workload::{Frappe, Invoice};

fn cdc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args(args)
        .env("FRAPPE_CDC_SOURCE_PASSWORD", "cdcpass")
        .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
        .env("RUST_LOG", "error")
        .output()
        .expect("run frappe-cdc")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn until_equal(
    p: &mut mysql_async::Conn,
    r: &mut mysql_async::Conn,
    doctype: &str,
    name: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while doc_image(r, doctype, name).await != doc_image(p, doctype, name).await {
        assert!(
            std::time::Instant::now() < deadline,
            "{doctype} {name} never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_recorded_and_resolved_both_ways() {
    let rig = Rig::new("conflict").await;
    let (replica, rurl) = rig.replica().await;
    let surl = rig.primary().cdc_url(&rig.db);
    let mut f = rig.frappe().await;
    for n in ["SINV-1", "SINV-2"] {
        f.insert_invoice(&Invoice::draft(n, "C1", 2)).await;
    }
    rig.capture().await;
    let _apply = rig.spawn_apply(&rurl, free_port(), &[]);
    let mut p = rig.primary().conn(&rig.db).await;
    let mut r = replica.conn(&rig.db).await;
    until_equal(&mut p, &mut r, "Sales Invoice", "SINV-2").await;
    until_equal(&mut p, &mut r, "Sales Invoice", "SINV-1").await;

    // Local edit on the replica, then the primary changes the same field of the same
    // document (an overlap: a conflict), and another document.
    let mut local = Frappe::new(replica.conn(&rig.db).await);
    local
        .db_set(
            "tabSales Invoice",
            "SINV-1",
            "status",
            "Overdue".into(),
            true,
        )
        .await;
    let local_copy = doc_image(&mut r, "Sales Invoice", "SINV-1").await;
    f.db_set("tabSales Invoice", "SINV-1", "status", "Paid".into(), true)
        .await;
    f.db_set("tabSales Invoice", "SINV-2", "status", "Paid".into(), true)
        .await;
    rig.capture().await;
    until_equal(&mut p, &mut r, "Sales Invoice", "SINV-2").await;
    let list = cdc(&["conflicts", "--replica", &rurl, "list"]);
    assert!(list.status.success(), "{}", text(&list));
    assert!(
        text(&list).contains("1 conflict(s)") && text(&list).contains("Sales Invoice SINV-1"),
        "{}",
        text(&list)
    );
    assert_eq!(
        doc_image(&mut r, "Sales Invoice", "SINV-1").await,
        local_copy,
        "conflicting copy untouched"
    );

    // A second primary change folds into the open record.
    f.db_set(
        "tabSales Invoice",
        "SINV-1",
        "grand_total",
        "1.000000000".into(),
        true,
    )
    .await;
    f.db_set(
        "tabSales Invoice",
        "SINV-2",
        "remarks",
        "flows".into(),
        true,
    )
    .await;
    rig.capture().await;
    until_equal(&mut p, &mut r, "Sales Invoice", "SINV-2").await;
    let list = text(&cdc(&["conflicts", "--replica", &rurl, "list"]));
    assert!(list.contains("1 conflict(s)"), "{list}");
    let id: String = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    let fields: Vec<&str> = list
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(fields.contains(&"2"), "two envelopes absorbed: {list}");
    let show = cdc(&["conflicts", "--replica", &rurl, "show", &id]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("show prints JSON");
    assert_eq!(v["status"], "open");
    assert!(
        v["replica_differs_from_primary_before"]
            .to_string()
            .contains("parent.status"),
        "{v}"
    );
    assert_eq!(
        v["primary_after"]["parent"]["grand_total"], "1.000000000",
        "pending primary version is the latest"
    );
    let bad = cdc(&["verify", "--source", &surl, "--replica", &rurl]);
    assert_eq!(
        bad.status.code(),
        Some(0),
        "an open conflict is a known divergence: {}",
        text(&bad)
    );
    assert!(text(&bad).contains("1 known divergences"), "{}", text(&bad));

    // Accept the primary's version.
    let res = cdc(&[
        "conflicts",
        "--replica",
        &rurl,
        "resolve",
        &id,
        "--accept-primary",
    ]);
    assert!(res.status.success(), "{}", text(&res));
    assert_eq!(
        doc_image(&mut r, "Sales Invoice", "SINV-1").await,
        doc_image(&mut p, "Sales Invoice", "SINV-1").await
    );
    let ok = cdc(&["verify", "--source", &surl, "--replica", &rurl]);
    assert!(
        ok.status.success() && text(&ok).contains("0 known divergences"),
        "{}",
        text(&ok)
    );
    assert!(
        !cdc(&[
            "conflicts",
            "--replica",
            &rurl,
            "resolve",
            &id,
            "--keep-local"
        ])
        .status
        .success(),
        "resolving twice is refused"
    );

    // Keep the local copy of another document.
    local
        .db_set(
            "tabSales Invoice",
            "SINV-2",
            "status",
            "Return".into(),
            true,
        )
        .await;
    let kept = doc_image(&mut r, "Sales Invoice", "SINV-2").await;
    f.db_set(
        "tabSales Invoice",
        "SINV-2",
        "status",
        "Overdue".into(),
        true,
    )
    .await;
    rig.capture().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !text(&cdc(&["conflicts", "--replica", &rurl, "list"])).contains("SINV-2") {
        assert!(
            std::time::Instant::now() < deadline,
            "second conflict never recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = text(&cdc(&["conflicts", "--replica", &rurl, "list"]));
    let id2 = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    assert!(
        cdc(&[
            "conflicts",
            "--replica",
            &rurl,
            "resolve",
            &id2,
            "--keep-local"
        ])
        .status
        .success()
    );
    assert_eq!(
        doc_image(&mut r, "Sales Invoice", "SINV-2").await,
        kept,
        "local copy kept"
    );
    let v = cdc(&["verify", "--source", &surl, "--replica", &rurl]);
    assert!(v.status.success(), "{}", text(&v));
    assert!(
        text(&v).contains("known divergence (conflict): Sales Invoice SINV-2"),
        "{}",
        text(&v)
    );
}

/// The replica stopped for 30 s mid-stream: apply retries without moving on and catches up
/// by itself when the replica is back; every document then equals the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_outage_is_survived() {
    let rig = Rig::new("outage").await;
    let (mut replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    f.insert_invoice(&Invoice::draft("O-0", "C1", 1)).await;
    rig.capture().await;
    let _apply = rig.spawn_apply(&rurl, free_port(), &["--max-backoff", "2s"]);
    let mut p = rig.primary().conn(&rig.db).await;
    {
        let mut r = replica.conn(&rig.db).await;
        until_equal(&mut p, &mut r, "Sales Invoice", "O-0").await;
    }
    replica.stop();
    for i in 1..=20 {
        f.insert_invoice(&Invoice::draft(&format!("O-{i}"), "C1", 2))
            .await;
    }
    f.db_set("tabSales Invoice", "O-0", "status", "Paid".into(), true)
        .await;
    rig.capture().await;
    // The outage the acceptance asks for: 30 s with apply facing a dead replica.
    tokio::time::sleep(Duration::from_secs(30)).await;
    replica.restart();
    let mut r = replica.conn(&rig.db).await;
    for i in 0..=20 {
        until_equal(&mut p, &mut r, "Sales Invoice", &format!("O-{i}")).await;
    }
    let v = cdc(&[
        "verify",
        "--source",
        &rig.primary().cdc_url(&rig.db),
        "--replica",
        &rurl,
    ]);
    assert!(v.status.success(), "{}", text(&v));
}

/// `--filter`: only documents whose parent row matches reach the replica; the rest are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_filter_applies_only_matching_documents() {
    let rig = Rig::new("rowfilter").await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    for i in 0..6 {
        let customer = if i % 2 == 0 { "Acme" } else { "Other" };
        f.insert_invoice(&Invoice::draft(&format!("F-{i}"), customer, 1))
            .await;
    }
    rig.capture().await;
    let port = free_port();
    let _apply = rig.spawn_apply(
        &rurl,
        port,
        &["--filter", r#"Sales Invoice:{"customer": "Acme"}"#],
    );
    let filtered = || async {
        let body = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return 0.0,
        };
        body.lines()
            .filter(|l| {
                l.starts_with("frappe_cdc_apply_documents_total")
                    && l.contains("Sales Invoice")
                    && l.contains("filtered")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    common::wait_until(Duration::from_secs(60), "3 filtered invoices", || async {
        filtered().await >= 3.0
    })
    .await;
    let mut p = rig.primary().conn(&rig.db).await;
    let mut r = replica.conn(&rig.db).await;
    for i in [0, 2, 4] {
        until_equal(&mut p, &mut r, "Sales Invoice", &format!("F-{i}")).await;
    }
    for i in [1, 3, 5] {
        assert!(
            doc_image(&mut r, "Sales Invoice", &format!("F-{i}"))
                .await
                .is_none(),
            "F-{i} (customer Other) must not be applied"
        );
    }
    assert_eq!(filtered().await, 3.0);
}

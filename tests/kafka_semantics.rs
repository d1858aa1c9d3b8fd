//! Kafka semantics checked on the real broker (Apache Kafka, KRaft):
//! - apply's consumer-lag gauge equals Kafka's own view of the group (the LAG column of
//!   `kafka-consumer-groups --describe`, Kafka's tool class run on the same cluster), also
//!   while apply is stuck on a locked replica table;
//! - an offset the topic no longer holds (deleted by retention while apply was stopped)
//!   stops apply with a clear error instead of skipping documents;
//! - a compacted topic, once compacted, holds exactly the live documents (deletes and the
//!   old names of renames gone with their tombstones), and a fresh replica built from it with
//!   a new consumer group equals the primary.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::kafka_libs;
use common::metrics::{sample, try_scrape};
use common::rig::Rig;
use common::servers::free_port;
use common::topic::read_all;
use common::workload::Invoice;
use mysql_async::prelude::Queryable;

/// Sum over partitions of (low, high) watermarks of `topic`.
fn watermarks(bootstrap: &str, topic: &str) -> (i64, i64) {
    common::topic::watermarks(bootstrap, topic)
        .values()
        .fold((0, 0), |(l, h), (pl, ph)| (l + pl, h + ph))
}

/// The group's total lag on `topic` as Kafka's own tool reports it (None when the tool
/// lists no row for the topic yet).
fn kafka_tool_lag(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    let out = Command::new("java")
        .arg("-Xmx256m")
        .arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()))
        .args([
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ])
        .output()
        .expect("java");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = None;
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
        if cols.len() >= 6 && cols[0] == group && cols[1] == topic {
            let lag: i64 = cols[5].parse().ok()?;
            total = Some(total.unwrap_or(0) + lag);
        }
    }
    total
}

async fn gauge_lag(port: u16) -> Option<f64> {
    let m = try_scrape(port).await?;
    m.contains("frappe_cdc_apply_consumer_lag_messages{")
        .then(|| sample(&m, "frappe_cdc_apply_consumer_lag_messages"))
}

async fn wait_verified(rig: &Rig, rurl: &str, what: &str) {
    rig.wait_in_sync(rurl, Duration::from_secs(180), what).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauge_is_kafkas_view_even_while_apply_is_stuck() {
    let rig = Rig::new("lagview").await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    f.insert_customer("C1", "Commercial").await;
    for i in 0..5 {
        f.insert_invoice(&Invoice::draft(&format!("L-{i}"), "C1", 2))
            .await;
    }
    let _capture = rig.spawn_capture(None, free_port(), &["--partitions", "2"]);
    let aport = free_port();
    let _apply = rig.spawn_apply(&rurl, aport, &[]);
    wait_verified(&rig, &rurl, "before the lock").await;

    // Apply gets stuck behind a table lock on the replica while 30 invoices arrive.
    let mut lock = replica.conn(&rig.db).await;
    lock.query_drop("LOCK TABLES `tabSales Invoice` WRITE")
        .await
        .expect("lock");
    let (_, high0) = watermarks(&rig.bootstrap(), &rig.topic);
    for i in 5..35 {
        f.insert_invoice(&Invoice::draft(&format!("L-{i}"), "C1", 2))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let (gauge, tool) = loop {
        let (_, high) = watermarks(&rig.bootstrap(), &rig.topic);
        let tool = kafka_tool_lag(&rig.bootstrap(), "r1", &rig.topic);
        let gauge = gauge_lag(aport).await;
        if high >= high0 + 30
            && let (Some(g), Some(t)) = (gauge, tool)
            && g as i64 == t
            && t >= 30
        {
            break (g, t);
        }
        assert!(
            Instant::now() < deadline,
            "gauge {gauge:?} never matched Kafka's lag {tool:?} while stuck (high watermark {high}, was {high0})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("stuck apply: gauge {gauge} = kafka-consumer-groups LAG {tool}");
    lock.query_drop("UNLOCK TABLES").await.expect("unlock");
    drop(lock);
    wait_verified(&rig, &rurl, "after the lock").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tool = kafka_tool_lag(&rig.bootstrap(), "r1", &rig.topic);
        let gauge = gauge_lag(aport).await;
        if tool == Some(0) && gauge == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "caught up, but gauge {gauge:?} / Kafka {tool:?} are not both 0"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_deleted_by_retention_stops_apply_instead_of_skipping() {
    let rig = Rig::new("retention").await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    f.insert_customer("C1", "Commercial").await;
    let _capture = rig.spawn_capture(
        None,
        free_port(),
        &[
            "--topic-config",
            "retention.ms=1500",
            "--topic-config",
            "segment.ms=300",
        ],
    );
    for i in 0..3 {
        f.insert_invoice(&Invoice::draft(&format!("R-{i}"), "C1", 2))
            .await;
    }
    let apply = rig.spawn_apply(&rurl, free_port(), &[]);
    wait_verified(&rig, &rurl, "first invoices").await;
    drop(apply);
    let (_, stored) = watermarks(&rig.bootstrap(), &rig.topic);

    // While apply is down, more invoices arrive and retention deletes everything older
    // than 1.5 s, including the offset the replica stored.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 3;
    loop {
        f.insert_invoice(&Invoice::draft(&format!("R-{i}"), "C1", 2))
            .await;
        i += 1;
        let (low, _) = watermarks(&rig.bootstrap(), &rig.topic);
        if low > stored {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention never deleted offset {stored} (low watermark {low})"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let mut r = replica.conn(&rig.db).await;
    let before: Option<u64> = r
        .query_first("SELECT COUNT(*) FROM `tabSales Invoice`")
        .await
        .expect("count");
    let out = Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args(["apply", "--replica", &rurl, "--brokers", &rig.bootstrap()])
        .args(["--topic", &rig.topic, "--group", "r1"])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
        .env("RUST_LOG", "error")
        .output()
        .expect("run apply");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "apply must halt: {err}");
    assert!(
        err.contains("no longer holds")
            && err.contains("re-snapshot")
            && err.contains("reset the group"),
        "the error says what happened and what to do: {err}"
    );
    let after: Option<u64> = r
        .query_first("SELECT COUNT(*) FROM `tabSales Invoice`")
        .await
        .expect("count");
    assert_eq!(before, after, "nothing after the gap was applied");
    eprintln!(
        "apply refused to skip: {} invoices on the primary, {before:?} on the replica",
        i
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_holds_the_live_documents_and_builds_a_fresh_replica() {
    let rig = Rig::new("compact").await;
    let mut f = rig.frappe().await;
    let _capture = rig.spawn_capture(
        None,
        free_port(),
        &[
            "--topic-config",
            "cleanup.policy=compact",
            "--topic-config",
            "segment.ms=200",
            "--topic-config",
            "min.cleanable.dirty.ratio=0.01",
            "--topic-config",
            "delete.retention.ms=500",
            "--topic-config",
            "min.compaction.lag.ms=0",
        ],
    );
    for c in ["C1", "C2", "C3"] {
        f.insert_customer(c, "Commercial").await;
    }
    let mut invoices: Vec<Invoice> = (0..12)
        .map(|i| Invoice::draft(&format!("P-{i}"), "C1", 3))
        .collect();
    for inv in &invoices {
        f.insert_invoice(inv).await;
    }
    for round in 0..3 {
        for inv in invoices.iter_mut() {
            inv.grand_total = format!("{round}{}.000000000", inv.children.len());
            f.save_invoice(inv).await;
        }
    }
    for inv in invoices.drain(..4) {
        f.delete_invoice(&inv).await;
    }
    f.rename_customer("C3", "C3-renamed").await;

    // Wait for compaction: every key once, no tombstones; a new invoice every 0.5 s rolls
    // the active segment so the older ones can be cleaned.
    let mut p = rig.primary().conn(&rig.db).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pokes = 0;
    let (msgs, live) = loop {
        f.insert_invoice(&Invoice::draft(&format!("poke-{pokes}"), "C2", 1))
            .await;
        pokes += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let msgs = read_all(&rig.bootstrap(), &rig.topic);
        let keys: Vec<(String, String)> = msgs
            .iter()
            .map(|m| {
                (
                    m.key["doctype"].as_str().unwrap_or("").to_string(),
                    m.key["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let distinct: BTreeSet<_> = keys.iter().cloned().collect();
        let tombstones = msgs.iter().filter(|m| m.value.is_none()).count();
        let mut live: BTreeSet<(String, String)> = BTreeSet::new();
        for (dt, table) in [
            ("Sales Invoice", "tabSales Invoice"),
            ("Customer", "tabCustomer"),
        ] {
            let names: Vec<String> = p
                .query(format!("SELECT name FROM `{table}`"))
                .await
                .expect("names");
            live.extend(names.into_iter().map(|n| (dt.to_string(), n)));
        }
        let topic_docs: BTreeSet<_> = distinct
            .iter()
            .filter(|(dt, _)| dt == "Sales Invoice" || dt == "Customer")
            .cloned()
            .collect();
        // The newest poke may still sit in the active segment with its earlier versions.
        if distinct.len() == keys.len() && tombstones == 0 && topic_docs == live {
            break (msgs.len(), live.len());
        }
        assert!(
            Instant::now() < deadline,
            "topic never compacted to the live documents: {} messages, {} keys, {tombstones} tombstones, topic docs {} vs live {}",
            keys.len(),
            distinct.len(),
            topic_docs.len(),
            live.len()
        );
    };
    assert!(
        live >= 8 + 3,
        "8 invoices, 3 customers and the pokes are live"
    );
    assert!(
        !read_all(&rig.bootstrap(), &rig.topic)
            .iter()
            .any(|m| m.key["name"] == "C3" || m.key["name"] == "P-0"),
        "the old name of the rename and the deleted invoices are gone"
    );

    // A fresh replica with a new group, built from the compacted topic alone.
    let (_replica, rurl) = rig.replica().await;
    let aport = free_port();
    let _apply = rig.spawn_apply(&rurl, aport, &[]);
    wait_verified(&rig, &rurl, "fresh replica from the compacted topic").await;
    let m = try_scrape(aport).await.unwrap_or_default();
    assert_eq!(
        sample(&m, "frappe_cdc_apply_open_conflicts"),
        0.0,
        "no conflicts from versions compacted away"
    );
    eprintln!(
        "compacted topic: {msgs} messages for {live} live documents ({pokes} pokes); a fresh replica built from it is equal"
    );
}

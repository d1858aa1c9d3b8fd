//! Capture as a long-running process: SIGTERM checkpoints everything and exits 0 (a restart
//! re-sends nothing), and a primary restart mid-stream is survived by reconnecting.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::rig::Rig;
use common::servers::{KillOnDrop, Mariadb, free_port};
use common::topic::read_all;
use common::workload::{Frappe, Invoice};

fn spawn_capture(url: &str, rig: &Rig, port: u16) -> KillOnDrop {
    rig.spawn_capture(
        Some(url),
        port,
        &["--heartbeat", "1s", "--checkpoint-interval", "5s"],
    )
}

/// Sum of the samples of `name` whose line contains `filter`.
async fn metric(port: u16, name: &str) -> f64 {
    metric_where(port, name, "").await
}

async fn metric_where(port: u16, name: &str, filter: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return -1.0;
    };
    let body = r.text().await.unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn source_ids(rig: &Rig) -> (usize, usize) {
    let msgs = read_all(&rig.bootstrap(), &rig.topic);
    let ids: HashSet<String> = msgs
        .iter()
        .filter_map(|m| m.value.as_ref())
        .map(|v| {
            format!(
                "{}|{}|{}",
                v["source"]["gtid"], v["source"]["position"], v["source"]["doc_index"]
            )
        })
        .collect();
    (msgs.iter().filter(|m| m.value.is_some()).count(), ids.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_everything_and_exits_zero() {
    let rig = Rig::new("sigterm").await;
    let mut f = rig.frappe().await;
    let port = free_port();
    let mut child = spawn_capture(&rig.primary().cdc_url(&rig.db), &rig, port);
    for i in 0..30 {
        f.insert_invoice(&Invoice::draft(&format!("T-{i}"), "C1", 2))
            .await;
    }
    common::wait_until(Duration::from_secs(60), "30 invoices captured", || async {
        metric_where(
            port,
            "frappe_cdc_capture_documents_total",
            "doctype=\"Sales Invoice\"",
        )
        .await
            >= 30.0
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "capture did not exit within 30 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // The checkpoint interval is 5 s, so only the shutdown checkpoint can explain no replay.
    rig.capture().await;
    let (n, unique) = source_ids(&rig);
    assert_eq!(n, unique, "a restart after SIGTERM re-sent envelopes");
    assert_eq!(n, 34, "4 fixture documents and 30 invoices, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_primary_restart() {
    // Its own primary: restarting the shared one would disturb other tests.
    let mut m = Mariadb::primary();
    let mut rig = Rig::new("restart").await;
    m.sql_socket(&format!("CREATE DATABASE `{}`", rig.db));
    let schema = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/frappe_schema.sql"
    ))
    .expect("fixture");
    m.sql_socket(&format!("USE `{}`; {schema}", rig.db));
    rig.server_id += 1;
    let url = format!("mysql://cdc@127.0.0.1:{}/{}", m.port, rig.db);
    let port = free_port();
    let child = spawn_capture(&url, &rig, port);
    // Restart only once capture is streaming the binlog (a create envelope, not a snapshot).
    let mut f = Frappe::new(m.conn(&rig.db).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while metric_where(port, "frappe_cdc_capture_documents_total", "op=\"create\"").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "capture never started streaming"
        );
        f.insert_invoice(&Invoice::draft(&format!("R-{i}"), "C1", 1))
            .await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = i;
    drop(f);
    m.restart();
    let mut f = Frappe::new(m.conn(&rig.db).await);
    for i in first..first + 5 {
        f.insert_invoice(&Invoice::draft(&format!("R-{i}"), "C1", 1))
            .await;
    }
    common::wait_until(
        Duration::from_secs(90),
        "invoices after the restart",
        || async {
            read_all(&rig.bootstrap(), &rig.topic)
                .iter()
                .any(|m| m.key["name"] == format!("R-{}", first + 4))
        },
    )
    .await;
    assert!(
        metric(port, "frappe_cdc_capture_reconnects_total").await >= 1.0,
        "no reconnect was counted"
    );
    drop(child);
    let names: HashSet<String> = read_all(&rig.bootstrap(), &rig.topic)
        .iter()
        .filter_map(|m| m.key["name"].as_str().map(String::from))
        .collect();
    for i in 0..first + 5 {
        assert!(names.contains(&format!("R-{i}")), "R-{i} missing");
    }
}

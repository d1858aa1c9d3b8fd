//! Kill -9 apply at 20 points of a running workload, restart it each time; afterwards verify
//! reports the replica equal, and a per-document apply counter kept by the test (a replica
//! trigger logging every write of a Sales Invoice row with its `modified`) shows no document
//! version written twice. Every workload change bumps `modified`, so one version = one write.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::rig::Rig;
use common::servers::{KillOnDrop, free_port};
use common::workload::invoice_churn;
use mysql_async::prelude::Queryable;

fn spawn_apply(rig: &Rig, rurl: &str, port: u16) -> KillOnDrop {
    rig.spawn_apply(rurl, port, &[])
}

async fn applied(port: u16) -> Option<f64> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        body.lines()
            .filter(|l| {
                l.starts_with("frappe_cdc_apply_documents_total")
                    && l.contains("outcome=\"applied\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_apply_twenty_times_applies_each_version_once() {
    let rig = Rig::new("applycrash").await;
    let (replica, rurl) = rig.replica().await;
    let mut r = replica.conn(&rig.db).await;
    common::create_apply_log(&mut r).await;
    let _capture = rig.spawn_capture(
        None,
        free_port(),
        &["--heartbeat", "1s", "--checkpoint-interval", "200ms"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let wl = tokio::spawn(invoice_churn(
        rig.frappe().await,
        "K".into(),
        2,
        Duration::from_millis(5),
        Arc::clone(&stop),
        Arc::new(AtomicU64::new(0)),
    ));
    for round in 0..20u64 {
        let port = free_port();
        let apply = spawn_apply(&rig, &rurl, port);
        let target = 1.0 + (round * 7 % 11) as f64;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while applied(port).await.is_none_or(|v| v < target) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: apply never applied {target} documents"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = Command::new("kill")
            .args(["-9", &apply.id().to_string()])
            .status();
        drop(apply);
    }
    stop.store(true, Ordering::Release);
    wl.await.expect("workload");
    let _apply = spawn_apply(&rig, &rurl, free_port());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v = rig.verify(&rurl, &["--doctype", "Sales Invoice"]);
        if v.status.success() {
            eprintln!(
                "{}",
                String::from_utf8_lossy(&v.stdout)
                    .lines()
                    .find(|l| l.starts_with("total"))
                    .unwrap_or("")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica never caught up: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let twice = common::versions_written_twice(&mut r).await;
    let writes: u64 = r
        .query_first("SELECT COUNT(*) FROM apply_log")
        .await
        .expect("count")
        .unwrap_or(0);
    eprintln!("{writes} document versions written to the replica across 20 kills");
    assert!(
        twice.is_empty(),
        "document versions applied twice: {twice:?}"
    );
    assert!(writes > 40);
}

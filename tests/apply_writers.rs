//! Split batches (`--consistency document --writers 2`): a batch of 64+ documents is written by two
//! concurrent replica transactions that commit in order, the last one with the offsets.
//!
//! 1. A failure of one part rolls every part back: a replica trigger fails the offset write
//!    (the last part) with a lock-wait error while a flag row exists; no invoice of the batch
//!    may appear on the replica meanwhile, and once the flag is gone the batch (retried as one
//!    transaction) lands whole.
//! 2. Updates of 200 documents, two of them edited locally on the replica first: exactly those
//!    two are recorded as conflicts and left alone, the other 198 are applied, in split
//!    batches.
//! 3. 200 new documents through the split LOAD DATA path, one of which (W-250) was created on
//!    the replica first: apply does not read the copies of new documents, so LOAD DATA finds
//!    it; the batch is re-run with every copy read, W-250 becomes a conflict with the local
//!    document kept, and the other 199 still go through split LOAD DATA.
//!
//! 4. A crash between the part commits (a test-only fault point aborts apply right after part
//!    one committed): the restarted apply replays the batch; part one's documents are skipped
//!    as applied, the rest written, no version twice, no conflict.
//!
//! Throughout, a trigger logs every write of a Sales Invoice row with its `modified`: no
//! version may be written twice, and at the end the replica equals the primary (`verify`:
//! 398 equal, the three conflicts reported as known divergences).

mod common;

use std::time::Duration;

use common::metrics::{sample, scrape, try_scrape};
use common::rig::Rig;
use common::servers::free_port;
use common::workload::{Frappe, Invoice};
use mysql_async::prelude::Queryable;

async fn count(c: &mut mysql_async::Conn, sql: &str) -> u64 {
    c.query_first::<u64, _>(sql)
        .await
        .expect(sql)
        .unwrap_or_default()
}

/// `series` from apply's `/metrics`; 0 while the endpoint is not up yet.
async fn metric(port: u16, series: &str) -> f64 {
    try_scrape(port)
        .await
        .map_or(0.0, |text| sample(&text, series))
}

/// Fails the test if any Sales Invoice version was written to the replica twice.
async fn assert_each_version_written_once(r: &mut mysql_async::Conn) {
    let twice = common::versions_written_twice(r).await;
    assert!(twice.is_empty(), "versions written twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_batches_are_atomic_exactly_once_and_conflict_checked() {
    let rig = Rig::new("writers").await;
    let (replica, rurl) = rig.replica().await;
    let mut r = replica.conn(&rig.db).await;
    common::create_apply_log(&mut r).await;
    let mut f: Frappe = rig.frappe().await;
    // The fixture's snapshot first, through a first apply process, to the end of the topic:
    // a message it left behind (a Single of the snapshot takes the one-message path) would
    // be the next apply's first batch, retried alone while the offsets write fails, and no
    // batch would ever be split (CI, 2026-12-08, and 2 of 6 runs here).
    f.insert_invoice(&Invoice::draft("W-INIT", "C1", 1)).await;
    rig.capture().await;
    let first = rig.spawn_apply(
        &rurl,
        free_port(),
        &["--consistency", "document", "--writers", "2"],
    );
    common::wait_until(Duration::from_secs(60), "the fixture applied", || async {
        count(
            &mut replica.conn(&rig.db).await,
            "SELECT COUNT(*) FROM `tabSales Invoice` WHERE name = 'W-INIT'",
        )
        .await
            == 1
    })
    .await;
    rig.wait_applied_to_end(&replica, Duration::from_secs(60))
        .await;
    drop(first);

    // 1. Atomicity: while a flag row exists, the offsets write (done by the last part only)
    // fails with a lock wait error; no part of the batch may commit.
    r.query_drop("CREATE TABLE fail_offsets (x int)")
        .await
        .expect("flag table");
    for ev in ["INSERT", "UPDATE"] {
        r.query_drop(format!(
            "CREATE TRIGGER fail_{ev} BEFORE {ev} ON `_frappe_cdc_offsets` FOR EACH ROW \
             IF (SELECT COUNT(*) FROM fail_offsets) > 0 THEN \
               SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1205, MESSAGE_TEXT = 'injected lock wait'; \
             END IF"
        ))
        .await
        .expect("fault trigger");
    }
    r.query_drop("INSERT INTO fail_offsets VALUES (1)")
        .await
        .expect("flag on");
    let mut invoices: Vec<Invoice> = (0..200)
        .map(|i| Invoice::draft(&format!("W-{i:03}"), "C1", 2))
        .collect();
    for inv in &invoices {
        f.insert_invoice(inv).await;
    }
    rig.capture().await;
    // Apply is started after the capture so that the 200 documents are fetched together; the
    // first poll only takes what the first fetch returned, so this apply fetches up to 8 MiB
    // at once. Should a start still give a batch too small to split (under 2 x 32 documents;
    // it is then retried as it is for as long as the offsets write fails), apply is
    // restarted, at most three times; the batch it retries always starts at the same stored
    // offset, so nothing of the test's claim changes.
    let mut attempt = 0;
    let (apply, _port) = loop {
        attempt += 1;
        let port = free_port();
        let apply = rig.spawn_apply(
            &rurl,
            port,
            &[
                "--consistency",
                "document",
                "--writers",
                "2",
                "--kafka-option",
                "max.partition.fetch.bytes=8388608",
                "--kafka-option",
                "fetch.max.bytes=8388608",
            ],
        );
        let split = common::wait_for(Duration::from_secs(60), || async {
            let rolled = metric(
                port,
                "frappe_cdc_apply_split_batches_total{outcome=\"rolled_back\"}",
            )
            .await;
            let retries = metric(port, "frappe_cdc_apply_retries_total").await;
            if rolled >= 1.0 && retries >= 2.0 {
                Some(true)
            } else if rolled == 0.0 && retries >= 4.0 && attempt < 3 {
                Some(false)
            } else {
                None
            }
        })
        .await;
        match split {
            Some(true) => break (apply, port),
            Some(false) => {
                eprintln!(
                    "attempt {attempt}: apply retried a batch too small to split; restarting it"
                );
                drop(apply);
            }
            None => {
                let text = try_scrape(port).await.unwrap_or_default();
                let state: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        [
                            "retries",
                            "split_batches",
                            "batch_documents",
                            "documents_total",
                        ]
                        .iter()
                        .any(|k| l.starts_with(&format!("frappe_cdc_apply_{k}")))
                    })
                    .collect();
                panic!(
                    "timed out after 60s (attempt {attempt}) waiting for a split batch rolled back and retried; apply metrics:\n{}",
                    state.join("\n")
                );
            }
        }
    };
    assert_eq!(
        count(
            &mut r,
            "SELECT COUNT(*) FROM `tabSales Invoice` WHERE name LIKE 'W-0%' OR name LIKE 'W-1%'"
        )
        .await,
        0,
        "a part committed although another part failed"
    );
    r.query_drop("DELETE FROM fail_offsets")
        .await
        .expect("flag off");
    common::wait_until(Duration::from_secs(60), "round 1 applied", || async {
        count(
            &mut replica.conn(&rig.db).await,
            "SELECT COUNT(*) FROM `tabSales Invoice` WHERE name LIKE 'W-0%' OR name LIKE 'W-1%'",
        )
        .await
            == 200
    })
    .await;
    assert_each_version_written_once(&mut r).await;
    drop(apply);

    // 2. Updates in split batches, two of them conflicting with local edits of the field
    // the primary changes.
    let mut local = Frappe::new(replica.conn(&rig.db).await);
    for n in ["W-007", "W-150"] {
        local
            .db_set(
                "tabSales Invoice",
                n,
                "grand_total",
                "1.000000000".into(),
                true,
            )
            .await;
    }
    for (i, inv) in invoices.iter_mut().enumerate() {
        inv.grand_total = format!("{}.000000000", 2000 + i);
        f.save_invoice(inv).await;
    }
    rig.capture().await;
    // Each round starts apply after its capture, so the round's documents arrive together.
    const COMMITTED: &str = "frappe_cdc_apply_split_batches_total{outcome=\"committed\"}";
    let port = free_port();
    let apply = rig.spawn_apply(
        &rurl,
        port,
        &["--consistency", "document", "--writers", "2"],
    );
    common::wait_until(Duration::from_secs(90), "round 2 applied", || async {
        count(
            &mut replica.conn(&rig.db).await,
            "SELECT COUNT(*) FROM `tabSales Invoice` WHERE name LIKE 'W-%' AND grand_total >= 2000",
        )
        .await
            == 198
    })
    .await;
    let conflicts: Vec<String> = r
        .query("SELECT name FROM `_frappe_cdc_conflicts` WHERE status = 'open' ORDER BY name")
        .await
        .expect("conflicts");
    assert_eq!(conflicts, vec!["W-007", "W-150"]);
    for n in ["W-007", "W-150"] {
        let total: Option<String> = r
            .exec_first(
                "SELECT CAST(grand_total AS CHAR) FROM `tabSales Invoice` WHERE name = ?",
                (n,),
            )
            .await
            .expect("grand_total");
        assert_eq!(
            total.as_deref(),
            Some("1.000000000"),
            "{n}: local copy kept"
        );
    }
    assert_each_version_written_once(&mut r).await;
    assert!(
        sample(&scrape(port).await, COMMITTED) >= 1.0,
        "round 2 went through a split batch"
    );
    drop(apply);

    // 3. New documents through the split LOAD DATA path; W-250 exists on the replica already.
    local
        .insert_invoice(&Invoice::draft("W-250", "LOCAL", 2))
        .await;
    for i in 200..400 {
        f.insert_invoice(&Invoice::draft(&format!("W-{i:03}"), "C1", 3))
            .await;
    }
    rig.capture().await;
    let port = free_port();
    let _apply = rig.spawn_apply(
        &rurl,
        port,
        &["--consistency", "document", "--writers", "2"],
    );
    common::wait_until(Duration::from_secs(60), "round 3 applied", || async {
        count(
            &mut replica.conn(&rig.db).await,
            "SELECT COUNT(*) FROM `tabSales Invoice` WHERE name LIKE 'W-%'",
        )
        .await
            == 401
            && count(
                &mut replica.conn(&rig.db).await,
                "SELECT COUNT(*) FROM `_frappe_cdc_conflicts` WHERE name = 'W-250' AND status = 'open'",
            )
            .await
                == 1
    })
    .await;
    assert_each_version_written_once(&mut r).await;
    let customer: Option<String> = r
        .query_first("SELECT customer FROM `tabSales Invoice` WHERE name = 'W-250'")
        .await
        .expect("W-250");
    assert_eq!(customer.as_deref(), Some("LOCAL"), "local W-250 kept");
    let reason: Option<String> = r
        .query_first("SELECT reason FROM `_frappe_cdc_conflicts` WHERE name = 'W-250'")
        .await
        .expect("reason");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.starts_with("document exists on the replica with other content")),
        "{reason:?}"
    );
    let m = scrape(port).await;
    assert!(
        sample(&m, "frappe_cdc_apply_load_rereads_total") >= 1.0,
        "LOAD DATA found W-250 and the batch was re-read"
    );
    assert!(
        sample(&m, COMMITTED) >= 1.0,
        "round 3 went through a split batch: {}",
        m.lines()
            .filter(|l| l.contains("split")
                || l.contains("batch_documents")
                || l.contains("documents_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(sample(&m, "frappe_cdc_apply_bulk_rows_total{path=\"load\"}") > 0.0);

    // Everything but the two conflicts equals the primary.
    let v = rig.verify(&rurl, &["--doctype", "Sales Invoice"]);
    let out = String::from_utf8_lossy(&v.stdout).to_string();
    let total = out.lines().find(|l| l.starts_with("total")).unwrap_or("");
    assert!(
        v.status.success()
            && total.contains("398 equal, 0 missing on replica, 0 extra on replica, 0 different")
            && total.contains("3 known divergences"),
        "verify: {out}"
    );
}

/// The crash window of the split-batch commit protocol, hit deterministically: apply aborts
/// (a test-only fault point of debug builds) right after the first part of a split batch
/// committed, before the last part (which carries the offsets). Part one's documents are on
/// the replica, the offsets are not: the restarted apply reads the whole batch again, finds
/// part one's documents already applied, writes the rest, and no version is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_part_commits_replays_the_batch_exactly_once() {
    let rig = Rig::new("partcrash").await;
    let (replica, rurl) = rig.replica().await;
    let mut r = replica.conn(&rig.db).await;
    common::create_apply_log(&mut r).await;
    let mut f: Frappe = rig.frappe().await;
    for i in 0..200 {
        f.insert_invoice(&Invoice::draft(&format!("PC-{i:03}"), "C1", 2))
            .await;
    }
    rig.capture().await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args(["apply", "--replica", &rurl, "--brokers", &rig.bootstrap()])
        .args([
            "--topic",
            &rig.topic,
            "--group",
            "r1",
            "--consistency",
            "document",
            "--writers",
            "2",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
        .env("FRAPPE_CDC_FAULT_AFTER_PART", "1")
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("apply with the fault point");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().expect("apply output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fault point: aborting after part 1"),
        "apply must reach the fault point: {err}"
    );
    let landed = count(
        &mut r,
        "SELECT COUNT(*) FROM `tabSales Invoice` WHERE name LIKE 'PC-%'",
    )
    .await;
    let stored = count(
        &mut r,
        "SELECT COALESCE(SUM(next_offset), 0) FROM `_frappe_cdc_offsets`",
    )
    .await;
    assert!(landed > 0 && landed < 200, "part one only: {landed}");
    let port = free_port();
    let _apply = rig.spawn_apply(
        &rurl,
        port,
        &["--consistency", "document", "--writers", "2"],
    );
    rig.wait_in_sync(&rurl, Duration::from_secs(90), "after the crash")
        .await;
    assert_each_version_written_once(&mut r).await;
    let conflicts = count(&mut r, "SELECT COUNT(*) FROM `_frappe_cdc_conflicts`").await;
    assert_eq!(
        conflicts, 0,
        "replayed documents are duplicates, not conflicts"
    );
    let skipped = metric(
        port,
        "frappe_cdc_apply_documents_total{doctype=\"Sales Invoice\",outcome=\"skipped\"}",
    )
    .await;
    assert!(
        skipped >= landed as f64,
        "part one's {landed} documents replayed as skipped ({skipped}); offsets stored before: {stored}"
    );
}

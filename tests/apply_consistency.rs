//! What a reader of the replica sees while apply runs. Each source transaction of the workload
//! moves an amount between a Customer (`credit_limit`) and a Sales Invoice
//! (`outstanding_amount`), two doctypes on two partitions, so their sum per pair is constant
//! on the primary. A checker reads every pair from the replica in a tight loop, each round in
//! one REPEATABLE READ transaction, and counts rounds where a sum is off:
//! * `--consistency transaction`: never, also across a kill -9 of apply, and with batches
//!   split over two writers (between source transactions; the transactions walk the pairs in
//!   turn, so up to 64 consecutive ones, 128 documents, share a batch);
//! * `--consistency document` (one document per replica transaction): it happens, which shows
//!   the checker can fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::rig::Rig;
use common::servers::free_port;
use mysql_async::prelude::Queryable;

const PAIRS: usize = 64;
const TOTAL: i64 = 1000;

/// Partitions so that Customer and Sales Invoice land on different ones.
fn partitions() -> i32 {
    use frappe_cdc::kafka::producer::doctype_partition;
    (2..16)
        .find(|n| doctype_partition("Customer", *n) != doctype_partition("Sales Invoice", *n))
        .expect("some partition count separates the two doctypes")
}

async fn seed(rig: &Rig) {
    let mut f = rig.frappe().await;
    for i in 0..PAIRS {
        f.insert_customer(&format!("C{i}"), "Commercial").await;
        f.insert_invoice(&common::workload::Invoice::draft(
            &format!("S{i}"),
            &format!("C{i}"),
            1,
        ))
        .await;
    }
    let mut c = rig.primary().conn(&rig.db).await;
    c.query_drop(format!(
        "UPDATE `tabCustomer` SET credit_limit = {TOTAL}; UPDATE `tabSales Invoice` SET outstanding_amount = 0"
    ))
    .await
    .expect("seed amounts");
}

/// Moves random amounts within the pairs in turn until `stop`, one source transaction each.
async fn workload(db: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut c = common::rig::shared_primary().conn(&db).await;
    let mut x: u64 = 12345;
    let mut k = 0usize;
    while !stop.load(Ordering::Acquire) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pair = k % PAIRS;
        k += 1;
        let amount = ((x >> 40) % 101) as i64 - 50;
        c.query_drop(format!(
            "START TRANSACTION; \
             UPDATE `tabCustomer` SET credit_limit = credit_limit - ({amount}), modified = now(6) WHERE name = 'C{pair}'; \
             UPDATE `tabSales Invoice` SET outstanding_amount = outstanding_amount + ({amount}), modified = now(6) WHERE name = 'S{pair}'; \
             COMMIT"
        ))
        .await
        .expect("move an amount");
        done.fetch_add(1, Ordering::Release);
    }
}

/// Reads every pair in one REPEATABLE READ transaction per round until `stop`; returns
/// (rounds, rounds with a pair whose sum is off).
async fn checker(replica_url: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let opts = mysql_async::Opts::from_url(&replica_url).expect("url");
    let opts = mysql_async::OptsBuilder::from_opts(opts).pass(Some("adminpass"));
    let mut c = mysql_async::Conn::new(opts).await.expect("replica");
    c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .expect("isolation");
    let (mut rounds, mut broken) = (0u64, 0u64);
    while !stop.load(Ordering::Acquire) {
        c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .expect("start");
        let cust: Vec<(String, f64)> = c
            .query("SELECT name, CAST(credit_limit AS DOUBLE) FROM `tabCustomer` ORDER BY name")
            .await
            .expect("customers");
        let inv: Vec<(String, f64)> = c
            .query("SELECT name, CAST(outstanding_amount AS DOUBLE) FROM `tabSales Invoice` ORDER BY name")
            .await
            .expect("invoices");
        c.query_drop("COMMIT").await.expect("commit");
        rounds += 1;
        let off = cust.iter().any(|(n, v)| {
            let s = format!("S{}", &n[1..]);
            inv.iter()
                .find(|(m, _)| *m == s)
                .is_some_and(|(_, w)| (v + w - TOTAL as f64).abs() > 1e-6)
        });
        if off {
            broken += 1;
        }
    }
    (rounds, broken)
}

/// Returns (source transactions, checker rounds, rounds with a pair off, split batches the
/// last apply process committed).
async fn run(tag: &str, apply_flags: &[&str], kill_apply: bool) -> (u64, u64, u64, f64) {
    let rig = Rig::new(tag).await;
    seed(&rig).await;
    let (replica, rurl) = rig.replica().await;
    let parts = partitions().to_string();
    let _capture = rig.spawn_capture(
        None,
        free_port(),
        &["--partitions", &parts, "--checkpoint-interval", "50ms"],
    );
    let mut port = free_port();
    let mut apply = rig.spawn_apply(&rurl, port, apply_flags);
    rig.wait_in_sync(&rurl, Duration::from_secs(120), "initial load")
        .await;

    let stop_check = Arc::new(AtomicBool::new(false));
    let check = tokio::spawn(checker(rurl.clone(), Arc::clone(&stop_check)));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let wl = tokio::spawn(workload(
        rig.db.clone(),
        Arc::clone(&stop),
        Arc::clone(&done),
    ));
    common::wait_until(Duration::from_secs(60), "workload under way", || async {
        done.load(Ordering::Acquire) >= 300
    })
    .await;
    if kill_apply {
        let _ = std::process::Command::new("kill")
            .args(["-9", &apply.id().to_string()])
            .status();
        drop(apply);
        port = free_port();
        apply = rig.spawn_apply(&rurl, port, apply_flags);
    }
    common::wait_until(Duration::from_secs(120), "workload done", || async {
        done.load(Ordering::Acquire) >= 1500
    })
    .await;
    stop.store(true, Ordering::Release);
    wl.await.expect("workload");
    rig.wait_in_sync(&rurl, Duration::from_secs(120), "after the workload")
        .await;
    stop_check.store(true, Ordering::Release);
    let (rounds, broken) = check.await.expect("checker");
    let split = common::metrics::sample(
        &common::metrics::scrape(port).await,
        "frappe_cdc_apply_split_batches_total{outcome=\"committed\"}",
    );
    drop(apply);
    drop(replica);
    eprintln!(
        "{tag}: {} source transactions, {rounds} checker rounds, {broken} saw a pair off, {split} split batches",
        done.load(Ordering::Acquire)
    );
    (done.load(Ordering::Acquire), rounds, broken, split)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_consistency_never_shows_half_a_source_transaction() {
    let (txs, rounds, broken, split) = run("txcons", &["--consistency", "transaction"], true).await;
    assert!(
        txs >= 1500 && rounds >= 100,
        "{txs} transactions, {rounds} rounds"
    );
    assert!(
        split >= 1.0,
        "no batch was split over the two writers: the test did not cover split batches"
    );
    assert_eq!(broken, 0, "a reader saw half of a source transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_consistency_can_show_half_a_source_transaction() {
    let (_, rounds, broken, _) = run(
        "doccons",
        &[
            "--consistency",
            "document",
            "--batch-size",
            "1",
            "--writers",
            "1",
        ],
        false,
    )
    .await;
    assert!(rounds >= 100, "{rounds} rounds");
    assert!(
        broken > 0,
        "the checker never saw a pair off in document mode: it cannot tell the modes apart"
    );
}

/// A document edited on the replica, then one source transaction moving an amount within its
/// pair: what happens to the other document of the transaction under each policy.
async fn conflict_in_transaction(tag: &str, policy: &str) -> (Vec<(String, String)>, f64) {
    let rig = Rig::new(tag).await;
    seed(&rig).await;
    let (replica, rurl) = rig.replica().await;
    let parts = partitions().to_string();
    let _capture = rig.spawn_capture(
        None,
        free_port(),
        &["--partitions", &parts, "--checkpoint-interval", "50ms"],
    );
    let flags = [
        "--consistency",
        "transaction",
        "--on-conflict-in-transaction",
        policy,
    ];
    let _apply = rig.spawn_apply(&rurl, free_port(), &flags);
    rig.wait_in_sync(&rurl, Duration::from_secs(120), "initial load")
        .await;
    let mut r = replica.conn(&rig.db).await;
    r.query_drop("UPDATE `tabCustomer` SET credit_limit = 1 WHERE name = 'C0'")
        .await
        .expect("local edit");
    let mut p = rig.primary().conn(&rig.db).await;
    p.query_drop(
        "START TRANSACTION; \
         UPDATE `tabCustomer` SET credit_limit = credit_limit - 7, modified = now(6) WHERE name = 'C0'; \
         UPDATE `tabSales Invoice` SET outstanding_amount = outstanding_amount + 7, modified = now(6) WHERE name = 'S0'; \
         COMMIT; \
         UPDATE `tabCustomer` SET credit_limit = credit_limit - 3, modified = now(6) WHERE name = 'C1'",
    )
    .await
    .expect("source transactions");
    // The later, unrelated transaction applies either way: wait for it.
    common::wait_until(Duration::from_secs(60), "the later transaction", || async {
        let mut r = replica.conn(&rig.db).await;
        let v: Option<f64> = r
            .query_first("SELECT CAST(credit_limit AS DOUBLE) FROM `tabCustomer` WHERE name = 'C1'")
            .await
            .expect("c1");
        v == Some((TOTAL - 3) as f64)
    })
    .await;
    let open: Vec<(String, String)> = r
        .query("SELECT doctype, name FROM `_frappe_cdc_conflicts` WHERE status = 'open' ORDER BY doctype, name")
        .await
        .expect("conflicts");
    let s0: Option<f64> = r
        .query_first(
            "SELECT CAST(outstanding_amount AS DOUBLE) FROM `tabSales Invoice` WHERE name = 'S0'",
        )
        .await
        .expect("s0");
    (open, s0.unwrap_or(f64::NAN))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_skips_its_document_or_holds_its_transaction() {
    let (open, s0) = conflict_in_transaction("skipdoc", "skip-document").await;
    assert_eq!(open, vec![("Customer".to_string(), "C0".to_string())]);
    assert_eq!(
        s0, 7.0,
        "skip-document: the invoice of the transaction applies"
    );
    let (open, s0) = conflict_in_transaction("holdtx", "hold-transaction").await;
    assert_eq!(
        open,
        vec![
            ("Customer".to_string(), "C0".to_string()),
            ("Sales Invoice".to_string(), "S0".to_string())
        ],
        "hold-transaction: every document of the transaction is recorded"
    );
    assert_eq!(
        s0, 0.0,
        "hold-transaction: nothing of the transaction applies"
    );
}

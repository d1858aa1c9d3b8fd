//! A 1,000,000-row transaction (one statement inserting a million GL Entry documents, the shape
//! of a bulk ledger import) captured by the `frappe-cdc` binary: every document reaches the
//! topic, and the process's peak RSS (VmHWM, sampled every 20 ms) stays under 512 MiB.

mod common;

use std::time::{Duration, Instant};

use common::rig::Rig;
use common::topic::count_all;
use mysql_async::prelude::Queryable;

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_transaction_with_bounded_memory() {
    const ROWS: u64 = 1_000_000;
    let mut rig = Rig::new("large").await;
    rig.round().await;
    let mut c = rig.primary().conn(&rig.db).await;
    let t = Instant::now();
    c.query_drop(format!(
        "INSERT INTO `tabGL Entry` (name, creation, modified, modified_by, owner, docstatus, posting_date, account, debit, credit, voucher_type, voucher_no, remarks) \
         SELECT CONCAT('GLE-', seq), '2024-06-01 10:00:00.000001', '2024-06-01 10:00:00.000001', 'Administrator', 'Administrator', 1, '2024-06-01', \
         'Debtors - A', seq / 100, 0, 'Journal Entry', CONCAT('JV-', seq DIV 10), 'bulk import' FROM seq_1_to_{ROWS}"
    ))
    .await
    .expect("one million-row transaction");
    eprintln!(
        "primary committed {ROWS} rows in one transaction in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let mut child = rig.spawn_capture(None, common::servers::free_port(), &["--stop-at-end"]);
    let pid = child.id();
    let mut peak_kib = 0;
    let status = loop {
        if let Some(h) = vm_hwm_kib(pid) {
            peak_kib = peak_kib.max(h);
        }
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1500),
            "capture did not finish the transaction in 25 min"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "capture failed: {status}");
    let n = count_all(&rig.bootstrap(), &rig.topic);
    let before = rig.seen as u64;
    eprintln!(
        "captured {} documents of a {ROWS}-row transaction in {secs:.1} s ({:.0} rows/s), peak RSS {:.1} MiB",
        n - before,
        ROWS as f64 / secs,
        peak_kib as f64 / 1024.0
    );
    assert_eq!(
        n - before,
        ROWS,
        "every document of the transaction reaches the topic"
    );
    assert!(
        peak_kib < 512 * 1024,
        "peak RSS {peak_kib} KiB exceeds 512 MiB"
    );
}

//! The error policy and the operator traps of issue 18, each on real servers: wrong passwords
//! and a taken metrics port halt with exit 2 and say what to fix; capture halts on a changed
//! doctype filter and on data changes logged without row events; apply keeps its session
//! settings on pooled connections (a replica in another time zone and with
//! `NO_BACKSLASH_ESCAPES`), picks up a column added while it runs, writes a document keeping
//! more child rows than the protocol has parameters, reports `/readyz` truthfully, keeps the
//! initial snapshot out of the lag histogram and reads its open-conflicts gauge from the table.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::doc_image;
use common::metrics::{sample, try_scrape};
use common::rig::Rig;
use common::servers::{Mariadb, free_port};
use common::workload::Invoice;
use mysql_async::prelude::Queryable;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the binary with `args` and the passwords given, waiting at most `limit`.
fn run_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_frappe-cdc"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (out, t0.elapsed())
}

/// Runs `frappe-cdc capture --stop-at-end` for `rig` with `extra` flags (120 s at most).
fn capture_to_end(rig: &Rig, extra: &[&str]) -> Output {
    let state = rig.state.to_str().unwrap_or_default().to_string();
    let (surl, brokers, server_id, port) = (
        rig.primary().cdc_url(&rig.db),
        rig.bootstrap(),
        rig.server_id.to_string(),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut args = vec![
        "capture",
        "--source",
        &surl,
        "--brokers",
        &brokers,
        "--topic",
        &rig.topic,
        "--server-id",
        &server_id,
        "--state-dir",
        &state,
        "--metrics-addr",
        &port,
        "--stop-at-end",
    ];
    args.extend_from_slice(extra);
    run_within(
        &args,
        &[("FRAPPE_CDC_SOURCE_PASSWORD", "cdcpass")],
        Duration::from_secs(120),
    )
    .0
}

/// Runs `frappe-cdc apply` for `rig` into `rurl` as `group` with `password` (20 s at most).
fn apply_within(
    rig: &Rig,
    rurl: &str,
    group: &str,
    metrics_port: &str,
    password: &str,
) -> (Output, Duration) {
    let (brokers, addr) = (rig.bootstrap(), format!("127.0.0.1:{metrics_port}"));
    run_within(
        &[
            "apply",
            "--replica",
            rurl,
            "--brokers",
            &brokers,
            "--topic",
            &rig.topic,
            "--group",
            group,
            "--metrics-addr",
            &addr,
        ],
        &[("FRAPPE_CDC_REPLICA_PASSWORD", password)],
        Duration::from_secs(20),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_halt_within_10_s_naming_user_and_host() {
    let rig = Rig::new("badpw").await;
    let (_replica, rurl) = rig.replica().await;
    let surl = rig.primary().cdc_url(&rig.db);
    let port = free_port().to_string();
    let (out, took) = run_within(
        &[
            "capture",
            "--source",
            &surl,
            "--brokers",
            &rig.bootstrap(),
            "--topic",
            &rig.topic,
            "--server-id",
            &rig.server_id.to_string(),
            "--state-dir",
            rig.state.to_str().unwrap_or_default(),
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ],
        &[("FRAPPE_CDC_SOURCE_PASSWORD", "wrong")],
        Duration::from_secs(20),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "capture: {t}");
    assert!(took < Duration::from_secs(10), "capture took {took:?}");
    assert!(
        t.contains("cdc@127.0.0.1") && t.contains("Access denied") && t.contains("fix:"),
        "capture names user, host and the fix: {t}"
    );
    assert!(!t.contains("wrong"), "no password in the output: {t}");
    let (out, took) = apply_within(&rig, &rurl, "r1", &port, "wrong");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "apply: {t}");
    assert!(took < Duration::from_secs(10), "apply took {took:?}");
    assert!(
        t.contains("admin@127.0.0.1") && t.contains("Access denied") && t.contains("fix:"),
        "apply names user, host and the fix: {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_on_a_taken_metrics_port_exits_2_naming_it() {
    let rig = Rig::new("port").await;
    let (_replica, rurl) = rig.replica().await;
    let port = free_port();
    let _first = rig.spawn_apply(&rurl, port, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_scrape(port).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "first apply never served metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (out, took) = apply_within(&rig, &rurl, "r2", &port.to_string(), "adminpass");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(t.contains(&format!("port {port}")), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_refuses_a_changed_doctype_filter() {
    let mut rig = Rig::new("filter").await;
    rig.filter = frappe_cdc::frappe::catalog::Filter::new(&["Customer".into()], &[]);
    rig.capture().await;
    let out = capture_to_end(
        &rig,
        &[
            "--include-doctype",
            "Customer",
            "--include-doctype",
            "Sales Invoice",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("doctype filter") && t.contains("re-snapshot"),
        "{t}"
    );
    // The same filter runs on.
    let out = capture_to_end(&rig, &["--include-doctype", "Customer"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Runs capture to the end after `sql` ran on the primary in one session.
async fn capture_after(tag: &str, sql: &[&str]) -> Output {
    let rig = Rig::new(tag).await;
    let mut f = rig.frappe().await;
    f.insert_invoice(&Invoice::draft("SINV-1", "C1", 2)).await;
    rig.capture().await;
    let mut admin = rig.primary().conn(&rig.db).await;
    for s in sql {
        admin.query_drop(*s).await.expect("primary statement");
    }
    capture_to_end(&rig, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_halts_on_data_changes_without_row_events() {
    let out = capture_after(
        "stmt",
        &[
            "SET SESSION binlog_format = 'STATEMENT'",
            "UPDATE `tabSales Invoice` SET remarks = 'statement' WHERE name = 'SINV-1'",
        ],
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("UPDATE on tracked table tabSales Invoice") && t.contains("binlog_format=ROW"),
        "{t}"
    );
    let out = capture_after("trunc", &["TRUNCATE TABLE `tabSales Invoice Item`"]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("TRUNCATE on tracked table tabSales Invoice Item") && t.contains("re-snapshot"),
        "{t}"
    );
    // An untracked table written in statement format is not a reason to stop.
    let out = capture_after(
        "stmt_untracked",
        &[
            "SET SESSION binlog_format = 'STATEMENT'",
            "CREATE TABLE IF NOT EXISTS `__scratch` (a int)",
            "INSERT INTO `__scratch` VALUES (1)",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Type Probe rows with the values whose meaning depends on the session: TIMESTAMPs, NULLs,
/// backslashes, tabs and quotes.
async fn write_probes(p: &mut mysql_async::Conn, from: usize, to: usize, tag: &str) {
    for i in from..to {
        p.exec_drop(
            "INSERT INTO `tabType Probe` (name, creation, modified, data_f, small_text_f, long_text_f, timestamp_f, datetime_f) \
             VALUES (?, now(6), now(6), ?, ?, NULL, ?, ?) \
             ON DUPLICATE KEY UPDATE data_f = VALUES(data_f), small_text_f = VALUES(small_text_f), timestamp_f = VALUES(timestamp_f), modified = now(6)",
            (
                format!("TP-{i}"),
                format!("a\\b\\\\c {tag}"),
                format!("tab\there \\N quote' {tag} \\"),
                format!("2026-03-29 0{}:30:00.123456", i % 4),
                "2026-03-29 02:30:00.5",
            ),
        )
        .await
        .expect("probe");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_in_another_zone_with_no_backslash_escapes_ends_equal() {
    let rig = Rig::new("session").await;
    let replica = Mariadb::start(&[
        "--default-time-zone=+05:30",
        "--sql-mode=NO_BACKSLASH_ESCAPES,STRICT_TRANS_TABLES",
    ]);
    replica.create_site(&rig.db).await;
    let rurl = replica.replica_url(&rig.db);
    let mut p = rig.primary().conn(&rig.db).await;
    // New documents (the LOAD DATA path), then updates (upserts), over several batches so
    // pooled connections are reused.
    write_probes(&mut p, 0, 120, "v1").await;
    let _capture = rig.spawn_capture(None, free_port(), &[]);
    let _apply = rig.spawn_apply(&rurl, free_port(), &["--batch-size", "20"]);
    rig.wait_in_sync(&rurl, Duration::from_secs(90), "new documents")
        .await;
    write_probes(&mut p, 0, 120, "v2").await;
    rig.wait_in_sync(&rurl, Duration::from_secs(90), "updated documents")
        .await;
    let mut r = replica.conn(&rig.db).await;
    let nulls: Option<u64> = r
        .query_first("SELECT COUNT(*) FROM `tabType Probe` WHERE long_text_f IS NULL")
        .await
        .expect("count");
    assert_eq!(nulls, Some(120), "NULLs stay NULL, not the text \\N");
    for name in ["TP-0", "TP-77"] {
        assert_eq!(
            doc_image(&mut r, "Type Probe", name).await,
            doc_image(&mut p, "Type Probe", name).await,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_on_the_replica_while_apply_runs_is_written() {
    let rig = Rig::new("newcol").await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    f.insert_customer("CUST-A", "Retail").await;
    let _capture = rig.spawn_capture(None, free_port(), &[]);
    let _apply = rig.spawn_apply(&rurl, free_port(), &[]);
    rig.wait_in_sync(&rurl, Duration::from_secs(60), "first customer")
        .await;
    let mut r = replica.conn(&rig.db).await;
    r.query_drop("ALTER TABLE `tabCustomer` ADD COLUMN `loyalty_tier` varchar(140)")
        .await
        .expect("replica column");
    let mut p = rig.primary().conn(&rig.db).await;
    p.query_drop("ALTER TABLE `tabCustomer` ADD COLUMN `loyalty_tier` varchar(140)")
        .await
        .expect("primary column");
    // Past the cache's recheck interval, so the test does not depend on timing luck.
    tokio::time::sleep(frappe_cdc::apply::replica::COLUMNS_RECHECK).await;
    f.insert_customer("CUST-B", "Retail").await;
    p.query_drop(
        "UPDATE `tabCustomer` SET loyalty_tier = 'gold' WHERE name IN ('CUST-A', 'CUST-B')",
    )
    .await
    .expect("set tier");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tiers: Vec<(String, Option<String>)> = r
            .query("SELECT name, loyalty_tier FROM `tabCustomer` WHERE name IN ('CUST-A', 'CUST-B') ORDER BY name")
            .await
            .expect("tiers");
        if tiers
            == [
                ("CUST-A".to_string(), Some("gold".to_string())),
                ("CUST-B".to_string(), Some("gold".to_string())),
            ]
        {
            break;
        }
        assert!(Instant::now() < deadline, "tier never written: {tiers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rig.wait_in_sync(&rurl, Duration::from_secs(60), "after the new column")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_keeping_more_child_rows_than_parameters_is_written() {
    use frappe_cdc::apply::replica::{SchemaCache, write_doc};
    use frappe_cdc::image::Image;
    let rig = Rig::new("manykids").await;
    let (replica, _) = rig.replica().await;
    let mut r = replica.conn(&rig.db).await;
    let rows = 66_000;
    let image = |n: usize| -> Image {
        let items: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                serde_json::json!({"name": format!("row-{i}"), "parent": "BIG-1", "parenttype": "Sales Invoice",
                    "parentfield": "items", "idx": i + 1, "item_code": "I1", "qty": "1.000000000"})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "parent": {"name": "BIG-1", "docstatus": 0, "customer": "C1"},
            "children": {"items": items},
        }))
        .expect("image")
    };
    let mut cache = SchemaCache::default();
    for n in [rows, rows, rows - 7] {
        let mut tx = r
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .expect("tx");
        write_doc(
            &mut tx,
            &mut cache,
            "Sales Invoice",
            "BIG-1",
            None,
            Some(&image(n)),
        )
        .await
        .unwrap_or_else(|e| panic!("write {n} rows: {e}"));
        tx.commit().await.expect("commit");
        let count: Option<u64> = r
            .query_first("SELECT COUNT(*) FROM `tabSales Invoice Item` WHERE parent = 'BIG-1'")
            .await
            .expect("count");
        assert_eq!(count, Some(n as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tells_whether_apply_can_work() {
    let rig = Rig::new("ready").await;
    let (mut replica, rurl) = rig.replica().await;
    replica.stop();
    let _capture = rig.spawn_capture(None, free_port(), &[]);
    let port = free_port();
    let _apply = rig.spawn_apply(&rurl, port, &[]);
    let readyz = || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz().await.is_none() {
        assert!(Instant::now() < deadline, "no /readyz");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(readyz().await, Some(503), "replica down: not ready");
    replica.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz().await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "never ready after the replica came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_not_lag_and_open_conflicts_come_from_the_table() {
    let rig = Rig::new("gauges").await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    for i in 0..20 {
        f.insert_invoice(&Invoice::draft(&format!("SINV-{i}"), "C1", 2))
            .await;
    }
    let _capture = rig.spawn_capture(None, free_port(), &[]);
    let port = free_port();
    let _apply = rig.spawn_apply(&rurl, port, &[]);
    rig.wait_in_sync(&rurl, Duration::from_secs(60), "snapshot")
        .await;
    let m = try_scrape(port).await.expect("metrics");
    assert!(
        sample(
            &m,
            "frappe_cdc_apply_documents_total{doctype=\"Sales Invoice\",outcome=\"applied\"}"
        ) >= 20.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "frappe_cdc_apply_end_to_end_lag_seconds_count"),
        0.0,
        "the initial snapshot is not lag"
    );
    // A local edit, then a primary change: a conflict.
    let mut r = replica.conn(&rig.db).await;
    r.query_drop("UPDATE `tabSales Invoice` SET remarks = 'local' WHERE name = 'SINV-3'")
        .await
        .expect("local edit");
    let mut p = rig.primary().conn(&rig.db).await;
    p.query_drop(
        "UPDATE `tabSales Invoice` SET remarks = 'primary' WHERE name IN ('SINV-3', 'SINV-4')",
    )
    .await
    .expect("primary edit");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = try_scrape(port).await.unwrap_or_default();
        if sample(&m, "frappe_cdc_apply_open_conflicts") == 1.0
            && sample(&m, "frappe_cdc_apply_end_to_end_lag_seconds_count") >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no conflict or lag sample: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id: Option<u64> = r
        .query_first("SELECT id FROM `_frappe_cdc_conflicts` WHERE status = 'open'")
        .await
        .expect("id");
    let out = Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args(["conflicts", "--replica", &rurl, "resolve"])
        .arg(id.expect("open conflict").to_string())
        .arg("--keep-local")
        .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
        .output()
        .expect("resolve");
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = try_scrape(port).await.unwrap_or_default();
        if sample(&m, "frappe_cdc_apply_open_conflicts") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "gauge stuck after resolve: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_waits_for_a_newer_version_being_folded_in() {
    let rig = Rig::new("resolvelock").await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    f.insert_invoice(&Invoice::draft("SINV-1", "C1", 1)).await;
    let _capture = rig.spawn_capture(None, free_port(), &[]);
    let apply = rig.spawn_apply(&rurl, free_port(), &[]);
    rig.wait_in_sync(&rurl, Duration::from_secs(60), "snapshot")
        .await;
    let mut r = replica.conn(&rig.db).await;
    r.query_drop("UPDATE `tabSales Invoice` SET remarks = 'local' WHERE name = 'SINV-1'")
        .await
        .expect("local edit");
    let mut p = rig.primary().conn(&rig.db).await;
    p.query_drop("UPDATE `tabSales Invoice` SET remarks = 'v1' WHERE name = 'SINV-1'")
        .await
        .expect("v1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let id: Option<u64> = r
            .query_first("SELECT id FROM `_frappe_cdc_conflicts` WHERE status = 'open'")
            .await
            .expect("id");
        if let Some(id) = id {
            break id;
        }
        assert!(Instant::now() < deadline, "no conflict");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(apply);
    // Fold a newer primary version in, the way apply does (under the record's row lock),
    // and hold the transaction open while resolve runs.
    let v2 = {
        let mut img = doc_image(&mut p, "Sales Invoice", "SINV-1")
            .await
            .expect("primary image");
        img["parent"]["remarks"] = serde_json::json!("v2");
        img
    };
    let mut fold = replica.conn(&rig.db).await;
    let mut tx = fold
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .expect("tx");
    let _: Option<u64> = tx
        .exec_first(
            "SELECT id FROM `_frappe_cdc_conflicts` WHERE id = ? FOR UPDATE",
            (id,),
        )
        .await
        .expect("lock");
    tx.exec_drop(
        "UPDATE `_frappe_cdc_conflicts` SET primary_after = ?, envelopes = envelopes + 1 WHERE id = ?",
        (v2.to_string(), id),
    )
    .await
    .expect("fold");
    let resolve = Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args(["conflicts", "--replica", &rurl, "resolve"])
        .arg(id.to_string())
        .arg("--accept-primary")
        .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("resolve");
    // Wait until resolve is blocked on the record, then let the fold commit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Blocked on the record: the locked read (or, without it, the final UPDATE).
        let waiting: Option<u64> = r
            .query_first("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE '%`_frappe_cdc_conflicts`%' AND info NOT LIKE '%processlist%'")
            .await
            .expect("processlist");
        if waiting.unwrap_or(0) > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            break;
        }
        if Instant::now() > deadline {
            let pl: Vec<(Option<String>, Option<String>)> = r
                .query("SELECT state, info FROM information_schema.processlist")
                .await
                .expect("processlist");
            panic!("resolve never waited for the lock: {pl:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.commit().await.expect("fold commit");
    let out = resolve.wait_with_output().expect("resolve");
    assert!(out.status.success(), "{}", text(&out));
    let remarks: Option<String> = r
        .query_first("SELECT remarks FROM `tabSales Invoice` WHERE name = 'SINV-1'")
        .await
        .expect("remarks");
    assert_eq!(remarks.as_deref(), Some("v2"), "the folded version wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_equal_only_by_collation_are_conflicts_not_overwrites() {
    let rig = Rig::new("collation").await;
    let (replica, rurl) = rig.replica().await;
    let mut r = replica.conn(&rig.db).await;
    // Documents created on the replica alone.
    r.query_drop(
        "INSERT INTO `tabCustomer` (name, customer_name, customer_group) VALUES ('ACME', 'local acme', 'Retail'), ('Zeta', 'local zeta', 'Retail')",
    )
    .await
    .expect("local customers");
    let before = (
        doc_image(&mut r, "Customer", "ACME").await,
        doc_image(&mut r, "Customer", "Zeta").await,
    );
    let mut f = rig.frappe().await;
    // Created on the primary in one burst, so they reach apply as one bulk batch.
    for i in 0..40 {
        f.insert_customer(&format!("CUST-{i:02}"), "Retail").await;
    }
    f.insert_customer("acme", "Retail").await;
    f.insert_customer("Zeta ", "Retail").await;
    let _capture = rig.spawn_capture(None, free_port(), &[]);
    let _apply = rig.spawn_apply(&rurl, free_port(), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (applied, conflicts): (Option<u64>, Option<u64>) = r
            .query_first("SELECT (SELECT COUNT(*) FROM `tabCustomer` WHERE name LIKE 'CUST-%'), (SELECT COUNT(*) FROM `_frappe_cdc_conflicts` WHERE status = 'open')")
            .await
            .ok()
            .flatten()
            .unwrap_or((None, None));
        if applied == Some(40) && conflicts == Some(2) {
            break;
        }
        if Instant::now() > deadline {
            let rows: Vec<(String, Option<String>)> = r
                .query("SELECT name, customer_name FROM `tabCustomer` WHERE name NOT LIKE 'CUST-%'")
                .await
                .expect("rows");
            panic!("applied {applied:?}, conflicts {conflicts:?}; replica: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = (
        doc_image(&mut r, "Customer", "ACME").await,
        doc_image(&mut r, "Customer", "Zeta").await,
    );
    assert_eq!(before, after, "the replica's own documents are untouched");
    let names: Vec<String> = r
        .query("SELECT name FROM `tabCustomer` WHERE name IN ('acme', 'zeta') ORDER BY name")
        .await
        .expect("names");
    assert_eq!(
        names,
        ["ACME", "Zeta"],
        "stored names keep the replica's bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_conflicts_read_passwords_from_files() {
    let rig = Rig::new("pwfile").await;
    let (_replica, rurl) = rig.replica().await;
    let dir = common::servers::scratch_dir("pwfile");
    let (spw, rpw) = (dir.join("source.pw"), dir.join("replica.pw"));
    std::fs::write(&spw, "cdcpass\n").expect("source password file");
    std::fs::write(&rpw, "adminpass\n").expect("replica password file");
    let (spw, rpw) = (
        spw.to_str().unwrap_or_default(),
        rpw.to_str().unwrap_or_default(),
    );
    let surl = rig.primary().cdc_url(&rig.db);
    let (out, _) = run_within(
        &[
            "verify",
            "--source",
            &surl,
            "--replica",
            &rurl,
            "--source-password-file",
            spw,
            "--replica-password-file",
            rpw,
        ],
        &[],
        Duration::from_secs(60),
    );
    let t = text(&out);
    assert!(
        matches!(out.status.code(), Some(0 | 1)) && t.contains("total:"),
        "verify compared with the passwords from files: {t}"
    );
    let (out, _) = run_within(
        &[
            "conflicts",
            "--replica",
            &rurl,
            "--replica-password-file",
            rpw,
            "list",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("0 conflict(s)"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_for_an_existing_topic_are_not_silently_ignored() {
    let rig = Rig::new("parts").await;
    rig.capture().await; // creates the topic with one partition
    let out = capture_to_end(&rig, &["--partitions", "3"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("--partitions only applies when capture creates the topic"),
        "{t}"
    );
}

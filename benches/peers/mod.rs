//! Peers: frappe-cdc beside Debezium (Kafka Connect with the MariaDB source and JDBC sink
//! connectors) and MariaDB native replication, on one primary, one broker, one backlog and one
//! live workload, each measured while the others are idle:
//! (a) capture of a pre-written backlog into Kafka, in source rows/s, and peak RSS;
//! (b) replica catch-up on that backlog of new documents, then on a backlog of updates to them
//!     (one Frappe-like save each: the parent and its 10 item rows), docs/s and replica CPU per row;
//! (c) commit→replica lag percentiles at 1,000 docs/s;
//! (d) whether each replica equals the primary (CHECKSUM TABLE of the two tables written).
//!
//! The primary keeps `log_bin_compress=OFF` (Debezium's binlog client cannot read MariaDB's
//! compressed events); frappe-cdc's capture is also measured on a second primary with it ON.

mod connect;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};

use crate::common::servers::{KillOnDrop, Mariadb, PRIMARY_ARGS, free_port, scratch_dir};
use crate::updates::saved_rows_sql;
use crate::{
    PeakRss, Report, add_arrivals, apply_round, binary, capture_to_end, cpu_secs, install_proc,
    lags, native_round, paced, pct, q1, spawn_apply, start_replica, wait_count, write_docs,
};
use connect::Connect;

const FC: &str = "frappe-cdc";
const DBZ: &str = "Debezium";
const NAT: &str = "native replication";

/// Rows of the backlog documents present on a server (parent + items).
const NEW_ROWS: &str = "SELECT (SELECT COUNT(*) FROM `tabSales Invoice` WHERE name LIKE 'BL-%') \
     + (SELECT COUNT(*) FROM `tabSales Invoice Item` WHERE parent LIKE 'BL-%')";
/// Reads the end offsets of Debezium's topics with one client for the section (a client per
/// reading, every 100 ms, would load the broker that Debezium's figures come from).
struct Offsets {
    bootstrap: String,
    topics: Vec<String>,
    client: Option<BaseConsumer>,
}

impl Offsets {
    fn new(bootstrap: &str, topics: &[String]) -> Offsets {
        Offsets {
            bootstrap: bootstrap.into(),
            topics: topics.to_vec(),
            client: None,
        }
    }

    /// Sum of the topics' end offsets (0 for a topic not created yet). A failed query drops
    /// the client, so that a topic created later is seen by a new one.
    fn sum(&mut self) -> i64 {
        let bootstrap = &self.bootstrap;
        let c = self.client.get_or_insert_with(|| {
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", "bench-peers-offsets")
                .create()
                .expect("consumer")
        });
        let mut failed = false;
        let sum = self
            .topics
            .iter()
            .map(|t| match c.fetch_watermarks(t, 0, Duration::from_secs(5)) {
                Ok((_, hi)) => hi,
                Err(_) => {
                    failed = true;
                    0
                }
            })
            .sum();
        if failed {
            self.client = None;
        }
        sum
    }

    /// Waits until the sum reaches `want`; seconds taken.
    async fn wait(&mut self, want: i64, timeout: Duration) -> f64 {
        let t = Instant::now();
        loop {
            let got = self.sum();
            if got >= want {
                return t.elapsed().as_secs_f64();
            }
            assert!(
                t.elapsed() < timeout,
                "Debezium: {got} of {want} records after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until `sql` (a count) reaches `want`; seconds taken.
async fn wait_rows(c: &mut mysql_async::Conn, sql: &str, want: u64, what: &str) -> f64 {
    // Every half second: these counts scan the backlog's rows on the replica being measured.
    let poll = Duration::from_millis(500);
    crate::wait_sql(c, sql, want, Duration::from_secs(1800), what, poll).await
}

/// Resumes Debezium's source and waits until it has produced `rows` more records to its
/// topics; seconds taken.
async fn debezium_capture(connect: &Connect, offsets: &mut Offsets, rows: u64) -> f64 {
    let base = offsets.sum();
    let t = Instant::now();
    connect.resume("dbz-source").await;
    offsets
        .wait(base + rows as i64, Duration::from_secs(1800))
        .await;
    t.elapsed().as_secs_f64()
}

/// CHECKSUM TABLE of the two tables the bench writes.
async fn checksums(c: &mut mysql_async::Conn) -> Vec<(String, Option<u64>)> {
    let mut out = Vec::new();
    for t in ["tabSales Invoice", "tabSales Invoice Item"] {
        let row: Option<(String, Option<u64>)> = c
            .query_first(format!("CHECKSUM TABLE `{t}`"))
            .await
            .expect("checksum");
        out.push((t.to_string(), row.and_then(|r| r.1)));
    }
    out
}

/// Reports how many of the two tables each replica holds exactly as the primary does.
async fn compare(
    r: &mut Report,
    when: &str,
    primary: &mut mysql_async::Conn,
    replicas: &mut [(&str, &mut mysql_async::Conn)],
) {
    let want = checksums(primary).await;
    for (peer, c) in replicas.iter_mut() {
        let got = checksums(c).await;
        let differ: Vec<&str> = want
            .iter()
            .zip(&got)
            .filter(|(w, g)| w.1 != g.1)
            .map(|(w, _)| w.0.as_str())
            .collect();
        r.peer(
            &format!("tables equal to the primary after {when} (of 2)"),
            peer,
            (2 - differ.len()) as f64,
            "tables",
        );
        if !differ.is_empty() {
            r.note(format!(
                "{peer}: after {when}, CHECKSUM TABLE differs from the primary's for {}",
                differ.join(", ")
            ));
        }
    }
}

/// `frappe-cdc capture` running live from `state`.
fn spawn_capture(url: &str, bootstrap: &str, topic: &str, state: &std::path::Path) -> KillOnDrop {
    let child = std::process::Command::new(binary())
        .args([
            "capture",
            "--source",
            url,
            "--brokers",
            bootstrap,
            "--topic",
            topic,
        ])
        .args(["--server-id", "7101", "--state-dir"])
        .arg(state)
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .env("FRAPPE_CDC_SOURCE_PASSWORD", "cdcpass")
        .env("RUST_LOG", "error")
        .spawn()
        .expect("spawn capture");
    KillOnDrop(child)
}

fn report_lags(r: &mut Report, peer: &str, lags: &[f64]) {
    for (p, name) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
        r.peer(
            &format!("commit→replica lag at 1,000 docs/s, {name}"),
            peer,
            pct(lags, p),
            "ms",
        );
    }
}

/// The peers section: `docs` backlog documents, `secs` seconds of live workload per pipeline.
pub async fn run(r: &mut Report, docs: u64, secs: u64) {
    let version = std::env::var("DEBEZIUM_VERSION").unwrap_or_default();
    eprintln!(
        "== peers: frappe-cdc, Debezium {version} and native replication on one {docs}-document backlog"
    );
    let primary = Mariadb::start(PRIMARY_ARGS);
    let (_, broker) = crate::common::rig::shared();
    let bootstrap = broker.bootstrap();
    let db = "pe";
    primary.create_site(db).await;
    let mut pc = primary.conn(db).await;
    install_proc(&mut pc).await;
    pc.query_drop(crate::updates::UPDATES)
        .await
        .expect("updates procedure");
    let pos0: String = q1(&mut pc, "SELECT @@gtid_binlog_pos").await;
    let url = primary.cdc_url(db);
    let topic = "pe-docs";
    let state = scratch_dir("pe-state");
    let (ssecs, _) = capture_to_end(&url, &bootstrap, topic, &state, 7101, &[]);
    r.peer(
        "start-up: process start → snapshot of the fixture done",
        FC,
        ssecs,
        "s",
    );

    // Debezium: a worker and the source connector, streaming before the backlog is written;
    // paused while it is written (its reader fills at most its 8,192-event queue meanwhile).
    let (connect, started) = Connect::start(&bootstrap).await;
    let t = Instant::now();
    connect
        .create("dbz-source", connect.source(&primary, db))
        .await;
    let topics = [
        format!("dbz.{db}.tabSales_Invoice"),
        format!("dbz.{db}.tabSales_Invoice_Item"),
    ];
    // A RUNNING connector may not have fixed its binlog position yet (its no-data snapshot runs
    // after the task starts): a warm-up document written before that is never streamed. Write
    // one every 2 s until one arrives.
    let mut warm = 0;
    let mut offsets = Offsets::new(&bootstrap, &topics);
    while offsets.sum() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "Debezium streamed none of {warm} warm-up documents in 180 s"
        );
        pc.exec_drop("CALL bench_docs(?, 1)", (format!("WARM{warm}-"),))
            .await
            .expect("warm-up document");
        warm += 1;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            offsets.wait(11, Duration::from_secs(3600)),
        )
        .await;
    }
    // Debezium missed the warm-up documents written before its position: remove them all on
    // the primary, so that every replica can end equal to it.
    let mut tx = pc
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .expect("begin");
    tx.query_drop("DELETE FROM `tabSales Invoice Item` WHERE parent LIKE 'WARM%'")
        .await
        .expect("delete warm-up items");
    tx.query_drop("DELETE FROM `tabSales Invoice` WHERE name LIKE 'WARM%'")
        .await
        .expect("delete warm-up documents");
    tx.commit().await.expect("commit");
    r.peer(
        "start-up: process start → streaming (no data snapshot)",
        DBZ,
        started + t.elapsed().as_secs_f64(),
        "s",
    );
    connect.pause("dbz-source").await;

    let rows = docs * 11;
    let wsecs = write_docs(&mut pc, "BL-", docs).await;
    r.add(
        "peers",
        &format!("primary: write {docs} new documents"),
        docs as f64 / wsecs,
        "docs/s",
    );

    // (a) capture of the backlog into Kafka.
    let (csecs, crss) = capture_to_end(&url, &bootstrap, topic, &state, 7101, &[]);
    r.peer(
        "capture of the new-documents backlog into Kafka",
        FC,
        rows as f64 / csecs,
        "rows/s",
    );
    let connect_rss = PeakRss::watch(connect.pid());
    let dsecs = debezium_capture(&connect, &mut offsets, rows).await;
    r.peer(
        "capture of the new-documents backlog into Kafka",
        DBZ,
        rows as f64 / dsecs,
        "rows/s",
    );
    r.peer(
        "capture peak RSS (Debezium: the Connect worker)",
        FC,
        crss,
        "MiB",
    );
    r.peer(
        "capture peak RSS (Debezium: the Connect worker)",
        DBZ,
        connect_rss.mib(),
        "MiB",
    );
    compressed(r, &bootstrap, docs).await;

    // (b) catch-up on the new documents, each alone.
    let end: String = q1(&mut pc, "SELECT @@gtid_binlog_pos").await;
    let (nsecs, ncpu, native) = native_round(&primary, db, &pos0, &end, docs).await;
    let per_row = |cpu: f64| cpu / rows as f64 * 1e6;
    r.peer(
        "catch-up, new documents",
        NAT,
        docs as f64 / nsecs,
        "docs/s",
    );
    r.peer(
        "replica CPU per row, new documents",
        NAT,
        per_row(ncpu),
        "µs",
    );
    let a = apply_round(&bootstrap, topic, "pe", db, docs, &[]).await;
    r.peer(
        "catch-up, new documents",
        FC,
        docs as f64 / a.secs,
        "docs/s",
    );
    r.peer(
        "replica CPU per row, new documents",
        FC,
        per_row(a.replica_cpu),
        "µs",
    );
    r.peer(
        "apply peak RSS (Debezium: the Connect worker)",
        FC,
        a.rss.mib(),
        "MiB",
    );
    let dbz_replica = start_replica();
    dbz_replica.create_site(db).await;
    let mut dc = dbz_replica.conn(db).await;
    let cpu0 = cpu_secs(dbz_replica.pid);
    let t = Instant::now();
    connect
        .create("dbz-sink", Connect::sink(&dbz_replica, db, &topics))
        .await;
    wait_rows(&mut dc, NEW_ROWS, rows, "Debezium sink").await;
    let dsecs = t.elapsed().as_secs_f64();
    r.peer(
        "catch-up, new documents",
        DBZ,
        docs as f64 / dsecs,
        "docs/s",
    );
    r.peer(
        "replica CPU per row, new documents",
        DBZ,
        per_row(cpu_secs(dbz_replica.pid) - cpu0),
        "µs",
    );
    r.peer(
        "apply peak RSS (Debezium: the Connect worker)",
        DBZ,
        connect_rss.mib(),
        "MiB",
    );
    r.peer(
        "catch-up time / native time, new documents",
        FC,
        a.secs / nsecs,
        "x",
    );
    r.peer(
        "catch-up time / native time, new documents",
        DBZ,
        dsecs / nsecs,
        "x",
    );

    // (b) a backlog of updates: every consumer stopped while it is written.
    let crate::ApplyRound {
        replica: fc_replica,
        process,
        ..
    } = a;
    drop(process);
    let mut nc = native.conn(db).await;
    nc.query_drop("STOP SLAVE").await.expect("stop slave");
    connect.pause("dbz-sink").await;
    connect.pause("dbz-source").await;
    let t = Instant::now();
    pc.exec_drop("CALL bench_updates('BL-', ?)", (docs,))
        .await
        .expect("updates");
    // Applied last by frappe-cdc (one partition) and native replication (one SQL thread).
    write_docs(&mut pc, "END1-", 1).await;
    r.add(
        "peers",
        &format!("primary: update {docs} documents"),
        docs as f64 / t.elapsed().as_secs_f64(),
        "docs/s",
    );
    let (csecs, _) = capture_to_end(&url, &bootstrap, topic, &state, 7101, &[]);
    r.peer(
        "capture of the updates backlog into Kafka",
        FC,
        rows as f64 / csecs,
        "rows/s",
    );
    let dsecs = debezium_capture(&connect, &mut offsets, rows).await;
    r.peer(
        "capture of the updates backlog into Kafka",
        DBZ,
        rows as f64 / dsecs,
        "rows/s",
    );
    let end: String = q1(&mut pc, "SELECT @@gtid_binlog_pos").await;
    let cpu0 = cpu_secs(native.pid);
    let t = Instant::now();
    nc.query_drop("START SLAVE").await.expect("start slave");
    let waited: i64 = q1(&mut nc, &format!("SELECT MASTER_GTID_WAIT('{end}', 1800)")).await;
    assert_eq!(waited, 0, "native replica caught up on the updates");
    let nsecs = t.elapsed().as_secs_f64();
    r.peer("catch-up, updates", NAT, docs as f64 / nsecs, "docs/s");
    r.peer(
        "replica CPU per row, updates",
        NAT,
        per_row(cpu_secs(native.pid) - cpu0),
        "µs",
    );
    let mut ac = fc_replica.conn(db).await;
    let cpu0 = cpu_secs(fc_replica.pid);
    let t = Instant::now();
    let apply = spawn_apply(&fc_replica, db, &bootstrap, topic, "pe", free_port(), &[]);
    crate::updates::wait_sentinel(&mut ac, "END1-0", "frappe-cdc apply").await;
    let asecs = t.elapsed().as_secs_f64();
    let saved: u64 = q1(&mut ac, &saved_rows_sql(1)).await;
    assert_eq!(saved, rows, "frappe-cdc's replica holds every saved row");
    r.peer("catch-up, updates", FC, docs as f64 / asecs, "docs/s");
    r.peer(
        "replica CPU per row, updates",
        FC,
        per_row(cpu_secs(fc_replica.pid) - cpu0),
        "µs",
    );
    let cpu0 = cpu_secs(dbz_replica.pid);
    let t = Instant::now();
    connect.resume("dbz-sink").await;
    wait_rows(&mut dc, &saved_rows_sql(1), rows, "Debezium sink").await;
    let dsecs = t.elapsed().as_secs_f64();
    r.peer("catch-up, updates", DBZ, docs as f64 / dsecs, "docs/s");
    r.peer(
        "replica CPU per row, updates",
        DBZ,
        per_row(cpu_secs(dbz_replica.pid) - cpu0),
        "µs",
    );
    r.peer(
        "catch-up time / native time, updates",
        FC,
        asecs / nsecs,
        "x",
    );
    r.peer(
        "catch-up time / native time, updates",
        DBZ,
        dsecs / nsecs,
        "x",
    );
    // (d) the result, once every pipeline is idle.
    compare(
        r,
        "both backlogs",
        &mut pc,
        &mut [(FC, &mut ac), (DBZ, &mut dc), (NAT, &mut nc)],
    )
    .await;

    // (c) lag at 1,000 docs/s, one pipeline at a time; Debezium first, as it is the slowest to
    // drain what the others' runs write.
    nc.query_drop("STOP SLAVE").await.expect("stop slave");
    add_arrivals(&mut dc).await;
    let (n, _) = paced(&primary, db, "DZLAG-", 1_000, secs).await;
    wait_count(&mut dc, "DZLAG-", n, Duration::from_secs(600)).await;
    report_lags(r, DBZ, &lags(&mut dc, "DZLAG-").await);
    connect.pause("dbz-sink").await;
    connect.pause("dbz-source").await;

    add_arrivals(&mut ac).await;
    let capture = spawn_capture(&url, &bootstrap, topic, &state);
    let behind = NEW_ROWS.replace("BL-", "DZLAG-");
    wait_rows(&mut ac, &behind, n * 11, "frappe-cdc apply").await;
    let (n, _) = paced(&primary, db, "FCLAG-", 1_000, secs).await;
    wait_count(&mut ac, "FCLAG-", n, Duration::from_secs(600)).await;
    report_lags(r, FC, &lags(&mut ac, "FCLAG-").await);
    drop(capture);
    drop(apply);

    // Native replication fires the replica's triggers for row events only when asked to.
    nc.query_drop("SET GLOBAL slave_run_triggers_for_rbr = YES")
        .await
        .expect("triggers");
    add_arrivals(&mut nc).await;
    nc.query_drop("START SLAVE").await.expect("start slave");
    let end: String = q1(&mut pc, "SELECT @@gtid_binlog_pos").await;
    let waited: i64 = q1(&mut nc, &format!("SELECT MASTER_GTID_WAIT('{end}', 600)")).await;
    assert_eq!(waited, 0, "native replica caught up before its lag run");
    let (n, _) = paced(&primary, db, "NALAG-", 1_000, secs).await;
    wait_count(&mut nc, "NALAG-", n, Duration::from_secs(600)).await;
    report_lags(r, NAT, &lags(&mut nc, "NALAG-").await);
    r.note(format!(
        "peers: Debezium {version} (MariaDB source + JDBC sink, plugin archives from Maven Central) on a Kafka Connect 4.1.1 standalone worker, JSON converters with schemas, sink upsert with batch.size 2000; frappe-cdc with its defaults (exactly-once capture, --consistency transaction); native replication with one SQL thread; all on the same broker, primary (log_bin_compress=OFF) and machine"
    ));
}

/// frappe-cdc's capture of the same backlog from a primary writing compressed binlog events
/// (Debezium cannot read those).
async fn compressed(r: &mut Report, bootstrap: &str, docs: u64) {
    let mut args = PRIMARY_ARGS.to_vec();
    args.push("--log-bin-compress=ON");
    let primary = Mariadb::start(&args);
    let db = "pz";
    primary.create_site(db).await;
    let mut pc = primary.conn(db).await;
    install_proc(&mut pc).await;
    let url = primary.cdc_url(db);
    let state = scratch_dir("pz-state");
    capture_to_end(&url, bootstrap, "pz-docs", &state, 7102, &[]);
    write_docs(&mut pc, "BL-", docs).await;
    let (secs, _) = capture_to_end(&url, bootstrap, "pz-docs", &state, 7102, &[]);
    r.peer(
        "capture of the new-documents backlog into Kafka, log_bin_compress=ON",
        FC,
        docs as f64 * 11.0 / secs,
        "rows/s",
    );
    r.peer(
        "capture of the new-documents backlog into Kafka, log_bin_compress=ON",
        DBZ,
        f64::NAN,
        "rows/s",
    );
}

/// The side-by-side table (markdown) and its JSON, peers under their own keys.
pub fn side_by_side(rows: &[(String, String, f64, String)]) -> (String, Value) {
    let peers = [FC, DBZ, NAT];
    let mut order: Vec<(&str, &str)> = Vec::new();
    for (what, _, _, unit) in rows {
        if !order.iter().any(|(w, _)| *w == what.as_str()) {
            order.push((what, unit));
        }
    }
    let cell = |what: &str, peer: &str| {
        rows.iter()
            .find(|(w, p, _, _)| w == what && p == peer)
            .map(|(_, _, v, u)| {
                if v.is_nan() {
                    "not supported".to_string()
                } else {
                    let digits = if u == "x" { 2 } else { 1 };
                    format!("{v:.digits$}")
                }
            })
            .unwrap_or_else(|| "–".into())
    };
    let mut text = format!(
        "| measurement | unit | {} |\n|---|---|---:|---:|---:|\n",
        peers.join(" | ")
    );
    for (what, unit) in &order {
        let cells: Vec<String> = peers.iter().map(|p| cell(what, p)).collect();
        text.push_str(&format!("| {what} | {unit} | {} |\n", cells.join(" | ")));
    }
    let mut json = BTreeMap::new();
    for (key, peer) in [
        ("frappe_cdc", FC),
        ("debezium", DBZ),
        ("native_replication", NAT),
    ] {
        let figures: BTreeMap<&str, Value> = rows
            .iter()
            .filter(|(_, p, _, _)| p == peer)
            .map(|(w, _, v, u)| (w.as_str(), json!({"value": v, "unit": u})))
            .collect();
        json.insert(key, json!(figures));
    }
    json.insert(
        "versions",
        json!({
            "debezium": std::env::var("DEBEZIUM_VERSION").unwrap_or_default(),
            "kafka_connect": "4.1.1",
            "mariadb": crate::machine()["mariadb"].clone(),
        }),
    );
    (text, json!(json))
}

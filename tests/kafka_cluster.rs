//! Apache Kafka as it runs in production: a three-node KRaft cluster (each node broker +
//! controller), an envelope topic of 3 partitions with replication factor 3 and
//! `min.insync.replicas=2`, and a Frappe workload running while brokers fail:
//! - `kill -9` of the broker leading the most partitions, restarted 10 s later;
//! - `kill -9` of the active controller (the KRaft quorum leader), restarted 10 s later;
//! - a clean stop of one broker for 30 s;
//! - all three brokers down for 60 s (capture must block, keep its position, and resume).
//!
//! Each case ends with the replica equal to the primary (`verify`), every source transaction
//! on the topic once and whole for a `read_committed` reader (exactly-once), no Sales Invoice version
//! written twice (a replica trigger logs every write with its `modified`), and for a killed
//! broker the loss visible in the Kafka metrics (disconnects, retries). A clean stop is a
//! controlled shutdown: clients see no failure at all, and capture must record no produce
//! error and no restart. The cases share one cluster and run one at a time.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::kafka::Kafka;
use common::metrics::{sample, try_scrape};
use common::rig::Rig;
use common::servers::{KillOnDrop, Mariadb, free_port};
use common::workload::invoice_churn;
use mysql_async::prelude::Queryable;

fn cluster() -> &'static Mutex<Kafka> {
    static C: OnceLock<Mutex<Kafka>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(Kafka::cluster(3)))
}

/// One case at a time: they share the cluster and the machine's two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn with_cluster<T>(f: impl FnOnce(&mut Kafka) -> T) -> T {
    let mut k = cluster().lock().unwrap_or_else(|p| p.into_inner());
    f(&mut k)
}

/// A running pipeline on the cluster: capture and apply processes, a replica with the
/// write-logging trigger, and a workload.
struct Pipeline {
    rig: Rig,
    _replica: Mariadb,
    rurl: String,
    r: mysql_async::Conn,
    _capture: KillOnDrop,
    _apply: KillOnDrop,
    cport: u16,
    aport: u16,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    wl: Option<tokio::task::JoinHandle<()>>,
}

impl Pipeline {
    async fn start(tag: &str) -> Pipeline {
        let bootstrap = with_cluster(|k| k.bootstrap());
        let rig = Rig::on_brokers(tag, &bootstrap).await;
        let (replica, rurl) = rig.replica().await;
        let mut r = replica.conn(&rig.db).await;
        common::create_apply_log(&mut r).await;
        let mut f = rig.frappe().await;
        f.insert_customer("C1", "Commercial").await;
        let cport = free_port();
        let mut args = common::kafka::CLUSTER_TOPIC_ARGS.to_vec();
        args.extend(["--heartbeat", "1s", "--checkpoint-interval", "200ms"]);
        let capture = rig.spawn_capture(None, cport, &args);
        let aport = free_port();
        let apply = rig.spawn_apply(&rurl, aport, &["--writers", "2"]);
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let wl = tokio::spawn(invoice_churn(
            rig.frappe().await,
            tag.to_string(),
            3,
            Duration::from_millis(10),
            Arc::clone(&stop),
            Arc::clone(&ops),
        ));
        let p = Pipeline {
            rig,
            _replica: replica,
            rurl,
            r,
            _capture: capture,
            _apply: apply,
            cport,
            aport,
            stop,
            ops,
            wl: Some(wl),
        };
        p.wait_applied(20.0, Duration::from_secs(120)).await;
        p
    }

    async fn applied(&self) -> f64 {
        match try_scrape(self.aport).await {
            Some(m) => sample(
                &m,
                "frappe_cdc_apply_documents_total{doctype=\"Sales Invoice\",outcome=\"applied\"}",
            ),
            None => 0.0,
        }
    }

    /// Waits until apply has applied at least `n` Sales Invoice versions.
    async fn wait_applied(&self, n: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.applied().await < n {
            assert!(
                Instant::now() < deadline,
                "apply did not reach {n} applied documents in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the workload, waits for the replica to equal the primary and checks that no
    /// version was written twice. Returns (documents on the primary, versions written,
    /// catch-up seconds after the workload stopped).
    async fn finish(mut self, what: &str) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Release);
        if let Some(wl) = self.wl.take() {
            wl.await.expect("workload");
        }
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(240);
        let total = loop {
            let v = self.rig.verify(&self.rurl, &[]);
            let out = String::from_utf8_lossy(&v.stdout).into_owned();
            if v.status.success() {
                break out
                    .lines()
                    .find(|l| l.starts_with("total"))
                    .unwrap_or("")
                    .to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: replica never became equal to the primary: {out}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let catch_up = t0.elapsed().as_secs_f64();
        // Exactly-once on the topic through the broker failure: a read_committed reader
        // finds every source transaction once and whole.
        let bootstrap = self.rig.bootstrap();
        let topic = self.rig.topic.clone();
        let msgs = tokio::task::spawn_blocking(move || common::topic::read_all(&bootstrap, &topic))
            .await
            .expect("read the topic");
        let txs = common::topic::whole_transactions(&msgs);
        eprintln!("{what}: {txs} source transactions on the topic, each once and whole");
        let twice = common::versions_written_twice(&mut self.r).await;
        assert!(
            twice.is_empty(),
            "{what}: document versions applied twice: {twice:?}"
        );
        let writes: u64 = self
            .r
            .query_first("SELECT COUNT(*) FROM apply_log")
            .await
            .expect("count")
            .unwrap_or(0);
        let mut p = self.rig.primary().conn(&self.rig.db).await;
        let docs: u64 = p
            .query_first("SELECT COUNT(*) FROM `tabSales Invoice`")
            .await
            .expect("count")
            .unwrap_or(0);
        eprintln!(
            "{what}: {docs} invoices, {} workload operations, {writes} versions written once each, 0 doubled, caught up {catch_up:.1} s after the workload stopped; verify: {total}",
            self.ops.load(Ordering::Relaxed)
        );
        (docs, writes, catch_up)
    }

    /// Broker disconnects plus request retries capture and apply counted (librdkafka's
    /// statistics), printed per process.
    async fn disconnects(&self, what: &str) -> (f64, f64) {
        let c = try_scrape(self.cport).await.unwrap_or_default();
        let a = try_scrape(self.aport).await.unwrap_or_default();
        let (cd, cr) = (
            sample(&c, "frappe_cdc_capture_kafka_disconnects_total"),
            sample(&c, "frappe_cdc_capture_kafka_request_retries_total"),
        );
        let (ad, ar) = (
            sample(&a, "frappe_cdc_apply_kafka_disconnects_total"),
            sample(&a, "frappe_cdc_apply_kafka_request_retries_total"),
        );
        eprintln!(
            "{what}: metrics: capture {cd} disconnects, {cr} retries, {} pipeline restarts; apply {ad} disconnects, {ar} retries",
            sample(&c, "frappe_cdc_capture_reconnects_total")
        );
        (cd + cr, ad + ar)
    }
}

/// Waits until the workload has done `n` more operations (it keeps writing to the primary
/// while Kafka is impaired).
async fn more_ops(p: &Pipeline, n: u64) {
    let start = p.ops.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.ops.load(Ordering::Relaxed) < start + n {
        assert!(Instant::now() < deadline, "workload stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node_down_then_back(
    tag: &str,
    pick: impl FnOnce(&mut Kafka, &str) -> u32,
    down: Duration,
    clean: bool,
) {
    let _serial = SERIAL.lock().await;
    let p = Pipeline::start(tag).await;
    let topic = p.rig.topic.clone();
    let victim = with_cluster(|k| pick(k, &topic));
    let before = p.applied().await;
    with_cluster(|k| {
        if clean {
            k.stop(victim)
        } else {
            k.kill(victim)
        }
    });
    eprintln!(
        "{tag}: node {victim} {} with {before} invoices applied",
        if clean { "stopped" } else { "killed" }
    );
    assert!(
        !with_cluster(|k| k.listening(victim)),
        "{tag}: node {victim} is really down"
    );
    more_ops(&p, 50).await;
    tokio::time::sleep(down.saturating_sub(Duration::from_secs(2))).await;
    // Two brokers of three still form the in-sync quorum: the pipeline keeps moving.
    p.wait_applied(before + 20.0, Duration::from_secs(120))
        .await;
    with_cluster(|k| {
        k.restart(victim);
        k.wait_ready(Duration::from_secs(120));
    });
    eprintln!("{tag}: node {victim} back");
    more_ops(&p, 50).await;
    let (cd, ad) = p.disconnects(tag).await;
    let c = try_scrape(p.cport).await.unwrap_or_default();
    let capture_failures = sample(&c, "frappe_cdc_capture_kafka_produce_errors_total")
        + sample(&c, "frappe_cdc_capture_reconnects_total");
    let (docs, writes, _) = p.finish(tag).await;
    assert!(
        docs > 40 && writes > docs,
        "{tag}: the workload ran ({docs} docs, {writes} writes)"
    );
    if clean {
        // A controlled shutdown moves leadership first and the broker leaves the metadata
        // before its sockets close: librdkafka drops the connection itself, nothing fails,
        // nothing is retried. What must hold: no produce error, no pipeline restart.
        assert_eq!(
            capture_failures, 0.0,
            "{tag}: a clean broker stop costs capture no error and no restart"
        );
    } else {
        assert!(
            cd + ad >= 1.0,
            "{tag}: the metrics show the broker's loss (capture {cd}, apply {ad})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_leader_is_killed_mid_stream() {
    node_down_then_back(
        "leaderkill",
        |k, topic| k.busiest_leader(topic),
        Duration::from_secs(10),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_controller_is_killed_mid_stream() {
    node_down_then_back(
        "ctrlkill",
        |k, _| k.active_controller().expect("a quorum leader"),
        Duration::from_secs(10),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_for_thirty_seconds() {
    node_down_then_back(
        "brokerstop",
        |k, topic| k.busiest_leader(topic),
        Duration::from_secs(30),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_brokers_down_for_a_minute() {
    let _serial = SERIAL.lock().await;
    let p = Pipeline::start("alldown").await;
    let ids = with_cluster(|k| k.ids());
    with_cluster(|k| ids.iter().for_each(|id| k.kill(*id)));
    let applied_at_kill = p.applied().await;
    eprintln!("alldown: every broker killed with {applied_at_kill} invoices applied");
    more_ops(&p, 100).await;
    tokio::time::sleep(Duration::from_secs(55)).await;
    // Both processes are still alive (blocked, not crashed) and serving metrics.
    assert!(
        try_scrape(p.cport).await.is_some(),
        "capture alive while Kafka is down"
    );
    assert!(
        try_scrape(p.aport).await.is_some(),
        "apply alive while Kafka is down"
    );
    with_cluster(|k| {
        ids.iter().for_each(|id| k.restart(*id));
        k.wait_ready(Duration::from_secs(120));
    });
    eprintln!("alldown: cluster back");
    more_ops(&p, 50).await;
    let (cd, ad) = p.disconnects("alldown").await;
    let (docs, writes, _) = p.finish("alldown").await;
    assert!(
        docs > 40 && writes > docs,
        "alldown: the workload ran ({docs} docs, {writes} writes)"
    );
    assert!(
        cd >= 1.0 && ad >= 1.0,
        "alldown: both saw Kafka disconnects (capture {cd}, apply {ad})"
    );
}

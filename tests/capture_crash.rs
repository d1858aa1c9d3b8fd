//! Kill -9 capture at many points of a running workload (two of them during the initial
//! snapshot), restart it each time, then check every document on the topic, as a
//! `read_committed` consumer sees it:
//! * its envelopes, with exact replays (same source position) dropped, form a chain: each
//!   change's `before` equals the previous envelope's `after` (a missing change breaks it);
//! * its last envelope equals the primary's final state (deleted: a delete, then a tombstone);
//! * exactly-once (the default): there are no replays at all, every source transaction is on
//!   the topic whole (`doc_count` envelopes, indexes 0..doc_count, the snapshot too), and the
//!   progress markers of each partition never go backwards. This case runs on a three-node
//!   Apache Kafka cluster (3 partitions, replication 3, `min.insync.replicas=2`) and kills -9
//!   the broker leading the most partitions once, half-way through the capture kills; it comes
//!   back three rounds later.
//!   At-least-once (`--delivery at-least-once`): replays are allowed, nothing may be missing.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::doc_image;
use common::kafka::Kafka;
use common::rig::Rig;
use common::servers::{KillOnDrop, free_port};
use common::topic::read_all;
use common::workload::{Frappe, Invoice};
use mysql_async::prelude::Queryable;
use serde_json::Value;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn spawn_capture(rig: &Rig, metrics_port: u16, delivery: &str) -> KillOnDrop {
    let mut args = vec![
        "--heartbeat",
        "1s",
        "--checkpoint-interval",
        "100ms",
        "--delivery",
        delivery,
    ];
    if rig.brokers.is_some() {
        args.extend(common::kafka::CLUSTER_TOPIC_ARGS);
    }
    rig.spawn_capture(None, metrics_port, &args)
}

/// Sum of a metric's samples on the process's /metrics, or None while it is not serving.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let body = common::metrics::try_scrape(port).await?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

async fn seed(rig: &Rig, n: usize) {
    let mut c = rig.primary().conn(&rig.db).await;
    c.query_drop(format!(
        "INSERT INTO `tabSales Invoice` (name, creation, modified, modified_by, owner, customer, grand_total, outstanding_amount, remarks) \
         SELECT CONCAT('SEED-', seq), '2024-01-01 00:00:00.000001', '2024-01-01 00:00:00.000001', 'Administrator', 'Administrator', 'C1', seq * 10, seq, 'seed' FROM seq_1_to_{n}"
    ))
    .await
    .expect("seed parents");
    c.query_drop(format!(
        "INSERT INTO `tabSales Invoice Item` (name, creation, modified, idx, item_code, qty, rate, parent, parentfield, parenttype) \
         SELECT CONCAT('SEED-', s.seq, '-', i.seq), '2024-01-01 00:00:00', '2024-01-01 00:00:00', i.seq, 'ITEM', i.seq, 1.5, CONCAT('SEED-', s.seq), 'items', 'Sales Invoice' \
         FROM seq_1_to_{n} s JOIN seq_1_to_4 i"
    ))
    .await
    .expect("seed children");
}

/// Random Frappe operations until `stop`; counts committed transactions.
async fn workload(mut f: Frappe, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut rng = Lcg(42);
    let mut live: Vec<Invoice> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        match rng.next(10) {
            0..=3 => {
                n += 1;
                let inv = Invoice::draft(&format!("W-{n}"), "C1", 1 + rng.next(4) as usize);
                f.insert_invoice(&inv).await;
                live.push(inv);
            }
            4..=5 if !live.is_empty() => {
                let i = rng.next(live.len() as u64) as usize;
                let inv = &mut live[i];
                if inv.children.len() > 2 {
                    inv.children.remove(0);
                }
                inv.grand_total = format!("{}.000000001", rng.next(100_000));
                let inv = inv.clone();
                f.save_invoice(&inv).await;
            }
            6..=7 => {
                let seed = 1 + rng.next(500);
                f.db_set(
                    "tabSales Invoice",
                    &format!("SEED-{seed}"),
                    "outstanding_amount",
                    format!("{}.5", rng.next(1000)).into(),
                    rng.next(2) == 0,
                )
                .await;
            }
            8 if !live.is_empty() => {
                let i = rng.next(live.len() as u64) as usize;
                let inv = live.swap_remove(i);
                f.delete_invoice(&inv).await;
            }
            _ => {
                let seed = 1 + rng.next(500);
                f.db_set(
                    "tabSales Invoice Item",
                    &format!("SEED-{seed}-2"),
                    "rate",
                    format!("{}.25", rng.next(100)).into(),
                    false,
                )
                .await;
            }
        }
        done.fetch_add(1, Ordering::Release);
        tokio::task::yield_now().await;
    }
}

fn source_id(e: &Value) -> String {
    let s = &e["source"];
    format!(
        "{}|{}|{}|{}",
        s["snapshot"], s["gtid"], s["position"], s["doc_index"]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_twenty_times_and_a_broker_once_delivers_every_transaction_once_and_whole() {
    let kafka = tokio::task::spawn_blocking(|| Kafka::cluster(3))
        .await
        .expect("cluster");
    let (replays, txs) = kill_nine(20, "exactly-once", Some(kafka)).await;
    assert_eq!(
        replays, 0,
        "exactly-once: no envelope may be on the topic twice"
    );
    assert!(txs > 20, "only {txs} source transactions checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_kill_nine_loses_nothing() {
    kill_nine(6, "at-least-once", None).await;
}

/// Runs the kill rounds and checks the topic (module docs); returns the replayed envelopes
/// dropped and the source transactions checked for wholeness (exactly-once only). With a
/// cluster of its own, its busiest partition leader is killed -9 half-way and restarted
/// three rounds later.
async fn kill_nine(rounds: u64, delivery: &str, mut cluster: Option<Kafka>) -> (u64, usize) {
    let exactly_once = delivery == "exactly-once";
    let tag = if exactly_once { "crash" } else { "crash-alo" };
    let rig = match &cluster {
        Some(k) => Rig::on_brokers(tag, &k.bootstrap()).await,
        None => Rig::new(tag).await,
    };
    let mut broker_down = None;
    seed(&rig, 3000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let wl = tokio::spawn(workload(
        rig.frappe().await,
        Arc::clone(&stop),
        Arc::clone(&done),
    ));

    let mut rng = Lcg(7);
    let mut kills = Vec::new();
    for round in 0..rounds {
        if let Some(k) = cluster.as_mut() {
            if round == rounds / 2 {
                let victim = k.busiest_leader(&rig.topic);
                k.kill(victim);
                assert!(!k.listening(victim), "node {victim} is really down");
                eprintln!("round {round}: broker {victim} killed -9");
                broker_down = Some(victim);
            } else if round == rounds / 2 + 3 {
                if let Some(victim) = broker_down.take() {
                    tokio::task::block_in_place(|| {
                        k.restart(victim);
                        k.wait_ready(Duration::from_secs(120));
                    });
                    eprintln!("round {round}: broker {victim} back");
                }
            }
        }
        let port = free_port();
        let mut child = spawn_capture(&rig, port, delivery);
        // Two kill points inside the snapshot (rows loading / envelopes going out), the rest
        // after a random number of documents streamed by this process.
        let (what, target) = match round {
            0 => (
                "frappe_cdc_capture_snapshot_rows_total",
                1.0 + rng.next(5000) as f64,
            ),
            1 => (
                "frappe_cdc_capture_documents_total",
                1.0 + rng.next(500) as f64,
            ),
            _ => (
                "frappe_cdc_capture_documents_total",
                1.0 + rng.next(40) as f64,
            ),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if metric(port, what).await.is_some_and(|v| v >= target) {
                break;
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("capture exited by itself in round {round}: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {what} never reached {target}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        drop(child);
        kills.push((round, what, target, done.load(Ordering::Acquire)));
    }
    stop.store(true, Ordering::Release);
    wl.await.expect("workload");
    eprintln!("kill points (round, metric, value, workload transactions so far): {kills:?}");

    // Catch up to the end of the binlog and check the topic.
    rig.capture().await;
    let msgs = read_all(&rig.bootstrap(), &rig.topic);
    let txs = if exactly_once {
        common::topic::whole_transactions(&msgs)
    } else {
        0
    };
    check_markers(&rig);
    let mut by_key: BTreeMap<(String, String), Vec<Option<Value>>> = BTreeMap::new();
    for m in msgs {
        let k = (
            m.key["doctype"].as_str().unwrap_or("").to_string(),
            m.key["name"].as_str().unwrap_or("").to_string(),
        );
        by_key.entry(k).or_default().push(m.value);
    }
    let mut db = rig.primary().conn(&rig.db).await;
    let mut checked = 0;
    let mut replays = 0;
    for ((doctype, name), list) in &by_key {
        let mut seen = HashSet::new();
        let mut prev_after: Option<Value> = None;
        let mut last: Option<&Value> = None;
        for v in list.iter().flatten() {
            if !seen.insert(source_id(v)) {
                replays += 1;
                continue;
            }
            if v["op"] != "snapshot" {
                assert_eq!(
                    Some(v["before"].clone()).filter(|b| !b.is_null()),
                    prev_after,
                    "{doctype} {name}: change at {} does not follow the previous envelope (a change is missing)",
                    v["source"]["gtid"]
                );
            }
            prev_after = Some(v["after"].clone()).filter(|a| !a.is_null());
            last = Some(v);
        }
        let final_state = doc_image(&mut db, doctype, name).await;
        assert_eq!(
            prev_after, final_state,
            "{doctype} {name}: last envelope differs from the primary"
        );
        if final_state.is_none() {
            assert_eq!(last.map(|l| l["op"].clone()), Some(Value::from("delete")));
            assert!(
                list.last().is_some_and(|l| l.is_none()),
                "{doctype} {name}: delete not followed by a tombstone"
            );
        }
        checked += 1;
    }
    let live: Vec<(String,)> = db
        .query("SELECT name FROM `tabSales Invoice`")
        .await
        .expect("names");
    for (n,) in &live {
        assert!(
            by_key.contains_key(&("Sales Invoice".to_string(), n.clone())),
            "Sales Invoice {n} never reached the topic"
        );
    }
    eprintln!(
        "checked {checked} documents, {} live invoices, {replays} replayed envelopes dropped, {} workload transactions",
        live.len(),
        done.load(Ordering::Acquire)
    );
    assert!(checked >= 3000);
    (replays, txs)
}

/// Markers are valid, name their partition, and never go backwards within a partition.
fn check_markers(rig: &Rig) {
    let markers = common::topic::read_markers(&rig.bootstrap(), &rig.topic);
    assert!(!markers.is_empty(), "no progress markers on the topic");
    let mut last: BTreeMap<i32, BTreeMap<u64, u64>> = BTreeMap::new();
    for m in &markers {
        let v = m.value.as_ref().expect("marker value");
        let p = frappe_cdc::progress::Progress::parse(&serde_json::to_vec(v).expect("bytes"))
            .expect("a valid marker");
        assert_eq!(p.partition, m.partition, "marker names another partition");
        if p.snapshot.is_some() {
            continue;
        }
        let pos: frappe_cdc::position::GtidPosition = p.position.parse().expect("position");
        let prev = last.entry(m.partition).or_default();
        for g in pos.iter() {
            let seen = prev.entry(u64::from(g.domain_id)).or_insert(0);
            assert!(
                g.seq_no >= *seen,
                "partition {}: marker at {} after one at seq {seen}",
                m.partition,
                p.position
            );
            *seen = g.seq_no;
        }
    }
}

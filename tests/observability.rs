//! The Grafana dashboard and the Prometheus alert rules against a real Prometheus (Debian's
//! `prometheus`, on loopback) scraping a live capture and apply during a workload:
//! - every PromQL expression of `grafana/` returns data (alert expressions are split at their
//!   comparisons and `and`/`or`/`unless`, and every operand must return data; four alerts are
//!   also driven to pending/firing: conflicts open, dead letters, retention headroom low and
//!   capture down);
//! - every rule loads and evaluates without error;
//! - every metric name used in `grafana/` exists in `/metrics`, and so does every metric the
//!   observability issue names.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::metrics::scrape;
use common::rig::{Rig, primary_options};
use common::servers::{KillOnDrop, free_port, scratch_dir};
use common::wait_until;
use common::workload::{Frappe, Invoice};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

/// Metrics the observability issue asks for, by name.
const REQUIRED: &[&str] = &[
    "frappe_cdc_capture_binlog_events_total",
    "frappe_cdc_capture_binlog_rows_total",
    "frappe_cdc_capture_documents_total",
    "frappe_cdc_capture_source_lag_seconds",
    "frappe_cdc_capture_snapshot_rows_total",
    "frappe_cdc_capture_snapshot_rows_estimated",
    "frappe_cdc_capture_gtid_seq",
    "frappe_cdc_capture_kafka_produce_errors_total",
    "frappe_cdc_capture_kafka_in_flight_messages",
    "frappe_cdc_capture_checkpoint_age_seconds",
    "frappe_cdc_capture_state_store_bytes",
    "frappe_cdc_capture_binlog_retention_headroom_seconds",
    "frappe_cdc_capture_binlog_behind_bytes",
    "frappe_cdc_capture_reconnects_total",
    "frappe_cdc_apply_documents_total",
    "frappe_cdc_apply_open_conflicts",
    "frappe_cdc_apply_files_total",
    "frappe_cdc_apply_files",
    "frappe_cdc_apply_file_bytes_total",
    "frappe_cdc_apply_file_fetch_seconds",
    "frappe_cdc_apply_files_failing_seconds",
    "frappe_cdc_apply_end_to_end_lag_seconds",
    "frappe_cdc_apply_consumer_lag_messages",
    "frappe_cdc_apply_transaction_duration_seconds",
    "frappe_cdc_apply_retries_total",
    "frappe_cdc_apply_dead_letters_total",
    "frappe_cdc_capture_kafka_disconnects_total",
    "frappe_cdc_capture_kafka_request_retries_total",
    "frappe_cdc_apply_kafka_disconnects_total",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `expr` in the dashboards, with Grafana's interval variable made concrete.
fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(e) = m.get("expr").and_then(Value::as_str) {
                    out.push((title.to_string(), e.replace("$__rate_interval", "30s")));
                }
                for x in m.values() {
                    walk(x, title, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for f in std::fs::read_dir(repo().join("grafana/dashboards")).expect("dashboards dir") {
        let p = f.expect("entry").path();
        let v: Value = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
        walk(&v, "", &mut out);
    }
    out
}

/// `(alert name, expr)` of every rule.
fn alert_rules() -> Vec<(String, String)> {
    let v = yaml(&repo().join("grafana/prometheus/alerts.yml"));
    let mut out = Vec::new();
    for g in v["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().or(r["record"].as_str()).expect("name");
            out.push((
                name.to_string(),
                r["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

/// Splits a PromQL expression at top-level comparisons and set operators; numbers dropped.
fn operands(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let (mut depth, mut quote, mut start, mut i) = (0i32, None::<u8>, 0usize, 0usize);
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        let mut cut = 0;
        match c {
            b'"' | b'\'' | b'`' => quote = Some(c),
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            _ if depth == 0 => {
                let rest = &expr[i..];
                for op in ["==", "!=", ">=", "<=", ">", "<"] {
                    if rest.starts_with(op) {
                        cut = op.len();
                        break;
                    }
                }
                for kw in [" and ", " or ", " unless "] {
                    if cut == 0 && rest.starts_with(kw) {
                        cut = kw.len();
                    }
                }
            }
            _ => {}
        }
        if cut > 0 {
            out.push(expr[start..i].trim().to_string());
            i += cut;
            start = i;
            continue;
        }
        i += 1;
    }
    out.push(expr[start..].trim().to_string());
    out.retain(|s| !s.is_empty() && s.parse::<f64>().is_err());
    out
}

#[test]
fn operand_splitting() {
    assert_eq!(operands(r#"up{job="a"} == 0"#), vec![r#"up{job="a"}"#]);
    assert_eq!(
        operands("sum(a) > 0 and sum(rate(b[10m])) == 0"),
        vec!["sum(a)", "sum(rate(b[10m]))"]
    );
    assert_eq!(
        operands(r#"max(x{l=~"a>b"}) < 3"#),
        vec![r#"max(x{l=~"a>b"})"#]
    );
    assert_eq!(
        operands("histogram_quantile(0.5, y)"),
        vec!["histogram_quantile(0.5, y)"]
    );
}

struct Prometheus {
    _proc: KillOnDrop,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus with the compose stack's configuration, targets pointed at loopback.
    async fn start(capture: u16, apply: u16) -> Prometheus {
        let dir = scratch_dir("prometheus");
        let mut cfg = yaml(&repo().join("grafana/prometheus/prometheus.yml"));
        cfg["global"]["scrape_interval"] = "1s".into();
        cfg["global"]["evaluation_interval"] = "1s".into();
        cfg["rule_files"] = serde_json::json!([repo().join("grafana/prometheus/alerts.yml")]);
        for sc in cfg["scrape_configs"]
            .as_array_mut()
            .expect("scrape_configs")
        {
            let port = match sc["job_name"].as_str() {
                Some("frappe-cdc-capture") => capture,
                Some("frappe-cdc-apply") => apply,
                other => panic!("unexpected scrape job {other:?}"),
            };
            sc["static_configs"] = serde_json::json!([{"targets": [format!("127.0.0.1:{port}")]}]);
        }
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, serde_norway::to_string(&cfg).expect("yaml")).expect("write");
        let port = free_port();
        let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} (scripts/install-deps.sh installs it): {e}")
            });
        let p = Prometheus {
            _proc: KillOnDrop(child),
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", p.url);
        wait_until(Duration::from_secs(30), "prometheus ready", || async {
            p.http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        p
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .expect("prometheus api");
        let v: Value = r.json().await.expect("api json");
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    async fn query(&self, expr: &str) -> Vec<Value> {
        self.api("query", &[("query", expr)]).await["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn alert_states(&self) -> Vec<(String, String)> {
        self.api("alerts", &[]).await["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Waits until every expression returns data; panics listing those that never did.
    async fn assert_all_return_data(&self, exprs: &[(String, String)], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut missing: Vec<&(String, String)> = exprs.iter().collect();
        loop {
            let mut still = Vec::new();
            for e in missing {
                if self.query(&e.1).await.is_empty() {
                    still.push(e);
                }
            }
            missing = still;
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} expressions returned no data:\n{}",
                missing.len(),
                missing
                    .iter()
                    .map(|(t, e)| format!("  {t}: {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn wait_alert(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let states = self.alert_states().await;
            if states
                .iter()
                .any(|(n, s)| n == name && (s == "pending" || s == "firing"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "alert {name} never went pending or firing; alerts: {states:?}; rules: {}",
                self.api("rules", &[]).await
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Metric families (`# TYPE` lines) of an exposition, with their type.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// Every `frappe_cdc_*` name in the files under `grafana/`.
fn names_in_grafana() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let mut rest = text.as_str();
            while let Some(i) = rest.find("frappe_cdc_") {
                // `_frappe_cdc_files` and the like are replica tables named in help texts.
                let table = rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                if !table {
                    out.insert(tail[..end].to_string());
                }
                rest = &tail[end..];
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&repo().join("grafana"), &mut out);
    out
}

fn send_dead_letters(bootstrap: &str, topic: &str) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    let unknown_table = serde_json::json!({"version": 1, "op": "create", "doctype": "No Such Doctype", "name": "X",
        "before": null, "after": {"parent": {"name": "X"}, "children": {}}, "changes": {},
        "source": {"server_id": 1, "db": "d", "gtid": "0-1-999999999", "position": "0-1-999999999", "file": "f", "pos": 4, "commit_ts": 0, "doc_index": 0, "doc_count": 1, "snapshot": false}});
    for payload in [
        b"not json".to_vec(),
        serde_json::to_vec(&unknown_table).expect("json"),
    ] {
        p.send(
            BaseRecord::<[u8], [u8]>::to(topic)
                .key(b"x".as_slice())
                .payload(&payload),
        )
        .map_err(|(e, _)| e)
        .expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_return_data_from_a_live_pipeline() {
    // A short expiry so the retention-headroom alert has something to say.
    primary_options(&["--binlog-expire-logs-seconds=3600"]);
    let rig = Rig::new("obs").await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    for i in 0..5 {
        f.insert_invoice(&Invoice::draft(&format!("SINV-S{i}"), "C1", 3))
            .await;
    }
    let (cport, aport) = (free_port(), free_port());
    let mut capture = Some(rig.spawn_capture(None, cport, &["--heartbeat", "1s"]));
    let mut apply = Some(rig.spawn_apply(&rurl, aport, &[]));
    let prom = Prometheus::start(cport, aport).await;
    // Prometheus applies new targets after a few seconds; events before its first scrape
    // would be invisible to increase() (a counter first seen at 2 has not increased).
    wait_until(Duration::from_secs(60), "both targets scraped", || async {
        prom.query("up == 1").await.len() == 2
    })
    .await;

    // Workload: new invoices and saves, a conflict (local edit, then a primary change), and two
    // messages that can only be dead-lettered.
    let mut r = replica.conn(&rig.db).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::doc_image(&mut r, "Sales Invoice", "SINV-S4")
        .await
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "snapshot never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut local = Frappe::new(replica.conn(&rig.db).await);
    local
        .db_set(
            "tabSales Invoice",
            "SINV-S0",
            "remarks",
            "edited on the replica".into(),
            true,
        )
        .await;
    f.db_set(
        "tabSales Invoice",
        "SINV-S0",
        "remarks",
        "edited on the primary".into(),
        true,
    )
    .await;
    send_dead_letters(&rig.bootstrap(), &rig.topic);
    for i in 0..40 {
        let mut inv = Invoice::draft(&format!("SINV-W{i}"), "C2", 2);
        f.insert_invoice(&inv).await;
        inv.remarks = Some(format!("saved {i}"));
        f.save_invoice(&inv).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every metric named by grafana/ and by the issue exists on the endpoints.
    let mut exported = Vec::new();
    wait_until(
        Duration::from_secs(60),
        "apply consumer lag and conflict series",
        || async {
            let a = scrape(aport).await;
            a.contains("frappe_cdc_apply_consumer_lag_messages{")
                && a.contains("outcome=\"conflict\"")
                && a.contains("outcome=\"dead_letter\"")
        },
    )
    .await;
    exported.extend(families(&scrape(cport).await));
    exported.extend(families(&scrape(aport).await));
    let has = |n: &str| exported.iter().any(|(e, _)| e == n);
    for n in REQUIRED {
        assert!(has(n), "{n} is not exported");
    }
    let used = names_in_grafana();
    assert!(
        used.len() >= 15,
        "grafana/ uses {} metric names",
        used.len()
    );
    for n in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                n.strip_suffix(s)
                    .filter(|b| exported.iter().any(|(e, t)| e == b && t == "histogram"))
            })
            .unwrap_or(n);
        assert!(
            has(base),
            "grafana/ uses {n}, which neither capture nor apply exports"
        );
    }

    // Every dashboard expression and every operand of every alert returns data.
    let dash = dashboard_exprs();
    assert!(dash.len() >= 20, "dashboard has {} expressions", dash.len());
    let rules = alert_rules();
    let mut exprs = dash.clone();
    for (name, e) in &rules {
        let ops = operands(e);
        assert!(!ops.is_empty(), "{name}: no operand in {e}");
        exprs.extend(ops.into_iter().map(|o| (name.clone(), o)));
    }
    prom.assert_all_return_data(&exprs, Duration::from_secs(90))
        .await;
    eprintln!(
        "{} dashboard expressions and {} alert operands returned data",
        dash.len(),
        exprs.len() - dash.len()
    );

    // Every rule loaded and evaluates cleanly; induced alerts go pending or firing.
    wait_until(
        Duration::from_secs(30),
        "every rule evaluated with health ok",
        || async {
            let groups = prom.api("rules", &[]).await["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let rs: Vec<Value> = groups
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            rs.len() == rules.len() && rs.iter().all(|r| r["health"] == "ok")
        },
    )
    .await;
    for a in [
        "FrappeCdcConflictsOpen",
        "FrappeCdcDeadLetters",
        "FrappeCdcRetentionHeadroomLow",
    ] {
        prom.wait_alert(a).await;
    }
    // The watcher polls every 10 s and the gauge is NaN (no alert) until it knows the
    // checkpoint's file; with the checkpoint in the active file it reads the expire period.
    let mut h = f64::NAN;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(h > 0.0 && h <= 3600.0) {
        assert!(
            Instant::now() < deadline,
            "headroom {h} s with a 3600 s expiry"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let headroom = prom
            .query("min(frappe_cdc_capture_binlog_retention_headroom_seconds)")
            .await;
        h = headroom
            .first()
            .and_then(|v| v["value"][1].as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
    }

    // A stopped capture and apply show as down.
    capture.take();
    apply.take();
    for job in ["frappe-cdc-capture", "frappe-cdc-apply"] {
        let q = format!(r#"up{{job="{job}"}} == 0"#);
        wait_until(
            Duration::from_secs(30),
            &format!("{job} seen down"),
            || async { !prom.query(&q).await.is_empty() },
        )
        .await;
    }
    prom.wait_alert("FrappeCdcCaptureDown").await;
    prom.wait_alert("FrappeCdcApplyDown").await;
}

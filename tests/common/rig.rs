//! A capture pipeline under test: a site database on a real primary, a topic on a real broker,
//! a state directory, and capture runs that stop at the end of the binlog (deterministic).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use frappe_cdc::capture::{self, CaptureConfig};
use frappe_cdc::frappe::catalog::Filter;
use frappe_cdc::kafka::producer::ProducerConfig;
use frappe_cdc::metrics::CaptureMetrics;
use frappe_cdc::source::conn::DbTarget;
use tokio_util::sync::CancellationToken;

use mysql_async::prelude::Queryable;

use super::servers::{Broker, Mariadb, scratch_dir};
use super::topic::{Msg, read_all};

static EXTRA_ARGS: OnceLock<Vec<&'static str>> = OnceLock::new();

/// Extra server options for this test binary's shared primary; call before the first `Rig`.
pub fn primary_options(extra: &[&'static str]) {
    let _ = EXTRA_ARGS.set(extra.to_vec());
}

/// One primary and one broker shared by the tests of a test binary.
pub fn shared() -> (&'static Mariadb, &'static Broker) {
    (shared_primary(), shared_broker())
}

/// The primary shared by the tests of a test binary (started on first use).
pub fn shared_primary() -> &'static Mariadb {
    static S: OnceLock<Mariadb> = OnceLock::new();
    S.get_or_init(|| {
        let mut args: Vec<&str> = super::servers::PRIMARY_ARGS.to_vec();
        args.extend(EXTRA_ARGS.get().cloned().unwrap_or_default());
        Mariadb::start(&args)
    })
}

/// The single-node Kafka shared by the tests of a test binary (started on first use; tests
/// that bring their own cluster never start it).
pub fn shared_broker() -> &'static Broker {
    static S: OnceLock<Broker> = OnceLock::new();
    S.get_or_init(Broker::start)
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One site and one topic.
pub struct Rig {
    pub db: String,
    pub topic: String,
    pub state: PathBuf,
    pub server_id: u32,
    pub seen: usize,
    pub filter: Filter,
    /// Bootstrap servers of a test's own brokers; None: the shared single node.
    pub brokers: Option<String>,
}

impl Rig {
    /// Creates a fresh site database with the fixture schema.
    pub async fn new(tag: &str) -> Rig {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let m = shared_primary();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let db = format!("{tag}_{n}_{}", std::process::id());
        m.create_site(&db).await;
        Rig {
            topic: format!("{db}-docs"),
            state: scratch_dir(&format!("state-{tag}")),
            server_id: 5000 + n + (std::process::id() % 1000) * 50,
            seen: 0,
            db,
            filter: Filter::new(&[], &[]),
            brokers: None,
        }
    }

    /// Like `new`, on a broker or cluster of the test's own (`bootstrap`).
    pub async fn on_brokers(tag: &str, bootstrap: &str) -> Rig {
        let mut r = Rig::new(tag).await;
        r.brokers = Some(bootstrap.to_string());
        r
    }

    /// Starts a replica server with this rig's site schema; returns it and the URL apply and
    /// verify use for it.
    pub async fn replica(&self) -> (Mariadb, String) {
        let replica = Mariadb::start(&[]);
        replica.create_site(&self.db).await;
        let url = replica.replica_url(&self.db);
        (replica, url)
    }

    /// Waits until apply (consumer group `r1`) has stored, in `replica`, every partition's
    /// next offset at the topic's current end: every message there is applied. Apply stores
    /// the consumer's position when it is idle, so the end includes the commit marker of
    /// capture's last Kafka transaction.
    #[allow(dead_code)]
    pub async fn wait_applied_to_end(&self, replica: &Mariadb, timeout: Duration) {
        let end = super::topic::watermarks(&self.bootstrap(), &self.topic);
        super::wait_until(timeout, "apply stored the topic's end offsets", || async {
            let mut c = replica.conn(&self.db).await;
            let stored: Vec<(i32, i64)> = c
                .exec(
                    "SELECT kafka_partition, next_offset FROM `_frappe_cdc_offsets` WHERE consumer_group = 'r1' AND topic = ?",
                    (self.topic.as_str(),),
                )
                .await
                .unwrap_or_default();
            end.iter().all(|(p, (_, high))| {
                stored
                    .iter()
                    .any(|(sp, next)| sp == p && next >= high)
            })
        })
        .await;
    }

    pub fn primary(&self) -> &'static Mariadb {
        shared_primary()
    }

    pub fn bootstrap(&self) -> String {
        self.brokers
            .clone()
            .unwrap_or_else(|| shared_broker().bootstrap())
    }

    /// The capture configuration of this rig (capture user, password through the target).
    pub fn config(&self) -> CaptureConfig {
        let source =
            DbTarget::parse(&self.primary().cdc_url(&self.db), Some("cdcpass")).expect("url");
        CaptureConfig {
            source,
            server_id: self.server_id,
            state_dir: self.state.clone(),
            producer: ProducerConfig {
                brokers: self.bootstrap(),
                topic: self.topic.clone(),
                partitions: 1,
                replication: -1,
                topic_configs: vec![],
                partition_by_doctype: true,
                max_in_flight: 10_000,
                options: vec![],
                null_sink: false,
                transactional_id: Some(format!("frappe-cdc.{}.{}", self.topic, self.server_id)),
            },
            filter: self.filter.clone(),
            heartbeat: Duration::from_secs(1),
            checkpoint_interval: Duration::from_millis(200),
            spill_at: 10_000,
            flush_timeout: Duration::from_secs(60),
            stop_at_end: true,
        }
    }

    /// Runs capture until the end of the binlog.
    pub async fn capture(&self) {
        let m = CaptureMetrics::new();
        capture::run(&self.config(), &m, CancellationToken::new())
            .await
            .expect("capture run");
    }

    /// Runs capture to the end and returns the messages it added to the topic.
    pub async fn round(&mut self) -> Vec<Msg> {
        self.capture().await;
        let all = read_all(&self.bootstrap(), &self.topic);
        let new = all[self.seen..].to_vec();
        self.seen = all.len();
        new
    }

    pub async fn frappe(&self) -> super::workload::Frappe {
        super::workload::Frappe::new(self.primary().conn(&self.db).await)
    }
}

impl Rig {
    /// Starts the `frappe-cdc capture` binary for this rig (killed when dropped), reading
    /// `source_url` (default: this rig's site on the shared primary), with `extra` flags.
    pub fn spawn_capture(
        &self,
        source_url: Option<&str>,
        metrics_port: u16,
        extra: &[&str],
    ) -> super::servers::KillOnDrop {
        let url = source_url
            .map(String::from)
            .unwrap_or_else(|| self.primary().cdc_url(&self.db));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
            .args([
                "capture",
                "--source",
                &url,
                "--brokers",
                &self.bootstrap(),
                "--topic",
                &self.topic,
            ])
            .args([
                "--server-id",
                &self.server_id.to_string(),
                "--state-dir",
                self.state.to_str().unwrap_or_default(),
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("FRAPPE_CDC_SOURCE_PASSWORD", "cdcpass")
            .env(
                "RUST_LOG",
                std::env::var("CAPTURE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn frappe-cdc capture");
        super::servers::KillOnDrop(child)
    }
}

impl Rig {
    /// Runs `frappe-cdc verify` of this rig's site against `replica_url` (admin password),
    /// with `extra` flags (e.g. `--doctype X`).
    pub fn verify(&self, replica_url: &str, extra: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
            .args([
                "verify",
                "--source",
                &self.primary().cdc_url(&self.db),
                "--replica",
                replica_url,
            ])
            .args(extra)
            .env("FRAPPE_CDC_SOURCE_PASSWORD", "cdcpass")
            .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
            .output()
            .expect("run frappe-cdc verify")
    }

    /// Runs `verify` every 0.5 s until it reports the replica in sync; panics with the last
    /// report after `timeout`.
    pub async fn wait_in_sync(&self, replica_url: &str, timeout: Duration, what: &str) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let v = self.verify(replica_url, &[]);
            if v.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: replica never equal to the primary: {}",
                String::from_utf8_lossy(&v.stdout)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Starts the `frappe-cdc apply` binary for this rig's topic into `replica_url` (admin
    /// password), consumer group `r1`, with `extra` flags; killed when dropped.
    pub fn spawn_apply(
        &self,
        replica_url: &str,
        metrics_port: u16,
        extra: &[&str],
    ) -> super::servers::KillOnDrop {
        self.spawn_apply_with_env(replica_url, metrics_port, extra, &[])
    }

    /// `spawn_apply` with extra environment variables (secrets that never go in argv).
    pub fn spawn_apply_with_env(
        &self,
        replica_url: &str,
        metrics_port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> super::servers::KillOnDrop {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
            .args([
                "apply",
                "--replica",
                replica_url,
                "--brokers",
                &self.bootstrap(),
                "--topic",
                &self.topic,
                "--group",
                "r1",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("APPLY_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn frappe-cdc apply");
        super::servers::KillOnDrop(child)
    }
}

//! Debezium on a Kafka Connect standalone worker, driven over Connect's REST API.
//!
//! The worker runs from the jars `scripts/install-debezium.sh` fetched and pinned
//! (`DEBEZIUM_CONNECT_LIBS`, `DEBEZIUM_PLUGINS`); connectors are created, paused and resumed
//! over REST. Offsets live in a file in the worker's scratch folder; the worker is killed when
//! dropped (the bench never restarts it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::servers::{KillOnDrop, Mariadb, free_port, scratch_dir};

pub struct Connect {
    process: KillOnDrop,
    rest: String,
    http: reqwest::Client,
    dir: PathBuf,
}

fn env_dir(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the bench with scripts/bench.sh (it installs Debezium)")
    })
}

impl Connect {
    /// Starts a worker on `bootstrap` and waits until its REST API answers (seconds taken too).
    pub async fn start(bootstrap: &str) -> (Connect, f64) {
        let t = Instant::now();
        let (libs, plugins) = (
            env_dir("DEBEZIUM_CONNECT_LIBS"),
            env_dir("DEBEZIUM_PLUGINS"),
        );
        let dir = scratch_dir("connect");
        let port = free_port();
        let worker = format!(
            "bootstrap.servers={bootstrap}\n\
             listeners=http://127.0.0.1:{port}\n\
             plugin.path={plugins}\n\
             plugin.discovery=hybrid_warn\n\
             key.converter=org.apache.kafka.connect.json.JsonConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\n\
             key.converter.schemas.enable=true\n\
             value.converter.schemas.enable=true\n\
             offset.storage.file.filename={}/offsets\n\
             offset.flush.interval.ms=1000\n",
            dir.display()
        );
        std::fs::write(dir.join("worker.properties"), worker).expect("worker.properties");
        let log = std::fs::File::create(dir.join("connect.log")).expect("connect.log");
        let child = std::process::Command::new("java")
            .args([
                "-Xms256m",
                "-Xmx1g",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-cp",
                &format!("{libs}/*"),
                "org.apache.kafka.connect.cli.ConnectStandalone",
            ])
            .arg(dir.join("worker.properties"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("java (scripts/install-deps.sh installs it)");
        let c = Connect {
            process: KillOnDrop(child),
            rest: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            dir,
        };
        loop {
            if let Ok(r) = c.http.get(&c.rest).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "Kafka Connect did not answer within 180 s; log: {}",
                c.dir.join("connect.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (c, t.elapsed().as_secs_f64())
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Creates (or replaces) connector `name` and waits until it and its task run.
    pub async fn create(&self, name: &str, config: Value) {
        let r = self
            .http
            .put(format!("{}/connectors/{name}/config", self.rest))
            .json(&config)
            .send()
            .await
            .expect("PUT connector");
        let status = r.status();
        assert!(
            status.is_success(),
            "creating {name}: {status} {}",
            r.text().await.unwrap_or_default()
        );
        self.wait_state(name, "RUNNING").await;
    }

    pub async fn pause(&self, name: &str) {
        self.put(name, "pause").await;
        self.wait_state(name, "PAUSED").await;
    }

    pub async fn resume(&self, name: &str) {
        self.put(name, "resume").await;
        self.wait_state(name, "RUNNING").await;
    }

    async fn put(&self, name: &str, verb: &str) {
        let r = self
            .http
            .put(format!("{}/connectors/{name}/{verb}", self.rest))
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "{verb} {name}: {}", r.status());
    }

    /// Waits until the connector and all its tasks report `want`; a FAILED task ends the bench
    /// with its trace.
    async fn wait_state(&self, name: &str, want: &str) {
        let t = Instant::now();
        loop {
            let st: Value = match self
                .http
                .get(format!("{}/connectors/{name}/status", self.rest))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let tasks = st["tasks"].as_array().cloned().unwrap_or_default();
            if let Some(f) = tasks.iter().find(|t| t["state"] == "FAILED") {
                panic!("{name} failed: {}", f["trace"].as_str().unwrap_or(""));
            }
            if st["connector"]["state"] == want
                && !tasks.is_empty()
                && tasks.iter().all(|t| t["state"] == want)
            {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{name} not {want} after 120 s: {st}; log: {}",
                self.dir.join("connect.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Source connector settings: the MariaDB connector streaming `db`'s `tab*` tables from
    /// the binlog position current when it starts (no data snapshot), history in a file.
    pub fn source(&self, primary: &Mariadb, db: &str) -> Value {
        json!({
            "connector.class": "io.debezium.connector.mariadb.MariaDbConnector",
            "tasks.max": "1",
            "database.hostname": "127.0.0.1",
            "database.port": primary.port.to_string(),
            "database.user": "admin",
            "database.password": "adminpass",
            "database.server.id": "5401",
            "database.ssl.mode": "disable",
            "topic.prefix": "dbz",
            "database.include.list": db,
            "table.include.list": format!("{db}\\.tab.*"),
            "schema.history.internal": "io.debezium.storage.file.history.FileSchemaHistory",
            "schema.history.internal.file.filename": self.dir.join("history.dat").display().to_string(),
            "include.schema.changes": "false",
            "snapshot.mode": "no_data",
            "max.batch.size": "2048",
            "max.queue.size": "8192",
            "poll.interval.ms": "100",
            "topic.creation.default.replication.factor": "1",
            "topic.creation.default.partitions": "1",
        })
    }

    /// Sink connector settings: Debezium's JDBC sink upserting into `replica`'s tables of the
    /// same names. Frappe's table names hold spaces, which the sink's table-name parser only
    /// takes quoted (unquoted it fails on "Unexpected input").
    pub fn sink(replica: &Mariadb, db: &str, topics: &[String]) -> Value {
        json!({
            "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
            "tasks.max": "1",
            "topics": topics.join(","),
            "connection.url": format!("jdbc:mariadb://127.0.0.1:{}/{db}", replica.port),
            "connection.username": "admin",
            "connection.password": "adminpass",
            "insert.mode": "upsert",
            "primary.key.mode": "record_key",
            "delete.enabled": "true",
            "schema.evolution": "none",
            "collection.name.format": "`${source.table}`",
            "use.time.zone": "UTC",
            "batch.size": "2000",
            "consumer.override.max.poll.records": "2000",
            "use.reduction.buffer": "false",
        })
    }
}

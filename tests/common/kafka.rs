//! Apache Kafka (KRaft) on loopback for integration tests: one combined broker+controller node,
//! or a cluster of several combined nodes (a three-voter quorum), from the release jars
//! `scripts/install-kafka.sh` caches (`KAFKA_LIBS`).
//!
//! Each node gets free ports and a fresh log dir, is formatted with `kafka.tools.StorageTool`
//! and run as `java kafka.Kafka server.properties`; `start` returns once every node serves
//! metadata listing all brokers. Nodes can be killed (`kill -9`), stopped (SIGTERM, clean
//! shutdown) and restarted on the same ports and log dirs, so fault tests see a real broker
//! come back. A watchdog kills each JVM when the test process exits, even on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::servers::{scratch_dir, watchdog};

/// Capture flags for the envelope topic on a three-node cluster: 3 partitions by document,
/// replication 3, `min.insync.replicas=2`.
pub const CLUSTER_TOPIC_ARGS: &[&str] = &[
    "--partitions",
    "3",
    "--partition-by",
    "document",
    "--topic-replication",
    "3",
    "--topic-config",
    "min.insync.replicas=2",
];

/// `n` different free loopback ports.
fn distinct_free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("no free loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// The folder of Kafka's jars.
pub fn kafka_libs() -> PathBuf {
    let dir = std::env::var_os("KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("frappe-cdc/kafka-4.3.1/libs")
        });
    assert!(
        dir.join(".verified").exists(),
        "Apache Kafka jars not found in {}: run scripts/test.sh (it installs them) or `. scripts/install-deps.sh` and set KAFKA_LIBS",
        dir.display()
    );
    dir
}

/// One node of a cluster.
struct Node {
    id: u32,
    /// The clients' listener (PLAINTEXT, or SASL_SSL with [`Security`]).
    port: u16,
    /// The inter-broker PLAINTEXT listener when clients use SASL_SSL.
    iport: u16,
    cport: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A running Apache Kafka cluster (one node or several).
pub struct Kafka {
    nodes: Vec<Node>,
    secure: bool,
}

/// A SASL_SSL client listener: TLS with a PKCS#12 keystore, SASL/PLAIN users.
pub struct Security {
    pub keystore: PathBuf,
    pub keystore_password: String,
    /// (user, password)
    pub users: Vec<(String, String)>,
}

impl Security {
    fn properties(&self) -> String {
        let users: String = self
            .users
            .iter()
            .map(|(u, p)| format!(" user_{u}=\"{p}\""))
            .collect();
        format!(
            "sasl.enabled.mechanisms=PLAIN\n\
             listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN\n\
             listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required{users};\n\
             ssl.keystore.type=PKCS12\n\
             ssl.keystore.location={}\n\
             ssl.keystore.password={pw}\n\
             ssl.key.password={pw}\n",
            self.keystore.display(),
            pw = self.keystore_password,
        )
    }
}

/// A cluster id as `kafka-storage random-uuid` prints it: 16 random bytes in base64url
/// without padding (22 characters; it may start with `-`, so it is passed as
/// `--cluster-id=ID`).
fn cluster_id() -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ ((std::process::id() as u64) << 32)
        | 1;
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = (seed >> 24) as u8;
    }
    let mut bits: u32 = 0;
    let mut n = 0;
    let mut out = String::new();
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(A[((bits >> n) & 63) as usize] as char);
        }
    }
    out.push(A[((bits << (6 - n)) & 63) as usize] as char);
    out
}

fn java(libs: &Path) -> Command {
    let mut c = Command::new("java");
    c.arg("-cp").arg(format!("{}/*", libs.display()));
    c
}

impl Kafka {
    /// One combined broker+controller node (the tests' shared broker).
    pub fn start() -> Kafka {
        Kafka::single()
    }

    /// One combined broker+controller node.
    pub fn single() -> Kafka {
        Kafka::cluster(1)
    }

    /// `n` combined broker+controller nodes forming one KRaft quorum.
    pub fn cluster(n: u32) -> Kafka {
        Kafka::cluster_with(n, None)
    }

    /// Like `cluster`, with clients on a SASL_SSL listener when `security` is given (brokers
    /// talk to each other over PLAINTEXT on loopback).
    pub fn cluster_with(n: u32, security: Option<&Security>) -> Kafka {
        let libs = kafka_libs();
        let root = scratch_dir("kafka");
        // All ports at once, from sockets held together: two separate free_port() calls can
        // return the same port, and Kafka refuses two listeners on one port.
        let mut ports = distinct_free_ports(3 * n as usize).into_iter();
        let mut next = || ports.next().expect("enough ports");
        let mut nodes: Vec<Node> = (1..=n)
            .map(|id| Node {
                id,
                port: next(),
                iport: next(),
                cport: next(),
                dir: root.join(format!("node{id}")),
                child: None,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|x| format!("{}@127.0.0.1:{}", x.id, x.cport))
            .collect::<Vec<_>>()
            .join(",");
        let rf = n.min(3);
        let id = cluster_id();
        debug_assert_eq!(id.len(), 22);
        let mut formats = Vec::new();
        for node in &nodes {
            std::fs::create_dir_all(&node.dir).expect("kafka node dir");
            let (listeners, advertised, map) = match security {
                None => (
                    format!("PLAINTEXT://127.0.0.1:{}", node.port),
                    format!("PLAINTEXT://127.0.0.1:{}", node.port),
                    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                ),
                Some(_) => (
                    format!(
                        "PLAINTEXT://127.0.0.1:{},SASL_SSL://127.0.0.1:{}",
                        node.iport, node.port
                    ),
                    format!(
                        "PLAINTEXT://127.0.0.1:{},SASL_SSL://127.0.0.1:{}",
                        node.iport, node.port
                    ),
                    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
                ),
            };
            let props = format!(
                "process.roles=broker,controller\n\
                 node.id={id}\n\
                 controller.quorum.voters={voters}\n\
                 listeners={listeners},CONTROLLER://127.0.0.1:{cport}\n\
                 advertised.listeners={advertised}\n\
                 controller.listener.names=CONTROLLER\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 listener.security.protocol.map={map}\n\
                 log.dirs={logs}\n\
                 num.partitions=1\n\
                 default.replication.factor={rf}\n\
                 offsets.topic.replication.factor={rf}\n\
                 offsets.topic.num.partitions=4\n\
                 transaction.state.log.replication.factor={rf}\n\
                 transaction.state.log.min.isr=1\n\
                 transaction.state.log.num.partitions=4\n\
                 share.coordinator.state.topic.replication.factor={rf}\n\
                 share.coordinator.state.topic.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n\
                 auto.create.topics.enable=false\n\
                 message.max.bytes=16777216\n\
                 replica.fetch.max.bytes=16777216\n\
                 log.segment.bytes=67108864\n\
                 log.retention.check.interval.ms=1000\n\
                 log.cleaner.backoff.ms=1000\n\
                 unclean.leader.election.enable=false\n",
                id = node.id,
                cport = node.cport,
                logs = node.dir.join("logs").display(),
            ) + &security.map(Security::properties).unwrap_or_default();
            std::fs::write(node.dir.join("server.properties"), props).expect("server.properties");
            let log = std::fs::File::create(node.dir.join("format.log")).expect("format log");
            let child = java(&libs)
                .args([
                    "-Xmx256m",
                    "kafka.tools.StorageTool",
                    "format",
                    &format!("--cluster-id={id}"),
                    "-c",
                ])
                .arg(node.dir.join("server.properties"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("java not found: run scripts/test.sh (it installs OpenJDK 17)");
            formats.push((node.dir.clone(), child));
        }
        for (dir, mut child) in formats {
            let st = child.wait().expect("storage format");
            assert!(
                st.success(),
                "kafka-storage format failed: {}",
                std::fs::read_to_string(dir.join("format.log")).unwrap_or_default()
            );
        }
        for node in &mut nodes {
            node.spawn(&libs, &root);
        }
        let k = Kafka {
            nodes,
            secure: security.is_some(),
        };
        k.wait_ready(Duration::from_secs(120));
        k
    }

    /// Bootstrap servers: every node's client listener.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Bootstrap servers of the PLAINTEXT listeners (the inter-broker one on a secured
    /// cluster), for the tests' own readers and readiness checks.
    pub fn plain_bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", self.plain_port(n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn plain_port(&self, n: &Node) -> u16 {
        if self.secure { n.iport } else { n.port }
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn node(&mut self, id: u32) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no kafka node {id}"))
    }

    /// `kill -9` of node `id` (no clean shutdown).
    pub fn kill(&mut self, id: u32) {
        if let Some(mut c) = self.node(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Clean shutdown of node `id` (SIGTERM, waits for the JVM to exit).
    pub fn stop(&mut self, id: u32) {
        if let Some(mut c) = self.node(id).child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Starts node `id` again on its ports and log dir (after `kill` or `stop`).
    pub fn restart(&mut self, id: u32) {
        let libs = kafka_libs();
        let node = self.node(id);
        let root = node.dir.parent().expect("root").to_path_buf();
        node.spawn(&libs, &root);
    }

    /// The active controller (KRaft quorum leader) as a running node's `quorum-state` file
    /// records it, if any running node knows one.
    pub fn active_controller(&self) -> Option<u32> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| {
                let text =
                    std::fs::read_to_string(n.dir.join("logs/__cluster_metadata-0/quorum-state"))
                        .ok()?;
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                let id = v["leaderId"].as_i64()?;
                u32::try_from(id).ok()
            })
    }

    /// The broker leading the most partitions of `topic` (3 partitions, replication 3).
    pub fn busiest_leader(&self, topic: &str) -> u32 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("metadata client");
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .expect("topic");
        assert_eq!(t.partitions().len(), 3, "three partitions");
        for p in t.partitions() {
            assert_eq!(p.replicas().len(), 3, "replication factor 3");
        }
        let mut count = std::collections::BTreeMap::new();
        for p in t.partitions() {
            *count.entry(p.leader()).or_insert(0) += 1;
        }
        let (leader, _) = count.into_iter().max_by_key(|(_, n)| *n).expect("a leader");
        u32::try_from(leader).expect("partition has a leader")
    }

    /// Whether node `id` accepts connections on its client port.
    pub fn listening(&mut self, id: u32) -> bool {
        let port = self.node(id).port;
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    /// Whether node `id` runs.
    pub fn is_running(&mut self, id: u32) -> bool {
        self.node(id).child.is_some()
    }

    /// Waits until every running node serves metadata listing every running broker.
    pub fn wait_ready(&self, timeout: Duration) {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        let deadline = Instant::now() + timeout;
        for n in &running {
            let addr = format!("127.0.0.1:{}", self.plain_port(n));
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .create()
                .expect("metadata client");
            loop {
                let seen = c
                    .fetch_metadata(None, Duration::from_secs(2))
                    .map(|md| md.brokers().len())
                    .unwrap_or(0);
                if seen >= running.len() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "kafka node {} on {addr} not serving metadata for {} brokers after {timeout:?}; log: {}",
                    n.id,
                    running.len(),
                    n.dir.join("server.log").display()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl Node {
    fn spawn(&mut self, libs: &Path, root: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("server log");
        let child = java(libs)
            .args([
                "-Xms128m",
                "-Xmx768m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "kafka.Kafka",
            ])
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("java not found: run scripts/test.sh (it installs OpenJDK 17)");
        watchdog(child.id(), root);
        self.child = Some(child);
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

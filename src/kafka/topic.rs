//! Topic setup: create the envelope and dead-letter topics when missing, with the replication
//! factor and topic configs the operator chose, and read back what the cluster has.
//!
//! Creating is idempotent (an existing topic is left as it is, never altered); the partition
//! count capture uses is always the one the cluster reports, so a topic created by an
//! operator beforehand wins over `--partitions`.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::producer::ProducerError;

/// Largest message capture sends; topics are created to accept it.
pub const MAX_MESSAGE_BYTES: &str = "16777216";

/// How a missing topic is created.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    pub partitions: i32,
    /// Replicas of each partition; -1 takes the brokers' `default.replication.factor`.
    pub replication: i32,
    /// Topic configs (`cleanup.policy`, `min.insync.replicas`, `retention.ms`, …); a
    /// `max.message.bytes` of 16 MiB is added unless given.
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    /// One partition, the brokers' default replication, no extra configs.
    pub fn single() -> TopicSpec {
        TopicSpec {
            partitions: 1,
            replication: -1,
            configs: Vec::new(),
        }
    }
}

/// What the cluster holds for a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicInfo {
    pub partitions: i32,
    /// Replicas of partition 0, as the metadata lists them.
    pub replication: i32,
}

/// librdkafka settings that describe the connection (security, identity, sockets) rather than
/// producing or consuming: the admin and metadata clients take these from `--kafka-option`.
pub fn connection_options(options: &[(String, String)]) -> impl Iterator<Item = &(String, String)> {
    const PREFIXES: &[&str] = &[
        "security.",
        "sasl.",
        "ssl.",
        "socket.",
        "client.",
        "broker.",
    ];
    const KEYS: &[&str] = &["enable.ssl.certificate.verification", "client.id"];
    options
        .iter()
        .filter(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)) || KEYS.contains(&k.as_str()))
}

/// Error codes that no retry cures: wrong credentials, TLS trust, missing ACLs.
pub fn is_auth_failure(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::SSL
    )
}

/// Checks that the cluster answers this client: metadata within 30 s. Authentication and TLS
/// failures (reported as client error events, which the admin client never surfaces) end the
/// check at once as [`ProducerError::Auth`].
pub fn probe(brokers: &str, options: &[(String, String)]) -> Result<(), ProducerError> {
    let c: BaseConsumer = client(brokers, options)
        .create()
        .map_err(ProducerError::Setup)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match c.fetch_metadata(None, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        while let Some(r) = c.poll(Duration::ZERO) {
            if let Err(e) = r
                && e.rdkafka_error_code().is_some_and(is_auth_failure)
            {
                return Err(ProducerError::Auth {
                    brokers: brokers.to_string(),
                    reason: e.to_string(),
                });
            }
        }
        if Instant::now() > deadline {
            return Err(ProducerError::Unreachable {
                brokers: brokers.to_string(),
                reason: last,
            });
        }
    }
}

/// A client config with the bootstrap servers and the connection settings of `options`.
pub fn client(brokers: &str, options: &[(String, String)]) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in connection_options(options) {
        cfg.set(k, v);
    }
    cfg
}

/// Creates `topic` per `spec` if missing and returns what the cluster has.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    spec: &TopicSpec,
    options: &[(String, String)],
) -> Result<TopicInfo, ProducerError> {
    let terr = |reason: String| ProducerError::Topic {
        topic: topic.to_string(),
        reason,
    };
    let brokers_owned = brokers.to_string();
    let opts_owned = options.to_vec();
    tokio::task::spawn_blocking(move || probe(&brokers_owned, &opts_owned))
        .await
        .map_err(|_| terr("the connection check did not finish".into()))??;
    let cfg = client(brokers, options);
    let admin: AdminClient<DefaultClientContext> = cfg.create().map_err(ProducerError::Setup)?;
    let mut new = NewTopic::new(
        topic,
        spec.partitions.max(1),
        TopicReplication::Fixed(spec.replication),
    );
    if !spec.configs.iter().any(|(k, _)| k == "max.message.bytes") {
        new = new.set("max.message.bytes", MAX_MESSAGE_BYTES);
    }
    for (k, v) in &spec.configs {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let res = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| terr(e.to_string()))?;
    for r in res {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, RDKafkaErrorCode::InvalidReplicationFactor)) => {
                return Err(terr(format!(
                    "replication factor {} is more than the cluster's brokers (or its default.replication.factor is); lower --topic-replication",
                    spec.replication
                )));
            }
            Err((_, code)) if is_auth_failure(code) => {
                return Err(ProducerError::Auth {
                    brokers: brokers.to_string(),
                    reason: code.to_string(),
                });
            }
            Err((_, code)) => return Err(terr(code.to_string())),
        }
    }
    let meta: BaseConsumer = cfg.create().map_err(ProducerError::Setup)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(info) = topic_info(&meta, topic) {
            return Ok(info);
        }
        if Instant::now() > deadline {
            return Err(terr("no metadata for the topic after 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Partitions and replication of `topic`, if the cluster reports it whole (every partition
/// has a leader).
pub fn topic_info<C: rdkafka::consumer::ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
) -> Option<TopicInfo> {
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    if t.partitions().iter().any(|p| p.leader() < 0) {
        return None;
    }
    let replication = t
        .partitions()
        .first()
        .map_or(1, |p| p.replicas().len() as i32);
    Some(TopicInfo {
        partitions: t.partitions().len() as i32,
        replication,
    })
}

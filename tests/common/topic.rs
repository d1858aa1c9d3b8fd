//! Reads a whole topic (every partition up to its high watermark) as (key, value) pairs.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// One message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: serde_json::Value,
    pub value: Option<serde_json::Value>,
}

/// Every message of `topic`, in partition then offset order.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<Msg> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "20971520")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for p in parts {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low))
            .expect("tpl");
        c.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut next = low;
        while next < high {
            assert!(
                Instant::now() < deadline,
                "timed out reading {topic}/{p} at {next} of {high}"
            );
            let Some(m) = c.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.expect("kafka message");
            next = m.offset() + 1;
            let key = serde_json::from_slice(m.key().unwrap_or(b"null")).expect("key json");
            let value = m
                .payload()
                .map(|v| serde_json::from_slice(v).expect("value json"));
            out.push(Msg {
                partition: p,
                offset: m.offset(),
                key,
                value,
            });
        }
    }
    out
}

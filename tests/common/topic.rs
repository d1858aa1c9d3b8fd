//! Reads a whole topic as (key, value) pairs.
//!
//! Each partition is read from its start to the high watermark it had when its turn came
//! (Apache Kafka's watermark is exact; the reader writes nothing to the topic), with
//! librdkafka's default `isolation.level=read_committed`. Capture's progress markers are left
//! out of `read_all` and `count_all` (they are documents' neighbours, not documents);
//! `read_markers` returns them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

/// One message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: serde_json::Value,
    pub value: Option<serde_json::Value>,
}

/// The distinct `(doctype, name)` keys of `msgs` that `keep` admits, sorted.
pub fn doc_keys<'a>(
    msgs: impl IntoIterator<Item = &'a Msg>,
    keep: impl Fn(&Msg) -> bool,
) -> Vec<(String, String)> {
    let mut k: Vec<(String, String)> = msgs
        .into_iter()
        .filter(|m| keep(m))
        .map(|m| {
            (
                m.key["doctype"].as_str().unwrap_or("").into(),
                m.key["name"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    k.sort();
    k.dedup();
    k
}

/// Calls `f` for every message of `topic`, partition by partition, up to each partition's
/// high watermark as read when the partition's turn comes.
fn scan(bootstrap: &str, topic: &str, mut f: impl FnMut(i32, &BorrowedMessage<'_>)) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .set("fetch.max.bytes", "104857600")
        .set("max.partition.fetch.bytes", "52428800")
        .create()
        .expect("consumer");
    for part in partition_ids(&c, topic) {
        let (low, high) = c
            .fetch_watermarks(topic, part, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{part}: {e}"));
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, part, Offset::Beginning)
            .expect("tpl");
        c.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            assert!(
                Instant::now() < deadline,
                "timed out reading {topic}/{part} to its high watermark {high}"
            );
            let at_end = || {
                c.position().ok().is_some_and(|p| {
                    p.find_partition(topic, part)
                        .and_then(|e| e.offset().to_raw())
                        .is_some_and(|o| o >= high)
                })
            };
            let Some(m) = c.poll(Duration::from_millis(200)) else {
                if at_end() {
                    break;
                }
                continue;
            };
            let m = m.unwrap_or_else(|e| panic!("kafka error reading {topic}: {e}"));
            let offset = m.offset();
            f(part, &m);
            if offset + 1 >= high {
                break;
            }
        }
    }
}

fn is_marker(m: &BorrowedMessage<'_>) -> bool {
    m.key().and_then(frappe_cdc::progress::parse_key).is_some()
}

/// Every message of `topic` but progress markers, in partition then offset order.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<Msg> {
    read(bootstrap, topic, false)
}

/// The progress markers of `topic`, in partition then offset order.
#[allow(dead_code)]
pub fn read_markers(bootstrap: &str, topic: &str) -> Vec<Msg> {
    read(bootstrap, topic, true)
}

fn read(bootstrap: &str, topic: &str, markers: bool) -> Vec<Msg> {
    let mut out = Vec::new();
    scan(bootstrap, topic, |partition, m| {
        if is_marker(m) != markers {
            return;
        }
        let key =
            serde_json::from_slice(m.key().unwrap_or(b"null")).unwrap_or(serde_json::Value::Null);
        // Non-JSON payloads (hostile-message tests) are kept as text.
        let value = m.payload().map(|v| {
            serde_json::from_slice(v).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
            })
        });
        out.push(Msg {
            partition,
            offset: m.offset(),
            key,
            value,
        });
    });
    out
}

/// Number of messages in `topic` (nothing is decoded), for large volumes.
pub fn count_all(bootstrap: &str, topic: &str) -> u64 {
    let mut n = 0;
    scan(bootstrap, topic, |_, m| {
        if !is_marker(m) {
            n += 1
        }
    });
    n
}

/// The `frappe-cdc-reason` header of every message of `topic` (a dead-letter
/// topic), in partition then offset order; "" where a message has none.
pub fn dead_letter_reasons(bootstrap: &str, topic: &str) -> Vec<String> {
    use rdkafka::message::Headers;
    let mut out = Vec::new();
    scan(bootstrap, topic, |_, m| {
        let reason = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "frappe-cdc-reason")
                    .and_then(|h| h.value)
            })
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        out.push(reason);
    });
    out
}

/// A message as sent: key and value, each possibly absent.
pub type Raw = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Sends raw (key, value) pairs to `topic` in order (messages up to 16 MiB) and waits until
/// the broker acknowledged them.
pub fn send_raw(bootstrap: &str, topic: &str, msgs: &[Raw]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "16777216")
        .create()
        .expect("producer");
    for (k, v) in msgs {
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic);
        if let Some(k) = k {
            rec = rec.key(k);
        }
        if let Some(v) = v {
            rec = rec.payload(v);
        }
        p.send(rec).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// Every source transaction's envelopes (and the snapshot's) in `msgs` are there once each,
/// with indexes 0..doc_count: what a `read_committed` reader of an exactly-once topic must
/// find. Returns the number of source transactions.
#[allow(dead_code)]
pub fn whole_transactions(msgs: &[Msg]) -> usize {
    use std::collections::BTreeMap;
    let mut txs: BTreeMap<String, (u64, Vec<u64>)> = BTreeMap::new();
    for v in msgs.iter().filter_map(|m| m.value.as_ref()) {
        let s = &v["source"];
        let id = if s["snapshot"] == true {
            format!("snapshot {}", s["position"])
        } else {
            format!("gtid {}", s["gtid"])
        };
        let count = s["doc_count"].as_u64().expect("doc_count");
        let e = txs.entry(id).or_insert((count, Vec::new()));
        assert_eq!(e.0, count, "doc_count differs within one transaction");
        e.1.push(s["doc_index"].as_u64().expect("doc_index"));
    }
    for (id, (count, idx)) in &txs {
        let mut idx = idx.clone();
        idx.sort_unstable();
        let want: Vec<u64> = (0..*count).collect();
        assert_eq!(
            idx.len() as u64,
            *count,
            "{id}: {} envelopes on the topic, doc_count {count}",
            idx.len()
        );
        assert_eq!(
            idx, want,
            "{id}: document indexes are not 0..{count} once each"
        );
    }
    txs.len()
}

/// Each partition's (low, high) watermarks; high is the offset after its last record,
/// control records included.
#[allow(dead_code)]
pub fn watermarks(bootstrap: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    partition_ids(&c, topic)
        .into_iter()
        .map(|part| {
            let w = c
                .fetch_watermarks(topic, part, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{part}: {e}"));
            (part, w)
        })
        .collect()
}

/// The partitions of `topic` as the cluster's metadata lists them.
fn partition_ids(c: &BaseConsumer, topic: &str) -> Vec<i32> {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

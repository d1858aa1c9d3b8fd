//! What apply accepts from the topic: the one gate every message passes before anything of it
//! touches the replica, used by the one-message path and the bulk path alike.
//!
//! A message is admitted when its key is exactly `{"doctype", "name"}` (`schemas/key.v1.json`)
//! and, unless the value is null (a tombstone), the value is an envelope of a known version
//! whose images fit its operation, whose `after` image describes only its own document
//! ([`Envelope::validate`]), whose source position is a GTID position, and whose doctype and
//! name are the key's. A progress marker (`progress.rs`: key `{"progress": <partition>}`, a
//! marker value of a known version naming the partition it was read from) is admitted as such:
//! it only moves the offset. Anything else is rejected with a dead-letter reason that names the
//! defect (never the message's text) and nothing of it is applied.
//!
//! Pure and bounded: a key is at most [`crate::envelope::KEY_MAX_BYTES`]; JSON nesting stops at serde_json's
//! recursion limit (128), so a 10,000-deep key or value is a quick rejection, not a stack
//! overflow. `fuzz/` drives this function with arbitrary bytes.

use super::control::EventKey;
use crate::envelope::{ENVELOPE_VERSION, Envelope, Key, shape_error};
use crate::progress::{self, Progress};

/// A message apply may act on.
#[derive(Debug)]
pub enum Admitted {
    /// A null value under a valid key: moves the offset, writes nothing.
    Tombstone(Key<'static>),
    /// A document envelope and its position.
    Doc(Box<Envelope>, EventKey),
    /// A progress marker of capture.
    Progress(Box<Progress>),
}

/// Checks a message's key and value; `Err` is the dead-letter reason.
pub fn admit(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Admitted, String> {
    admit_from(key, value, None)
}

/// [`admit`] for a message read from `partition` (a marker must name the partition it is in).
pub fn admit_from(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    partition: Option<i32>,
) -> Result<Admitted, String> {
    if let Some(p) = key.and_then(progress::parse_key) {
        let m = Progress::parse(value.ok_or("value: a progress marker without a value")?)?;
        if m.partition != p || partition.is_some_and(|at| at != p) {
            return Err("value: progress marker for another partition".into());
        }
        return Ok(Admitted::Progress(Box::new(m)));
    }
    let k = Key::parse(key)?;
    let Some(value) = value else {
        return Ok(Admitted::Tombstone(k));
    };
    let e = Envelope::parse(value)
        .map_err(|e| format!("value: not a frappe-cdc envelope: {}", shape_error(&e)))?;
    if e.version != ENVELOPE_VERSION {
        return Err(format!("value: unknown envelope version {}", e.version));
    }
    e.validate()
        .map_err(|why| format!("value: invalid envelope: {why}"))?;
    k.matches(&e)?;
    let Some(pos) = EventKey::of(&e.source) else {
        return Err("value: source position is not a GTID position".into());
    };
    Ok(Admitted::Doc(Box::new(e), pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> serde_json::Value {
        json!({"version": 1, "op": "create", "doctype": "Customer", "name": "C1", "before": null,
            "after": {"parent": {"name": "C1", "customer_name": "x"}, "children": {"sales_team": [
                {"name": "st1", "parent": "C1", "parenttype": "Customer", "parentfield": "sales_team"}]}},
            "changes": {},
            "source": {"server_id": 1, "db": "d", "gtid": "0-1-9", "position": "0-1-9", "file": "f",
                "pos": 4, "commit_ts": 0, "doc_index": 0, "doc_count": 1, "snapshot": false}})
    }

    const KEY: &[u8] = br#"{"doctype":"Customer","name":"C1"}"#;

    fn reason(key: Option<&[u8]>, value: Option<&serde_json::Value>) -> String {
        let bytes = value.map(|v| serde_json::to_vec(v).unwrap());
        match admit(key, bytes.as_deref()) {
            Ok(a) => panic!("admitted: {a:?}"),
            Err(r) => r,
        }
    }

    #[test]
    fn a_valid_message_and_tombstone_are_admitted() {
        let v = serde_json::to_vec(&envelope()).unwrap();
        assert!(matches!(admit(Some(KEY), Some(&v)), Ok(Admitted::Doc(e, _)) if e.name == "C1"));
        assert!(matches!(admit(Some(KEY), None), Ok(Admitted::Tombstone(k)) if k.name == "C1"));
        // Key fields in either order, with whitespace: still the key.
        let k = br#" { "name" : "C1", "doctype" : "Customer" } "#;
        assert!(admit(Some(k), Some(&v)).is_ok());
    }

    #[test]
    fn every_bad_key_is_rejected_with_or_without_a_value() {
        // Deep within the size limit (recursion limit), and deep past it (size limit).
        let deep = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000));
        let deep_obj = format!(
            r#"{{"doctype":"Customer","name":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let long = format!(r#"{{"doctype":"Customer","name":"{}"}}"#, "x".repeat(5000));
        let cases: Vec<(Option<&[u8]>, &str)> = vec![
            (None, "key: missing"),
            (Some(b""), "key: empty"),
            (Some(b"C1"), "key: not JSON"),
            (Some(b"\xff\xfe"), "key: not UTF-8"),
            (Some(b"null"), "key: not an object"),
            (Some(b"[\"Customer\",\"C1\"]"), "key: not an object"),
            (Some(br#"{"doctype":"Customer"}"#), "key: not an object"),
            (
                Some(br#"{"doctype":"Customer","name":1}"#),
                "key: not an object",
            ),
            (
                Some(br#"{"doctype":"Customer","name":"C1","x":1}"#),
                "key: not an object",
            ),
            (
                Some(br#"{"doctype":"Customer","name":"C1","name":"C2"}"#),
                "key: not an object",
            ),
            (Some(br#"{"doctype":"","name":"C1"}"#), "key: empty doctype"),
            (Some(deep.as_bytes()), "key: "),
            (Some(deep_obj.as_bytes()), "key: "),
            (Some(long.as_bytes()), "key: 5032 bytes"),
            (
                Some(br#"{"doctype":"Customer","name":"C2"}"#),
                "another document",
            ),
            (
                Some(br#"{"doctype":"Supplier","name":"C1"}"#),
                "another doctype",
            ),
        ];
        let v = envelope();
        for (k, want) in cases {
            let with_value = reason(k, Some(&v));
            assert!(with_value.starts_with("key: "), "{with_value}");
            assert!(with_value.contains(want), "want {want}: {with_value}");
            if !want.starts_with("another") {
                let tomb = reason(k, None);
                assert!(tomb.contains(want), "tombstone, want {want}: {tomb}");
            }
        }
        // A shape error does not copy the key's text into the reason.
        let r = reason(
            Some(br#"{"doctype":"Customer","name":"secret-name"}"#),
            Some(&v),
        );
        assert!(!r.contains("secret"), "{r}");
        let r = reason(Some(br#"{"doctype":"Customer","name":7777777}"#), None);
        assert!(!r.contains("7777777"), "{r}");
    }

    #[test]
    fn an_after_image_must_describe_its_own_document() {
        let base = envelope();
        let mut cases: Vec<(serde_json::Value, &str)> = Vec::new();
        let mut v = base.clone();
        v["after"]["parent"]["name"] = "C2".into();
        cases.push((v, "after.parent.name"));
        let mut v = base.clone();
        v["after"]["parent"].as_object_mut().unwrap().remove("name");
        cases.push((v, "after.parent has no name"));
        for (col, val, want) in [
            ("parent", json!("C2"), ".parent is not"),
            ("parent", json!(null), ".parent is not"),
            ("parenttype", json!("Supplier"), ".parenttype is not"),
            ("parentfield", json!("accounts"), ".parentfield is not"),
            ("name", json!(""), "has no name"),
            ("name", json!(5), "has no name"),
        ] {
            let mut v = base.clone();
            v["after"]["children"]["sales_team"][0][col] = val;
            cases.push((v, want));
        }
        let mut v = base.clone();
        v["after"]["children"]["sales_team"][0]
            .as_object_mut()
            .unwrap()
            .remove("parent");
        cases.push((v, ".parent is not"));
        let mut v = base.clone();
        v["op"] = "rename".into();
        v["old_name"] = "C1".into();
        v["before"] = v["after"].clone();
        cases.push((v, "old_name equals name"));
        let mut v = base.clone();
        v["after"]["parent"]["x"] = json!({"a": serde_json::Value::Null});
        let mut deep = String::from("1");
        for _ in 0..10_000 {
            deep = format!("[{deep}]");
        }
        let text = serde_json::to_string(&v)
            .unwrap()
            .replace(r#"{"a":null}"#, &deep);
        let t = std::time::Instant::now();
        let r = admit(Some(KEY), Some(text.as_bytes())).unwrap_err();
        assert!(r.contains("recursion limit"), "{r}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        for (v, want) in cases {
            let r = reason(Some(KEY), Some(&v));
            assert!(
                r.starts_with("value: invalid envelope") && r.contains(want),
                "{r}"
            );
        }
        // A Single (named after its doctype) may leave `name` out of its fields.
        let mut v = base;
        v["doctype"] = "Selling Settings".into();
        v["name"] = "Selling Settings".into();
        v["after"] = json!({"parent": {"cust_master_name": "Naming Series"}, "children": {}});
        let k = br#"{"doctype":"Selling Settings","name":"Selling Settings"}"#;
        assert!(admit(Some(k), Some(&serde_json::to_vec(&v).unwrap())).is_ok());
    }

    #[test]
    fn progress_markers_are_admitted_only_whole_and_in_their_partition() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/examples");
        let read = |f: &str| std::fs::read(format!("{dir}/{f}")).unwrap();
        let (k, v) = (read("progress-key.json"), read("progress.json"));
        let k =
            serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&k).unwrap()).unwrap();
        assert!(matches!(admit(Some(&k), Some(&v)), Ok(Admitted::Progress(m)) if m.partition == 0));
        assert!(admit_from(Some(&k), Some(&v), Some(0)).is_ok());
        assert!(
            admit_from(Some(&k), Some(&v), Some(1)).is_err(),
            "read from another partition"
        );
        assert!(
            admit(Some(b"{\"progress\":1}"), Some(&v)).is_err(),
            "key names another partition"
        );
        assert!(admit(Some(&k), None).is_err(), "no value");
        assert!(admit(Some(&k), Some(b"{}")).is_err(), "not a marker");
        // A document envelope under a marker key is not a document.
        let e = serde_json::to_vec(&envelope()).unwrap();
        assert!(admit(Some(&k), Some(&e)).is_err());
    }

    #[test]
    fn the_schema_examples_are_admitted() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/examples");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            if file == "key.json" || file.starts_with("progress") {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let k =
                serde_json::to_vec(&json!({"doctype": v["doctype"], "name": v["name"]})).unwrap();
            let bytes = serde_json::to_vec(&v).unwrap();
            let r = admit(Some(&k), Some(&bytes));
            assert!(r.is_ok(), "{}: {:?}", path.display(), r.err());
            n += 1;
        }
        assert!(n >= 5);
    }
}

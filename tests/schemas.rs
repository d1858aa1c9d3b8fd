//! The examples in `schemas/examples/` match the JSON Schemas, deserialize into the envelope
//! type, and the schema rejects what it should.

mod common;

use common::schema::{
    assert_envelope, assert_key, assert_progress, assert_progress_key, is_valid_envelope,
};
use frappe_cdc::envelope::Envelope;
use frappe_cdc::progress::Progress;
use serde_json::Value;

fn example(name: &str) -> Value {
    let p = format!(
        "{}/schemas/examples/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&p).expect("example")).expect("json")
}

#[test]
fn every_example_is_valid_and_deserializes() {
    for op in ["create", "update", "delete", "rename", "snapshot"] {
        let v = example(op);
        assert_envelope(&v);
        let e: Envelope = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{op}: {e}"));
        assert_eq!(serde_json::to_value(&e).expect("serialize")["op"], op);
    }
    assert_key(&example("key"));
    let p = example("progress");
    assert_progress(&p);
    assert_progress_key(&example("progress-key"));
    let m = Progress::parse(&serde_json::to_vec(&p).expect("bytes")).expect("marker");
    // What capture writes matches the schema too.
    assert_progress(&serde_json::from_slice(&m.to_vec()).expect("json"));
    assert_progress_key(&serde_json::from_slice(&frappe_cdc::progress::key(3)).expect("json"));
}

#[test]
fn schema_rejects_inconsistent_envelopes() {
    let mut v = example("create");
    v["before"] = v["after"].clone();
    assert!(!is_valid_envelope(&v), "create with a before image");
    let mut v = example("delete");
    v["after"] = v["before"].clone();
    assert!(!is_valid_envelope(&v), "delete with an after image");
    let mut v = example("rename");
    v.as_object_mut().expect("obj").remove("old_name");
    assert!(!is_valid_envelope(&v), "rename without old_name");
    let mut v = example("update");
    v["after"]["parent"]["grand_total"] = serde_json::json!([1]);
    assert!(!is_valid_envelope(&v), "array value");
    let mut v = example("update");
    v["source"]["gtid"] = "0-1".into();
    assert!(!is_valid_envelope(&v), "malformed gtid");
    let mut v = example("update");
    v["surprise"] = 1.into();
    assert!(!is_valid_envelope(&v), "unknown field");
}

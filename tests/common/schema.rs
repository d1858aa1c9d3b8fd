//! Validation against the JSON Schemas in `schemas/`.

use std::sync::OnceLock;

use serde_json::Value;

fn load(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file"))
        .expect("schema json");
    jsonschema::draft202012::new(&schema)
        .unwrap_or_else(|e| panic!("{path} is not a valid schema: {e}"))
}

fn check(v: &jsonschema::Validator, what: &str, doc: &Value) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match its schema:\n{}\n{}",
        errors.join("\n"),
        serde_json::to_string_pretty(doc).unwrap_or_default()
    );
}

/// Panics unless `doc` is a valid envelope.
pub fn assert_envelope(doc: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check(V.get_or_init(|| load("envelope.v1.json")), "envelope", doc);
}

/// Panics unless `doc` is a valid key.
pub fn assert_key(doc: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check(V.get_or_init(|| load("key.v1.json")), "key", doc);
}

/// True if `doc` is a valid envelope (for negative tests).
pub fn is_valid_envelope(doc: &Value) -> bool {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| load("envelope.v1.json")).is_valid(doc)
}

/// Panics unless `doc` is a valid progress marker.
pub fn assert_progress(doc: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check(
        V.get_or_init(|| load("progress.v1.json")),
        "progress marker",
        doc,
    );
}

/// Panics unless `doc` is a valid progress marker key.
pub fn assert_progress_key(doc: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check(
        V.get_or_init(|| load("progress-key.v1.json")),
        "progress marker key",
        doc,
    );
}

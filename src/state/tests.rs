//! Unit tests of the state store.

use super::doc::tests::child;
use super::*;

fn cp() -> Checkpoint {
    Checkpoint {
        position: "0-1-5".parse().unwrap(),
        file: "f".into(),
        pos: 4,
        snapshot: SnapshotState::Done {
            at: "0-1-1".parse().unwrap(),
        },
        source_server_id: 1,
        schema: "db".into(),
        written_at: 0,
        commit_ts: 0,
        filter: None,
        envelope_version: None,
        epoch: Some("e1".into()),
    }
}

#[test]
fn checkpoint_without_commit_time_reads_as_unknown() {
    let mut v = serde_json::to_value(cp()).unwrap();
    v.as_object_mut().unwrap().remove("commit_ts");
    let old: Checkpoint = serde_json::from_value(v).unwrap();
    assert_eq!(old.commit_ts, 0);
    let mut c = cp();
    c.commit_ts = 1_700_000_000;
    let back: Checkpoint = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn documents_survive_commit_and_abort_drops_changes() {
    let dir = tempdir();
    let store = Store::open(&dir).unwrap();
    let key = DocKey {
        doctype: "Sales Invoice".into(),
        name: "S1".into(),
    };
    let mut b = store.batch().unwrap();
    let mut cache = DocCache::new(1 << 20);
    cache
        .set_parent(&b, &key, Some(r#"{"name":"S1"}"#.into()))
        .unwrap();
    cache.put_child(&b, &key, child("items", 2, "b")).unwrap();
    cache.put_child(&b, &key, child("items", 1, "a")).unwrap();
    // An orphan child row is a document without a parent: stored, never listed.
    let orphan = DocKey {
        doctype: "Sales Invoice".into(),
        name: "S0".into(),
    };
    cache
        .put_child(&b, &orphan, child("items", 1, "o"))
        .unwrap();
    cache.flush(&mut b).unwrap();
    assert!(cache.is_empty());
    let img = b.assemble(&key, DocShape::Table).unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&img).unwrap();
    assert_eq!(v["parent"]["name"], "S1");
    assert_eq!(v["children"]["items"][0]["name"], "a");
    assert_eq!(b.count_docs("Sales Invoice").unwrap(), 1);
    let listed = b.docs_after("Sales Invoice", None, 10).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "S1");
    assert!(
        b.docs_after("Sales Invoice", Some("S1"), 10)
            .unwrap()
            .is_empty()
    );
    b.commit(&cp()).unwrap();
    assert_eq!(store.checkpoint().unwrap().unwrap(), cp());

    let mut b = store.batch().unwrap();
    cache.set_parent(&b, &key, None).unwrap();
    cache
        .remove_child(&b, &key, "tabitems", "a", "items", 1)
        .unwrap();
    cache
        .remove_child(&b, &key, "tabitems", "b", "items", 2)
        .unwrap();
    cache.flush(&mut b).unwrap();
    assert!(b.assemble(&key, DocShape::Table).unwrap().is_none());
    assert_eq!(b.count_docs("Sales Invoice").unwrap(), 0);
    b.abort().unwrap();
    let b = store.batch().unwrap();
    assert!(
        b.assemble(&key, DocShape::Table).unwrap().is_some(),
        "abort must drop changes"
    );
}

#[test]
fn a_store_of_the_old_layout_is_refused_with_advice() {
    let dir = tempdir();
    {
        let store = Store::open(&dir).unwrap();
        let b = store.batch().unwrap();
        {
            let mut meta = b.wtx.open_table(META).unwrap();
            let v = serde_json::to_vec(&cp()).unwrap();
            meta.insert(CHECKPOINT_KEY, v.as_slice()).unwrap();
        }
        b.wtx.commit().unwrap();
    }
    let err = Store::peek_checkpoint(&dir).unwrap_err().to_string();
    assert!(err.contains("older frappe-cdc"), "{err}");
    assert!(err.contains("--state-dir"), "{err}");
}

#[test]
fn singles_image() {
    let dir = tempdir();
    let store = Store::open(&dir).unwrap();
    let mut b = store.batch().unwrap();
    b.put_single("System Settings", "country", b"\"India\"")
        .unwrap();
    b.put_single("System Settings", "enabled", b"\"1\"")
        .unwrap();
    b.put_single("System Settingsx", "x", b"null").unwrap();
    let key = DocKey {
        doctype: "System Settings".into(),
        name: "System Settings".into(),
    };
    let v: serde_json::Value =
        serde_json::from_str(&b.assemble(&key, DocShape::Single).unwrap().unwrap()).unwrap();
    assert_eq!(
        v["parent"],
        serde_json::json!({"country": "India", "enabled": "1"})
    );
    assert_eq!(v["children"], serde_json::json!({}));
    assert_eq!(
        b.single_doctypes().unwrap(),
        vec!["System Settings", "System Settingsx"]
    );
    let none = DocKey {
        doctype: "Nothing".into(),
        name: "Nothing".into(),
    };
    assert!(b.assemble(&none, DocShape::Single).unwrap().is_none());
}

pub(crate) fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "frappe-cdc-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

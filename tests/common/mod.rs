//! Shared helpers for integration tests (real MariaDB and broker; see servers.rs).
#![allow(dead_code)]

pub mod kafka;
pub mod metrics;
pub mod rig;
pub mod schema;
pub mod servers;
pub mod site_server;
pub mod topic;
pub mod webdriver;
pub mod workload;

use std::time::{Duration, Instant};

use frappe_cdc::source::decode::{CellKind, cell_json};
use mysql_async::prelude::Queryable;
use serde_json::{Map, Value};

/// Creates `apply_log` on a replica, with triggers that log every write of a Sales Invoice
/// parent row (name, modified): a version written twice shows up as a repeated pair.
pub async fn create_apply_log(r: &mut mysql_async::Conn) {
    r.query_drop("CREATE TABLE apply_log (id bigint AUTO_INCREMENT PRIMARY KEY, name varchar(140), modified datetime(6))").await.expect("log");
    for ev in ["INSERT", "UPDATE"] {
        r.query_drop(format!("CREATE TRIGGER log_{ev} AFTER {ev} ON `tabSales Invoice` FOR EACH ROW INSERT INTO apply_log (name, modified) VALUES (NEW.name, NEW.modified)")).await.expect("trigger");
    }
}

/// (name, modified, writes) of Sales Invoice versions `apply_log` saw written more than once.
pub async fn versions_written_twice(r: &mut mysql_async::Conn) -> Vec<(String, String, u64)> {
    r.query("SELECT name, CAST(modified AS CHAR), COUNT(*) FROM apply_log GROUP BY name, modified HAVING COUNT(*) > 1")
        .await
        .expect("apply_log")
}

/// Polls `f` until it returns true or the deadline passes (then panics with `what`).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_explained(timeout, what, f, || async { String::new() }).await
}

/// Polls `f` until it returns `Some` or `timeout` passes (then `None`).
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `wait_until`, with the text of `explain` (what the system did instead) in the panic.
pub async fn wait_until_explained<F, Fut, E, EFut>(
    timeout: Duration,
    what: &str,
    mut f: F,
    explain: E,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
    E: FnOnce() -> EFut,
    EFut: std::future::Future<Output = String>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}{}",
                explain().await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rows_json(
    conn: &mut mysql_async::Conn,
    sql: &str,
    params: mysql_async::Params,
) -> Vec<Map<String, Value>> {
    let mut res = conn.exec_iter(sql, params).await.expect("select");
    let cols = res.columns().map(|c| c.to_vec()).unwrap_or_default();
    let rows: Vec<mysql_async::Row> = res.collect().await.expect("rows");
    rows.into_iter()
        .map(|r| {
            let vals = r.unwrap();
            cols.iter()
                .zip(vals)
                .map(|(c, v)| {
                    (
                        c.name_str().into_owned(),
                        cell_json(&CellKind::from_result_column(c), v, false).expect("decode"),
                    )
                })
                .collect()
        })
        .collect()
}

/// The image of a document read straight from a database, in the envelope's shape.
pub async fn doc_image(conn: &mut mysql_async::Conn, doctype: &str, name: &str) -> Option<Value> {
    let single: Option<i64> = conn
        .exec_first("SELECT issingle FROM `tabDocType` WHERE name=?", (doctype,))
        .await
        .expect("doctype");
    let parents = if single == Some(1) {
        let fields: Vec<(String, Option<String>)> = conn
            .exec(
                "SELECT field, value FROM `tabSingles` WHERE doctype=? ORDER BY field",
                (doctype,),
            )
            .await
            .expect("singles");
        if fields.is_empty() {
            Vec::new()
        } else {
            let m: Map<String, Value> = fields
                .into_iter()
                .map(|(f, v)| (f, v.map(Value::String).unwrap_or(Value::Null)))
                .collect();
            vec![m]
        }
    } else {
        rows_json(
            conn,
            &format!("SELECT * FROM `tab{doctype}` WHERE name=?"),
            (name,).into(),
        )
        .await
    };
    let mut children = Map::new();
    let fields: Vec<(String, String)> = conn
        .exec("SELECT fieldname, options FROM `tabDocField` WHERE parent=? AND fieldtype='Table' ORDER BY idx", (doctype,))
        .await
        .expect("docfields");
    for (field, child) in fields {
        let rows = rows_json(conn, &format!("SELECT * FROM `tab{child}` WHERE parent=? AND parenttype=? AND parentfield=? ORDER BY idx"), (name, doctype, field.as_str()).into()).await;
        if !rows.is_empty() {
            children.insert(
                field,
                Value::Array(rows.into_iter().map(Value::Object).collect()),
            );
        }
    }
    if parents.is_empty() && children.is_empty() {
        return None;
    }
    let parent = parents
        .into_iter()
        .next()
        .map(Value::Object)
        .unwrap_or(Value::Null);
    Some(serde_json::json!({"parent": parent, "children": children}))
}

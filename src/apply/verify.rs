//! `frappe-cdc verify`: compares the tracked doctypes of the source and the replica document
//! by document (parent and children, the same ignored columns as apply's conflict check).
//!
//! Names are walked in chunks in name order on both sides, so memory stays bounded on
//! millions of rows; reads do not lock (the source is usually a production primary). A
//! document that changes while verify runs can show up as different: run it when apply has
//! caught up, or run it twice. Documents with an open conflict, or one resolved by keeping
//! the local copy, are reported as known divergences and do not fail the run.

use std::collections::BTreeSet;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, TxOpts};

use super::decision::Comparator;
use super::replica::{ReplicaError, SchemaCache, read_doc_plain};
use crate::frappe::catalog::Filter;
use crate::image::Image;

/// Names per chunk.
const CHUNK: usize = 500;

/// Counts of one doctype (or of all).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub equal: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub known: u64,
}

/// The result of a verify run.
#[derive(Debug, Default)]
pub struct Report {
    pub per_doctype: Vec<(String, Counts)>,
    pub total: Counts,
    /// First few keys of each kind: (kind, doctype, name, detail).
    pub examples: Vec<(&'static str, String, String, String)>,
}

impl Report {
    /// True when the replica equals the source (known divergences allowed).
    pub fn is_equal(&self) -> bool {
        self.total.missing == 0 && self.total.extra == 0 && self.total.different == 0
    }

    fn note(&mut self, kind: &'static str, doctype: &str, name: &str, detail: String) {
        if self.examples.iter().filter(|e| e.0 == kind).count() < 5 {
            self.examples
                .push((kind, doctype.to_string(), name.to_string(), detail));
        }
    }
}

async fn names_after(
    conn: &mut Conn,
    table: &str,
    after: Option<&str>,
) -> Result<Vec<String>, ReplicaError> {
    let t = format!("`{}`", table.replace('`', "``"));
    let rows: Vec<String> = match after {
        Some(a) => {
            conn.exec(
                format!("SELECT name FROM {t} WHERE name > ? ORDER BY name LIMIT {CHUNK}"),
                (a,),
            )
            .await?
        }
        None => {
            conn.query(format!("SELECT name FROM {t} ORDER BY name LIMIT {CHUNK}"))
                .await?
        }
    };
    Ok(rows)
}

async fn exists(conn: &mut Conn, table: &str) -> Result<bool, ReplicaError> {
    let n: Option<u64> = conn
        .exec_first("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?", (table,))
        .await?;
    Ok(n.unwrap_or(0) > 0)
}

/// Compares source and replica.
pub async fn run(
    source: &mut Conn,
    replica: &mut Conn,
    filter: &Filter,
    only: Option<&str>,
    cmp: &Comparator,
) -> Result<Report, ReplicaError> {
    let known: BTreeSet<(String, String)> = if exists(replica, "_frappe_cdc_conflicts").await? {
        replica
            .query::<(String, String), _>("SELECT doctype, name FROM `_frappe_cdc_conflicts` WHERE status = 'open' OR resolution = 'keep_local'")
            .await?
            .into_iter()
            .collect()
    } else {
        BTreeSet::new()
    };
    let doctypes: Vec<(String, i64)> = source
        .query("SELECT name, issingle FROM `tabDocType` WHERE istable = 0 AND is_virtual = 0 ORDER BY name")
        .await?;
    let mut report = Report::default();
    let (mut scache, mut rcache) = (SchemaCache::default(), SchemaCache::default());
    for (doctype, single) in doctypes {
        if only.is_some_and(|o| o != doctype) || !filter.tracks(&doctype) {
            continue;
        }
        let table = format!("tab{doctype}");
        let mut c = Counts::default();
        if single == 1 {
            let mut stx = source.start_transaction(TxOpts::default()).await?;
            let a = read_doc_plain(&mut stx, &mut scache, &doctype, &doctype).await?;
            stx.commit().await?;
            let mut rtx = replica.start_transaction(TxOpts::default()).await?;
            let b = read_doc_plain(&mut rtx, &mut rcache, &doctype, &doctype).await?;
            rtx.commit().await?;
            classify(
                &mut report,
                &mut c,
                &known,
                cmp,
                &doctype,
                &doctype,
                a.as_ref(),
                b.as_ref(),
            );
        } else if exists(source, &table).await? {
            let replica_has = exists(replica, &table).await?;
            let mut after: Option<String> = None;
            loop {
                let names = names_after(source, &table, after.as_deref()).await?;
                if names.is_empty() {
                    break;
                }
                let mut stx = source.start_transaction(TxOpts::default()).await?;
                let mut rtx = replica.start_transaction(TxOpts::default()).await?;
                for n in &names {
                    let a = read_doc_plain(&mut stx, &mut scache, &doctype, n).await?;
                    let b = if replica_has {
                        read_doc_plain(&mut rtx, &mut rcache, &doctype, n).await?
                    } else {
                        None
                    };
                    classify(
                        &mut report,
                        &mut c,
                        &known,
                        cmp,
                        &doctype,
                        n,
                        a.as_ref(),
                        b.as_ref(),
                    );
                }
                stx.commit().await?;
                rtx.commit().await?;
                after = names.last().cloned();
            }
            // Documents only the replica has.
            let mut after: Option<String> = None;
            loop {
                if !replica_has {
                    break;
                }
                let names = names_after(replica, &table, after.as_deref()).await?;
                if names.is_empty() {
                    break;
                }
                let marks = vec!["?"; names.len()].join(",");
                let present: BTreeSet<String> = source
                    .exec::<String, _, _>(
                        format!(
                            "SELECT name FROM `{}` WHERE name IN ({marks})",
                            table.replace('`', "``")
                        ),
                        names.clone(),
                    )
                    .await?
                    .into_iter()
                    .collect();
                for n in names.iter().filter(|n| !present.contains(*n)) {
                    if known.contains(&(doctype.clone(), n.clone())) {
                        c.known += 1;
                    } else {
                        c.extra += 1;
                        report.note("extra on replica", &doctype, n, String::new());
                    }
                }
                after = names.last().cloned();
            }
        }
        for (t, v) in [
            (&mut report.total.equal, c.equal),
            (&mut report.total.missing, c.missing),
            (&mut report.total.extra, c.extra),
            (&mut report.total.different, c.different),
            (&mut report.total.known, c.known),
        ] {
            *t += v;
        }
        report.per_doctype.push((doctype, c));
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn classify(
    report: &mut Report,
    c: &mut Counts,
    known: &BTreeSet<(String, String)>,
    cmp: &Comparator,
    doctype: &str,
    name: &str,
    a: Option<&Image>,
    b: Option<&Image>,
) {
    let diff = cmp.diff(a, b);
    if diff.is_empty() {
        c.equal += 1;
    } else if known.contains(&(doctype.to_string(), name.to_string())) {
        c.known += 1;
        report.note(
            "known divergence (conflict)",
            doctype,
            name,
            diff.join(", "),
        );
    } else if b.is_none() {
        c.missing += 1;
        report.note("missing on replica", doctype, name, String::new());
    } else {
        c.different += 1;
        report.note("different", doctype, name, diff.join(", "));
    }
}

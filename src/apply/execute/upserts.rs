//! The write half of a bulk batch: rows rendered once into multi-row upserts (`literal.rs`)
//! or `LOAD DATA LOCAL INFILE` text (`infile.rs`), grouped by table and column list, and sent
//! in statements of at most a few MiB. Everything runs inside the batch's transaction
//! (`execute.rs`), so a failure here rolls the whole batch back.

use std::collections::BTreeSet;

use mysql_async::Transaction;
use mysql_async::prelude::Queryable;
use serde_json::Value;

use crate::apply::replica::{ReplicaError, SchemaCache, q};
use crate::apply::{infile, literal};
use crate::image::{Col, Row};

/// Rows to upsert, grouped by table and column list, each row already rendered as a SQL
/// tuple (see `literal.rs`).
///
/// Rows of documents the replica does not have at all (`fresh`) go to `loads` instead, as
/// `LOAD DATA LOCAL INFILE` text (see `infile.rs`), unless `load_data` is off.
pub(in crate::apply::execute) struct Upserts {
    /// Rendered SQL tuples.
    pub(in crate::apply::execute) groups: Vec<Group<Vec<String>>>,
    /// Tab-separated lines.
    pub(in crate::apply::execute) loads: Vec<Group<Vec<u8>>>,
    load_data: bool,
    /// How rows of one table and one key list are written; rows of a table almost always
    /// share their key list, so this spares a schema lookup per column and a group search.
    plans: Vec<Plan>,
    /// The plan used last (rows arrive grouped by table).
    last: usize,
}

/// Which of a row's keys the replica has, and the groups their rows go to.
struct Plan {
    table: String,
    keys: Vec<Col>,
    keep: Vec<bool>,
    /// Indexes into `Upserts::loads` and `Upserts::groups`, once used.
    load: Option<usize>,
    upsert: Option<usize>,
}

impl Plan {
    pub(in crate::apply::execute) fn fits(&self, table: &str, row: &Row) -> bool {
        self.table == table && row.has_columns(&self.keys)
    }
}

/// Rows of one table with one column list.
#[derive(Default)]
pub(in crate::apply::execute) struct Group<T> {
    table: String,
    columns: Vec<String>,
    body: T,
    pub(in crate::apply::execute) rows: u64,
}

/// A new group for the kept `keys` of `table`; its index. Two plans may share a table and
/// column list (key order differs); they then write separate statements, which is fine.
fn new_group<T: Default>(
    groups: &mut Vec<Group<T>>,
    table: &str,
    keys: &[Col],
    keep: &[bool],
) -> usize {
    groups.push(Group {
        table: table.to_string(),
        columns: keys
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(n, _)| n.to_string())
            .collect(),
        ..Group::default()
    });
    groups.len() - 1
}

/// MariaDB/MySQL errors meaning `LOAD DATA LOCAL` is switched off on the server.
const LOCAL_INFILE_OFF: [u16; 3] = [1148, 3948, 4166];

impl Upserts {
    pub(in crate::apply::execute) fn new(load_data: bool) -> Self {
        Upserts {
            groups: Vec::new(),
            loads: Vec::new(),
            load_data,
            plans: Vec::new(),
            last: 0,
        }
    }

    /// Queues the columns of `row` the replica has (the others go to `missing`): as a
    /// `LOAD DATA` line when the document is `fresh` and every value fits that path, else as
    /// an upsert tuple.
    pub(in crate::apply::execute) async fn add(
        &mut self,
        tx: &mut Transaction<'_>,
        cache: &mut SchemaCache,
        table: &str,
        row: &Row,
        fresh: bool,
        missing: &mut BTreeSet<(String, String)>,
    ) -> Result<(), ReplicaError> {
        let p = match self.plans.get(self.last).filter(|p| p.fits(table, row)) {
            Some(_) => self.last,
            None => match self.plans.iter().position(|p| p.fits(table, row)) {
                Some(i) => i,
                None => {
                    let cols = cache.columns_for(tx, table, row.keys()).await?;
                    let keep: Vec<bool> = row.keys().map(|k| cols.contains(k)).collect();
                    for (k, _) in row.keys().zip(&keep).filter(|(_, kept)| !**kept) {
                        missing.insert((table.to_string(), k.to_string()));
                    }
                    self.plans.push(Plan {
                        table: table.to_string(),
                        keys: row.cols().cloned().collect(),
                        keep,
                        load: None,
                        upsert: None,
                    });
                    self.plans.len() - 1
                }
            },
        };
        self.last = p;
        let plan = &mut self.plans[p];
        if !plan.keep.iter().any(|k| *k) {
            return Ok(());
        }
        let kept = || {
            row.values()
                .zip(&plan.keep)
                .filter_map(|(v, k)| k.then_some(v))
        };
        if fresh && self.load_data {
            let g = *plan.load.get_or_insert_with(|| {
                new_group(&mut self.loads, &plan.table, &plan.keys, &plan.keep)
            });
            let g = &mut self.loads[g];
            if infile::push_line(&mut g.body, kept()) {
                g.rows += 1;
                return Ok(());
            }
        }
        let values: Vec<&Value> = kept().collect();
        let g = *plan.upsert.get_or_insert_with(|| {
            new_group(&mut self.groups, &plan.table, &plan.keys, &plan.keep)
        });
        let g = &mut self.groups[g];
        g.body.push(literal::tuple(&values));
        g.rows += 1;
        Ok(())
    }

    /// Runs the loads, then the upserts. Sets `*load_data` to false when the server refuses
    /// `LOAD DATA LOCAL` (the batch then fails and is re-run without it).
    pub(in crate::apply::execute) async fn write(
        self,
        tx: &mut Transaction<'_>,
        load_data: &mut bool,
    ) -> Result<(), ReplicaError> {
        for g in self.loads {
            let quoted: Vec<String> = g.columns.iter().map(|n| q(n)).collect();
            let file = infile::Registered::new(g.body);
            let sql = format!(
                "LOAD DATA LOCAL INFILE '{}' INTO TABLE {} CHARACTER SET utf8mb4 \
                 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
                file.name(),
                q(&g.table),
                quoted.join(", ")
            );
            if let Err(e) = tx.query_drop(sql).await {
                if let mysql_async::Error::Server(se) = &e
                    && LOCAL_INFILE_OFF.contains(&se.code)
                {
                    tracing::warn!(error = %e, "the replica refuses LOAD DATA LOCAL INFILE; new rows are written with INSERT from now on (slower). Set local_infile=ON on the replica to use the fast path");
                    *load_data = false;
                }
                return Err(e.into());
            }
            drop(file);
            let (stored, warnings) = (tx.affected_rows(), tx.get_warnings());
            if stored != g.rows || warnings > 0 {
                return Err(ReplicaError::LoadMismatch {
                    table: g.table,
                    sent: g.rows,
                    stored,
                    warnings,
                });
            }
        }
        for g in self.groups {
            let quoted: Vec<String> = g.columns.iter().map(|n| q(n)).collect();
            let head = format!(
                "INSERT INTO {} ({}) VALUES ",
                q(&g.table),
                quoted.join(", ")
            );
            let updates: Vec<String> = quoted
                .iter()
                .map(|n| format!("{n} = VALUES({n})"))
                .collect();
            let tail = format!(" ON DUPLICATE KEY UPDATE {}", updates.join(", "));
            send_values(tx, &head, &g.body, &tail).await?;
        }
        Ok(())
    }
}

/// Statement size above which a multi-row statement is cut (well under the 16 MiB default
/// `max_allowed_packet`; one row larger than this still goes, alone).
const STATEMENT_BYTES: usize = 4 << 20;

/// Runs `head tuple, tuple, ... tail` as few text statements as `STATEMENT_BYTES` allows.
pub(in crate::apply::execute) async fn send_values(
    tx: &mut Transaction<'_>,
    head: &str,
    tuples: &[String],
    tail: &str,
) -> Result<(), ReplicaError> {
    let mut sql = String::with_capacity(
        STATEMENT_BYTES
            .min(head.len() + tail.len() + tuples.iter().map(|t| t.len() + 1).sum::<usize>()),
    );
    let mut n = 0;
    for t in tuples {
        if n > 0 && sql.len() + t.len() + tail.len() > STATEMENT_BYTES {
            sql.push_str(tail);
            tx.query_drop(std::mem::take(&mut sql)).await?;
            n = 0;
        }
        if n == 0 {
            sql.push_str(head);
        } else {
            sql.push(',');
        }
        sql.push_str(t);
        n += 1;
    }
    if n > 0 {
        sql.push_str(tail);
        tx.query_drop(sql).await?;
    }
    Ok(())
}

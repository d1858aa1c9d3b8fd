//! What apply knows about the replica's schema: the columns of each table (re-read when a
//! write carries a column the cache lacks, so a column added while apply runs is written),
//! each doctype's child tables, which doctypes are Singles, and the index to name in locked
//! reads. Cleared after a transient failure or a message the replica rejected, so nothing
//! stale outlives a schema change for more than one retry. Nothing here is persisted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use mysql_async::Transaction;
use mysql_async::prelude::Queryable;

use super::sql::{ReplicaError, q};

/// Cached facts about the replica's schema (cheap to clone: the entries are shared).
#[derive(Default, Clone)]
pub struct SchemaCache {
    /// Columns per table, and when they were read.
    columns: HashMap<String, (Arc<BTreeSet<String>>, Instant)>,
    child_tables: HashMap<String, Arc<BTreeMap<String, String>>>,
    single: HashMap<String, bool>,
    /// (table, column) → an index whose first column it is.
    index_on: HashMap<(String, String), Option<Arc<str>>>,
}

/// How old a table's cached columns must be before a write carrying a column they lack reads
/// them again (a replica without that column costs one `information_schema` read per table
/// this often, not one per write).
pub const COLUMNS_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl SchemaCache {
    /// Forgets everything (after DDL on the replica, or an unknown-column error).
    pub fn clear(&mut self) {
        *self = SchemaCache::default();
    }

    pub(crate) async fn columns(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
    ) -> Result<Arc<BTreeSet<String>>, ReplicaError> {
        if let Some((c, _)) = self.columns.get(table) {
            return Ok(Arc::clone(c));
        }
        self.read_columns(tx, table).await
    }

    /// The columns of `table`, read again when one of `wanted` is not among the cached ones
    /// and they were read more than [`COLUMNS_RECHECK`] ago: a column added on the replica
    /// while apply runs is written from the next document that carries it.
    pub(crate) async fn columns_for<'a>(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        mut wanted: impl Iterator<Item = &'a str>,
    ) -> Result<Arc<BTreeSet<String>>, ReplicaError> {
        let cols = self.columns(tx, table).await?;
        let stale = self
            .columns
            .get(table)
            .is_some_and(|(_, at)| at.elapsed() >= COLUMNS_RECHECK);
        if stale && wanted.any(|k| !cols.contains(k)) {
            return self.read_columns(tx, table).await;
        }
        Ok(cols)
    }

    async fn read_columns(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
    ) -> Result<Arc<BTreeSet<String>>, ReplicaError> {
        // MariaDB identifiers are utf8mb3: a name with a character beyond the BMP names no
        // table, and comparing it with information_schema fails (error 1267) instead.
        if table.chars().any(|c| u32::from(c) > 0xFFFF) {
            return Err(ReplicaError::UnknownTable {
                table: table.to_string(),
            });
        }
        let cols: Vec<String> = tx
            .exec("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?", (table,))
            .await?;
        if cols.is_empty() {
            return Err(ReplicaError::UnknownTable {
                table: table.to_string(),
            });
        }
        let set = Arc::new(cols.into_iter().collect::<BTreeSet<_>>());
        self.columns
            .insert(table.to_string(), (Arc::clone(&set), Instant::now()));
        Ok(set)
    }

    /// parentfield → child table, from the replica's DocField and Custom Field rows.
    pub(crate) async fn child_tables(
        &mut self,
        tx: &mut Transaction<'_>,
        doctype: &str,
    ) -> Result<Arc<BTreeMap<String, String>>, ReplicaError> {
        if let Some(c) = self.child_tables.get(doctype) {
            return Ok(Arc::clone(c));
        }
        // Table fields of the doctype and its custom fields (a site without `tabCustom
        // Field` has only the first).
        const FIELDS: [(&str, &str); 2] = [("tabDocField", "parent"), ("tabCustom Field", "dt")];
        let mut map = BTreeMap::new();
        for (i, (table, owner)) in FIELDS.into_iter().enumerate() {
            if i > 0 && self.columns(tx, table).await.is_err() {
                continue;
            }
            let rows: Vec<(String, Option<String>)> = tx
                .exec(format!("SELECT fieldname, options FROM `{table}` WHERE {owner} = ? AND fieldtype IN ('Table', 'Table MultiSelect')"), (doctype,))
                .await?;
            map.extend(
                rows.into_iter()
                    .filter_map(|(f, o)| Some((f, format!("tab{}", o?)))),
            );
        }
        let map = Arc::new(map);
        self.child_tables
            .insert(doctype.to_string(), Arc::clone(&map));
        Ok(map)
    }

    /// The distinct child tables of a doctype.
    pub(crate) async fn child_table_set(
        &mut self,
        tx: &mut Transaction<'_>,
        doctype: &str,
    ) -> Result<BTreeSet<String>, ReplicaError> {
        Ok(self
            .child_tables(tx, doctype)
            .await?
            .values()
            .cloned()
            .collect())
    }

    /// An index of `table` whose first column is `column` (PRIMARY for `name` on Frappe
    /// tables, `parent` on child tables), as an index hint: the locked reads must walk that
    /// index even when the optimizer would rather scan a small table, because a locking scan
    /// waits on every row another transaction holds, and concurrent writers (`--writers`)
    /// hold each other's rows until they commit in order.
    pub(crate) async fn index_hint(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &str,
        column: &str,
    ) -> Result<String, ReplicaError> {
        let key = (table.to_string(), column.to_string());
        if !self.index_on.contains_key(&key) {
            let name: Option<String> = tx
                .exec_first(
                    "SELECT index_name FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ? AND seq_in_index = 1 ORDER BY index_name <> 'PRIMARY', non_unique, index_name LIMIT 1",
                    (table, column),
                )
                .await?;
            self.index_on.insert(key.clone(), name.map(Arc::from));
        }
        Ok(match self.index_on.get(&key).and_then(Option::as_ref) {
            Some(i) => format!(" FORCE INDEX ({})", q(i)),
            None => String::new(),
        })
    }

    /// True if the doctype is a Single on the replica.
    pub async fn is_single(
        &mut self,
        tx: &mut Transaction<'_>,
        doctype: &str,
    ) -> Result<bool, ReplicaError> {
        if let Some(s) = self.single.get(doctype) {
            return Ok(*s);
        }
        let s: Option<i64> = tx
            .exec_first(
                "SELECT issingle FROM `tabDocType` WHERE name = ?",
                (doctype,),
            )
            .await?;
        let s = s == Some(1);
        self.single.insert(doctype.to_string(), s);
        Ok(s)
    }
}

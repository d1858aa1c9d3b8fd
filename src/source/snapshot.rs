//! The initial consistent snapshot (reading side).
//!
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT` on a REPEATABLE READ connection pins both the
//! rows every later SELECT of this transaction sees and `binlog_snapshot_file/position`, which
//! `BINLOG_GTID_POS` turns into the GTID position of exactly that point. Streaming the binlog
//! from that position after loading the rows therefore misses nothing and repeats nothing. No
//! lock is taken (only SELECT is needed); the cost is undo history kept while the snapshot runs.

use std::sync::Arc;

use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use tokio::sync::mpsc;

use super::conn::DbTarget;
use super::decode::{CellKind, cell_of};
use super::rows::{RowImage, RowWriter, TableDesc};
use crate::position::GtidPosition;

/// Rows sent to the loader per message.
const CHUNK: usize = 2000;

/// What the snapshot reader sends.
pub enum SnapItem {
    /// Rows of one table.
    Rows(Arc<TableDesc>, Vec<RowImage>),
    /// One table is complete.
    TableDone(String),
    /// Every table was read: only now may the loaded rows be committed.
    End,
}

/// An open consistent snapshot.
pub struct Snapshot {
    conn: Conn,
    pub position: GtidPosition,
    pub file: String,
    pub pos: u64,
    schema: String,
}

/// Errors of the snapshot reader.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot query failed: {0}")]
    Sql(#[source] Box<mysql_async::Error>),
    #[error("binlog_snapshot_file/position not available: is log_bin on?")]
    NoPosition,
    #[error("cannot decode column {column} of {table}: {source}")]
    Decode {
        table: String,
        column: String,
        source: super::decode::DecodeError,
    },
    #[error("snapshot loader stopped")]
    Closed,
}

impl From<mysql_async::Error> for SnapshotError {
    fn from(e: mysql_async::Error) -> Self {
        SnapshotError::Sql(Box::new(e))
    }
}

fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

impl Snapshot {
    /// Opens the snapshot transaction and reads its binlog position.
    pub async fn begin(target: &DbTarget) -> Result<Snapshot, SnapshotError> {
        let mut conn = Conn::new(target.opts.clone()).await?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await?;
        let rows: Vec<(String, String)> =
            conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
        let get = |n: &str| {
            rows.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let (Some(file), Some(pos)) =
            (get("Binlog_snapshot_file"), get("Binlog_snapshot_position"))
        else {
            return Err(SnapshotError::NoPosition);
        };
        if file.is_empty() {
            return Err(SnapshotError::NoPosition);
        }
        let pos: u64 = pos.parse().map_err(|_| SnapshotError::NoPosition)?;
        let gtid: Option<Option<String>> = conn
            .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file.as_str(), pos))
            .await?;
        let position: GtidPosition = gtid
            .flatten()
            .unwrap_or_default()
            .parse()
            .map_err(|_| SnapshotError::NoPosition)?;
        Ok(Snapshot {
            conn,
            position,
            file,
            pos,
            schema: target.database.clone(),
        })
    }

    /// Base tables of the schema named `tab*`, with estimated row counts, `tabDocType` first.
    pub async fn tables(&mut self) -> Result<Vec<(String, u64)>, SnapshotError> {
        let mut t: Vec<(String, Option<u64>)> = self
            .conn
            .exec(
                "SELECT table_name, table_rows FROM information_schema.tables WHERE table_schema=? \
                 AND table_type='BASE TABLE' AND table_name LIKE 'tab%' ORDER BY table_name",
                (self.schema.as_str(),),
            )
            .await?;
        t.sort_by_key(|(n, _)| (n != "tabDocType", n.clone()));
        Ok(t.into_iter().map(|(n, r)| (n, r.unwrap_or(0))).collect())
    }

    /// Streams every row of `table` to `tx` in chunks.
    pub async fn read_table(
        &mut self,
        table: &str,
        tx: &mpsc::Sender<SnapItem>,
    ) -> Result<u64, SnapshotError> {
        let sql = format!(
            "SELECT * FROM {}.{}",
            quote_ident(&self.schema),
            quote_ident(table)
        );
        let mut result = self.conn.exec_iter(sql, ()).await?;
        let columns = result.columns().map(|c| c.to_vec()).unwrap_or_default();
        let desc = Arc::new(TableDesc::from_columns(
            &self.schema,
            table,
            columns
                .iter()
                .map(|c| (c.name_str().into_owned(), CellKind::from_result_column(c)))
                .collect(),
        ));
        let mut stream = result.stream::<Row>().await?.ok_or(SnapshotError::Closed)?;
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut n = 0u64;
        while let Some(row) = stream.next().await {
            let row = row?;
            let values = row.unwrap();
            let mut img = RowWriter::new(&desc);
            for (v, c) in values.into_iter().zip(desc.columns.iter()) {
                let cell = cell_of(&c.kind, v, false).map_err(|source| SnapshotError::Decode {
                    table: table.to_string(),
                    column: c.name.clone(),
                    source,
                })?;
                img.push(&cell);
            }
            chunk.push(img.finish());
            n += 1;
            if chunk.len() >= CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                tx.send(SnapItem::Rows(Arc::clone(&desc), full))
                    .await
                    .map_err(|_| SnapshotError::Closed)?;
            }
        }
        drop(stream);
        if !chunk.is_empty() {
            tx.send(SnapItem::Rows(Arc::clone(&desc), chunk))
                .await
                .map_err(|_| SnapshotError::Closed)?;
        }
        tx.send(SnapItem::TableDone(table.to_string()))
            .await
            .map_err(|_| SnapshotError::Closed)?;
        Ok(n)
    }

    /// Ends the snapshot transaction.
    pub async fn finish(mut self) -> Result<(), SnapshotError> {
        self.conn.query_drop("COMMIT").await?;
        let _ = self.conn.disconnect().await;
        Ok(())
    }
}

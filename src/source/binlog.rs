//! Binlog reader: connects as a MariaDB replica and turns events into [`BinlogItem`]s.
//!
//! Consistency: the dump starts from a [`GtidPosition`] with `@slave_connect_state`, so the
//! first group read is the first one after the checkpoint in every domain. Items of a group
//! arrive as `Begin`, then `Rows`/`Ddl`, then `Commit` (on XID, on a `COMMIT`/`ROLLBACK` query,
//! or after the single statement of a standalone group such as DDL). Nothing is acknowledged
//! here: the reader only reads, so a crash or a dropped connection loses nothing; the capture
//! loop restarts the dump from its last durable checkpoint.
//!
//! Requires `@mariadb_slave_capability=4` (otherwise GTID events become `BEGIN` queries) and a
//! heartbeat, with a read timeout of three heartbeat periods, because mysql_async has no read
//! timeout of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use mysql_common::binlog::events::EventData;
use tokio::sync::mpsc;

use super::rows::{
    RowsBatch, RowsError, TableDesc, decode_rows, decompress_mariadb, rows_event_kind,
    rows_table_id,
};
use crate::position::{Gtid, GtidPosition};

/// What the reader hands to the capture loop.
#[derive(Debug)]
pub enum BinlogItem {
    /// Start of an event group.
    Begin { gtid: Gtid, standalone: bool },
    /// Decoded rows of one rows event of a table the filter accepted.
    Rows(RowsBatch),
    /// A statement other than BEGIN/COMMIT/ROLLBACK (DDL, mostly).
    Query { schema: String, query: String },
    /// End of the current group. `ts` is the commit's event timestamp (seconds).
    Commit { ts: u32, file: String, pos: u64 },
    /// The server is alive and has nothing newer; `ts` is the server's clock when known.
    Heartbeat { file: String, pos: u64 },
}

/// Errors of the binlog reader.
#[derive(Debug, thiserror::Error)]
pub enum BinlogError {
    #[error("binlog connection failed: {0}")]
    Connect(#[source] Box<mysql_async::Error>),
    #[error(
        "the primary no longer has the binlog for position {position:?}: {message}. The \
         checkpoint is older than the oldest binlog (binlogs purged). Take a new snapshot: \
         stop capture, delete the state directory, start capture again"
    )]
    NotAvailable { position: String, message: String },
    #[error("binlog stream error: {0}")]
    Stream(#[source] Box<mysql_async::Error>),
    #[error("no binlog event or heartbeat for {0:?}: connection considered dead")]
    Timeout(Duration),
    #[error(transparent)]
    Rows(#[from] RowsError),
    #[error("malformed {what} event at {file}:{pos}")]
    Malformed {
        what: &'static str,
        file: String,
        pos: u64,
    },
    #[error("capture loop stopped")]
    Closed,
    #[error("the primary ended the binlog stream (shutdown or restart?)")]
    EndedByServer,
}

impl BinlogError {
    /// True for errors that a reconnect may cure.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BinlogError::Connect(_)
                | BinlogError::Stream(_)
                | BinlogError::Timeout(_)
                | BinlogError::EndedByServer
        )
    }
}

/// How to read the binlog.
#[derive(Clone)]
pub struct ReaderConfig {
    pub opts: mysql_async::Opts,
    pub server_id: u32,
    pub schema: String,
    pub start: GtidPosition,
    pub heartbeat: Duration,
    /// Decides which tables of `schema` are decoded at all.
    pub want_table: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// Stop at the end of the binlog instead of waiting for more (benchmarks, tests).
    pub non_blocking: bool,
}

fn gtid_event(data: &[u8], server_id: u32) -> Option<(Gtid, u8)> {
    let seq_no = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain_id = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let flags = *data.get(12)?;
    Some((
        Gtid {
            domain_id,
            server_id,
            seq_no,
        },
        flags,
    ))
}

/// Parses QUERY_COMPRESSED (165): the normal query post-header and status vars, `db\0`, then
/// a compressed query text.
fn compressed_query(data: &[u8]) -> Option<(String, String)> {
    let db_len = *data.get(8)? as usize;
    let status_len = u16::from_le_bytes(data.get(11..13)?.try_into().ok()?) as usize;
    let db_start = 13 + status_len;
    let schema = String::from_utf8_lossy(data.get(db_start..db_start + db_len)?).into_owned();
    let q = decompress_mariadb(data.get(db_start + db_len + 1..)?).ok()?;
    Some((schema, String::from_utf8_lossy(&q).into_owned()))
}

/// Opens a dump connection positioned at `cfg.start`.
pub async fn open_stream(cfg: &ReaderConfig) -> Result<mysql_async::BinlogStream, BinlogError> {
    let mut conn = Conn::new(cfg.opts.clone())
        .await
        .map_err(|e| BinlogError::Connect(Box::new(e)))?;
    let hb_ns = cfg.heartbeat.as_nanos().min(4_294_967_000_000_000);
    for q in [
        "SET @mariadb_slave_capability=4".to_string(),
        format!("SET @master_heartbeat_period={hb_ns}"),
        format!("SET @slave_connect_state='{}'", cfg.start),
        "SET @slave_gtid_strict_mode=0".to_string(),
    ] {
        conn.query_drop(q)
            .await
            .map_err(|e| BinlogError::Connect(Box::new(e)))?;
    }
    let mut req = BinlogStreamRequest::new(cfg.server_id);
    if cfg.non_blocking {
        req = req.with_non_blocking();
    }
    conn.get_binlog_stream(req)
        .await
        .map_err(|e| BinlogError::Connect(Box::new(e)))
}

fn map_stream_error(e: mysql_async::Error, start: &GtidPosition) -> BinlogError {
    if let mysql_async::Error::Server(ref se) = e
        && se.code == 1236
    {
        return BinlogError::NotAvailable {
            position: start.to_string(),
            message: se.message.clone(),
        };
    }
    BinlogError::Stream(Box::new(e))
}

/// Reads the binlog until the channel closes, an error occurs, or (non-blocking) the end.
pub async fn run_reader(
    cfg: ReaderConfig,
    tx: mpsc::Sender<BinlogItem>,
) -> Result<(), BinlogError> {
    let mut stream = open_stream(&cfg).await?;
    let mut tables: HashMap<u64, Option<Arc<TableDesc>>> = HashMap::new();
    let mut file = String::new();
    let mut in_group = false;
    let mut standalone = false;
    let read_timeout = cfg.heartbeat * 3 + Duration::from_secs(1);
    let send = |item| async { tx.send(item).await.map_err(|_| BinlogError::Closed) };
    loop {
        let ev = match tokio::time::timeout(read_timeout, stream.next()).await {
            Err(_) => return Err(BinlogError::Timeout(read_timeout)),
            // End of binlog: normal with --stop-at-end; otherwise the server ended the dump
            // (shutdown or restart), so reconnect from the checkpoint.
            Ok(None) if cfg.non_blocking => return Ok(()),
            Ok(None) => return Err(BinlogError::EndedByServer),
            Ok(Some(Err(e))) => return Err(map_stream_error(e, &cfg.start)),
            Ok(Some(Ok(ev))) => ev,
        };
        let header = ev.header();
        let etype = header.event_type_raw();
        let pos = header.log_pos() as u64;
        let malformed = |what| BinlogError::Malformed {
            what,
            file: file.clone(),
            pos,
        };
        match etype {
            // ROTATE: real (log_pos != 0) or fake at the start of a dump.
            4 => {
                if let Ok(Some(EventData::RotateEvent(r))) = ev.read_data() {
                    let mut name = r.name_raw().to_vec();
                    // A fake rotate arrives before the FDE, so its CRC is still attached.
                    if header.log_pos() == 0
                        && name.len() > 4
                        && !name[name.len() - 4..].iter().all(u8::is_ascii_graphic)
                    {
                        name.truncate(name.len() - 4);
                    }
                    file = String::from_utf8_lossy(&name).into_owned();
                    tables.clear();
                }
            }
            // MariaDB GTID.
            162 => {
                let (gtid, flags) =
                    gtid_event(ev.data(), header.server_id()).ok_or_else(|| malformed("gtid"))?;
                in_group = true;
                standalone = flags & 0x01 != 0;
                send(BinlogItem::Begin { gtid, standalone }).await?;
            }
            // TABLE_MAP.
            19 => {
                if let Ok(Some(EventData::TableMapEvent(tme))) = ev.read_data() {
                    let id = tme.table_id();
                    if let std::collections::hash_map::Entry::Vacant(slot) = tables.entry(id) {
                        let wanted = tme.database_name() == cfg.schema
                            && (cfg.want_table)(&tme.table_name());
                        let desc = if wanted {
                            Some(Arc::new(TableDesc::from_tme(&tme)?))
                        } else {
                            None
                        };
                        slot.insert(desc);
                    }
                } else {
                    return Err(malformed("table map"));
                }
            }
            t if rows_event_kind(t).is_some() => {
                let id = rows_table_id(ev.data()).ok_or_else(|| malformed("rows"))?;
                if let Some(Some(desc)) = tables.get(&id) {
                    let batch = decode_rows(t, ev.data(), desc)?;
                    send(BinlogItem::Rows(batch)).await?;
                }
            }
            16 => {
                in_group = false;
                send(BinlogItem::Commit {
                    ts: header.timestamp(),
                    file: file.clone(),
                    pos,
                })
                .await?;
            }
            2 | 165 => {
                let (schema, query) = if etype == 2 {
                    match ev.read_data() {
                        Ok(Some(EventData::QueryEvent(q))) => {
                            (q.schema().into_owned(), q.query().into_owned())
                        }
                        _ => return Err(malformed("query")),
                    }
                } else {
                    compressed_query(ev.data()).ok_or_else(|| malformed("compressed query"))?
                };
                let word = query
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                match word.as_str() {
                    "BEGIN" => {}
                    "COMMIT" | "ROLLBACK" => {
                        in_group = false;
                        send(BinlogItem::Commit {
                            ts: header.timestamp(),
                            file: file.clone(),
                            pos,
                        })
                        .await?;
                    }
                    _ => {
                        tables.clear();
                        send(BinlogItem::Query { schema, query }).await?;
                        if standalone || !in_group {
                            in_group = false;
                            send(BinlogItem::Commit {
                                ts: header.timestamp(),
                                file: file.clone(),
                                pos,
                            })
                            .await?;
                        }
                    }
                }
            }
            // HEARTBEAT.
            27 => {
                send(BinlogItem::Heartbeat {
                    file: file.clone(),
                    pos,
                })
                .await?;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gtid_event() {
        let mut d = 42u64.to_le_bytes().to_vec();
        d.extend_from_slice(&3u32.to_le_bytes());
        d.push(0x0c);
        let (g, flags) = gtid_event(&d, 7).unwrap();
        assert_eq!(g.to_string(), "3-7-42");
        assert_eq!(flags, 0x0c);
        assert!(gtid_event(&d[..10], 7).is_none());
    }

    #[test]
    fn compressed_query_rejects_short_input() {
        assert!(compressed_query(&[0; 5]).is_none());
    }
}

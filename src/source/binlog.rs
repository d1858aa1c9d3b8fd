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

use futures::{FutureExt, StreamExt};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use mysql_common::binlog::events::EventData;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

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

/// Most items in one chunk on the reader's channel: the reader hands over whole runs of events
/// so the two threads do not wake each other for every small rows event.
pub const CHUNK_ITEMS: usize = 64;

/// Decoded bytes the reader may be ahead of the capture loop. While the loop writes a
/// checkpoint (an fsync of the state store, ~100 ms under load) the reader keeps decoding into
/// this budget instead of stalling on a full channel; it bounds capture's memory for huge
/// transactions too.
pub const READ_AHEAD_BYTES: usize = 16 << 20;

/// Chunks stop growing at this many KiB of decoded rows.
const CHUNK_KIB: u32 = 256;

/// A run of items from the reader. Holds its share of the read-ahead budget until the capture
/// loop has processed and dropped it.
pub struct Chunk {
    pub items: Vec<BinlogItem>,
    _budget: OwnedSemaphorePermit,
}

/// KiB of the read-ahead budget an item takes: at least 1, so runs of small items are bounded
/// by count as well.
fn cost_kib(item: &BinlogItem) -> u32 {
    let bytes = match item {
        BinlogItem::Rows(rb) => rb
            .rows
            .iter()
            .map(|r| {
                r.before.as_ref().map_or(0, |i| i.heap_bytes())
                    + r.after.as_ref().map_or(0, |i| i.heap_bytes())
                    + 64
            })
            .sum(),
        BinlogItem::Query { query, .. } => query.len(),
        _ => 0,
    };
    1 + (bytes >> 10).min(u32::MAX as usize - 1) as u32
}

/// Gathers items into chunks for the capture loop's channel, within the read-ahead budget.
struct Chunker {
    tx: mpsc::Sender<Chunk>,
    /// The read-ahead budget in KiB permits, shared with the chunks in flight.
    budget: Arc<Semaphore>,
    budget_kib: u32,
    buf: Vec<BinlogItem>,
    kib: u32,
}

impl Chunker {
    fn new(tx: mpsc::Sender<Chunk>, budget_bytes: usize) -> Self {
        let budget_kib = (budget_bytes >> 10).clamp(1, u32::MAX as usize) as u32;
        Chunker {
            tx,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            buf: Vec::with_capacity(CHUNK_ITEMS),
            kib: 0,
        }
    }

    async fn push(&mut self, item: BinlogItem) -> Result<(), BinlogError> {
        self.kib = self.kib.saturating_add(cost_kib(&item));
        self.buf.push(item);
        if self.buf.len() >= CHUNK_ITEMS || self.kib >= CHUNK_KIB {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), BinlogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // A single item larger than the whole budget takes all of it (never more: that would
        // wait forever).
        let want = self.kib.min(self.budget_kib);
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(want)
            .await
            .map_err(|_| BinlogError::Closed)?;
        let items = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_ITEMS));
        self.kib = 0;
        self.tx
            .send(Chunk {
                items,
                _budget: permit,
            })
            .await
            .map_err(|_| BinlogError::Closed)
    }
}

/// Reads the binlog until the channel closes, an error occurs, or (non-blocking) the end.
/// Items go out in chunks; a chunk is sent as soon as the stream has nothing more ready, so
/// chunking never holds an event back while the reader waits.
pub async fn run_reader(cfg: ReaderConfig, tx: mpsc::Sender<Chunk>) -> Result<(), BinlogError> {
    let mut out = Chunker::new(tx, READ_AHEAD_BYTES);
    let res = read_events(&cfg, &mut out).await;
    // Whatever was read before an error or the end still goes to the capture loop (it only
    // acts on whole groups).
    let flushed = out.flush().await;
    res.and(flushed)
}

async fn read_events(cfg: &ReaderConfig, out: &mut Chunker) -> Result<(), BinlogError> {
    let mut stream = open_stream(cfg).await?;
    let mut tables: HashMap<u64, Option<Arc<TableDesc>>> = HashMap::new();
    let mut file = String::new();
    let mut in_group = false;
    let mut standalone = false;
    let read_timeout = cfg.heartbeat * 3 + Duration::from_secs(1);
    loop {
        let next = match stream.next().now_or_never() {
            Some(next) => Ok(next),
            None => {
                out.flush().await?;
                tokio::time::timeout(read_timeout, stream.next()).await
            }
        };
        let ev = match next {
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
                out.push(BinlogItem::Begin { gtid, standalone }).await?;
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
                    out.push(BinlogItem::Rows(batch)).await?;
                }
            }
            16 => {
                in_group = false;
                out.push(BinlogItem::Commit {
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
                        out.push(BinlogItem::Commit {
                            ts: header.timestamp(),
                            file: file.clone(),
                            pos,
                        })
                        .await?;
                    }
                    _ => {
                        tables.clear();
                        out.push(BinlogItem::Query { schema, query }).await?;
                        if standalone || !in_group {
                            in_group = false;
                            out.push(BinlogItem::Commit {
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
                out.push(BinlogItem::Heartbeat {
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

    fn big_rows(bytes: usize) -> BinlogItem {
        use crate::source::decode::CellKind;
        use crate::source::rows::{RowChange, RowImage, RowOp, RowsBatch, TableDesc};
        let t = Arc::new(TableDesc::from_columns(
            "db",
            "tabX",
            vec![("name".into(), CellKind::Text { latin1: false })],
        ));
        let row = RowImage::from_values(&t, &[serde_json::Value::String("x".repeat(bytes))]);
        BinlogItem::Rows(RowsBatch {
            table: t,
            op: RowOp::Insert,
            rows: vec![RowChange {
                before: None,
                after: Some(row),
            }],
        })
    }

    #[tokio::test]
    async fn read_ahead_is_bounded_and_an_oversized_item_still_passes() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut c = Chunker::new(tx, 8 << 10);
        // 20 KiB item against an 8 KiB budget: pushed as a chunk that takes the whole budget.
        c.push(big_rows(20 << 10)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), c.flush())
            .await
            .expect("an item larger than the budget must not wait forever")
            .unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(first.items.len(), 1);
        // The budget is used up until the first chunk is dropped.
        c.push(BinlogItem::Heartbeat {
            file: "f".into(),
            pos: 4,
        })
        .await
        .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), c.flush())
                .await
                .is_err(),
            "flush must wait while the budget is taken"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), c.flush())
            .await
            .expect("budget returned")
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().items.len(), 1);
        assert!(cost_kib(&big_rows(20 << 10)) >= 20);
        assert_eq!(
            cost_kib(&BinlogItem::Heartbeat {
                file: String::new(),
                pos: 0
            }),
            1
        );
    }

    #[test]
    fn compressed_query_rejects_short_input() {
        assert!(compressed_query(&[0; 5]).is_none());
    }
}

//! Row events: a decode plan per TABLE_MAP, and our own framing of WRITE/UPDATE/DELETE rows
//! events, plain (types 23–25, 30–32) and MariaDB-compressed (166–171).
//!
//! Why our own framing: `RowsEvent::rows()` re-parses the optional metadata for every row
//! (4–6× slower), and MariaDB's compressed events are unknown to mysql_common. The plan is built
//! once per TABLE_MAP (column names from `binlog_row_metadata=FULL`, types, metadata,
//! signedness, charsets, ENUM/SET labels), and each cell goes through
//! `BinlogValue::deserialize` and [`cell_of`] straight into the row's JSON text
//! ([`RowWriter`]). Partial row images are refused: with
//! anything but `binlog_row_image=FULL` a document image would silently lose columns.

use std::io::Read;
use std::sync::Arc;

use super::decode::{Cell, cell_of};
pub use super::row_image::{RowImage, RowWriter};
pub use super::table::{ColumnDesc, RowsError, TableDesc};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use mysql_common::proto::MyDeserialize;

/// Row operation of a rows event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOp {
    Insert,
    Update,
    Delete,
}

/// One row change.
#[derive(Debug, Clone)]
pub struct RowChange {
    pub before: Option<RowImage>,
    pub after: Option<RowImage>,
}

/// The rows of one rows event.
#[derive(Debug)]
pub struct RowsBatch {
    pub table: Arc<TableDesc>,
    pub op: RowOp,
    pub rows: Vec<RowChange>,
}

/// Classifies a raw event type: (operation, is v2 layout, is compressed).
pub fn rows_event_kind(event_type: u8) -> Option<(RowOp, bool, bool)> {
    // Three consecutive codes (insert, update, delete) per layout: v1, v2, and MariaDB's
    // compressed v1 and v2.
    let (v2, compressed, first) = match event_type {
        23..=25 => (false, false, 23),
        30..=32 => (true, false, 30),
        166..=168 => (false, true, 166),
        169..=171 => (true, true, 169),
        _ => return None,
    };
    let op = [RowOp::Insert, RowOp::Update, RowOp::Delete][usize::from(event_type - first)];
    Some((op, v2, compressed))
}

/// Reads the table id of a rows event body (6 bytes little-endian).
pub fn rows_table_id(data: &[u8]) -> Option<u64> {
    let b = data.get(0..6)?;
    Some(b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
}

fn lenenc(buf: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = buf.split_first()?;
    let (v, used) = match first {
        0..=250 => (first as u64, 0),
        252 => (
            u16::from_le_bytes(rest.get(0..2)?.try_into().ok()?) as u64,
            2,
        ),
        253 => {
            let b = rest.get(0..3)?;
            (b[0] as u64 | (b[1] as u64) << 8 | (b[2] as u64) << 16, 3)
        }
        254 => (u64::from_le_bytes(rest.get(0..8)?.try_into().ok()?), 8),
        _ => return None,
    };
    *buf = &rest[used..];
    Some(v)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Some(a)
}

/// Decompresses MariaDB's compressed rows/query payload: `0x80|lenlen`, `lenlen` bytes of
/// big-endian uncompressed length, then a zlib stream.
pub fn decompress_mariadb(data: &[u8]) -> Result<Vec<u8>, String> {
    let (&hdr, rest) = data.split_first().ok_or("empty compressed payload")?;
    let lenlen = (hdr & 0x07) as usize;
    if hdr & 0x80 == 0 || lenlen == 0 || lenlen > 4 || rest.len() < lenlen {
        return Err(format!("bad compression header 0x{hdr:02x}"));
    }
    let raw_len = rest[..lenlen]
        .iter()
        .fold(0usize, |a, &b| (a << 8) | b as usize);
    let mut out = Vec::with_capacity(raw_len.min(64 << 20));
    flate2::read::ZlibDecoder::new(&rest[lenlen..])
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() != raw_len {
        return Err(format!(
            "decompressed {} bytes, header says {raw_len}",
            out.len()
        ));
    }
    Ok(out)
}

fn read_image<'a>(
    table: &TableDesc,
    present: &[bool],
    npresent: usize,
    buf: &mut &'a [u8],
) -> Result<RowImage, RowsError> {
    let malformed = |reason: &str| RowsError::Malformed {
        table: table.table.clone(),
        reason: reason.into(),
    };
    let nulls = take(buf, npresent.div_ceil(8)).ok_or_else(|| malformed("null bitmap"))?;
    let mut row = RowWriter::new(table);
    for (i, col) in table.columns.iter().enumerate() {
        if !present.get(i).copied().unwrap_or(false) {
            return Err(RowsError::PartialImage {
                table: table.table.clone(),
            });
        }
        // Every column is present (checked above), so the null bit index is the column index.
        let is_null = nulls[i / 8] & (1 << (i % 8)) != 0;
        if is_null {
            row.push(&Cell::Null);
            continue;
        }
        let whole: &'a [u8] = buf;
        let mut pb = ParseBuf(whole);
        let v = BinlogValue::deserialize(
            (col.col_type, col.meta.as_slice(), col.unsigned, false),
            &mut pb,
        )
        .map_err(|e| malformed(&format!("column {}: {e}", col.name)))?;
        let consumed = whole.len() - pb.0.len();
        *buf = &whole[consumed..];
        let mut v = match v {
            BinlogValue::Value(v) => v,
            _ => return Err(malformed("unexpected JSON binary value in MariaDB binlog")),
        };
        // mysql_common does not sign-extend signed MEDIUMINT.
        if col.col_type == ColumnType::MYSQL_TYPE_INT24
            && !col.unsigned
            && let mysql_common::Value::Int(x) = v
            && x >= 0x80_0000
        {
            v = mysql_common::Value::Int(x - 0x100_0000);
        }
        let cell = cell_of(&col.kind, v, true).map_err(|source| RowsError::Cell {
            table: table.table.clone(),
            column: col.name.clone(),
            source,
        })?;
        row.push(&cell);
    }
    Ok(row.finish())
}

fn bitmap(bytes: &[u8], n: usize) -> Vec<bool> {
    (0..n).map(|i| bytes[i / 8] & (1 << (i % 8)) != 0).collect()
}

/// Decodes the body (`Event::data()`) of a rows event of `event_type`.
pub fn decode_rows(
    event_type: u8,
    data: &[u8],
    table: &Arc<TableDesc>,
) -> Result<RowsBatch, RowsError> {
    let malformed = |reason: &str| RowsError::Malformed {
        table: table.table.clone(),
        reason: reason.into(),
    };
    let (op, v2, compressed) =
        rows_event_kind(event_type).ok_or_else(|| malformed("not a rows event"))?;
    let mut buf = data;
    take(&mut buf, 8).ok_or_else(|| malformed("post-header"))?;
    if v2 {
        let extra = take(&mut buf, 2).ok_or_else(|| malformed("extra data length"))?;
        let extra_len = u16::from_le_bytes([extra[0], extra[1]]) as usize;
        take(&mut buf, extra_len.saturating_sub(2)).ok_or_else(|| malformed("extra data"))?;
    }
    let ncols = lenenc(&mut buf).ok_or_else(|| malformed("column count"))? as usize;
    if ncols != table.columns.len() {
        return Err(malformed(&format!(
            "{ncols} columns, table map has {}",
            table.columns.len()
        )));
    }
    let nbytes = ncols.div_ceil(8);
    let before_cols = bitmap(
        take(&mut buf, nbytes).ok_or_else(|| malformed("column bitmap"))?,
        ncols,
    );
    let after_cols = if op == RowOp::Update {
        bitmap(
            take(&mut buf, nbytes).ok_or_else(|| malformed("after bitmap"))?,
            ncols,
        )
    } else {
        before_cols.clone()
    };
    let owned;
    let mut rows_data: &[u8] = if compressed {
        owned = decompress_mariadb(buf).map_err(|reason| RowsError::Decompress {
            table: table.table.clone(),
            reason,
        })?;
        &owned
    } else {
        buf
    };
    let nb = before_cols.iter().filter(|b| **b).count();
    let na = after_cols.iter().filter(|b| **b).count();
    let mut rows = Vec::new();
    while !rows_data.is_empty() {
        let change = match op {
            RowOp::Insert => RowChange {
                before: None,
                after: Some(read_image(table, &after_cols, na, &mut rows_data)?),
            },
            RowOp::Delete => RowChange {
                before: Some(read_image(table, &before_cols, nb, &mut rows_data)?),
                after: None,
            },
            RowOp::Update => {
                let before = read_image(table, &before_cols, nb, &mut rows_data)?;
                let after = read_image(table, &after_cols, na, &mut rows_data)?;
                RowChange {
                    before: Some(before),
                    after: Some(after),
                }
            }
        };
        rows.push(change);
    }
    Ok(RowsBatch {
        table: Arc::clone(table),
        op,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lenenc_forms() {
        let mut b: &[u8] = &[5, 9];
        assert_eq!(lenenc(&mut b), Some(5));
        assert_eq!(b, &[9]);
        let mut b: &[u8] = &[252, 0x10, 0x27];
        assert_eq!(lenenc(&mut b), Some(10_000));
        let mut b: &[u8] = &[252, 1];
        assert_eq!(lenenc(&mut b), None);
    }

    #[test]
    fn decompress_round_trip_and_errors() {
        let raw = b"hello hello hello hello".repeat(20);
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&raw).unwrap();
        let z = enc.finish().unwrap();
        let mut payload = vec![0x82, (raw.len() >> 8) as u8, raw.len() as u8];
        payload.extend_from_slice(&z);
        assert_eq!(decompress_mariadb(&payload).unwrap(), raw);
        assert!(decompress_mariadb(&[]).is_err());
        assert!(decompress_mariadb(&[0x01, 0, 0]).is_err());
        let mut wrong_len = payload.clone();
        wrong_len[2] = wrong_len[2].wrapping_add(1);
        assert!(decompress_mariadb(&wrong_len).is_err());
        assert!(decompress_mariadb(&[0x82, 0, 5, 1, 2, 3]).is_err());
    }

    #[test]
    fn event_kinds() {
        assert_eq!(rows_event_kind(24), Some((RowOp::Update, false, false)));
        assert_eq!(rows_event_kind(170), Some((RowOp::Update, true, true)));
        assert_eq!(rows_event_kind(2), None);
        assert_eq!(rows_event_kind(23), Some((RowOp::Insert, false, false)));
        assert_eq!(rows_event_kind(32), Some((RowOp::Delete, true, false)));
        assert_eq!(rows_event_kind(166), Some((RowOp::Insert, false, true)));
        assert_eq!(rows_event_kind(171), Some((RowOp::Delete, true, true)));
        for t in [22, 26, 29, 33, 165, 172] {
            assert_eq!(rows_event_kind(t), None, "{t}");
        }
        assert_eq!(rows_table_id(&[1, 1, 0, 0, 0, 0, 9]), Some(257));
    }
}

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

use super::decode::{Cell, CellKind, DecodeError, cell_of};
pub use super::row_image::{RowImage, RowWriter};
use mysql_common::binlog::events::{OptionalMetaExtractor, OptionalMetadataField, TableMapEvent};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use mysql_common::proto::MyDeserialize;

/// One column of a table as the binlog describes it.
#[derive(Debug, Clone)]
pub struct ColumnDesc {
    pub name: String,
    /// `"<name>":`, the column's key in a row's JSON object.
    json_key: String,
    pub kind: CellKind,
    col_type: ColumnType,
    meta: Vec<u8>,
    unsigned: bool,
}

/// A table as described by one TABLE_MAP event, with the positions of Frappe's key columns.
#[derive(Debug)]
pub struct TableDesc {
    pub schema: String,
    pub table: String,
    pub columns: Vec<ColumnDesc>,
    pub name_col: Option<usize>,
    pub parent_col: Option<usize>,
    pub parenttype_col: Option<usize>,
    pub parentfield_col: Option<usize>,
    pub idx_col: Option<usize>,
    /// Bytes to reserve for one row's JSON text.
    row_hint: usize,
}

/// Errors decoding row events.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(
        "table map for {table} has no column names: set binlog_row_metadata=FULL on the primary"
    )]
    NoColumnNames { table: String },
    #[error("table map for {table} is malformed: {reason}")]
    BadTableMap { table: String, reason: String },
    #[error("rows event for {table} is truncated or malformed: {reason}")]
    Malformed { table: String, reason: String },
    #[error(
        "rows event for {table} carries a partial row image: set binlog_row_image=FULL (also \
         for sessions) on the primary"
    )]
    PartialImage { table: String },
    #[error("cannot decode column {column} of {table}")]
    Cell {
        table: String,
        column: String,
        #[source]
        source: DecodeError,
    },
    #[error("cannot decompress a compressed rows event for {table}: {reason}")]
    Decompress { table: String, reason: String },
}

impl TableDesc {
    /// Builds the decode plan of a TABLE_MAP event.
    pub fn from_tme(tme: &TableMapEvent<'_>) -> Result<Self, RowsError> {
        let table = tme.table_name().into_owned();
        let bad = |reason: String| RowsError::BadTableMap {
            table: table.clone(),
            reason,
        };
        let extractor =
            OptionalMetaExtractor::new(tme.iter_optional_meta()).map_err(|e| bad(e.to_string()))?;
        let mut enum_values: Vec<Vec<String>> = Vec::new();
        let mut set_values: Vec<Vec<String>> = Vec::new();
        for field in tme.iter_optional_meta() {
            match field.map_err(|e| bad(e.to_string()))? {
                OptionalMetadataField::EnumStrValue(v) => {
                    for vals in v.iter_values() {
                        let vals = vals.map_err(|e| bad(e.to_string()))?;
                        enum_values.push(
                            vals.values()
                                .iter()
                                .map(|x| x.value().into_owned())
                                .collect(),
                        );
                    }
                }
                OptionalMetadataField::SetStrValue(v) => {
                    for vals in v.iter_values() {
                        let vals = vals.map_err(|e| bad(e.to_string()))?;
                        set_values.push(
                            vals.values()
                                .iter()
                                .map(|x| x.value().into_owned())
                                .collect(),
                        );
                    }
                }
                _ => {}
            }
        }
        let names: Vec<String> = extractor
            .iter_column_name()
            .map(|n| n.map(|n| n.name().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let ncols = tme.columns_count() as usize;
        if names.len() != ncols {
            return Err(RowsError::NoColumnNames { table });
        }
        let mut signed = extractor.iter_signedness();
        let mut charsets = extractor.iter_charset();
        let (mut enum_i, mut set_i) = (0usize, 0usize);
        let mut columns = Vec::with_capacity(ncols);
        for (i, name) in names.into_iter().enumerate() {
            let col_type = tme
                .get_column_type(i)
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad(format!("no type for column {i}")))?;
            let meta = tme.get_column_metadata(i).unwrap_or(&[]).to_vec();
            if meta.len() < meta_len_needed(col_type) {
                return Err(bad(format!(
                    "column {i} has {} metadata bytes, type {col_type:?} needs {}",
                    meta.len(),
                    meta_len_needed(col_type)
                )));
            }
            let unsigned = col_type.is_numeric_type() && signed.next().unwrap_or(false);
            let charset = if col_type.is_character_type() {
                charsets
                    .next()
                    .transpose()
                    .map_err(|e| bad(e.to_string()))?
                    .unwrap_or(0)
            } else {
                0
            };
            let mut kind = CellKind::from_binlog(col_type, &meta, unsigned, charset);
            match &mut kind {
                CellKind::Enum(v) => {
                    *v = enum_values.get(enum_i).cloned();
                    enum_i += 1;
                }
                CellKind::Set(v) => {
                    *v = set_values.get(set_i).cloned();
                    set_i += 1;
                }
                _ => {}
            }
            columns.push(ColumnDesc {
                json_key: json_key(&name),
                name,
                kind,
                col_type,
                meta,
                unsigned,
            });
        }
        let find = |n: &str| columns.iter().position(|c| c.name == n);
        Ok(TableDesc {
            schema: tme.database_name().into_owned(),
            name_col: find("name"),
            parent_col: find("parent"),
            parenttype_col: find("parenttype"),
            parentfield_col: find("parentfield"),
            idx_col: find("idx"),
            row_hint: row_hint(&columns),
            columns,
            table,
        })
    }

    /// A table described by a result set (snapshot reads); binlog-only fields stay empty.
    pub fn from_columns(schema: &str, table: &str, cols: Vec<(String, CellKind)>) -> Self {
        let columns: Vec<ColumnDesc> = cols
            .into_iter()
            .map(|(name, kind)| ColumnDesc {
                json_key: json_key(&name),
                name,
                kind,
                col_type: ColumnType::MYSQL_TYPE_NULL,
                meta: Vec::new(),
                unsigned: false,
            })
            .collect();
        let find = |n: &str| columns.iter().position(|c| c.name == n);
        TableDesc {
            schema: schema.to_string(),
            table: table.to_string(),
            name_col: find("name"),
            parent_col: find("parent"),
            parenttype_col: find("parenttype"),
            parentfield_col: find("parentfield"),
            idx_col: find("idx"),
            row_hint: row_hint(&columns),
            columns,
        }
    }

    /// Index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Bytes to reserve for one row's JSON text.
    pub(super) fn row_bytes_hint(&self) -> usize {
        self.row_hint
    }
}

impl ColumnDesc {
    /// `"<name>":`, the column's key in a row's JSON object.
    pub(super) fn json_key(&self) -> &str {
        &self.json_key
    }
}

fn row_hint(columns: &[ColumnDesc]) -> usize {
    2 + columns.iter().map(|c| c.json_key.len() + 16).sum::<usize>()
}

fn json_key(name: &str) -> String {
    let mut k = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
    k.push(':');
    k
}

/// Metadata bytes `BinlogValue::deserialize` indexes without checking, per column type.
fn meta_len_needed(t: ColumnType) -> usize {
    use ColumnType::*;
    match t {
        MYSQL_TYPE_STRING
        | MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_BIT
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET => 2,
        MYSQL_TYPE_BLOB
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_GEOMETRY
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_TYPED_ARRAY => 1,
        _ => 0,
    }
}

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
    Some(match event_type {
        23 => (RowOp::Insert, false, false),
        24 => (RowOp::Update, false, false),
        25 => (RowOp::Delete, false, false),
        30 => (RowOp::Insert, true, false),
        31 => (RowOp::Update, true, false),
        32 => (RowOp::Delete, true, false),
        166 => (RowOp::Insert, false, true),
        167 => (RowOp::Update, false, true),
        168 => (RowOp::Delete, false, true),
        169 => (RowOp::Insert, true, true),
        170 => (RowOp::Update, true, true),
        171 => (RowOp::Delete, true, true),
        _ => return None,
    })
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
        assert_eq!(rows_table_id(&[1, 1, 0, 0, 0, 0, 9]), Some(257));
    }
}

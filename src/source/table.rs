//! A table as one TABLE_MAP event describes it: column names (from `binlog_row_metadata=FULL`),
//! types, metadata, signedness and charsets, the positions of Frappe's key columns, and the
//! errors of reading table maps and rows. Built once per TABLE_MAP; shared by the row decoder
//! (`rows.rs`), the row writer (`row_image.rs`) and the snapshot.

use mysql_common::binlog::events::{OptionalMetaExtractor, OptionalMetadataField, TableMapEvent};
use mysql_common::constants::ColumnType;

use super::decode::{CellKind, DecodeError};

/// One column of a table as the binlog describes it.
#[derive(Debug, Clone)]
pub struct ColumnDesc {
    pub name: String,
    /// `"<name>":`, the column's key in a row's JSON object.
    json_key: String,
    pub kind: CellKind,
    pub(super) col_type: ColumnType,
    pub(super) meta: Vec<u8>,
    pub(super) unsigned: bool,
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

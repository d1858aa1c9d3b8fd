//! One value decoder for both the binlog and the snapshot.
//!
//! Every cell becomes a JSON value that round-trips exactly through the replica:
//! integers as JSON numbers (i64/u64, no float), DECIMAL as a string with the column's scale
//! (`"12.500000000"`), DATE `"YYYY-MM-DD"`, DATETIME `"YYYY-MM-DD HH:MM:SS[.ffffff]"` with as
//! many fraction digits as the column declares, TIME `"[-]HHH:MM:SS[.ffffff]"`, TIMESTAMP as a
//! UTC datetime string, text as a JSON string, and bytes that are not text (binary columns,
//! or invalid UTF-8) as `{"$base64": "..."}`. NULL is JSON null.

use base64::Engine;
use mysql_common::Value as MyValue;
use mysql_common::constants::{ColumnFlags, ColumnType};
use serde_json::{Number, Value};

/// MySQL's binary collation id: a character column with this charset holds bytes, not text.
pub const BINARY_CHARSET: u16 = 63;
const LATIN1_CHARSETS: [u16; 8] = [5, 8, 15, 31, 47, 48, 49, 94];

/// How one column's values are turned into JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CellKind {
    Int,
    UInt,
    Float,
    Decimal,
    Date,
    DateTime { fsp: u8 },
    Timestamp { fsp: u8 },
    Time { fsp: u8 },
    Year,
    Text { latin1: bool },
    Binary,
    Enum(Option<Vec<String>>),
    Set(Option<Vec<String>>),
    Bit,
}

impl CellKind {
    /// Kind of a column from binlog TABLE_MAP data.
    pub fn from_binlog(col_type: ColumnType, meta: &[u8], unsigned: bool, charset: u16) -> Self {
        use ColumnType::*;
        let fsp = meta.first().copied().unwrap_or(0);
        match col_type {
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
            | MYSQL_TYPE_LONGLONG => {
                if unsigned {
                    CellKind::UInt
                } else {
                    CellKind::Int
                }
            }
            MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => CellKind::Float,
            MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => CellKind::Decimal,
            MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => CellKind::Date,
            MYSQL_TYPE_DATETIME => CellKind::DateTime { fsp: 0 },
            MYSQL_TYPE_DATETIME2 => CellKind::DateTime { fsp },
            MYSQL_TYPE_TIMESTAMP => CellKind::Timestamp { fsp: 0 },
            MYSQL_TYPE_TIMESTAMP2 => CellKind::Timestamp { fsp },
            MYSQL_TYPE_TIME => CellKind::Time { fsp: 0 },
            MYSQL_TYPE_TIME2 => CellKind::Time { fsp },
            MYSQL_TYPE_YEAR => CellKind::Year,
            MYSQL_TYPE_BIT => CellKind::Bit,
            MYSQL_TYPE_ENUM => CellKind::Enum(None),
            MYSQL_TYPE_SET => CellKind::Set(None),
            MYSQL_TYPE_GEOMETRY => CellKind::Binary,
            _ => text_or_binary(charset),
        }
    }

    /// Kind of a result-set column (snapshot and replica reads).
    pub fn from_result_column(col: &mysql_common::packets::Column) -> Self {
        use ColumnType::*;
        let flags = col.flags();
        let fsp = col.decimals();
        let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
        match col.column_type() {
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
            | MYSQL_TYPE_LONGLONG => {
                if unsigned {
                    CellKind::UInt
                } else {
                    CellKind::Int
                }
            }
            MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => CellKind::Float,
            MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => CellKind::Decimal,
            MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => CellKind::Date,
            MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => CellKind::DateTime { fsp },
            MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => CellKind::Timestamp { fsp },
            MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => CellKind::Time { fsp },
            MYSQL_TYPE_YEAR => CellKind::Year,
            MYSQL_TYPE_BIT => CellKind::Bit,
            _ if flags.contains(ColumnFlags::ENUM_FLAG) => CellKind::Enum(Some(Vec::new())),
            _ if flags.contains(ColumnFlags::SET_FLAG) => CellKind::Set(Some(Vec::new())),
            MYSQL_TYPE_GEOMETRY => CellKind::Binary,
            _ => text_or_binary(col.character_set()),
        }
    }
}

fn text_or_binary(charset: u16) -> CellKind {
    if charset == BINARY_CHARSET {
        CellKind::Binary
    } else {
        CellKind::Text {
            latin1: LATIN1_CHARSETS.contains(&charset),
        }
    }
}

/// Errors for values that do not fit their column kind.
#[derive(Debug, thiserror::Error)]
#[error("value of type {found} does not fit a {kind} column")]
pub struct DecodeError {
    pub kind: &'static str,
    pub found: &'static str,
}

fn kind_name(k: &CellKind) -> &'static str {
    match k {
        CellKind::Int | CellKind::UInt => "integer",
        CellKind::Float => "float",
        CellKind::Decimal => "decimal",
        CellKind::Date => "date",
        CellKind::DateTime { .. } => "datetime",
        CellKind::Timestamp { .. } => "timestamp",
        CellKind::Time { .. } => "time",
        CellKind::Year => "year",
        CellKind::Text { .. } => "text",
        CellKind::Binary => "binary",
        CellKind::Enum(_) => "enum",
        CellKind::Set(_) => "set",
        CellKind::Bit => "bit",
    }
}

fn value_name(v: &MyValue) -> &'static str {
    match v {
        MyValue::NULL => "null",
        MyValue::Bytes(_) => "bytes",
        MyValue::Int(_) => "int",
        MyValue::UInt(_) => "uint",
        MyValue::Float(_) => "float",
        MyValue::Double(_) => "double",
        MyValue::Date(..) => "date",
        MyValue::Time(..) => "time",
    }
}

/// A value encoded as base64 in the envelope: `{"$base64": "..."}`.
pub fn binary_json(bytes: &[u8]) -> Value {
    let mut m = serde_json::Map::with_capacity(1);
    m.insert(
        "$base64".to_string(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    );
    Value::Object(m)
}

/// Decodes the bytes of a `{"$base64": ...}` value.
pub fn binary_from_json(v: &Value) -> Option<Vec<u8>> {
    let s = v.as_object()?.get("$base64")?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn frac(us: u32, fsp: u8) -> String {
    let mut out = String::new();
    push_frac(&mut out, us, fsp);
    out
}

/// Appends `v` in decimal, zero-padded to `width` digits (more digits when `v` needs them).
fn push_padded(out: &mut String, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = v;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(buf.len() - width.min(buf.len()));
    for &b in &buf[start..] {
        out.push(b as char);
    }
}

/// Appends `.` and `fsp` fraction digits of `us` microseconds (nothing when `fsp` is 0).
fn push_frac(out: &mut String, us: u32, fsp: u8) {
    if fsp == 0 {
        return;
    }
    let fsp = fsp.min(6) as u32;
    out.push('.');
    push_padded(out, (us / 10u32.pow(6 - fsp)) as u64, fsp as usize);
}

/// Formats a datetime with `fsp` fraction digits.
pub fn format_datetime(
    (y, mo, d): (u16, u8, u8),
    (h, mi, s, us): (u8, u8, u8, u32),
    fsp: u8,
) -> String {
    let mut out = String::with_capacity(26);
    push_padded(&mut out, y as u64, 4);
    out.push('-');
    push_padded(&mut out, mo as u64, 2);
    out.push('-');
    push_padded(&mut out, d as u64, 2);
    out.push(' ');
    push_padded(&mut out, h as u64, 2);
    out.push(':');
    push_padded(&mut out, mi as u64, 2);
    out.push(':');
    push_padded(&mut out, s as u64, 2);
    push_frac(&mut out, us, fsp);
    out
}

/// Converts seconds since the Unix epoch to a civil UTC date and time.
fn civil_from_unix(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

fn timestamp_from_epoch_text(text: &str, fsp: u8) -> Option<String> {
    let (secs, us) = match text.split_once('.') {
        Some((s, u)) => (s.parse::<i64>().ok()?, u.parse::<u32>().ok()?),
        None => (text.parse::<i64>().ok()?, 0),
    };
    if secs == 0 && us == 0 {
        return Some(format!("0000-00-00 00:00:00{}", frac(0, fsp)));
    }
    let (y, mo, d, h, mi, s) = civil_from_unix(secs);
    Some(format!(
        "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{}",
        frac(us, fsp)
    ))
}

fn names_for_bits(bits: u64, names: &[String]) -> String {
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if i < 64 && bits & (1 << i) != 0 {
            out.push(n.as_str());
        }
    }
    out.join(",")
}

fn be_uint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

fn le_uint(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

/// One cell in its canonical form, between the decoded server value and its JSON text.
/// [`cell_of`] holds every conversion rule; [`Cell::into_json`] and [`Cell::write_json`] only
/// change the container, so a value and its text never disagree.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    UInt(u64),
    /// Always finite (non-finite floats are [`Cell::Null`], as JSON has no NaN).
    Float(f64),
    Text(String),
    /// Bytes that are not text: `{"$base64": "..."}`.
    Binary(Vec<u8>),
}

impl Cell {
    /// The cell as a JSON value.
    pub fn into_json(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Int(i) => Value::from(i),
            Cell::UInt(u) => Value::from(u),
            Cell::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Cell::Text(s) => Value::String(s),
            Cell::Binary(b) => binary_json(&b),
        }
    }

    /// Appends the cell's JSON text (the same text `serde_json` writes for [`Cell::into_json`]).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing JSON into a Vec cannot fail.
        let _ = match self {
            Cell::Null => {
                out.extend_from_slice(b"null");
                Ok(())
            }
            Cell::Int(i) => serde_json::to_writer(&mut *out, i),
            Cell::UInt(u) => serde_json::to_writer(&mut *out, u),
            Cell::Float(f) => serde_json::to_writer(&mut *out, f),
            Cell::Text(s) => serde_json::to_writer(&mut *out, s.as_str()),
            // Rare (binary columns, invalid UTF-8): one place spells the `$base64` form.
            Cell::Binary(b) => serde_json::to_writer(&mut *out, &binary_json(b)),
        };
    }
}

fn text_cell(bytes: Vec<u8>, latin1: bool) -> Cell {
    if latin1 && !bytes.is_ascii() {
        return Cell::Text(bytes.iter().map(|&b| b as char).collect());
    }
    match String::from_utf8(bytes) {
        Ok(s) => Cell::Text(s),
        Err(e) => Cell::Binary(e.into_bytes()),
    }
}

/// Converts one decoded cell to its JSON form. `from_binlog` selects binlog-specific raw forms
/// (TIMESTAMP as epoch text, ENUM as index, SET as bitmask).
pub fn cell_json(kind: &CellKind, value: MyValue, from_binlog: bool) -> Result<Value, DecodeError> {
    cell_of(kind, value, from_binlog).map(Cell::into_json)
}

/// Converts one decoded cell to its canonical [`Cell`] (see [`cell_json`]).
pub fn cell_of(kind: &CellKind, value: MyValue, from_binlog: bool) -> Result<Cell, DecodeError> {
    let mismatch = |v: &MyValue| DecodeError {
        kind: kind_name(kind),
        found: value_name(v),
    };
    if matches!(value, MyValue::NULL) {
        return Ok(Cell::Null);
    }
    let out = match (kind, value) {
        (CellKind::Int | CellKind::UInt | CellKind::Year, MyValue::Int(i)) => Cell::Int(i),
        (CellKind::Int | CellKind::UInt | CellKind::Year, MyValue::UInt(u)) => Cell::UInt(u),
        (CellKind::Year, MyValue::Bytes(b)) => {
            let text = String::from_utf8_lossy(&b);
            text.parse::<i64>()
                .map(Cell::Int)
                .map_err(|_| DecodeError {
                    kind: "year",
                    found: "bytes",
                })?
        }
        (CellKind::Float, MyValue::Float(f)) => float_cell(f as f64),
        (CellKind::Float, MyValue::Double(f)) => float_cell(f),
        (CellKind::Decimal, MyValue::Bytes(b)) => text_cell(b, false),
        (CellKind::Date, MyValue::Date(y, mo, d, ..)) => {
            let mut out = String::with_capacity(10);
            push_padded(&mut out, y as u64, 4);
            out.push('-');
            push_padded(&mut out, mo as u64, 2);
            out.push('-');
            push_padded(&mut out, d as u64, 2);
            Cell::Text(out)
        }
        (
            CellKind::DateTime { fsp } | CellKind::Timestamp { fsp },
            MyValue::Date(y, mo, d, h, mi, s, us),
        ) => Cell::Text(format_datetime((y, mo, d), (h, mi, s, us), *fsp)),
        (CellKind::Timestamp { fsp }, MyValue::Bytes(b)) if from_binlog => {
            let text = String::from_utf8_lossy(&b);
            Cell::Text(timestamp_from_epoch_text(&text, *fsp).ok_or(DecodeError {
                kind: "timestamp",
                found: "bytes",
            })?)
        }
        (CellKind::Timestamp { fsp }, MyValue::Int(secs)) if from_binlog => {
            Cell::Text(timestamp_from_epoch_text(&secs.to_string(), *fsp).unwrap_or_default())
        }
        (CellKind::Time { fsp }, MyValue::Time(neg, days, h, mi, s, us)) => {
            let hours = days as u64 * 24 + h as u64;
            let sign = if neg { "-" } else { "" };
            Cell::Text(format!("{sign}{hours:02}:{mi:02}:{s:02}{}", frac(us, *fsp)))
        }
        (CellKind::Text { latin1 }, MyValue::Bytes(b)) => text_cell(b, *latin1),
        (CellKind::Binary, MyValue::Bytes(b)) => Cell::Binary(b),
        (CellKind::Enum(names), MyValue::Int(i)) if from_binlog => match names {
            Some(n) if i >= 1 && (i as usize) <= n.len() => Cell::Text(n[i as usize - 1].clone()),
            Some(_) if i == 0 => Cell::Text(String::new()),
            _ => Cell::Int(i),
        },
        (CellKind::Enum(_), MyValue::Bytes(b)) => text_cell(b, false),
        (CellKind::Set(names), MyValue::Bytes(b)) if from_binlog => {
            let bits = le_uint(&b);
            match names {
                Some(n) => Cell::Text(names_for_bits(bits, n)),
                None => Cell::UInt(bits),
            }
        }
        (CellKind::Set(_), MyValue::Bytes(b)) => text_cell(b, false),
        (CellKind::Bit, MyValue::Bytes(b)) => Cell::UInt(be_uint(&b)),
        (CellKind::Bit, MyValue::Int(i)) => Cell::Int(i),
        (CellKind::Bit, MyValue::UInt(u)) => Cell::UInt(u),
        (_, v) => return Err(mismatch(&v)),
    };
    Ok(out)
}

fn float_cell(f: f64) -> Cell {
    if f.is_finite() {
        Cell::Float(f)
    } else {
        Cell::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_fraction_digits() {
        assert_eq!(
            format_datetime((2024, 1, 2), (3, 4, 5, 123_456), 6),
            "2024-01-02 03:04:05.123456"
        );
        assert_eq!(
            format_datetime((2024, 1, 2), (3, 4, 5, 1), 6),
            "2024-01-02 03:04:05.000001"
        );
        assert_eq!(
            format_datetime((2024, 1, 2), (3, 4, 5, 120_000), 2),
            "2024-01-02 03:04:05.12"
        );
        assert_eq!(
            format_datetime((2024, 1, 2), (3, 4, 5, 0), 0),
            "2024-01-02 03:04:05"
        );
        assert_eq!(
            format_datetime((0, 0, 0), (0, 0, 0, 0), 3),
            "0000-00-00 00:00:00.000"
        );
        assert_eq!(
            format_datetime((9999, 12, 31), (23, 59, 59, 999_999), 6),
            "9999-12-31 23:59:59.999999"
        );
        let mut s = String::new();
        push_padded(&mut s, 123_456, 2);
        push_padded(&mut s, 7, 3);
        push_padded(&mut s, u64::MAX, 25);
        assert_eq!(s, format!("123456007{}", u64::MAX));
    }

    #[test]
    fn unix_to_civil() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_from_unix(2_147_483_647), (2038, 1, 19, 3, 14, 7));
        assert_eq!(
            timestamp_from_epoch_text("1700000000.000042", 6).unwrap(),
            "2023-11-14 22:13:20.000042"
        );
    }

    #[test]
    fn negative_time_and_days() {
        let v = cell_json(
            &CellKind::Time { fsp: 6 },
            MyValue::Time(true, 34, 22, 59, 58, 999_999),
            true,
        )
        .unwrap();
        assert_eq!(v, Value::String("-838:59:58.999999".into()));
    }

    #[test]
    fn text_binary_and_invalid_utf8() {
        let t = cell_json(
            &CellKind::Text { latin1: false },
            MyValue::Bytes("é😀".into()),
            true,
        )
        .unwrap();
        assert_eq!(t, Value::String("é😀".into()));
        let b = cell_json(&CellKind::Binary, MyValue::Bytes(vec![0xde, 0xad]), true).unwrap();
        assert_eq!(binary_from_json(&b).unwrap(), vec![0xde, 0xad]);
        let bad = cell_json(
            &CellKind::Text { latin1: false },
            MyValue::Bytes(vec![0xff]),
            true,
        )
        .unwrap();
        assert_eq!(binary_from_json(&bad).unwrap(), vec![0xff]);
        let l1 = cell_json(
            &CellKind::Text { latin1: true },
            MyValue::Bytes(vec![b'c', 0xe9]),
            true,
        )
        .unwrap();
        assert_eq!(l1, Value::String("cé".into()));
    }

    #[test]
    fn enum_set_bit() {
        let names = Some(vec!["a".to_string(), "b".to_string(), "c".to_string()]);
        assert_eq!(
            cell_json(&CellKind::Enum(names.clone()), MyValue::Int(2), true).unwrap(),
            "b"
        );
        assert_eq!(
            cell_json(&CellKind::Set(names), MyValue::Bytes(vec![5]), true).unwrap(),
            "a,c"
        );
        assert_eq!(
            cell_json(&CellKind::Bit, MyValue::Bytes(vec![1, 0]), true).unwrap(),
            256
        );
    }

    #[test]
    fn mismatch_is_an_error_not_a_panic() {
        assert!(cell_json(&CellKind::Date, MyValue::Bytes(b"x".to_vec()), true).is_err());
        assert_eq!(
            cell_json(&CellKind::Date, MyValue::NULL, true).unwrap(),
            Value::Null
        );
    }
}

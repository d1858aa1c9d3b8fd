//! A decoded row image kept as the JSON object text it is published as, with the byte range of
//! every cell's value, so the decoder writes each row's JSON once and nothing re-serializes it.
//!
//! The JSON of a cell is a pure function of its column kind and value ([`Cell::write_json`]),
//! so two images of the same table hold equal values exactly where their cell texts are equal.

use std::borrow::Cow;

use serde_json::Value;

use super::decode::Cell;
use super::table::TableDesc;

/// One row image, aligned with [`TableDesc::columns`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowImage {
    /// `{"col":value,...}` in table column order.
    json: String,
    /// Byte range of each cell's value text in `json`.
    cells: Vec<(u32, u32)>,
}

impl RowImage {
    /// The row as a JSON object keyed by column name, in table order.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The row's JSON object text, taken.
    pub fn into_json(self) -> String {
        self.json
    }

    /// Heap bytes this image holds.
    pub fn heap_bytes(&self) -> usize {
        self.json.capacity() + self.cells.capacity() * std::mem::size_of::<(u32, u32)>()
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// True for a row without cells.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The JSON text of cell `i` (`null`, a number, a string literal or a `$base64` object).
    pub fn cell(&self, i: usize) -> Option<&str> {
        let &(a, b) = self.cells.get(i)?;
        self.json.get(a as usize..b as usize)
    }

    /// The text of a key column: strings unescaped, numbers (autoincrement names) as written;
    /// `None` for NULL, binary values and a missing column.
    pub fn text(&self, i: Option<usize>) -> Option<Cow<'_, str>> {
        let t = self.cell(i?)?;
        match t.as_bytes().first()? {
            b'"' => {
                let inner = t.get(1..t.len() - 1)?;
                if inner.contains('\\') {
                    serde_json::from_str::<String>(t).ok().map(Cow::Owned)
                } else {
                    Some(Cow::Borrowed(inner))
                }
            }
            b'-' | b'0'..=b'9' => Some(Cow::Borrowed(t)),
            _ => None,
        }
    }

    /// Cell `i` as an integer, when it is one that fits an `i64`.
    pub fn int(&self, i: Option<usize>) -> Option<i64> {
        self.cell(i?)?.parse().ok()
    }

    /// An image of `table` from JSON values (tests and fixtures).
    pub fn from_values(table: &TableDesc, values: &[Value]) -> Self {
        let mut w = RowWriter::new(table);
        for v in values {
            w.key();
            let _ = serde_json::to_writer(&mut w.out, v);
            w.end();
        }
        w.finish()
    }
}

/// Writes one row image cell by cell, in table column order.
pub struct RowWriter<'t> {
    table: &'t TableDesc,
    out: Vec<u8>,
    cells: Vec<(u32, u32)>,
    start: usize,
}

impl<'t> RowWriter<'t> {
    /// A writer for one row of `table`.
    pub fn new(table: &'t TableDesc) -> Self {
        let n = table.columns.len();
        let mut out = Vec::with_capacity(table.row_bytes_hint());
        out.push(b'{');
        RowWriter {
            table,
            out,
            cells: Vec::with_capacity(n),
            start: 0,
        }
    }

    fn key(&mut self) {
        let i = self.cells.len();
        if i > 0 {
            self.out.push(b',');
        }
        if let Some(c) = self.table.columns.get(i) {
            self.out.extend_from_slice(c.json_key().as_bytes());
        } else {
            // More values than columns (a caller's bug): keep the JSON valid.
            self.out.extend_from_slice(format!("\"{i}\":").as_bytes());
        }
        self.start = self.out.len();
    }

    fn end(&mut self) {
        self.cells.push((self.start as u32, self.out.len() as u32));
    }

    /// Appends the next cell.
    pub fn push(&mut self, cell: &Cell) {
        self.key();
        cell.write_json(&mut self.out);
        self.end();
    }

    /// The finished image.
    pub fn finish(mut self) -> RowImage {
        self.out.push(b'}');
        // Keys are `str`s and every value is written by serde_json or as ASCII base64.
        let json = String::from_utf8(self.out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        RowImage {
            json,
            cells: self.cells,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::decode::CellKind;
    use serde_json::json;

    fn table(cols: &[&str]) -> TableDesc {
        TableDesc::from_columns(
            "db",
            "tabX",
            cols.iter()
                .map(|c| (c.to_string(), CellKind::Text { latin1: false }))
                .collect(),
        )
    }

    #[test]
    fn cells_text_and_json_agree_with_serde() {
        let t = table(&["name", "idx", "q\"uote", "bin", "f", "n", "big", "esc"]);
        let mut w = RowWriter::new(&t);
        let cells = [
            Cell::Text("SINV-1".into()),
            Cell::Int(-3),
            Cell::Text("a\"b\\c\n\u{1}é😀".into()),
            Cell::Binary(vec![0, 0xff, 0x10]),
            Cell::Float(1.5e-7),
            Cell::Null,
            Cell::UInt(u64::MAX),
            Cell::Text("x\\y".into()),
        ];
        for c in &cells {
            w.push(c);
        }
        let img = w.finish();
        let parsed: Value = serde_json::from_str(img.json()).unwrap();
        let want: serde_json::Map<String, Value> = t
            .columns
            .iter()
            .zip(cells.iter())
            .map(|(c, v)| (c.name.clone(), v.clone().into_json()))
            .collect();
        assert_eq!(parsed, Value::Object(want.clone()));
        // Each cell's text is exactly what serde_json writes for the value.
        for (i, c) in cells.iter().enumerate() {
            assert_eq!(
                img.cell(i).unwrap(),
                serde_json::to_string(&c.clone().into_json()).unwrap()
            );
        }
        assert_eq!(img.text(Some(0)).as_deref(), Some("SINV-1"));
        assert_eq!(img.text(Some(1)).as_deref(), Some("-3"));
        assert_eq!(img.int(Some(1)), Some(-3));
        assert_eq!(img.text(Some(3)), None);
        assert_eq!(img.text(Some(5)), None);
        assert_eq!(img.int(Some(6)), None);
        assert_eq!(img.text(Some(7)).as_deref(), Some("x\\y"));
        assert_eq!(img.text(Some(99)), None);
        assert_eq!(img.text(None), None);
        assert_eq!(img.len(), 8);
        assert_eq!(
            serde_json::from_str::<Value>(img.cell(4).unwrap()).unwrap(),
            json!(1.5e-7)
        );
    }

    #[test]
    fn from_values_matches_the_writer() {
        let t = table(&["name", "v"]);
        let a = RowImage::from_values(&t, &[json!("a"), json!(2)]);
        let mut w = RowWriter::new(&t);
        w.push(&Cell::Text("a".into()));
        w.push(&Cell::Int(2));
        assert_eq!(a, w.finish());
        assert_eq!(a.json(), r#"{"name":"a","v":2}"#);
    }
}

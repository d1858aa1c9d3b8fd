//! The stored image of one document: its parent row and every child row, kept together as one
//! value of the state store, so that a document is read, changed and written back as a whole
//! (one store read and one store write per document and transaction, however many rows).
//!
//! Rows are stored as the JSON objects the envelope carries; [`DocImage::render`] concatenates
//! them into `{"parent": {...}|null, "children": {"<parentfield>": [rows by idx, name]}}`.
//! The binary layout is private to this file and versioned by its first byte; the body is LZ4
//! compressed (row JSON repeats every column name per row, so images shrink 3-5x, and the
//! store writes and syncs that much less).

use super::StateError;

/// Format byte, then one flag byte (parent row present), then the LZ4 block (with its
/// uncompressed size prepended) of the body.
const FORMAT: u8 = 2;

/// One child row and where it hangs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRow {
    pub field: String,
    pub idx: i64,
    pub name: String,
    pub table: String,
    pub json: String,
}

impl ChildRow {
    /// Approximate bytes held: the strings plus their allocations.
    pub fn weight(&self) -> usize {
        self.json.len() + self.name.len() + self.field.len() + self.table.len() + 128
    }
}

/// A document's rows. Children are kept sorted by (parentfield, idx, name), the order they
/// are rendered in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocImage {
    pub parent: Option<String>,
    pub children: Vec<ChildRow>,
}

fn corrupt(what: &str) -> StateError {
    StateError::Corrupt(format!("document image: {what}"))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(corrupt("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, StateError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, StateError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("not UTF-8"))
    }
}

impl DocImage {
    /// True when the document has neither a parent row nor child rows.
    pub fn is_empty(&self) -> bool {
        self.parent.is_none() && self.children.is_empty()
    }

    /// Approximate bytes held, for bounding caches.
    pub fn weight(&self) -> usize {
        self.parent.as_ref().map_or(0, String::len)
            + self.children.iter().map(ChildRow::weight).sum::<usize>()
            + 64
    }

    /// Encodes the image for the store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.weight());
        if let Some(p) = &self.parent {
            put_bytes(&mut out, p.as_bytes());
        }
        out.extend_from_slice(&(self.children.len() as u32).to_le_bytes());
        for c in &self.children {
            put_bytes(&mut out, c.field.as_bytes());
            out.extend_from_slice(&c.idx.to_le_bytes());
            put_bytes(&mut out, c.name.as_bytes());
            put_bytes(&mut out, c.table.as_bytes());
            put_bytes(&mut out, c.json.as_bytes());
        }
        let mut stored = vec![FORMAT, self.parent.is_some() as u8];
        stored.extend_from_slice(&lz4_flex::compress_prepend_size(&out));
        stored
    }

    /// Decodes a stored image.
    pub fn decode(bytes: &[u8]) -> Result<DocImage, StateError> {
        let with_parent = has_parent(bytes)?;
        let block = &bytes[2..];
        // LZ4 expands at most ~255x; a larger claimed size is corruption, not a reason to
        // allocate it.
        let claimed = block
            .get(0..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| corrupt("truncated"))?;
        if claimed > block.len().saturating_mul(256) + 64 {
            return Err(corrupt("claimed size"));
        }
        let body =
            lz4_flex::decompress_size_prepended(block).map_err(|_| corrupt("compression"))?;
        let mut r = Reader(&body);
        let parent = if with_parent { Some(r.string()?) } else { None };
        let n = r.u32()? as usize;
        // Each child needs at least 24 bytes; do not trust a count the bytes cannot hold.
        if n > r.0.len() / 24 {
            return Err(corrupt("child count"));
        }
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            let field = r.string()?;
            let idx = r.i64()?;
            let name = r.string()?;
            let table = r.string()?;
            let json = r.string()?;
            children.push(ChildRow {
                field,
                idx,
                name,
                table,
                json,
            });
        }
        if !r.0.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(DocImage { parent, children })
    }

    fn position(&self, field: &str, idx: i64, name: &str) -> Result<usize, usize> {
        self.children.binary_search_by(|c| {
            (c.field.as_str(), c.idx, c.name.as_str()).cmp(&(field, idx, name))
        })
    }

    /// Removes the child row `(table, name)` that the row image placed at `(field, idx)`.
    /// Returns whether a row was removed.
    pub fn remove_child(&mut self, table: &str, name: &str, field: &str, idx: i64) -> bool {
        let at = match self.position(field, idx, name) {
            Ok(i) if self.children[i].table == table => Some(i),
            // The stored placement differs from the row image's (cannot happen with full row
            // images; a linear search keeps the image right anyway).
            _ => self
                .children
                .iter()
                .position(|c| c.table == table && c.name == name),
        };
        match at {
            Some(i) => {
                self.children.remove(i);
                true
            }
            None => false,
        }
    }

    /// Inserts (or replaces) a child row.
    pub fn put_child(&mut self, row: ChildRow) {
        match self.position(&row.field, row.idx, &row.name) {
            Ok(i) => self.children[i] = row,
            Err(i) => self.children.insert(i, row),
        }
    }

    /// Renders the envelope image; `parent` overrides the stored parent (Singles keep their
    /// fields elsewhere).
    pub fn render_with(&self, parent: Option<&str>, out: &mut String) {
        out.push_str("{\"parent\":");
        out.push_str(parent.unwrap_or("null"));
        out.push_str(",\"children\":{");
        let mut field: Option<&str> = None;
        for c in &self.children {
            if field == Some(c.field.as_str()) {
                out.push(',');
            } else {
                if field.is_some() {
                    out.push_str("],");
                }
                push_json_str(out, &c.field);
                out.push_str(":[");
                field = Some(&c.field);
            }
            out.push_str(&c.json);
        }
        if field.is_some() {
            out.push(']');
        }
        out.push_str("}}");
    }

    /// Renders the envelope image of a document stored in its own table.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.weight());
        self.render_with(self.parent.as_deref(), &mut out);
        out
    }
}

/// Whether stored image bytes have a parent row, without decoding the rest.
pub fn has_parent(bytes: &[u8]) -> Result<bool, StateError> {
    match bytes {
        [FORMAT, 0, ..] => Ok(false),
        [FORMAT, 1, ..] => Ok(true),
        _ => Err(corrupt("header")),
    }
}

/// Appends `s` as a JSON string.
pub fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a str cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn child(field: &str, idx: i64, name: &str) -> ChildRow {
        ChildRow {
            field: field.into(),
            idx,
            name: name.into(),
            table: format!("tab{field}"),
            json: format!(r#"{{"name":"{name}","idx":{idx}}}"#),
        }
    }

    #[test]
    fn orders_renders_and_round_trips() {
        let mut d = DocImage {
            parent: Some(r#"{"name":"S1"}"#.into()),
            children: Vec::new(),
        };
        d.put_child(child("taxes", 1, "t"));
        d.put_child(child("items", 2, "b"));
        d.put_child(child("items", 1, "z"));
        d.put_child(child("items", 2, "a"));
        let v: serde_json::Value = serde_json::from_str(&d.render()).unwrap();
        assert_eq!(v["parent"]["name"], "S1");
        let names: Vec<&str> = v["children"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["z", "a", "b"]);
        assert_eq!(v["children"]["taxes"][0]["name"], "t");
        let back = DocImage::decode(&d.encode()).unwrap();
        assert_eq!(back, d);
        // Replacing keeps one row; removing by a stale placement still finds it.
        d.put_child(child("items", 2, "a"));
        assert_eq!(d.children.len(), 4);
        assert!(d.remove_child("tabitems", "a", "items", 9));
        assert!(!d.remove_child("tabitems", "a", "items", 2));
        assert!(d.remove_child("tabtaxes", "t", "taxes", 1));
        d.parent = None;
        assert_eq!(
            d.render(),
            r#"{"parent":null,"children":{"items":[{"name":"z","idx":1},{"name":"b","idx":2}]}}"#
        );
        d.children.clear();
        assert!(d.is_empty());
        assert_eq!(d.render(), r#"{"parent":null,"children":{}}"#);
    }

    #[test]
    fn odd_field_names_are_escaped() {
        let mut d = DocImage::default();
        d.put_child(child("we\"ird", 1, "x"));
        let v: serde_json::Value = serde_json::from_str(&d.render()).unwrap();
        assert_eq!(v["children"]["we\"ird"][0]["name"], "x");
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        let mut d = DocImage::default();
        d.put_child(child("items", 1, "x"));
        let good = d.encode();
        for cut in 0..good.len() {
            assert!(DocImage::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[0] = 9;
        assert!(DocImage::decode(&bad).is_err());
        let mut huge = vec![FORMAT, 0];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 16]);
        assert!(DocImage::decode(&huge).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(DocImage::decode(&trailing).is_err());
        let mut flipped = good;
        flipped[1] = 1; // claims a parent the body does not hold
        assert!(DocImage::decode(&flipped).is_err());
    }
}

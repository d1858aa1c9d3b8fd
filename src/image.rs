//! A document image as apply reads it: the parent row and the child rows by parentfield
//! (`schemas/envelope.v1.json#/$defs/image`), each row its columns in message order.
//!
//! Rows are a plain list of (column, value) pairs instead of a JSON map: a message is parsed
//! once per document, every column of every row is visited in order when it is written, and
//! lookups by name are few (`name`, `parent`, a filter column). Parsing into a hash map cost
//! apply about half of its CPU (hashing and growing a map per row, ~40 columns × 11 rows per
//! document). Values stay `serde_json::Value`, in the envelope's JSON forms.
//!
//! Column names are interned (`Col`, an `Arc<str>` shared by every row that names the column):
//! a document of 11 rows × ~40 columns named the same few dozen columns 440 times, each a
//! separate allocation made on the parsing thread and freed on another. Interning also lets
//! the bulk path tell two rows with the same columns apart by pointer (`Row::has_columns`).
//!
//! Parsing enforces the schema's shape (`parent` a row or null, `children` an object of row
//! arrays, nothing else) and rejects a row naming a column twice.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A column name, shared by the rows that name it.
pub type Col = Arc<str>;

/// Most names one parsing thread keeps interned; past it, names are allocated per row (a
/// stream of ever-new column names cannot grow memory without bound).
const INTERNED_MAX: usize = 16_384;

/// The shared copy of column name `s` (interned per thread).
pub fn intern(s: &str) -> Col {
    thread_local! {
        // foldhash, not SipHash (which made interning ~7 % of apply's CPU): the table is
        // bounded (INTERNED_MAX) and foldhash is seeded per process, so names crafted by a
        // producer to collide can slow one thread's lookups, not grow memory.
        static NAMES: RefCell<foldhash::HashSet<Col>> = RefCell::new(Default::default());
    }
    NAMES.with(|n| {
        let mut n = n.borrow_mut();
        if let Some(k) = n.get(s) {
            return Arc::clone(k);
        }
        let k: Col = Arc::from(s);
        if n.len() < INTERNED_MAX {
            n.insert(Arc::clone(&k));
        }
        k
    })
}

/// One row: (column, value) pairs in the order the message gave them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row(Vec<(Col, Value)>);

impl Row {
    /// The value of `column`, if present.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| &**k == column).map(|(_, v)| v)
    }

    /// The value of `column` when it is a string.
    pub fn str(&self, column: &str) -> Option<&str> {
        self.get(column).and_then(Value::as_str)
    }

    /// A row of `pairs` whose columns the caller knows to be distinct (a result set's, read
    /// from one table): no search per column, as [`Row::insert`] does.
    pub fn from_distinct(pairs: Vec<(Col, Value)>) -> Row {
        let row = Row(pairs);
        debug_assert!(row.duplicate().is_none());
        row
    }

    /// The value of `column`, looked up at `i` first (rows of one table usually list their
    /// columns in the same order), then by name.
    pub fn get_at(&self, i: usize, column: &Col) -> Option<&Value> {
        match self.0.get(i) {
            Some((k, v)) if Arc::ptr_eq(k, column) || **k == **column => Some(v),
            _ => self.get(column),
        }
    }

    /// (column, value) pairs with the shared column names.
    pub fn pairs(&self) -> impl Iterator<Item = &(Col, Value)> {
        self.0.iter()
    }

    /// Sets `column` (replacing its value when present, else appending it).
    pub fn insert(&mut self, column: String, value: Value) {
        match self.0.iter_mut().find(|(k, _)| **k == *column) {
            Some((_, v)) => *v = value,
            None => self.0.push((intern(&column), value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.into_iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// The column names, shared (see the module docs).
    pub fn cols(&self) -> impl Iterator<Item = &Col> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Whether `cols` are this row's columns, in order: by pointer first (interned names),
    /// then by text.
    pub fn has_columns(&self, cols: &[Col]) -> bool {
        self.0.len() == cols.len()
            && self
                .0
                .iter()
                .zip(cols)
                .all(|((a, _), b)| Arc::ptr_eq(a, b) || a == b)
    }

    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first column named twice, if any (cheap for the usual case of none: a sort of
    /// 64-bit hashes, then an exact check only of equal hashes).
    fn duplicate(&self) -> Option<&str> {
        fn h(s: &str) -> u64 {
            // FNV-1a: short keys, no need for DoS resistance (a collision costs one compare).
            s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            })
        }
        if self.0.len() < 2 {
            return None;
        }
        let mut hs: Vec<(u64, usize)> = self
            .0
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (h(k), i))
            .collect();
        hs.sort_unstable();
        hs.windows(2)
            .filter(|w| w[0].0 == w[1].0)
            .find(|w| self.0[w[0].1].0 == self.0[w[1].1].0)
            .map(|w| &*self.0[w[0].1].0)
    }
}

impl FromIterator<(String, Value)> for Row {
    /// Later pairs replace earlier ones of the same column.
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut r = Row::default();
        for (k, v) in iter {
            r.insert(k, v);
        }
        r
    }
}

impl<'a> IntoIterator for &'a Row {
    type Item = (&'a str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Col, Value)>,
        fn(&'a (Col, Value)) -> (&'a str, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (&**k, v))
    }
}

/// Reads a map key as an interned column name (borrowed from the input when it has no
/// escapes, so the usual key costs a hash lookup and no allocation).
struct ColSeed;

impl<'de> de::DeserializeSeed<'de> for ColSeed {
    type Value = Col;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Col, D::Error> {
        struct ColVisitor;
        impl<'de> Visitor<'de> for ColVisitor {
            type Value = Col;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a column name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Col, E> {
                Ok(intern(s))
            }
        }
        d.deserialize_str(ColVisitor)
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(&**k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a row object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Row, M::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(0).max(16));
                while let Some(k) = m.next_key_seed(ColSeed)? {
                    v.push((k, m.next_value::<Value>()?));
                }
                let row = Row(v);
                if let Some(k) = row.duplicate() {
                    return Err(de::Error::custom(format!(
                        "column {k:?} given twice in a row"
                    )));
                }
                Ok(row)
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

/// A full document: the parent row (null when only child rows exist) and every child row,
/// by parentfield, in `idx` order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Required (may be null): a plain `Option` would let the field be left out.
    #[serde(deserialize_with = "required_option")]
    pub parent: Option<Row>,
    pub children: BTreeMap<String, Vec<Row>>,
}

fn required_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Row>, D::Error> {
    Option::<Row>::deserialize(d)
}

impl Image {
    /// The rows under `field` (none when absent).
    pub fn rows(&self, field: &str) -> &[Row] {
        self.children.get(field).map_or(&[], Vec::as_slice)
    }

    /// The image as a JSON value (for reports).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_back_in_order() {
        let text = r#"{"parent":{"name":"S/1","b":2,"a":null},"children":{"items":[{"name":"i1","qty":1.5},{"name":"i2","x":{"$base64":"AA=="}}]}}"#;
        let img: Image = serde_json::from_str(text).unwrap();
        let p = img.parent.as_ref().unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["name", "b", "a"]);
        assert_eq!(p.str("name"), Some("S/1"));
        assert_eq!(p.get("a"), Some(&Value::Null));
        assert_eq!(p.get("zz"), None);
        assert_eq!(img.rows("items").len(), 2);
        assert!(img.rows("taxes").is_empty());
        assert_eq!(serde_json::to_string(&img).unwrap(), text);
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for (bad, why) in [
            (r#"{"children":{}}"#, "missing parent"),
            (r#"{"parent":null}"#, "missing children"),
            (r#"{"parent":[],"children":{}}"#, "parent not an object"),
            (
                r#"{"parent":null,"children":{"items":{}}}"#,
                "children not arrays",
            ),
            (
                r#"{"parent":null,"children":{"items":[1]}}"#,
                "row not an object",
            ),
            (r#"{"parent":null,"children":{},"x":1}"#, "unknown field"),
            (
                r#"{"parent":{"a":1,"b":2,"a":3},"children":{}}"#,
                "column twice",
            ),
        ] {
            assert!(serde_json::from_str::<Image>(bad).is_err(), "{why}");
        }
        let ok: Image = serde_json::from_str(r#"{"parent":null,"children":{}}"#).unwrap();
        assert_eq!(ok, Image::default());
    }

    #[test]
    fn column_names_are_shared_and_compared() {
        let text = r#"{"parent":{"name":"S/1","a\u0062c":1},"children":{"items":[{"name":"i1","abc":2},{"name":"i2","abc":3}]}}"#;
        let img: Image = serde_json::from_str(text).unwrap();
        let p = img.parent.as_ref().unwrap();
        let (r1, r2) = (&img.rows("items")[0], &img.rows("items")[1]);
        let cols: Vec<Col> = r1.cols().cloned().collect();
        // The escaped key is the same name; every row shares one allocation per name.
        assert_eq!(p.keys().collect::<Vec<_>>(), ["name", "abc"]);
        assert!(Arc::ptr_eq(&cols[1], p.cols().nth(1).unwrap()));
        assert!(r2.has_columns(&cols) && p.has_columns(&cols));
        // Same names, fresh allocations: still equal by text; other names or order: not.
        let fresh: Vec<Col> = ["name", "abc"].into_iter().map(Arc::from).collect();
        assert!(r1.has_columns(&fresh));
        let swapped: Vec<Col> = ["abc", "name"].into_iter().map(Arc::from).collect();
        assert!(!r1.has_columns(&swapped) && !r1.has_columns(&cols[..1]));
    }

    #[test]
    fn duplicate_check_sees_every_pair() {
        let many: Row = (0..100)
            .map(|i| (format!("c{i}"), Value::from(i)))
            .collect();
        assert_eq!(many.duplicate(), None);
        let mut v = many.0.clone();
        v.push(("c57".into(), Value::Null));
        assert_eq!(Row(v).duplicate(), Some("c57"));
        let mut r = many;
        r.insert("c3".into(), Value::Null);
        assert_eq!(r.len(), 100);
        assert_eq!(r.get("c3"), Some(&Value::Null));
    }
}

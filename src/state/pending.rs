//! Documents touched by the transaction being read, in first-touch order, with their before
//! images. Small transactions stay in memory; past a threshold the set spills into scratch
//! tables of the open write batch, so a million-document transaction needs bounded memory.
//! The scratch tables are emptied at the end of every transaction and never hold state across
//! commits.

use std::collections::{BTreeMap, HashMap};

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Batch, DocKey, StateError, db_err, keys};

const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending_docs");
const PENDING_KEY: TableDefinition<&[u8], u64> = TableDefinition::new("pending_keys");

/// One touched document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingDoc {
    pub key: DocKey,
    pub single: bool,
    /// Image before the transaction's first change to the document.
    pub before: Option<String>,
    /// A column other than the ignored bookkeeping ones changed.
    pub changed: bool,
    /// Per table: rows inserted, updated, deleted.
    pub tables: BTreeMap<String, [u32; 3]>,
    /// The parent row was renamed from this key to `renamed_to`.
    pub renamed_to: Option<String>,
}

/// The set of touched documents.
pub struct PendingDocs {
    mem: Vec<PendingDoc>,
    index: HashMap<DocKey, usize>,
    spilled: usize,
    spill_at: usize,
}

impl PendingDocs {
    /// A set that spills to disk past `spill_at` documents.
    pub fn new(spill_at: usize) -> Self {
        PendingDocs {
            mem: Vec::new(),
            index: HashMap::new(),
            spilled: 0,
            spill_at: spill_at.max(1),
        }
    }

    /// Number of touched documents.
    pub fn len(&self) -> usize {
        self.mem.len() + self.spilled
    }

    /// True when nothing was touched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn enc(key: &DocKey) -> Vec<u8> {
        keys::encode(&[&key.doctype, &key.name])
    }

    /// Position of `key`, if touched.
    pub fn find(&self, b: &Batch, key: &DocKey) -> Result<Option<usize>, StateError> {
        if self.spilled == 0 {
            return Ok(self.index.get(key).copied());
        }
        let t = b.wtx().open_table(PENDING_KEY).map_err(db_err)?;
        Ok(t.get(Self::enc(key).as_slice())
            .map_err(db_err)?
            .map(|v| v.value() as usize))
    }

    /// Adds a document (the caller checked it is new) and returns its position.
    pub fn push(&mut self, b: &Batch, doc: PendingDoc) -> Result<usize, StateError> {
        if self.spilled == 0 && self.mem.len() < self.spill_at {
            let i = self.mem.len();
            self.index.insert(doc.key.clone(), i);
            self.mem.push(doc);
            return Ok(i);
        }
        if self.spilled == 0 {
            self.spill(b)?;
        }
        let i = self.spilled;
        self.write(b, i, &doc)?;
        let mut keys_t = b.wtx().open_table(PENDING_KEY).map_err(db_err)?;
        keys_t
            .insert(Self::enc(&doc.key).as_slice(), i as u64)
            .map_err(db_err)?;
        self.spilled += 1;
        Ok(i)
    }

    fn spill(&mut self, b: &Batch) -> Result<(), StateError> {
        let mem = std::mem::take(&mut self.mem);
        self.index.clear();
        let mut keys_t = b.wtx().open_table(PENDING_KEY).map_err(db_err)?;
        let mut docs = b.wtx().open_table(PENDING).map_err(db_err)?;
        for (i, d) in mem.iter().enumerate() {
            let v = serde_json::to_vec(d).map_err(|e| StateError::Corrupt(e.to_string()))?;
            docs.insert(i as u64, v.as_slice()).map_err(db_err)?;
            keys_t
                .insert(Self::enc(&d.key).as_slice(), i as u64)
                .map_err(db_err)?;
        }
        self.spilled = mem.len();
        Ok(())
    }

    fn write(&self, b: &Batch, i: usize, doc: &PendingDoc) -> Result<(), StateError> {
        let mut docs = b.wtx().open_table(PENDING).map_err(db_err)?;
        let v = serde_json::to_vec(doc).map_err(|e| StateError::Corrupt(e.to_string()))?;
        docs.insert(i as u64, v.as_slice()).map_err(db_err)?;
        Ok(())
    }

    /// Reads the document at position `i`.
    pub fn get(&self, b: &Batch, i: usize) -> Result<PendingDoc, StateError> {
        if self.spilled == 0 {
            return self
                .mem
                .get(i)
                .cloned()
                .ok_or_else(|| StateError::Corrupt(format!("pending {i}")));
        }
        let docs = b.wtx().open_table(PENDING).map_err(db_err)?;
        let v = docs
            .get(i as u64)
            .map_err(db_err)?
            .ok_or_else(|| StateError::Corrupt(format!("pending {i}")))?;
        serde_json::from_slice(v.value()).map_err(|e| StateError::Corrupt(e.to_string()))
    }

    /// Changes the document at position `i`.
    pub fn update(
        &mut self,
        b: &Batch,
        i: usize,
        f: impl FnOnce(&mut PendingDoc),
    ) -> Result<(), StateError> {
        if self.spilled == 0 {
            let d = self
                .mem
                .get_mut(i)
                .ok_or_else(|| StateError::Corrupt(format!("pending {i}")))?;
            f(d);
            return Ok(());
        }
        let mut d = self.get(b, i)?;
        f(&mut d);
        self.write(b, i, &d)
    }

    /// Forgets every document (end of transaction).
    pub fn clear(&mut self, b: &Batch) -> Result<(), StateError> {
        if self.spilled > 0 {
            b.wtx().delete_table(PENDING).map_err(db_err)?;
            b.wtx().delete_table(PENDING_KEY).map_err(db_err)?;
        }
        self.mem.clear();
        self.index.clear();
        self.spilled = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;

    fn doc(n: usize) -> PendingDoc {
        PendingDoc {
            key: DocKey {
                doctype: "GL Entry".into(),
                name: format!("G{n}"),
            },
            single: false,
            before: None,
            changed: false,
            tables: BTreeMap::new(),
            renamed_to: None,
        }
    }

    #[test]
    fn spills_and_keeps_order() {
        let store = Store::open(&crate::state::tests::tempdir()).unwrap();
        let b = store.batch().unwrap();
        let mut p = PendingDocs::new(3);
        for n in 0..10 {
            assert_eq!(p.find(&b, &doc(n).key).unwrap(), None);
            assert_eq!(p.push(&b, doc(n)).unwrap(), n);
        }
        assert_eq!(p.len(), 10);
        assert_eq!(p.find(&b, &doc(7).key).unwrap(), Some(7));
        p.update(&b, 1, |d| d.changed = true).unwrap();
        assert!(p.get(&b, 1).unwrap().changed);
        assert_eq!(p.get(&b, 9).unwrap().key.name, "G9");
        p.clear(&b).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.find(&b, &doc(7).key).unwrap(), None);
        p.push(&b, doc(1)).unwrap();
        assert_eq!(p.find(&b, &doc(1).key).unwrap(), Some(0));
    }
}

//! Documents being changed, held in memory between their first read and their write-back.
//!
//! The binlog processor loads each document its transaction touches, applies the row changes
//! here, and writes every changed document back once at the commit; the snapshot loader does
//! the same across many rows and writes back when the cache outgrows its byte budget. Nothing
//! here is durable: write-back goes into the open store batch, which commits with the
//! checkpoint, so a crash loses the cache and the batch together.

use std::collections::HashMap;

use super::doc::{ChildRow, DocImage};
use super::{Batch, DocKey, StateError};

struct Entry {
    image: DocImage,
    dirty: bool,
}

/// Write-back cache of document images over one store batch.
pub struct DocCache {
    docs: HashMap<DocKey, Entry>,
    weight: usize,
    limit: usize,
}

impl DocCache {
    /// A cache whose [`DocCache::over_budget`] turns true past about `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Self {
        DocCache {
            docs: HashMap::new(),
            weight: 0,
            limit: limit_bytes,
        }
    }

    /// Number of cached documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// True when the cached images are estimated to hold more than the budget.
    pub fn over_budget(&self) -> bool {
        self.weight > self.limit
    }

    fn entry(&mut self, b: &Batch, key: &DocKey) -> Result<&mut Entry, StateError> {
        if !self.docs.contains_key(key) {
            let image = b.get_doc(key)?;
            // The image plus the map entry, its key and their allocations.
            self.weight += image.weight() + key.doctype.len() + key.name.len() + 160;
            self.docs.insert(
                key.clone(),
                Entry {
                    image,
                    dirty: false,
                },
            );
        }
        self.docs
            .get_mut(key)
            .ok_or_else(|| StateError::Corrupt("document cache".into()))
    }

    /// The current image of `key` (loaded from the batch and cached when not cached).
    pub fn get(&mut self, b: &Batch, key: &DocKey) -> Result<&DocImage, StateError> {
        Ok(&self.entry(b, key)?.image)
    }

    /// Calls `f` with the current image of `key` without caching it (for reads that do not
    /// change the document, such as rendering after-images at a commit).
    pub fn peek<T>(
        &self,
        b: &Batch,
        key: &DocKey,
        f: impl FnOnce(&DocImage) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        match self.docs.get(key) {
            Some(e) => f(&e.image),
            None => f(&b.get_doc(key)?),
        }
    }

    /// Sets (or clears) the parent row of `key`.
    pub fn set_parent(
        &mut self,
        b: &Batch,
        key: &DocKey,
        row: Option<String>,
    ) -> Result<(), StateError> {
        let add = row.as_ref().map_or(0, String::len);
        let e = self.entry(b, key)?;
        e.image.parent = row;
        e.dirty = true;
        self.weight += add;
        Ok(())
    }

    /// Inserts or replaces a child row of `key`.
    pub fn put_child(&mut self, b: &Batch, key: &DocKey, row: ChildRow) -> Result<(), StateError> {
        let add = row.weight();
        let e = self.entry(b, key)?;
        e.image.put_child(row);
        e.dirty = true;
        self.weight += add;
        Ok(())
    }

    /// Removes a child row of `key` (see [`DocImage::remove_child`]).
    pub fn remove_child(
        &mut self,
        b: &Batch,
        key: &DocKey,
        table: &str,
        name: &str,
        field: &str,
        idx: i64,
    ) -> Result<(), StateError> {
        let e = self.entry(b, key)?;
        if e.image.remove_child(table, name, field, idx) {
            e.dirty = true;
        }
        Ok(())
    }

    /// Writes every changed document into the batch, in key order, and empties the cache.
    pub fn flush(&mut self, b: &mut Batch) -> Result<(), StateError> {
        let mut dirty: Vec<(&DocKey, &DocImage)> = self
            .docs
            .iter()
            .filter(|(_, e)| e.dirty)
            .map(|(k, e)| (k, &e.image))
            .collect();
        dirty.sort_unstable_by(|a, b| a.0.cmp(b.0));
        b.put_docs(dirty)?;
        self.docs.clear();
        self.weight = 0;
        Ok(())
    }

    /// Forgets every cached document without writing anything (the batch is being dropped).
    pub fn discard(&mut self) {
        self.docs.clear();
        self.weight = 0;
    }
}

//! The commit half of the processor: one envelope per document a source transaction touched,
//! built from the document's stored image before and after, sent to Kafka in the transaction's
//! order. Runs inside the processor's open store batch; the checkpoint that makes it durable
//! is written only once Kafka acknowledged everything before it (I1, I2).

use super::*;

impl Processor {
    pub(super) fn emit_group(&mut self, mut source: Source) -> Result<u64, CaptureError> {
        let merged: HashSet<usize> = {
            let b = self.batch.as_ref().ok_or(CaptureError::Internal("batch"))?;
            let mut m = HashSet::new();
            for (_, new_key) in &self.renames {
                if let Some(j) = self.pending.find(b, new_key)? {
                    m.insert(j);
                }
            }
            m
        };
        // doc_count is exact (a consumer waits for that many documents of the transaction):
        // a document the transaction created and deleted again is not emitted.
        let mut vanished = 0u64;
        for &i in &self.created {
            if merged.contains(&i) {
                continue;
            }
            let b = self.batch.as_ref().ok_or(CaptureError::Internal("batch"))?;
            let d = self.pending.get(b, i)?;
            if !d.changed || d.before.is_some() || d.renamed_to.is_some() {
                continue;
            }
            let shape = if d.single {
                DocShape::Single
            } else {
                DocShape::Table
            };
            let exists = self.docs.peek(b, &d.key, |img| match shape {
                DocShape::Table => Ok(!img.is_empty()),
                DocShape::Single => Ok(b.render(&d.key, img, shape)?.is_some()),
            })?;
            if !exists {
                vanished += 1;
            }
        }
        source.doc_count = self
            .changed_count
            .saturating_sub(merged.len() as u64)
            .saturating_sub(vanished);
        let mut index = 0u64;
        for i in 0..self.pending.len() {
            if merged.contains(&i) {
                continue;
            }
            let b = self.batch.as_ref().ok_or(CaptureError::Internal("batch"))?;
            let d = self.pending.get(b, i)?;
            if !d.changed {
                continue;
            }
            let shape = if d.single {
                DocShape::Single
            } else {
                DocShape::Table
            };
            let mut tables = d.tables.clone();
            let (key, old_name) = match &d.renamed_to {
                Some(new) => {
                    let nk = DocKey {
                        doctype: d.key.doctype.clone(),
                        name: new.clone(),
                    };
                    if let Some(j) = self.pending.find(b, &nk)? {
                        for (t, c) in self.pending.get(b, j)?.tables {
                            let e = tables.entry(t).or_insert([0; 3]);
                            for k in 0..3 {
                                e[k] = e[k].max(c[k]);
                            }
                        }
                    }
                    (nk, Some(d.key.name.clone()))
                }
                None => (d.key.clone(), None),
            };
            let after = self.docs.peek(b, &key, |img| b.render(&key, img, shape))?;
            let op = match (&old_name, &d.before, &after) {
                (Some(_), _, _) => Op::Rename,
                (None, None, Some(_)) => Op::Create,
                (None, Some(_), None) => Op::Delete,
                (None, Some(_), Some(_)) => Op::Update,
                (None, None, None) => continue,
            };
            source.doc_index = index;
            let changes: BTreeMap<String, RowCounts> = tables
                .into_iter()
                .map(|(t, c)| {
                    (
                        t,
                        RowCounts {
                            inserted: c[0],
                            updated: c[1],
                            deleted: c[2],
                        },
                    )
                })
                .collect();
            let env = EnvelopeOut {
                version: ENVELOPE_VERSION,
                op,
                doctype: &key.doctype,
                name: &key.name,
                old_name: old_name.as_deref(),
                before: d.before.as_deref(),
                after: after.as_deref(),
                changes: &changes,
                source: &source,
            };
            let payload = env.to_vec();
            self.send(&key, Some(&payload))?;
            if !self.producer.muted() {
                self.metrics
                    .documents
                    .with_label_values(&[&key.doctype, op.as_str()])
                    .inc();
            }
            match op {
                Op::Delete => self.send(&key, None)?,
                Op::Rename => {
                    let old = DocKey {
                        doctype: key.doctype.clone(),
                        name: old_name.unwrap_or_default(),
                    };
                    self.send(&old, None)?;
                }
                _ => {}
            }
            index += 1;
        }
        if index != source.doc_count {
            // Envelopes already sent carry the count: say so rather than hide it.
            tracing::error!(
                emitted = index,
                doc_count = source.doc_count,
                "a source transaction emitted another number of documents than its doc_count"
            );
        }
        Ok(index)
    }

    fn send(&mut self, key: &DocKey, payload: Option<&[u8]>) -> Result<(), CaptureError> {
        let k = key_json(&key.doctype, &key.name);
        let r = self.producer.send(&key.doctype, &k, payload);
        self.metrics.in_flight.set(self.producer.in_flight() as i64);
        if r.is_err() {
            self.metrics.produce_errors.inc();
        }
        Ok(r?)
    }
}

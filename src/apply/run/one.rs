//! The one-message path of the apply loop: a document in its own replica transaction
//! (renames, Singles, a batch that fell back), tombstones and filtered messages that only move
//! the offset, and dead letters. Consistency and crash behaviour are the loop's (`run.rs`):
//! the document, its applied position and the partition's next offset commit together (I4),
//! and the offset moves only once the message is dealt with (I6).

use super::*;
use crate::apply::document::apply_document;

impl Applier {
    async fn store_only(&self, partition: i32, next: i64) -> Result<(), ReplicaError> {
        let mut conn = self.pool.get_conn().await?;
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        control::store_offset(&mut tx, &self.cfg.group, &self.cfg.topic, partition, next).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn apply_envelope(
        &mut self,
        e: &Envelope,
        key: EventKey,
        partition: i32,
        next: i64,
    ) -> Result<Outcome, ReplicaError> {
        let mut conn = self.pool.get_conn().await?;
        let started = std::time::Instant::now();
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        let outcome = self.apply_in(&mut tx, e, key).await?;
        // I4 (ARCHITECTURE.md): the document, its applied position and the offset commit together.
        control::store_offset(&mut tx, &self.cfg.group, &self.cfg.topic, partition, next).await?;
        tx.commit().await?;
        self.metrics
            .tx_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    async fn apply_in(
        &mut self,
        tx: &mut mysql_async::Transaction<'_>,
        e: &Envelope,
        key: EventKey,
    ) -> Result<Outcome, ReplicaError> {
        let (outcome, report) = apply_document(
            tx,
            &mut self.cache,
            &self.cmp,
            e,
            key,
            self.cfg.files.is_some(),
        )
        .await?;
        self.count_decisions(report.decisions);
        for (t, c) in report.missing_columns {
            self.metrics.missing_columns.with_label_values(&[&t]).inc();
            if self.missing_logged.insert((t.clone(), c.clone())) {
                tracing::warn!(table = %t, column = %c, "column missing on the replica; its values are not written (add it with bench migrate)");
            }
        }
        Ok(outcome)
    }

    /// Handles one message, retrying transient failures until shutdown.
    async fn handle(
        &mut self,
        m: &OwnedMessage,
        shutdown: &CancellationToken,
    ) -> Result<Option<(Outcome, Option<String>)>, ApplyError> {
        let next = m.offset() + 1;
        let partition = m.partition();
        let admitted = match admit_from(m.key(), m.payload(), Some(partition)) {
            Ok(a) => a,
            Err(reason) => return Ok(Some((Outcome::DeadLetter(reason), None))),
        };
        let doctype = match &admitted {
            Admitted::Doc(e, _) => Some(e.doctype.clone()),
            Admitted::Tombstone(_) | Admitted::Progress(_) => None,
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), self.cfg.max_backoff);
        let mut refreshed = false;
        loop {
            let r = match &admitted {
                Admitted::Tombstone(_) => self
                    .store_only(partition, next)
                    .await
                    .map(|_| Outcome::Tombstone),
                Admitted::Progress(_) => self
                    .store_only(partition, next)
                    .await
                    .map(|_| Outcome::Progress),
                Admitted::Doc(e, _)
                    if !self.cfg.filter.tracks(&e.doctype)
                        || !RowFilter::admits(&self.cfg.row_filters, e) =>
                {
                    self.store_only(partition, next)
                        .await
                        .map(|_| Outcome::Filtered)
                }
                Admitted::Doc(e, key) => {
                    let r = self.apply_envelope(e, *key, partition, next).await;
                    // Snapshot envelopes carry the snapshot's time, not a commit's: an initial
                    // load is not lag.
                    if let Ok(Outcome::Applied) = &r
                        && e.source.commit_ts > 0
                        && !e.source.snapshot
                    {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs_f64())
                            .unwrap_or(0.0);
                        self.metrics
                            .lag
                            .observe((now - e.source.commit_ts as f64).max(0.0));
                    }
                    r
                }
            };
            match r.map_err(|e| (e.class(), e)) {
                Ok(o) => return Ok(Some((o, doctype))),
                Err((Class::Retry, e)) => {
                    if !backoff
                        .wait(
                            &self.metrics,
                            "replica unavailable; retrying the same message",
                            &e,
                            shutdown,
                        )
                        .await
                    {
                        return Ok(None);
                    }
                    self.cache.clear();
                }
                // The replica's tables may have changed since they were cached (a table or
                // column added or dropped): judge the message on fresh ones before giving up.
                Err((Class::DeadLetter, _)) if !refreshed => {
                    refreshed = true;
                    self.cache.clear();
                }
                Err((Class::DeadLetter, e)) => {
                    return Ok(Some((Outcome::DeadLetter(e.to_string()), doctype)));
                }
                Err((Class::Halt, e)) => return Err(ApplyError::halt(e)),
            }
        }
    }
}

fn headers(m: &OwnedMessage, reason: &str) -> OwnedHeaders {
    let part = m.partition().to_string();
    let off = m.offset().to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "frappe-cdc-reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "frappe-cdc-topic",
            value: Some(m.topic()),
        })
        .insert(Header {
            key: "frappe-cdc-partition",
            value: Some(&part),
        })
        .insert(Header {
            key: "frappe-cdc-offset",
            value: Some(&off),
        })
}

impl Applier {
    /// One message on its own transaction; false when shutdown interrupted it. I6
    /// (ARCHITECTURE.md): the offset moves only once the message is dealt with.
    pub(super) async fn process_one(
        &mut self,
        io: &mut LoopIo<'_>,
        m: &OwnedMessage,
    ) -> Result<bool, ApplyError> {
        let Some((outcome, doctype)) = self.handle(m, io.shutdown).await? else {
            return Ok(false);
        };
        let label = io.labels.get(doctype.as_deref().unwrap_or("_unparsed"));
        self.metrics
            .documents
            .with_label_values(&[label, outcome.label()])
            .inc();
        if let Outcome::DeadLetter(reason) = &outcome {
            self.metrics.dead_letters.inc();
            tracing::warn!(partition = m.partition(), offset = m.offset(), reason = %reason, "message sent to the dead-letter topic");
            // The broker may be unreachable: retry with capped backoff, never moving past the
            // message until its dead letter is acknowledged.
            let key = m.key().unwrap_or(b"");
            let mut backoff = Backoff::new(Duration::from_millis(200), self.cfg.max_backoff);
            loop {
                let rec = FutureRecord::<[u8], [u8]>::to(&self.cfg.dead_letter_topic)
                    .key(key)
                    .headers(headers(m, reason));
                let rec = match m.payload() {
                    Some(p) => rec.payload(p),
                    None => rec,
                };
                match io.dlq.send(rec, Duration::from_secs(30)).await {
                    Ok(_) => break,
                    Err((e, _)) => {
                        if !backoff
                            .wait(
                                &self.metrics,
                                "cannot write to the dead-letter topic; retrying",
                                &e,
                                io.shutdown,
                            )
                            .await
                        {
                            return Ok(false);
                        }
                    }
                }
            }
            let mut backoff = Backoff::new(Duration::from_millis(200), self.cfg.max_backoff);
            loop {
                match self.store_only(m.partition(), m.offset() + 1).await {
                    Ok(()) => break,
                    Err(e) if transient(&e) => {
                        if !backoff
                            .wait(
                                &self.metrics,
                                "replica unavailable; retrying the offset store",
                                &e,
                                io.shutdown,
                            )
                            .await
                        {
                            return Ok(false);
                        }
                    }
                    Err(e) => return Err(ApplyError::halt(e)),
                }
            }
        }
        if outcome == Outcome::Conflict {
            self.metrics.open_conflicts.inc();
        }
        io.commit(
            m.topic(),
            &BTreeMap::from([(m.partition(), m.offset() + 1)]),
        );
        Ok(true)
    }
}

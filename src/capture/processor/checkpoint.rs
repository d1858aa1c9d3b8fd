//! The checkpoint half of the processor: a progress marker to every partition and the Kafka
//! commit (`capture/commit.rs`), then the store batch with the checkpoint (I1, I2, I15): the
//! checkpoint never runs ahead of the topic. `abort` and `finish` end a processor.

use super::*;

impl Processor {
    /// Checkpoints when due (or when `force`), only between groups.
    pub fn maybe_checkpoint(&mut self, force: bool) -> Result<(), CaptureError> {
        self.metrics
            .checkpoint_age
            .set(self.last_checkpoint.elapsed().as_secs_f64());
        if self.cur_gtid.is_some() || !self.dirty {
            return Ok(());
        }
        if !force && self.last_checkpoint.elapsed() < self.cfg.checkpoint_interval {
            return Ok(());
        }
        self.checkpoint()
    }

    // I1, I2 (ARCHITECTURE.md): called only once Kafka acknowledged everything before.
    fn checkpoint(&mut self) -> Result<(), CaptureError> {
        let Some(b) = self.batch.take() else {
            return Ok(());
        };
        let marker = crate::progress::Progress {
            version: crate::progress::PROGRESS_VERSION,
            kind: crate::progress::TYPE_PROGRESS.into(),
            epoch: self.cfg.epoch.clone(),
            partition: 0,
            position: self.position.to_string(),
            file: self.file.clone(),
            pos: self.pos,
            commit_ts: self.last_commit_ts,
            snapshot: None,
            written_at: now_secs(),
        };
        let committed = crate::capture::commit::commit(
            &mut self.producer,
            &self.metrics,
            &marker,
            self.cfg.flush_timeout,
        );
        if let Err(e) = committed {
            self.metrics.produce_errors.inc();
            self.docs.discard();
            let _ = b.abort();
            return Err(e.into());
        }
        let mut b = b;
        self.docs.flush(&mut b)?;
        self.metrics.in_flight.set(0);
        let cp = Checkpoint {
            position: self.position.clone(),
            file: self.file.clone(),
            pos: self.pos,
            snapshot: SnapshotState::Done {
                at: self.snapshot_at.clone(),
            },
            source_server_id: self.cfg.source_server_id,
            schema: self.cfg.schema.clone(),
            written_at: now_secs(),
            commit_ts: self.last_commit_ts,
            filter: Some(self.filter.describe()),
            envelope_version: Some(crate::envelope::ENVELOPE_VERSION),
            epoch: Some(self.cfg.epoch.clone()),
        };
        b.commit(&cp)?;
        self.dirty = false;
        self.last_checkpoint = Instant::now();
        self.metrics.checkpoint_age.set(0.0);
        self.metrics.checkpoint_ts.set(cp.written_at as f64);
        self.cfg.checkpoint_view.set(CheckpointAt {
            file: cp.file.clone(),
            pos: cp.pos,
            commit_ts: self.last_commit_ts,
        });
        tracing::debug!(position = %cp.position, "checkpoint written");
        Ok(())
    }

    /// Drops everything after the last checkpoint (used when the reader fails mid-group).
    pub fn abort(mut self) -> Result<(), CaptureError> {
        self.docs.discard();
        if let Some(b) = self.batch.take() {
            b.abort()?;
        }
        Ok(())
    }

    /// Ends cleanly: checkpoints if between groups, otherwise drops the partial group.
    pub fn finish(mut self) -> Result<GtidPosition, CaptureError> {
        if self.cur_gtid.is_some() {
            let pos = self
                .store
                .checkpoint()?
                .map(|c| c.position)
                .unwrap_or_default();
            self.abort()?;
            return Ok(pos);
        }
        self.dirty = true;
        self.checkpoint()?;
        Ok(self.position.clone())
    }
}

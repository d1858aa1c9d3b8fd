//! Moving stored offsets past transaction commit markers while apply is idle.
//!
//! An exactly-once topic ends every Kafka transaction with a control record: it takes an
//! offset but is never delivered. Apply stores "last message + 1" as a partition's next
//! offset, which is the control record's offset, so without this the partition would show a
//! lag of one for as long as nothing new arrives (and the lag alert would never clear).
//!
//! When a poll returned nothing and no batch is waiting, every message delivered so far is
//! applied and its offset stored. The consumer's position (librdkafka's, which steps over
//! control records) can then be ahead of the stored offset only by control records, so it is
//! stored as the next offset, in the replica (the offset apply resumes from, I9) and in Kafka.
//! Nothing here can skip a document: a position only counts messages delivered to apply.
//! A failure is logged and tried again at the next idle poll.

use super::*;

impl Applier {
    pub(super) async fn store_idle_positions(&mut self, io: &LoopIo<'_>) {
        let Ok(pos) = io.consumer.position() else {
            return;
        };
        let mut ahead: BTreeMap<i32, i64> = BTreeMap::new();
        for e in pos.elements_for_topic(&self.cfg.topic) {
            if let Offset::Offset(o) = e.offset()
                && self.idle_positions.get(&e.partition()) != Some(&o)
            {
                ahead.insert(e.partition(), o);
            }
        }
        if ahead.is_empty() {
            return;
        }
        match self.store_ahead(&ahead).await {
            Ok(stored) => {
                if !stored.is_empty() {
                    io.commit(&self.cfg.topic, &stored);
                }
                self.idle_positions.extend(ahead);
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not store idle positions; trying at the next idle poll")
            }
        }
    }

    /// Stores each position that is ahead of the replica's stored offset; returns those.
    async fn store_ahead(
        &self,
        ahead: &BTreeMap<i32, i64>,
    ) -> Result<BTreeMap<i32, i64>, ReplicaError> {
        let mut conn = self.pool.get_conn().await?;
        let stored: BTreeMap<i32, i64> =
            control::stored_offsets(&mut conn, &self.cfg.group, &self.cfg.topic)
                .await?
                .into_iter()
                .collect();
        let moved: BTreeMap<i32, i64> = ahead
            .iter()
            .filter(|(p, o)| stored.get(p).is_some_and(|s| s < o))
            .map(|(p, o)| (*p, *o))
            .collect();
        if moved.is_empty() {
            return Ok(moved);
        }
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        for (p, o) in &moved {
            control::store_offset(&mut tx, &self.cfg.group, &self.cfg.topic, *p, *o).await?;
        }
        tx.commit().await?;
        Ok(moved)
    }
}

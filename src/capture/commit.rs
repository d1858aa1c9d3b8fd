//! One commit of capture's output (I1, I2, I15 in ARCHITECTURE.md): a progress marker to every
//! partition and the Kafka transaction's commit (exactly-once) or every acknowledgement
//! (at-least-once), counted in the metrics. The caller writes its checkpoint only after this
//! returned Ok, so the checkpoint never runs ahead of the topic; the topic may run ahead of
//! the checkpoint (a crash between the two), which the next start reads from the markers.

use std::time::Duration;

use crate::kafka::producer::{Producer, ProducerError};
use crate::metrics::CaptureMetrics;
use crate::progress::Progress;

/// Commits what `producer` sent since its last commit, with `marker` (its partition field is
/// set per partition).
pub(crate) fn commit(
    producer: &mut Producer,
    metrics: &CaptureMetrics,
    marker: &Progress,
    timeout: Duration,
) -> Result<(), ProducerError> {
    let (commits, aborts) = (producer.commits, producer.aborts);
    let r = producer.commit(
        |p| {
            let mut m = marker.clone();
            m.partition = p;
            m.to_vec()
        },
        timeout,
    );
    let counter = |outcome: &str| metrics.kafka_transactions.with_label_values(&[outcome]);
    counter("committed").inc_by(producer.commits - commits);
    counter("aborted").inc_by(producer.aborts - aborts);
    r
}

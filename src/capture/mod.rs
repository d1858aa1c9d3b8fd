//! `frappe-cdc capture`: preflight, topic setup, initial snapshot, then binlog streaming.
//!
//! One call of [`run`] is one attempt. It opens the state store, refuses to start when any
//! preflight check fails (nothing is written in that case), resumes or takes the snapshot, and
//! streams until shutdown or an error. The caller retries transient errors
//! ([`CaptureError::is_transient`]) with backoff; every attempt resumes from the last durable
//! checkpoint, so a retry can repeat envelopes but never skip one.

mod commit;
pub mod processor;
pub mod retention;
pub mod snapshot;
mod statement;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::failure::{self, Class};
use crate::frappe::catalog::Filter;
use crate::kafka::producer::{Producer, ProducerConfig, ProducerError};
use crate::kafka::stats::HealthCounters;
use crate::kafka::topic::{TopicSpec, ensure_topic};
use crate::metrics::CaptureMetrics;
use crate::position::PositionError;
use crate::source::binlog::{BinlogError, ReaderConfig, run_reader};
use crate::source::conn::DbTarget;
use crate::source::preflight::{self, Failure};
use crate::source::snapshot::SnapshotError;
use crate::state::{SnapshotState, StateError, Store};
use processor::{Processor, ProcessorConfig};

/// Errors of capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("preflight failed:\n{}", .0.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<Failure>),
    #[error(
        "cannot reach the source database {target}: {source}\n  fix: {}",
        failure::mysql_fix(source)
    )]
    Connect {
        target: String,
        source: Box<mysql_async::Error>,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error(transparent)]
    Binlog(#[from] BinlogError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Position(#[from] PositionError),
    #[error(
        "state in {dir} belongs to database {found:?}, not {expected:?}: use another --state-dir"
    )]
    WrongState {
        dir: String,
        found: String,
        expected: String,
    },
    #[error(
        "state in {dir} was built with doctype filter {was}, and capture now runs with {now}: documents of a newly included doctype would go out as partial changes, and those of a newly excluded one would go stale on replicas\n  fix: start capture with the old --include-doctype/--exclude-doctype; or, to change the filter, re-snapshot: stop capture, move {dir} away, start capture with the new filter (replicas receive every document again as a snapshot)"
    )]
    FilterChanged {
        dir: String,
        was: String,
        now: String,
    },
    #[error(
        "state in {dir} was written by a capture emitting envelope version {was}; this build emits {now}\n  fix: re-snapshot: stop capture, move {dir} away and start again, after upgrading every apply"
    )]
    EnvelopeVersion { dir: String, was: u32, now: u32 },
    #[error(
        "a {verb} on tracked table {table} after {file}:{pos} was logged as a statement, without row events (TRUNCATE always is; other statements when a session sets binlog_format=STATEMENT or MIXED): capture cannot tell what the documents became, so it stopped before publishing anything after it\n  fix: make every session write ROW events (binlog_format=ROW globally, no SET SESSION binlog_format in apps or scripts), then re-snapshot: stop capture, move the --state-dir away and start it again"
    )]
    StatementChange {
        verb: &'static str,
        table: String,
        file: String,
        pos: u64,
    },
    #[error("cannot encode envelope: {0}")]
    Encode(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl CaptureError {
    /// The error policy's class (`failure.rs`). Capture has no dead letters: an event it
    /// cannot read halts it, since skipping one would lose a document's change.
    pub fn class(&self) -> Class {
        use ProducerError as P;
        match self {
            CaptureError::Connect { source, .. } => failure::mysql(source).or_halt(),
            CaptureError::Binlog(e) => match e {
                BinlogError::Connect(e) | BinlogError::Stream(e) => failure::mysql(e).or_halt(),
                BinlogError::Timeout(_) | BinlogError::EndedByServer => Class::Retry,
                _ => Class::Halt,
            },
            CaptureError::Producer(
                P::Delivery(_) | P::FlushTimeout { .. } | P::Topic { .. } | P::Unreachable { .. },
            ) => Class::Retry,
            CaptureError::Snapshot(SnapshotError::Sql(e)) => failure::mysql(e).or_halt(),
            _ => Class::Halt,
        }
    }

    /// Errors a retry may cure: lost connections, unreachable broker, delivery failures.
    pub fn is_transient(&self) -> bool {
        self.class() == Class::Retry
    }

    /// A fault of this program rather than of its settings or environment (exit 1, not 2).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            CaptureError::Internal(_)
                | CaptureError::Encode(_)
                | CaptureError::Binlog(BinlogError::Closed)
        )
    }
}

/// Everything capture needs.
#[derive(Clone)]
pub struct CaptureConfig {
    pub source: DbTarget,
    pub server_id: u32,
    pub state_dir: PathBuf,
    pub producer: ProducerConfig,
    pub filter: Filter,
    pub heartbeat: Duration,
    pub checkpoint_interval: Duration,
    pub spill_at: usize,
    pub flush_timeout: Duration,
    /// Stop at the end of the binlog (tests and benchmarks).
    pub stop_at_end: bool,
}

/// One capture attempt (see module docs).
pub async fn run(
    cfg: &CaptureConfig,
    metrics: &CaptureMetrics,
    shutdown: CancellationToken,
) -> Result<(), CaptureError> {
    // Preflight reads the checkpoint but creates nothing: a failed check leaves no trace.
    let cp = Store::peek_checkpoint(&cfg.state_dir)?;
    if let Some(c) = &cp
        && !c.schema.is_empty()
        && c.schema != cfg.source.database
    {
        return Err(CaptureError::WrongState {
            dir: cfg.state_dir.display().to_string(),
            found: c.schema.clone(),
            expected: cfg.source.database.clone(),
        });
    }
    // I10 (ARCHITECTURE.md): the state is only used with the settings it was built with.
    if let Some(c) = &cp {
        let dir = cfg.state_dir.display().to_string();
        let now = cfg.filter.describe();
        if let Some(was) = c.filter.as_ref().filter(|was| **was != now) {
            return Err(CaptureError::FilterChanged {
                dir,
                was: was.clone(),
                now,
            });
        }
        if let Some(was) = c
            .envelope_version
            .filter(|v| *v != crate::envelope::ENVELOPE_VERSION)
        {
            return Err(CaptureError::EnvelopeVersion {
                dir,
                was,
                now: crate::envelope::ENVELOPE_VERSION,
            });
        }
    }
    let resume = cp
        .as_ref()
        .filter(|c| matches!(c.snapshot, SnapshotState::Done { .. }))
        .map(|c| &c.position);
    let report = preflight::run(&cfg.source, cfg.server_id, resume)
        .await
        .map_err(|e| CaptureError::Connect {
            target: cfg.source.to_string(),
            source: Box::new(e),
        })?;
    for n in &report.notes {
        tracing::info!(note = %n, "preflight");
    }
    if !report.failures.is_empty() {
        return Err(CaptureError::Preflight(report.failures));
    }
    let store = Arc::new(Store::open(&cfg.state_dir)?);
    // A store from before epochs gets one now, durably, before anything carries it.
    let cp = match cp {
        Some(mut c) if c.epoch.is_none() => {
            c.epoch = Some(crate::progress::new_epoch());
            store.batch()?.commit(&c)?;
            Some(c)
        }
        other => other,
    };
    let partitions = if cfg.producer.null_sink {
        cfg.producer.partitions
    } else {
        ensure_topic(
            &cfg.producer.brokers,
            &cfg.producer.topic,
            &TopicSpec {
                partitions: cfg.producer.partitions,
                replication: cfg.producer.replication,
                configs: cfg.producer.topic_configs.clone(),
            },
            &cfg.producer.options,
        )
        .await?
        .partitions
    };
    if partitions != cfg.producer.partitions {
        tracing::warn!(
            topic = %cfg.producer.topic,
            topic_partitions = partitions,
            flag_partitions = cfg.producer.partitions,
            "the topic exists with another partition count: --partitions only applies when capture creates the topic; documents are spread over the topic's partitions (add partitions with kafka-topics --alter only between snapshots: it moves documents to other partitions)"
        );
    }
    let mut pcfg = cfg.producer.clone();
    pcfg.partitions = partitions;
    // Creating an exactly-once producer and reading the markers block: off the async workers.
    let epoch = cp
        .as_ref()
        .and_then(|c| c.epoch.clone())
        .filter(|_| pcfg.transactional_id.is_some() && !pcfg.null_sink);
    let pcfg2 = pcfg.clone();
    let (mut producer, on_topic) = tokio::task::spawn_blocking(move || {
        let producer = Producer::new(&pcfg2)?;
        // I15 (ARCHITECTURE.md): what an exactly-once topic already holds of this state.
        let on_topic = match epoch {
            Some(epoch) => crate::kafka::markers::last_marker(
                &pcfg2.brokers,
                &pcfg2.options,
                &pcfg2.topic,
                &epoch,
            )?,
            None => None,
        };
        Ok::<_, ProducerError>((producer, on_topic))
    })
    .await
    .map_err(|_| CaptureError::Internal("producer setup panicked"))??;
    if let Some(m) = &on_topic {
        tracing::info!(position = %m.position, snapshot = ?m.snapshot, "newest committed progress marker of this state");
    }
    if let Some(h) = producer.health() {
        h.attach(HealthCounters {
            disconnects: metrics.kafka_disconnects.clone(),
            retries: metrics.kafka_retries.clone(),
            timeouts: metrics.kafka_timeouts.clone(),
        });
    }
    metrics
        .state_bytes
        .set(Store::file_size(&cfg.state_dir) as i64);

    let cp = match cp {
        Some(c) if matches!(c.snapshot, SnapshotState::Done { .. }) => c,
        Some(c)
            if matches!(c.snapshot, SnapshotState::InProgress { .. })
                && c.schema == cfg.source.database =>
        {
            tracing::info!("resuming snapshot emission");
            // Markers of a finished snapshot carry none: all of it is on the topic.
            let snapshot_on_topic = on_topic
                .as_ref()
                .map_or(0, |m| m.snapshot.map_or(u64::MAX, |s| s.emitted));
            let store2 = Arc::clone(&store);
            let m = metrics.clone();
            let ft = cfg.flush_timeout;
            let (cp, p) = tokio::task::spawn_blocking(move || {
                let r = snapshot::emit(&store2, c, &mut producer, &m, ft, snapshot_on_topic);
                (r, producer)
            })
            .await
            .map_err(|_| CaptureError::Internal("snapshot task panicked"))?;
            producer = p;
            cp?
        }
        _ => {
            let loaded = snapshot::load(
                &cfg.source,
                Arc::clone(&store),
                &cfg.filter,
                metrics,
                report.server_id,
            )
            .await?;
            let store2 = Arc::clone(&store);
            let m = metrics.clone();
            let ft = cfg.flush_timeout;
            let (cp, p) = tokio::task::spawn_blocking(move || {
                let r = snapshot::emit(&store2, loaded, &mut producer, &m, ft, 0);
                (r, producer)
            })
            .await
            .map_err(|_| CaptureError::Internal("snapshot task panicked"))?;
            producer = p;
            cp?
        }
    };
    tracing::info!(position = %cp.position, "streaming binlog");

    let filter = cfg.filter.clone();
    let reader_cfg = ReaderConfig {
        opts: cfg.source.opts.clone(),
        server_id: cfg.server_id,
        schema: cfg.source.database.clone(),
        start: cp.position.clone(),
        heartbeat: cfg.heartbeat,
        want_table: Arc::new(move |t: &str| filter.reader_wants(t)),
        non_blocking: cfg.stop_at_end,
    };
    // The reader's read-ahead budget bounds what is in flight; the channel only needs room.
    let (tx, mut rx) = mpsc::channel(1024);
    let reader = tokio::spawn(run_reader(reader_cfg, tx));
    let view = retention::CheckpointView::default();
    let retention_stop = shutdown.child_token();
    let watcher = tokio::spawn(retention::watch(
        cfg.source.opts.clone(),
        view.clone(),
        metrics.clone(),
        Duration::from_secs(10),
        retention_stop.clone(),
    ));
    let _stop_watcher = retention_stop.drop_guard();
    let pcfg = ProcessorConfig {
        checkpoint_view: view,
        source_server_id: report.server_id,
        schema: cfg.source.database.clone(),
        checkpoint_interval: cfg.checkpoint_interval,
        spill_at: cfg.spill_at,
        flush_timeout: cfg.flush_timeout,
        epoch: cp.epoch.clone().unwrap_or_default(),
        committed: on_topic
            .filter(|m| m.snapshot.is_none())
            .and_then(|m| m.position.parse().ok()),
    };
    let mut processor = Processor::new(
        pcfg,
        Arc::clone(&store),
        &cp,
        cfg.filter.clone(),
        producer,
        metrics.clone(),
    )?;
    let handle = tokio::runtime::Handle::current();
    let sd = shutdown.clone();
    let state_dir = cfg.state_dir.clone();
    let m = metrics.clone();
    let processed = tokio::task::spawn_blocking(move || -> Result<(), CaptureError> {
        let mut last_size = std::time::Instant::now();
        loop {
            if sd.is_cancelled() && !processor.in_group() {
                break;
            }
            // Chunks are taken without blocking while the reader is ahead (a timer and a park
            // per chunk cost more than processing it); only an empty channel waits, with a
            // timeout so idle checkpoints still happen.
            let next = match rx.try_recv() {
                Ok(item) => Ok(Some(item)),
                Err(mpsc::error::TryRecvError::Disconnected) => Ok(None),
                Err(mpsc::error::TryRecvError::Empty) => handle.block_on(async {
                    tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
                }),
            };
            match next {
                Err(_) => processor.maybe_checkpoint(false)?,
                Ok(None) => break,
                Ok(Some(chunk)) => {
                    // The chunk's read-ahead budget returns to the reader when it is dropped.
                    for item in chunk.items {
                        if sd.is_cancelled() && !processor.in_group() {
                            break;
                        }
                        if let Err(e) = processor.on_item(item) {
                            let _ = processor.abort();
                            return Err(e);
                        }
                    }
                }
            }
            if last_size.elapsed() > Duration::from_secs(5) {
                m.state_bytes.set(Store::file_size(&state_dir) as i64);
                last_size = std::time::Instant::now();
            }
        }
        drop(rx);
        processor.finish()?;
        Ok(())
    });
    let processed = processed
        .await
        .map_err(|_| CaptureError::Internal("capture loop panicked"))?;
    let read = reader
        .await
        .map_err(|_| CaptureError::Internal("binlog reader panicked"))?;
    drop(watcher);
    processed?;
    match read {
        Ok(()) | Err(BinlogError::Closed) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

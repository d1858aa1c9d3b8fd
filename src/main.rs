//! The `frappe-cdc` binary: parse flags, set up logging, run a subcommand, map errors to exit
//! codes (0 ok, 1 runtime failure, 2 configuration or preflight failure).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use frappe_cdc::apply::run::{ApplyConfig, RowFilter, run as run_apply_loop};
use frappe_cdc::capture::{self, CaptureConfig};
use frappe_cdc::cli::{
    ApplyArgs, CaptureArgs, Command, Delivery, LogFormat, PartitionBy, VerifyArgs,
};
use frappe_cdc::failure::Class;
use frappe_cdc::frappe::catalog::Filter;
use frappe_cdc::kafka;
use frappe_cdc::kafka::producer::ProducerConfig;
use frappe_cdc::metrics::{self, ApplyMetrics, CaptureMetrics};
use frappe_cdc::source::conn::{DbTarget, read_password_file};
use frappe_cdc::source::preflight;
use frappe_cdc::state::Store;
use tokio_util::sync::CancellationToken;

/// mimalloc: rows are decoded on the binlog reader thread and freed on the processor thread
/// (envelopes likewise across apply's parse and write tasks); glibc malloc spent ~15 % of the
/// reader's time in arena locking and consolidation on that pattern. Measured in the bench:
/// capture ceiling to a null sink 163k -> 232k rows/s.
mod conflicts_cmd;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// A connection target whose password comes from `file` (flag `flag`) or else from the
/// environment variable `env`, never from argv.
fn db_target(
    url: &str,
    file: Option<&std::path::Path>,
    flag: &str,
    env: &str,
) -> Result<DbTarget, String> {
    let password = match file {
        Some(p) => Some(
            read_password_file(p)
                .map_err(|e| format!("cannot read {flag} {}: {e}", p.display()))?,
        ),
        None => std::env::var(env).ok(),
    };
    DbTarget::parse(url, password.as_deref()).map_err(|e| e.to_string())
}

/// The replica target of `url` with its password from `file` or `FRAPPE_CDC_REPLICA_PASSWORD`;
/// None after saying what is wrong (exit 2).
pub(crate) fn replica_target(url: &str, file: Option<&std::path::Path>) -> Option<DbTarget> {
    db_target(
        url,
        file,
        "--replica-password-file",
        "FRAPPE_CDC_REPLICA_PASSWORD",
    )
    .map_err(|e| eprintln!("error: {e}"))
    .ok()
}

fn source_target(a: &CaptureArgs) -> Result<DbTarget, String> {
    db_target(
        &a.source,
        a.source_password_file.as_deref(),
        "--source-password-file",
        "FRAPPE_CDC_SOURCE_PASSWORD",
    )
}

fn capture_config(a: &CaptureArgs) -> Result<CaptureConfig, String> {
    if a.partitions < 1 {
        return Err("--partitions must be at least 1".into());
    }
    Ok(CaptureConfig {
        source: source_target(a)?,
        server_id: a.server_id,
        state_dir: a.state_dir.clone(),
        producer: ProducerConfig {
            brokers: a.brokers.clone(),
            topic: a.topic.clone(),
            partitions: a.partitions,
            replication: a.topic_replication,
            topic_configs: a.topic_config.clone(),
            partition_by_doctype: a.partition_by == PartitionBy::Doctype,
            max_in_flight: a.max_in_flight,
            options: kafka::options::merged(a.kafka.kafka_config.as_deref(), &a.kafka.kafka_option)
                .map_err(|e| e.to_string())?,
            null_sink: false,
            transactional_id: (a.delivery == Delivery::ExactlyOnce).then(|| {
                a.transactional_id
                    .clone()
                    .unwrap_or_else(|| format!("frappe-cdc.{}.{}", a.topic, a.server_id))
            }),
        },
        filter: Filter::new(&a.doctypes.include_doctype, &a.doctypes.exclude_doctype)
            .with_added(&a.doctypes.add_doctype),
        heartbeat: a.heartbeat,
        checkpoint_interval: a.checkpoint_interval,
        spill_at: a.spill_at,
        flush_timeout: Duration::from_secs(120),
        stop_at_end: a.stop_at_end,
    })
}

async fn run_check(a: &CaptureArgs) -> ExitCode {
    let target = match source_target(a) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let checkpoint = Store::peek_checkpoint(&a.state_dir)
        .ok()
        .flatten()
        .map(|c| c.position);
    match preflight::run(&target, a.server_id, checkpoint.as_ref()).await {
        Ok(r) => {
            for n in &r.notes {
                println!("note: {n}");
            }
            if r.failures.is_empty() {
                println!(
                    "ok: {} (MariaDB {}, server_id {}) is ready for capture",
                    target, r.server_version, r.server_id
                );
                ExitCode::SUCCESS
            } else {
                for f in &r.failures {
                    println!("FAIL {f}");
                }
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!(
                "error: cannot reach {target}: {e}\n  fix: check --source host, port, user and password, and that MariaDB is running"
            );
            ExitCode::from(2)
        }
    }
}

async fn run_capture(a: &CaptureArgs) -> ExitCode {
    let cfg = match capture_config(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(listener) = metrics_listener(a.metrics_addr).await else {
        return ExitCode::from(2);
    };
    let m = CaptureMetrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(metrics::serve(
        listener,
        m.registry.clone(),
        Arc::clone(&ready),
    ));
    let shutdown = shutdown_token();
    let mut backoff = Duration::from_millis(500);
    let code = loop {
        ready.store(true, std::sync::atomic::Ordering::Release);
        match capture::run(&cfg, &m, shutdown.clone()).await {
            Ok(()) => break ExitCode::SUCCESS,
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "capture interrupted; resuming from the last checkpoint");
                m.reconnects.inc();
                ready.store(false, std::sync::atomic::Ordering::Release);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break ExitCode::SUCCESS,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                let code = if e.is_internal() { 1 } else { 2 };
                eprintln!("error: {e}");
                break ExitCode::from(code);
            }
        }
    };
    server.abort();
    code
}

/// The metrics endpoint's listener, or None after saying why it cannot bind (a Halt: exit 2).
async fn metrics_listener(addr: std::net::SocketAddr) -> Option<tokio::net::TcpListener> {
    metrics::bind(addr)
        .await
        .map_err(|e| eprintln!("error: {e}"))
        .ok()
}

/// Exit codes of the error policy: 2 when an operator must fix something, 1 otherwise.
fn exit_code(class: Class) -> u8 {
    if class == Class::Halt { 2 } else { 1 }
}

fn shutdown_token() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
        tracing::info!("shutdown requested");
        sd.cancel();
    });
    shutdown
}

async fn run_apply(a: &ApplyArgs) -> ExitCode {
    let Some(replica) = replica_target(&a.replica, a.replica_password_file.as_deref()) else {
        return ExitCode::from(2);
    };
    let row_filters = match a
        .filter
        .iter()
        .map(|f| RowFilter::parse(f))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cfg = ApplyConfig {
        row_filters,
        replica,
        brokers: a.brokers.clone(),
        topic: a.topic.clone(),
        group: a.group.clone(),
        dead_letter_topic: a
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dead-letter", a.topic)),
        filter: Filter::new(&a.doctypes.include_doctype, &a.doctypes.exclude_doctype)
            .with_added(&a.doctypes.add_doctype),
        ignore_columns: a.ignore_column.clone(),
        max_backoff: a.max_backoff,
        batch_size: a.batch_size,
        writers: usize::from(a.writers),
        consistency: a.consistency,
        max_transaction_docs: a.max_transaction_docs,
        policies: match frappe_cdc::apply::policy::Policies::load(a.config.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}\n  fix: see the conflict policies in README.md");
                return ExitCode::from(2);
            }
        },
        files: match a.files.config() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        hold_transactions: a.consistency == frappe_cdc::apply::config::Consistency::Transaction
            && a.on_conflict_in_transaction
                == frappe_cdc::apply::config::OnConflictInTransaction::HoldTransaction,
        kafka_options: match kafka::options::merged(
            a.kafka.kafka_config.as_deref(),
            &a.kafka.kafka_option,
        ) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // Copying files needs the File rows: --files-to adds File to apply's doctypes.
    if cfg.files.is_some() {
        cfg.filter = cfg.filter.with_added(&["File".to_string()]);
    }
    if let Some((k, _)) = cfg
        .kafka_options
        .iter()
        .find(|(k, _)| frappe_cdc::apply::config::FIXED_CONSUMER_OPTIONS.contains(&k.as_str()))
    {
        eprintln!(
            "error: --kafka-option {k} is fixed by apply (use --brokers / --group; offsets live in the replica)"
        );
        return ExitCode::from(2);
    }
    let Some(listener) = metrics_listener(a.metrics_addr).await else {
        return ExitCode::from(2);
    };
    let m = ApplyMetrics::new();
    let server = tokio::spawn(metrics::serve(
        listener,
        m.registry.clone(),
        Arc::clone(&m.ready),
    ));
    let code = match run_apply_loop(cfg, m, shutdown_token()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(e.class()))
        }
    };
    server.abort();
    code
}

async fn run_verify(a: &VerifyArgs) -> ExitCode {
    let (source, replica) = match (
        db_target(
            &a.source,
            a.source_password_file.as_deref(),
            "--source-password-file",
            "FRAPPE_CDC_SOURCE_PASSWORD",
        ),
        db_target(
            &a.replica,
            a.replica_password_file.as_deref(),
            "--replica-password-file",
            "FRAPPE_CDC_REPLICA_PASSWORD",
        ),
    ) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let connect = |t: DbTarget| async move {
        mysql_async::Conn::new(t.opts.clone())
            .await
            .map_err(|e| format!("cannot reach {t}: {e}"))
    };
    let (mut s, mut r) = match (connect(source).await, connect(replica).await) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = Filter::new(&a.doctypes.include_doctype, &a.doctypes.exclude_doctype)
        .with_added(&a.doctypes.add_doctype);
    let cmp = frappe_cdc::apply::decision::Comparator::new(
        frappe_cdc::frappe::catalog::IGNORED_COLUMNS
            .iter()
            .map(|c| c.to_string())
            .chain(a.ignore_column.iter().cloned()),
    );
    let report =
        match frappe_cdc::apply::verify::run(&mut s, &mut r, &filter, a.doctype.as_deref(), &cmp)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
    for (d, c) in &report.per_doctype {
        if c != &Default::default() {
            println!(
                "{d}: {} equal, {} missing on replica, {} extra on replica, {} different, {} known divergences",
                c.equal, c.missing, c.extra, c.different, c.known
            );
        }
    }
    let t = &report.total;
    println!(
        "total: {} equal, {} missing on replica, {} extra on replica, {} different, {} known divergences (open or kept-local conflicts)",
        t.equal, t.missing, t.extra, t.different, t.known
    );
    for (kind, d, n, detail) in &report.examples {
        println!("  {kind}: {d} {n} {detail}");
    }
    let files_equal = match &a.files {
        Some(site) => match verify_files(&mut r, site).await {
            Ok(eq) => eq,
            Err(e) => {
                eprintln!("error: verify --files: {e}");
                return ExitCode::from(2);
            }
        },
        None => true,
    };
    if report.is_equal() && files_equal {
        println!("replica in sync");
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `verify --files`: prints what it found; true when no file is missing or different.
async fn verify_files(r: &mut mysql_async::Conn, site: &std::path::Path) -> Result<bool, String> {
    if !site.is_dir() {
        return Err(format!(
            "{}: not a folder (give the replica's sites/<site> folder)",
            site.display()
        ));
    }
    let f =
        frappe_cdc::files::verify::verify(r, &frappe_cdc::files::store::SiteDir::new(site)).await?;
    println!(
        "files: {} equal, {} missing on replica, {} different, {} known (not copied, see _frappe_cdc_files), {} extra on replica, {} not checked (remote)",
        f.equal,
        f.missing.len(),
        f.different.len(),
        f.known.len(),
        f.extra.len(),
        f.unchecked
    );
    for (name, url) in &f.missing {
        println!("  missing file: File {name} {url}");
    }
    for (name, url, md5) in &f.different {
        println!("  different file: File {name} {url} (its bytes hash to {md5})");
    }
    for (name, url, status) in &f.known {
        println!("  known: File {name} {url} ({status})");
    }
    for p in f.extra.iter().take(20) {
        println!("  extra file: {p}");
    }
    Ok(f.is_equal())
}

async fn run_files(a: &frappe_cdc::files::args::FilesCommandArgs) -> ExitCode {
    let Some(target) = replica_target(&a.target.replica, a.target.replica_password_file.as_deref())
    else {
        return ExitCode::from(2);
    };
    let cfg = match a.files.config() {
        Ok(Some(c)) => c,
        Ok(None) => {
            eprintln!("error: files sync needs --files-from and --files-to");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let pool = mysql_async::Pool::new(target.opts.clone());
    match a.action {
        frappe_cdc::files::args::FilesAction::Sync => {
            match frappe_cdc::files::sync::sync(&pool, &cfg).await {
                Ok(rep) => {
                    let counts: Vec<String> =
                        rep.counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
                    println!(
                        "files sync: {} File rows recorded, {} lost files queued again, {} attempts; now {}",
                        rep.added,
                        rep.repaired,
                        rep.attempted,
                        counts.join(", ")
                    );
                    if rep.unsettled() == 0 {
                        ExitCode::SUCCESS
                    } else {
                        println!(
                            "{} files not copied: SELECT name, file_url, status, last_error FROM _frappe_cdc_files WHERE status NOT IN ('fetched', 'skipped', 'deleted')",
                            rep.unsettled()
                        );
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("error: files sync: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match frappe_cdc::cli::parse_from(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match &cli.command {
        Command::Capture(a) => {
            init_logging(a.log_format);
            run_capture(a).await
        }
        Command::Check(a) => {
            init_logging(a.log_format);
            run_check(a).await
        }
        Command::Apply(a) => {
            init_logging(a.log_format);
            run_apply(a).await
        }
        Command::Verify(a) => {
            init_logging(a.log_format);
            run_verify(a).await
        }
        Command::Conflicts(a) => {
            init_logging(LogFormat::Text);
            conflicts_cmd::run(a).await
        }
        Command::Files(a) => {
            init_logging(LogFormat::Text);
            run_files(a).await
        }
    }
}

//! Command line: every flag also reads `FRAPPE_CDC_<FLAG>` from the environment and, with
//! `--config FILE`, a TOML file whose keys are the long flag names (`brokers = "..."`,
//! `include-doctype = ["Customer", "Item"]`). Precedence: command line, then environment, then
//! the file. Passwords come from `FRAPPE_CDC_SOURCE_PASSWORD` or `--source-password-file`, never
//! from argv.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// frappe-cdc: stream Frappe/ERPNext documents from the MariaDB binlog to Kafka.
#[derive(Debug, Parser)]
#[command(name = "frappe-cdc", version, about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream committed document changes from the primary's binlog to Kafka.
    Capture(CaptureArgs),
    /// Check the primary's settings and privileges (the same checks capture runs first).
    Check(CaptureArgs),
    /// Apply the topic's documents to a replica MariaDB, with conflict checks.
    Apply(ApplyArgs),
    /// Compare source and replica document by document; exit 0 only when equal.
    Verify(VerifyArgs),
    /// List, show and resolve conflicts recorded by apply on a replica.
    Conflicts(ConflictsArgs),
    /// Copy attachments to a replica site outside apply (`files sync`).
    Files(crate::files::args::FilesCommandArgs),
}

/// The flags of a command that works on one replica only (`conflicts`, `files`).
#[derive(Debug, Clone, Args)]
pub struct ReplicaToolArgs {
    /// TOML file with defaults for any flag (keys are the long flag names).
    #[arg(long, env = "FRAPPE_CDC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Replica: mysql://user@host:port/site_db (password via FRAPPE_CDC_REPLICA_PASSWORD).
    #[arg(long, env = "FRAPPE_CDC_REPLICA")]
    pub replica: String,
    /// File holding the replica password.
    #[arg(long, env = "FRAPPE_CDC_REPLICA_PASSWORD_FILE")]
    pub replica_password_file: Option<PathBuf>,
}

/// Flags of `conflicts`.
#[derive(Debug, Clone, Args)]
pub struct ConflictsArgs {
    #[command(flatten)]
    pub target: ReplicaToolArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: ConflictAction,
}

/// `conflicts` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum ConflictAction {
    /// Open conflicts (all with --all; automatic decisions with --auto).
    List {
        /// Every conflict: open, resolved and automatic.
        #[arg(long, conflicts_with = "auto")]
        all: bool,
        /// The conflicts a policy decided (status auto), with the policy and its decision.
        #[arg(long)]
        auto: bool,
        /// Only this doctype.
        #[arg(long)]
        doctype: Option<String>,
    },
    /// One conflict as JSON: the primary's images, the replica's copy then and now, the diff.
    Show { id: u64 },
    /// Close a conflict.
    Resolve {
        id: u64,
        /// Write the primary's latest version over the replica's copy.
        #[arg(
            long,
            conflicts_with = "keep_local",
            required_unless_present = "keep_local"
        )]
        accept_primary: bool,
        /// Keep the replica's copy.
        #[arg(long)]
        keep_local: bool,
    },
    /// The conflicts page: list, three-way detail, resolve (token login, loopback by default).
    Serve(crate::page::ServeArgs),
}

/// Flags of `verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// TOML file with defaults for any flag (keys are the long flag names).
    #[arg(long, env = "FRAPPE_CDC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Source (primary): mysql://user@host:port/site_db (password via FRAPPE_CDC_SOURCE_PASSWORD).
    #[arg(long, env = "FRAPPE_CDC_SOURCE")]
    pub source: String,
    /// File holding the source password.
    #[arg(long, env = "FRAPPE_CDC_SOURCE_PASSWORD_FILE")]
    pub source_password_file: Option<PathBuf>,
    /// Replica: mysql://user@host:port/site_db (password via FRAPPE_CDC_REPLICA_PASSWORD).
    #[arg(long, env = "FRAPPE_CDC_REPLICA")]
    pub replica: String,
    /// File holding the replica password.
    #[arg(long, env = "FRAPPE_CDC_REPLICA_PASSWORD_FILE")]
    pub replica_password_file: Option<PathBuf>,
    /// Only this doctype.
    #[arg(long)]
    pub doctype: Option<String>,
    #[command(flatten)]
    pub doctypes: DoctypeArgs,
    /// Extra columns to ignore (repeatable).
    #[arg(long, env = "FRAPPE_CDC_IGNORE_COLUMN", value_delimiter = ',')]
    pub ignore_column: Vec<String>,
    /// Also check the replica site's files (this folder: sites/<site>) against its File
    /// rows: missing and different files fail, extra files are listed.
    #[arg(long, env = "FRAPPE_CDC_FILES")]
    pub files: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "FRAPPE_CDC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How messages are spread over partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartitionBy {
    /// All documents of a doctype in one partition: per-doctype order, renames stay in order.
    Doctype,
    /// Kafka's default key hash: per-document order only.
    Document,
}

/// What a consumer of the topic can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Delivery {
    /// Kafka transactions: a `read_committed` consumer sees every source transaction once and
    /// whole, also after a crash of capture (needs a broker with transactions: Apache Kafka).
    ExactlyOnce,
    /// Idempotent producer without transactions: after a crash, envelopes after the last
    /// checkpoint are sent again (same source positions, so consumers can drop them).
    AtLeastOnce,
}

/// Parses `500ms`, `5s`, `2m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 500ms, 5s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m, h)")),
    };
    if !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// Flags of `capture` and `check`.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// TOML file with defaults for any flag (keys are the long flag names).
    #[arg(long, env = "FRAPPE_CDC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Primary database: mysql://user@host:port/site_db (password via FRAPPE_CDC_SOURCE_PASSWORD).
    #[arg(long, env = "FRAPPE_CDC_SOURCE")]
    pub source: String,
    /// File holding the source password.
    #[arg(long, env = "FRAPPE_CDC_SOURCE_PASSWORD_FILE")]
    pub source_password_file: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "FRAPPE_CDC_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic for document envelopes (created if missing).
    #[arg(long, env = "FRAPPE_CDC_TOPIC", default_value = "frappe-cdc")]
    pub topic: String,
    /// Partitions when the topic is created.
    #[arg(long, env = "FRAPPE_CDC_PARTITIONS", default_value_t = 1)]
    pub partitions: i32,
    /// Replicas of each partition when the topic is created (-1: the brokers'
    /// default.replication.factor). Use 3 on a production cluster.
    #[arg(long, visible_alias = "replication-factor", env = "FRAPPE_CDC_TOPIC_REPLICATION", default_value_t = -1, allow_negative_numbers = true)]
    pub topic_replication: i32,
    /// Topic config key=value when the topic is created (repeatable), e.g.
    /// min.insync.replicas=2, cleanup.policy=compact, retention.ms=604800000.
    #[arg(long, env = "FRAPPE_CDC_TOPIC_CONFIG", value_parser = parse_kv, value_delimiter = ';')]
    pub topic_config: Vec<(String, String)>,
    /// Partitioning of messages.
    #[arg(long, env = "FRAPPE_CDC_PARTITION_BY", value_enum, default_value_t = PartitionBy::Doctype)]
    pub partition_by: PartitionBy,
    /// Delivery guarantee on the topic (exactly-once needs Kafka transactions).
    #[arg(long, env = "FRAPPE_CDC_DELIVERY", value_enum, default_value_t = Delivery::ExactlyOnce)]
    pub delivery: Delivery,
    /// transactional.id of the exactly-once producer (default frappe-cdc.<topic>.<server-id>).
    /// A capture started with the id of a running one fences it: run one capture per id.
    #[arg(long, env = "FRAPPE_CDC_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,
    /// Directory of the durable state store and checkpoint.
    #[arg(
        long,
        env = "FRAPPE_CDC_STATE_DIR",
        default_value = "./frappe-cdc-state"
    )]
    pub state_dir: PathBuf,
    /// Replica server_id used for the binlog dump; must be unique among the primary's replicas.
    #[arg(long, env = "FRAPPE_CDC_SERVER_ID")]
    pub server_id: u32,
    #[command(flatten)]
    pub doctypes: DoctypeArgs,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(
        long,
        env = "FRAPPE_CDC_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: SocketAddr,
    /// Binlog heartbeat period; the connection is considered dead after three missed ones.
    #[arg(long, env = "FRAPPE_CDC_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// How often the position is made durable (after Kafka acknowledged everything before it).
    #[arg(long, env = "FRAPPE_CDC_CHECKPOINT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    #[command(flatten)]
    pub kafka: KafkaClientArgs,
    /// Messages sent but not yet acknowledged before sending blocks.
    #[arg(long, env = "FRAPPE_CDC_MAX_IN_FLIGHT", default_value_t = 50_000)]
    pub max_in_flight: u64,
    /// Documents of one transaction kept in memory before spilling to the state store.
    #[arg(long, env = "FRAPPE_CDC_SPILL_AT", default_value_t = 10_000)]
    pub spill_at: usize,
    /// Log format.
    #[arg(long, env = "FRAPPE_CDC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Stop at the end of the binlog instead of waiting (tests, benchmarks).
    #[arg(long, hide = true, env = "FRAPPE_CDC_STOP_AT_END")]
    pub stop_at_end: bool,
}

/// The doctype filter shared by capture, apply and verify.
#[derive(Debug, Clone, Default, Args)]
pub struct DoctypeArgs {
    /// Only these doctypes (repeatable; env: comma-separated).
    #[arg(long, env = "FRAPPE_CDC_INCLUDE_DOCTYPE", value_delimiter = ',')]
    pub include_doctype: Vec<String>,
    /// Never these doctypes (repeatable; env: comma-separated).
    #[arg(long, env = "FRAPPE_CDC_EXCLUDE_DOCTYPE", value_delimiter = ',')]
    pub exclude_doctype: Vec<String>,
    /// Also these doctypes, beside the default set (repeatable; e.g. File, for attachments).
    #[arg(long, env = "FRAPPE_CDC_ADD_DOCTYPE", value_delimiter = ',')]
    pub add_doctype: Vec<String>,
}

/// librdkafka settings shared by capture and apply (every client of the process gets them:
/// producer, consumer, admin, dead-letter producer).
#[derive(Debug, Clone, Default, Args)]
pub struct KafkaClientArgs {
    /// Extra librdkafka setting key=value (repeatable): security.protocol, sasl.*, ssl.*,
    /// client.id, producer or consumer tuning, …
    #[arg(long, env = "FRAPPE_CDC_KAFKA_OPTION", value_parser = parse_kv, value_delimiter = ';')]
    pub kafka_option: Vec<(String, String)>,
    /// File of librdkafka settings, key=value a line (SASL and TLS secrets belong here, not
    /// in argv); --kafka-option entries override it.
    #[arg(long, env = "FRAPPE_CDC_KAFKA_CONFIG")]
    pub kafka_config: Option<PathBuf>,
}

/// Flags of `apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// TOML file with defaults for any flag (keys are the long flag names) and the conflict
    /// policies (a [conflicts] table).
    #[arg(long, env = "FRAPPE_CDC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Replica database: mysql://user@host:port/site_db (password via FRAPPE_CDC_REPLICA_PASSWORD).
    #[arg(long, env = "FRAPPE_CDC_REPLICA")]
    pub replica: String,
    /// File holding the replica password.
    #[arg(long, env = "FRAPPE_CDC_REPLICA_PASSWORD_FILE")]
    pub replica_password_file: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "FRAPPE_CDC_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic of document envelopes.
    #[arg(long, env = "FRAPPE_CDC_TOPIC", default_value = "frappe-cdc")]
    pub topic: String,
    /// The replica's name: its consumer group, and the key of its stored offsets.
    #[arg(long, env = "FRAPPE_CDC_GROUP")]
    pub group: String,
    #[command(flatten)]
    pub doctypes: DoctypeArgs,
    /// Only documents of DocType whose parent row has these values:
    /// 'Sales Invoice:{"company": "Acme"}' (repeatable; others are counted as filtered).
    #[arg(long = "filter", env = "FRAPPE_CDC_FILTER", value_delimiter = ';')]
    pub filter: Vec<String>,
    /// Topic for messages that can never apply (default: <topic>.dead-letter).
    #[arg(long, env = "FRAPPE_CDC_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// Extra columns the conflict check ignores (repeatable), besides _seen, _comments,
    /// _assign, _liked_by, _user_tags.
    #[arg(long, env = "FRAPPE_CDC_IGNORE_COLUMN", value_delimiter = ',')]
    pub ignore_column: Vec<String>,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(
        long,
        env = "FRAPPE_CDC_METRICS_ADDR",
        default_value = "127.0.0.1:9465"
    )]
    pub metrics_addr: SocketAddr,
    /// Longest wait between retries of a transient replica failure.
    #[arg(long, env = "FRAPPE_CDC_MAX_BACKOFF", default_value = "30s", value_parser = parse_duration)]
    pub max_backoff: Duration,
    /// Most messages applied in one replica transaction (documents are read and written
    /// set-wise; renames, Singles and dead letters go one at a time).
    #[arg(long, env = "FRAPPE_CDC_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Replica connections a batch is split over; the parts run concurrently and commit in
    /// order, the last one with the offsets (1: one transaction per batch).
    #[arg(long, env = "FRAPPE_CDC_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub writers: u16,
    /// What a reader of the replica can see: `transaction` (each source transaction atomic,
    /// in source commit order; needs capture's progress markers; --writers split batches only
    /// between source transactions) or `document` (each document atomic).
    #[arg(long, env = "FRAPPE_CDC_CONSISTENCY", value_enum, default_value_t = crate::apply::config::Consistency::Transaction)]
    pub consistency: crate::apply::config::Consistency,
    /// With --consistency transaction: source transactions with more documents than this
    /// (and the initial snapshot) are applied in parts, and can be seen half-applied.
    #[arg(
        long,
        env = "FRAPPE_CDC_MAX_TRANSACTION_DOCS",
        default_value_t = 50_000
    )]
    pub max_transaction_docs: u64,
    /// With --consistency transaction: what a conflicting document does to the rest of its
    /// source transaction (skip-document: only it is skipped and recorded; hold-transaction:
    /// every document of the transaction is recorded and none applied).
    #[arg(long, env = "FRAPPE_CDC_ON_CONFLICT_IN_TRANSACTION", value_enum, default_value_t = crate::apply::config::OnConflictInTransaction::SkipDocument)]
    pub on_conflict_in_transaction: crate::apply::config::OnConflictInTransaction,
    #[command(flatten)]
    pub files: crate::files::args::FilesArgs,
    #[command(flatten)]
    pub kafka: KafkaClientArgs,
    /// Log format.
    #[arg(long, env = "FRAPPE_CDC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Errors reading the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: unknown key {key:?} (keys are the long flag names, e.g. brokers)")]
    UnknownKey { path: String, key: String },
    #[error("config file {path}: key {key:?} must be a string, number, boolean or array")]
    BadValue { path: String, key: String },
}

fn toml_scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses argv, filling flags not given on the command line or in the environment from the
/// `--config` file.
pub fn parse_from(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
    let cmd = Cli::command();
    // First pass tolerates missing required flags: the config file may supply them.
    let pre = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv)?;
    let extra = match pre.subcommand() {
        Some((sub, sm)) => match sm.get_one::<PathBuf>("config").cloned() {
            Some(path) => config_args(&cmd, sub, sm, &path).map_err(|e| {
                cmd.clone()
                    .error(clap::error::ErrorKind::InvalidValue, e.to_string())
            })?,
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    let mut argv2 = argv;
    argv2.extend(extra);
    let m2 = cmd.try_get_matches_from(&argv2)?;
    Cli::from_arg_matches(&m2)
}

fn config_args(
    cmd: &clap::Command,
    sub: &str,
    sm: &clap::ArgMatches,
    path: &PathBuf,
) -> Result<Vec<OsString>, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: p.clone(),
        source: e,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: p.clone(),
            message: e.message().to_string(),
        })?;
    let subcmd = cmd
        .find_subcommand(sub)
        .ok_or_else(|| ConfigError::UnknownKey {
            path: p.clone(),
            key: sub.to_string(),
        })?;
    let mut out = Vec::new();
    for (key, value) in &table {
        // Apply's conflict policies (`apply::policy`), read by apply itself.
        if key == "conflicts" && value.is_table() {
            continue;
        }
        let arg = subcmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) || a.get_id().as_str() == key.as_str())
            .filter(|a| a.get_id() != "config")
            .ok_or_else(|| ConfigError::UnknownKey {
                path: p.clone(),
                key: key.clone(),
            })?;
        let id = arg.get_id().as_str();
        let given = matches!(
            sm.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let long = format!("--{}", arg.get_long().unwrap_or(id));
        let values: Vec<String> = match value {
            toml::Value::Array(a) => a
                .iter()
                .map(toml_scalar)
                .collect::<Option<_>>()
                .ok_or_else(|| ConfigError::BadValue {
                    path: p.clone(),
                    key: key.clone(),
                })?,
            v => vec![toml_scalar(v).ok_or_else(|| ConfigError::BadValue {
                path: p.clone(),
                key: key.clone(),
            })?],
        };
        let is_flag = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        for v in values {
            if is_flag {
                if v == "true" {
                    out.push(OsString::from(&long));
                }
            } else {
                out.push(OsString::from(format!("{long}={v}")));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    /// Every flag reads the environment variable FRAPPE_CDC_<FLAG> and no other (operators
    /// derive one from the other; a stray name is silently ignored).
    #[test]
    fn every_env_variable_is_named_after_its_flag() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let mut seen = 0;
        for sub in cmd.get_subcommands() {
            let mut subs = vec![sub];
            subs.extend(sub.get_subcommands());
            for c in subs {
                for a in c.get_arguments() {
                    let (Some(long), Some(env)) = (a.get_long(), a.get_env()) else {
                        continue;
                    };
                    let want = format!("FRAPPE_CDC_{}", long.to_uppercase().replace('-', "_"));
                    assert_eq!(
                        env.to_str(),
                        Some(want.as_str()),
                        "{} --{long}",
                        c.get_name()
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 50, "{seen}");
    }

    #[test]
    fn replication_factor_is_an_alias_of_topic_replication() {
        for flag in ["--replication-factor", "--topic-replication"] {
            let cli = parse_from(argv(&[
                "frappe-cdc",
                "capture",
                "--source",
                "mysql://u@h:1/d",
                "--server-id",
                "5",
                flag,
                "3",
            ]))
            .unwrap();
            let Command::Capture(a) = cli.command else {
                panic!("capture expected")
            };
            assert_eq!(a.topic_replication, 3, "{flag}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn config_file_fills_missing_flags_only() {
        let dir = std::env::temp_dir().join(format!("frappe-cdc-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "brokers = \"10.0.0.1:9092\"\ntopic = \"from-file\"\nserver-id = 77\ninclude-doctype = [\"Customer\", \"Item\"]\nsource = \"mysql://u@h:1/db\"\n").unwrap();
        let cli = parse_from(argv(&[
            "frappe-cdc",
            "capture",
            "--config",
            f.to_str().unwrap(),
            "--topic",
            "cli",
        ]))
        .unwrap();
        let Command::Capture(a) = cli.command else {
            panic!("capture expected")
        };
        assert_eq!(a.brokers, "10.0.0.1:9092");
        assert_eq!(a.topic, "cli", "command line wins over the file");
        assert_eq!(a.server_id, 77);
        assert_eq!(a.doctypes.include_doctype, vec!["Customer", "Item"]);
        std::fs::write(&f, "bogus = 1\n").unwrap();
        let err = parse_from(argv(&[
            "frappe-cdc",
            "capture",
            "--config",
            f.to_str().unwrap(),
            "--source",
            "mysql://u@h:1/d",
            "--server-id",
            "5",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("unknown key"), "{err}");
    }
}

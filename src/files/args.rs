//! The `--files-*` flags of `apply`, and the fetcher settings they make.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::fetch::FilesConfig;
use super::source::{FilesFrom, HttpOptions};
use super::store::SiteDir;
use crate::cli::parse_duration;

/// Copying attachments (README, "Attachments").
#[derive(Debug, Clone, Args)]
pub struct FilesArgs {
    /// Where the primary's files come from: https://<primary site> (public files plainly,
    /// private ones with the API token), or path:<the primary's sites/<site> folder>.
    #[arg(long, env = "FRAPPE_CDC_FILES_FROM", requires = "files_to")]
    pub files_from: Option<String>,
    /// The replica site's folder (sites/<site>): files land in public/files and
    /// private/files, at the primary's paths.
    #[arg(long, env = "FRAPPE_CDC_FILES_TO", requires = "files_from")]
    pub files_to: Option<PathBuf>,
    /// File holding `api_key:api_secret` of a Frappe API user on the primary (or set
    /// FRAPPE_CDC_FILES_TOKEN); needed for private files.
    #[arg(long, env = "FRAPPE_CDC_FILES_TOKEN_FILE")]
    pub files_token_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for --files-from https://.
    #[arg(long, env = "FRAPPE_CDC_FILES_CA_FILE")]
    pub files_ca_file: Option<PathBuf>,
    /// Largest file copied (Frappe's default limit: 25 MiB); larger ones are recorded as
    /// too_big.
    #[arg(long, env = "FRAPPE_CDC_FILES_MAX_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub files_max_bytes: u64,
    /// Files copied at once.
    #[arg(long, env = "FRAPPE_CDC_FILES_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub files_concurrency: u16,
    /// Remove the bytes of deleted Files when no replica File row has their hash (Frappe's
    /// rule); without it, bytes are kept.
    #[arg(long, env = "FRAPPE_CDC_FILES_GC")]
    pub files_gc: bool,
    /// First wait before a failed file is tried again (doubles, at most an hour).
    #[arg(long, env = "FRAPPE_CDC_FILES_RETRY", default_value = "10s", value_parser = parse_duration)]
    pub files_retry: Duration,
    /// Longest time one download may take.
    #[arg(long, env = "FRAPPE_CDC_FILES_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub files_timeout: Duration,
}

impl FilesArgs {
    /// The fetcher's settings, None without --files-from; an error names the flag to fix.
    pub fn config(&self) -> Result<Option<Arc<FilesConfig>>, String> {
        let (Some(from), Some(to)) = (&self.files_from, &self.files_to) else {
            return Ok(None);
        };
        if !to.is_dir() {
            return Err(format!(
                "--files-to {}: not a folder (give the replica's sites/<site> folder)",
                to.display()
            ));
        }
        let token = match &self.files_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("--files-token-file {}: {e}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("FRAPPE_CDC_FILES_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        let http = HttpOptions {
            token,
            ca_file: self.files_ca_file.clone(),
            connect_timeout: Duration::from_secs(10),
            timeout: self.files_timeout,
        };
        Ok(Some(Arc::new(FilesConfig {
            from: FilesFrom::parse(from, &http)?,
            to: SiteDir::new(to.clone()),
            max_bytes: self.files_max_bytes,
            concurrency: usize::from(self.files_concurrency),
            gc: self.files_gc,
            retry: self.files_retry,
        })))
    }
}

/// Flags of `files`.
#[derive(Debug, Clone, Args)]
pub struct FilesCommandArgs {
    #[command(flatten)]
    pub target: crate::cli::ReplicaToolArgs,
    #[command(flatten)]
    pub files: FilesArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: FilesAction,
}

/// `files` actions.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FilesAction {
    /// Copy now every file the replica's File rows need (rows without a status, failed
    /// ones at once); exit 1 when some could not be copied.
    Sync,
}

//! Connection options from a `mysql://user[:pass]@host:port/db` URL. A password given through
//! the environment or a file replaces the one in the URL, so it need not appear in argv. Every
//! SQL session uses UTC and utf8mb4 so snapshot and replica reads format values like the binlog.

use std::fmt;

use mysql_async::{Opts, OptsBuilder};

/// Errors in a connection URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("invalid connection url {url}: {reason} (expected mysql://user@host:port/database)")]
    Invalid { url: String, reason: String },
    #[error("connection url {url} names no database: add /<site database> at the end")]
    NoDatabase { url: String },
}

/// A parsed connection target.
#[derive(Clone)]
pub struct DbTarget {
    pub opts: Opts,
    pub database: String,
    redacted: String,
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..s + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// I11 (ARCHITECTURE.md). The session every connection of frappe-cdc runs in, set on connect and again after each
/// pool reset (`setup`, not `init`: a pooled connection is reset to the server's defaults when
/// it is returned, which would drop an `init` setting from its second use on):
/// - `time_zone` UTC: TIMESTAMP values are read and written as the binlog carries them;
/// - utf8mb4 for everything sent and received;
/// - a pinned `sql_mode`: strict (a value the column cannot hold is an error, not a silent
///   truncation), and without `NO_BACKSLASH_ESCAPES`, so backslash escapes in statements and
///   in `LOAD DATA` mean the same on every replica whatever its global mode.
pub const SESSION_SETUP: &str = "SET time_zone = '+00:00', \
     character_set_client = utf8mb4, character_set_connection = utf8mb4, \
     character_set_results = utf8mb4, collation_connection = utf8mb4_unicode_ci, \
     sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'";

impl DbTarget {
    /// Parses `url`; `password` (from env or file) overrides the URL's.
    pub fn parse(url: &str, password: Option<&str>) -> Result<DbTarget, UrlError> {
        let redacted = redact(url);
        let opts = Opts::from_url(url).map_err(|e| UrlError::Invalid {
            url: redacted.clone(),
            reason: e.to_string(),
        })?;
        let database = opts.db_name().map(str::to_string).filter(|d| !d.is_empty());
        let Some(database) = database else {
            return Err(UrlError::NoDatabase { url: redacted });
        };
        let mut b = OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .setup(vec![SESSION_SETUP])
            .wait_timeout(Some(28_800));
        if let Some(p) = password {
            b = b.pass(Some(p.to_string()));
        }
        Ok(DbTarget {
            opts: b.into(),
            database,
            redacted,
        })
    }
}

/// Reads a password from a file (trailing newline removed).
pub fn read_password_file(path: &std::path::Path) -> std::io::Result<String> {
    let s = std::fs::read_to_string(path)?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let t = DbTarget::parse("mysql://cdc:s3cret@127.0.0.1:3307/site1", None).unwrap();
        assert_eq!(t.database, "site1");
        assert_eq!(t.to_string(), "mysql://cdc@127.0.0.1:3307/site1");
        assert!(!format!("{t:?}").contains("s3cret"));
        let t = DbTarget::parse("mysql://cdc@127.0.0.1:3307/site1", Some("pw")).unwrap();
        assert_eq!(t.opts.pass(), Some("pw"));
        assert!(matches!(
            DbTarget::parse("mysql://cdc@127.0.0.1:3307", None),
            Err(UrlError::NoDatabase { .. })
        ));
        assert!(DbTarget::parse("nonsense", None).is_err());
    }
}

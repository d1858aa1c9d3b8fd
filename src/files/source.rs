//! Where file bytes come from (`--files-from`): the primary site's web server, or its folder.
//!
//! * `https://site.example` (or `http://`): public files by plain `GET /files/<x>`, private
//!   ones by `GET /private/files/<x>?fid=<File name>` with `Authorization: token key:secret`
//!   (Frappe's API-key auth; the key pair comes from the environment or a file and is never
//!   logged). Bodies are streamed chunk by chunk, never held whole. TLS uses the system's
//!   roots plus an optional CA file; connect and whole-request timeouts apply.
//! * `path:/mounted/primary/sites/<site>`: a shared or rsynced copy of the primary's site
//!   folder, read in chunks.
//!
//! Every answer is classified: 404 (or an absent file) is `Missing` — normal when the row was
//! deleted on the primary later —, 401/403 `Denied` (a key without read permission), other
//! failures `Transient`. All are retried with backoff by the caller; none blocks the stream.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::plan::{SitePath, percent_encode};

/// Why bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the primary has no such file (404)")]
    Missing,
    #[error(
        "the primary refused the download ({0}): the API key needs read permission on the attached document (System Manager)"
    )]
    Denied(String),
    #[error("{0}")]
    Transient(String),
}

/// A configured source (module docs).
#[derive(Clone)]
pub enum FilesFrom {
    Http {
        base: String,
        /// `token key:secret`, sent on private downloads only.
        auth: Option<String>,
        client: reqwest::Client,
    },
    Folder(PathBuf),
}

impl std::fmt::Debug for FilesFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilesFrom::Http { base, auth, .. } => f
                .debug_struct("Http")
                .field("base", base)
                .field("auth", &auth.as_ref().map(|_| "<redacted>"))
                .finish(),
            FilesFrom::Folder(p) => f.debug_tuple("Folder").field(p).finish(),
        }
    }
}

/// How to reach the primary's web server.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// `key:secret` of a Frappe API user.
    pub token: Option<String>,
    /// A PEM file of extra trusted CA certificates.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// For a whole download (a 25 MiB file on a slow link needs minutes).
    pub timeout: Duration,
}

/// An open body, read chunk by chunk.
pub enum Body {
    Http(reqwest::Response),
    File(tokio::fs::File, Vec<u8>),
}

impl Body {
    /// The size announced up front, when known.
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            Body::Http(r) => r.content_length(),
            Body::File(..) => None,
        }
    }

    /// The next chunk; None at the end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, FetchError> {
        match self {
            Body::Http(r) => r
                .chunk()
                .await
                .map_err(|e| FetchError::Transient(format!("reading the download: {e}"))),
            Body::File(f, buf) => {
                let n = f
                    .read(buf)
                    .await
                    .map_err(|e| FetchError::Transient(format!("reading the file: {e}")))?;
                Ok((n > 0).then(|| bytes::Bytes::copy_from_slice(&buf[..n])))
            }
        }
    }
}

impl FilesFrom {
    /// Parses `--files-from` (module docs).
    pub fn parse(spec: &str, http: &HttpOptions) -> Result<FilesFrom, String> {
        if let Some(p) = spec.strip_prefix("path:") {
            let root = PathBuf::from(p);
            if !root.is_dir() {
                return Err(format!(
                    "--files-from {spec}: not a folder (give the primary's sites/<site> folder)"
                ));
            }
            return Ok(FilesFrom::Folder(root));
        }
        let lower = spec.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(format!(
                "--files-from {spec}: expected https://<primary site> or path:<primary sites/<site> folder>"
            ));
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(http.connect_timeout)
            .timeout(http.timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("frappe-cdc/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &http.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("--files-ca-file {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "--files-ca-file {}: not PEM certificates: {e}",
                    ca.display()
                )
            })?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| format!("--files-from {spec}: cannot build the HTTP client: {e}"))?;
        let auth = match &http.token {
            Some(t) if !t.contains(':') => {
                return Err("the files API token must be `api_key:api_secret`".into());
            }
            Some(t) => Some(format!("token {}", t.trim())),
            None => None,
        };
        Ok(FilesFrom::Http {
            base: spec.trim_end_matches('/').to_string(),
            auth,
            client,
        })
    }

    /// Opens the bytes of File `fid` at `path` on the primary.
    pub async fn open(&self, path: &SitePath, fid: &str) -> Result<Body, FetchError> {
        match self {
            FilesFrom::Folder(root) => {
                let p = root.join(path.on_disk());
                match tokio::fs::File::open(&p).await {
                    Ok(f) => Ok(Body::File(f, vec![0u8; 256 * 1024])),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FetchError::Missing),
                    Err(e) => Err(FetchError::Transient(format!(
                        "opening the primary's file: {e}"
                    ))),
                }
            }
            FilesFrom::Http { base, auth, client } => {
                let mut url = format!("{base}{}", path.url_path());
                let mut req = client.get(&url);
                if path.private {
                    url.push_str("?fid=");
                    url.push_str(&percent_encode(fid));
                    req = client.get(&url);
                    if let Some(a) = auth {
                        req = req.header(reqwest::header::AUTHORIZATION, a);
                    }
                }
                let resp = req.send().await.map_err(|e| {
                    FetchError::Transient(format!(
                        "requesting {}: {}",
                        path.url_path(),
                        e.without_url()
                    ))
                })?;
                match resp.status().as_u16() {
                    200 => Ok(Body::Http(resp)),
                    404 => Err(FetchError::Missing),
                    s @ (401 | 403) => Err(FetchError::Denied(format!("HTTP {s}"))),
                    s => Err(FetchError::Transient(format!(
                        "HTTP {s} for {}",
                        path.url_path()
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_the_token_never_shows() {
        let http = HttpOptions {
            token: Some("k:s3cret".into()),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            ..HttpOptions::default()
        };
        let s = FilesFrom::parse("https://erp.example.com/", &http).expect("https");
        let shown = format!("{s:?}");
        assert!(shown.contains("erp.example.com") && !shown.contains("s3cret"));
        assert!(FilesFrom::parse("ftp://x", &http).is_err());
        assert!(FilesFrom::parse("path:/definitely/not/here", &http).is_err());
        let bad = HttpOptions {
            token: Some("no-colon".into()),
            ..http.clone()
        };
        assert!(FilesFrom::parse("https://x", &bad).is_err());
        assert_eq!(percent_encode("a b/c&d"), "a%20b%2Fc%26d");
    }
}

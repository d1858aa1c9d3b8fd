//! A primary Frappe site's file routes on loopback, for the attachment tests: one small
//! HTTP/1.1 server doing what bench's nginx and Frappe do for files.
//!
//! * `GET /files/<x>`: `public/files/<x>` of the site folder, no authentication (nginx's
//!   `try_files`).
//! * `GET /private/files/<x>?fid=<File name>`: only with `Authorization: token key:secret`
//!   matching the site's API key, and only when the primary has a File row with that name and
//!   that `file_url` (Frappe's `find_file_by_url` + permission check); 403 otherwise.
//! * 404 for a file that is not on disk; the body is streamed from disk in chunks with a
//!   `Content-Length`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mysql_async::prelude::Queryable;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A running server (stopped when dropped).
pub struct SiteServer {
    pub base: String,
    pub site: PathBuf,
    pub token: String,
    /// Requests answered, by status class: (200, 403, 404).
    pub served: Arc<[AtomicU64; 3]>,
    /// Milliseconds to wait after each 64 KiB of a body (0: full speed), to catch a
    /// download in the middle.
    pub throttle_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SiteServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl SiteServer {
    /// Serves `site` (a primary's `sites/<site>` folder); private downloads are checked
    /// against the File rows of `primary` (a pool on the primary's site database).
    pub async fn start(site: PathBuf, primary: mysql_async::Pool, token: &str) -> SiteServer {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", l.local_addr().expect("addr"));
        let served: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let throttle_ms = Arc::new(AtomicU64::new(0));
        let (root, tok, counts) = (site.clone(), token.to_string(), Arc::clone(&served));
        let throttle = Arc::clone(&throttle_ms);
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = l.accept().await else {
                    return;
                };
                let (root, tok, counts, pool) = (
                    root.clone(),
                    tok.clone(),
                    Arc::clone(&counts),
                    primary.clone(),
                );
                let throttle = Arc::clone(&throttle);
                tokio::spawn(async move {
                    let _ = serve_one(sock, root, tok, counts, pool, throttle).await;
                });
            }
        });
        SiteServer {
            base,
            site,
            token: token.to_string(),
            served,
            throttle_ms,
            task,
        }
    }

    pub fn count(&self, status: u16) -> u64 {
        let i = match status {
            200 => 0,
            403 => 1,
            _ => 2,
        };
        self.served[i].load(Ordering::Relaxed)
    }
}

async fn serve_one(
    sock: tokio::net::TcpStream,
    root: PathBuf,
    token: String,
    counts: Arc<[AtomicU64; 3]>,
    pool: mysql_async::Pool,
    throttle: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(sock);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut auth = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.trim().eq_ignore_ascii_case("authorization")
            {
                auth = Some(v.trim().to_string());
            }
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let Some(path) = decode(path) else {
            respond(&mut r, 404, None, &throttle).await?;
            continue;
        };
        let (private, rel) = if let Some(rel) = path.strip_prefix("/private/files/") {
            (true, rel.to_string())
        } else if let Some(rel) = path.strip_prefix("/files/") {
            (false, rel.to_string())
        } else {
            respond(&mut r, 404, None, &throttle).await?;
            counts[2].fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            respond(&mut r, 404, None, &throttle).await?;
            counts[2].fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if private {
            let fid = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("fid="))
                .and_then(decode)
                .unwrap_or_default();
            let authorized = auth.as_deref() == Some(&format!("token {token}"));
            let mut valid = false;
            if authorized && let Ok(mut c) = pool.get_conn().await {
                let n: Option<u64> = c
                    .exec_first(
                        "SELECT COUNT(*) FROM `tabFile` WHERE name = ? AND file_url = ?",
                        (&fid, &path),
                    )
                    .await
                    .unwrap_or(None);
                valid = n.unwrap_or(0) > 0;
            }
            if !valid {
                respond(&mut r, 403, None, &throttle).await?;
                counts[1].fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        let file = root
            .join(if private {
                "private/files"
            } else {
                "public/files"
            })
            .join(&rel);
        match tokio::fs::File::open(&file).await {
            Ok(f) => {
                let len = f.metadata().await?.len();
                respond(&mut r, 200, Some((f, len)), &throttle).await?;
                counts[0].fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                respond(&mut r, 404, None, &throttle).await?;
                counts[2].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn respond(
    r: &mut BufReader<tokio::net::TcpStream>,
    status: u16,
    body: Option<(tokio::fs::File, u64)>,
    throttle: &AtomicU64,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        403 => "Forbidden",
        _ => "Not Found",
    };
    let len = body.as_ref().map_or(0, |(_, n)| *n);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let s = r.get_mut();
    s.write_all(head.as_bytes()).await?;
    if let Some((mut f, _)) = body {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await?;
            let ms = throttle.load(Ordering::Relaxed);
            if ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
        }
    }
    s.flush().await
}

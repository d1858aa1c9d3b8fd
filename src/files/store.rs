//! Writing a file's bytes into the replica site's folder so that the final path only ever
//! holds complete, checked bytes.
//!
//! The bytes go to a temporary file in the same folder (`.<name>.<random>.frappe-cdc-part`),
//! counted and hashed (MD5, Frappe's `content_hash`) as they arrive; past `max_bytes` the
//! write stops. `finish` fsyncs it, compares the hash when the row has one, and only then
//! renames it over the final path and fsyncs the folder. A temporary file is removed when its
//! writer is dropped unfinished; one left by a crash (kill -9) is never at a final path and is
//! swept by `sweep` when apply starts. The disk write cannot join the replica transaction:
//! the row commits first and the bytes follow (a status row records what is pending).

use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;

use super::plan::SitePath;

/// The suffix of temporary files (never a name Frappe gives a file).
const PART: &str = ".frappe-cdc-part";

/// How a write ended, when it did not fail on I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The final path now holds the bytes (MD5 `md5`, `bytes` long).
    Placed { md5: String, bytes: u64 },
    /// The bytes' MD5 is not the row's `content_hash`: nothing was placed.
    Mismatch { got: String },
    /// Over `max_bytes`: nothing was placed.
    TooBig,
}

/// The replica site's folder (`sites/<site>`).
#[derive(Debug, Clone)]
pub struct SiteDir {
    root: PathBuf,
}

/// The MD5 of a file as lowercase hex, streaming; None when it does not exist.
pub async fn md5_of(path: &Path) -> std::io::Result<Option<String>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut h = Md5::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(Some(hex(&h.finalize())))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl SiteDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SiteDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `p` on this site.
    pub fn path(&self, p: &SitePath) -> PathBuf {
        self.root.join(p.on_disk())
    }

    /// Starts writing the bytes for `p` (creating its folder).
    pub async fn begin(&self, p: &SitePath, max_bytes: u64) -> std::io::Result<Partial> {
        let target = self.path(p);
        let dir = target
            .parent()
            .ok_or_else(|| std::io::Error::other("a file path without a folder"))?
            .to_path_buf();
        tokio::fs::create_dir_all(&dir).await?;
        let base = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let nonce: u64 = rand_u64();
        let tmp = dir.join(format!(".{base}.{nonce:016x}{PART}"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await?;
        Ok(Partial {
            tmp: Some(tmp),
            target,
            dir,
            file: Some(file),
            md5: Md5::new(),
            bytes: 0,
            max_bytes,
            over: false,
        })
    }

    /// Removes temporary files a crash left under `public/files` and `private/files`;
    /// returns how many.
    pub async fn sweep(&self) -> std::io::Result<usize> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            for top in ["public/files", "private/files"] {
                let mut stack = vec![root.join(top)];
                while let Some(dir) = stack.pop() {
                    let Ok(rd) = std::fs::read_dir(&dir) else {
                        continue;
                    };
                    for e in rd.flatten() {
                        let p = e.path();
                        let ft = e.file_type()?;
                        if ft.is_dir() {
                            stack.push(p);
                        } else if ft.is_file()
                            && p.file_name()
                                .is_some_and(|f| f.to_string_lossy().ends_with(PART))
                        {
                            std::fs::remove_file(&p)?;
                            n += 1;
                        }
                    }
                }
            }
            Ok(n)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// A few random bits for temporary names (the clock and the process id, hashed): names only
/// need to differ between concurrent writers of one process and from a crashed one.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Bytes on their way to a final path (module docs).
#[derive(Debug)]
pub struct Partial {
    tmp: Option<PathBuf>,
    target: PathBuf,
    dir: PathBuf,
    file: Option<tokio::fs::File>,
    md5: Md5,
    bytes: u64,
    max_bytes: u64,
    over: bool,
}

impl Partial {
    /// Appends a chunk; false once the file is over `max_bytes` (stop sending).
    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<bool> {
        if self.over {
            return Ok(false);
        }
        self.bytes += chunk.len() as u64;
        if self.bytes > self.max_bytes {
            self.over = true;
            return Ok(false);
        }
        self.md5.update(chunk);
        if let Some(f) = self.file.as_mut() {
            f.write_all(chunk).await?;
        }
        Ok(true)
    }

    /// Checks and places the bytes (module docs); `expected`: the row's MD5, when it has one.
    pub async fn finish(mut self, expected: Option<&str>) -> std::io::Result<Finished> {
        if self.over {
            return Ok(Finished::TooBig);
        }
        let got = hex(&std::mem::take(&mut self.md5).finalize());
        if expected.is_some_and(|e| !e.eq_ignore_ascii_case(&got)) {
            return Ok(Finished::Mismatch { got });
        }
        if let Some(mut f) = self.file.take() {
            f.flush().await?;
            f.sync_all().await?;
        }
        let Some(tmp) = self.tmp.take() else {
            return Err(std::io::Error::other("a finished write finished again"));
        };
        if let Err(e) = tokio::fs::rename(&tmp, &self.target).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        // The rename itself is durable once the folder is synced.
        if let Ok(d) = tokio::fs::File::open(&self.dir).await {
            let _ = d.sync_all().await;
        }
        Ok(Finished::Placed {
            md5: got,
            bytes: self.bytes,
        })
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "frappe-cdc-files-{tag}-{}-{:x}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    fn public(rel: &str) -> SitePath {
        SitePath::from_url(&format!("/files/{rel}")).expect("path")
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(PART))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn bytes_reach_the_final_path_only_when_checked() {
        let site = SiteDir::new(scratch("place"));
        let p = public("a.txt");
        let md5_hello = "5d41402abc4b2a76b9719d911017c592";
        let mut w = site.begin(&p, 100).await.expect("begin");
        assert!(w.write(b"hel").await.expect("write"));
        assert!(w.write(b"lo").await.expect("write"));
        assert!(
            !site.path(&p).exists(),
            "nothing at the final path while writing"
        );
        assert_eq!(
            w.finish(Some(md5_hello)).await.expect("finish"),
            Finished::Placed {
                md5: md5_hello.into(),
                bytes: 5
            }
        );
        assert_eq!(std::fs::read(site.path(&p)).expect("read"), b"hello");
        assert_eq!(
            md5_of(&site.path(&p)).await.expect("md5"),
            Some(md5_hello.into())
        );

        // A wrong hash leaves the final path as it was, and no temporary file behind.
        let mut w = site.begin(&p, 100).await.expect("begin");
        w.write(b"other").await.expect("write");
        assert!(matches!(
            w.finish(Some(md5_hello)).await.expect("finish"),
            Finished::Mismatch { .. }
        ));
        assert_eq!(std::fs::read(site.path(&p)).expect("read"), b"hello");
        let dir = site.root().join("public/files");
        assert!(leftovers(&dir).is_empty());

        // Too big: stops, places nothing.
        let q = public("big.bin");
        let mut w = site.begin(&q, 4).await.expect("begin");
        assert!(!w.write(b"12345").await.expect("write"));
        assert_eq!(w.finish(None).await.expect("finish"), Finished::TooBig);
        assert!(!site.path(&q).exists());
        assert!(leftovers(&dir).is_empty());
        let _ = std::fs::remove_dir_all(site.root());
    }

    #[tokio::test]
    async fn a_crash_leaves_only_temporary_files_which_sweep_removes() {
        let site = SiteDir::new(scratch("sweep"));
        let p = SitePath::from_url("/private/files/sub/x.pdf").expect("path");
        let mut w = site.begin(&p, 100).await.expect("begin");
        w.write(b"half").await.expect("write");
        // A crash: the writer is never dropped.
        std::mem::forget(w);
        assert!(!site.path(&p).exists());
        let dir = site.root().join("private/files/sub");
        assert_eq!(leftovers(&dir).len(), 1);
        assert_eq!(site.sweep().await.expect("sweep"), 1);
        assert!(leftovers(&dir).is_empty());
        assert_eq!(md5_of(&site.path(&p)).await.expect("md5"), None);
        let _ = std::fs::remove_dir_all(site.root());
    }
}

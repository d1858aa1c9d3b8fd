//! What a `File` document's change means for the bytes on the replica's disk (pure, no I/O).
//!
//! Frappe keeps a file's bytes at `sites/<site>/public/files/<x>` for `file_url = /files/<x>`
//! and at `sites/<site>/private/files/<x>` for `/private/files/<x>`; Attach fields hold the URL
//! itself. Apply copies the `tabFile` row like any other, and this step decides whether the
//! bytes must be fetched so the replica holds them **at the same path** (no field is ever
//! rewritten): on an insert, or when `file_url`, `is_private` or `content_hash` changed.
//! Folders (`is_folder`) and remote URLs (`http(s)://…`, S3 apps) have no bytes here and are
//! skipped, counted by reason.
//!
//! A `file_url` is untrusted input: it becomes a path only when it is `/files/…` or
//! `/private/files/…` followed by plain path components (no `..`, `.`, empty component,
//! backslash or NUL), so no message can name a file outside the site's two folders.

use std::path::PathBuf;

use crate::image::{Image, Row};

/// Where a file lives on a site, relative to the site folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SitePath {
    pub private: bool,
    /// The path below `files/` (`invoice.pdf`, or `a/b.png`), components checked.
    pub rel: String,
}

impl SitePath {
    /// Parses a Frappe `file_url` into its site path; None for anything else (remote URLs,
    /// traversal, odd characters).
    pub fn from_url(url: &str) -> Option<SitePath> {
        let (private, rest) = if let Some(r) = url.strip_prefix("/private/files/") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("/files/") {
            (false, r)
        } else {
            return None;
        };
        let ok = !rest.is_empty()
            && rest
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\\', '\0']));
        ok.then(|| SitePath {
            private,
            rel: rest.to_string(),
        })
    }

    /// The path below the site folder: `public/files/<rel>` or `private/files/<rel>`.
    pub fn on_disk(&self) -> PathBuf {
        let mut p = PathBuf::from(if self.private { "private" } else { "public" });
        p.push("files");
        for c in self.rel.split('/') {
            p.push(c);
        }
        p
    }

    /// The `file_url` Frappe gives this path (`/files/<rel>` or `/private/files/<rel>`).
    pub fn url(&self) -> String {
        format!("{}/{}", self.folder_url(), self.rel)
    }

    fn folder_url(&self) -> &'static str {
        if self.private {
            "/private/files"
        } else {
            "/files"
        }
    }

    /// The URL path on the primary's web server, each component percent-encoded.
    pub fn url_path(&self) -> String {
        let mut out = String::from(self.folder_url());
        for c in self.rel.split('/') {
            out.push('/');
            out.push_str(&percent_encode(c));
        }
        out
    }
}

/// `s` with every byte but unreserved ones (RFC 3986) percent-encoded.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a File change needs no bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `is_folder = 1`.
    Folder,
    /// `http(s)://…`: stored elsewhere (S3 apps); nothing to copy.
    Remote,
    /// No `file_url`, or one that is not a site path (see the module docs).
    NoPath,
    /// `file_url`, `is_private` and `content_hash` unchanged.
    Unchanged,
}

impl Skip {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Skip::Folder => "folder",
            Skip::Remote => "remote",
            Skip::NoPath => "not_a_site_path",
            Skip::Unchanged => "unchanged",
        }
    }
}

/// What the bytes of one File document need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStep {
    /// Make `path` hold the file's bytes (`hash`: its MD5 when the row has one).
    Fetch {
        /// The File document's name (the `fid` of a private download).
        name: String,
        path: SitePath,
        hash: Option<String>,
        /// The path it had before (a move between public and private, or a new URL): the
        /// old bytes stay unless garbage collection is on and no row references their hash.
        moved_from: Option<SitePath>,
    },
    /// The document is gone: its bytes may be removed (only with `--files-gc`, and only
    /// when no replica File row has the same hash).
    Deleted {
        path: SitePath,
        hash: Option<String>,
    },
    Skip(Skip),
}

fn text<'a>(row: &'a Row, col: &str) -> Option<&'a str> {
    row.str(col).filter(|s| !s.is_empty())
}

fn flag(row: &Row, col: &str) -> bool {
    match row.get(col) {
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(0) != 0,
        Some(serde_json::Value::String(s)) => s.trim() != "0" && !s.trim().is_empty(),
        Some(serde_json::Value::Bool(b)) => *b,
        _ => false,
    }
}

/// A `content_hash` as lowercase hex when it looks like an MD5 (32 hex digits); anything
/// else cannot be checked and counts as absent.
pub fn md5_hash(h: &str) -> Option<String> {
    (h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
}

fn md5_hex(row: &Row) -> Option<String> {
    text(row, "content_hash").and_then(md5_hash)
}

/// The `file_url` of the newest image (for the status row of a skipped File).
pub fn url_of_images(before: Option<&Image>, after: Option<&Image>) -> Option<String> {
    after
        .or(before)
        .and_then(|i| i.parent.as_ref())
        .and_then(|r| text(r, "file_url"))
        .map(str::to_string)
}

/// The step for a File document going from `before` to `after` (None: absent).
pub fn file_step(name: &str, before: Option<&Image>, after: Option<&Image>) -> FileStep {
    let b = before.and_then(|i| i.parent.as_ref());
    let a = after.and_then(|i| i.parent.as_ref());
    let Some(a) = a else {
        // Deleted (or a message without rows): the old bytes may go.
        return match b.and_then(|b| text(b, "file_url").and_then(SitePath::from_url)) {
            Some(path) if !b.is_some_and(|b| flag(b, "is_folder")) => FileStep::Deleted {
                path,
                hash: b.and_then(md5_hex),
            },
            _ => FileStep::Skip(Skip::NoPath),
        };
    };
    if flag(a, "is_folder") {
        return FileStep::Skip(Skip::Folder);
    }
    let Some(url) = text(a, "file_url") else {
        return FileStep::Skip(Skip::NoPath);
    };
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return FileStep::Skip(Skip::Remote);
    }
    let Some(path) = SitePath::from_url(url) else {
        return FileStep::Skip(Skip::NoPath);
    };
    let hash = md5_hex(a);
    if let Some(b) = b {
        let same = text(b, "file_url") == Some(url)
            && flag(b, "is_private") == flag(a, "is_private")
            && md5_hex(b) == hash;
        if same {
            return FileStep::Skip(Skip::Unchanged);
        }
    }
    let moved_from = b
        .and_then(|b| text(b, "file_url").and_then(SitePath::from_url))
        .filter(|old| *old != path);
    FileStep::Fetch {
        name: name.to_string(),
        path,
        hash,
        moved_from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(cols: &[(&str, serde_json::Value)]) -> Image {
        let mut row = Row::default();
        for (k, v) in cols {
            row.insert(k.to_string(), v.clone());
        }
        Image {
            parent: Some(row),
            children: Default::default(),
        }
    }

    const H1: &str = "0123456789abcdef0123456789abcdef";
    const H2: &str = "fedcba9876543210fedcba9876543210";

    fn file(url: &str, private: i64, hash: &str) -> Image {
        img(&[
            ("file_url", url.into()),
            ("is_private", private.into()),
            ("content_hash", hash.into()),
            ("is_folder", 0.into()),
        ])
    }

    #[test]
    fn site_paths_accept_only_plain_components_under_the_two_folders() {
        let p = SitePath::from_url("/private/files/a b.pdf").expect("private");
        assert!(p.private);
        assert_eq!(p.on_disk(), PathBuf::from("private/files/a b.pdf"));
        assert_eq!(p.url_path(), "/private/files/a%20b.pdf");
        let p = SitePath::from_url("/files/sub/x.png").expect("nested");
        assert_eq!(p.on_disk(), PathBuf::from("public/files/sub/x.png"));
        for bad in [
            "/files/../site_config.json",
            "/files/a/../../x",
            "/files/./x",
            "/files/",
            "/files//x",
            "/files/a\\..\\b",
            "/files/a\0b",
            "/etc/passwd",
            "files/x",
            "/private/x",
            "https://s3/x",
        ] {
            assert_eq!(
                SitePath::from_url(bad),
                None,
                "{bad:?} must not become a path"
            );
        }
    }

    #[test]
    fn inserts_and_changes_of_url_privacy_or_hash_fetch() {
        let a = file("/files/x.png", 0, H1);
        assert!(matches!(
            file_step("F1", None, Some(&a)),
            FileStep::Fetch { moved_from: None, ref hash, .. } if hash.as_deref() == Some(H1)
        ));
        assert_eq!(
            file_step("F1", Some(&a), Some(&a)),
            FileStep::Skip(Skip::Unchanged)
        );
        let replaced = file("/files/x.png", 0, H2);
        assert!(matches!(
            file_step("F1", Some(&a), Some(&replaced)),
            FileStep::Fetch {
                moved_from: None,
                ..
            }
        ));
        let private = file("/private/files/x.png", 1, H1);
        match file_step("F1", Some(&a), Some(&private)) {
            FileStep::Fetch {
                path, moved_from, ..
            } => {
                assert!(path.private);
                assert_eq!(moved_from.map(|m| m.private), Some(false));
            }
            other => panic!("a move fetches: {other:?}"),
        }
    }

    #[test]
    fn folders_remote_and_odd_urls_are_skipped_and_deletes_name_the_old_bytes() {
        let folder = img(&[("is_folder", 1.into()), ("file_url", "".into())]);
        assert_eq!(
            file_step("Home", None, Some(&folder)),
            FileStep::Skip(Skip::Folder)
        );
        let remote = file("HTTPS://bucket.s3/x.png", 0, "");
        assert_eq!(
            file_step("F2", None, Some(&remote)),
            FileStep::Skip(Skip::Remote)
        );
        let odd = file("/files/../../etc/passwd", 0, H1);
        assert_eq!(
            file_step("F3", None, Some(&odd)),
            FileStep::Skip(Skip::NoPath)
        );
        let a = file("/files/x.png", 0, "not-a-hash");
        match file_step("F4", Some(&a), None) {
            FileStep::Deleted { path, hash } => {
                assert_eq!(path.rel, "x.png");
                assert_eq!(hash, None, "a hash that is not an MD5 cannot be checked");
            }
            other => panic!("a delete: {other:?}"),
        }
        let uppercase = file("/files/y.png", 0, &H1.to_ascii_uppercase());
        assert!(matches!(
            file_step("F5", None, Some(&uppercase)),
            FileStep::Fetch { ref hash, .. } if hash.as_deref() == Some(H1)
        ));
    }
}

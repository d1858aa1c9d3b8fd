//! `verify --files <replica site folder>`: the replica's files against its File rows.
//!
//! Every File row that is not a folder and has a site path is checked: the file must exist
//! and, when the row has an MD5 `content_hash`, hash to it. Rows that `_frappe_cdc_files`
//! already records as not copied (missing on the primary, mismatch, too big, denied,
//! collision, pending, error) are listed as known, not as failures, the way open conflicts are
//! for documents. Files under `public/files` and `private/files` that no File row references
//! are listed as extra (Frappe itself can leave such orphans, e.g. after a rolled-back upload):
//! reported, not a failure. Read-only.

use std::collections::BTreeSet;
use std::path::Path;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::plan::{SitePath, md5_hash};
use super::store::{SiteDir, md5_of};

/// What `verify --files` found.
#[derive(Debug, Default)]
pub struct FilesReport {
    pub equal: u64,
    /// Rows without bytes to check (remote URLs, odd URLs).
    pub unchecked: u64,
    /// (File name, file_url)
    pub missing: Vec<(String, String)>,
    /// (File name, file_url, the bytes' MD5)
    pub different: Vec<(String, String, String)>,
    /// (File name, file_url, status in _frappe_cdc_files)
    pub known: Vec<(String, String, String)>,
    /// Site paths of files no row references.
    pub extra: Vec<String>,
}

impl FilesReport {
    /// True when nothing is missing or different (known and extra files do not count).
    pub fn is_equal(&self) -> bool {
        self.missing.is_empty() && self.different.is_empty()
    }
}

/// Statuses under which a file is known not to be on the replica as its row says.
const KNOWN: [&str; 7] = [
    "pending",
    "missing",
    "mismatch",
    "too_big",
    "denied",
    "collision",
    "error",
];

/// Checks the replica's site folder `site` against its File rows (module docs).
pub async fn verify(r: &mut Conn, site: &SiteDir) -> Result<FilesReport, String> {
    let has_status = super::status::table_exists(r)
        .await
        .map_err(|e| format!("replica: {e}"))?;
    let sql = if has_status {
        "SELECT f.name, f.file_url, f.content_hash, s.status FROM `tabFile` f \
         LEFT JOIN `_frappe_cdc_files` s ON s.name = f.name WHERE f.is_folder = 0 ORDER BY f.name"
    } else {
        "SELECT name, file_url, content_hash, NULL FROM `tabFile` WHERE is_folder = 0 ORDER BY name"
    };
    type R = (String, Option<String>, Option<String>, Option<String>);
    let rows: Vec<R> = r
        .query(sql)
        .await
        .map_err(|e| format!("reading tabFile on the replica: {e}"))?;
    let mut rep = FilesReport::default();
    let mut referenced = BTreeSet::new();
    for (name, url, hash, status) in rows {
        let url = url.unwrap_or_default();
        let Some(path) = SitePath::from_url(&url) else {
            rep.unchecked += 1;
            continue;
        };
        referenced.insert(path.on_disk());
        let known = status.filter(|s| KNOWN.contains(&s.as_str()));
        let have = md5_of(&site.path(&path))
            .await
            .map_err(|e| format!("reading {}: {e}", path.on_disk().display()))?;
        let want = hash.as_deref().and_then(md5_hash);
        match (have, want) {
            (Some(h), Some(w)) if h != w => match known {
                Some(s) => rep.known.push((name, url, s)),
                None => rep.different.push((name, url, h)),
            },
            (Some(_), _) => rep.equal += 1,
            (None, _) => match known {
                Some(s) => rep.known.push((name, url, s)),
                None => rep.missing.push((name, url)),
            },
        }
    }
    rep.extra = extra_files(site.root(), &referenced)
        .map_err(|e| format!("listing the site's files: {e}"))?;
    Ok(rep)
}

/// Files under the two folders that are not in `referenced` (paths relative to the site).
fn extra_files(
    root: &Path,
    referenced: &BTreeSet<std::path::PathBuf>,
) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for top in ["public/files", "private/files"] {
        let mut stack = vec![root.join(top)];
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for e in rd {
                let e = e?;
                let p = e.path();
                if e.file_type()?.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
                let temp = rel.to_string_lossy().ends_with(".frappe-cdc-part");
                if !temp && !referenced.contains(&rel) {
                    out.push(rel.display().to_string());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

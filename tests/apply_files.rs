//! Attachments end to end (real primary, broker, replica, capture and apply processes, and a
//! primary site's file routes served on loopback by `common::site_server`: public files
//! without auth, private ones only with the API token and a valid `fid`, 404 for absent files).
//!
//! 1. A public and a private file inserted with their File rows land at the same paths in the
//!    replica's site folder, byte-equal; a request without the token is refused (403).
//! 2. A file replaced on the primary (new bytes, new `content_hash`, same path) is replaced.
//! 3. `is_private` toggled (the file moves to `private/files`): the replica gets it there, and
//!    with `--files-gc` the old public copy goes; a deleted File's bytes go too (no other row
//!    has their hash).
//! 4. A row whose file is not on the primary yet (404: `missing`), then the file appears: the
//!    retry fetches it.
//! 5. A row whose `content_hash` does not match the bytes: `mismatch`, the replica's path
//!    untouched.
//! 6. A collision: the replica's path holds its own bytes, referenced by a replica-local File
//!    row; the primary's File with that URL and other bytes is `collision`, the local bytes
//!    stay.
//! 7. Folders and remote URLs need no bytes: their rows say `skipped` and why.
//!
//! 8. `verify --files` exits 0 after the run and 1 naming a file corrupted by hand; `files
//!    sync` puts it back (and exits 1: the mismatch and the collision are still not copied).
//!
//! 9. A 100 MB private file served slowly: apply's peak RSS stays under 100 MiB while it
//!    streams; kill -9 in the middle leaves only a temporary file, never the final path; the
//!    restarted apply sweeps it and fetches the file whole.
//!
//! Throughout, the documents themselves are applied at once; no partial file is ever at a
//! final path (the fetcher writes temporary files and renames).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::rig::Rig;
use common::servers::{free_port, scratch_dir};
use common::site_server::SiteServer;
use md5::{Digest, Md5};
use mysql_async::prelude::Queryable;

const TOKEN: &str = "apikey123:apisecret456";

const FILE_DDL: &str = "CREATE TABLE `tabFile` (
  `name` varchar(140) NOT NULL, `creation` datetime(6) DEFAULT NULL, `modified` datetime(6) DEFAULT NULL,
  `modified_by` varchar(140) DEFAULT NULL, `owner` varchar(140) DEFAULT NULL, `docstatus` int(1) NOT NULL DEFAULT 0,
  `idx` int(8) NOT NULL DEFAULT 0, `file_name` varchar(140) DEFAULT NULL, `file_url` longtext DEFAULT NULL,
  `is_private` int(1) NOT NULL DEFAULT 0, `is_folder` int(1) NOT NULL DEFAULT 0, `folder` varchar(140) DEFAULT NULL,
  `file_size` bigint(20) NOT NULL DEFAULT 0, `content_hash` varchar(140) DEFAULT NULL,
  `attached_to_doctype` varchar(140) DEFAULT NULL, `attached_to_name` varchar(140) DEFAULT NULL,
  `attached_to_field` varchar(140) DEFAULT NULL,
  PRIMARY KEY (`name`), KEY `content_hash` (`content_hash`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci";

fn md5_hex(b: &[u8]) -> String {
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn put(site: &Path, rel: &str, bytes: &[u8]) {
    let p = site.join(rel);
    std::fs::create_dir_all(p.parent().expect("folder")).expect("mkdir");
    std::fs::write(p, bytes).expect("write");
}

async fn insert_file(
    c: &mut mysql_async::Conn,
    name: &str,
    url: &str,
    private: bool,
    hash: Option<&str>,
) {
    c.exec_drop(
        "INSERT INTO `tabFile` (name, creation, modified, modified_by, owner, file_name, file_url, is_private, folder, content_hash, attached_to_doctype, attached_to_name) \
         VALUES (?, NOW(6), NOW(6), 'Administrator', 'Administrator', ?, ?, ?, 'Home/Attachments', ?, 'Customer', 'C1')",
        (name, url.rsplit('/').next(), url, private as i32, hash),
    )
    .await
    .expect("insert File");
}

async fn status(r: &mut mysql_async::Conn, name: &str) -> Option<String> {
    r.exec_first(
        "SELECT status FROM `_frappe_cdc_files` WHERE name = ?",
        (name,),
    )
    .await
    .unwrap_or(None)
}

async fn wait_status(replica_admin_url: &str, name: &str, want: &str) {
    let pool = mysql_async::Pool::new(replica_admin_url);
    common::wait_until_explained(
        Duration::from_secs(90),
        &format!("File {name} {want}"),
        || async {
            let mut c = pool.get_conn().await.expect("replica");
            status(&mut c, name).await.as_deref() == Some(want)
        },
        || async {
            let mut c = pool.get_conn().await.expect("replica");
            let rows: Vec<(String, String, Option<String>)> = c
                .query("SELECT name, status, last_error FROM `_frappe_cdc_files`")
                .await
                .unwrap_or_default();
            let files: Vec<String> = c
                .query("SELECT name FROM `tabFile`")
                .await
                .unwrap_or_default();
            format!("; status rows: {rows:?}; replica File rows: {files:?}")
        },
    )
    .await;
}

fn read(site: &Path, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(site.join(rel)).ok()
}

/// No temporary file of the fetcher anywhere under `site`.
fn no_partials(site: &Path) -> bool {
    let mut stack = vec![site.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".frappe-cdc-part") {
                return false;
            }
        }
    }
    true
}

/// A primary site with a File table and its file routes, and a replica with its site folder.
struct Site {
    rig: Rig,
    _replica: common::servers::Mariadb,
    rurl: String,
    /// The replica's admin URL with its password (for the test's own queries).
    radmin: String,
    p: mysql_async::Conn,
    r: mysql_async::Conn,
    psite: PathBuf,
    rsite: PathBuf,
    server: SiteServer,
}

impl Site {
    async fn new(tag: &str) -> Site {
        let rig = Rig::new(tag).await;
        let (replica, rurl) = rig.replica().await;
        let radmin = replica.admin_url(&rig.db);
        let mut p = rig.primary().conn(&rig.db).await;
        let mut r = replica.conn(&rig.db).await;
        p.query_drop(FILE_DDL).await.expect("primary tabFile");
        p.query_drop(
            "INSERT INTO `tabDocType` (name, creation, modified, modified_by, owner, module, istable, issingle, is_submittable, is_tree, autoname, custom) \
             VALUES ('File', NOW(6), NOW(6), 'Administrator', 'Administrator', 'Core', 0, 0, 0, 0, 'hash', 0)",
        )
        .await
        .expect("the File DocType");
        r.query_drop(FILE_DDL).await.expect("replica tabFile");
        let psite = scratch_dir(&format!("{tag}-primary-site"));
        let rsite = scratch_dir(&format!("{tag}-replica-site"));
        let server = SiteServer::start(
            psite.clone(),
            mysql_async::Pool::new(rig.primary().admin_url(&rig.db).as_str()),
            TOKEN,
        )
        .await;
        Site {
            rig,
            _replica: replica,
            rurl,
            radmin,
            p,
            r,
            psite,
            rsite,
            server,
        }
    }
}

/// Capture with File added to its doctypes (left out by default).
fn spawn_capture(rig: &Rig) -> common::servers::KillOnDrop {
    rig.spawn_capture(
        None,
        free_port(),
        &["--checkpoint-interval", "200ms", "--add-doctype", "File"],
    )
}

/// Apply copying files from `server` into `rsite` (the token in its environment).
fn spawn_apply(
    rig: &Rig,
    rurl: &str,
    port: u16,
    server: &SiteServer,
    rsite: &Path,
    extra: &[&str],
) -> common::servers::KillOnDrop {
    let mut args = vec![
        "--files-from",
        &server.base,
        "--files-to",
        rsite.to_str().expect("path"),
        "--files-retry",
        "1s",
    ];
    args.extend(extra);
    rig.spawn_apply_with_env(rurl, port, &args, &[("FRAPPE_CDC_FILES_TOKEN", TOKEN)])
}

/// Peak resident memory of process `pid` (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_file_streams_and_a_killed_download_leaves_no_partial_file() {
    let Site {
        rig,
        _replica,
        rurl,
        radmin,
        mut p,
        r: _r,
        psite,
        rsite,
        server,
    } = Site::new("bigfile").await;
    // 100 MB that no run of zeros can fake, served slowly at first.
    let big: Vec<u8> = (0..100_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    put(&psite, "private/files/big.bin", &big);
    let hash = md5_hex(&big);
    drop(big);
    server.throttle_ms.store(5, Ordering::Relaxed);
    insert_file(&mut p, "F-BIG", "/private/files/big.bin", true, Some(&hash)).await;
    let _capture = spawn_capture(&rig);
    let max = ["--files-max-bytes", "200000000"];
    let mut apply = spawn_apply(&rig, &rurl, free_port(), &server, &rsite, &max);
    let part_dir = rsite.join("private/files");
    common::wait_until(Duration::from_secs(90), "a download under way", || async {
        std::fs::read_dir(&part_dir)
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .ends_with(".frappe-cdc-part")
                        && e.metadata().is_ok_and(|m| m.len() > 1_000_000)
                })
            })
            .unwrap_or(false)
    })
    .await;
    let rss = peak_rss_mib(apply.id());
    let _ = std::process::Command::new("kill")
        .args(["-9", &apply.id().to_string()])
        .status();
    let _ = apply.0.wait();
    assert!(
        !rsite.join("private/files/big.bin").exists(),
        "a download cut short is never at the final path"
    );
    assert!(
        !no_partials(&rsite),
        "the cut download left its temporary file"
    );
    eprintln!("apply peak RSS while streaming the 100 MB file: {rss:.1} MiB");
    assert!(
        rss > 0.0 && rss < 100.0,
        "apply held the file in memory: peak RSS {rss:.1} MiB"
    );

    // Restarted at full speed: the temporary file is swept, the file fetched whole.
    server.throttle_ms.store(0, Ordering::Relaxed);
    let apply = spawn_apply(&rig, &rurl, free_port(), &server, &rsite, &max);
    wait_status(&radmin, "F-BIG", "fetched").await;
    let got = std::fs::read(rsite.join("private/files/big.bin")).expect("the big file");
    assert_eq!(md5_hex(&got), hash, "the big file arrived whole");
    assert!(no_partials(&rsite), "the restart swept the temporary file");
    let rss = peak_rss_mib(apply.id());
    eprintln!("apply peak RSS after fetching the 100 MB file: {rss:.1} MiB");
    assert!(rss < 100.0, "apply held the file in memory: {rss:.1} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_follow_their_rows_to_the_same_paths() {
    let Site {
        rig,
        _replica,
        rurl,
        radmin,
        mut p,
        mut r,
        psite,
        rsite,
        server,
    } = Site::new("files").await;

    // The collision case's local state on the replica, before anything is applied.
    let local = b"the replica's own scan";
    put(&rsite, "public/files/scan.png", local);
    insert_file(
        &mut r,
        "LOCAL-SCAN",
        "/files/scan.png",
        false,
        Some(&md5_hex(local)),
    )
    .await;

    let (pub_bytes, priv_bytes) = (b"public logo bytes".to_vec(), vec![7u8; 300_000]);
    put(&psite, "public/files/logo.png", &pub_bytes);
    put(&psite, "private/files/contract.pdf", &priv_bytes);
    insert_file(
        &mut p,
        "F-PUB",
        "/files/logo.png",
        false,
        Some(&md5_hex(&pub_bytes)),
    )
    .await;
    insert_file(
        &mut p,
        "F-PRIV",
        "/private/files/contract.pdf",
        true,
        Some(&md5_hex(&priv_bytes)),
    )
    .await;
    // 4: no file yet; 5: a hash of other bytes; 6: the replica's path is taken.
    insert_file(
        &mut p,
        "F-LATE",
        "/files/late.txt",
        false,
        Some(&md5_hex(b"late")),
    )
    .await;
    put(&psite, "public/files/bad.txt", b"actual bytes");
    insert_file(
        &mut p,
        "F-BAD",
        "/files/bad.txt",
        false,
        Some(&md5_hex(b"expected bytes")),
    )
    .await;
    let theirs = b"the primary's scan";
    put(&psite, "public/files/scan.png", theirs);
    insert_file(
        &mut p,
        "F-SCAN",
        "/files/scan.png",
        false,
        Some(&md5_hex(theirs)),
    )
    .await;
    // 7: a folder and a remote file.
    p.query_drop(
        "INSERT INTO `tabFile` (name, file_name, is_folder, folder) VALUES ('Home/Attachments', 'Attachments', 1, 'Home')",
    )
    .await
    .expect("folder");
    insert_file(
        &mut p,
        "F-S3",
        "https://bucket.s3.example/x.png",
        false,
        None,
    )
    .await;

    // File is left out by default: capture adds it (apply does by itself with --files-to).
    let _capture = spawn_capture(&rig);
    let aport = free_port();
    let _apply = spawn_apply(&rig, &rurl, aport, &server, &rsite, &["--files-gc"]);

    // 1. Public and private files at the same paths, byte-equal.
    wait_status(&radmin, "F-PUB", "fetched").await;
    wait_status(&radmin, "F-PRIV", "fetched").await;
    assert_eq!(
        read(&rsite, "public/files/logo.png"),
        Some(pub_bytes.clone())
    );
    assert_eq!(
        read(&rsite, "private/files/contract.pdf"),
        Some(priv_bytes.clone())
    );
    let anonymous = reqwest::get(format!(
        "{}/private/files/contract.pdf?fid=F-PRIV",
        server.base
    ))
    .await
    .expect("request");
    assert_eq!(
        anonymous.status().as_u16(),
        403,
        "private files need the token"
    );

    // 5, 6, 7.
    wait_status(&radmin, "F-BAD", "mismatch").await;
    assert_eq!(
        read(&rsite, "public/files/bad.txt"),
        None,
        "mismatched bytes are not placed"
    );
    wait_status(&radmin, "F-SCAN", "collision").await;
    assert_eq!(
        read(&rsite, "public/files/scan.png").as_deref(),
        Some(&local[..]),
        "a collision never overwrites the replica's own file"
    );
    wait_status(&radmin, "Home/Attachments", "skipped").await;
    wait_status(&radmin, "F-S3", "skipped").await;
    let reasons: Vec<(String, Option<String>)> = r
        .query("SELECT name, last_error FROM `_frappe_cdc_files` WHERE status = 'skipped' ORDER BY name")
        .await
        .expect("skipped");
    assert_eq!(
        reasons,
        vec![
            ("F-S3".to_string(), Some("remote".to_string())),
            ("Home/Attachments".to_string(), Some("folder".to_string())),
        ],
        "folders and remote files need no bytes"
    );

    let list = std::process::Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args(["conflicts", "--replica", &rurl, "list"])
        .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
        .output()
        .expect("conflicts list");
    let out = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        out.contains("file collision: File F-SCAN /files/scan.png")
            && out.contains("1 file collision(s)"),
        "conflicts list shows the collision: {out}"
    );

    // 4. Missing, then it appears: the retry fetches it.
    wait_status(&radmin, "F-LATE", "missing").await;
    put(&psite, "public/files/late.txt", b"late");
    wait_status(&radmin, "F-LATE", "fetched").await;
    assert_eq!(
        read(&rsite, "public/files/late.txt").as_deref(),
        Some(&b"late"[..])
    );

    // 2. Replaced at the same path.
    let v2 = b"public logo, version 2".to_vec();
    put(&psite, "public/files/logo.png", &v2);
    p.exec_drop(
        "UPDATE `tabFile` SET content_hash = ?, modified = NOW(6) WHERE name = 'F-PUB'",
        (md5_hex(&v2),),
    )
    .await
    .expect("replace");
    common::wait_until(Duration::from_secs(90), "the replaced logo", || async {
        read(&rsite, "public/files/logo.png") == Some(v2.clone())
    })
    .await;

    // 3. is_private toggled: Frappe moves the bytes and rewrites the URL.
    std::fs::create_dir_all(psite.join("private/files")).expect("mkdir");
    std::fs::rename(
        psite.join("public/files/logo.png"),
        psite.join("private/files/logo.png"),
    )
    .expect("move");
    p.query_drop(
        "UPDATE `tabFile` SET is_private = 1, file_url = '/private/files/logo.png', modified = NOW(6) WHERE name = 'F-PUB'",
    )
    .await
    .expect("toggle");
    common::wait_until(Duration::from_secs(90), "the moved logo", || async {
        read(&rsite, "private/files/logo.png") == Some(v2.clone())
    })
    .await;
    // --files-gc: the old public copy goes (no row has its URL any more) ...
    common::wait_until(
        Duration::from_secs(30),
        "the old public logo removed",
        || async { read(&rsite, "public/files/logo.png").is_none() },
    )
    .await;
    // ... and a deleted File's bytes go when no replica row has their hash.
    p.query_drop("DELETE FROM `tabFile` WHERE name = 'F-PRIV'")
        .await
        .expect("delete");
    common::wait_until(
        Duration::from_secs(30),
        "the deleted File's bytes removed",
        || async { read(&rsite, "private/files/contract.pdf").is_none() },
    )
    .await;
    wait_status(&radmin, "F-PRIV", "deleted").await;

    assert!(no_partials(&rsite), "a temporary file was left behind");

    // verify --files: in sync (the mismatch and the collision are known, the old public copy
    // of the moved logo is extra), then a file corrupted by hand fails it, by name.
    let files_flag = [
        "--doctype",
        "Customer",
        "--files",
        rsite.to_str().expect("path"),
    ];
    let v = rig.verify(&rurl, &files_flag);
    let out = String::from_utf8_lossy(&v.stdout).into_owned();
    assert!(v.status.success(), "verify --files after the run: {out}");
    assert!(
        out.contains("0 missing on replica, 0 different, 2 known"),
        "{out}"
    );
    std::fs::write(rsite.join("public/files/late.txt"), b"edited by hand").expect("corrupt");
    let v = rig.verify(&rurl, &files_flag);
    let out = String::from_utf8_lossy(&v.stdout).into_owned();
    assert_eq!(v.status.code(), Some(1), "{out}");
    assert!(
        out.contains("different file: File F-LATE /files/late.txt"),
        "{out}"
    );

    // files sync repairs it (and says the mismatch and the collision are still not copied).
    let sync = std::process::Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args(["files", "--replica", &rurl, "--files-from", &server.base])
        .args(["--files-to", rsite.to_str().expect("path"), "sync"])
        .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
        .env("FRAPPE_CDC_FILES_TOKEN", TOKEN)
        .output()
        .expect("files sync");
    let out = String::from_utf8_lossy(&sync.stdout).into_owned();
    assert_eq!(sync.status.code(), Some(1), "{out}");
    assert!(out.contains("1 lost files queued again"), "{out}");
    assert!(
        out.contains("1 collision") && out.contains("1 mismatch"),
        "{out}"
    );
    assert_eq!(
        read(&rsite, "public/files/late.txt").as_deref(),
        Some(&b"late"[..])
    );
    let v = rig.verify(&rurl, &files_flag);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let m = common::metrics::scrape(aport).await;
    for (outcome, at_least) in [
        ("fetched", 4.0),
        ("missing", 1.0),
        ("mismatch", 1.0),
        ("collision", 1.0),
    ] {
        let got = common::metrics::sample(
            &m,
            &format!("frappe_cdc_apply_files_total{{outcome=\"{outcome}\"}}"),
        );
        assert!(got >= at_least, "files {outcome}: {got}");
    }
    assert!(server.count(200) >= 5, "the files came from the server");
    eprintln!(
        "files: {} served, {} refused, {} not found; replica statuses fetched/missing/mismatch/collision as expected",
        server.count(200),
        server.count(403),
        server.count(404)
    );
}

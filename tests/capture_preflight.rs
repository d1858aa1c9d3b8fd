//! One test per preflight failure: each starts a real MariaDB with one wrong setting (or a user
//! lacking one privilege, or a purged binlog) and runs the `frappe-cdc` binary. `check` and
//! `capture` must print the setting, what was found, the expected value and the fix, exit with
//! code 2, and leave the state directory untouched.

mod common;

use std::process::Command;

use common::rig::Rig;
use common::servers::{Mariadb, PRIMARY_ARGS, free_port, scratch_dir};
use mysql_async::prelude::Queryable;

struct Outcome {
    code: i32,
    out: String,
}

fn run(sub: &str, url: &str, password: &str, state: &std::path::Path, extra: &[&str]) -> Outcome {
    let o = Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args([
            sub,
            "--source",
            url,
            "--server-id",
            "9999",
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--brokers",
            "127.0.0.1:1",
        ])
        // Tests run in parallel: the default metrics port would be taken by another one.
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(extra)
        .env("FRAPPE_CDC_SOURCE_PASSWORD", password)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run frappe-cdc");
    Outcome {
        code: o.status.code().unwrap_or(-1),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// Starts a server with `args`, creates a site, and checks both subcommands fail on `setting`.
async fn assert_fails(args: &[&str], user: (&str, &str), expect: &[&str]) {
    let m = Mariadb::start(args);
    m.create_site("site").await;
    if user.0 != "cdc" {
        m.sql_socket(&format!(
            "CREATE USER '{0}'@'%' IDENTIFIED BY '{1}'; GRANT SELECT ON *.* TO '{0}'@'%';",
            user.0, user.1
        ));
    }
    let url = format!("mysql://{}@127.0.0.1:{}/site", user.0, m.port);
    for sub in ["check", "capture"] {
        let state = scratch_dir("pf-state");
        let o = run(sub, &url, user.1, &state, &[]);
        assert_eq!(o.code, 2, "{sub} must exit 2, output:\n{}", o.out);
        for e in expect {
            assert!(o.out.contains(e), "{sub} output lacks {e:?}:\n{}", o.out);
        }
        assert!(
            o.out.contains("fix:"),
            "{sub} output has no fix:\n{}",
            o.out
        );
        assert!(
            !state.join("state.redb").exists(),
            "{sub} created state despite the failed preflight"
        );
        assert!(
            !o.out.contains(user.1) || user.1.len() < 4,
            "password leaked into output"
        );
    }
}

fn without(prefix: &str) -> Vec<&'static str> {
    PRIMARY_ARGS
        .iter()
        .copied()
        .filter(|a| !a.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn binlog_format_mixed() {
    let mut args = without("--binlog-format");
    args.push("--binlog-format=MIXED");
    assert_fails(
        &args,
        ("cdc", "cdcpass"),
        &[
            "binlog_format: found MIXED, expected ROW",
            "SET GLOBAL binlog_format='ROW'",
        ],
    )
    .await;
}

#[tokio::test]
async fn binlog_row_image_minimal() {
    let mut args = without("--binlog-row-image");
    args.push("--binlog-row-image=MINIMAL");
    assert_fails(
        &args,
        ("cdc", "cdcpass"),
        &[
            "binlog_row_image: found MINIMAL, expected FULL",
            "SET GLOBAL binlog_row_image='FULL'",
        ],
    )
    .await;
}

#[tokio::test]
async fn binlog_row_metadata_no_log() {
    let mut args = without("--binlog-row-metadata");
    args.push("--binlog-row-metadata=NO_LOG");
    assert_fails(
        &args,
        ("cdc", "cdcpass"),
        &[
            "binlog_row_metadata: found NO_LOG, expected FULL",
            "SET GLOBAL binlog_row_metadata='FULL'",
        ],
    )
    .await;
}

#[tokio::test]
async fn log_bin_off() {
    let args = without("--log-bin");
    assert_fails(
        &args,
        ("cdc", "cdcpass"),
        &["log_bin: found OFF, expected ON"],
    )
    .await;
}

#[tokio::test]
async fn missing_replication_privilege() {
    assert_fails(
        PRIMARY_ARGS,
        ("weak", "weakpass"),
        &[
            "privilege: found no REPLICATION SLAVE",
            "GRANT REPLICATION SLAVE ON *.*",
            "found no BINLOG MONITOR",
        ],
    )
    .await;
}

#[tokio::test]
async fn unreachable_server() {
    let state = scratch_dir("pf-state");
    let o = run(
        "check",
        &format!(
            "mysql://cdc@127.0.0.1:{}/site",
            common::servers::free_port()
        ),
        "x",
        &state,
        &[],
    );
    assert_eq!(o.code, 2, "{}", o.out);
    assert!(
        o.out.contains("cannot reach mysql://cdc@127.0.0.1"),
        "{}",
        o.out
    );
    assert!(o.out.contains("fix:"), "{}", o.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_binlog() {
    let mut rig = Rig::new("purge").await;
    let mut f = rig.frappe().await;
    f.insert_customer("P1", "Commercial").await;
    rig.round().await;
    // More changes, then the binlog holding them is purged before capture reads it.
    f.insert_customer("P2", "Commercial").await;
    // MariaDB defers a purge until InnoDB has checkpointed the binlog: retry until it happened.
    let mut c = rig.primary().conn("mysql").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        c.query_drop("FLUSH BINARY LOGS").await.expect("flush");
        let (file, ..): (String, u64, String, String) = c
            .query_first("SHOW MASTER STATUS")
            .await
            .expect("status")
            .expect("row");
        c.query_drop(format!("PURGE BINARY LOGS TO '{file}'"))
            .await
            .expect("purge");
        let logs: Vec<(String, u64)> = c.query("SHOW BINARY LOGS").await.expect("logs");
        if logs.first().is_some_and(|l| l.0 == file) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "binlogs were not purged: {logs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let before = std::fs::read(rig.state.join("state.redb")).expect("state");
    for sub in ["check", "capture"] {
        let o = run(
            sub,
            &rig.primary().cdc_url(&rig.db),
            "cdcpass",
            &rig.state,
            &["--brokers", &rig.bootstrap()],
        );
        assert_eq!(o.code, 2, "{sub}: {}", o.out);
        assert!(
            o.out.contains("checkpoint: found resume position"),
            "{sub}: {}",
            o.out
        );
        assert!(o.out.contains("purged"), "{sub}: {}", o.out);
        assert!(o.out.contains("fix:"), "{sub}: {}", o.out);
        assert_eq!(
            std::fs::read(rig.state.join("state.redb")).expect("state"),
            before,
            "{sub} changed the state"
        );
    }
}

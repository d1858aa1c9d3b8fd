//! Real servers for integration tests: MariaDB (primary with binlog, or replica) and Apache
//! Kafka (kafka.rs), each on loopback with a fresh data directory and port.
//!
//! A watchdog shell process kills each server when the test process exits (even on panic or
//! abort), so no server outlives its tests. A missing server binary is a loud failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn scratch_root() -> PathBuf {
    let root = std::env::var_os("FRAPPE_CDC_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("frappe-cdc-tests"));
    std::fs::create_dir_all(&root).expect("create test scratch dir");
    root
}

/// A unique scratch directory.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = scratch_root().join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

pub fn watchdog(server_pid: u32, dir: &Path) {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {server_pid} 2>/dev/null; rm -rf '{}'",
        dir.display()
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

fn template_datadir() -> &'static PathBuf {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let d = scratch_dir("mariadb-template");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", d.display()))
            .output()
            .expect(
                "mariadb-install-db not found: run scripts/test.sh (it installs mariadb-server)",
            );
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    })
}

/// A running MariaDB server.
pub struct Mariadb {
    pub port: u16,
    pub dir: PathBuf,
    pub server_id: u32,
    pub pid: u32,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

/// Settings of a primary as frappe-cdc needs them.
pub const PRIMARY_ARGS: &[&str] = &[
    "--log-bin=mysql-bin",
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
];

static NEXT_SERVER_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

impl Mariadb {
    /// Starts a primary with the binlog settings frappe-cdc requires.
    pub fn primary() -> Mariadb {
        Self::start(PRIMARY_ARGS)
    }

    /// Starts a server with `extra` options (e.g. wrong binlog settings for preflight tests).
    pub fn start(extra: &[&str]) -> Mariadb {
        let dir = scratch_dir("mariadb");
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", template_datadir().display()))
            .arg(&dir)
            .status()
            .expect("cp");
        assert!(status.success(), "copy template datadir");
        let server_id = 100
            + NEXT_SERVER_ID.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + (std::process::id() % 1000) * 10;
        let mut m = Mariadb {
            port: 0,
            dir,
            server_id,
            pid: 0,
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        m.launch();
        m
    }

    fn launch(&mut self) {
        // A restart keeps the port, so clients reconnect to the same address.
        let fresh = self.port == 0;
        if fresh {
            self.port = free_port();
        }
        for attempt in 1.. {
            match self.launch_once() {
                Ok(()) => return,
                Err(log) if attempt < 5 && log.contains("Address already in use") => {
                    // Another process took the port between `free_port` and mariadbd's bind
                    // (a fresh server takes another one), or a restart's old socket lingers.
                    if fresh {
                        self.port = free_port();
                    } else {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                Err(log) => panic!("mariadbd on port {} did not start:\n{log}", self.port),
            }
        }
    }

    /// Starts mariadbd once and waits until it answers; the error log's new lines when it
    /// exits or does not answer within 60 s.
    fn launch_once(&mut self) -> Result<(), String> {
        let log_at = std::fs::metadata(self.dir.join("error.log")).map_or(0, |m| m.len());
        let new_log = |dir: &Path| {
            let log = std::fs::read(dir.join("error.log")).unwrap_or_default();
            String::from_utf8_lossy(log.get(log_at as usize..).unwrap_or(&[])).into_owned()
        };
        let d = &self.dir;
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.display()))
            .arg(format!("--socket={}/mysqld.sock", d.display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--server-id={}", self.server_id))
            .arg("--user=root")
            .arg(format!("--pid-file={}/mysqld.pid", d.display()))
            .arg(format!("--log-error={}/error.log", d.display()))
            .args([
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=96M",
                "--max-allowed-packet=256M",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                "--innodb-flush-log-at-trx-commit=2",
                "--sync-binlog=0",
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("mariadbd not found: run scripts/test.sh (it installs mariadb-server)");
        self.pid = child.id();
        self.child = Some(child);
        watchdog(self.pid, &self.dir);
        let deadline = Instant::now() + Duration::from_secs(60);
        let sock = format!("{}/mysqld.sock", self.dir.display());
        loop {
            let ok = Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "-uroot",
                    &format!("--socket={sock}"),
                    "-e",
                    "select 1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                self.child = None;
                return Err(new_log(&self.dir));
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after 60 s:\n{}", new_log(&self.dir)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.sql_socket(
            "CREATE USER IF NOT EXISTS 'admin'@'%' IDENTIFIED BY 'adminpass'; GRANT ALL ON *.* TO 'admin'@'%' WITH GRANT OPTION; \
             CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdcpass'; GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc'@'%';",
        );
        Ok(())
    }

    /// Runs SQL as root over the socket with the command line client.
    pub fn sql_socket(&self, sql: &str) {
        let sock = format!("{}/mysqld.sock", self.dir.display());
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "-uroot",
                &format!("--socket={sock}"),
                "--default-character-set=utf8mb4",
                "-e",
                sql,
            ])
            .output()
            .expect("mariadb client");
        assert!(
            out.status.success(),
            "sql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// URL for the admin user (all privileges).
    pub fn admin_url(&self, db: &str) -> String {
        format!("mysql://admin:adminpass@127.0.0.1:{}/{db}", self.port)
    }

    /// URL for the admin user without its password, as `apply` and `verify` get it (the
    /// password goes in `FRAPPE_CDC_REPLICA_PASSWORD`).
    pub fn replica_url(&self, db: &str) -> String {
        format!("mysql://admin@127.0.0.1:{}/{db}", self.port)
    }

    /// URL for the capture user (SELECT, REPLICATION SLAVE, BINLOG MONITOR), password not in it.
    pub fn cdc_url(&self, db: &str) -> String {
        format!("mysql://cdc@127.0.0.1:{}/{db}", self.port)
    }

    /// An admin connection to `db`.
    pub async fn conn(&self, db: &str) -> mysql_async::Conn {
        let opts = mysql_async::OptsBuilder::from_opts(
            mysql_async::Opts::from_url(&self.admin_url(db)).expect("url"),
        )
        .init(vec!["SET time_zone='+00:00'", "SET NAMES utf8mb4"]);
        mysql_async::Conn::new(opts)
            .await
            .expect("admin connection")
    }

    /// Creates a database with the Frappe fixture schema.
    pub async fn create_site(&self, db: &str) {
        let mut c = self.conn("mysql").await;
        c.query_drop(format!(
            "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .await
        .expect("create db");
        drop(c);
        let schema = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/frappe_schema.sql"
        ))
        .expect("fixture");
        let sock = format!("{}/mysqld.sock", self.dir.display());
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "-uroot",
                &format!("--socket={sock}"),
                "--default-character-set=utf8mb4",
                db,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut ch| {
                use std::io::Write;
                ch.stdin
                    .take()
                    .expect("stdin")
                    .write_all(schema.as_bytes())?;
                ch.wait_with_output()
            })
            .expect("load fixture");
        assert!(
            out.status.success(),
            "fixture load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub use super::kafka::Kafka as Broker;

/// A child process (e.g. a capture under test) killed and reaped when dropped, so a failing
/// test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! Preflight: checks a primary's settings and the capture user's privileges before anything
//! is read or written. Each failure names the setting, what was found, and the exact fix.
//! `frappe-cdc check` prints them; `capture` refuses to start while any remain, and touches no
//! state in that case.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::conn::DbTarget;
use crate::position::GtidPosition;

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub setting: String,
    pub found: String,
    pub expected: String,
    pub fix: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: found {}, expected {}\n    fix: {}",
            self.setting, self.found, self.expected, self.fix
        )
    }
}

/// Result of the preflight.
#[derive(Debug, Default)]
pub struct Report {
    pub failures: Vec<Failure>,
    pub notes: Vec<String>,
    pub server_version: String,
    pub server_id: u32,
    pub log_bin_compress: bool,
}

fn setting_fix(var: &str, value: &str) -> String {
    let session = if matches!(var, "binlog_format" | "binlog_row_image") {
        "; existing connections keep their session value, so restart the Frappe workers (bench restart) afterwards"
    } else {
        ""
    };
    format!(
        "SET GLOBAL {var}='{value}'; and add `{var}={value}` under [mariadb] in my.cnf so it survives a restart{session}"
    )
}

fn push(r: &mut Report, setting: &str, found: &str, expected: &str, fix: String) {
    r.failures.push(Failure {
        setting: setting.into(),
        found: found.into(),
        expected: expected.into(),
        fix,
    });
}

/// Checks that the grants in `grants` give `priv` globally (or on `db` for SELECT).
fn has_priv(grants: &[String], privilege: &str, db: &str) -> bool {
    let db_on = format!("ON `{}`.*", db.replace('`', "``"));
    grants.iter().any(|g| {
        let g_upper = g.to_ascii_uppercase();
        let global = g.contains("ON *.*");
        let on_db = g.contains(&db_on);
        let all = g_upper.contains("GRANT ALL PRIVILEGES");
        (global || (privilege == "SELECT" && on_db)) && (all || g_upper.contains(privilege))
    })
}

/// Runs every check. `checkpoint` is the position capture would resume from, if any.
pub async fn run(
    target: &DbTarget,
    our_server_id: u32,
    checkpoint: Option<&GtidPosition>,
) -> Result<Report, mysql_async::Error> {
    let mut conn = Conn::new(target.opts.clone()).await?;
    let mut r = Report::default();
    let row: Option<Row> = conn
        .query_first(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@server_id, \
             @@log_bin_compress, @@version",
        )
        .await?;
    let row = row.ok_or_else(|| mysql_async::Error::Other("empty settings row".into()))?;
    let get = |i: usize| -> String {
        row.get::<Option<String>, _>(i)
            .flatten()
            .unwrap_or_default()
    };
    let (log_bin, format, image, metadata) = (get(0), get(1), get(2), get(3));
    r.server_id = get(4).parse().unwrap_or(0);
    r.log_bin_compress = get(5) == "1";
    r.server_version = get(6);
    if log_bin != "1" {
        push(&mut r, "log_bin", "OFF", "ON", "add `log_bin=mysql-bin` and `server_id=<unique>` under [mariadb] in my.cnf and restart MariaDB (log_bin cannot be set at runtime)".into());
    }
    if !format.eq_ignore_ascii_case("ROW") {
        push(
            &mut r,
            "binlog_format",
            &format,
            "ROW",
            setting_fix("binlog_format", "ROW"),
        );
    }
    if !image.eq_ignore_ascii_case("FULL") {
        push(
            &mut r,
            "binlog_row_image",
            &image,
            "FULL",
            setting_fix("binlog_row_image", "FULL"),
        );
    }
    if !metadata.eq_ignore_ascii_case("FULL") {
        push(
            &mut r,
            "binlog_row_metadata",
            &metadata,
            "FULL",
            setting_fix("binlog_row_metadata", "FULL"),
        );
    }
    if r.server_id == our_server_id {
        push(
            &mut r,
            "--server-id",
            &our_server_id.to_string(),
            "an id different from the primary's own server_id",
            "pick another --server-id (every replica and reader needs its own)".into(),
        );
    }
    let grants: Vec<String> = conn.query("SHOW GRANTS").await?;
    for (p, shown) in [
        ("REPLICATION SLAVE", "REPLICATION SLAVE"),
        ("SELECT", "SELECT"),
    ] {
        if !has_priv(&grants, p, &target.database) {
            push(
                &mut r,
                "privilege",
                &format!("no {shown}"),
                shown,
                format!("GRANT {shown} ON *.* TO <capture user>;"),
            );
        }
    }
    if !["BINLOG MONITOR", "REPLICATION CLIENT", "SUPER"]
        .iter()
        .any(|p| has_priv(&grants, p, &target.database))
    {
        push(
            &mut r,
            "privilege",
            "no BINLOG MONITOR",
            "BINLOG MONITOR",
            "GRANT BINLOG MONITOR ON *.* TO <capture user>;".into(),
        );
    }
    match conn.query::<Row, _>("SHOW SLAVE HOSTS").await {
        Ok(rows) => {
            for row in rows {
                let id: Option<u32> = row.get(0);
                if id == Some(our_server_id) {
                    push(&mut r, "--server-id", &our_server_id.to_string(), "a server_id no replica uses", "another replica or capture uses this id; pick another --server-id".into());
                }
            }
        }
        Err(_) => r.notes.push("could not list replicas (SHOW SLAVE HOSTS needs REPLICATION MASTER ADMIN); server_id uniqueness not verified".into()),
    }
    let has_doctype: Option<String> = conn
        .exec_first(
            "SELECT table_name FROM information_schema.tables WHERE table_schema=? AND table_name='tabDocType'",
            (target.database.as_str(),),
        )
        .await?;
    if has_doctype.is_none() {
        push(
            &mut r,
            "database",
            &format!("{} has no tabDocType", target.database),
            "a Frappe site database",
            "point --source at the site's database (db_name in site_config.json)".into(),
        );
    }
    if let Some(cp) = checkpoint
        && log_bin == "1"
    {
        check_retention(&mut conn, cp, &mut r).await?;
    }
    let _ = conn.disconnect().await;
    Ok(r)
}

/// Fails when the binlogs that follow `cp` were purged.
async fn check_retention(
    conn: &mut Conn,
    cp: &GtidPosition,
    r: &mut Report,
) -> Result<(), mysql_async::Error> {
    let logs: Vec<Row> = match conn.query("SHOW BINARY LOGS").await {
        Ok(l) => l,
        Err(_) => {
            r.notes
                .push("could not list binary logs; checkpoint retention not verified".into());
            return Ok(());
        }
    };
    let Some(first) = logs.first().and_then(|row| row.get::<String, _>(0)) else {
        return Ok(());
    };
    let oldest: Option<String> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, 4)", (first.as_str(),))
        .await?;
    let oldest: GtidPosition = oldest.unwrap_or_default().parse().unwrap_or_default();
    for g in oldest.iter() {
        let ours = cp.get(g.domain_id).map_or(0, |c| c.seq_no);
        if ours < g.seq_no {
            push(
                r,
                "checkpoint",
                &format!("resume position {cp} but the oldest binlog {first} starts after {g}"),
                "a checkpoint inside the retained binlogs",
                "the binlogs after the checkpoint were purged: stop capture, move the --state-dir away, and start capture again to take a new snapshot; raise expire_logs_days / binlog_expire_logs_seconds to avoid this".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_from_grants() {
        let g = vec![
            "GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `cdc`@`localhost`"
                .to_string(),
        ];
        assert!(has_priv(&g, "SELECT", "site"));
        assert!(has_priv(&g, "REPLICATION SLAVE", "site"));
        assert!(has_priv(&g, "BINLOG MONITOR", "site"));
        let g = vec![
            "GRANT REPLICATION SLAVE ON *.* TO `cdc`@`%`".to_string(),
            "GRANT SELECT ON `site`.* TO `cdc`@`%`".to_string(),
        ];
        assert!(has_priv(&g, "SELECT", "site"));
        assert!(!has_priv(&g, "SELECT", "other"));
        assert!(!has_priv(&g, "BINLOG MONITOR", "site"));
        let g =
            vec!["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION".to_string()];
        assert!(has_priv(&g, "REPLICATION SLAVE", "x"));
    }
}

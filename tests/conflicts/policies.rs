//! Conflict policies on real servers: two replicas read the same stream with the same
//! `[conflicts]` config and the same local edits; each phase restarts both applies with the
//! phase's policies, and the replicas must then hold what each policy says, audit every
//! automatic decision (`conflicts list --auto`), and end identical to each other.
//!
//! Local edits are raw SQL on the replicas with an explicit `modified`, so `newest_wins` has
//! a known answer: `LATER` is after every primary write of the test, `EARLIER` before them.

use crate::common;

use std::process::{Command, Output};
use std::time::Duration;

use common::doc_image;
use common::metrics::{sample, scrape};
use common::rig::Rig;
use common::servers::{KillOnDrop, Mariadb, free_port};
use common::workload::{Frappe, Invoice};
use mysql_async::prelude::Queryable;

const LATER: &str = "2030-01-01 00:00:00.000000";
const EARLIER: &str = "2000-01-01 00:00:00.000000";

fn cdc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args(args)
        .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
        .env("RUST_LOG", "error")
        .output()
        .expect("run frappe-cdc")
}

/// The two replicas, their URLs, and the applies of the current phase.
struct Replicas {
    servers: Vec<(Mariadb, String)>,
    applies: Vec<KillOnDrop>,
    ports: Vec<u16>,
}

impl Replicas {
    /// Runs `sql` (with `params`) on both replicas: the same local edit on each.
    async fn local(&self, db: &str, sql: &str, params: Vec<mysql_async::Value>) {
        for (m, _) in &self.servers {
            m.conn(db)
                .await
                .exec_drop(sql, params.clone())
                .await
                .expect("local edit");
        }
    }

    /// Restarts both applies with `config` as their `--config` file.
    fn restart(&mut self, rig: &Rig, config: &str) {
        self.applies.clear();
        let path = rig.state.join("policies.toml");
        std::fs::write(&path, config).expect("config file");
        let path = path.to_str().unwrap_or_default().to_string();
        self.ports = self.servers.iter().map(|_| free_port()).collect();
        for ((_, url), port) in self.servers.iter().zip(&self.ports) {
            self.applies
                .push(rig.spawn_apply(url, *port, &["--config", &path]));
        }
    }

    /// Waits until `name` is on both replicas (apply keeps topic order: everything captured
    /// before it has been decided).
    async fn wait_for(&self, db: &str, name: &str) {
        for (m, _) in &self.servers {
            common::wait_until(Duration::from_secs(90), name, || async {
                doc_image(&mut m.conn(db).await, "Sales Invoice", name)
                    .await
                    .is_some()
            })
            .await;
        }
    }

    async fn field(&self, i: usize, db: &str, name: &str, col: &str) -> Option<String> {
        self.servers[i]
            .0
            .conn(db)
            .await
            .exec_first(
                format!("SELECT CAST(`{col}` AS CHAR) FROM `tabSales Invoice` WHERE name = ?"),
                (name,),
            )
            .await
            .expect("read field")
    }
}

async fn set_local(rs: &Replicas, db: &str, name: &str, col: &str, value: &str, modified: &str) {
    rs.local(
        db,
        &format!("UPDATE `tabSales Invoice` SET `{col}` = ?, modified = ? WHERE name = ?"),
        vec![value.into(), modified.into(), name.into()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_decides_and_two_replicas_stay_identical() {
    let rig = Rig::new("policies").await;
    let mut rs = Replicas {
        servers: vec![rig.replica().await, rig.replica().await],
        applies: Vec::new(),
        ports: Vec::new(),
    };
    let db = rig.db.clone();
    let mut f: Frappe = rig.frappe().await;
    let mut docs: Vec<Invoice> = (1..=12)
        .map(|i| Invoice::draft(&format!("P-{i:02}"), "C1", 2))
        .collect();
    for d in &docs {
        f.insert_invoice(d).await;
    }
    f.insert_invoice(&Invoice::draft("S-0", "C1", 1)).await;
    rig.capture().await;
    rs.restart(&rig, "");
    rs.wait_for(&db, "S-0").await;
    let mut sentinel = 0;
    // 1. Default policies (manual, changed-column detection): a local edit of another field
    // is kept beside the primary's change; an edit of the same field is a conflict.
    set_local(&rs, &db, "P-01", "remarks", "local note", LATER).await;
    set_local(&rs, &db, "P-02", "status", "Overdue", LATER).await;
    for i in [0, 1] {
        docs[i].status = "Paid".into();
        f.save_invoice(&docs[i]).await;
    }
    settle(&rig, &rs, &mut f, &mut sentinel).await;
    for i in 0..2 {
        assert_eq!(
            rs.field(i, &db, "P-01", "status").await.as_deref(),
            Some("Paid")
        );
        assert_eq!(
            rs.field(i, &db, "P-01", "remarks").await.as_deref(),
            Some("local note")
        );
        assert_eq!(
            rs.field(i, &db, "P-02", "status").await.as_deref(),
            Some("Overdue")
        );
    }
    let list = text(&cdc(&["conflicts", "--replica", &rs.servers[0].1, "list"]));
    assert!(
        list.contains("Sales Invoice P-02") && list.contains("1 conflict(s)"),
        "{list}"
    );

    // 2. primary_wins, and the docstatus guard over it.
    rs.restart(&rig, "[conflicts]\ndefault = \"primary_wins\"\n");
    set_local(&rs, &db, "P-03", "status", "Overdue", LATER).await;
    rs.local(
        &db,
        "UPDATE `tabSales Invoice` SET docstatus = 1, status = 'Unpaid' WHERE name = 'P-04'",
        vec![],
    )
    .await;
    for i in [2, 3] {
        docs[i].status = "Paid".into();
        f.save_invoice(&docs[i]).await;
    }
    settle(&rig, &rs, &mut f, &mut sentinel).await;
    let mut p = rig.primary().conn(&db).await;
    for (m, _) in &rs.servers {
        let mut r = m.conn(&db).await;
        assert_eq!(
            doc_image(&mut r, "Sales Invoice", "P-03").await,
            doc_image(&mut p, "Sales Invoice", "P-03").await,
            "primary_wins: the replica equals the primary"
        );
    }
    for i in 0..2 {
        assert_eq!(
            rs.field(i, &db, "P-04", "docstatus").await.as_deref(),
            Some("1"),
            "guard"
        );
    }
    let list = text(&cdc(&["conflicts", "--replica", &rs.servers[1].1, "list"]));
    assert!(list.contains("P-04: docstatus guard"), "{list}");
    let m = scrape(rs.ports[0]).await;
    assert_eq!(
        sample(
            &m,
            "frappe_cdc_apply_conflict_decisions_total{decision=\"accept_primary\",doctype=\"Sales Invoice\",policy=\"primary_wins\"}"
        ),
        1.0,
        "{m}"
    );

    // 3. replica_wins.
    rs.restart(&rig, "[conflicts]\ndefault = \"replica_wins\"\n");
    set_local(&rs, &db, "P-05", "status", "Overdue", EARLIER).await;
    docs[4].status = "Paid".into();
    f.save_invoice(&docs[4]).await;
    settle(&rig, &rs, &mut f, &mut sentinel).await;
    for i in 0..2 {
        assert_eq!(
            rs.field(i, &db, "P-05", "status").await.as_deref(),
            Some("Overdue")
        );
    }
    // 4. newest_wins.
    rs.restart(&rig, "[conflicts]\ndefault = \"newest_wins\"\n");
    set_local(&rs, &db, "P-06", "status", "Overdue", LATER).await;
    set_local(&rs, &db, "P-07", "status", "Overdue", EARLIER).await;
    for i in [5, 6] {
        docs[i].status = "Paid".into();
        f.save_invoice(&docs[i]).await;
    }
    settle(&rig, &rs, &mut f, &mut sentinel).await;
    for i in 0..2 {
        assert_eq!(
            rs.field(i, &db, "P-06", "status").await.as_deref(),
            Some("Overdue"),
            "local is newer"
        );
        assert_eq!(
            rs.field(i, &db, "P-07", "status").await.as_deref(),
            Some("Paid"),
            "primary is newer"
        );
    }

    // 5. merge_fields with row detection: disjoint fields merge, the same field falls back.
    rs.restart(
        &rig,
        "[conflicts]\ndetect = \"row\"\n[conflicts.doctype.\"Sales Invoice\"]\npolicy = \"merge_fields\"\nfallback = \"replica_wins\"\n",
    );
    set_local(&rs, &db, "P-08", "remarks", "local note", LATER).await;
    set_local(&rs, &db, "P-09", "status", "Overdue", LATER).await;
    for i in [7, 8] {
        docs[i].status = "Paid".into();
        f.save_invoice(&docs[i]).await;
    }
    settle(&rig, &rs, &mut f, &mut sentinel).await;
    for i in 0..2 {
        assert_eq!(
            rs.field(i, &db, "P-08", "status").await.as_deref(),
            Some("Paid")
        );
        assert_eq!(
            rs.field(i, &db, "P-08", "remarks").await.as_deref(),
            Some("local note")
        );
        assert_eq!(
            rs.field(i, &db, "P-09", "status").await.as_deref(),
            Some("Overdue")
        );
    }

    // 6. Overrides per case: update_missing, insert_exists, delete_changed.
    rs.restart(
        &rig,
        "[conflicts]\ndefault = \"manual\"\nupdate_missing = \"primary_wins\"\ninsert_exists = \"replica_wins\"\ndelete_changed = \"primary_wins\"\n",
    );
    for t in [
        "tabSales Invoice",
        "tabSales Invoice Item",
        "tabSales Taxes and Charges",
        "tabPayment Schedule",
        "tabSales Team",
    ] {
        let col = if t == "tabSales Invoice" {
            "name"
        } else {
            "parent"
        };
        rs.local(
            &db,
            &format!("DELETE FROM `{t}` WHERE `{col}` = 'P-10'"),
            vec![],
        )
        .await;
    }
    docs[9].status = "Paid".into();
    f.save_invoice(&docs[9]).await;
    let mut local_first = Frappe::new(rs.servers[0].0.conn(&db).await);
    local_first
        .insert_invoice(&Invoice::draft("P-13", "LOCAL", 1))
        .await;
    let mut local_second = Frappe::new(rs.servers[1].0.conn(&db).await);
    local_second
        .insert_invoice(&Invoice::draft("P-13", "LOCAL", 1))
        .await;
    f.insert_invoice(&Invoice::draft("P-13", "C1", 1)).await;
    set_local(&rs, &db, "P-12", "status", "Overdue", LATER).await;
    f.delete_invoice(&docs[11]).await;
    settle(&rig, &rs, &mut f, &mut sentinel).await;
    for i in 0..2 {
        assert_eq!(
            rs.field(i, &db, "P-10", "status").await.as_deref(),
            Some("Paid"),
            "update_missing"
        );
        assert_eq!(
            rs.field(i, &db, "P-13", "customer").await.as_deref(),
            Some("LOCAL"),
            "insert_exists"
        );
        assert_eq!(
            rs.field(i, &db, "P-12", "status").await,
            None,
            "delete_changed"
        );
    }

    // Every automatic decision is audited, with its policy.
    let auto = text(&cdc(&[
        "conflicts",
        "--replica",
        &rs.servers[0].1,
        "list",
        "--auto",
    ]));
    for (name, policy, decision) in [
        ("P-03", "primary_wins", "accept_primary"),
        ("P-05", "replica_wins", "keep_local"),
        ("P-06", "newest_wins", "keep_local"),
        ("P-07", "newest_wins", "accept_primary"),
        ("P-08", "merge_fields", "merged"),
        ("P-09", "replica_wins", "keep_local"),
        ("P-10", "primary_wins", "accept_primary"),
        ("P-13", "replica_wins", "keep_local"),
        ("P-12", "primary_wins", "accept_primary"),
    ] {
        assert!(
            auto.lines()
                .any(|l| l.contains(&format!("Sales Invoice {name}:"))
                    && l.contains(policy)
                    && l.contains(decision)),
            "{name} {policy} {decision} not audited:\n{auto}"
        );
    }
    assert!(auto.contains("9 conflict(s)"), "{auto}");
    assert!(!auto.contains("P-01") && !auto.contains("P-02"), "{auto}");

    // Determinism: both replicas hold the same documents.
    let mut a = rs.servers[0].0.conn(&db).await;
    let mut b = rs.servers[1].0.conn(&db).await;
    for i in 1..=13 {
        let n = format!("P-{i:02}");
        assert_eq!(
            doc_image(&mut a, "Sales Invoice", &n).await,
            doc_image(&mut b, "Sales Invoice", &n).await,
            "{n} differs between the two replicas"
        );
    }
    drop(rs);
}

/// Ends a phase: inserts the next sentinel document, captures, and waits until the sentinel is
/// on both replicas (then everything of the phase has been decided there).
async fn settle(rig: &Rig, rs: &Replicas, f: &mut Frappe, n: &mut u32) {
    *n += 1;
    let name = format!("S-{n}");
    f.insert_invoice(&Invoice::draft(&name, "C1", 1)).await;
    rig.capture().await;
    rs.wait_for(&rig.db, &name).await;
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

//! Apply vs native replication on a backlog of updates (ERPNext saves are mostly updates of
//! documents the replica already has): `rounds` rounds on the same two replicas, each one
//! Frappe-like save of every backlog document (the parent and its 10 item rows, one
//! transaction each) written while both are stopped, then native replication timed from START
//! SLAVE and `frappe-cdc apply` from its process start until each has applied the round.
//!
//! The end of a round is a sentinel document written after it: on one partition (apply) and
//! one SQL thread (native) it is applied last, and one primary-key lookup sees it, so the
//! wait does not load the replica it measures. Every updated row is then counted once, untimed.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use crate::common::servers::{Mariadb, PRIMARY_ARGS, free_port, scratch_dir};
use crate::{
    Profile, Report, apply_round, capture_to_end, cpu_secs, install_proc, median, native_round, q1,
    spawn_apply, wait_sql, write_docs,
};

/// One Frappe-like save of each of `n` documents `prefix0…`: the parent (total +100, so the
/// k-th save leaves 1000 + 100·k) and its item rows (qty +1), one transaction each.
pub const UPDATES: &str = "CREATE PROCEDURE bench_updates(IN prefix VARCHAR(40), IN n INT)
BEGIN
  DECLARE i INT DEFAULT 0;
  WHILE i < n DO
    START TRANSACTION;
    UPDATE `tabSales Invoice` SET modified = NOW(6), total = total + 100, grand_total = grand_total + 100,
      outstanding_amount = outstanding_amount + 100, status = 'Unpaid' WHERE name = CONCAT(prefix, i);
    UPDATE `tabSales Invoice Item` SET modified = NOW(6), qty = qty + 1, amount = amount + 100
      WHERE parent = CONCAT(prefix, i);
    COMMIT;
    SET i = i + 1;
  END WHILE;
END";

/// Rows of the `BL-` backlog documents that carry their `k`-th save (parent + items).
pub fn saved_rows_sql(k: u64) -> String {
    format!(
        "SELECT (SELECT COUNT(*) FROM `tabSales Invoice` WHERE name LIKE 'BL-%' AND total = {}) \
         + (SELECT COUNT(*) FROM `tabSales Invoice Item` WHERE parent LIKE 'BL-%' AND qty = {})",
        1000 + 100 * k,
        1 + k
    )
}

/// Whether the sentinel document `name` is on a server (a primary-key lookup).
fn sentinel_sql(name: &str) -> String {
    format!("SELECT COUNT(*) FROM `tabSales Invoice` WHERE name = '{name}'")
}

/// Waits for the sentinel `name`; seconds taken.
pub async fn wait_sentinel(c: &mut mysql_async::Conn, name: &str, what: &str) -> f64 {
    let sql = sentinel_sql(name);
    wait_sql(
        c,
        &sql,
        1,
        Duration::from_secs(1800),
        what,
        Duration::from_millis(20),
    )
    .await
}

/// The updates section: `docs` documents, `rounds` saves of each.
pub async fn run(r: &mut Report, docs: u64, rounds: usize) {
    eprintln!(
        "== updates: {docs} documents saved {rounds} times; apply vs native replication per save"
    );
    let primary = Mariadb::start(PRIMARY_ARGS);
    let (_, broker) = crate::common::rig::shared();
    let bootstrap = broker.bootstrap();
    let db = "up";
    primary.create_site(db).await;
    let mut pc = primary.conn(db).await;
    install_proc(&mut pc).await;
    pc.query_drop(UPDATES).await.expect("updates procedure");
    let pos0: String = q1(&mut pc, "SELECT @@gtid_binlog_pos").await;
    let url = primary.cdc_url(db);
    let topic = "up-docs";
    let state = scratch_dir("up-state");
    capture_to_end(&url, &bootstrap, topic, &state, 7201, &[]);
    write_docs(&mut pc, "BL-", docs).await;
    capture_to_end(&url, &bootstrap, topic, &state, 7201, &[]);
    let end: String = q1(&mut pc, "SELECT @@gtid_binlog_pos").await;
    // Both replicas first hold the new documents (not timed here: the backlog section is).
    let (_, _, native) = native_round(&primary, db, &pos0, &end, docs).await;
    let mut nc = native.conn(db).await;
    nc.query_drop("STOP SLAVE").await.expect("stop slave");
    let first = apply_round(&bootstrap, topic, "up", db, docs, &[]).await;
    drop(first.process);
    let mut ac = first.replica.conn(db).await;

    let rows = docs * 11;
    let per_row = |cpu: f64| cpu / rows as f64 * 1e6;
    let mut ratios = Vec::new();
    for k in 1..=rounds as u64 {
        let t = Instant::now();
        pc.exec_drop("CALL bench_updates('BL-', ?)", (docs,))
            .await
            .expect("updates");
        if k == 1 {
            r.add(
                "updates",
                "primary: one save of every document (server-side loop)",
                docs as f64 / t.elapsed().as_secs_f64(),
                "docs/s",
            );
        }
        let sentinel = format!("END{k}-");
        write_docs(&mut pc, &sentinel, 1).await;
        let sentinel = format!("{sentinel}0");
        let (csecs, _) = capture_to_end(&url, &bootstrap, topic, &state, 7201, &[]);
        if k == 1 {
            r.add(
                "updates",
                "capture of the save backlog (process, to the broker)",
                rows as f64 / csecs,
                "rows/s",
            );
        }
        let end: String = q1(&mut pc, "SELECT @@gtid_binlog_pos").await;

        let cpu0 = cpu_secs(native.pid);
        let t = Instant::now();
        let prof = (k == 1).then(|| Profile::start("updates-native", &[("replica", native.pid)]));
        nc.query_drop("START SLAVE").await.expect("start slave");
        let waited: i64 = q1(&mut nc, &format!("SELECT MASTER_GTID_WAIT('{end}', 1800)")).await;
        assert_eq!(waited, 0, "native replica caught up on save {k}");
        let nsecs = t.elapsed().as_secs_f64();
        let ncpu = cpu_secs(native.pid) - cpu0;
        drop(prof);
        nc.query_drop("STOP SLAVE").await.expect("stop slave");

        let cpu0 = cpu_secs(first.replica.pid);
        let t = Instant::now();
        let apply = spawn_apply(
            &first.replica,
            db,
            &bootstrap,
            topic,
            "up",
            free_port(),
            &[],
        );
        let prof = (k == 1).then(|| {
            let pids = [("replica", first.replica.pid), ("apply", apply.id())];
            Profile::start("updates-apply", &pids)
        });
        wait_sentinel(&mut ac, &sentinel, "apply").await;
        let asecs = t.elapsed().as_secs_f64();
        drop(prof);
        let acpu = cpu_secs(first.replica.pid) - cpu0;
        let apply_cpu = cpu_secs(apply.id());
        drop(apply);

        for (c, who) in [(&mut nc, "native replica"), (&mut ac, "apply's replica")] {
            let got: u64 = q1(c, &saved_rows_sql(k)).await;
            assert_eq!(got, rows, "{who} holds every row of save {k}");
        }
        let line = |what: &str| format!("save {k}: {what}");
        r.add(
            "updates",
            &line("native catch-up"),
            docs as f64 / nsecs,
            "docs/s",
        );
        r.add(
            "updates",
            &line("apply catch-up"),
            docs as f64 / asecs,
            "docs/s",
        );
        r.add(
            "updates",
            &line("apply time / native time (≤ 1 is the goal)"),
            asecs / nsecs,
            "x",
        );
        r.add(
            "updates",
            &line("replica CPU per row, native"),
            per_row(ncpu),
            "µs",
        );
        r.add(
            "updates",
            &line("replica CPU per row, apply"),
            per_row(acpu),
            "µs",
        );
        r.add(
            "updates",
            &line("apply process CPU per row"),
            per_row(apply_cpu),
            "µs",
        );
        ratios.push(asecs / nsecs);
    }
    r.add(
        "updates",
        &format!("apply time / native time, median of {rounds} saves"),
        median(&ratios),
        "x",
    );
}

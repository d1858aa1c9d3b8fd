//! The conflicts page in a real browser (Debian's headless Chromium through chromedriver):
//! log in with the token, filter the list by doctype, open a conflict whose child row both
//! sides changed, find that row in the three-way table, click Accept primary, and the replica
//! then equals the primary. POSTs without the session or the CSRF value are refused.
//! Screenshots of the list and the detail view go to target/conflicts-page/.

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::doc_image;
use common::rig::Rig;
use common::servers::{KillOnDrop, free_port};
use common::webdriver::Browser;
use common::workload::Invoice;
use mysql_async::prelude::Queryable;
use serde_json::Value;

const TOKEN: &str = "page-test-token-0123456789";

async fn status_of(resp: reqwest::Response) -> u16 {
    resp.status().as_u16()
}

/// `name=value` of the cookie a response sets.
fn cookie_set_by(r: &reqwest::Response) -> String {
    r.headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reviews_and_resolves_a_conflict_in_the_browser() {
    let rig = Rig::new("page").await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    let mut inv = Invoice::draft("PAGE-1", "C1", 2);
    f.insert_invoice(&inv).await;
    f.insert_invoice(&Invoice::draft("PAGE-2", "C1", 1)).await;
    f.insert_customer("CU-PAGE", "Retail").await;
    rig.capture().await;
    let _apply = rig.spawn_apply(&rurl, free_port(), &[]);
    common::wait_until(Duration::from_secs(60), "initial load", || async {
        doc_image(&mut replica.conn(&rig.db).await, "Customer", "CU-PAGE")
            .await
            .is_some()
    })
    .await;

    // Both sides change the same child row (and a customer's credit limit).
    let mut r = replica.conn(&rig.db).await;
    r.query_drop("UPDATE `tabSales Invoice Item` SET qty = 3 WHERE name = 'PAGE-1-it0'")
        .await
        .expect("local child edit");
    r.query_drop("UPDATE `tabCustomer` SET credit_limit = 1 WHERE name = 'CU-PAGE'")
        .await
        .expect("local customer edit");
    for c in inv.children.iter_mut().filter(|c| c.name == "PAGE-1-it0") {
        for (k, v) in c.cols.iter_mut() {
            if *k == "qty" {
                *v = "7.000000000".into();
            }
        }
    }
    inv.status = "Unpaid".into();
    f.save_invoice(&inv).await;
    let mut p = rig.primary().conn(&rig.db).await;
    p.query_drop(
        "UPDATE `tabCustomer` SET credit_limit = 2, modified = now(6) WHERE name = 'CU-PAGE'",
    )
    .await
    .expect("primary customer edit");
    rig.capture().await;
    common::wait_until(Duration::from_secs(60), "two open conflicts", || async {
        let n: Option<u64> = replica
            .conn(&rig.db)
            .await
            .query_first("SELECT COUNT(*) FROM `_frappe_cdc_conflicts` WHERE status = 'open'")
            .await
            .expect("count");
        n == Some(2)
    })
    .await;

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _page = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
            .args(["conflicts", "--replica", &rurl, "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--primary-site-url", "http://primary.example"])
            .env("FRAPPE_CDC_REPLICA_PASSWORD", "adminpass")
            .env("FRAPPE_CDC_CONFLICTS_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("conflicts serve"),
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    common::wait_until(Duration::from_secs(30), "the page answers", || async {
        http.get(format!("{base}/login")).send().await.is_ok()
    })
    .await;
    let id: u64 = r
        .query_first("SELECT id FROM `_frappe_cdc_conflicts` WHERE name = 'PAGE-1'")
        .await
        .expect("id")
        .expect("PAGE-1 conflict");

    // Without a session, pages send to the login form and POSTs are refused.
    let resp = http
        .get(format!("{base}/conflicts"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 303, "to the login form");
    let resolve_url = format!("{base}/conflicts/{id}/resolve");
    let resp = http
        .post(&resolve_url)
        .form(&[("action", "accept_primary")])
        .send()
        .await
        .expect("post");
    assert_eq!(
        status_of(resp).await,
        403,
        "a POST without the token is refused"
    );
    // A session, but no CSRF value (or a wrong one): refused too.
    let login = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login form");
    let login_cookie = cookie_set_by(&login);
    let html = login.text().await.unwrap_or_default();
    let login_csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default()
        .to_string();
    let bad = http
        .post(format!("{base}/login"))
        .header("cookie", &login_cookie)
        .form(&[
            ("csrf", login_csrf.as_str()),
            ("token", "wrong-token-wrong-token"),
        ])
        .send()
        .await
        .expect("bad login");
    assert_eq!(bad.status().as_u16(), 403, "a wrong token is refused");
    let ok = http
        .post(format!("{base}/login"))
        .header("cookie", &login_cookie)
        .form(&[("csrf", login_csrf.as_str()), ("token", TOKEN)])
        .send()
        .await
        .expect("login");
    assert_eq!(ok.status().as_u16(), 303, "logged in");
    let session = cookie_set_by(&ok);
    assert!(session.starts_with("fcdc_session="), "{session}");
    for form in [
        vec![("action", "accept_primary")],
        vec![("action", "accept_primary"), ("csrf", "forged")],
    ] {
        let resp = http
            .post(&resolve_url)
            .header("cookie", &session)
            .form(&form)
            .send()
            .await
            .expect("post");
        assert_eq!(
            status_of(resp).await,
            403,
            "a POST without the CSRF value is refused"
        );
    }
    let open: Option<String> = r
        .query_first(format!(
            "SELECT status FROM `_frappe_cdc_conflicts` WHERE id = {id}"
        ))
        .await
        .expect("status");
    assert_eq!(
        open.as_deref(),
        Some("open"),
        "refused POSTs changed nothing"
    );

    // The browser.
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/conflicts-page");
    let b = Browser::start().await;
    b.goto(&format!("{base}/conflicts")).await;
    b.type_into("#token", TOKEN).await;
    b.click("#login").await;
    let all = b.text("#conflicts").await;
    assert!(all.contains("PAGE-1") && all.contains("CU-PAGE"), "{all}");
    let counts = b.text("#counts").await;
    assert!(
        counts.contains("Customer") && counts.contains("Sales Invoice"),
        "{counts}"
    );
    b.screenshot(&shots.join("list.png")).await;
    b.click("#f-doctype option[value='Sales Invoice']").await;
    b.click("#apply-filter").await;
    let filtered = b.text("#conflicts").await;
    assert!(
        filtered.contains("PAGE-1") && !filtered.contains("CU-PAGE"),
        "filtered by doctype: {filtered}"
    );
    assert!(
        b.url().await.contains("doctype=Sales+Invoice"),
        "{}",
        b.url().await
    );
    b.click("#conflicts a.doc").await;
    // The child row both sides changed, lined up by name, with the three versions of qty.
    let row = b
        .text("table.child[data-field='items'] tr[data-row='PAGE-1-it0']")
        .await;
    assert!(
        row.contains("PAGE-1-it0") && row.contains("changed"),
        "{row}"
    );
    let qty = b
        .text("table.child[data-field='items'] tr[data-column='qty']")
        .await;
    assert!(
        qty.contains("1.000000000") && qty.contains("7.000000000") && qty.contains("3.000000000"),
        "before 1, primary 7, replica 3: {qty}"
    );
    let src = b.source().await;
    assert!(src.contains("class=\"val x\""), "the clash is highlighted");
    assert!(
        src.contains("http://primary.example/app/sales-invoice/PAGE-1"),
        "link to the primary's document"
    );
    b.screenshot(&shots.join("detail.png")).await;
    b.click("#accept").await;
    let msg = b.text("#message").await;
    assert!(msg.contains("Resolved"), "{msg}");
    assert!(b.text("#status").await.contains("resolved"));
    // Bulk: every open conflict of the filter (the customer's) kept local.
    b.goto(&format!("{base}/conflicts?status=open")).await;
    let left = b.text("#conflicts").await;
    assert!(
        left.contains("CU-PAGE") && !left.contains("PAGE-1"),
        "{left}"
    );
    b.click("#bulk button[value='keep_local']").await;
    let msg = b.text("#message").await;
    assert!(msg.contains("1 resolved, 0 left open"), "{msg}");
    b.quit().await;

    let img = |v: Option<Value>| v;
    assert_eq!(
        img(doc_image(&mut r, "Sales Invoice", "PAGE-1").await),
        img(doc_image(&mut p, "Sales Invoice", "PAGE-1").await),
        "after Accept primary the replica equals the primary"
    );
    let left: Vec<(String, String)> = r
        .query("SELECT name, resolution FROM `_frappe_cdc_conflicts` ORDER BY id")
        .await
        .expect("resolutions");
    assert_eq!(
        left,
        vec![
            ("PAGE-1".to_string(), "accept_primary".to_string()),
            ("CU-PAGE".to_string(), "keep_local".to_string())
        ]
    );
    let limit: Option<String> = r
        .query_first("SELECT CAST(credit_limit AS CHAR) FROM `tabCustomer` WHERE name = 'CU-PAGE'")
        .await
        .expect("credit limit");
    assert!(
        limit.is_some_and(|l| l.starts_with("1.")),
        "the local value kept"
    );
    eprintln!("screenshots: {}", shots.display());
}

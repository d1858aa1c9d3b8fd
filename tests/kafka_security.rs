//! The pipeline over an authenticated, encrypted Kafka listener: Apache Kafka with a SASL_SSL
//! client listener (TLS certificate from a throwaway CA made here with openssl, SASL/PLAIN
//! users for capture and apply), capture and apply given the client settings through a
//! `--kafka-config` file (secrets never in argv). The replica ends equal to the primary; a
//! client with a wrong password gets nowhere and says why.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::kafka::{Kafka, Security};
use common::rig::Rig;
use common::servers::{free_port, scratch_dir};
use common::workload::Invoice;

/// Runs openssl with `args` in `dir`, panicking with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl not found (apt install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as ca.pem and server.p12.
fn throwaway_ca(dir: &Path, password: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=frappe-cdc test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("san");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let pass = format!("pass:{password}");
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            "server.pem",
            "-inkey",
            "server.key",
            "-certfile",
            "ca.pem",
            "-out",
            "server.p12",
            "-passout",
            &pass,
        ],
    );
}

fn client_config(dir: &Path, name: &str, user: &str, password: &str) -> String {
    let path = dir.join(format!("{name}.properties"));
    std::fs::write(
        &path,
        format!(
            "# librdkafka settings for {name}\n\
             security.protocol=SASL_SSL\n\
             sasl.mechanisms=PLAIN\n\
             sasl.username={user}\n\
             sasl.password={password}\n\
             ssl.ca.location={}\n\
             client.id=frappe-cdc-{name}\n",
            dir.join("ca.pem").display()
        ),
    )
    .expect("client config");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_sasl_ssl() {
    let dir = scratch_dir("tls");
    throwaway_ca(&dir, "keystore-secret");
    let kafka = Kafka::cluster_with(
        1,
        Some(&Security {
            keystore: dir.join("server.p12"),
            keystore_password: "keystore-secret".into(),
            users: vec![
                ("cdc".into(), "cdc-secret".into()),
                ("apply".into(), "apply-secret".into()),
            ],
        }),
    );
    let rig = Rig::on_brokers("sasl", &kafka.bootstrap()).await;
    let (replica, rurl) = rig.replica().await;
    let mut f = rig.frappe().await;
    f.insert_customer("C1", "Commercial").await;
    for i in 0..20 {
        f.insert_invoice(&Invoice::draft(&format!("S-{i}"), "C1", 3))
            .await;
    }

    // A wrong password: capture cannot create its topic and exits non-zero, saying so.
    let bad = client_config(&dir, "bad", "cdc", "not-the-password");
    let out = Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args([
            "capture",
            "--source",
            &rig.primary().cdc_url(&rig.db),
            "--brokers",
            &kafka.bootstrap(),
        ])
        .args([
            "--topic",
            &rig.topic,
            "--server-id",
            &rig.server_id.to_string(),
        ])
        .args([
            "--state-dir",
            scratch_dir("badstate").to_str().unwrap_or_default(),
        ])
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--kafka-config",
            &bad,
        ])
        .env("FRAPPE_CDC_SOURCE_PASSWORD", "cdcpass")
        .output()
        .expect("run capture");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "capture with a wrong SASL password must fail"
    );
    assert!(
        err.contains(&rig.topic) || err.to_lowercase().contains("auth"),
        "the error names the topic or the authentication failure: {err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "no password in the output"
    );

    let cconf = client_config(&dir, "capture", "cdc", "cdc-secret");
    let aconf = client_config(&dir, "apply", "apply", "apply-secret");
    let cport = free_port();
    let _capture = rig.spawn_capture(None, cport, &["--kafka-config", &cconf]);
    let aport = free_port();
    let _apply = rig.spawn_apply(&rurl, aport, &["--kafka-config", &aconf]);
    rig.wait_in_sync(&rurl, Duration::from_secs(120), "over SASL_SSL")
        .await;
    let mut r = replica.conn(&rig.db).await;
    let n: Option<u64> = mysql_async::prelude::Queryable::query_first(
        &mut r,
        "SELECT COUNT(*) FROM `tabSales Invoice`",
    )
    .await
    .expect("count");
    assert_eq!(n, Some(20));
    // The dead-letter topic was created through the secured listener too.
    let m = common::metrics::scrape(aport).await;
    assert!(m.contains("frappe_cdc_apply_documents_total"));
    eprintln!("20 invoices applied over SASL_SSL (PLAIN) with a throwaway CA");
}

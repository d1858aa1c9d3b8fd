//! Type round-trip over every Frappe column type (and the MariaDB types around them) with edge
//! values, schema changes mid-stream, and MariaDB compressed binlog events. This binary's
//! primary runs with `log_bin_compress=ON` and a 10-byte threshold, so most row events here
//! arrive compressed (types 166–168).

mod common;

use common::doc_image;
use common::rig::{Rig, primary_options};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

fn init() {
    primary_options(&["--log-bin-compress=ON", "--log-bin-compress-min-len=10"]);
}

const COLS: &str = "name, creation, modified, data_f, int_f, long_int_f, check_f, currency_f, float_f, percent_f, rating_f, date_f, datetime_f, \
    time_f, small_text_f, long_text_f, json_f, select_f, mediumint_f, tinyint_f, ubigint_f, double_f, blob_f, varbinary_f, timestamp_f, year_f, enum_f, latin1_f, bit_f";

/// Edge values, one row each (SQL literals).
fn rows(prefix: &str) -> Vec<String> {
    let big = "x".repeat(100_000);
    vec![
        format!(
            "('{prefix}-max', '2024-01-01 00:00:00.000000', '2024-02-29 23:59:59.999999', 'quote '' backslash \\\\ tab \t nl \n 𝄞😀 ü', 2147483647, 9223372036854775807, 1, \
         '999999999999.999999999', '0.000000001', '100.000000000', 5.00, '9999-12-31', '9999-12-31 23:59:59.999999', '838:59:59.000000', \
         'line1\nline2', '{big}', '{{\"a\": [1, 2.5, {{\"b\": null}}], \"s\": \"é\"}}', 'Option A', 8388607, 127, 18446744073709551615, 1.5e300, \
         x'00FF10DEADBEEF', x'DEADBEEF', '2038-01-19 03:14:07.999999', 2155, 'Cancelled', 'café', b'111111111111')"
        ),
        format!(
            "('{prefix}-min', '1970-01-01 00:00:00.000001', '1970-01-01 00:00:00.000001', '', -2147483648, -9223372036854775808, 0, \
         '-999999999999.999999999', '-0.000000001', '0.000000000', 0.00, '1000-01-01', '1000-01-01 00:00:00.000000', '-838:59:59.000000', \
         '', '', '[]', '', -8388608, -128, 0, -0.1, x'', x'00', '1970-01-01 00:00:01.000000', 1901, 'Draft', '', b'0')"
        ),
        format!(
            "('{prefix}-zero', '0000-00-00 00:00:00.000000', '2024-01-01 00:00:00.000000', NULL, 0, 0, 0, '0', '0', '0', NULL, '0000-00-00', \
         '0000-00-00 00:00:00.000000', '00:00:00.000001', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        ),
    ]
}

fn parent(v: &Value) -> Value {
    v["after"]["parent"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_type_round_trips_exactly() {
    init();
    let mut rig = Rig::new("types").await;
    let mut c = rig.primary().conn(&rig.db).await;
    c.query_drop(format!(
        "INSERT INTO `tabType Probe` ({COLS}) VALUES {}",
        rows("snap").join(",")
    ))
    .await
    .expect("insert snapshot rows");
    let snap = rig.round().await;
    c.query_drop(format!(
        "INSERT INTO `tabType Probe` ({COLS}) VALUES {}",
        rows("bin").join(",")
    ))
    .await
    .expect("insert binlog rows");
    let bin = rig.round().await;
    for m in snap.iter().chain(bin.iter()) {
        common::schema::assert_envelope(m.value.as_ref().expect("envelope"));
    }
    let events: Vec<mysql_async::Row> = c.query("SHOW BINLOG EVENTS").await.expect("events");
    let compressed = events
        .iter()
        .filter(|r| {
            r.get::<String, _>(2)
                .is_some_and(|t| t.contains("compressed"))
        })
        .count();
    assert!(
        compressed > 0,
        "the primary wrote no compressed row events; the test would prove nothing about them"
    );

    for suffix in ["max", "min", "zero"] {
        let s = snap
            .iter()
            .find(|m| m.key["name"] == format!("snap-{suffix}"))
            .and_then(|m| m.value.clone())
            .expect("snapshot envelope");
        let b = bin
            .iter()
            .find(|m| m.key["name"] == format!("bin-{suffix}"))
            .and_then(|m| m.value.clone())
            .expect("binlog envelope");
        let (mut ps, mut pb) = (parent(&s), parent(&b));
        assert_eq!(ps["name"], format!("snap-{suffix}"));
        ps["name"] = json!(null);
        pb["name"] = json!(null);
        assert_eq!(
            ps, pb,
            "snapshot (SQL) and binlog decoders disagree on row {suffix}"
        );
        let read_back = doc_image(&mut c, "Type Probe", &format!("bin-{suffix}"))
            .await
            .expect("row");
        assert_eq!(
            b["after"], read_back,
            "binlog image differs from the primary for row {suffix}"
        );
    }
    let max = bin
        .iter()
        .find(|m| m.key["name"] == "bin-max")
        .and_then(|m| m.value.clone())
        .map(|v| parent(&v))
        .expect("max");
    let expect = json!({
        "modified": "2024-02-29 23:59:59.999999", "int_f": 2147483647, "long_int_f": 9223372036854775807i64, "check_f": 1,
        "currency_f": "999999999999.999999999", "float_f": "0.000000001", "rating_f": "5.00", "date_f": "9999-12-31",
        "datetime_f": "9999-12-31 23:59:59.999999", "time_f": "838:59:59.000000", "json_f": "{\"a\": [1, 2.5, {\"b\": null}], \"s\": \"é\"}",
        "mediumint_f": 8388607, "tinyint_f": 127, "ubigint_f": 18446744073709551615u64, "double_f": 1.5e300,
        "blob_f": {"$base64": "AP8Q3q2+7w=="}, "varbinary_f": {"$base64": "3q2+7w=="}, "timestamp_f": "2038-01-19 03:14:07.999999",
        "year_f": 2155, "enum_f": "Cancelled", "latin1_f": "café", "bit_f": 4095,
    });
    for (k, v) in expect.as_object().expect("object") {
        assert_eq!(&max[k], v, "column {k}");
    }
    assert_eq!(max["data_f"], "quote ' backslash \\ tab \t nl \n 𝄞😀 ü");
    assert_eq!(max["long_text_f"].as_str().map(str::len), Some(100_000));
    let min = bin
        .iter()
        .find(|m| m.key["name"] == "bin-min")
        .and_then(|m| m.value.clone())
        .map(|v| parent(&v))
        .expect("min");
    let expect = json!({
        "creation": "1970-01-01 00:00:00.000001", "int_f": -2147483648, "long_int_f": -9223372036854775808i64, "currency_f": "-999999999999.999999999",
        "float_f": "-0.000000001", "time_f": "-838:59:59.000000", "mediumint_f": -8388608, "tinyint_f": -128, "double_f": -0.1,
        "blob_f": {"$base64": ""}, "varbinary_f": {"$base64": "AA=="}, "year_f": 1901, "bit_f": 0, "data_f": "",
    });
    for (k, v) in expect.as_object().expect("object") {
        assert_eq!(&min[k], v, "column {k}");
    }
    let zero = bin
        .iter()
        .find(|m| m.key["name"] == "bin-zero")
        .and_then(|m| m.value.clone())
        .map(|v| parent(&v))
        .expect("zero");
    assert_eq!(zero["date_f"], "0000-00-00");
    assert_eq!(zero["datetime_f"], "0000-00-00 00:00:00.000000");
    assert_eq!(zero["time_f"], "00:00:00.000001");
    assert_eq!(zero["data_f"], Value::Null);
    assert_eq!(zero["currency_f"], "0.000000000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_added_dropped_and_modified_mid_stream() {
    init();
    let mut rig = Rig::new("ddl").await;
    let mut f = rig.frappe().await;
    f.insert_customer("D1", "Commercial").await;
    rig.round().await;
    let mut c = rig.primary().conn(&rig.db).await;
    // A Custom Field: bench adds it with ALTER TABLE ... ADD COLUMN (not at the end).
    c.query_drop("ALTER TABLE `tabCustomer` ADD COLUMN `custom_region` varchar(140) DEFAULT 'North' AFTER `customer_name`").await.expect("add");
    f.db_set("tabCustomer", "D1", "custom_region", "South".into(), true)
        .await;
    let ms = rig.round().await;
    assert_eq!(ms.len(), 1);
    let e = ms[0].value.clone().expect("envelope");
    assert_eq!(e["after"]["parent"]["custom_region"], "South");
    assert_eq!(
        Some(e["after"].clone()),
        doc_image(&mut c, "Customer", "D1").await
    );
    let keys: Vec<&String> = e["after"]["parent"]
        .as_object()
        .expect("obj")
        .keys()
        .collect();
    assert_eq!(
        keys[8], "custom_region",
        "column order follows the table after ALTER"
    );

    c.query_drop(
        "ALTER TABLE `tabCustomer` MODIFY COLUMN `credit_limit` decimal(25,3) NOT NULL DEFAULT 0",
    )
    .await
    .expect("modify");
    c.query_drop("ALTER TABLE `tabCustomer` DROP COLUMN `territory`")
        .await
        .expect("drop");
    f.db_set(
        "tabCustomer",
        "D1",
        "customer_name",
        "D1 renamed".into(),
        true,
    )
    .await;
    let ms = rig.round().await;
    assert_eq!(ms.len(), 1);
    let e = ms[0].value.clone().expect("envelope");
    assert_eq!(e["after"]["parent"]["credit_limit"], "50000.000");
    assert!(
        e["after"]["parent"].get("territory").is_none(),
        "dropped column must not appear"
    );
    assert_eq!(
        e["before"]["parent"]["territory"], "India",
        "the before image is the document as it was"
    );
    assert_eq!(
        Some(e["after"].clone()),
        doc_image(&mut c, "Customer", "D1").await
    );
}

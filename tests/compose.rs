//! docker-compose.yml, checked without a Docker engine: it parses as a Compose file (typed, with
//! docker-compose-types), has the services the README promises, and its ports, env vars,
//! volumes, healthchecks and Prometheus/Grafana wiring line up with the code's defaults, the
//! Dockerfile and the files in the repository.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn help(sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_frappe-cdc"))
        .args([sub, "--help"])
        .output()
        .expect("frappe-cdc --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The default of `--metrics-addr` as `--help` prints it.
fn default_metrics_port(sub: &str) -> u16 {
    let h = help(sub);
    let at = h.find("--metrics-addr").expect("--metrics-addr in help");
    let rest = &h[at..];
    let d = rest.find("[default: ").expect("default shown") + "[default: ".len();
    let addr = &rest[d..d + rest[d..].find(']').expect("]")];
    assert!(
        addr.starts_with("127.0.0.1:"),
        "{sub} binds loopback by default, not {addr}"
    );
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

fn env_of<'a>(svc: &'a Value, key: &str) -> &'a str {
    svc["environment"][key]
        .as_str()
        .unwrap_or_else(|| panic!("environment {key} missing"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

#[test]
fn compose_file_parses_as_compose() {
    let typed: Result<docker_compose_types::Compose, _> =
        serde_norway::from_str(&read("docker-compose.yml"));
    let typed = typed.expect("docker-compose.yml is not a valid Compose file");
    assert_eq!(typed.services.0.len(), 10);
}

#[test]
fn compose_services_line_up_with_the_code() {
    let c = yaml("docker-compose.yml");
    let services = c["services"].as_object().expect("services");
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for want in [
        "mariadb-primary",
        "mariadb-replica",
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "capture",
        "apply",
        "prometheus",
        "grafana",
        "workload",
    ] {
        assert!(names.contains(&want), "service {want} missing");
    }

    // Primary: every binlog setting preflight requires.
    let cmd: Vec<&str> = c["services"]["mariadb-primary"]["command"]
        .as_array()
        .expect("primary command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for flag in [
        "--log-bin=",
        "--binlog-format=ROW",
        "--binlog-row-image=FULL",
        "--binlog-row-metadata=FULL",
        "--server-id=",
    ] {
        assert!(
            cmd.iter().any(|a| a.starts_with(flag)),
            "primary lacks {flag}"
        );
    }

    // capture and apply: env vars exist in the CLI, metrics ports match the defaults, the
    // published port, the healthcheck and Prometheus' scrape target.
    let prom = yaml("grafana/prometheus/prometheus.yml");
    for (svc, sub, addr_var, job) in [
        (
            "capture",
            "capture",
            "FRAPPE_CDC_METRICS_ADDR",
            "frappe-cdc-capture",
        ),
        (
            "apply",
            "apply",
            "FRAPPE_CDC_METRICS_ADDR",
            "frappe-cdc-apply",
        ),
    ] {
        let s = &c["services"][svc];
        let h = help(sub);
        for k in s["environment"].as_object().expect("env").keys() {
            if k.starts_with("FRAPPE_CDC_") && !k.ends_with("_PASSWORD") {
                assert!(
                    h.contains(&format!("env: {k}")),
                    "{svc}: {k} is not a flag's env var"
                );
            }
        }
        let port = port_of(env_of(s, addr_var));
        assert_eq!(port, default_metrics_port(sub), "{svc} metrics port");
        assert!(
            env_of(s, addr_var).starts_with("0.0.0.0:"),
            "{svc} must listen beyond loopback in a container"
        );
        let published: Vec<&str> = s["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            published.contains(&format!("127.0.0.1:{port}:{port}").as_str()),
            "{svc} publishes {published:?}"
        );
        let hc = s["healthcheck"]["test"].to_string();
        assert!(
            hc.contains(&format!(":{port}/healthz")),
            "{svc} healthcheck {hc}"
        );
        let target = prom["scrape_configs"]
            .as_array()
            .expect("scrape_configs")
            .iter()
            .find(|j| j["job_name"] == job)
            .map(|j| j["static_configs"][0]["targets"][0].clone())
            .unwrap_or_else(|| panic!("no scrape job {job}"));
        assert_eq!(target, format!("{svc}:{port}"), "{job} target");
        // the image has what the healthcheck runs
        if hc.contains("curl") {
            assert!(
                read("Dockerfile").contains(" curl"),
                "Dockerfile must install curl"
            );
        }
    }

    // Connection URLs point at services; users and passwords match the init SQL.
    let cap = &c["services"]["capture"];
    assert!(env_of(cap, "FRAPPE_CDC_SOURCE").starts_with("mysql://cdc@mariadb-primary:3306/"));
    assert!(read("deploy/capture-user.sql").contains(&format!(
        "'cdc'@'%' IDENTIFIED BY '{}'",
        env_of(cap, "FRAPPE_CDC_SOURCE_PASSWORD")
    )));
    let app = &c["services"]["apply"];
    assert!(env_of(app, "FRAPPE_CDC_REPLICA").starts_with("mysql://apply@mariadb-replica:3306/"));
    assert!(read("deploy/apply-user.sql").contains(&format!(
        "'apply'@'%' IDENTIFIED BY '{}'",
        env_of(app, "FRAPPE_CDC_REPLICA_PASSWORD")
    )));
    for s in [cap, app] {
        assert_eq!(
            env_of(s, "FRAPPE_CDC_BROKERS"),
            "kafka-1:9092,kafka-2:9092,kafka-3:9092"
        );
    }
    // Three brokers of the Apache Kafka version the tests run (scripts/install-kafka.sh),
    // one quorum, replicated internal topics.
    let pinned = read("scripts/install-kafka.sh")
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION=").map(str::to_string))
        .expect("KAFKA_VERSION in install-kafka.sh");
    for i in 1..=3 {
        let k = &c["services"][format!("kafka-{i}")];
        assert_eq!(
            k["image"].as_str(),
            Some(format!("apache/kafka:{pinned}").as_str()),
            "kafka-{i} runs the tested version"
        );
        assert_eq!(env_of(k, "KAFKA_NODE_ID"), i.to_string());
        assert_eq!(
            env_of(k, "KAFKA_ADVERTISED_LISTENERS"),
            format!("PLAINTEXT://kafka-{i}:9092")
        );
        assert_eq!(
            env_of(k, "KAFKA_CONTROLLER_QUORUM_VOTERS"),
            "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        );
        assert_eq!(env_of(k, "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"), "3");
        assert_eq!(env_of(k, "KAFKA_MIN_INSYNC_REPLICAS"), "2");
    }

    // capture's state lives on a volume at the state dir the Dockerfile sets.
    let state = env_of(cap, "FRAPPE_CDC_STATE_DIR");
    assert!(read("Dockerfile").contains(&format!("FRAPPE_CDC_STATE_DIR={state}")));
    assert!(
        cap["volumes"]
            .as_array()
            .expect("capture volumes")
            .iter()
            .any(|v| v.as_str() == Some(&format!("capture-state:{state}"))),
        "capture state volume"
    );

    // Volumes: named ones are declared, bind mounts exist in the repo.
    let declared = c["volumes"].as_object().expect("volumes");
    for (name, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let v = v.as_str().expect("short volume syntax");
            let src = v.split(':').next().expect("source");
            if let Some(rel) = src.strip_prefix("./") {
                assert!(repo().join(rel).exists(), "{name}: {src} does not exist");
            } else {
                assert!(
                    declared.contains_key(src),
                    "{name}: volume {src} not declared"
                );
            }
        }
        // depends_on: service_healthy only on services with a healthcheck
        if let Some(deps) = s["depends_on"].as_object() {
            for (dep, cond) in deps {
                assert!(
                    services.contains_key(dep),
                    "{name} depends on unknown {dep}"
                );
                if cond["condition"] == "service_healthy" {
                    assert!(
                        services[dep].get("healthcheck").is_some(),
                        "{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                    );
                }
            }
        }
    }

    // Prometheus loads the alert rules it is given; Grafana's datasource points at it and its
    // dashboard provider reads the mounted dashboards.
    let rules_in_prom = prom["rule_files"][0].as_str().expect("rule file");
    let pvols = c["services"]["prometheus"]["volumes"].to_string();
    assert!(pvols.contains(&format!("./grafana/prometheus/alerts.yml:{rules_in_prom}")));
    assert!(pvols.contains("./grafana/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml"));
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");
    assert!(
        c["services"]["prometheus"]["ports"]
            .to_string()
            .contains(":9090\"")
    );
    let provider = yaml("grafana/provisioning/dashboards/frappe-cdc.yml");
    let dpath = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("path");
    assert!(
        c["services"]["grafana"]["volumes"]
            .to_string()
            .contains(&format!("./grafana/dashboards:{dpath}"))
    );
    let dash: Value =
        serde_json::from_str(&read("grafana/dashboards/frappe-cdc-pipeline.json")).expect("json");
    let uid = ds["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");
    let text = dash.to_string();
    assert!(
        text.contains(&format!("\"uid\":\"{uid}\"")),
        "dashboard uses datasource uid {uid}"
    );

    // The workload generator script is the one in the repo, and its env is complete.
    let wl = &c["services"]["workload"];
    assert!(
        wl["volumes"]
            .to_string()
            .contains("./scripts/workload.sh:/workload.sh")
    );
    let script = read("scripts/workload.sh");
    for k in wl["environment"].as_object().expect("env").keys() {
        assert!(script.contains(k.as_str()), "workload.sh does not read {k}");
    }
}

#[test]
fn typed_parser_rejects_malformed_files() {
    // The typed parse above is only worth something if it can fail.
    for bad in [
        "services:\n  a:\n    image: x\n    ports: {p: 1}\n",
        "services:\n  a:\n    image: x\n    depends_on: 5\n",
        "services:\n  a:\n    image: x\n    healthcheck:\n      test: [\"CMD\"]\n      retries: many\n",
    ] {
        assert!(
            serde_norway::from_str::<docker_compose_types::Compose>(bad).is_err(),
            "accepted: {bad}"
        );
    }
}

#[test]
fn deploy_units_and_env_examples_name_real_env_vars() {
    for (file, sub) in [
        ("deploy/frappe-cdc-capture.service", "capture"),
        ("deploy/capture.env.example", "capture"),
        ("deploy/frappe-cdc-apply@.service", "apply"),
        ("deploy/apply.env.example", "apply"),
    ] {
        let h = help(sub);
        let text = read(file);
        let mut n = 0;
        for line in text.lines() {
            let line = line
                .trim_start_matches("Environment=")
                .trim_start_matches("# ");
            let Some((k, _)) = line.split_once('=') else {
                continue;
            };
            if k.starts_with("FRAPPE_CDC_") && !k.contains(' ') {
                n += 1;
                assert!(
                    h.contains(&format!("env: {k}")),
                    "{file}: {k} is not an env var of {sub}"
                );
            }
        }
        assert!(n >= 2, "{file} sets {n} variables");
        if file.ends_with(".service") {
            assert!(
                text.contains("ExecStart=/usr/local/bin/frappe-cdc ")
                    && text.contains("LoadCredential=")
            );
            assert!(
                !text.to_lowercase().contains("password="),
                "{file}: no password in the unit"
            );
        }
    }
}

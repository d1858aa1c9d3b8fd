//! Reading a process's Prometheus `/metrics` in tests and benchmarks.

/// The text of a `/metrics` endpoint on loopback.
pub async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

/// The text of a `/metrics` endpoint on loopback, or None while it is not serving.
pub async fn try_scrape(port: u16) -> Option<String> {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Sum of the samples of `series` in a scrape: a bare name matches every label set of that
/// name, a name with labels (`name{a="b"}`) matches that series only; 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(series).is_some_and(|rest| {
                rest.starts_with(' ') || (!series.contains('{') && rest.starts_with('{'))
            })
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

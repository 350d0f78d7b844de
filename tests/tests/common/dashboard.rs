//! `deploy/grafana-dashboard.json` as the tests read it: each panel's
//! PromQL expressions and the `swarmlb_…` metrics they name, to be held
//! against a real scrape (`observability.rs` without a Swarm,
//! `swarm_e2e.rs` with one).

use std::collections::BTreeSet;

/// (panel title, expression) of every panel target.
pub fn exprs() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            out.push((panel["title"].as_str().unwrap().to_owned(), target["expr"].as_str().expect("a PromQL expr").to_owned()));
        }
    }
    out
}

/// The `swarmlb_…` names an expression uses.
pub fn names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("swarmlb_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric names a scrape declares (`# TYPE`, also for a family
/// without samples yet) or has samples of.
pub fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if !l.starts_with('#') && !l.is_empty() => l.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_owned)
        .collect()
}

/// The dashboard's metric names that `scrape` lacks, by panel, leaving out
/// those `except` accepts.
pub fn missing_in(scrape: &str, except: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let exposed = scraped_names(scrape);
    exprs()
        .into_iter()
        .flat_map(|(panel, expr)| names_in(&expr).into_iter().map(move |n| (panel.clone(), n)))
        .filter(|(_, n)| !exposed.contains(n) && !except(n))
        .collect()
}

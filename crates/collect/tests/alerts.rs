//! The alert rules in deploy/prometheus/alerts.yml name only metrics the services export.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

/// Words of `text` that look like Collect metric names (`collect_` and then [a-z0-9_]).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("collect_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn every_metric_an_alert_names_is_exported() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    // The names the services register, as written in their metrics modules.
    let mut exported = BTreeSet::new();
    for file in [
        "crates/api/src/metrics.rs",
        "crates/cdc/src/metrics.rs",
        "crates/connect/src/metrics.rs",
    ] {
        let src = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        for name in metric_names(&src) {
            if src.contains(&format!("\"{name}\"")) {
                exported.insert(name);
            }
        }
    }
    assert!(exported.len() > 20, "too few metrics found: {exported:?}");
    let named = metric_names(&rules);
    assert!(named.len() >= 10, "{named:?}");
    for name in &named {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| exported.contains(*b))
            .unwrap_or(name);
        assert!(
            exported.contains(base),
            "alerts.yml names {name}, which no service exports"
        );
    }
    // A misspelt name is caught.
    assert!(!exported.contains("collect_connect_lag"));
}

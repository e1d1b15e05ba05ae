//! One Google user's quota across processes: two `collect connect` processes, each running
//! one of two integrations that write with the same service account, against the emulator
//! with Google's default quotas (60 reads and 60 writes a minute per user). Their permits are
//! shared through Postgres, so together they stay within the quota: every response lands,
//! almost no 429 (the emulator counts them), no dead letter, no pause.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::providers::{Google, SECRET, load_with};
use common::{Proc, env, metric, reader};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_writing_for_one_google_user_stay_within_its_quota() {
    let e = env(json!({"title": "A", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let (s, other) = e
        .call(
            reqwest::Method::POST,
            "/v1/forms",
            Some(json!({"title": "B", "questions": [
                {"label": "Name", "type": "text", "alias": "name", "required": true}
            ]})),
        )
        .await;
    assert_eq!(s, 201);
    let other = other["id"].as_str().unwrap().to_string();
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let google = Google::start().await;
    let gs = google.sheet().await;
    // Google's default quotas, for the emulator and the connector alike.
    google
        .admin(
            reqwest::Method::PUT,
            "quotas",
            json!({"read_per_minute_user": 60, "read_per_minute_project": 300,
                   "write_per_minute_user": 60, "write_per_minute_project": 300}),
        )
        .await;
    let email = gs.key["client_email"].as_str().unwrap().to_string();
    let second = google
        .admin(
            reqwest::Method::POST,
            "spreadsheets",
            json!({"title": "B", "shared_with": [email]}),
        )
        .await["spreadsheetId"]
        .as_str()
        .unwrap()
        .to_string();
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let start = || {
        let mut vars = e.process_env(&brokers);
        vars.push(("COLLECT_SECRET_KEY".into(), SECRET.into()));
        Proc::start(
            &[
                "connect",
                "--poll-ms",
                "300",
                "--batch-max-wait-ms",
                "100",
                "--capacity",
                "1",
            ],
            &vars,
            "COLLECT_CONNECT_LISTEN",
        )
    };
    let (p1, p2) = (start(), start());
    p1.wait("/readyz", |_| true).await;
    p2.wait("/readyz", |_| true).await;
    for (name, form, sheet) in [
        ("a", e.form_id().to_string(), gs.spreadsheet.clone()),
        ("b", other.clone(), second.clone()),
    ] {
        let r = e
            .http
            .post(format!("{}/v1/integrations", p1.url()))
            .bearer_auth(&e.key)
            .json(&json!({
                "kind": "sheets", "form_id": form, "name": name,
                // Reads at 40 a minute: the test reads the sheets as the same user (the
                // emulator's 60 counts both).
                "config": {"spreadsheet_id": sheet, "api_base_url": google.base,
                           "quotas": {"read_requests_per_minute_per_user": 40}},
                "credentials": {"type": "service_account", "key": gs.key}
            }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // Each process runs one integration; together they would call far more than 60 a minute.
    let a = load_with(
        &e,
        600,
        Duration::from_millis(30),
        |i| json!({"name": format!("a{i}")}),
    );
    let (api, key, form) = (e.api.clone(), e.key.clone(), other.clone());
    let b = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut ids = Vec::new();
        for i in 0..600 {
            let r: Value = http
                .post(format!("{api}/v1/forms/{form}/responses"))
                .bearer_auth(&key)
                .json(&json!({"answers": {"name": format!("b{i}")}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ids.push(r["id"].as_str().unwrap().to_string());
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        ids
    });
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    for (ids, sheet) in [(&a, &gs.spreadsheet), (&b, &second)] {
        loop {
            let v = google.values(&gs.token, sheet).await;
            let landed = ids
                .iter()
                .filter(|id| {
                    v.iter()
                        .any(|r| r.first().and_then(Value::as_str) == Some(id.as_str()))
                })
                .count();
            if landed == ids.len() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{landed} of {}",
                ids.len()
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    let stats = google
        .admin(reqwest::Method::GET, "stats", Value::Null)
        .await;
    let throttled = stats["throttled"].as_u64().unwrap_or(0);
    let requests: u64 = stats["requests"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    // Rare: each process alone keeps to the quota, so without sharing about half of the
    // requests are refused; shared, a few at the edges of Google's minute windows.
    assert!(
        throttled * 10 <= requests,
        "the emulator answered 429 {throttled} times in {requests} requests: {stats}"
    );
    for p in [&p1, &p2] {
        let m = p.metrics().await;
        assert_eq!(metric(&m, "collect_connect_dead_letters_total"), 0.0, "{m}");
    }
    let listed: Value = e
        .http
        .get(format!("{}/v1/integrations", p1.url()))
        .bearer_auth(&e.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for i in listed["items"].as_array().or(listed.as_array()).unwrap() {
        assert_eq!(i["status"], "active", "{i}");
    }
}

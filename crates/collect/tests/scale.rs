//! Scale-out with real processes: two `collect connect` share the Sheets integrations of
//! twenty forms (each process reading each partition once for all of its integrations);
//! one is killed with SIGKILL while its writes are in flight and the other takes its
//! integrations over; every response ends in its own form's sheet exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::providers::{Google, connector_with, load_to};
use common::{env, metric, reader};
use serde_json::{Value, json};

const FORMS: usize = 20;

fn questions(title: String) -> Value {
    json!({"title": title, "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]})
}

/// Response ids in column A of a sheet (below the header), with how often each appears.
fn ids(rows: &[Vec<Value>]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in rows.iter().skip(1) {
        if let Some(id) = r.first().and_then(Value::as_str) {
            *out.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connect_process_hands_its_integrations_to_the_other_and_nothing_is_lost_or_doubled()
 {
    let e = env(questions("form 0".into())).await;
    let brokers = collect_testkit::shared_broker().await.unwrap().bootstrap();
    let google = Google::start().await;
    // Google's quotas raised for the test (the connector is told the same, in the body).
    let template = google.sheet().await;
    let mut forms = vec![e.form_id().to_string()];
    for i in 1..FORMS {
        let (status, f) = e
            .call(
                reqwest::Method::POST,
                "/v1/forms",
                Some(questions(format!("form {i}"))),
            )
            .await;
        assert_eq!(status, 201, "{f}");
        forms.push(f["id"].as_str().unwrap().to_string());
    }
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;

    // The first process runs at most half of them; the second, started after, the rest.
    let a = connector_with(&e, &brokers, &[("COLLECT_CONNECT_CAPACITY", "10")]);
    a.wait("/readyz", |_| true).await;
    let mut sheets = Vec::new();
    for (i, form) in forms.iter().enumerate() {
        let key = google.account(&format!("scale-{i}")).await;
        let email = key["client_email"].as_str().unwrap().to_string();
        let sheet = google
            .admin(
                reqwest::Method::POST,
                "spreadsheets",
                json!({"title": format!("form {i}"), "shared_with": [email]}),
            )
            .await;
        let spreadsheet = sheet["spreadsheetId"].as_str().unwrap().to_string();
        let mut body = google.integration(&e, &template);
        body["form_id"] = json!(form);
        body["name"] = json!(format!("sheet {i}"));
        body["config"]["spreadsheet_id"] = json!(spreadsheet);
        body["credentials"]["key"] = key;
        e.attach(&a, &body).await;
        sheets.push((spreadsheet, google.token(&email).await));
    }
    let b = connector_with(&e, &brokers, &[("COLLECT_CONNECT_CAPACITY", "40")]);
    b.wait("/readyz", |_| true).await;
    let running = |text: &str| metric(text, "collect_connect_feed_subscriptions");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ma, mb) = (a.metrics().await, b.metrics().await);
        if running(&ma) == 10.0 && running(&mb) == 10.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the integrations are not shared: {} and {}",
            running(&ma),
            running(&mb)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Responses to every form at a steady rate.
    let targets = forms.clone();
    let load = load_to(&e, 400, Duration::from_millis(10), move |i| {
        (
            targets[i % FORMS].clone(),
            json!({"name": format!("respondent {i}")}),
        )
    });
    // Kill the first process once it has written rows of this load and more are coming.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metric(&a.metrics().await, "collect_connect_written_total") < 40.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process a writes nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!load.is_finished(), "the load ended before the kill");
    a.kill9();
    let sent = load.await.unwrap();

    // The second process runs all twenty, and every sheet holds its form's responses once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut want: Vec<Vec<String>> = vec![Vec::new(); FORMS];
    for (i, id) in sent.into_iter().enumerate() {
        want[i % FORMS].push(id);
    }
    loop {
        let mut complete = running(&b.metrics().await) == FORMS as f64;
        for (f, (spreadsheet, token)) in sheets.iter().enumerate() {
            if !complete {
                break;
            }
            let got = ids(&google.values(token, spreadsheet).await);
            complete = want[f].iter().all(|id| got.contains_key(id));
        }
        if complete {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every response reached its sheet after the hand-over"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (f, (spreadsheet, token)) in sheets.iter().enumerate() {
        let got = ids(&google.values(token, spreadsheet).await);
        assert_eq!(got.len(), want[f].len(), "form {f}: rows of another form");
        assert!(
            got.values().all(|n| *n == 1),
            "form {f}: a response in two rows"
        );
    }
}

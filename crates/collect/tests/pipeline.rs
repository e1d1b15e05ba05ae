//! The whole pipeline with real processes: responses submitted through the forms API reach a
//! Google Sheet and an SMS provider (the emulators, over HTTP) through `collect cdc` and
//! `collect connect`, one row and one message per response, while the connector is killed
//! with SIGKILL, the providers answer storms of 5xx and 429, apply writes and then fail
//! them or drop connections after accepting, and the form's questions change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::providers::{Google, Texts, connector, load, load_with};
use common::{env, metric, reader};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_is_one_row_through_kill_9_storms_and_question_changes() {
    let e = env(json!({"title": "Sign-up", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let name_q = e.form["questions"][0]["id"].as_str().unwrap().to_string();
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let google = Google::start().await;
    let gs = google.sheet().await;
    let (spreadsheet, token) = (gs.spreadsheet.clone(), gs.token.clone());

    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let mut connect = connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;
    let created = e.attach(&connect, &google.integration(&e, &gs)).await;
    let integration = created["id"]
        .as_str()
        .expect("integration created")
        .to_string();

    // Phase 1: load, with the connector killed (SIGKILL) twice while it writes.
    let first = load(&e, "a", 150, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    connect.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    connect = connector(&e, &brokers);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    connect.kill9();
    connect = connector(&e, &brokers);
    let mut ids: Vec<String> = first.await.unwrap();

    // Phase 2: 5xx storms, including writes applied and then answered 500. The storm lasts
    // until the connector has run into it several times.
    google
        .faults(json!({"error_rate": 0.4, "error_status": 503, "fail_after_write_rate": 0.4}))
        .await;
    let storm = load(&e, "b", 100, Duration::from_millis(10));
    google.wait_stat("injected_errors", 3).await;
    ids.extend(storm.await.unwrap());
    // Phase 3: a 429 storm, over once the connector has been refused a few times.
    google.faults(json!({"throttle_seconds": 120})).await;
    let storm = load(&e, "c", 50, Duration::from_millis(10));
    google.wait_stat("throttled", 3).await;
    ids.extend(storm.await.unwrap());
    google.faults(json!({})).await;

    // Phase 4: the form changes: a relabel and a new question; edits and a deletion.
    let (s, _) = e
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/forms/{}/questions/{name_q}", e.form_id()),
            Some(json!({"label": "Full name"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = e
        .call(
            reqwest::Method::POST,
            &format!("/v1/forms/{}/questions", e.form_id()),
            Some(json!({"label": "City", "type": "text", "alias": "city"})),
        )
        .await;
    assert_eq!(s, 201);
    let mut edited = BTreeMap::new();
    for (i, id) in ids.iter().step_by(25).enumerate() {
        let (s, body) = e
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/forms/{}/responses/{id}", e.form_id()),
                Some(json!({"answers": {"name": format!("edited{i}"), "city": "Oslo"}})),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        edited.insert(id.clone(), format!("edited{i}"));
        if i == 3 {
            connect.kill9();
            connect = connector(&e, &brokers);
        }
    }
    let deleted = ids[7].clone();
    let (s, _) = e
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/forms/{}/responses/{deleted}", e.form_id()),
            None,
        )
        .await;
    assert_eq!(s, 204);
    for i in 0..20 {
        ids.push(
            e.submit(json!({"name": format!("d{i}"), "city": "Bergen"}))
                .await,
        );
    }

    // Every response has exactly one row, with its latest state, under the latest header.
    let want: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(want.len(), 320);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let rows = loop {
        let v = google.values(&token, &spreadsheet).await;
        let header_ok = v.first().is_some_and(|h| {
            h.get(5).and_then(Value::as_str) == Some("Full name")
                && h.get(6).and_then(Value::as_str) == Some("City")
        });
        let by_id: BTreeMap<&str, &Vec<Value>> = v
            .iter()
            .skip(1)
            .filter_map(|r| Some((r.first()?.as_str()?, r)))
            .collect();
        let settled = header_ok
            && want.iter().all(|id| by_id.contains_key(id.as_str()))
            && edited.iter().all(|(id, name)| {
                by_id[id.as_str()].get(5).and_then(Value::as_str) == Some(name.as_str())
            })
            && by_id[deleted.as_str()].get(4).and_then(Value::as_str) == Some("deleted");
        if settled {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sheet never settled: header {:?}, {} of {} responses present",
            v.first(),
            want.iter()
                .filter(|id| by_id.contains_key(id.as_str()))
                .count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let data: Vec<&Vec<Value>> = rows.iter().skip(1).filter(|r| !r.is_empty()).collect();
    assert_eq!(
        data.len(),
        want.len(),
        "one row per response, no duplicates"
    );
    let distinct: BTreeSet<&str> = data.iter().filter_map(|r| r[0].as_str()).collect();
    assert_eq!(distinct.len(), want.len());
    for r in &data {
        let id = r[0].as_str().unwrap();
        if let Some(name) = edited.get(id) {
            assert_eq!(r[3], "2", "an edit is revision 2: {r:?}");
            assert_eq!(
                (r[5].as_str(), r[6].as_str()),
                (Some(name.as_str()), Some("Oslo"))
            );
        }
    }
    let last = data.iter().find(|r| r[5] == "d19").unwrap();
    assert_eq!(last[6], "Bergen");

    // The emulator saw the storms and the connector counted them.
    let text = connect.metrics().await;
    assert!(
        metric(&text, "collect_connect_written_total") > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, "collect_connect_requests_total") > 0.0,
        "{text}"
    );
    let shown: Value = e
        .http
        .get(format!("{}/v1/integrations/{integration}", connect.url()))
        .bearer_auth(&e.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "active", "{shown}");
    connect.kill9();
    cdc.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_and_one_sms_per_response_through_kill_9_and_provider_faults() {
    let e = env(json!({"title": "Appointments", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true},
        {"label": "Mobile", "type": "phone", "alias": "phone", "required": true}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let google = Google::start().await;
    let gs = google.sheet().await;
    let texts = Texts::start().await;
    texts
        .put(
            "limits",
            json!({"per_sender_per_second": 200, "account_per_second": 200}),
        )
        .await;

    let cdc = reader(&e, &brokers);
    let mut logs = vec![cdc.log.clone()];
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let mut connect = connector(&e, &brokers);
    logs.push(connect.log.clone());
    connect.wait("/readyz", |_| true).await;
    for body in [
        google.integration(&e, &gs),
        json!({
            "kind": "sms", "form_id": e.form_id(), "name": "confirmations",
            "config": {"api_base_url": texts.base, "from": "+15005550006",
                       "to": {"question": "phone"},
                       "template": "Hi {{name}}, your booking is confirmed. Ref {{response_id}}",
                       "rates": {"per_sender_per_second": 100, "account_per_second": 100},
                       "reconcile_after_secs": 1},
            "credentials": {"account_sid": texts.account["account_sid"],
                            "auth_token": texts.account["auth_token"]}
        }),
    ] {
        e.attach(&connect, &body).await;
    }

    // Responses while both providers misbehave and the connector is killed twice: the SMS
    // provider drops connections after accepting and answers 500 before accepting; Google
    // answers 503 and applies writes it then fails.
    texts
        .put(
            "faults",
            json!({"drop_after_accept_rate": 0.3, "error_rate": 0.2, "error_status": 500}),
        )
        .await;
    google
        .faults(json!({"error_rate": 0.3, "error_status": 503, "fail_after_write_rate": 0.2}))
        .await;
    let writes = load_with(
        &e,
        120,
        Duration::from_millis(15),
        |i| json!({"name": format!("p{i}"), "phone": format!("+47 91{:06}", i)}),
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    connect.kill9();
    connect = connector(&e, &brokers);
    logs.push(connect.log.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    connect.kill9();
    connect = connector(&e, &brokers);
    logs.push(connect.log.clone());
    let ids: BTreeSet<String> = writes.await.unwrap().into_iter().collect();
    assert_eq!(ids.len(), 120);
    // The faults stay until both providers have answered with each of them at least once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let sms = texts
            .admin(reqwest::Method::GET, "stats", Value::Null)
            .await;
        let sheets = google
            .admin(reqwest::Method::GET, "stats", Value::Null)
            .await;
        if sms["dropped_after_accept"].as_u64().unwrap_or(0) > 0
            && sms["injected_errors"].as_u64().unwrap_or(0) > 0
            && sheets["injected_errors"].as_u64().unwrap_or(0) > 0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the faults were never met: {sms} {sheets}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    texts.put("faults", json!({})).await;
    google.faults(json!({})).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let rows = google.values(&gs.token, &gs.spreadsheet).await;
        let in_sheet: BTreeSet<String> = rows
            .iter()
            .skip(1)
            .filter_map(|r| r.first()?.as_str().map(str::to_string))
            .collect();
        let texted = texts.per_response().await;
        if ids.is_subset(&in_sheet) && ids.iter().all(|id| texted.contains_key(id)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} rows, {} of {} texted",
            ids.iter().filter(|id| in_sheet.contains(*id)).count(),
            ids.len(),
            ids.iter().filter(|id| texted.contains_key(*id)).count(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Give a duplicate every chance to appear, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = google.values(&gs.token, &gs.spreadsheet).await;
    assert_eq!(rows.len() - 1, ids.len(), "one row per response");
    let texted = texts.per_response().await;
    let not_once: Vec<_> = texted.iter().filter(|(_, n)| **n != 1).collect();
    assert!(not_once.is_empty(), "texted more than once: {not_once:?}");
    assert_eq!(texted.len(), ids.len());
    let stats = texts
        .admin(reqwest::Method::GET, "stats", Value::Null)
        .await;
    assert!(
        stats["dropped_after_accept"].as_u64().unwrap() > 0
            && stats["injected_errors"].as_u64().unwrap() > 0,
        "the faults were met: {stats}"
    );
    connect.kill9();
    cdc.kill9();
    // No credential the test used ever reached a log: the service account's private key,
    // the SMS auth token, the API key, the key that seals credentials.
    let private_key = gs.key["private_key"].as_str().unwrap();
    let key_line = private_key
        .lines()
        .find(|l| l.len() > 40 && !l.starts_with("-----"))
        .unwrap();
    let secrets = [
        ("private key", key_line.to_string()),
        (
            "SMS auth token",
            texts.account["auth_token"].as_str().unwrap().to_string(),
        ),
        ("API key", e.key.clone()),
        ("secret key", common::providers::SECRET.to_string()),
    ];
    let mut read = 0;
    for path in &logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        read += text.len();
        for (what, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "the {what} is in {}",
                path.display()
            );
        }
    }
    assert!(read > 1000, "the logs were not written ({read} bytes)");
}

//! A spreadsheet is shared with people: between the connector's writes a person swaps rows
//! (a sort by hand), types a total and notes beside and below the data, trims the grid to the
//! rows in use and renames the tab; the connector is killed with SIGKILL on the way. In the
//! end every response is in exactly one row at its newest revision and everything the person
//! typed is still there, and no response went to the dead-letter topic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::providers::{Google, connector};
use common::{Env, env, metric, reader};
use serde_json::{Value, json};

/// The values of `range`, read as a person would (plain `values.get`).
async fn cells(google: &Google, token: &str, spreadsheet: &str, range: &str) -> Vec<Vec<Value>> {
    read(google, token, spreadsheet, range, "FORMATTED_VALUE").await
}

/// The values of `range` as stored (numbers as numbers, text as text).
async fn stored(google: &Google, token: &str, spreadsheet: &str, range: &str) -> Vec<Vec<Value>> {
    read(google, token, spreadsheet, range, "UNFORMATTED_VALUE").await
}

async fn read(
    google: &Google,
    token: &str,
    spreadsheet: &str,
    range: &str,
    render: &str,
) -> Vec<Vec<Value>> {
    let range: String = url::form_urlencoded::byte_serialize(range.as_bytes()).collect();
    let r: Value = reqwest::Client::new()
        .get(format!(
            "{}/v4/spreadsheets/{spreadsheet}/values/{range}?valueRenderOption={render}",
            google.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    if r.get("error").is_some() {
        eprintln!("reading {range}: {r}");
    }
    serde_json::from_value(r["values"].clone()).unwrap_or_default()
}

/// The sheet id of the tab titled `title`, from `spreadsheets.get`.
async fn sheet_id(google: &Google, token: &str, spreadsheet: &str, title: &str) -> Value {
    let meta: Value = reqwest::Client::new()
        .get(format!("{}/v4/spreadsheets/{spreadsheet}", google.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    meta["sheets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["properties"]["title"] == title)
        .map(|s| s["properties"]["sheetId"].clone())
        .unwrap()
}

/// A person's edit: a Sheets API POST under `path` (after the spreadsheet id) that must work.
async fn person(google: &Google, token: &str, spreadsheet: &str, path: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v4/spreadsheets/{spreadsheet}{path}",
            google.base
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(
        status.is_success(),
        "{path}: {status} {}",
        r.text().await.unwrap()
    );
}

/// Rows whose first cell is `id`.
fn rows_of<'a>(v: &'a [Vec<Value>], id: &str) -> Vec<&'a Vec<Value>> {
    v.iter()
        .filter(|r| r.first().and_then(Value::as_str) == Some(id))
        .collect()
}

/// Waits until the sheet's tab `tab` shows every `(id, name)` in exactly one row.
async fn wait_rows(
    google: &Google,
    token: &str,
    spreadsheet: &str,
    tab: &str,
    want: &[(String, String)],
) -> Vec<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v = cells(google, token, spreadsheet, &format!("{tab}!A1:J")).await;
        let done = want.iter().all(|(id, name)| {
            let rows = rows_of(&v, id);
            rows.len() == 1 && rows[0].iter().any(|c| c.as_str() == Some(name.as_str()))
        });
        if done {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sheet never showed {want:?}: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn submit(e: &Env, name: &str) -> (String, String) {
    (e.submit(json!({ "name": name })).await, name.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_edit_the_sheet_between_the_connectors_writes_and_every_response_keeps_one_row() {
    let e = env(json!({"title": "Shared", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let google = Google::start().await;
    let gs = google.sheet().await;
    let (sheet, token) = (gs.spreadsheet.clone(), gs.token.clone());
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let mut connect = connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;
    let r = e
        .http
        .post(format!("{}/v1/integrations", connect.url()))
        .bearer_auth(&e.key)
        .json(&google.integration(&e, &gs))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let mut want = vec![
        submit(&e, "Ada").await,
        submit(&e, "Bob").await,
        submit(&e, "Cyd").await,
    ];
    let v = wait_rows(&google, &token, &sheet, "Responses", &want).await;

    // A person sorts by hand: rows 2 and 3 trade places. Then Ada's answer is edited.
    person(
        &google,
        &token,
        &sheet,
        "/values:batchUpdate",
        json!({"valueInputOption": "RAW", "data": [
            {"range": "Responses!A2", "values": [v[2]]},
            {"range": "Responses!A3", "values": [v[1]]}
        ]}),
    )
    .await;
    let (s, _) = e
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/forms/{}/responses/{}", e.form_id(), want[0].0),
            Some(json!({"answers": {"name": "Ada (edited)"}})),
        )
        .await;
    assert_eq!(s, 200);
    want[0].1 = "Ada (edited)".into();
    wait_rows(&google, &token, &sheet, "Responses", &want).await;

    // A person types a total under the data and a note beside it, in the rows new responses
    // would take next; the connector is killed meanwhile.
    person(
        &google,
        &token,
        &sheet,
        "/values:batchUpdate",
        json!({"valueInputOption": "RAW", "data": [
            {"range": "Responses!A5:B5", "values": [["Total", 3]]},
            {"range": "Responses!H1:H2", "values": [["Notes"], ["call back"]]}
        ]}),
    )
    .await;
    connect.kill9();
    connect = connector(&e, &brokers);
    want.push(submit(&e, "Dee").await);
    want.push(submit(&e, "Eve").await);
    wait_rows(&google, &token, &sheet, "Responses", &want).await;

    // A person inserts two empty rows in the middle of the data and deletes another
    // response's row (Dee's); then Dee's answer is edited and a new response arrives: rows
    // moved under the connector, which finds every response again by its Response ID.
    let gid0 = sheet_id(&google, &token, &sheet, "Responses").await;
    let v = cells(&google, &token, &sheet, "Responses!A1:J").await;
    let dee_row = v
        .iter()
        .position(|r| r.first().and_then(Value::as_str) == Some(want[3].0.as_str()))
        .unwrap();
    person(
        &google,
        &token,
        &sheet,
        ":batchUpdate",
        json!({"requests": [
            {"deleteDimension": {"range": {"sheetId": gid0, "dimension": "ROWS",
                "startIndex": dee_row, "endIndex": dee_row + 1}}},
            {"insertDimension": {"range": {"sheetId": gid0, "dimension": "ROWS",
                "startIndex": 2, "endIndex": 4}, "inheritFromBefore": true}}
        ]}),
    )
    .await;
    let (s, _) = e
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/forms/{}/responses/{}", e.form_id(), want[3].0),
            Some(json!({"answers": {"name": "Dee (edited)"}})),
        )
        .await;
    assert_eq!(s, 200);
    want[3].1 = "Dee (edited)".into();
    want.push(submit(&e, "Eli").await);
    wait_rows(&google, &token, &sheet, "Responses", &want).await;

    // A person trims the grid to the rows in use plus one, then more responses arrive.
    let gid = sheet_id(&google, &token, &sheet, "Responses").await;
    let used = cells(&google, &token, &sheet, "Responses!A1:J").await.len();
    person(
        &google,
        &token,
        &sheet,
        ":batchUpdate",
        json!({"requests": [{"updateSheetProperties": {
            "properties": {"sheetId": gid, "gridProperties": {"rowCount": used + 1}},
            "fields": "gridProperties.rowCount"}}]}),
    )
    .await;
    for n in ["Fay", "Gus", "Hal"] {
        want.push(submit(&e, n).await);
    }
    wait_rows(&google, &token, &sheet, "Responses", &want).await;

    // A person renames the tab; an old response is edited and a new one arrives.
    person(
        &google,
        &token,
        &sheet,
        ":batchUpdate",
        json!({"requests": [{"updateSheetProperties": {
            "properties": {"sheetId": gid, "title": "Sign-ups"}, "fields": "title"}}]}),
    )
    .await;
    let (s, _) = e
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/forms/{}/responses/{}", e.form_id(), want[1].0),
            Some(json!({"answers": {"name": "Bob (edited)"}})),
        )
        .await;
    assert_eq!(s, 200);
    want[1].1 = "Bob (edited)".into();
    want.push(submit(&e, "Ivy").await);
    wait_rows(&google, &token, &sheet, "'Sign-ups'", &want).await;

    // Two questions are added: their columns would be G and H, where the person's note is;
    // the note moves right instead of being written over.
    for (label, alias) in [("City", "city"), ("Team", "team")] {
        let (s, _) = e
            .call(
                reqwest::Method::POST,
                &format!("/v1/forms/{}/questions", e.form_id()),
                Some(json!({"label": label, "type": "text", "alias": alias})),
            )
            .await;
        assert_eq!(s, 201);
    }
    let (jo, _) = submit(&e, "Jo").await;
    let (s, _) = e
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/forms/{}/responses/{jo}", e.form_id()),
            Some(json!({"answers": {"city": "Oslo", "team": "Blue"}})),
        )
        .await;
    assert_eq!(s, 200);
    want.push((jo.clone(), "Jo".into()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let v = loop {
        let v = wait_rows(&google, &token, &sheet, "'Sign-ups'", &want).await;
        let jo_row = rows_of(&v, &jo)
            .first()
            .map(|r| (*r).clone())
            .unwrap_or_default();
        if jo_row.get(6).and_then(Value::as_str) == Some("Oslo")
            && jo_row.get(7).and_then(Value::as_str) == Some("Blue")
        {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        v[0].get(6).and_then(Value::as_str),
        Some("City"),
        "{:?}",
        v[0]
    );
    assert_eq!(
        v[0].get(7).and_then(Value::as_str),
        Some("Team"),
        "{:?}",
        v[0]
    );

    // What the person typed is intact, each response is in one row at its newest revision,
    // and nothing went to the dead-letter topic.
    assert!(
        v.iter()
            .any(|r| r.first().and_then(Value::as_str) == Some("Total")),
        "{v:?}"
    );
    let noted = v
        .iter()
        .filter(|r| r.iter().any(|c| c.as_str() == Some("call back")))
        .count();
    assert_eq!(
        noted, 1,
        "the person's note was lost or written over: {v:?}"
    );
    assert!(
        v[0].iter().any(|c| c.as_str() == Some("Notes")),
        "the person's column header was written over: {:?}",
        v[0]
    );
    for (id, name) in &want {
        let rows = rows_of(&v, id);
        assert_eq!(rows.len(), 1, "{id} {name}: {v:?}");
        assert_eq!(rows[0].get(5).and_then(Value::as_str), Some(name.as_str()));
    }
    let m = connect.metrics().await;
    assert_eq!(metric(&m, "collect_connect_dead_letters_total"), 0.0, "{m}");
    connect.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_reach_the_sheet_with_their_exact_value() {
    let e = env(json!({"title": "Values", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true},
        {"label": "Amount", "type": "number", "alias": "amount"},
        {"label": "Phone", "type": "phone", "alias": "phone", "default_region": "GB"}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let google = Google::start().await;
    let gs = google.sheet().await;
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let connect = connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;
    let r = e
        .http
        .post(format!("{}/v1/integrations", connect.url()))
        .bearer_auth(&e.key)
        .json(&google.integration(&e, &gs))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // Raw JSON: the number literals reach the API as written.
    let mut want = Vec::new();
    for (amount, phone, cell_amount, cell_phone) in [
        (
            "12345678901234567890123",
            "020 7946 0958",
            json!("12345678901234567890123"),
            "+442079460958",
        ),
        (
            "0.12345678901234567890",
            "+44 (0)20 7946 0958",
            json!("0.12345678901234567890"),
            "+442079460958",
        ),
        (
            "9007199254740993",
            "+1 650 253 0000",
            json!("9007199254740993"),
            "+16502530000",
        ),
        ("42.5", "07911 123456", json!(42.5), "+447911123456"),
    ] {
        let body =
            format!(r#"{{"answers": {{"name": "n", "amount": {amount}, "phone": "{phone}"}}}}"#);
        let r: Value = e
            .http
            .post(format!("{}/v1/forms/{}/responses", e.api, e.form_id()))
            .bearer_auth(&e.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        want.push((
            r["id"].as_str().unwrap().to_string(),
            cell_amount,
            cell_phone,
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let v = stored(&google, &gs.token, &gs.spreadsheet, "Responses!A1:J").await;
        let got: Vec<bool> = want
            .iter()
            .map(|(id, amount, phone)| {
                rows_of(&v, id).first().is_some_and(|row| {
                    row.get(6) == Some(amount) && row.get(7).and_then(Value::as_str) == Some(*phone)
                })
            })
            .collect();
        if got.iter().all(|g| *g) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    connect.kill9();
}

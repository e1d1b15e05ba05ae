//! A spreadsheet is shared with people: between the connector's writes a person swaps rows
//! (a sort by hand), types a total and notes beside and below the data, inserts and deletes
//! rows, trims the grid to the rows in use, renames the tab, inserts a column among the
//! connector's and drags a question's column elsewhere; the connector is killed with SIGKILL
//! and Google answers storms of 503 (some after applying the write) and 429 on the way. In
//! the end every response is in exactly one row at its newest revision, everything the
//! person typed is still there, and no response went to the dead-letter topic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::providers::{
    Google, GoogleSheet, collect, connector, load_with, named_form_with_sheet, redrive,
};
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

/// A person's edit: a Sheets API POST under `path` (after the spreadsheet id) that must work;
/// Google's answer.
async fn person(google: &Google, token: &str, spreadsheet: &str, path: &str, body: Value) -> Value {
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
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A person typing: `data` is `values:batchUpdate`'s list of `{range, values}`, taken RAW.
async fn type_cells(google: &Google, token: &str, spreadsheet: &str, data: Value) {
    person(
        google,
        token,
        spreadsheet,
        "/values:batchUpdate",
        json!({"valueInputOption": "RAW", "data": data}),
    )
    .await;
}

/// Waits (60 s at most) until the connector holds no batch: every event it took is
/// committed (a write Google applied and then failed is retried by the connector; the person
/// edits between the connector's writes, not during one).
async fn settled(connect: &common::Proc) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = connect.metrics().await;
        let (taken, done) = (
            metric(&m, "collect_connect_delivered_total"),
            metric(&m, "collect_connect_committed_total")
                + metric(&m, "collect_connect_dead_letters_total"),
        );
        if taken == done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connector never settled: {taken} taken, {done} done"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
        let v = cells(google, token, spreadsheet, &format!("{tab}!A1:Z")).await;
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

/// Edits a response's name through the API; returns the new name.
async fn rename(e: &Env, id: &str, name: &str) -> String {
    let (s, r) = e
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/forms/{}/responses/{id}", e.form_id()),
            Some(json!({"answers": {"name": name}})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    name.to_string()
}

async fn submit(e: &Env, name: &str) -> (String, String) {
    (e.submit(json!({ "name": name })).await, name.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_edit_the_sheet_between_the_connectors_writes_and_every_response_keeps_one_row() {
    let (e, brokers, google, gs) = named_form_with_sheet("Shared").await;
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
    type_cells(
        &google,
        &token,
        &sheet,
        json!([
            {"range": "Responses!A2", "values": [v[2]]},
            {"range": "Responses!A3", "values": [v[1]]}
        ]),
    )
    .await;
    want[0].1 = rename(&e, &want[0].0, "Ada (edited)").await;
    wait_rows(&google, &token, &sheet, "Responses", &want).await;

    // A person types a total under the data and a note beside it, in the rows new responses
    // would take next; the connector is killed meanwhile.
    type_cells(
        &google,
        &token,
        &sheet,
        json!([
            {"range": "Responses!A5:B5", "values": [["Total", 3]]},
            {"range": "Responses!H1:H2", "values": [["Notes"], ["call back"]]}
        ]),
    )
    .await;
    // Google answers 503 to everything while new responses arrive; once the connector is
    // seen trying to write them, it is killed, and comes back to a Google that answers 503
    // to a third of the requests and fails a fifth of the writes after applying them.
    google
        .faults(json!({"error_rate": 1.0, "error_status": 503}))
        .await;
    want.push(submit(&e, "Dee").await);
    want.push(submit(&e, "Eve").await);
    google.wait_stat("injected_errors", 2).await;
    connect.kill9();
    connect = connector(&e, &brokers);
    google
        .faults(json!({"error_rate": 0.3, "error_status": 503, "fail_after_write_rate": 0.2}))
        .await;
    wait_rows(&google, &token, &sheet, "Responses", &want).await;
    google.faults(json!({})).await;
    settled(&connect).await;

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
    want[3].1 = rename(&e, &want[3].0, "Dee (edited)").await;
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
    // A storm of 429s while they arrive (Google's quota exhausted for 10 s).
    google.faults(json!({"throttle_seconds": 10})).await;
    for n in ["Fay", "Gus", "Hal"] {
        want.push(submit(&e, n).await);
    }
    google.wait_stat("throttled", 1).await;
    wait_rows(&google, &token, &sheet, "Responses", &want).await;
    google.faults(json!({})).await;
    settled(&connect).await;

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
    want[1].1 = rename(&e, &want[1].0, "Bob (edited)").await;
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

    // A person inserts a column among the connector's (C, "Checked", with a mark on Ada's
    // row), then drags the Name column to the far right; Eve's answer is edited and a new
    // response arrives: answers follow the Name column, and the marks stay.
    let gid = sheet_id(&google, &token, &sheet, "Sign-ups").await;
    person(
        &google,
        &token,
        &sheet,
        ":batchUpdate",
        json!({"requests": [{"insertDimension": {"range": {"sheetId": gid,
            "dimension": "COLUMNS", "startIndex": 2, "endIndex": 3}}}]}),
    )
    .await;
    let v = cells(&google, &token, &sheet, "'Sign-ups'!A1:Z").await;
    let ada_row = v
        .iter()
        .position(|r| r.first().and_then(Value::as_str) == Some(want[0].0.as_str()))
        .unwrap()
        + 1;
    type_cells(
        &google,
        &token,
        &sheet,
        json!([
            {"range": "'Sign-ups'!C1", "values": [["Checked"]]},
            {"range": format!("'Sign-ups'!C{ada_row}"), "values": [["yes"]]}
        ]),
    )
    .await;
    let name_at = v[0].iter().position(|c| c == "Name").unwrap();
    person(
        &google,
        &token,
        &sheet,
        ":batchUpdate",
        json!({"requests": [{"moveDimension": {"source": {"sheetId": gid,
            "dimension": "COLUMNS", "startIndex": name_at, "endIndex": name_at + 1},
            "destinationIndex": v[0].len()}}]}),
    )
    .await;
    want[4].1 = rename(&e, &want[4].0, "Eve (edited)").await;
    want.push(submit(&e, "Kim").await);
    let v = wait_rows(&google, &token, &sheet, "'Sign-ups'", &want).await;
    let name_col = v[0].iter().position(|c| c == "Name").unwrap();
    assert_eq!(
        name_col,
        v[0].len() - 1,
        "Name is the last column: {:?}",
        v[0]
    );
    assert_eq!(v[0][2], json!("Checked"), "{:?}", v[0]);
    let ada = rows_of(&v, &want[0].0);
    assert_eq!(ada[0][2], json!("yes"), "the person's mark: {v:?}");
    // Rows the connector wrote after the insertion left the person's column alone.
    for id in [&want[4].0, &want[want.len() - 1].0] {
        let r = rows_of(&v, id);
        assert!(
            r[0].get(2).is_none_or(|c| c == &json!("")),
            "the connector wrote in the person's column: {v:?}"
        );
    }

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
        assert_eq!(
            rows[0].get(name_col).and_then(Value::as_str),
            Some(name.as_str()),
            "{id}: {v:?}"
        );
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

/// A person protects some rows; the edits of their responses are refused (400) and go to
/// the dead-letter topic while the others go on. The person lifts the protection and the
/// operator re-drives the dead letters while responses keep arriving and being edited: in
/// the end every response is in exactly one row at its newest revision (an older revision
/// re-driven after a newer one landed changes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_redrive_under_load_leaves_every_response_in_one_row_at_its_newest() {
    let (e, brokers, google, gs) = named_form_with_sheet("Protected").await;
    // A reviewer who edits the spreadsheet too: protected ranges bind everyone else.
    let email = google.account("reviewer").await["client_email"]
        .as_str()
        .unwrap()
        .to_string();
    let sheet = google
        .admin(
            reqwest::Method::POST,
            "spreadsheets",
            json!({"title": "Protected", "shared_with":
                [gs.key["client_email"].clone(), json!(email.clone())]}),
        )
        .await["spreadsheetId"]
        .as_str()
        .unwrap()
        .to_string();
    let token = google.token(&email).await;
    let gs = GoogleSheet {
        spreadsheet: sheet.clone(),
        token: token.clone(),
        ..gs
    };
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let connect = connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;
    let integration = e.attach(&connect, &google.integration(&e, &gs)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut want = Vec::new();
    for i in 0..12 {
        want.push(submit(&e, &format!("p{i}")).await);
    }
    let v = wait_rows(&google, &token, &sheet, "Responses", &want).await;

    // The reviewer protects the rows of p3, p4 and p5; their edits are refused.
    let gid = sheet_id(&google, &token, &sheet, "Responses").await;
    let first = v
        .iter()
        .position(|r| r.first().and_then(Value::as_str) == Some(want[3].0.as_str()))
        .unwrap();
    let protected = person(
        &google,
        &token,
        &sheet,
        ":batchUpdate",
        json!({"requests": [{"addProtectedRange": {"protectedRange": {
            "range": {"sheetId": gid, "startRowIndex": first, "endRowIndex": first + 3},
            "description": "under review"}}}]}),
    )
    .await;
    let range_id =
        protected["replies"][0]["addProtectedRange"]["protectedRange"]["protectedRangeId"].clone();
    assert!(range_id.is_number(), "{protected}");
    for (i, w) in want.iter_mut().enumerate().skip(3).take(3) {
        w.1 = rename(&e, &w.0, &format!("p{i} reviewed")).await;
    }
    let list = || {
        let out = collect(
            &e,
            &brokers,
            &[
                "dead-letters",
                "list",
                "--integration",
                &integration,
                "--json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while list() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no dead letters");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The reviewer lifts the protection. New responses keep arriving; every response is
    // edited again, and those edits land before the re-drive, which then brings older
    // revisions of p3..p5: they must change nothing.
    person(
        &google,
        &token,
        &sheet,
        ":batchUpdate",
        json!({"requests": [{"deleteProtectedRange": {"protectedRangeId": range_id}}]}),
    )
    .await;
    let load = load_with(
        &e,
        30,
        Duration::from_millis(30),
        |n| json!({ "name": format!("n{n}") }),
    );
    for (i, w) in want.iter_mut().enumerate() {
        w.1 = rename(&e, &w.0, &format!("p{i} r0")).await;
    }
    wait_rows(&google, &token, &sheet, "Responses", &want).await;
    // The re-drive, while the load runs: it holds the integration's lease meanwhile.
    let report = redrive(&e, &brokers, &integration);
    assert!(report["redriven"].as_u64().unwrap() >= 3, "{report}");
    for (i, w) in want.iter_mut().enumerate() {
        w.1 = rename(&e, &w.0, &format!("p{i} r1")).await;
    }
    let added = load.await.unwrap();
    want.extend(
        added
            .into_iter()
            .enumerate()
            .map(|(n, id)| (id, format!("n{n}"))),
    );
    let v = wait_rows(&google, &token, &sheet, "Responses", &want).await;
    for (id, name) in &want {
        let rows = rows_of(&v, id);
        assert_eq!(rows.len(), 1, "{id}: {v:?}");
        assert_eq!(rows[0].get(5).and_then(Value::as_str), Some(name.as_str()));
    }
    assert_eq!(v.len(), want.len() + 1, "no other rows: {v:?}");
    connect.kill9();
    cdc.kill9();
}

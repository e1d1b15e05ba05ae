//! The Sheets emulator driven over HTTP by clients we did not write: yup-oauth2 signs the
//! service-account JWT; the rest is plain HTTP with Google's paths and bodies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use collect_emulators::sheets::{Emulator, router, serve};
use serde_json::{Value, json};

async fn start() -> (String, reqwest::Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        Emulator::new(&base),
        std::future::pending(),
    ));
    (base, reqwest::Client::new())
}

/// axum's own server: aborting its task closes every connection (a restart, below).
async fn axum_serve(listener: tokio::net::TcpListener, app: axum::Router) {
    let _ = axum::serve(listener, app).await;
}

async fn service_account_token(base: &str, http: &reqwest::Client, name: &str) -> (Value, String) {
    let key: Value = http
        .post(format!("{base}/emulator/service-accounts"))
        .json(&json!({"name": name, "project": "proj-a"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sa = yup_oauth2::parse_service_account_key(key.to_string()).unwrap();
    let auth = yup_oauth2::ServiceAccountAuthenticator::builder(sa)
        .build()
        .await
        .unwrap();
    let token = auth
        .token(&["https://www.googleapis.com/auth/spreadsheets"])
        .await
        .unwrap();
    (key, token.token().unwrap().to_string())
}

async fn call(
    http: &reqwest::Client,
    token: &str,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_service_account_writes_and_reads_a_sheet() {
    let (base, http) = start().await;
    let (_, token) = service_account_token(&base, &http, "writer").await;
    let (s, created) = call(
        &http,
        &token,
        reqwest::Method::POST,
        format!("{base}/v4/spreadsheets"),
        Some(json!({"properties": {"title": "Responses"}})),
    )
    .await;
    assert_eq!(s, 200, "{created}");
    let id = created["spreadsheetId"].as_str().unwrap();
    assert_eq!(
        created["sheets"][0]["properties"]["gridProperties"],
        json!({"rowCount": 1000, "columnCount": 26})
    );
    let (s, r) = call(
        &http,
        &token,
        reqwest::Method::POST,
        format!("{base}/v4/spreadsheets/{id}/values:batchUpdate"),
        Some(json!({"valueInputOption": "RAW", "data": [
            {"range": "Sheet1!A1:C1", "values": [["Response", "Name", "Formula"]]},
            {"range": "Sheet1!A2:C2", "values": [["r1", "Ann", "=SUM(A1)"]]}
        ]})),
    )
    .await;
    assert_eq!((s, r["totalUpdatedCells"].as_u64()), (200, Some(6)), "{r}");
    let (s, v) = call(
        &http,
        &token,
        reqwest::Method::GET,
        format!("{base}/v4/spreadsheets/{id}/values/Sheet1!A1:C9"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["values"],
        json!([["Response", "Name", "Formula"], ["r1", "Ann", "=SUM(A1)"]])
    );
    // Grow the grid, then write past the old bound.
    let (s, _) = call(
        &http,
        &token,
        reqwest::Method::POST,
        format!("{base}/v4/spreadsheets/{id}:batchUpdate"),
        Some(json!({"requests": [{"appendDimension": {"sheetId": 0, "dimension": "ROWS", "length": 10}}]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, r) = call(
        &http,
        &token,
        reqwest::Method::PUT,
        format!("{base}/v4/spreadsheets/{id}/values/Sheet1!A1005?valueInputOption=RAW"),
        Some(json!({"values": [["late"]]})),
    )
    .await;
    assert_eq!(
        (s, r["updatedRange"].as_str()),
        (200, Some("Sheet1!A1005:A1005")),
        "{r}"
    );
}

#[tokio::test]
async fn google_errors_quotas_and_faults() {
    let (base, http) = start().await;
    let (key, token) = service_account_token(&base, &http, "limited").await;
    let created: Value = http
        .post(format!("{base}/emulator/spreadsheets"))
        .json(&json!({"title": "T"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["spreadsheetId"].as_str().unwrap().to_string();
    let write = |range: &str| json!({"valueInputOption": "RAW", "data": [{"range": range, "values": [["x"]]}]});
    let url = format!("{base}/v4/spreadsheets/{id}/values:batchUpdate");

    let (s, e) = call(
        &http,
        "nope",
        reqwest::Method::POST,
        url.clone(),
        Some(write("Sheet1!A1")),
    )
    .await;
    assert_eq!(
        (s, e["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let (s, e) = call(
        &http,
        &token,
        reqwest::Method::POST,
        url.clone(),
        Some(write("Sheet1!A1001")),
    )
    .await;
    assert_eq!(
        (s, e["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds grid limits"),
        "{e}"
    );
    let (s, e) = call(
        &http,
        &token,
        reqwest::Method::GET,
        format!("{base}/v4/spreadsheets/nope"),
        None,
    )
    .await;
    assert_eq!((s, e["error"]["status"].as_str()), (404, Some("NOT_FOUND")));
    let (s, _) = call(
        &http,
        &token,
        reqwest::Method::POST,
        url.clone(),
        Some(json!({"data": []})),
    )
    .await;
    assert_eq!(s, 400, "valueInputOption is required");

    // Quota per user: 3 writes a minute.
    http.put(format!("{base}/emulator/quotas"))
        .json(&json!({"read_per_minute_user": 60, "read_per_minute_project": 300, "write_per_minute_user": 3, "write_per_minute_project": 300}))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            call(
                &http,
                &token,
                reqwest::Method::POST,
                url.clone(),
                Some(write("Sheet1!A1"))
            )
            .await
            .0,
            200
        );
    }
    let (s, e) = call(
        &http,
        &token,
        reqwest::Method::POST,
        url.clone(),
        Some(write("Sheet1!A1")),
    )
    .await;
    assert_eq!(
        (s, e["error"]["status"].as_str()),
        (429, Some("RESOURCE_EXHAUSTED"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per minute per user")
    );
    http.put(format!("{base}/emulator/quotas")).json(&json!({"read_per_minute_user": 60, "read_per_minute_project": 300, "write_per_minute_user": 60, "write_per_minute_project": 300})).send().await.unwrap();

    // Injected faults: every request 503; then a 429 storm.
    http.put(format!("{base}/emulator/faults"))
        .json(&json!({"error_rate": 1.0, "error_status": 503}))
        .send()
        .await
        .unwrap();
    let (s, e) = call(
        &http,
        &token,
        reqwest::Method::POST,
        url.clone(),
        Some(write("Sheet1!A1")),
    )
    .await;
    assert_eq!(
        (s, e["error"]["status"].as_str()),
        (503, Some("UNAVAILABLE"))
    );
    http.put(format!("{base}/emulator/faults"))
        .json(&json!({"throttle_seconds": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        call(
            &http,
            &token,
            reqwest::Method::POST,
            url.clone(),
            Some(write("Sheet1!A1"))
        )
        .await
        .0,
        429
    );
    http.put(format!("{base}/emulator/faults"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        call(
            &http,
            &token,
            reqwest::Method::POST,
            url.clone(),
            Some(write("Sheet1!A1"))
        )
        .await
        .0,
        200
    );

    // A write applied and then never answered: the connection is closed; the cell is written.
    http.put(format!("{base}/emulator/faults"))
        .json(&json!({"drop_after_write_rate": 1.0}))
        .send()
        .await
        .unwrap();
    let r = http
        .post(url.clone())
        .bearer_auth(&token)
        .json(&json!({"valueInputOption": "RAW", "data": [{"range": "Sheet1!B2", "values": [["dropped"]]}]}))
        .send()
        .await;
    assert!(r.is_err(), "the caller must not hear back: {r:?}");
    let (s, cells) = call(
        &http,
        &token,
        reqwest::Method::GET,
        format!("{base}/v4/spreadsheets/{id}/values/Sheet1!B2"),
        None,
    )
    .await;
    assert_eq!((s, &cells["values"]), (200, &json!([["dropped"]])));
    let stats: Value = http
        .get(format!("{base}/emulator/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["dropped_after_write"], 1, "{stats}");
    let refused = http
        .put(format!("{base}/emulator/faults"))
        .json(&json!({"drop_after_write_rate": 1.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    http.put(format!("{base}/emulator/faults"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();

    // A disabled service account cannot get tokens any more.
    let email = key["client_email"].as_str().unwrap();
    http.post(format!("{base}/emulator/service-accounts/{email}/disable"))
        .send()
        .await
        .unwrap();
    let sa = yup_oauth2::parse_service_account_key(key.to_string()).unwrap();
    let auth = yup_oauth2::ServiceAccountAuthenticator::builder(sa)
        .build()
        .await
        .unwrap();
    let err = auth
        .token(&["https://www.googleapis.com/auth/spreadsheets"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid_grant"), "{err}");
}

#[tokio::test]
async fn the_authorization_code_and_refresh_token_flows() {
    let (base, http) = start().await;
    let client: Value = http
        .post(format!("{base}/emulator/oauth-clients"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (cid, secret) = (
        client["client_id"].as_str().unwrap(),
        client["client_secret"].as_str().unwrap(),
    );
    let code: Value = http
        .post(format!("{base}/emulator/authorization-codes"))
        .json(&json!({"client_id": cid, "user": "ann@example.com", "redirect_uri": "https://app.example/cb"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let form = |extra: Vec<(&str, &str)>| {
        let mut f = vec![("client_id", cid), ("client_secret", secret)];
        f.extend(extra);
        http.post(format!("{base}/token")).form(&f)
    };
    let r = form(vec![
        ("grant_type", "authorization_code"),
        ("code", code["code"].as_str().unwrap()),
        ("redirect_uri", "https://app.example/cb"),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let tokens: Value = r.json().await.unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    // A code works once.
    let again = form(vec![
        ("grant_type", "authorization_code"),
        ("code", code["code"].as_str().unwrap()),
        ("redirect_uri", "https://app.example/cb"),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(again.status(), 400);
    let r: Value = form(vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
    ])
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(r["access_token"].as_str().unwrap().starts_with("ya29."));
    http.post(format!("{base}/emulator/revoke"))
        .json(&json!({"token_or_user": "ann@example.com"}))
        .send()
        .await
        .unwrap();
    let r = form(vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
    );
}

/// What `collect emulate sheets --state-file` keeps across restarts: spreadsheets with their
/// cells and grids, service accounts (their keys still sign in) and issued tokens.
#[tokio::test]
async fn state_survives_a_snapshot_and_restore_and_admin_tokens_read_sheets() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let first = Emulator::new(&base);
    let server = tokio::spawn(axum_serve(listener, router(first.clone())));
    let http = reqwest::Client::new();
    let (key, token) = service_account_token(&base, &http, "keeper").await;
    let email = key["client_email"].as_str().unwrap().to_string();
    let (_, created) = call(
        &http,
        &token,
        reqwest::Method::POST,
        format!("{base}/v4/spreadsheets"),
        Some(json!({})),
    )
    .await;
    let id = created["spreadsheetId"].as_str().unwrap().to_string();
    let (s, _) = call(
        &http,
        &token,
        reqwest::Method::PUT,
        format!("{base}/v4/spreadsheets/{id}/values/Sheet1!A1:B2?valueInputOption=RAW"),
        Some(json!({"values": [["a", 1], ["=B1", true]]})),
    )
    .await;
    assert_eq!(s, 200);
    // An admin-issued token reads like any other.
    let admin: Value = http
        .post(format!("{base}/emulator/access-tokens"))
        .json(&json!({"email": email, "ttl_seconds": 86_400}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reader = admin["access_token"].as_str().unwrap().to_string();
    assert_eq!(admin["expires_in"], 86_400);
    let bad = http
        .post(format!("{base}/emulator/access-tokens"))
        .json(&json!({"email": email, "ttl_seconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    let saved = first.snapshot();
    server.abort();
    let _ = server.await;

    let listener = tokio::net::TcpListener::bind(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let second = Emulator::new(&base);
    second.restore(&saved).unwrap();
    tokio::spawn(axum_serve(listener, router(second.clone())));
    let (s, got) = call(
        &http,
        &reader,
        reqwest::Method::GET,
        format!("{base}/v4/spreadsheets/{id}/values/Sheet1!A1:B2?valueRenderOption=FORMULA"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["values"], json!([["a", 1], ["=B1", true]]));
    // The service account's key still signs in after the restart.
    let sa = yup_oauth2::parse_service_account_key(key.to_string()).unwrap();
    let auth = yup_oauth2::ServiceAccountAuthenticator::builder(sa)
        .build()
        .await
        .unwrap();
    let fresh = auth
        .token(&["https://www.googleapis.com/auth/spreadsheets"])
        .await
        .unwrap();
    let (s, _) = call(
        &http,
        fresh.token().unwrap(),
        reqwest::Method::GET,
        format!("{base}/v4/spreadsheets/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let before = second.snapshot();
    assert!(
        second.restore(b"{\"spreadsheets\": 1}").is_err(),
        "a damaged file is refused"
    );
    assert!(
        second.snapshot() == before,
        "a refused restore changes nothing"
    );
}

/// One principal's calls to one spreadsheet.
struct Sheet {
    base: String,
    http: reqwest::Client,
    token: String,
    id: String,
}

impl Sheet {
    /// A spreadsheet created through the API by a new service account (its owner).
    async fn create(title: &str, rows: u32, cols: u32) -> (Sheet, String) {
        let (base, http) = start().await;
        let (key, token) = service_account_token(&base, &http, "owner").await;
        let (s, created) = call(
            &http,
            &token,
            reqwest::Method::POST,
            format!("{base}/v4/spreadsheets"),
            Some(json!({"sheets": [{"properties": {"title": title, "gridProperties": {"rowCount": rows, "columnCount": cols}}}]})),
        )
        .await;
        assert_eq!(s, 200, "{created}");
        let id = created["spreadsheetId"].as_str().unwrap().to_string();
        let email = key["client_email"].as_str().unwrap().to_string();
        (
            Sheet {
                base,
                http,
                token,
                id,
            },
            email,
        )
    }

    async fn req(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        call(
            &self.http,
            &self.token,
            method,
            format!("{}/v4/spreadsheets/{}{path}", self.base, self.id),
            body,
        )
        .await
    }

    /// `batchUpdate`, which must succeed.
    async fn batch(&self, requests: Value) -> Value {
        let (s, r) = self.try_batch(requests).await;
        assert_eq!(s, 200, "{r}");
        r
    }

    async fn try_batch(&self, requests: Value) -> (u16, Value) {
        self.req(
            reqwest::Method::POST,
            ":batchUpdate",
            Some(json!({ "requests": requests })),
        )
        .await
    }

    async fn put(&self, range: &str, values: Value) -> (u16, Value) {
        self.req(
            reqwest::Method::PUT,
            &format!("/values/{range}?valueInputOption=RAW"),
            Some(json!({ "values": values })),
        )
        .await
    }

    /// The first tab's `gridProperties`, read through a `fields` mask.
    async fn grid(&self) -> Value {
        let (s, v) = self
            .req(
                reqwest::Method::GET,
                "?fields=sheets.properties.gridProperties",
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["sheets"][0]["properties"]["gridProperties"].clone()
    }

    /// The values of `range` (`[]` when empty).
    async fn values(&self, range: &str) -> Value {
        let (s, v) = self
            .req(reqwest::Method::GET, &format!("/values/{range}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v.get("values").cloned().unwrap_or(json!([]))
    }

    /// `developerMetadata:search` with one lookup.
    async fn search(&self, lookup: Value) -> Value {
        let (s, v) = self
            .req(
                reqwest::Method::POST,
                "/developerMetadata:search",
                Some(json!({"dataFilters": [{"developerMetadataLookup": lookup}]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// The row index (0-based) of the metadata `responseId = value`, if any.
    async fn row_of(&self, value: &str) -> Option<u64> {
        let v = self
            .search(json!({"metadataKey": "responseId", "metadataValue": value}))
            .await;
        let found = v["matchedDeveloperMetadata"].as_array()?;
        assert_eq!(found.len(), 1, "{v}");
        let loc = &found[0]["developerMetadata"]["location"];
        assert_eq!(loc["locationType"], "ROW", "{v}");
        assert_eq!(
            loc["dimensionRange"]["endIndex"].as_u64(),
            Some(loc["dimensionRange"]["startIndex"].as_u64().unwrap() + 1)
        );
        loc["dimensionRange"]["startIndex"].as_u64()
    }
}

fn rows_range(sheet: i64, start: u32, end: u32) -> Value {
    json!({"sheetId": sheet, "dimension": "ROWS", "startIndex": start, "endIndex": end})
}

fn tag_row(row: u32, value: &str) -> Value {
    json!({"createDeveloperMetadata": {"developerMetadata": {
        "metadataKey": "responseId", "metadataValue": value, "visibility": "DOCUMENT",
        "location": {"dimensionRange": rows_range(0, row, row + 1)}
    }}})
}

/// What people do to rows (sort, insert, delete, move) moves the values with their row and
/// the row's developer metadata with it; metadata then finds the row's values to read and
/// write.
#[tokio::test]
async fn rows_sorted_inserted_deleted_and_moved_keep_their_values_and_metadata() {
    let (s, _) = Sheet::create("Responses", 8, 4).await;
    let (st, _) = s
        .put(
            "Responses!A1",
            json!([
                ["id", "name", "note"],
                ["r3", "x", "n3"],
                ["r1", "y", "n1"],
                ["r2", "x", "n2"],
                ["r4", "", "n4"]
            ]),
        )
        .await;
    assert_eq!(st, 200);
    let replies = s
        .batch(json!([
            tag_row(1, "r3"),
            tag_row(2, "r1"),
            tag_row(3, "r2"),
            tag_row(4, "r4")
        ]))
        .await;
    let r1_id = replies["replies"][1]["createDeveloperMetadata"]["developerMetadata"]["metadataId"]
        .as_i64()
        .unwrap();
    assert_eq!(s.row_of("r1").await, Some(2));

    // Sort by name: stable (the two "x" keep their order), blanks last, whole rows move.
    s.batch(json!([{"sortRange": {
        "range": {"sheetId": 0, "startRowIndex": 1, "endRowIndex": 5},
        "sortSpecs": [{"dimensionIndex": 1, "sortOrder": "ASCENDING"}]
    }}]))
    .await;
    assert_eq!(
        s.values("Responses!A1:C5").await,
        json!([
            ["id", "name", "note"],
            ["r3", "x", "n3"],
            ["r2", "x", "n2"],
            ["r1", "y", "n1"],
            ["r4", "", "n4"]
        ])
    );
    for (id, row) in [("r3", 1), ("r2", 2), ("r1", 3), ("r4", 4)] {
        assert_eq!(s.row_of(id).await, Some(row), "{id}");
    }
    s.batch(json!([{"sortRange": {
        "range": {"sheetId": 0, "startRowIndex": 1, "endRowIndex": 5},
        "sortSpecs": [{"dimensionIndex": 0, "sortOrder": "DESCENDING"}]
    }}]))
    .await;
    assert_eq!(
        s.values("Responses!A2:A5").await,
        json!([["r4"], ["r3"], ["r2"], ["r1"]])
    );
    assert_eq!(s.row_of("r1").await, Some(4));

    // Two rows inserted above: everything below moves down, metadata too, the grid grows.
    s.batch(
        json!([{"insertDimension": {"range": rows_range(0, 1, 3), "inheritFromBefore": true}}]),
    )
    .await;
    assert_eq!(
        s.values("Responses!A1:A7").await,
        json!([["id"], [], [], ["r4"], ["r3"], ["r2"], ["r1"]])
    );
    assert_eq!(s.row_of("r1").await, Some(6));
    let (_, got) = s.req(reqwest::Method::GET, "", None).await;
    assert_eq!(
        got["sheets"][0]["properties"]["gridProperties"]["rowCount"],
        10
    );
    let (st, e) = s
        .try_batch(
            json!([{"insertDimension": {"range": rows_range(0, 0, 1), "inheritFromBefore": true}}]),
        )
        .await;
    assert_eq!(
        (st, e["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{e}"
    );

    // Deleting r3's row deletes its metadata; the rows after move up.
    s.batch(json!([{"deleteDimension": {"range": rows_range(0, 4, 5)}}]))
        .await;
    assert_eq!(s.row_of("r3").await, None);
    assert_eq!(s.search(json!({"metadataValue": "r3"})).await, json!({}));
    assert_eq!(s.row_of("r2").await, Some(4));
    assert_eq!(s.row_of("r1").await, Some(5));
    assert_eq!(
        s.values("Responses!A4:C6").await,
        json!([["r4", "", "n4"], ["r2", "x", "n2"], ["r1", "y", "n1"]])
    );

    // Move r1's row (5) to before row 3: destinationIndex counts before the move.
    s.batch(json!([{"moveDimension": {"source": rows_range(0, 5, 6), "destinationIndex": 3}}]))
        .await;
    assert_eq!(s.row_of("r1").await, Some(3));
    assert_eq!(s.row_of("r4").await, Some(4));
    assert_eq!(s.row_of("r2").await, Some(5));
    assert_eq!(
        s.values("Responses!A4:A6").await,
        json!([["r1"], ["r4"], ["r2"]])
    );

    // The metadata finds its row's values, and writes to it, wherever the row went.
    let lookup =
        json!({"developerMetadataLookup": {"metadataKey": "responseId", "metadataValue": "r1"}});
    let (st, got) = s
        .req(
            reqwest::Method::POST,
            "/values:batchGetByDataFilter",
            Some(json!({"dataFilters": [lookup, {"a1Range": "Responses!A1:B1"}]})),
        )
        .await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(
        got["valueRanges"][0]["valueRange"]["values"],
        json!([["r1", "y", "n1"]])
    );
    assert_eq!(
        got["valueRanges"][0]["valueRange"]["range"],
        "Responses!A4:D4"
    );
    assert_eq!(got["valueRanges"][0]["dataFilters"][0], lookup);
    assert_eq!(
        got["valueRanges"][1]["valueRange"]["values"],
        json!([["id", "name"]])
    );
    let (st, got) = s
        .req(
            reqwest::Method::POST,
            "/values:batchUpdateByDataFilter",
            Some(json!({"valueInputOption": "RAW", "data": [
                {"dataFilter": lookup, "values": [["r1", "y2"]]},
                {"dataFilter": {"a1Range": "Responses!D1"}, "values": [["extra"]]},
                {"dataFilter": {"developerMetadataLookup": {"metadataValue": "nobody"}}, "values": [["lost"]]}
            ]})),
        )
        .await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(got["totalUpdatedCells"], 3, "{got}");
    assert_eq!(got["responses"][0]["updatedRange"], "Responses!A4:B4");
    assert_eq!(
        s.values("Responses!A1:D4").await,
        json!([["id", "name", "note", "extra"], [], [], ["r1", "y2", "n1"]])
    );

    // Metadata by id; on a column it follows the column.
    let (st, m) = s
        .req(
            reqwest::Method::GET,
            &format!("/developerMetadata/{r1_id}"),
            None,
        )
        .await;
    assert_eq!((st, m["metadataValue"].as_str()), (200, Some("r1")), "{m}");
    assert_eq!(m["location"]["dimensionRange"]["startIndex"], 3);
    let (st, _) = s
        .req(reqwest::Method::GET, "/developerMetadata/999999999", None)
        .await;
    assert_eq!(st, 404);
    s.batch(json!([{"createDeveloperMetadata": {"developerMetadata": {
        "metadataId": 77, "metadataKey": "question", "metadataValue": "note", "visibility": "PROJECT",
        "location": {"dimensionRange": {"sheetId": 0, "dimension": "COLUMNS", "startIndex": 2, "endIndex": 3}}
    }}}]))
    .await;
    s.batch(json!([
        {"insertDimension": {"range": {"sheetId": 0, "dimension": "COLUMNS", "startIndex": 0, "endIndex": 1}}},
        {"moveDimension": {"source": {"sheetId": 0, "dimension": "COLUMNS", "startIndex": 3, "endIndex": 4}, "destinationIndex": 1}}
    ]))
    .await;
    let found = s.search(json!({"locationType": "COLUMN"})).await;
    assert_eq!(
        found["matchedDeveloperMetadata"][0]["developerMetadata"]["location"]["dimensionRange"],
        json!({"sheetId": 0, "dimension": "COLUMNS", "startIndex": 1, "endIndex": 2})
    );
    assert_eq!(s.values("Responses!B1:B1").await, json!([["note"]]));
    // Deleting metadata by filter.
    let (st, r) = s
        .try_batch(json!([{"deleteDeveloperMetadata": {"dataFilter": {"developerMetadataLookup": {"metadataId": 77}}}}]))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["replies"][0]["deleteDeveloperMetadata"]["deletedDeveloperMetadata"][0]["metadataId"],
        77
    );
    assert_eq!(s.search(json!({"locationType": "COLUMN"})).await, json!({}));
    // Metadata must be on one row or column, with a visibility.
    for bad in [
        json!({"metadataKey": "k", "visibility": "DOCUMENT", "location": {"dimensionRange": rows_range(0, 1, 3)}}),
        json!({"metadataKey": "k", "location": {"sheetId": 0}}),
        json!({"metadataKey": "k", "visibility": "DOCUMENT", "location": {"sheetId": 42}}),
    ] {
        let (st, e) = s
            .try_batch(json!([{"createDeveloperMetadata": {"developerMetadata": bad}}]))
            .await;
        assert_eq!(
            (st, e["error"]["status"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{e}"
        );
    }
}

/// Google's own example of moveDimension: A1..A5 of 0..4, rows [1, 3) to index 4, gives
/// 0, 3, 1, 2, 4; the same for columns.
#[tokio::test]
async fn move_dimension_counts_the_destination_before_the_move() {
    let (s, _) = Sheet::create("M", 5, 5).await;
    s.put("M!A1", json!([[0], [1], [2], [3], [4]])).await;
    s.put("M!A1", json!([[0, "b", "c", "d", "e"]])).await;
    s.batch(json!([{"moveDimension": {"source": rows_range(0, 1, 3), "destinationIndex": 4}}]))
        .await;
    assert_eq!(
        s.values("M!A1:A5").await,
        json!([["0"], ["3"], ["1"], ["2"], ["4"]])
    );
    s.batch(json!([{"moveDimension": {"source": {"sheetId": 0, "dimension": "COLUMNS", "startIndex": 3, "endIndex": 5}, "destinationIndex": 1}}]))
        .await;
    assert_eq!(
        s.values("M!A1:E1").await,
        json!([["0", "d", "e", "b", "c"]])
    );
}

/// A person trims the grid, renames and deletes tabs; `fields` masks select what
/// spreadsheets.get returns; unknown requests are Google's 400.
#[tokio::test]
async fn grids_trimmed_tabs_renamed_and_deleted_and_fields_masks() {
    let (s, _) = Sheet::create("Responses", 100, 10).await;
    s.put("Responses!A1", json!([["id"], ["r1"], ["r2"], ["r3"]]))
        .await;
    s.put("Responses!J100", json!([["far"]])).await;
    s.batch(json!([{"createDeveloperMetadata": {"developerMetadata": {
        "metadataKey": "responseId", "metadataValue": "r3", "visibility": "DOCUMENT",
        "location": {"dimensionRange": rows_range(0, 3, 4)}
    }}}]))
    .await;
    s.batch(json!([{"updateSheetProperties": {
        "properties": {"sheetId": 0, "gridProperties": {"rowCount": 3, "columnCount": 2}},
        "fields": "gridProperties.rowCount,gridProperties.columnCount"
    }}]))
    .await;
    assert_eq!(s.values("Responses").await, json!([["id"], ["r1"], ["r2"]]));
    assert_eq!(
        s.search(json!({"metadataKey": "responseId"})).await,
        json!({}),
        "the row went with the trim"
    );
    let (st, e) = s.put("Responses!A4", json!([["r3"]])).await;
    assert_eq!(st, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds grid limits. Max rows: 3, max columns: 2"),
        "{e}"
    );

    // Tab rename: same sheet id, the old name no longer parses.
    s.batch(json!([
        {"updateSheetProperties": {"properties": {"sheetId": 0, "title": "Form answers"}, "fields": "title"}},
        {"addSheet": {"properties": {"title": "Other", "gridProperties": {"rowCount": 2, "columnCount": 2}}}}
    ]))
    .await;
    assert_eq!(s.values("'Form answers'!A2").await, json!([["r1"]]));
    let (st, e) = s
        .req(reqwest::Method::GET, "/values/Responses!A1", None)
        .await;
    assert_eq!(st, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unable to parse range"),
        "{e}"
    );

    let (st, got) = s
        .req(
            reqwest::Method::GET,
            "?fields=sheets(properties(sheetId,title,gridProperties))",
            None,
        )
        .await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(
        got,
        json!({"sheets": [
            {"properties": {"sheetId": 0, "title": "Form answers", "gridProperties": {"rowCount": 3, "columnCount": 2}}},
            {"properties": {"sheetId": got["sheets"][1]["properties"]["sheetId"], "title": "Other", "gridProperties": {"rowCount": 2, "columnCount": 2}}}
        ]})
    );
    let (_, got) = s
        .req(
            reqwest::Method::GET,
            "?fields=sheets.properties&includeGridData=true",
            None,
        )
        .await;
    assert_eq!(
        got["sheets"][0].as_object().unwrap().len(),
        1,
        "only properties: {got}"
    );
    assert_eq!(got["sheets"][0]["properties"]["index"], 0);
    let (_, got) = s
        .req(
            reqwest::Method::GET,
            "?fields=spreadsheetId,properties.title",
            None,
        )
        .await;
    assert_eq!(
        got,
        json!({"spreadsheetId": s.id, "properties": {"title": "Untitled spreadsheet"}})
    );
    let (_, got) = s
        .req(reqwest::Method::GET, "?includeGridData=true", None)
        .await;
    assert_eq!(
        got["sheets"][0]["data"][0]["rowData"][1]["values"][0]["userEnteredValue"],
        json!({"stringValue": "r1"})
    );
    let (st, _) = s.req(reqwest::Method::GET, "?fields=sheets(", None).await;
    assert_eq!(st, 400);

    // Deleting a tab; the last one cannot go.
    let other = got["sheets"][1]["properties"]["sheetId"].clone();
    s.batch(json!([{"deleteSheet": {"sheetId": other}}])).await;
    let (st, e) = s.try_batch(json!([{"deleteSheet": {"sheetId": 0}}])).await;
    assert_eq!(
        (st, e["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let (st, e) = s
        .try_batch(json!([{"deleteDimension": {"range": rows_range(0, 0, 3)}}]))
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("You can't delete all the rows"),
        "{e}"
    );

    // An unknown request: Google's 400, and nothing of the batch applied.
    let (st, e) = s
        .try_batch(json!([
            {"updateSheetProperties": {"properties": {"sheetId": 0, "title": "Renamed"}, "fields": "title"}},
            {"frobnicate": {}}
        ]))
        .await;
    assert_eq!(
        (st, e["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unknown name \"frobnicate\""),
        "{e}"
    );
    assert_eq!(s.values("'Form answers'!A1").await, json!([["id"]]));
}

/// A protected range refuses writes, deletes and sorts by principals that are not its
/// editors with Google's 400; its editors (and the requester who added it) write as before.
#[tokio::test]
async fn protected_ranges_refuse_other_principals() {
    let (base, http) = start().await;
    let (key_a, a) = service_account_token(&base, &http, "connector").await;
    let (key_b, b) = service_account_token(&base, &http, "person").await;
    let emails: Vec<&str> = [&key_a, &key_b]
        .iter()
        .map(|k| k["client_email"].as_str().unwrap())
        .collect();
    let created: Value = http
        .post(format!("{base}/emulator/spreadsheets"))
        .json(&json!({"title": "Shared", "sheets": [{"title": "S", "rows": 10, "columns": 3}], "shared_with": emails}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["spreadsheetId"].as_str().unwrap().to_string();
    let as_ = |token: &str| Sheet {
        base: base.clone(),
        http: http.clone(),
        token: token.to_string(),
        id: id.clone(),
    };
    let (sa, sb) = (as_(&a), as_(&b));
    sa.put("S!A1", json!([["Response ID", "Name"], ["r1", "Ann"]]))
        .await;
    let r = sa
        .batch(json!([
            {"addProtectedRange": {"protectedRange": {"range": {"sheetId": 0, "startRowIndex": 0, "endRowIndex": 2, "startColumnIndex": 0, "endColumnIndex": 2}, "description": "the connector's"}}},
            {"addProtectedRange": {"protectedRange": {"range": {"sheetId": 0, "startRowIndex": 5, "endRowIndex": 6}, "warningOnly": true}}}
        ]))
        .await;
    let pr = &r["replies"][0]["addProtectedRange"]["protectedRange"];
    assert_eq!(
        pr["editors"]["users"],
        json!([emails[0]]),
        "the requester edits: {r}"
    );
    let pid = pr["protectedRangeId"].clone();

    let refused = "You are trying to edit a protected cell or object. Please contact the spreadsheet owner to remove protection if you need to edit.";
    let (st, e) = sb.put("S!B2", json!([["Bob"]])).await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(
        e["error"],
        json!({"code": 400, "message": refused, "status": "INVALID_ARGUMENT"})
    );
    // values.batchUpdate is all or nothing: the unprotected cell is not written either.
    let (st, _) = sb
        .req(
            reqwest::Method::POST,
            "/values:batchUpdate",
            Some(json!({"valueInputOption": "RAW", "data": [
                {"range": "S!C3", "values": [["free"]]},
                {"range": "S!A1", "values": [["mine"]]}
            ]})),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(
        sa.values("S!A1:C3").await,
        json!([["Response ID", "Name"], ["r1", "Ann"]])
    );
    let (st, e) = sb
        .try_batch(json!([{"deleteDimension": {"range": rows_range(0, 1, 2)}}]))
        .await;
    assert_eq!((st, e["error"]["message"].as_str()), (400, Some(refused)));
    let (st, _) = sb
        .try_batch(json!([{"sortRange": {"range": {"sheetId": 0, "startRowIndex": 0, "endRowIndex": 4}, "sortSpecs": [{"dimensionIndex": 0}]}}]))
        .await;
    assert_eq!(st, 400);
    let (st, _) = sb
        .req(
            reqwest::Method::POST,
            "/values/S!A1:append?valueInputOption=RAW",
            Some(json!({"values": [["x"]]})),
        )
        .await;
    assert_eq!(st, 200, "append lands below the protected rows");
    // Cells outside, and warning-only ranges, are writable; the editor writes inside.
    assert_eq!(sb.put("S!C1", json!([["note"]])).await.0, 200);
    assert_eq!(sb.put("S!A6", json!([["warned"]])).await.0, 200);
    assert_eq!(sa.put("S!B2", json!([["Ann B."]])).await.0, 200);
    // A row inserted above moves the protection down with the rows it protects.
    sa.batch(json!([{"insertDimension": {"range": rows_range(0, 0, 1)}}]))
        .await;
    assert_eq!(sb.put("S!A1", json!([["above"]])).await.0, 200);
    assert_eq!(sb.put("S!A3", json!([["r1?"]])).await.0, 400);
    let (_, got) = sa
        .req(reqwest::Method::GET, "?fields=sheets.protectedRanges", None)
        .await;
    assert_eq!(
        got["sheets"][0]["protectedRanges"][0]["range"]["startRowIndex"], 1,
        "{got}"
    );
    // Once deleted, the range protects nothing.
    sa.batch(json!([{"deleteProtectedRange": {"protectedRangeId": pid}}]))
        .await;
    assert_eq!(sb.put("S!A3", json!([["r1!"]])).await.0, 200);
}

/// values.append finds the table in the range and writes after its last row from its first
/// column, growing the grid; INSERT_ROWS inserts rows for what it adds, moving what was
/// below (and its metadata).
#[tokio::test]
async fn values_append_finds_the_table_and_grows_the_grid() {
    let (s, _) = Sheet::create("T", 3, 3).await;
    s.put("T!A1", json!([["id", "name"], ["r1", "Ann"]])).await;
    let append = |range: &str, option: &str, values: Value| {
        let path = format!("/values/{range}:append?valueInputOption=RAW&insertDataOption={option}");
        let body = json!({ "values": values });
        let s = &s;
        async move { s.req(reqwest::Method::POST, &path, Some(body)).await }
    };
    let (st, r) = append("T!A1", "OVERWRITE", json!([["r2", "Bob"], ["r3", "Cy"]])).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["tableRange"], "T!A1:B2");
    assert_eq!(r["updates"]["updatedRange"], "T!A3:B4");
    assert_eq!(r["updates"]["updatedCells"], 4);
    assert_eq!(
        s.values("T!A1:C9").await,
        json!([["id", "name"], ["r1", "Ann"], ["r2", "Bob"], ["r3", "Cy"]])
    );
    assert_eq!(s.grid().await, json!({"rowCount": 4, "columnCount": 3}));

    // A range of the header row only still finds the whole table; a note after a blank row is
    // not part of it.
    s.batch(json!([{"appendDimension": {"sheetId": 0, "dimension": "ROWS", "length": 4}}]))
        .await;
    s.put("T!A7", json!([["a note"]])).await;
    s.batch(json!([tag_row(6, "note")])).await;
    let (st, r) = append("T!A1:B1", "INSERT_ROWS", json!([["r4", "Di"]])).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["updates"]["updatedRange"], "T!A5:B5");
    assert_eq!(
        s.values("T!A5:A8").await,
        json!([["r4"], [], [], ["a note"]])
    );
    assert_eq!(
        s.row_of("note").await,
        Some(7),
        "the metadata moved with the note's row"
    );
    let (st, r) = append("T!A1", "OVERWRITE", json!([["r5", "Ed"]])).await;
    assert_eq!(
        (st, r["updates"]["updatedRange"].as_str()),
        (200, Some("T!A6:B6"))
    );

    // A table that starts in column B: appended from column B.
    let (s2, _) = Sheet::create("U", 5, 5).await;
    s2.put("U!B2", json!([["h1", "h2"], ["v1", "v2"]])).await;
    let (st, r) = s2
        .req(
            reqwest::Method::POST,
            "/values/U!A1:E1:append?valueInputOption=RAW",
            Some(json!({"values": [["v3", "v4", "v5", "v6", "v7"]]})),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["tableRange"], "U!B2:C3");
    assert_eq!(r["updates"]["updatedRange"], "U!B4:F4");
    assert_eq!(s2.grid().await, json!({"rowCount": 5, "columnCount": 6}));
    // An empty sheet: the range's first cell.
    let (s3, _) = Sheet::create("V", 2, 2).await;
    let (st, r) = s3
        .req(
            reqwest::Method::POST,
            "/values/V!A1:append?valueInputOption=RAW",
            Some(json!({"values": [["a"]]})),
        )
        .await;
    assert_eq!(
        (st, r["updates"]["updatedRange"].as_str()),
        (200, Some("V!A1:A1")),
        "{r}"
    );
    assert!(r.get("tableRange").is_none());
    let (st, _) = s3
        .req(
            reqwest::Method::POST,
            "/values/V!A1:append?valueInputOption=RAW&insertDataOption=SIDEWAYS",
            Some(json!({"values": [["a"]]})),
        )
        .await;
    assert_eq!(st, 400);
}

/// A service-account JWT signed for Google's canonical token endpoint (as google-auth signs
/// every one, whatever its token_uri) is accepted; another audience is not.
#[tokio::test]
async fn jwts_for_googles_canonical_token_endpoint_are_accepted() {
    use aws_lc_rs::signature::RSA_PKCS1_SHA256;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    let (base, http) = start().await;
    let key: Value = http
        .post(format!("{base}/emulator/service-accounts"))
        .json(&json!({"name": "py"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pem = key["private_key"].as_str().unwrap();
    let der = STANDARD
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let assertion = |aud: &str| {
        let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signed = format!(
            "{}.{}",
            enc(json!({"alg": "RS256", "typ": "JWT"})),
            enc(
                json!({"iss": key["client_email"], "scope": "https://www.googleapis.com/auth/spreadsheets", "aud": aud, "iat": now, "exp": now + 3600})
            )
        );
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    for (aud, want) in [
        ("https://oauth2.googleapis.com/token", 200),
        (&format!("{base}/token") as &str, 200),
        ("https://example.com/token", 400),
    ] {
        let r = http
            .post(format!("{base}/token"))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &assertion(aud)),
            ])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, want, "{aud}: {body}");
        if want == 400 {
            assert_eq!(body["error"], "invalid_grant");
        }
    }
}

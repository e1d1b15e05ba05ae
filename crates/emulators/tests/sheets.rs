//! The Sheets emulator driven over HTTP by clients we did not write: yup-oauth2 signs the
//! service-account JWT; the rest is plain HTTP with Google's paths and bodies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use collect_emulators::sheets::{Emulator, router};
use serde_json::{Value, json};

async fn start() -> (String, reqwest::Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Emulator::new(&base));
    tokio::spawn(async move { axum_serve(listener, app).await });
    (base, reqwest::Client::new())
}

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

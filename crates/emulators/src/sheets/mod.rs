//! `collect emulate sheets`: the Google Sheets API v4 calls a sheet writer uses, and the OAuth2
//! token endpoint, as Google documents them.
//!
//! Served, under the same paths as `https://sheets.googleapis.com` and
//! `https://oauth2.googleapis.com`:
//! - `POST /v4/spreadsheets`, `GET /v4/spreadsheets/{id}`, `POST /v4/spreadsheets/{id}:batchUpdate`
//!   (addSheet, appendDimension, updateSheetProperties, deleteSheet);
//! - `GET|PUT /v4/spreadsheets/{id}/values/{range}`, `POST .../values:batchUpdate`,
//!   `GET .../values:batchGet`, `POST .../values/{range}:clear`;
//! - `POST /token`: JWT bearer (service accounts), authorization code and refresh token.
//!
//! Google's errors (`{"error": {"code", "message", "status"}}`), grid bounds, the 10,000,000
//! cells limit, 50,000 characters per cell, 10 MB requests, and per-minute quotas per user and
//! per project (60 and 300 by default, as Google's) answered with 429 RESOURCE_EXHAUSTED.
//! Not emulated: formulas are stored, not computed (they read back as `#NAME?`).
//!
//! Admin (`/emulator/...`): create service accounts (returns the JSON key), OAuth clients,
//! authorization codes, spreadsheets, access tokens; revoke tokens; set quotas; inject latency, 5xx,
//! 429 storms and failures after a write is applied; read statistics and the request log.

pub mod a1;
pub mod model;
pub mod oauth;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::admin::{bad, chance, check_faults, throttle_until};
use model::{GoogleError, Render, Spreadsheet};
use oauth::{OAuth, Principal};

/// Most bytes of a request body.
pub const MAX_BODY: usize = 10 * 1024 * 1024;

/// Per-minute quotas (Google's defaults).
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Read requests per minute per user.
    pub read_per_minute_user: u32,
    /// Read requests per minute per project.
    pub read_per_minute_project: u32,
    /// Write requests per minute per user.
    pub write_per_minute_user: u32,
    /// Write requests per minute per project.
    pub write_per_minute_project: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            read_per_minute_user: 60,
            read_per_minute_project: 300,
            write_per_minute_user: 60,
            write_per_minute_project: 300,
        }
    }
}

/// Injected faults.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every Sheets API request.
    pub latency_ms: u64,
    /// Share (0 to 1) of Sheets API requests answered with `error_status` before doing anything.
    pub error_rate: f64,
    /// 500 or 503.
    pub error_status: u16,
    /// Every Sheets API request is answered 429 for this many seconds from now.
    pub throttle_seconds: u64,
    /// Share (0 to 1) of write requests that are applied and then answered 500.
    pub fail_after_write_rate: f64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Stats {
    requests: BTreeMap<String, u64>,
    throttled: u64,
    injected_errors: u64,
    write_requests: u64,
    cells_written: u64,
}

struct Inner {
    spreadsheets: HashMap<String, Spreadsheet>,
    oauth: OAuth,
    quotas: Quotas,
    windows: HashMap<(String, String), (u64, u32)>,
    faults: Faults,
    throttle_until: Option<Instant>,
    stats: Stats,
    log: VecDeque<Value>,
}

/// The emulator.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Mutex<Inner>>,
    /// Base URL clients reach it at (the token URI in keys is `{base}/token`).
    pub base_url: Arc<str>,
}

fn error(e: &GoogleError) -> Response {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(e.body())).into_response()
}

fn google(code: u16, status: &'static str, message: &str) -> GoogleError {
    GoogleError {
        code,
        status,
        message: message.into(),
    }
}

fn random_id() -> String {
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(44)
        .map(char::from)
        .collect()
}

impl Emulator {
    /// An empty emulator reachable at `base_url`.
    pub fn new(base_url: &str) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                spreadsheets: HashMap::new(),
                oauth: OAuth::default(),
                quotas: Quotas::default(),
                windows: HashMap::new(),
                faults: Faults::default(),
                throttle_until: None,
                stats: Stats::default(),
                log: VecDeque::new(),
            })),
            base_url: base_url.trim_end_matches('/').into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn token_uri(&self) -> String {
        format!("{}/token", self.base_url)
    }

    /// Creates a spreadsheet directly (admin).
    pub fn create_spreadsheet(
        &self,
        title: &str,
        sheets: &[(String, u32, u32)],
        shared_with: Option<Vec<String>>,
    ) -> Value {
        let id = random_id();
        let s = Spreadsheet::new(id.clone(), title.into(), sheets, shared_with);
        let json = s.to_json();
        self.lock().spreadsheets.insert(id, s);
        json
    }

    /// The spreadsheets, OAuth state (accounts, clients, refresh and access tokens) and
    /// quotas as JSON, for [`Emulator::restore`]. Faults, statistics and the request log are
    /// not kept.
    pub fn snapshot(&self) -> Vec<u8> {
        let inner = self.lock();
        serde_json::to_vec(&serde_json::json!({
            "spreadsheets": inner.spreadsheets,
            "oauth": inner.oauth,
            "quotas": inner.quotas,
        }))
        .unwrap_or_default()
    }

    /// Replaces the state with a [`Emulator::snapshot`].
    pub fn restore(&self, snapshot: &[u8]) -> Result<(), String> {
        #[derive(Deserialize)]
        struct Saved {
            spreadsheets: HashMap<String, Spreadsheet>,
            oauth: OAuth,
            quotas: Quotas,
        }
        let saved: Saved =
            serde_json::from_slice(snapshot).map_err(|e| format!("emulator state: {e}"))?;
        let mut inner = self.lock();
        inner.spreadsheets = saved.spreadsheets;
        inner.oauth = saved.oauth;
        inner.quotas = saved.quotas;
        Ok(())
    }

    /// Creates a service account with a key (admin); returns the JSON key file.
    pub fn create_service_account(&self, name: &str, project: &str) -> Result<Value, String> {
        let uri = self.token_uri();
        self.lock()
            .oauth
            .create_service_account(name, project, &uri)
    }
}

/// Counts a request against the per-minute quotas of its user and project.
fn charge(inner: &mut Inner, write: bool, p: &Principal) -> Result<(), GoogleError> {
    let minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0);
    let q = inner.quotas;
    let (metric, per_user, per_project) = if write {
        (
            "Write requests",
            q.write_per_minute_user,
            q.write_per_minute_project,
        )
    } else {
        (
            "Read requests",
            q.read_per_minute_user,
            q.read_per_minute_project,
        )
    };
    for (scope, key, limit) in [
        ("user", &p.email, per_user),
        ("project", &p.project, per_project),
    ] {
        let w = inner
            .windows
            .entry((format!("{metric}:{scope}"), key.clone()))
            .or_insert((minute, 0));
        if w.0 != minute {
            *w = (minute, 0);
        }
        if w.1 >= limit {
            inner.stats.throttled += 1;
            return Err(GoogleError {
                code: 429,
                status: "RESOURCE_EXHAUSTED",
                message: format!(
                    "Quota exceeded for quota metric '{metric}' and limit '{metric} per minute per {scope}' of service 'sheets.googleapis.com' for consumer 'project_number:{}'.",
                    p.project
                ),
            });
        }
    }
    for scope in ["user", "project"] {
        let key = if scope == "user" {
            &p.email
        } else {
            &p.project
        };
        if let Some(w) = inner
            .windows
            .get_mut(&(format!("{metric}:{scope}"), key.clone()))
        {
            w.1 += 1;
        }
    }
    Ok(())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Serves the emulator on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    emulator: Emulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(emulator))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The routes.
pub fn router(emulator: Emulator) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/v4/spreadsheets", post(create))
        .route("/v4/spreadsheets/{*rest}", get(api).post(api).put(api))
        .route("/emulator/service-accounts", post(admin_service_account))
        .route(
            "/emulator/service-accounts/{email}/disable",
            post(admin_disable),
        )
        .route("/emulator/oauth-clients", post(admin_client))
        .route("/emulator/authorization-codes", post(admin_code))
        .route("/emulator/revoke", post(admin_revoke))
        .route("/emulator/spreadsheets", post(admin_spreadsheet))
        .route("/emulator/faults", put(admin_faults).get(admin_get_faults))
        .route("/emulator/quotas", put(admin_quotas))
        .route("/emulator/stats", get(admin_stats))
        .route("/emulator/requests", get(admin_requests))
        .route("/emulator/access-tokens", post(admin_access_token))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .with_state(emulator)
}

async fn token(
    State(e): State<Emulator>,
    axum::extract::Form(form): axum::extract::Form<HashMap<String, String>>,
) -> Response {
    let uri = e.token_uri();
    match e.lock().oauth.token(&form, &uri) {
        Ok(v) => axum::Json(v).into_response(),
        Err(err) => (
            StatusCode::from_u16(err.status).unwrap_or(StatusCode::BAD_REQUEST),
            axum::Json(err.body()),
        )
            .into_response(),
    }
}

/// Authentication, faults and quotas shared by every Sheets API call.
async fn admit(e: &Emulator, headers: &HeaderMap, write: bool) -> Result<Principal, GoogleError> {
    let (latency, throttled, injected) = {
        let mut inner = e.lock();
        let f = inner.faults.clone();
        let throttled = inner.throttle_until.is_some_and(|t| Instant::now() < t);
        let injected = chance(f.error_rate);
        if injected {
            inner.stats.injected_errors += 1;
        }
        if throttled {
            inner.stats.throttled += 1;
        }
        (
            Duration::from_millis(f.latency_ms),
            throttled,
            injected.then_some(f.error_status),
        )
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let token = bearer(headers).ok_or_else(|| {
        google(401, "UNAUTHENTICATED", "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
    })?;
    let mut inner = e.lock();
    let p = inner.oauth.principal(token).ok_or_else(|| {
        google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
    })?;
    if throttled {
        return Err(google(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute per user' of service 'sheets.googleapis.com'.",
        ));
    }
    if let Some(status) = injected {
        return Err(if status == 503 {
            google(503, "UNAVAILABLE", "The service is currently unavailable.")
        } else {
            google(500, "INTERNAL", "Internal error encountered.")
        });
    }
    charge(&mut inner, write, &p)?;
    Ok(p)
}

fn with_sheet<T>(
    inner: &mut Inner,
    id: &str,
    p: &Principal,
    f: impl FnOnce(&mut Spreadsheet) -> Result<T, GoogleError>,
) -> Result<T, GoogleError> {
    let s = inner
        .spreadsheets
        .get_mut(id)
        .ok_or_else(|| google(404, "NOT_FOUND", "Requested entity was not found."))?;
    if let Some(shared) = &s.shared_with
        && !shared.contains(&p.email)
    {
        return Err(google(
            403,
            "PERMISSION_DENIED",
            "The caller does not have permission",
        ));
    }
    f(s)
}

async fn create(
    State(e): State<Emulator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        admit(&e, &headers, true).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|err| GoogleError::invalid(format!("Invalid JSON payload received. {err}")))?;
        let title = v["properties"]["title"]
            .as_str()
            .unwrap_or("Untitled spreadsheet")
            .to_string();
        let sheets: Vec<(String, u32, u32)> = v["sheets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let p = &s["properties"];
                        (
                            p["title"]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| format!("Sheet{}", i + 1)),
                            p["gridProperties"]["rowCount"].as_u64().unwrap_or(1000) as u32,
                            p["gridProperties"]["columnCount"].as_u64().unwrap_or(26) as u32,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok::<Value, GoogleError>(e.create_spreadsheet(&title, &sheets, None))
    }
    .await;
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(err) => error(&err),
    }
}

fn query_value<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn render_of(q: &[(String, String)]) -> Result<Render, GoogleError> {
    match query_value(q, "valueRenderOption").unwrap_or("FORMATTED_VALUE") {
        "FORMATTED_VALUE" => Ok(Render::Formatted),
        "UNFORMATTED_VALUE" => Ok(Render::Unformatted),
        "FORMULA" => Ok(Render::Formula),
        other => Err(GoogleError::invalid(format!(
            "Invalid value at 'value_render_option' ({other})"
        ))),
    }
}

fn input_option(option: Option<&str>) -> Result<bool, GoogleError> {
    match option {
        Some("RAW") => Ok(false),
        Some("USER_ENTERED") => Ok(true),
        Some(other) => Err(GoogleError::invalid(format!(
            "Invalid value at 'value_input_option' ({other})"
        ))),
        None => Err(GoogleError::invalid(
            "'valueInputOption' is required but not specified",
        )),
    }
}

/// Every `/v4/spreadsheets/{...}` call, routed by method and the path after the id.
async fn api(
    State(e): State<Emulator>,
    Path(rest): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(&GoogleError::invalid(format!(
                "Request payload size exceeds the limit: {MAX_BODY} bytes."
            )));
        }
    };
    let (id, tail) = match rest.find(['/', ':']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest.as_str(), ""),
    };
    let write = method != Method::GET;
    let name = match (&method, tail) {
        (&Method::GET, "") => "spreadsheets.get",
        (&Method::POST, ":batchUpdate") => "spreadsheets.batchUpdate",
        (&Method::POST, "/values:batchUpdate") => "values.batchUpdate",
        (&Method::GET, "/values:batchGet") => "values.batchGet",
        (&Method::GET, t) if t.starts_with("/values/") => "values.get",
        (&Method::PUT, t) if t.starts_with("/values/") => "values.update",
        (&Method::POST, t) if t.starts_with("/values/") && t.ends_with(":clear") => "values.clear",
        _ => return error(&google(404, "NOT_FOUND", "Requested entity was not found.")),
    };
    *e.lock().stats.requests.entry(name.into()).or_default() += 1;
    let p = match admit(&e, &headers, write).await {
        Ok(p) => p,
        Err(err) => return error(&err),
    };
    let parsed: Result<Value, GoogleError> = if write && !body.is_empty() {
        serde_json::from_slice(&body)
            .map_err(|err| GoogleError::invalid(format!("Invalid JSON payload received. {err}")))
    } else {
        Ok(Value::Null)
    };
    let body = match parsed {
        Ok(b) => b,
        Err(err) => return error(&err),
    };
    let range = tail
        .strip_prefix("/values/")
        .map(|r| r.trim_end_matches(":clear").to_string())
        .unwrap_or_default();
    let mut inner = e.lock();
    let fail_after = write && chance(inner.faults.fail_after_write_rate);
    let result = match name {
        "spreadsheets.get" => with_sheet(&mut inner, id, &p, |s| Ok(s.to_json())),
        "spreadsheets.batchUpdate" => {
            let requests = body["requests"].as_array().cloned().unwrap_or_default();
            with_sheet(&mut inner, id, &p, |s| {
                let replies = s.batch_update(&requests)?;
                Ok(json!({"spreadsheetId": s.id, "replies": replies}))
            })
        }
        "values.get" => render_of(&q).and_then(|r| with_sheet(&mut inner, id, &p, |s| s.get_values(&range, r))),
        "values.batchGet" => render_of(&q).and_then(|r| {
            with_sheet(&mut inner, id, &p, |s| {
                let ranges = q.iter().filter(|(k, _)| k == "ranges").map(|(_, v)| s.get_values(v, r)).collect::<Result<Vec<_>, _>>()?;
                Ok(json!({"spreadsheetId": s.id, "valueRanges": ranges}))
            })
        }),
        "values.update" => input_option(query_value(&q, "valueInputOption")).and_then(|ue| {
            let values = body["values"].as_array().cloned().unwrap_or_default();
            let major = body["majorDimension"].as_str().unwrap_or("ROWS").to_string();
            let r = with_sheet(&mut inner, id, &p, |s| s.update_values(&range, &major, &values, ue))?;
            inner.stats.cells_written += r["updatedCells"].as_u64().unwrap_or(0);
            Ok(r)
        }),
        "values.clear" => with_sheet(&mut inner, id, &p, |s| {
            let current = s.get_values(&range, Render::Unformatted)?;
            let rows = current["values"].as_array().map(|a| a.len()).unwrap_or(0);
            let cols = current["values"].as_array().and_then(|a| a.iter().filter_map(|r| r.as_array().map(|x| x.len())).max()).unwrap_or(0);
            let blank: Vec<Value> = (0..rows).map(|_| Value::Array(vec![Value::String(String::new()); cols])).collect();
            s.update_values(&range, "ROWS", &blank, false)?;
            Ok(json!({"spreadsheetId": s.id, "clearedRange": current["range"]}))
        }),
        "values.batchUpdate" => input_option(body["valueInputOption"].as_str()).and_then(|ue| {
            let data = body["data"].as_array().cloned().unwrap_or_default();
            let r = with_sheet(&mut inner, id, &p, |s| {
                // All or nothing, like Google: apply to a copy first.
                let mut next = s.clone();
                let mut responses = Vec::new();
                for d in &data {
                    let range = d["range"].as_str().ok_or_else(|| GoogleError::invalid("Invalid data: range is required"))?;
                    let values = d["values"].as_array().cloned().unwrap_or_default();
                    responses.push(next.update_values(range, d["majorDimension"].as_str().unwrap_or("ROWS"), &values, ue)?);
                }
                *s = next;
                let sum = |k: &str| responses.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
                Ok(json!({
                    "spreadsheetId": s.id,
                    "totalUpdatedRows": sum("updatedRows"),
                    "totalUpdatedColumns": sum("updatedColumns"),
                    "totalUpdatedCells": sum("updatedCells"),
                    "totalUpdatedSheets": 1,
                    "responses": responses,
                }))
            })?;
            inner.stats.cells_written += r["totalUpdatedCells"].as_u64().unwrap_or(0);
            let log_entry = json!({
                "method": name,
                "spreadsheet": id,
                "principal": p.email,
                "value_input_option": body["valueInputOption"],
                "ranges": data.iter().map(|d| d["range"].clone()).collect::<Vec<_>>(),
                "rows": data.iter().map(|d| d["values"].as_array().map(|v| v.len()).unwrap_or(0)).sum::<usize>(),
                "bytes": body.to_string().len(),
            });
            inner.log.push_back(log_entry);
            if inner.log.len() > 1000 {
                inner.log.pop_front();
            }
            Ok(r)
        }),
        _ => Err(google(404, "NOT_FOUND", "Requested entity was not found.")),
    };
    if write && result.is_ok() {
        inner.stats.write_requests += 1;
    }
    match result {
        Ok(_) if fail_after => {
            inner.stats.injected_errors += 1;
            error(&google(500, "INTERNAL", "Internal error encountered."))
        }
        Ok(v) => axum::Json(v).into_response(),
        Err(err) => error(&err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    project: Option<String>,
}

async fn admin_service_account(
    State(e): State<Emulator>,
    axum::Json(b): axum::Json<NewAccount>,
) -> Response {
    let name = b
        .name
        .unwrap_or_else(|| format!("collect-{}", rand::rng().random_range(1000..9999)));
    match e.create_service_account(&name, &b.project.unwrap_or_else(|| "collect-dev".into())) {
        Ok(key) => (StatusCode::CREATED, axum::Json(key)).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": err})),
        )
            .into_response(),
    }
}

async fn admin_disable(State(e): State<Emulator>, Path(email): Path<String>) -> Response {
    if e.lock().oauth.disable_service_account(&email) {
        axum::Json(json!({"disabled": email})).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no such service account"})),
        )
            .into_response()
    }
}

async fn admin_client(
    State(e): State<Emulator>,
    axum::Json(b): axum::Json<NewAccount>,
) -> Response {
    let (id, secret) = e
        .lock()
        .oauth
        .create_client(&b.project.unwrap_or_else(|| "collect-dev".into()));
    (
        StatusCode::CREATED,
        axum::Json(json!({"client_id": id, "client_secret": secret})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCode {
    client_id: String,
    user: String,
    redirect_uri: String,
}

async fn admin_code(State(e): State<Emulator>, axum::Json(b): axum::Json<NewCode>) -> Response {
    match e
        .lock()
        .oauth
        .issue_code(&b.client_id, &b.user, &b.redirect_uri)
    {
        Some(code) => (StatusCode::CREATED, axum::Json(json!({"code": code}))).into_response(),
        None => bad("unknown client_id"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    token_or_user: String,
}

async fn admin_revoke(State(e): State<Emulator>, axum::Json(b): axum::Json<Revoke>) -> Response {
    let n = e.lock().oauth.revoke(&b.token_or_user);
    axum::Json(json!({"revoked": n})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSheet {
    title: String,
    rows: u32,
    columns: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSpreadsheet {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    sheets: Vec<NewSheet>,
    #[serde(default)]
    shared_with: Option<Vec<String>>,
}

async fn admin_spreadsheet(
    State(e): State<Emulator>,
    axum::Json(b): axum::Json<NewSpreadsheet>,
) -> Response {
    let sheets: Vec<(String, u32, u32)> = b
        .sheets
        .into_iter()
        .map(|s| (s.title, s.rows, s.columns))
        .collect();
    let s = e.create_spreadsheet(
        &b.title.unwrap_or_else(|| "Untitled spreadsheet".into()),
        &sheets,
        b.shared_with,
    );
    (StatusCode::CREATED, axum::Json(s)).into_response()
}

async fn admin_faults(State(e): State<Emulator>, axum::Json(f): axum::Json<Faults>) -> Response {
    if let Some(refused) = check_faults(
        &[f.error_rate, f.fail_after_write_rate],
        f.error_rate,
        f.error_status,
    ) {
        return refused;
    }
    let mut inner = e.lock();
    inner.throttle_until = throttle_until(f.throttle_seconds);
    inner.faults = f.clone();
    axum::Json(json!(f)).into_response()
}

async fn admin_get_faults(State(e): State<Emulator>) -> Response {
    axum::Json(json!(e.lock().faults.clone())).into_response()
}

async fn admin_quotas(State(e): State<Emulator>, axum::Json(q): axum::Json<Quotas>) -> Response {
    let mut inner = e.lock();
    inner.quotas = q;
    inner.windows.clear();
    axum::Json(json!(q)).into_response()
}

async fn admin_stats(State(e): State<Emulator>) -> Response {
    axum::Json(json!(e.lock().stats)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccessToken {
    email: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

async fn admin_access_token(
    State(e): State<Emulator>,
    axum::Json(b): axum::Json<NewAccessToken>,
) -> Response {
    let ttl = b.ttl_seconds.unwrap_or(oauth::TOKEN_LIFETIME.as_secs());
    if b.email.trim().is_empty() || ttl == 0 || ttl > 366 * 86_400 {
        return bad("email must be set and ttl_seconds between 1 and 31622400");
    }
    let token = e.lock().oauth.mint_for(
        Principal {
            email: b.email,
            project: b.project.unwrap_or_else(|| "collect-dev".into()),
        },
        Duration::from_secs(ttl),
    );
    (
        StatusCode::CREATED,
        axum::Json(json!({"access_token": token, "expires_in": ttl, "token_type": "Bearer"})),
    )
        .into_response()
}

async fn admin_requests(State(e): State<Emulator>) -> Response {
    axum::Json(json!(e.lock().log.iter().cloned().collect::<Vec<_>>())).into_response()
}

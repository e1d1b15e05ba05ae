//! `collect emulate sheets`: the Google Sheets API v4 calls a sheet writer uses, and the OAuth2
//! token endpoint, as Google documents them.
//!
//! Served, under the same paths as `https://sheets.googleapis.com` and
//! `https://oauth2.googleapis.com`:
//! - `POST /v4/spreadsheets`, `GET /v4/spreadsheets/{id}` (`fields` masks, `includeGridData`),
//!   `POST /v4/spreadsheets/{id}:batchUpdate` (sheets, rows and columns as people change
//!   them, protected ranges, developer metadata: `requests.rs` lists the kinds);
//! - `GET|PUT /v4/spreadsheets/{id}/values/{range}`, `POST .../values/{range}:append`,
//!   `POST .../values/{range}:clear`, `POST .../values:batchUpdate`, `GET .../values:batchGet`,
//!   `POST .../values:batchGetByDataFilter`, `POST .../values:batchUpdateByDataFilter`;
//! - `POST .../developerMetadata:search`, `GET .../developerMetadata/{metadataId}`;
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
mod admin;
mod api;
mod dimensions;
pub mod fields;
pub mod grid;
pub mod metadata;
pub mod model;
pub mod oauth;
pub mod protection;
mod requests;
pub mod values;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::admin::chance;
use model::{GoogleError, Spreadsheet};
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
    /// Share (0 to 1) of write requests that are applied and then never answered: the
    /// connection is closed (a proxy or load balancer dropping it; the caller cannot tell
    /// whether the write happened).
    pub drop_after_write_rate: f64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Stats {
    requests: BTreeMap<String, u64>,
    throttled: u64,
    injected_errors: u64,
    dropped_after_write: u64,
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

    /// Creates a spreadsheet directly (admin): owned by a person, not by any principal of
    /// the API, so protected ranges hold against every principal that is not their editor.
    pub fn create_spreadsheet(
        &self,
        title: &str,
        sheets: &[(String, u32, u32)],
        shared_with: Option<Vec<String>>,
    ) -> Value {
        self.create_owned(title, sheets, shared_with, None)
    }

    /// Creates a spreadsheet owned by `owner`.
    fn create_owned(
        &self,
        title: &str,
        sheets: &[(String, u32, u32)],
        shared_with: Option<Vec<String>>,
        owner: Option<String>,
    ) -> Value {
        let id = random_id();
        let mut s = Spreadsheet::new(id.clone(), title.into(), sheets, shared_with);
        s.owner = owner;
        let json = s.to_json(false);
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
    crate::hangup::serve(listener, router(emulator), shutdown).await
}

/// The routes.
pub fn router(emulator: Emulator) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/v4/spreadsheets", post(api::create))
        .route(
            "/v4/spreadsheets/{*rest}",
            get(api::api).post(api::api).put(api::api),
        )
        .merge(admin::routes())
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

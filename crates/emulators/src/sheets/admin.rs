//! The admin surface of the Sheets emulator (`/emulator/...`): service accounts, OAuth
//! clients and codes, spreadsheets, access tokens, revocation, quotas, faults, statistics and
//! the request log.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use super::oauth::{self, Principal};
use super::{Emulator, Faults, Quotas};
use crate::admin::{bad, check_faults, throttle_until};

/// The `/emulator/...` routes.
pub(super) fn routes() -> Router<Emulator> {
    Router::new()
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
        &[
            f.error_rate,
            f.fail_after_write_rate,
            f.drop_after_write_rate,
        ],
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

//! The SMS emulator's admin surface (`/emulator/...`): accounts, opt-outs, faults (the
//! clock offset among them), limits, statistics and the message log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Emulator, Faults, Limits, MAX_CLOCK_OFFSET_SECS, is_valid_number};
use crate::admin::{bad, check_faults, throttle_until};

/// `POST /emulator/accounts`: a new account, `{"account_sid", "auth_token"}`.
pub(super) async fn account(State(e): State<Emulator>) -> Response {
    let (sid, token) = e.create_account();
    (
        StatusCode::CREATED,
        axum::Json(json!({"account_sid": sid, "auth_token": token})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OptOut {
    number: String,
}

/// `POST /emulator/opt-outs` `{"number"}`: the recipient has texted STOP; sends to it are
/// refused with 21610.
pub(super) async fn opt_out(
    State(e): State<Emulator>,
    axum::Json(b): axum::Json<OptOut>,
) -> Response {
    if !is_valid_number(&b.number) {
        return bad("number must be a valid phone number in E.164");
    }
    e.lock().opted_out.insert(b.number.clone());
    axum::Json(json!({"opted_out": b.number})).into_response()
}

/// `DELETE /emulator/opt-outs/{number}`: the recipient has texted START.
pub(super) async fn opt_in(State(e): State<Emulator>, Path(number): Path<String>) -> Response {
    if e.lock().opted_out.remove(&number) {
        axum::Json(json!({"opted_in": number})).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "that number has not opted out"})),
        )
            .into_response()
    }
}

/// `PUT /emulator/faults`: replaces every fault knob (those left out are off, and the
/// clock is right).
pub(super) async fn faults(
    State(e): State<Emulator>,
    axum::Json(f): axum::Json<Faults>,
) -> Response {
    if let Some(refused) = check_faults(
        &[f.error_rate, f.drop_after_accept_rate],
        f.error_rate,
        f.error_status,
    ) {
        return refused;
    }
    if f.clock_offset_secs.abs() > MAX_CLOCK_OFFSET_SECS {
        return bad(format!(
            "clock_offset_secs must be within ±{MAX_CLOCK_OFFSET_SECS}"
        ));
    }
    let mut inner = e.lock();
    inner.throttle_until = throttle_until(f.throttle_seconds);
    inner.faults = f.clone();
    axum::Json(json!(f)).into_response()
}

/// `PUT /emulator/limits`: the per-second rate limits.
pub(super) async fn limits(
    State(e): State<Emulator>,
    axum::Json(l): axum::Json<Limits>,
) -> Response {
    if l.per_sender_per_second == 0 || l.account_per_second == 0 {
        return bad("limits must be at least 1 per second");
    }
    e.lock().limits = l;
    axum::Json(json!(l)).into_response()
}

/// `GET /emulator/stats`: counters of accepted, refused, throttled and dropped sends.
pub(super) async fn stats(State(e): State<Emulator>) -> Response {
    axum::Json(json!(e.lock().stats)).into_response()
}

/// `GET /emulator/messages`: the message log, oldest first.
pub(super) async fn messages(State(e): State<Emulator>) -> Response {
    axum::Json(json!(e.messages())).into_response()
}

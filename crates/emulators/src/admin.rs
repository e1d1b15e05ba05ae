//! What the emulators' admin surfaces share: refusals of bad knobs, the validation of fault
//! knobs, and the dice of injected faults.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::json;

/// A refused admin request: 400 with `{"error": message}`.
pub(crate) fn bad(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": message.into()})),
    )
        .into_response()
}

/// Checks fault knobs: every rate between 0 and 1, and an injected error status of 500 or
/// 503 when errors are injected. `Some` is the refusal to answer.
pub(crate) fn check_faults(rates: &[f64], error_rate: f64, error_status: u16) -> Option<Response> {
    if rates.iter().any(|r| !(0.0..=1.0).contains(r)) {
        return Some(bad("rates must be between 0 and 1"));
    }
    if error_rate > 0.0 && error_status != 500 && error_status != 503 {
        return Some(bad("error_status must be 500 or 503"));
    }
    None
}

/// The end of a throttle storm of `seconds` from now (none for 0).
pub(crate) fn throttle_until(seconds: u64) -> Option<Instant> {
    (seconds > 0).then(|| Instant::now() + Duration::from_secs(seconds))
}

/// True with probability `rate` (0 to 1).
pub(crate) fn chance(rate: f64) -> bool {
    rate > 0.0 && rand::rng().random_bool(rate.clamp(0.0, 1.0))
}

//! The API's error type and its JSON body: `{"error": {"code", "message", "details"?}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use collect_store::StoreError;
use serde_json::{Value, json};

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Optional structured details (for example the list of invalid fields).
    pub details: Option<Value>,
}

impl ApiError {
    /// Builds an error without details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 404 for `what`.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 400 for a malformed request part.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(details) = self.details {
            error["details"] = details;
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::not_found(what),
            StoreError::Invalid(errors) => Self {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "validation_failed",
                message: errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
                details: serde_json::to_value(&errors).ok(),
            },
            StoreError::Conflict { code, message } => {
                let status = if code == "revision_mismatch" {
                    StatusCode::PRECONDITION_FAILED
                } else {
                    StatusCode::CONFLICT
                };
                Self::new(status, code, message)
            }
            e @ StoreError::TooLarge { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "response_too_large",
                e.to_string(),
            ),
            StoreError::Pool(e) => {
                tracing::warn!(error = %e, "no database connection available");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is busy or unreachable; retry later",
                )
            }
            e @ (StoreError::Db(_) | StoreError::Corrupt(_)) => {
                tracing::error!(error = %e, "request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; it has been logged",
                )
            }
        }
    }
}

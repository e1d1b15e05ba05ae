//! Errors with Confluent's codes: `{"error_code": 40401, "message": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error of the registry, answered with Confluent's status and error code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 40401
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402
    #[error("Version {0} not found.")]
    VersionNotFound(i32),
    /// 40403
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    /// 40405
    #[error("Subject '{0}' was not soft-deleted first; delete it without permanent=true first.")]
    NotSoftDeleted(String),
    /// 40408
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    NoSubjectConfig(String),
    /// 409
    #[error("Schema being registered is incompatible with an earlier schema for this subject: {0}")]
    Incompatible(String),
    /// 42201
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 42202
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 42203
    #[error(
        "Invalid compatibility level '{0}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
    )]
    InvalidCompatibility(String),
    /// 400: the body is not the JSON expected.
    #[error("{0}")]
    BadRequest(String),
    /// 50001
    #[error("Error in the backend data store: {0}")]
    Store(String),
}

impl RegistryError {
    fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            Self::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            Self::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            Self::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            Self::NotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            Self::NoSubjectConfig(_) => (StatusCode::NOT_FOUND, 40408),
            Self::Incompatible(_) => (StatusCode::CONFLICT, 409),
            Self::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            Self::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            Self::InvalidCompatibility(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, 400),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        }
    }
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(e: tokio_postgres::Error) -> Self {
        tracing::error!(error = %e, "registry store failed");
        RegistryError::Store(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for RegistryError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        tracing::error!(error = %e, "registry store unavailable");
        RegistryError::Store(e.to_string())
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = json!({"error_code": code, "message": self.to_string()});
        crate::reply(status, body)
    }
}

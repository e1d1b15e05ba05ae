//! Request extractors that answer malformed input with the API's JSON errors instead of
//! axum's plain-text rejections: JSON bodies (content type, size, syntax, shape), path ids,
//! query strings, the API key and the `Idempotency-Key` header.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use collect_model::FieldError;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON body decoded into `T`; also keeps the SHA-256 of its canonical form (keys sorted,
/// no insignificant whitespace) for idempotency checks.
pub struct JsonBody<T> {
    /// The decoded body.
    pub value: T,
    /// SHA-256 of the canonical JSON.
    pub digest: [u8; 32],
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than {BODY_LIMIT} bytes"),
    )
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_json(content_type) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request body must be JSON (Content-Type: application/json)",
            ));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > BODY_LIMIT) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
            .await
            .map_err(|_| too_large())?;
        // Syntax first (a RawValue scan keeps any number literal, however large).
        serde_json::from_slice::<&serde_json::value::RawValue>(&bytes).map_err(|e| {
            ApiError::bad_request(
                "malformed_json",
                format!("request body is not valid JSON: {e}"),
            )
        })?;
        // The digest of the canonical form; a body whose numbers a double cannot hold is
        // digested as sent.
        let digest = match serde_json::from_slice::<Value>(&bytes) {
            Ok(raw) => Sha256::digest(canonical(&raw).as_bytes()).into(),
            Err(_) => Sha256::digest(&bytes).into(),
        };
        // The typed value from the text itself, not from `raw`: raw answers keep a number's
        // digits only when read from the text.
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            let mut err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("request body does not have the expected shape: {e}"),
            );
            err.details =
                serde_json::to_value([FieldError::new("", "invalid_body", e.to_string())]).ok();
            err
        })?;
        Ok(Self { value, digest })
    }
}

/// Serialises JSON with object keys sorted at every level, so that two bodies that differ
/// only in key order or whitespace have the same digest.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// Parses a path segment as an id. A malformed id names nothing, so it is a 404.
pub fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}

/// A query string decoded into `T`, refused with a 400 JSON error.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// The organization whose API key authenticated the request.
#[derive(Debug, Clone, Copy)]
pub struct Org(pub Uuid);

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// State that can resolve API keys to organizations (the forms API's, the connect API's).
pub trait OrgKeys {
    /// The store holding API keys.
    fn key_store(&self) -> &collect_store::Store;
}

impl OrgKeys for AppState {
    fn key_store(&self) -> &collect_store::Store {
        &self.store
    }
}

impl<S: OrgKeys + Send + Sync> FromRequestParts<S> for Org {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization header (Bearer <api key>)"))?;
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 200)
            .ok_or_else(|| unauthorized("Authorization header must be 'Bearer <api key>'"))?;
        match state.key_store().org_for_key(key).await? {
            Some(org) => Ok(Org(org)),
            None => Err(unauthorized("invalid or revoked API key")),
        }
    }
}

/// The optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Self(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        Ok(Self(Some(key.to_string())))
    }
}

/// The optional `If-Match` header carrying a response revision (`"3"` or `3`).
pub struct IfMatchRevision(pub Option<i32>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatchRevision {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(Self(None));
        };
        value
            .to_str()
            .ok()
            .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
            .and_then(|v| v.parse::<i32>().ok())
            .map(|r| Self(Some(r)))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_if_match",
                    "If-Match must hold a response revision number",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "é"}], "a": null}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":null,"b":[1,{"x":"é","y":2}]}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(canonical(&a), r#"{"a":null,"b":[1,{"x":"é","y":2}]}"#);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }
}

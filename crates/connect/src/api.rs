//! The connect API: attach integrations to forms, list them, see their status, pause,
//! resume and delete them. Same API keys and error format as the forms API. Credentials go
//! in, encrypted, and never come out.

use std::sync::{Arc, PoisonError};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use collect_api::ApiError;
use collect_api::extract::{JsonBody, Org, OrgKeys, parse_id};
use collect_model::FieldError;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::crypto::Sealer;
use crate::kind::{KindError, Kinds};
use crate::metrics::Metrics;
use crate::store::{Integration, IntegrationStore, NewIntegration, Start, StoreError};
use crate::supervisor::Running;

/// State of the connect API.
#[derive(Clone)]
pub struct ApiState {
    /// API keys.
    pub keys: collect_store::Store,
    /// Integrations.
    pub integrations: IntegrationStore,
    /// Installed kinds.
    pub kinds: Arc<dyn Kinds>,
    /// Seals credentials.
    pub sealer: Arc<Sealer>,
    /// Integrations running in this process.
    pub running: Running,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl OrgKeys for ApiState {
    fn key_store(&self) -> &collect_store::Store {
        &self.keys
    }
}

impl From<StoreError> for ApiErr {
    fn from(e: StoreError) -> Self {
        ApiErr(match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Invalid(errors) => invalid(errors),
            StoreError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            other => {
                tracing::error!(error = %other, "connect API store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; it has been logged",
                )
            }
        })
    }
}

/// The API's error (a newtype so the store's errors convert into it here).
pub struct ApiErr(ApiError);

impl IntoResponse for ApiErr {
    fn into_response(self) -> axum::response::Response {
        self.0.into_response()
    }
}

impl From<ApiError> for ApiErr {
    fn from(e: ApiError) -> Self {
        ApiErr(e)
    }
}

fn invalid(errors: Vec<FieldError>) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    );
    e.details = serde_json::to_value(&errors).ok();
    e
}

/// The body of `POST /v1/integrations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIntegrationBody {
    /// Kind of integration.
    pub kind: String,
    /// Form to follow.
    pub form_id: String,
    /// Optional name, unique in the organization.
    #[serde(default)]
    pub name: Option<String>,
    /// The kind's configuration.
    #[serde(default)]
    pub config: Option<Value>,
    /// The kind's credentials (stored encrypted, never returned).
    #[serde(default)]
    pub credentials: Option<Value>,
    /// Where it starts: `history` (every response of the form), `creation` (responses
    /// submitted from its creation on) or an RFC 3339 time. Absent: the kind's default for a
    /// new integration, the current start for a replaced one.
    #[serde(default)]
    pub start: Option<String>,
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/integrations", get(list).post(create))
        .route("/v1/integrations/{id}", get(show).delete(remove))
        .route("/v1/integrations/{id}/pause", post(pause))
        .route("/v1/integrations/{id}/resume", post(resume))
        .route("/v1/callbacks/{id}", post(callback))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<ApiState>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

fn view(s: &ApiState, i: &Integration) -> Value {
    let mut v = serde_json::to_value(i).unwrap_or(Value::Null);
    let here = s
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&i.id)
        .cloned();
    v["runtime"] = match here {
        Some(info) => json!({
            "here": true,
            "state": info.state,
            "last_error": info.last_error,
            "lag": s.metrics.lag.with_label_values(&[i.id.to_string().as_str(), i.kind.as_str()]).get(),
        }),
        None => json!({"here": false}),
    };
    v
}

/// Validates a body, prepares it with its kind and stores it (created or replaced by name).
pub async fn apply(
    s: &ApiState,
    org: Uuid,
    body: NewIntegrationBody,
) -> Result<(Integration, bool), ApiError> {
    let mut errors = Vec::new();
    let form_id = Uuid::parse_str(&body.form_id).ok();
    if form_id.is_none() {
        errors.push(FieldError::new(
            "form_id",
            "invalid",
            "form_id must be a form's id",
        ));
    }
    if !s.kinds.names().contains(&body.kind.as_str()) {
        errors.push(FieldError::new(
            "kind",
            "unknown_kind",
            format!(
                "unknown kind '{}'; installed: {}",
                body.kind,
                s.kinds.names().join(", ")
            ),
        ));
    }
    if let Some(name) = &body.name
        && (name.trim().is_empty() || name.chars().count() > 200)
    {
        errors.push(FieldError::new(
            "name",
            "invalid",
            "name must be 1 to 200 characters",
        ));
    }
    let start = match body.start.as_deref().map(Start::parse) {
        None => None,
        Some(Ok(start)) => Some(start),
        Some(Err(e)) => {
            errors.push(FieldError::new("start", "invalid", e));
            None
        }
    };
    let config = body.config.unwrap_or_else(|| json!({}));
    if !config.is_object() {
        errors.push(FieldError::new(
            "config",
            "wrong_type",
            "config must be a JSON object",
        ));
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let prepared = s
        .kinds
        .prepare(&body.kind, config, body.credentials)
        .await
        .map_err(|e| match e {
            KindError::Invalid(errors) => invalid(errors),
            KindError::Refused(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "credentials_refused", m)
            }
            KindError::Unknown(k) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_kind",
                format!("unknown kind '{k}'"),
            ),
        })?;
    let sealed = prepared
        .credentials
        .as_ref()
        .map(|c| s.sealer.seal(&serde_json::to_vec(c).unwrap_or_default()));
    let stored = s
        .integrations
        .upsert(NewIntegration {
            org_id: org,
            form_id: form_id.unwrap_or_default(),
            kind: &body.kind,
            name: body.name.as_deref(),
            config: &prepared.config,
            sealed,
            start,
            default_start: s.kinds.default_start(&body.kind),
        })
        .await
        .map_err(|e| ApiErr::from(e).0)?;
    tracing::info!(integration = %stored.0.id, kind = body.kind, created = stored.1, "integration stored");
    crate::supervisor::integrations_changed();
    Ok(stored)
}

async fn create(
    State(s): State<ApiState>,
    Org(org): Org,
    body: JsonBody<NewIntegrationBody>,
) -> Result<impl IntoResponse, ApiErr> {
    let (i, created) = apply(&s, org, body.value).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view(&s, &i))))
}

async fn list(State(s): State<ApiState>, Org(org): Org) -> Result<impl IntoResponse, ApiErr> {
    let items: Vec<Value> = s
        .integrations
        .list(org)
        .await?
        .iter()
        .map(|i| view(&s, i))
        .collect();
    Ok(axum::Json(json!({ "items": items })))
}

async fn show(
    State(s): State<ApiState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiErr> {
    let id = parse_id(&id, "integration")?;
    Ok(axum::Json(view(&s, &s.integrations.get(org, id).await?)))
}

/// A third party's callback about an integration (a delivery report): the integration's
/// kind authenticates and records it. No API key: the kind checks the third party's
/// signature.
async fn callback(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> Result<StatusCode, ApiErr> {
    let id = parse_id(&id, "integration")?;
    let i = s.integrations.get_any(id).await?;
    let credentials = match i.sealed_credentials() {
        Some(sealed) => {
            let plain = s.sealer.open(sealed).map_err(|e| {
                tracing::error!(integration = %id, error = %e, "cannot open stored credentials");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "credentials unreadable",
                )
            })?;
            serde_json::from_slice(&plain).ok()
        }
        None => None,
    };
    let call = crate::kind::Callback {
        integration_id: id,
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body,
        db: s.integrations.pool().clone(),
    };
    use crate::kind::CallbackError as E;
    match s
        .kinds
        .callback(&i.kind, i.config.clone(), credentials, call)
        .await
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(E::NotSupported) => Err(ApiError::not_found("callback").into()),
        Err(e @ E::Unauthenticated(_)) => {
            tracing::warn!(integration = %id, error = %e, "callback refused");
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()).into())
        }
        Err(e @ E::Malformed(_)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "malformed_callback", e.to_string()).into())
        }
        Err(e @ E::Unavailable(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
        .into()),
    }
}

/// Moves an integration of the organization to `status`.
async fn set_status(
    s: &ApiState,
    org: Uuid,
    id: &str,
    status: &str,
    reason: Option<&str>,
) -> Result<Integration, ApiErr> {
    let id = parse_id(id, "integration")?;
    let i = s
        .integrations
        .set_status_of(org, id, status, reason)
        .await?;
    crate::supervisor::integrations_changed();
    Ok(i)
}

async fn pause(
    State(s): State<ApiState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiErr> {
    let i = set_status(&s, org, &id, "paused", Some(crate::store::OPERATOR_PAUSE)).await?;
    Ok(axum::Json(view(&s, &i)))
}

async fn resume(
    State(s): State<ApiState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiErr> {
    let i = set_status(&s, org, &id, "active", None).await?;
    Ok(axum::Json(view(&s, &i)))
}

async fn remove(
    State(s): State<ApiState>,
    Org(org): Org,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiErr> {
    set_status(&s, org, &id, "deleted", None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn readyz(State(s): State<ApiState>) -> Result<impl IntoResponse, ApiErr> {
    s.keys
        .ready()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()))?;
    Ok(axum::Json(json!({"status": "ready"})))
}

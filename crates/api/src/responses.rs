//! Handlers for responses.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use collect_store::{NewResponse, ResponsePatch};

use crate::extract::{IdempotencyKey, IfMatchRevision, JsonBody, Org, QueryParams, parse_id};
use crate::forms::{Page, PageParams};
use crate::{ApiError, AppState};

/// Header set on a submission answered from an earlier one with the same idempotency key.
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// `POST /v1/forms/{form_id}/responses`
pub async fn submit(
    State(state): State<AppState>,
    Org(org): Org,
    Path(form_id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    body: JsonBody<NewResponse>,
) -> Result<impl IntoResponse, ApiError> {
    let form_id = parse_id(&form_id, "form")?;
    let idempotency = key.as_deref().map(|k| (k, body.digest));
    let done = state
        .store
        .submit_response(org, form_id, &body.value, idempotency)
        .await?;
    let counter = if done.replayed {
        &state.metrics.replays
    } else {
        &state.metrics.submissions
    };
    counter.inc();
    let replayed = HeaderValue::from_static(if done.replayed { "true" } else { "false" });
    Ok((
        StatusCode::CREATED,
        [(REPLAYED, replayed)],
        Json(done.response),
    ))
}

/// `GET /v1/forms/{form_id}/responses`
pub async fn list(
    State(state): State<AppState>,
    Org(org): Org,
    Path(form_id): Path<String>,
    QueryParams(params): QueryParams<PageParams>,
) -> Result<impl IntoResponse, ApiError> {
    let form_id = parse_id(&form_id, "form")?;
    let (limit, after) = params.parse()?;
    let (items, more) = state
        .store
        .list_responses(org, form_id, limit, after)
        .await?;
    Ok(Json(Page::new(items, more, |r| r.id)))
}

/// `GET /v1/forms/{form_id}/responses/{response_id}`
pub async fn get(
    State(state): State<AppState>,
    Org(org): Org,
    Path((form_id, response_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let form_id = parse_id(&form_id, "form")?;
    let id = parse_id(&response_id, "response")?;
    Ok(Json(state.store.get_response(org, form_id, id).await?))
}

/// `PATCH /v1/forms/{form_id}/responses/{response_id}` (optional `If-Match: <revision>`)
pub async fn update(
    State(state): State<AppState>,
    Org(org): Org,
    Path((form_id, response_id)): Path<(String, String)>,
    IfMatchRevision(expected): IfMatchRevision,
    body: JsonBody<ResponsePatch>,
) -> Result<impl IntoResponse, ApiError> {
    let form_id = parse_id(&form_id, "form")?;
    let id = parse_id(&response_id, "response")?;
    let r = state
        .store
        .patch_response(org, form_id, id, &body.value, expected)
        .await?;
    Ok(Json(r))
}

/// `DELETE /v1/forms/{form_id}/responses/{response_id}`
pub async fn delete(
    State(state): State<AppState>,
    Org(org): Org,
    Path((form_id, response_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let form_id = parse_id(&form_id, "form")?;
    let id = parse_id(&response_id, "response")?;
    state.store.delete_response(org, form_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

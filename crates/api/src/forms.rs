//! Handlers for forms and questions, plus the keyset pagination shared with responses.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use collect_model::{FormSpec, QuestionPatch, QuestionSpec};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::extract::{JsonBody, Org, QueryParams, parse_id};
use crate::{ApiError, AppState};

/// `?limit=&after=` of list endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    limit: Option<i64>,
    after: Option<String>,
}

/// Default and largest page sizes.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;

impl PageParams {
    /// The validated page size and the decoded cursor.
    pub fn parse(&self) -> Result<(i64, Option<Uuid>), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let after = match &self.after {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor was not produced by this API")
            })?),
        };
        Ok((limit, after))
    }
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(c: &str) -> Option<Uuid> {
    let bytes = URL_SAFE_NO_PAD.decode(c).ok()?;
    Uuid::from_slice(&bytes).ok()
}

/// A page of a list: `{"items": [...], "next": cursor | null}`.
#[derive(Serialize)]
pub struct Page<T> {
    items: Vec<T>,
    next: Option<String>,
}

impl<T> Page<T> {
    /// A page whose cursor points after the last item when more follow.
    pub fn new(items: Vec<T>, more: bool, id: impl Fn(&T) -> Uuid) -> Self {
        let next = if more {
            items.last().map(|i| encode_cursor(id(i)))
        } else {
            None
        };
        Self { items, next }
    }
}

/// `POST /v1/forms`
pub async fn create(
    State(state): State<AppState>,
    Org(org): Org,
    body: JsonBody<FormSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let form = state.store.create_form(org, &body.value).await?;
    Ok((StatusCode::CREATED, Json(form)))
}

/// `GET /v1/forms`
pub async fn list(
    State(state): State<AppState>,
    Org(org): Org,
    QueryParams(params): QueryParams<PageParams>,
) -> Result<impl IntoResponse, ApiError> {
    let (limit, after) = params.parse()?;
    let (items, more) = state.store.list_forms(org, limit, after).await?;
    Ok(Json(Page::new(items, more, |f| f.id)))
}

/// `GET /v1/forms/{form_id}`
pub async fn get(
    State(state): State<AppState>,
    Org(org): Org,
    Path(form_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let form_id = parse_id(&form_id, "form")?;
    Ok(Json(state.store.get_form(org, form_id).await?))
}

/// `POST /v1/forms/{form_id}/questions`
pub async fn add_question(
    State(state): State<AppState>,
    Org(org): Org,
    Path(form_id): Path<String>,
    body: JsonBody<QuestionSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let form_id = parse_id(&form_id, "form")?;
    let q = state.store.add_question(org, form_id, &body.value).await?;
    Ok((StatusCode::CREATED, Json(q)))
}

/// `PATCH /v1/forms/{form_id}/questions/{question_id}`
pub async fn update_question(
    State(state): State<AppState>,
    Org(org): Org,
    Path((form_id, question_id)): Path<(String, String)>,
    body: JsonBody<QuestionPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let form_id = parse_id(&form_id, "form")?;
    let question_id = parse_id(&question_id, "question")?;
    let q = state
        .store
        .update_question(org, form_id, question_id, &body.value)
        .await?;
    Ok(Json(q))
}

/// `DELETE /v1/forms/{form_id}/questions/{question_id}`
pub async fn delete_question(
    State(state): State<AppState>,
    Org(org): Org,
    Path((form_id, question_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let form_id = parse_id(&form_id, "form")?;
    let question_id = parse_id(&question_id, "question")?;
    state
        .store
        .delete_question(org, form_id, question_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        assert_eq!(decode_cursor("not a cursor"), None);
        assert_eq!(decode_cursor("AAAA"), None);
    }
}

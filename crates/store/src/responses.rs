//! Responses: submission (one statement, idempotent), listing, edits and soft deletion.

use chrono::{DateTime, Utc};
use collect_model::{
    AnswerInputs, AnswerValue, FieldError, ResponseDocument, apply_answer_patch, resolve_answers,
    validate_metadata,
};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::forms::live_questions;
use crate::{Result, Store, StoreError};

/// A response as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Response {
    /// Response id.
    pub id: Uuid,
    /// Form it answers.
    pub form_id: Uuid,
    /// 1 on submission, +1 per edit and on deletion.
    pub revision: i32,
    /// Where it came from (`api` unless the client said otherwise).
    pub source: String,
    /// Free client metadata.
    pub metadata: Value,
    /// The answers, keyed by question id.
    pub answers: ResponseDocument,
    /// Submission time.
    pub submitted_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Deletion time, for deleted responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The body of `POST /v1/forms/{id}/responses`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewResponse {
    /// Answers keyed by question id or alias, as raw JSON (numbers keep their digits).
    pub answers: AnswerInputs,
    /// Free metadata (a JSON object).
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Short label of the channel (`web`, `import`, ...); `api` if absent.
    #[serde(default)]
    pub source: Option<String>,
}

/// The body of `PATCH /v1/forms/{id}/responses/{rid}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsePatch {
    /// Answers to replace (`null` removes one), keyed by question id or alias.
    #[serde(default)]
    pub answers: Option<AnswerInputs>,
    /// Replaces the metadata when present.
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// The outcome of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The stored response.
    pub response: Response,
    /// True when an earlier submission with the same idempotency key and body was found.
    pub replayed: bool,
}

// The document is read as text: a number's digits come from the text (jsonb keeps numbers as
// numeric; a serde_json::Value would round them to a double).
const RESPONSE_COLUMNS: &str =
    "id, form_id, revision, source, metadata, answers::text, submitted_at, updated_at, deleted_at";

fn response(row: &Row) -> Result<Response> {
    Ok(Response {
        id: row.get(0),
        form_id: row.get(1),
        revision: row.get(2),
        source: row.get(3),
        metadata: row.get(4),
        answers: serde_json::from_str(row.get::<_, &str>(5))
            .map_err(|e| StoreError::Corrupt(format!("response document: {e}")))?,
        submitted_at: row.get(6),
        updated_at: row.get(7),
        deleted_at: row.get(8),
    })
}

/// The answers rows of a document, as the JSON array the SQL below unpacks.
fn answer_rows<'a>(doc: impl IntoIterator<Item = (&'a Uuid, &'a AnswerValue)>) -> Value {
    Value::Array(
        doc.into_iter()
            .map(|(q, v)| match v {
                AnswerValue::Text(s) => json!({"q": q, "t": s}),
                AnswerValue::Number(n) => json!({"q": q, "n": n.as_str()}),
                AnswerValue::Boolean(b) => json!({"q": q, "b": b}),
                AnswerValue::Date(d) => json!({"q": q, "d": d.format("%Y-%m-%d").to_string()}),
                AnswerValue::Choices(c) => json!({"q": q, "c": c}),
            })
            .collect(),
    )
}

/// Unpacks [`answer_rows`] (parameter `$ROWS`) into the typed columns of `answers`.
const ANSWER_SELECT: &str = "(e->>'q')::uuid, e->>'t', (e->>'n')::numeric, (e->>'b')::boolean, \
     (e->>'d')::date, CASE WHEN e ? 'c' THEN ARRAY(SELECT jsonb_array_elements_text(e->'c')) END";

fn check_source(source: Option<&str>) -> Result<&str, FieldError> {
    let s = source.unwrap_or("api");
    let ok = (1..=50).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(s)
    } else {
        Err(FieldError::new(
            "source",
            "invalid",
            "source must be 1 to 50 characters of a-z, 0-9, '_' and '-'",
        ))
    }
}

impl Store {
    /// The document as JSON text (numbers with their exact digits), refused when larger than
    /// the configured maximum ([`Store::max_document_bytes`]): every event carries the whole
    /// document, and the broker refuses records over its message size.
    fn document_text(&self, doc: &ResponseDocument) -> Result<String> {
        let text = serde_json::to_string(doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if text.len() > self.max_document_bytes {
            return Err(StoreError::TooLarge {
                bytes: text.len(),
                limit: self.max_document_bytes,
            });
        }
        Ok(text)
    }

    /// Stores a new response with its answers in one statement (one transaction).
    ///
    /// With an idempotency key, a second submission with the same key and the same request
    /// digest returns the first response and writes nothing; a different digest is a
    /// `Conflict`. Answers are validated against the form's definition, and the statement
    /// only writes if the form still has the version that definition came from.
    pub async fn submit_response(
        &self,
        org: Uuid,
        form_id: Uuid,
        input: &NewResponse,
        idempotency: Option<(&str, [u8; 32])>,
    ) -> Result<Submitted> {
        if let Some((key, digest)) = idempotency
            && let Some(found) = self.replay(org, form_id, key, digest).await?
        {
            return Ok(found);
        }
        let mut errors = Vec::new();
        let source = check_source(input.source.as_deref())
            .map_err(|e| errors.push(e))
            .ok();
        let metadata = input.metadata.clone().unwrap_or_else(|| json!({}));
        if let Err(e) = validate_metadata(&metadata) {
            errors.push(e);
        }
        let (key, digest) = match idempotency {
            Some((k, d)) => (Some(k), Some(d.to_vec())),
            None => (None, None),
        };
        for attempt in 0..3 {
            let def = self.form_def(org, form_id, attempt > 0).await?;
            let doc = match resolve_answers(&def.questions, &input.answers) {
                Ok(doc) if errors.is_empty() => doc,
                Ok(_) => return Err(StoreError::Invalid(errors)),
                Err(mut e) => {
                    errors.append(&mut e);
                    return Err(StoreError::Invalid(errors));
                }
            };
            let id = Uuid::now_v7();
            let document = self.document_text(&doc)?;
            let rows = answer_rows(doc.iter().map(|(q, e)| (q, &e.value)));
            let client = self.pool.get().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "WITH f AS (
                        SELECT 1 FROM forms
                        WHERE id = $1 AND org_id = $3 AND version = $4 AND deleted_at IS NULL
                    ), r AS (
                        INSERT INTO responses (form_id, id, org_id, source, idempotency_key,
                                               request_sha256, metadata, answers, trace_context)
                        SELECT $1, $2, $3, $5, $6, $7, $8, $9::text::jsonb, $11 FROM f
                        ON CONFLICT (form_id, idempotency_key) DO NOTHING
                        RETURNING submitted_at, updated_at
                    ), a AS (
                        INSERT INTO answers (form_id, response_id, question_id, value_text,
                                             value_number, value_boolean, value_date, value_choices)
                        SELECT $1, $2, {ANSWER_SELECT}
                        FROM r, jsonb_array_elements($10::jsonb) e
                    )
                    SELECT EXISTS (SELECT 1 FROM f), (SELECT submitted_at FROM r),
                           (SELECT updated_at FROM r)"
                ))
                .await?;
            let row = client
                .query_one(
                    &stmt,
                    &[
                        &form_id,
                        &id,
                        &org,
                        &def.version,
                        &source,
                        &key,
                        &digest,
                        &metadata,
                        &document,
                        &rows,
                        &collect_telemetry::current_traceparent(),
                    ],
                )
                .await?;
            let form_ok: bool = row.get(0);
            let submitted_at: Option<DateTime<Utc>> = row.get(1);
            match (form_ok, submitted_at, idempotency) {
                (false, _, _) => continue, // the form changed (or went): reload and retry
                (true, Some(at), _) => {
                    return Ok(Submitted {
                        response: Response {
                            id,
                            form_id,
                            revision: 1,
                            source: source.unwrap_or("api").to_string(),
                            metadata,
                            answers: doc,
                            submitted_at: at,
                            updated_at: row.get(2),
                            deleted_at: None,
                        },
                        replayed: false,
                    });
                }
                (true, None, Some((key, digest))) => {
                    // A concurrent submission with the same key won the race.
                    return self
                        .replay(org, form_id, key, digest)
                        .await?
                        .ok_or_else(|| {
                            StoreError::Corrupt("idempotency conflict without a row".into())
                        });
                }
                (true, None, None) => {
                    return Err(StoreError::Corrupt("insert returned no row".into()));
                }
            }
        }
        Err(StoreError::Conflict {
            code: "form_changing",
            message: "the form kept changing during the submission; retry".into(),
        })
    }

    /// The earlier response submitted with `key`, if any; a `Conflict` if its request differed.
    async fn replay(
        &self,
        org: Uuid,
        form_id: Uuid,
        key: &str,
        digest: [u8; 32],
    ) -> Result<Option<Submitted>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {RESPONSE_COLUMNS}, request_sha256 FROM responses \
                 WHERE form_id = $1 AND idempotency_key = $2 AND org_id = $3"
            ))
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&form_id, &key, &org]).await? else {
            return Ok(None);
        };
        let stored: Option<Vec<u8>> = row.get(9);
        if stored.as_deref() != Some(digest.as_slice()) {
            return Err(StoreError::Conflict {
                code: "idempotency_key_reused",
                message: "this Idempotency-Key was already used with a different request body"
                    .into(),
            });
        }
        Ok(Some(Submitted {
            response: response(&row)?,
            replayed: true,
        }))
    }

    /// One page of a form's live responses, oldest first, after the response `after`.
    pub async fn list_responses(
        &self,
        org: Uuid,
        form_id: Uuid,
        limit: i64,
        after: Option<Uuid>,
    ) -> Result<(Vec<Response>, bool)> {
        self.form_def(org, form_id, false).await?;
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {RESPONSE_COLUMNS} FROM responses \
                 WHERE form_id = $1 AND org_id = $2 AND deleted_at IS NULL \
                 AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4"
            ))
            .await?;
        let rows = client
            .query(&stmt, &[&form_id, &org, &after, &(limit + 1)])
            .await?;
        let more = rows.len() as i64 > limit;
        let page = rows
            .iter()
            .take(limit as usize)
            .map(response)
            .collect::<Result<_>>()?;
        Ok((page, more))
    }

    /// A live response of a form of the organization.
    pub async fn get_response(&self, org: Uuid, form_id: Uuid, id: Uuid) -> Result<Response> {
        let client = self.pool.get().await?;
        fetch(&client, org, form_id, id, false).await
    }

    /// Edits a response: replaces or removes the named answers and/or replaces the metadata,
    /// then bumps the revision. With `expected_revision`, refuses (`Conflict`
    /// `revision_mismatch`) if the response has moved on. An edit that changes nothing writes
    /// nothing and returns the response as it is.
    pub async fn patch_response(
        &self,
        org: Uuid,
        form_id: Uuid,
        id: Uuid,
        patch: &ResponsePatch,
        expected_revision: Option<i32>,
    ) -> Result<Response> {
        if let Some(m) = &patch.metadata {
            validate_metadata(m).map_err(|e| StoreError::Invalid(vec![e]))?;
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = fetch(&tx, org, form_id, id, true).await?;
        if let Some(expected) = expected_revision
            && expected != current.revision
        {
            return Err(StoreError::Conflict {
                code: "revision_mismatch",
                message: format!(
                    "the response is at revision {}, not {expected}",
                    current.revision
                ),
            });
        }
        let questions = live_questions(&tx, form_id).await?;
        let doc = match &patch.answers {
            Some(a) => {
                apply_answer_patch(&questions, &current.answers, a).map_err(StoreError::Invalid)?
            }
            None => current.answers.clone(),
        };
        let metadata = patch
            .metadata
            .clone()
            .unwrap_or_else(|| current.metadata.clone());
        if doc == current.answers && metadata == current.metadata {
            return Ok(current);
        }
        let document = self.document_text(&doc)?;
        let row = tx
            .query_one(
                &format!(
                    "UPDATE responses SET answers = $3::text::jsonb, metadata = $4, revision = revision + 1, \
                     updated_at = now(), trace_context = $5 WHERE form_id = $1 AND id = $2 \
                     RETURNING {RESPONSE_COLUMNS}"
                ),
                &[
                    &form_id,
                    &id,
                    &document,
                    &metadata,
                    &collect_telemetry::current_traceparent(),
                ],
            )
            .await?;
        let removed: Vec<Uuid> = current
            .answers
            .keys()
            .filter(|q| !doc.contains_key(q))
            .copied()
            .collect();
        let changed = answer_rows(
            doc.iter()
                .filter(|(q, e)| current.answers.get(q) != Some(e))
                .map(|(q, e)| (q, &e.value)),
        );
        tx.execute(
            "DELETE FROM answers WHERE form_id = $1 AND response_id = $2 AND question_id = ANY($3)",
            &[&form_id, &id, &removed],
        )
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO answers (form_id, response_id, question_id, value_text, value_number, \
                 value_boolean, value_date, value_choices) \
                 SELECT $1, $2, {ANSWER_SELECT} FROM jsonb_array_elements($3::jsonb) e \
                 ON CONFLICT (form_id, response_id, question_id) DO UPDATE SET \
                 value_text = EXCLUDED.value_text, value_number = EXCLUDED.value_number, \
                 value_boolean = EXCLUDED.value_boolean, value_date = EXCLUDED.value_date, \
                 value_choices = EXCLUDED.value_choices, updated_at = now()"
            ),
            &[&form_id, &id, &changed],
        )
        .await?;
        tx.commit().await?;
        response(&row)
    }

    /// Soft-deletes a response (its revision moves on, so sinks see the deletion as the
    /// newest state).
    pub async fn delete_response(&self, org: Uuid, form_id: Uuid, id: Uuid) -> Result<()> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE responses SET deleted_at = now(), updated_at = now(), revision = revision + 1, \
                 trace_context = $4 WHERE form_id = $1 AND id = $2 AND org_id = $3 AND deleted_at IS NULL",
                &[
                    &form_id,
                    &id,
                    &org,
                    &collect_telemetry::current_traceparent(),
                ],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound("response"));
        }
        Ok(())
    }
}

async fn fetch(
    c: &impl GenericClient,
    org: Uuid,
    form_id: Uuid,
    id: Uuid,
    for_update: bool,
) -> Result<Response> {
    let sql = format!(
        "SELECT {RESPONSE_COLUMNS} FROM responses \
         WHERE form_id = $1 AND id = $2 AND org_id = $3 AND deleted_at IS NULL{}",
        if for_update { " FOR UPDATE" } else { "" }
    );
    let row = c
        .query_opt(&sql, &[&form_id, &id, &org])
        .await?
        .ok_or(StoreError::NotFound("response"))?;
    response(&row)
}

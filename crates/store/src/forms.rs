//! Forms and questions. Every change to a form's questions locks the form row, bumps its
//! `version` in the same transaction and drops the cached definition.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use collect_model::{
    ChoiceOption, FieldError, FormSpec, QUESTIONS_MAX, Question, QuestionPatch, QuestionSpec,
    QuestionType, validate_form_spec, validate_question_patch, validate_question_spec,
};
use deadpool_postgres::{GenericClient, Transaction};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::cache::FormDef;
use crate::{Result, Store, StoreError};

/// A form with its live questions, as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Form {
    /// Form id.
    pub id: Uuid,
    /// Title.
    pub title: String,
    /// Description, if any.
    pub description: Option<String>,
    /// `active`, `closed` or `archived`.
    pub status: String,
    /// Bumped by every change to the form or its questions.
    pub version: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Live questions in display order.
    pub questions: Vec<Question>,
}

/// A form without its questions, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct FormSummary {
    /// Form id.
    pub id: Uuid,
    /// Title.
    pub title: String,
    /// Description, if any.
    pub description: Option<String>,
    /// `active`, `closed` or `archived`.
    pub status: String,
    /// Bumped by every change to the form or its questions.
    pub version: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

const FORM_COLUMNS: &str = "id, title, description, status, version, created_at, updated_at";
const QUESTION_COLUMNS: &str =
    "id, label, type, alias, position, required, options, default_region";

fn summary(row: &Row) -> FormSummary {
    FormSummary {
        id: row.get(0),
        title: row.get(1),
        description: row.get(2),
        status: row.get(3),
        version: row.get(4),
        created_at: row.get(5),
        updated_at: row.get(6),
    }
}

fn question(row: &Row) -> Result<Question> {
    question_at(row, 0)
}

/// Reads the question columns ([`QUESTION_COLUMNS`]) starting at column `at`.
fn question_at(row: &Row, at: usize) -> Result<Question> {
    let type_name: String = row.get(at + 2);
    let qtype = QuestionType::parse(&type_name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown question type {type_name}")))?;
    let options: Vec<ChoiceOption> = serde_json::from_value(row.get(at + 6))
        .map_err(|e| StoreError::Corrupt(format!("question options: {e}")))?;
    Ok(Question {
        id: row.get(at),
        label: row.get(at + 1),
        qtype,
        alias: row.get(at + 3),
        position: row.get(at + 4),
        required: row.get(at + 5),
        options,
        default_region: row.get(at + 7),
    })
}

pub(crate) async fn live_questions(c: &impl GenericClient, form_id: Uuid) -> Result<Vec<Question>> {
    let sql = format!(
        "SELECT {QUESTION_COLUMNS} FROM questions WHERE form_id = $1 AND deleted_at IS NULL \
         ORDER BY position, id"
    );
    c.query(&sql, &[&form_id])
        .await?
        .iter()
        .map(question)
        .collect()
}

async fn insert_question(
    tx: &Transaction<'_>,
    form_id: Uuid,
    spec: &QuestionSpec,
    position: i32,
) -> Result<Question> {
    let q = Question {
        id: Uuid::now_v7(),
        label: spec.label.clone(),
        qtype: spec.qtype,
        alias: spec.alias.clone(),
        position,
        required: spec.required,
        options: spec.options.clone().unwrap_or_default(),
        default_region: spec.default_region.clone(),
    };
    let options =
        serde_json::to_value(&q.options).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "INSERT INTO questions (id, form_id, label, type, alias, position, required, options, \
         default_region) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &q.id,
            &form_id,
            &q.label,
            &q.qtype.as_str(),
            &q.alias,
            &q.position,
            &q.required,
            &options,
            &q.default_region,
        ],
    )
    .await?;
    Ok(q)
}

/// Locks the form row of `org` for a change to its questions; returns nothing but proves it
/// exists.
async fn lock_form(tx: &Transaction<'_>, org: Uuid, form_id: Uuid) -> Result<()> {
    tx.query_opt(
        "SELECT 1 FROM forms WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL FOR UPDATE",
        &[&form_id, &org],
    )
    .await?
    .map(|_| ())
    .ok_or(StoreError::NotFound("form"))
}

async fn bump_version(tx: &Transaction<'_>, form_id: Uuid) -> Result<()> {
    tx.execute(
        "UPDATE forms SET version = version + 1, updated_at = now() WHERE id = $1",
        &[&form_id],
    )
    .await?;
    Ok(())
}

fn alias_taken(questions: &[Question], alias: &str, except: Option<Uuid>) -> Option<FieldError> {
    questions
        .iter()
        .any(|q| q.alias.as_deref() == Some(alias) && Some(q.id) != except)
        .then(|| {
            FieldError::new(
                "alias",
                "duplicate",
                format!("alias '{alias}' is used by another question of this form"),
            )
        })
}

impl Store {
    /// Creates a form with its questions.
    pub async fn create_form(&self, org: Uuid, spec: &FormSpec) -> Result<Form> {
        let errors = validate_form_spec(spec);
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let id = Uuid::now_v7();
        let sql = format!(
            "INSERT INTO forms (id, org_id, title, description) VALUES ($1, $2, $3, $4) \
             RETURNING {FORM_COLUMNS}"
        );
        let row = tx
            .query_one(&sql, &[&id, &org, &spec.title, &spec.description])
            .await?;
        let mut questions = Vec::with_capacity(spec.questions.len());
        for (i, q) in spec.questions.iter().enumerate() {
            questions.push(insert_question(&tx, id, q, i as i32).await?);
        }
        tx.commit().await?;
        let s = summary(&row);
        Ok(Form {
            id: s.id,
            title: s.title,
            description: s.description,
            status: s.status,
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
            questions,
        })
    }

    /// One page of the organization's forms, oldest first, after the form `after`. Returns the
    /// page and whether more follow.
    pub async fn list_forms(
        &self,
        org: Uuid,
        limit: i64,
        after: Option<Uuid>,
    ) -> Result<(Vec<FormSummary>, bool)> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {FORM_COLUMNS} FROM forms WHERE org_id = $1 AND deleted_at IS NULL \
             AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        let rows = client.query(&sql, &[&org, &after, &(limit + 1)]).await?;
        let more = rows.len() as i64 > limit;
        Ok((
            rows.iter().take(limit as usize).map(summary).collect(),
            more,
        ))
    }

    /// A form of the organization with its live questions.
    pub async fn get_form(&self, org: Uuid, form_id: Uuid) -> Result<Form> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {FORM_COLUMNS} FROM forms WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL"
        );
        let row = client
            .query_opt(&sql, &[&form_id, &org])
            .await?
            .ok_or(StoreError::NotFound("form"))?;
        let s = summary(&row);
        let questions = live_questions(&client, form_id).await?;
        Ok(Form {
            id: s.id,
            title: s.title,
            description: s.description,
            status: s.status,
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
            questions,
        })
    }

    /// Adds a question at the end of the form.
    pub async fn add_question(
        &self,
        org: Uuid,
        form_id: Uuid,
        spec: &QuestionSpec,
    ) -> Result<Question> {
        let mut errors = validate_question_spec(spec, "");
        for e in &mut errors {
            e.field = e.field.trim_start_matches('.').to_string();
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_form(&tx, org, form_id).await?;
        let existing = live_questions(&tx, form_id).await?;
        if let Some(e) = spec
            .alias
            .as_deref()
            .and_then(|a| alias_taken(&existing, a, None))
        {
            return Err(StoreError::Invalid(vec![e]));
        }
        let row = tx
            .query_one(
                "SELECT count(*), coalesce(max(position) + 1, 0) FROM questions WHERE form_id = $1",
                &[&form_id],
            )
            .await?;
        let (count, position): (i64, i32) = (row.get(0), row.get(1));
        if count as usize >= QUESTIONS_MAX {
            return Err(StoreError::Conflict {
                code: "too_many_questions",
                message: format!(
                    "a form holds at most {QUESTIONS_MAX} questions, deleted ones included"
                ),
            });
        }
        let q = insert_question(&tx, form_id, spec, position).await?;
        bump_version(&tx, form_id).await?;
        tx.commit().await?;
        self.forms.invalidate(form_id);
        Ok(q)
    }

    /// Changes a live question (label, alias, required, options, position; never its type).
    pub async fn update_question(
        &self,
        org: Uuid,
        form_id: Uuid,
        question_id: Uuid,
        patch: &QuestionPatch,
    ) -> Result<Question> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_form(&tx, org, form_id).await?;
        let existing = live_questions(&tx, form_id).await?;
        let current = existing
            .iter()
            .find(|q| q.id == question_id)
            .ok_or(StoreError::NotFound("question"))?;
        let next = validate_question_patch(current, patch).map_err(StoreError::Invalid)?;
        if next == *current {
            return Ok(next);
        }
        if let Some(e) = next
            .alias
            .as_deref()
            .and_then(|a| alias_taken(&existing, a, Some(question_id)))
        {
            return Err(StoreError::Invalid(vec![e]));
        }
        let options =
            serde_json::to_value(&next.options).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE questions SET label = $2, alias = $3, required = $4, options = $5, \
             position = $6, default_region = $7, updated_at = now() WHERE id = $1",
            &[
                &question_id,
                &next.label,
                &next.alias,
                &next.required,
                &options,
                &next.position,
                &next.default_region,
            ],
        )
        .await?;
        bump_version(&tx, form_id).await?;
        tx.commit().await?;
        self.forms.invalidate(form_id);
        Ok(next)
    }

    /// Soft-deletes a question: it stops accepting answers; past answers keep it.
    pub async fn delete_question(&self, org: Uuid, form_id: Uuid, question_id: Uuid) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_form(&tx, org, form_id).await?;
        let n = tx
            .execute(
                "UPDATE questions SET deleted_at = now(), updated_at = now() \
                 WHERE id = $1 AND form_id = $2 AND deleted_at IS NULL",
                &[&question_id, &form_id],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound("question"));
        }
        bump_version(&tx, form_id).await?;
        tx.commit().await?;
        self.forms.invalidate(form_id);
        Ok(())
    }

    /// The definition of a form of `org`, from the cache or Postgres.
    pub(crate) async fn form_def(
        &self,
        org: Uuid,
        form_id: Uuid,
        fresh: bool,
    ) -> Result<Arc<FormDef>> {
        if !fresh && let Some(def) = self.forms.get(form_id) {
            return if def.org_id == org {
                Ok(def)
            } else {
                Err(StoreError::NotFound("form"))
            };
        }
        let client = self.pool.get().await?;
        // One statement, so the version and the questions come from one snapshot.
        let sql = format!(
            "SELECT f.org_id, f.version, q.{} FROM forms f \
             LEFT JOIN questions q ON q.form_id = f.id AND q.deleted_at IS NULL \
             WHERE f.id = $1 AND f.deleted_at IS NULL ORDER BY q.position, q.id",
            QUESTION_COLUMNS.replace(", ", ", q.")
        );
        let rows = client.query(&sql, &[&form_id]).await?;
        let first = rows.first().ok_or(StoreError::NotFound("form"))?;
        let mut questions = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.get::<_, Option<Uuid>>(2).is_some() {
                questions.push(question_at(row, 2)?);
            }
        }
        let def = Arc::new(FormDef {
            org_id: first.get(0),
            version: first.get(1),
            questions,
        });
        self.forms.put(form_id, def.clone());
        if def.org_id == org {
            Ok(def)
        } else {
            Err(StoreError::NotFound("form"))
        }
    }
}

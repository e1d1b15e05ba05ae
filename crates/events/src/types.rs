//! Rust mirrors of the `.avsc` schemas. Timestamps are microseconds since the Unix epoch,
//! dates days since the Unix epoch, ids UUID text.

use serde::{Deserialize, Serialize};

/// What happened to a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResponseOp {
    /// Submitted.
    Created,
    /// Edited.
    Updated,
    /// Deleted (soft or hard).
    Deleted,
    /// Read by a snapshot (initial or re-emitted): the current state.
    Snapshot,
}

/// One answer of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Question id.
    pub question_id: String,
    /// Question alias when the answer was written.
    pub alias: Option<String>,
    /// Question type name.
    pub question_type: String,
    /// text, long_text, email, phone, single_choice.
    pub text: Option<String>,
    /// number, as exact decimal text.
    pub number: Option<String>,
    /// boolean.
    pub boolean: Option<bool>,
    /// date, days since 1970-01-01.
    pub date: Option<i32>,
    /// multi_choice codes.
    pub choices: Option<Vec<String>>,
}

/// A response as of one committed change (`schemas/response_event.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseEvent {
    /// Deterministic identity.
    pub event_id: String,
    /// What happened.
    pub op: ResponseOp,
    /// Response id.
    pub response_id: String,
    /// Form id.
    pub form_id: String,
    /// Organization id.
    pub org_id: String,
    /// Revision of the response.
    pub revision: i32,
    /// Source of the response.
    pub source: String,
    /// Metadata, JSON text.
    pub metadata_json: String,
    /// Every answer.
    pub answers: Vec<Answer>,
    /// Submission time, µs since the Unix epoch.
    pub submitted_at: i64,
    /// Last change, µs since the Unix epoch.
    pub updated_at: i64,
    /// Deletion time, µs since the Unix epoch.
    pub deleted_at: Option<i64>,
    /// LSN of the commit (or the snapshot point).
    pub commit_lsn: i64,
    /// Commit time, µs since the Unix epoch.
    pub commit_ts: i64,
    /// Transaction id (0 for snapshot reads).
    pub xid: i64,
}

/// What happened to a form or question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FormOp {
    /// Created.
    Created,
    /// Changed.
    Updated,
    /// Deleted.
    Deleted,
    /// Read by a snapshot.
    Snapshot,
}

/// A form's own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormState {
    /// Organization id.
    pub org_id: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: Option<String>,
    /// Status.
    pub status: String,
    /// Version.
    pub version: i32,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// Deletion time.
    pub deleted_at: Option<i64>,
}

/// An option of a choice question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceOption {
    /// Code.
    pub code: String,
    /// Label.
    pub label: String,
}

/// A question's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionState {
    /// Question id.
    pub question_id: String,
    /// Label.
    pub label: String,
    /// Type name.
    pub question_type: String,
    /// Alias.
    pub alias: Option<String>,
    /// Position.
    pub position: i32,
    /// Required.
    pub required: bool,
    /// Options.
    pub options: Vec<ChoiceOption>,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// Deletion time.
    pub deleted_at: Option<i64>,
}

/// A form or question as of one committed change (`schemas/form_event.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormEvent {
    /// Deterministic identity.
    pub event_id: String,
    /// What happened.
    pub op: FormOp,
    /// Form id.
    pub form_id: String,
    /// Set for form changes.
    pub form: Option<FormState>,
    /// Set for question changes.
    pub question: Option<QuestionState>,
    /// LSN of the commit.
    pub commit_lsn: i64,
    /// Commit time.
    pub commit_ts: i64,
    /// Transaction id.
    pub xid: i64,
}

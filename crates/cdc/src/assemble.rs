//! Row changes of the published tables turned into domain events.
//!
//! A `responses` row carries the whole response (its answers are in the response document
//! column), so every change of it becomes one self-contained [`ResponseEvent`]. `forms` and
//! `questions` rows become [`FormEvent`]s. Each event's id is derived from the commit LSN
//! and the change's ordinal in its transaction, so a replay yields the same ids.

use chrono::{Datelike, NaiveDate};
use collect_events::{
    Answer, ChoiceOption, FormEvent, FormOp, FormState, QuestionState, ResponseEvent, ResponseOp,
};
use collect_model::{AnswerValue, ResponseDocument};
use collect_pgoutput::Lsn;

use crate::row::{Row, RowError};

/// The kind of change of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// Read by a snapshot.
    Snapshot,
}

/// Where a change sits: its transaction and its place in it.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    /// LSN of the commit record (the snapshot's consistent point for snapshot reads).
    pub commit_lsn: Lsn,
    /// Commit time, µs since the Unix epoch.
    pub commit_ts: i64,
    /// Transaction id (0 for snapshot reads).
    pub xid: u32,
    /// Index of the change in its transaction.
    pub ordinal: u32,
}

impl Position {
    fn event_id(&self, kind: ChangeKind, key: &str) -> String {
        match kind {
            ChangeKind::Snapshot => format!("snapshot/{}/{key}", self.commit_lsn),
            _ => format!("{}/{}", self.commit_lsn, self.ordinal),
        }
    }
}

/// A domain event ready to be encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// On the responses topic.
    Response(ResponseEvent),
    /// On the forms topic.
    Form(FormEvent),
}

impl Event {
    /// The form the event belongs to: it decides the partition.
    pub fn form_id(&self) -> &str {
        match self {
            Event::Response(r) => &r.form_id,
            Event::Form(f) => &f.form_id,
        }
    }

    /// The record key: the response, form or question id (compaction keeps the latest
    /// state of each).
    pub fn key(&self) -> &str {
        match self {
            Event::Response(r) => &r.response_id,
            Event::Form(FormEvent {
                question: Some(q), ..
            }) => &q.question_id,
            Event::Form(f) => &f.form_id,
        }
    }
}

/// The tables the reader turns into events.
pub const TABLES: [&str; 3] = ["forms", "questions", "responses"];

/// Builds the event of one row change. `row` is the new row (the old one for deletes);
/// `was_deleted` says whether the old row was already soft-deleted (updates only).
/// `Ok(None)` for tables the reader does not publish.
pub fn assemble(
    row: &Row<'_>,
    kind: ChangeKind,
    pos: Position,
    was_deleted: Option<bool>,
) -> Result<Option<Event>, RowError> {
    Ok(Some(match row.table() {
        "responses" => Event::Response(response(row, kind, pos)?),
        "forms" => Event::Form(form(row, kind, pos, was_deleted)?),
        "questions" => Event::Form(question(row, kind, pos, was_deleted)?),
        _ => return Ok(None),
    }))
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - 719_163
}

fn answers(row: &Row<'_>) -> Result<Vec<Answer>, RowError> {
    let doc: ResponseDocument = row.decode_json("answers").map_err(|e| match e {
        RowError::Invalid { column, problem } => RowError::Invalid {
            column,
            problem: format!("not a response document: {problem}"),
        },
        other => other,
    })?;
    Ok(doc
        .into_iter()
        .map(|(qid, entry)| {
            let mut a = Answer {
                question_id: qid.to_string(),
                alias: entry.alias,
                question_type: entry.qtype.as_str().to_string(),
                text: None,
                number: None,
                boolean: None,
                date: None,
                choices: None,
            };
            match entry.value {
                AnswerValue::Text(t) => a.text = Some(t),
                AnswerValue::Number(n) => a.number = Some(n.to_string()),
                AnswerValue::Boolean(b) => a.boolean = Some(b),
                AnswerValue::Date(d) => a.date = Some(days_since_epoch(d)),
                AnswerValue::Choices(c) => a.choices = Some(c),
            }
            a
        })
        .collect())
}

fn response(row: &Row<'_>, kind: ChangeKind, pos: Position) -> Result<ResponseEvent, RowError> {
    let response_id = row.uuid("id")?;
    let deleted_at = row.timestamp("deleted_at")?;
    let op = match kind {
        ChangeKind::Insert => ResponseOp::Created,
        ChangeKind::Delete => ResponseOp::Deleted,
        ChangeKind::Snapshot => ResponseOp::Snapshot,
        ChangeKind::Update if deleted_at.is_some() => ResponseOp::Deleted,
        ChangeKind::Update => ResponseOp::Updated,
    };
    Ok(ResponseEvent {
        event_id: pos.event_id(kind, &response_id),
        op,
        form_id: row.uuid("form_id")?,
        org_id: row.uuid("org_id")?,
        revision: row.int("revision")?,
        source: row.required("source")?.to_string(),
        // jsonb's text output is always valid JSON: passed on as it is.
        metadata_json: row.required("metadata")?.to_string(),
        answers: answers(row)?,
        submitted_at: row
            .timestamp("submitted_at")?
            .ok_or_else(|| RowError::Null("submitted_at".into()))?,
        updated_at: row
            .timestamp("updated_at")?
            .ok_or_else(|| RowError::Null("updated_at".into()))?,
        deleted_at,
        commit_lsn: pos.commit_lsn.0 as i64,
        commit_ts: pos.commit_ts,
        xid: i64::from(pos.xid),
        response_id,
    })
}

fn form_op(kind: ChangeKind, deleted_now: bool, was_deleted: Option<bool>) -> FormOp {
    match kind {
        ChangeKind::Insert => FormOp::Created,
        ChangeKind::Delete => FormOp::Deleted,
        ChangeKind::Snapshot => FormOp::Snapshot,
        ChangeKind::Update if deleted_now && was_deleted != Some(true) => FormOp::Deleted,
        ChangeKind::Update => FormOp::Updated,
    }
}

fn form(
    row: &Row<'_>,
    kind: ChangeKind,
    pos: Position,
    was_deleted: Option<bool>,
) -> Result<FormEvent, RowError> {
    let form_id = row.uuid("id")?;
    let deleted_at = row.timestamp("deleted_at")?;
    Ok(FormEvent {
        event_id: pos.event_id(kind, &form_id),
        op: form_op(kind, deleted_at.is_some(), was_deleted),
        form: Some(FormState {
            org_id: row.uuid("org_id")?,
            title: row.required("title")?.to_string(),
            description: row.text("description")?.map(str::to_string),
            status: row.required("status")?.to_string(),
            version: row.int("version")?,
            created_at: row
                .timestamp("created_at")?
                .ok_or_else(|| RowError::Null("created_at".into()))?,
            updated_at: row
                .timestamp("updated_at")?
                .ok_or_else(|| RowError::Null("updated_at".into()))?,
            deleted_at,
        }),
        question: None,
        commit_lsn: pos.commit_lsn.0 as i64,
        commit_ts: pos.commit_ts,
        xid: i64::from(pos.xid),
        form_id,
    })
}

fn question(
    row: &Row<'_>,
    kind: ChangeKind,
    pos: Position,
    was_deleted: Option<bool>,
) -> Result<FormEvent, RowError> {
    let question_id = row.uuid("id")?;
    let deleted_at = row.timestamp("deleted_at")?;
    let options: Vec<collect_model::ChoiceOption> = row.decode_json("options")?;
    Ok(FormEvent {
        event_id: pos.event_id(kind, &question_id),
        op: form_op(kind, deleted_at.is_some(), was_deleted),
        form_id: row.uuid("form_id")?,
        form: None,
        question: Some(QuestionState {
            label: row.required("label")?.to_string(),
            question_type: row.required("type")?.to_string(),
            alias: row.text("alias")?.map(str::to_string),
            position: row.int("position")?,
            required: row.boolean("required")?,
            options: options
                .into_iter()
                .map(|o| ChoiceOption {
                    code: o.code,
                    label: o.label,
                })
                .collect(),
            created_at: row
                .timestamp("created_at")?
                .ok_or_else(|| RowError::Null("created_at".into()))?,
            updated_at: row
                .timestamp("updated_at")?
                .ok_or_else(|| RowError::Null("updated_at".into()))?,
            deleted_at,
            question_id,
        }),
        commit_lsn: pos.commit_lsn.0 as i64,
        commit_ts: pos.commit_ts,
        xid: i64::from(pos.xid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Relation;
    use bytes::Bytes;
    use collect_pgoutput::{Column, RelationBody, ReplicaIdentity, TupleData, TupleValue};

    fn relation(name: &str, cols: &[&str]) -> Relation {
        Relation::from(&RelationBody {
            xid: None,
            oid: 7,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Full,
            columns: cols
                .iter()
                .map(|n| Column {
                    key: false,
                    name: n.to_string(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    fn tuple(values: &[Option<&str>]) -> TupleData {
        TupleData(
            values
                .iter()
                .map(|v| match v {
                    Some(s) => TupleValue::Text(Bytes::from(s.to_string())),
                    None => TupleValue::Null,
                })
                .collect(),
        )
    }

    const RESPONSE_COLS: [&str; 12] = [
        "form_id",
        "id",
        "org_id",
        "revision",
        "source",
        "idempotency_key",
        "request_sha256",
        "metadata",
        "answers",
        "submitted_at",
        "updated_at",
        "deleted_at",
    ];
    const F: &str = "01900000-0000-7000-8000-000000000001";
    const R: &str = "01900000-0000-7000-8000-000000000002";
    const O: &str = "01900000-0000-7000-8000-000000000003";
    const Q: &str = "01900000-0000-7000-8000-000000000004";

    fn pos() -> Position {
        Position {
            commit_lsn: Lsn(0x16_0000_0010),
            commit_ts: 5,
            xid: 900,
            ordinal: 2,
        }
    }

    #[test]
    fn a_response_row_becomes_a_full_event() {
        let rel = relation("responses", &RESPONSE_COLS);
        let doc = format!(
            r#"{{"{Q}": {{"alias": "day", "type": "date", "value": "1970-01-11"}}, "01900000-0000-7000-8000-000000000005": {{"alias": null, "type": "number", "value": 12.5}}}}"#
        );
        let t = tuple(&[
            Some(F),
            Some(R),
            Some(O),
            Some("3"),
            Some("web"),
            None,
            None,
            Some(r#"{"utm": "x"}"#),
            Some(&doc),
            Some("2026-11-23 01:02:03.5+00"),
            Some("2026-11-23 01:02:04+00"),
            None,
        ]);
        let row = Row::new(&rel, &t, None);
        let Some(Event::Response(ev)) =
            assemble(&row, ChangeKind::Update, pos(), Some(false)).unwrap()
        else {
            panic!("expected a response event")
        };
        assert_eq!(ev.event_id, "16/10/2");
        assert_eq!(ev.op, ResponseOp::Updated);
        assert_eq!(
            (ev.form_id.as_str(), ev.response_id.as_str(), ev.revision),
            (F, R, 3)
        );
        assert_eq!(ev.metadata_json, r#"{"utm": "x"}"#);
        assert_eq!(ev.answers.len(), 2);
        assert_eq!(ev.answers[0].date, Some(10));
        assert_eq!(ev.answers[0].alias.as_deref(), Some("day"));
        assert_eq!(ev.answers[1].number.as_deref(), Some("12.5"));
        assert_eq!(ev.submitted_at % 1_000_000, 500_000);
        assert_eq!((ev.commit_lsn, ev.xid), (0x16_0000_0010, 900));
        let e = Event::Response(ev);
        assert_eq!((e.key(), e.form_id()), (R, F));
    }

    #[test]
    fn soft_delete_snapshot_and_corrupt_rows() {
        let rel = relation("responses", &RESPONSE_COLS);
        let ok = |deleted: Option<&str>, doc: &str| {
            tuple(&[
                Some(F),
                Some(R),
                Some(O),
                Some("2"),
                Some("api"),
                None,
                None,
                Some("{}"),
                Some(doc),
                Some("2026-11-23 01:02:03+00"),
                Some("2026-11-23 01:02:03+00"),
                deleted,
            ])
        };
        let t = ok(Some("2026-11-23 01:02:05+00"), "{}");
        let Some(Event::Response(ev)) =
            assemble(&Row::new(&rel, &t, None), ChangeKind::Update, pos(), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(ev.op, ResponseOp::Deleted);
        assert!(ev.deleted_at.is_some());
        let t = ok(None, "{}");
        let Some(Event::Response(ev)) =
            assemble(&Row::new(&rel, &t, None), ChangeKind::Snapshot, pos(), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (ev.op, ev.event_id.as_str()),
            (ResponseOp::Snapshot, format!("snapshot/16/10/{R}").as_str())
        );
        // A document that does not decode is an error (for the dead-letter topic), not an event.
        let t = ok(None, r#"{"not-a-uuid": 1}"#);
        assert!(matches!(
            assemble(&Row::new(&rel, &t, None), ChangeKind::Insert, pos(), None),
            Err(RowError::Invalid { .. })
        ));
    }

    #[test]
    fn forms_and_questions() {
        let rel = relation(
            "forms",
            &[
                "id",
                "org_id",
                "title",
                "description",
                "status",
                "version",
                "created_at",
                "updated_at",
                "deleted_at",
            ],
        );
        let t = tuple(&[
            Some(F),
            Some(O),
            Some("T"),
            None,
            Some("active"),
            Some("4"),
            Some("2026-11-23 01:02:03+00"),
            Some("2026-11-23 01:02:03+00"),
            None,
        ]);
        let Some(Event::Form(ev)) =
            assemble(&Row::new(&rel, &t, None), ChangeKind::Insert, pos(), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (ev.op, ev.form.as_ref().unwrap().version),
            (FormOp::Created, 4)
        );
        assert_eq!(Event::Form(ev).key(), F);

        let rel = relation(
            "questions",
            &[
                "id",
                "form_id",
                "label",
                "type",
                "alias",
                "position",
                "required",
                "options",
                "created_at",
                "updated_at",
                "deleted_at",
            ],
        );
        let t = tuple(&[
            Some(Q),
            Some(F),
            Some("Pick"),
            Some("single_choice"),
            Some("pick"),
            Some("2"),
            Some("t"),
            Some(r#"[{"code": "a", "label": "A"}]"#),
            Some("2026-11-23 01:02:03+00"),
            Some("2026-11-23 01:02:03+00"),
            Some("2026-11-23 01:02:09+00"),
        ]);
        let Some(Event::Form(ev)) = assemble(
            &Row::new(&rel, &t, None),
            ChangeKind::Update,
            pos(),
            Some(false),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(ev.op, FormOp::Deleted);
        let q = ev.question.as_ref().unwrap();
        assert_eq!((q.required, q.options.len(), q.position), (true, 1, 2));
        assert_eq!(Event::Form(ev.clone()).key(), Q);
        assert_eq!(Event::Form(ev).form_id(), F);
        // Other tables are not published.
        let other = relation("answers", &["x"]);
        assert_eq!(
            assemble(
                &Row::new(&other, &tuple(&[Some("1")]), None),
                ChangeKind::Insert,
                pos(),
                None
            )
            .unwrap(),
            None
        );
    }
}

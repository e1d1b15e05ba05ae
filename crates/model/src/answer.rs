//! Answers: how a submitted JSON value is checked against its question and normalised, and the
//! response document that carries a response's answers as one self-contained value.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::number::{Decimal, NumberError};
use crate::text::{TEXT_MAX_CHARS, check_text};
use crate::{FieldError, Question, QuestionType, normalize_email, normalize_phone};

/// Answers as submitted, keyed by question id or alias, each value as its raw JSON text, so
/// that a number keeps every digit it was written with (see [`crate::number`]).
pub type AnswerInputs = BTreeMap<String, Box<RawValue>>;

/// Raw answers from a JSON object (tests and tools that build answers as values). Numbers
/// pass through a double here: use [`AnswerInputs`] parsed from the request text to keep
/// their digits.
pub fn inputs_from_map(map: &Map<String, Value>) -> AnswerInputs {
    map.iter()
        .filter_map(|(k, v)| {
            RawValue::from_string(v.to_string())
                .ok()
                .map(|r| (k.clone(), r))
        })
        .collect()
}

const METADATA_MAX_BYTES: usize = 16 * 1024;
const METADATA_MAX_KEYS: usize = 64;

/// A normalised answer value.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerValue {
    /// text, long_text, email (domain lower-cased), phone (E.164) and single_choice (the code).
    Text(String),
    /// A number, exactly as submitted (canonical plain decimal, see [`crate::number`]).
    Number(Decimal),
    /// A boolean.
    Boolean(bool),
    /// A calendar date.
    Date(NaiveDate),
    /// Distinct option codes of a multi_choice question, in the order given.
    Choices(Vec<String>),
}

impl AnswerValue {
    /// The value as JSON (dates as `YYYY-MM-DD`). A number goes through a double here: use
    /// the document's serialization (which writes its exact digits) to keep them.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Text(s) => Value::String(s.clone()),
            Self::Number(n) => n
                .as_str()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number),
            Self::Boolean(b) => Value::Bool(*b),
            Self::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
            Self::Choices(c) => Value::Array(c.iter().cloned().map(Value::String).collect()),
        }
    }
}

/// One answer inside a [`ResponseDocument`]: the value with the question's alias and type at
/// the time it was written, so the document reads on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawEntryIn", into = "RawEntryOut")]
pub struct AnswerEntry {
    /// Alias of the question when the answer was written.
    pub alias: Option<String>,
    /// Type of the question.
    pub qtype: QuestionType,
    /// The normalised value.
    pub value: AnswerValue,
}

/// The stored form, as written: the value as plain JSON, a number as its exact digits.
#[derive(Serialize)]
struct RawEntryOut {
    alias: Option<String>,
    #[serde(rename = "type")]
    qtype: QuestionType,
    value: Box<RawValue>,
}

/// The stored form, as read: the value decoded straight into a small typed shape, without
/// building a JSON tree (the CDC reader decodes one document per event). Documents are read
/// from JSON text (`serde_json::from_str`/`from_slice`): a number's digits come from the text.
#[derive(Deserialize)]
struct RawEntryIn {
    alias: Option<String>,
    #[serde(rename = "type")]
    qtype: QuestionType,
    value: StoredValue,
}

/// A stored answer value before its question type gives it meaning.
enum StoredValue {
    Str(String),
    Num(String),
    Bool(bool),
    List(Vec<String>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for StoredValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The raw text, so that a number keeps the digits Postgres stored (jsonb keeps
        // numbers as numeric); only JSON text deserializers (from_str, from_slice) give it.
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(StoredValue::from_raw(raw.get()))
    }
}

impl StoredValue {
    fn from_raw(text: &str) -> StoredValue {
        let t = text.trim();
        match t.as_bytes().first() {
            Some(b'"') => serde_json::from_str(t)
                .map(StoredValue::Str)
                .unwrap_or(StoredValue::Other("a malformed string")),
            Some(b't') => StoredValue::Bool(true),
            Some(b'f') => StoredValue::Bool(false),
            Some(b'n') => StoredValue::Other("null"),
            Some(b'[') => serde_json::from_str(t)
                .map(StoredValue::List)
                .unwrap_or(StoredValue::Other("a list of other things than strings")),
            Some(b'{') => StoredValue::Other("an object"),
            Some(b'-' | b'0'..=b'9') => StoredValue::Num(t.to_string()),
            _ => StoredValue::Other("an unknown value"),
        }
    }
}

impl StoredValue {
    fn describe(&self) -> String {
        match self {
            StoredValue::Str(_) => "a string".into(),
            StoredValue::Num(n) => format!("the number {n}"),
            StoredValue::Bool(b) => format!("{b}"),
            StoredValue::List(_) => "a list".into(),
            StoredValue::Other(what) => (*what).into(),
        }
    }
}

impl From<AnswerEntry> for RawEntryOut {
    fn from(e: AnswerEntry) -> Self {
        let text = match &e.value {
            AnswerValue::Number(n) => n.as_str().to_string(),
            other => other.to_json().to_string(),
        };
        RawEntryOut {
            // Our own JSON text: always valid.
            value: RawValue::from_string(text).unwrap_or_default(),
            alias: e.alias,
            qtype: e.qtype,
        }
    }
}

impl TryFrom<RawEntryIn> for AnswerEntry {
    type Error = String;
    fn try_from(r: RawEntryIn) -> Result<Self, String> {
        let problem = format!(
            "stored value ({}) does not fit type {}",
            r.value.describe(),
            r.qtype.as_str()
        );
        let value = decode_stored(r.qtype, r.value).ok_or(problem)?;
        Ok(AnswerEntry {
            alias: r.alias,
            qtype: r.qtype,
            value,
        })
    }
}

/// Decodes a value already normalised by [`check_value`] (no option checks: options may have
/// changed since it was written).
fn decode_stored(qtype: QuestionType, v: StoredValue) -> Option<AnswerValue> {
    use QuestionType::*;
    Some(match (qtype, v) {
        (Number, StoredValue::Num(n)) => AnswerValue::Number(Decimal::parse(&n).ok()?),
        (Boolean, StoredValue::Bool(b)) => AnswerValue::Boolean(b),
        (Date, StoredValue::Str(s)) => {
            AnswerValue::Date(NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok()?)
        }
        (MultiChoice, StoredValue::List(items)) => AnswerValue::Choices(items),
        (Text | LongText | Email | Phone | SingleChoice, StoredValue::Str(s)) => {
            AnswerValue::Text(s)
        }
        _ => return None,
    })
}

/// A response's answers keyed by question id: what the `responses.answers` column holds, what
/// the API returns, and what the CDC reader carries in events.
pub type ResponseDocument = BTreeMap<Uuid, AnswerEntry>;

fn wrong_type(expected: &str) -> (&'static str, String) {
    ("wrong_type", format!("expected {expected}"))
}

/// Whether a raw answer is JSON `null`.
fn is_null(raw: &RawValue) -> bool {
    raw.get().trim() == "null"
}

/// Checks one non-null raw JSON value against its question and normalises it. `Ok(None)`
/// means the value is empty (blank text, no choices) and counts as no answer.
fn check_value(
    q: &Question,
    raw: &RawValue,
) -> Result<Option<AnswerValue>, (&'static str, String)> {
    if q.qtype == QuestionType::Number {
        // The literal itself, never a double: every digit is kept or the answer refused.
        let t = raw.get().trim();
        if !t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            return Err(wrong_type("a number"));
        }
        return match Decimal::parse(t) {
            Ok(d) => Ok(Some(AnswerValue::Number(d))),
            Err(NumberError::OutOfRange) => {
                Err(("number_out_of_range", NumberError::OutOfRange.to_string()))
            }
            Err(e) => Err(("wrong_type", e.to_string())),
        };
    }
    let v: Value = serde_json::from_str(raw.get()).map_err(|_| wrong_type("a JSON value"))?;
    let v = &v;
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| wrong_type("a string"))
    };
    let value = match q.qtype {
        QuestionType::Text | QuestionType::LongText => {
            let s = text(v)?;
            check_text(&s, TEXT_MAX_CHARS)?;
            if s.trim().is_empty() {
                return Ok(None);
            }
            AnswerValue::Text(s)
        }
        QuestionType::Email => {
            let s = text(v)?;
            if s.trim().is_empty() {
                return Ok(None);
            }
            AnswerValue::Text(normalize_email(&s).map_err(|m| ("invalid_email", m))?)
        }
        QuestionType::Phone => {
            let s = text(v)?;
            if s.trim().is_empty() {
                return Ok(None);
            }
            AnswerValue::Text(
                normalize_phone(&s, q.default_region.as_deref())
                    .map_err(|m| ("invalid_phone", m))?,
            )
        }
        QuestionType::Number => return Err(wrong_type("a number")),
        QuestionType::Boolean => {
            AnswerValue::Boolean(v.as_bool().ok_or_else(|| wrong_type("true or false"))?)
        }
        QuestionType::Date => {
            let s = text(v)?;
            let d = NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .ok()
                .filter(|_| s.len() == 10)
                .ok_or_else(|| {
                    (
                        "invalid_date",
                        format!("'{s}' is not a date in YYYY-MM-DD form"),
                    )
                })?;
            AnswerValue::Date(d)
        }
        QuestionType::SingleChoice => {
            let s = text(v)?;
            check_choice(q, &s)?;
            AnswerValue::Text(s)
        }
        QuestionType::MultiChoice => {
            let items = v
                .as_array()
                .ok_or_else(|| wrong_type("an array of option codes"))?;
            let mut codes: Vec<String> = Vec::with_capacity(items.len());
            for item in items {
                let s = item
                    .as_str()
                    .ok_or_else(|| wrong_type("an array of option codes"))?;
                check_choice(q, s)?;
                if codes.iter().any(|c| c == s) {
                    return Err(("duplicate", format!("option '{s}' is chosen twice")));
                }
                codes.push(s.to_string());
            }
            if codes.is_empty() {
                return Ok(None);
            }
            AnswerValue::Choices(codes)
        }
    };
    Ok(Some(value))
}

fn check_choice(q: &Question, code: &str) -> Result<(), (&'static str, String)> {
    if q.options.iter().any(|o| o.code == code) {
        Ok(())
    } else {
        let codes: Vec<&str> = q.options.iter().map(|o| o.code.as_str()).collect();
        Err((
            "invalid_choice",
            format!(
                "'{code}' is not an option; options are: {}",
                codes.join(", ")
            ),
        ))
    }
}

/// Finds the questions that the keys of `answers` name (by id or alias) among `questions`
/// (the form's live questions), refusing unknown and doubly named ones.
fn resolve_keys<'q, 'a>(
    questions: &'q [Question],
    answers: &'a AnswerInputs,
    errors: &mut Vec<FieldError>,
) -> Vec<(&'q Question, &'a str, &'a RawValue)> {
    let by_id: HashMap<Uuid, &Question> = questions.iter().map(|q| (q.id, q)).collect();
    let by_alias: HashMap<&str, &Question> = questions
        .iter()
        .filter_map(|q| q.alias.as_deref().map(|a| (a, q)))
        .collect();
    let mut seen: HashMap<Uuid, &str> = HashMap::new();
    let mut out = Vec::with_capacity(answers.len());
    for (key, value) in answers {
        let q = Uuid::parse_str(key)
            .ok()
            .and_then(|id| by_id.get(&id).copied())
            .or_else(|| by_alias.get(key.as_str()).copied());
        let Some(q) = q else {
            errors.push(FieldError::new(
                format!("answers.{key}"),
                "unknown_question",
                format!("'{key}' is neither the id nor the alias of a question of this form"),
            ));
            continue;
        };
        if let Some(other) = seen.insert(q.id, key) {
            errors.push(FieldError::new(
                format!("answers.{key}"),
                "duplicate",
                format!("'{key}' and '{other}' name the same question"),
            ));
            continue;
        }
        out.push((q, key.as_str(), &**value));
    }
    out
}

fn entry(q: &Question, value: AnswerValue) -> AnswerEntry {
    AnswerEntry {
        alias: q.alias.clone(),
        qtype: q.qtype,
        value,
    }
}

/// Validates a new submission against the form's live `questions` and returns its document.
///
/// Keys are question ids or aliases; `null`, blank text and empty choice lists count as no
/// answer. Every required question must be answered. All problems are reported at once.
pub fn resolve_answers(
    questions: &[Question],
    answers: &AnswerInputs,
) -> Result<ResponseDocument, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut doc = ResponseDocument::new();
    for (q, key, value) in resolve_keys(questions, answers, &mut errors) {
        if is_null(value) {
            continue;
        }
        match check_value(q, value) {
            Ok(Some(v)) => {
                doc.insert(q.id, entry(q, v));
            }
            Ok(None) => {}
            Err((code, message)) => {
                errors.push(FieldError::new(format!("answers.{key}"), code, message))
            }
        }
    }
    for q in questions.iter().filter(|q| q.required) {
        if !doc.contains_key(&q.id) && !errors.iter().any(|e| refers_to(e, q)) {
            errors.push(FieldError::new(
                format!(
                    "answers.{}",
                    q.alias.clone().unwrap_or_else(|| q.id.to_string())
                ),
                "required",
                format!("question '{}' is required", q.label),
            ));
        }
    }
    if errors.is_empty() {
        Ok(doc)
    } else {
        Err(errors)
    }
}

fn refers_to(e: &FieldError, q: &Question) -> bool {
    let key = e.field.strip_prefix("answers.").unwrap_or_default();
    key == q.id.to_string() || q.alias.as_deref() == Some(key)
}

/// Applies an edit to an existing document: each key of `patch` replaces that answer, `null`
/// (or an empty value) removes it. Answers not named are kept, including answers to questions
/// deleted since. A required question cannot lose its answer.
pub fn apply_answer_patch(
    questions: &[Question],
    current: &ResponseDocument,
    patch: &AnswerInputs,
) -> Result<ResponseDocument, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut doc = current.clone();
    for (q, key, value) in resolve_keys(questions, patch, &mut errors) {
        let checked = if is_null(value) {
            Ok(None)
        } else {
            check_value(q, value)
        };
        match checked {
            Ok(Some(v)) => {
                doc.insert(q.id, entry(q, v));
            }
            Ok(None) if q.required => errors.push(FieldError::new(
                format!("answers.{key}"),
                "required",
                format!("question '{}' is required and cannot be cleared", q.label),
            )),
            Ok(None) => {
                doc.remove(&q.id);
            }
            Err((code, message)) => {
                errors.push(FieldError::new(format!("answers.{key}"), code, message))
            }
        }
    }
    if errors.is_empty() {
        Ok(doc)
    } else {
        Err(errors)
    }
}

/// Checks a response's free metadata: a JSON object of at most 64 keys and 16 KiB, with no NUL
/// characters (Postgres `jsonb` cannot hold them).
pub fn validate_metadata(metadata: &Value) -> Result<(), FieldError> {
    let Value::Object(map) = metadata else {
        return Err(FieldError::new(
            "metadata",
            "wrong_type",
            "expected a JSON object",
        ));
    };
    if map.len() > METADATA_MAX_KEYS {
        return Err(FieldError::new(
            "metadata",
            "too_many",
            format!("at most {METADATA_MAX_KEYS} keys"),
        ));
    }
    let size = serde_json::to_string(metadata)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if size > METADATA_MAX_BYTES {
        return Err(FieldError::new(
            "metadata",
            "too_long",
            format!("metadata is {size} bytes as JSON; the limit is {METADATA_MAX_BYTES}"),
        ));
    }
    if has_nul(metadata) {
        return Err(FieldError::new(
            "metadata",
            "invalid_character",
            "metadata must not contain NUL characters",
        ));
    }
    Ok(())
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChoiceOption;
    use serde_json::json;

    fn q(n: u128, qtype: QuestionType, alias: &str, required: bool) -> Question {
        Question {
            id: Uuid::from_u128(n),
            label: format!("Q{n}"),
            qtype,
            alias: Some(alias.into()),
            position: n as i32,
            default_region: None,
            required,
            options: if qtype.is_choice() {
                vec![
                    ChoiceOption {
                        code: "a".into(),
                        label: "A".into(),
                    },
                    ChoiceOption {
                        code: "b".into(),
                        label: "B".into(),
                    },
                ]
            } else {
                vec![]
            },
        }
    }

    fn form() -> Vec<Question> {
        use QuestionType::*;
        vec![
            q(1, Text, "name", true),
            q(2, Number, "age", false),
            q(3, Email, "email", false),
            q(4, Phone, "phone", false),
            q(5, SingleChoice, "pick", false),
            q(6, MultiChoice, "many", false),
            q(7, Date, "day", false),
            q(8, Boolean, "ok", false),
            q(9, LongText, "essay", false),
        ]
    }

    fn map(v: Value) -> AnswerInputs {
        serde_json::from_str(&v.to_string()).unwrap()
    }

    #[test]
    fn normalises_every_type() {
        let doc = resolve_answers(
            &form(),
            &map(json!({
                "name": "Ann", "age": 41.5, "email": "a@EXAMPLE.com", "phone": "+1 415 555 0100",
                "pick": "b", "many": ["b", "a"], "day": "2024-02-29", "ok": false,
                Uuid::from_u128(9).to_string(): "long"
            })),
        )
        .unwrap();
        let json = serde_json::to_value(&doc).unwrap();
        let values: Vec<Value> = doc.values().map(|e| e.value.to_json()).collect();
        assert_eq!(
            values,
            vec![
                json!("Ann"),
                json!(41.5),
                json!("a@example.com"),
                json!("+14155550100"),
                json!("b"),
                json!(["b", "a"]),
                json!("2024-02-29"),
                json!(false),
                json!("long")
            ]
        );
        assert_eq!(json[Uuid::from_u128(4).to_string()]["type"], "phone");
        let back: ResponseDocument = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, doc);
        let from_text: ResponseDocument = serde_json::from_str(&json.to_string()).unwrap();
        assert_eq!(from_text, doc);
        // A stored value that does not fit its type is an error, whatever its shape.
        for bad in [
            r#"{"value": 1, "type": "text", "alias": null}"#,
            r#"{"type": "number", "alias": null, "value": {"a": 1}}"#,
            r#"{"type": "multi_choice", "alias": null, "value": [1]}"#,
        ] {
            let doc = format!(r#"{{"{}": {bad}}}"#, Uuid::nil());
            assert!(
                serde_json::from_str::<ResponseDocument>(&doc).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        let errs = resolve_answers(
            &form(),
            &map(json!({
                "age": "12", "email": "nope", "phone": "555", "pick": "z", "many": ["a", "a"],
                "day": "2023-02-29", "ok": "yes", "ghost": 1,
                "essay": "x".repeat(TEXT_MAX_CHARS + 1)
            })),
        )
        .unwrap_err();
        let mut got: Vec<(String, &str)> = errs.into_iter().map(|e| (e.field, e.code)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("answers.age".into(), "wrong_type"),
                ("answers.day".into(), "invalid_date"),
                ("answers.email".into(), "invalid_email"),
                ("answers.essay".into(), "too_long"),
                ("answers.ghost".into(), "unknown_question"),
                ("answers.many".into(), "duplicate"),
                ("answers.name".into(), "required"),
                ("answers.ok".into(), "wrong_type"),
                ("answers.phone".into(), "invalid_phone"),
                ("answers.pick".into(), "invalid_choice"),
            ]
        );
    }

    #[test]
    fn blank_counts_as_missing_and_id_plus_alias_is_a_duplicate() {
        let errs = resolve_answers(&form(), &map(json!({"name": "  "}))).unwrap_err();
        assert_eq!(errs[0].code, "required");
        let errs = resolve_answers(
            &form(),
            &map(json!({"name": "A", Uuid::from_u128(1).to_string(): "B"})),
        )
        .unwrap_err();
        assert_eq!(errs[0].code, "duplicate");
    }

    #[test]
    fn patch_replaces_removes_and_protects_required() {
        let qs = form();
        let doc = resolve_answers(&qs, &map(json!({"name": "Ann", "age": 3}))).unwrap();
        let next = apply_answer_patch(&qs, &doc, &map(json!({"age": null, "ok": true}))).unwrap();
        assert_eq!(next.len(), 2);
        assert_eq!(next[&Uuid::from_u128(8)].value, AnswerValue::Boolean(true));
        let errs = apply_answer_patch(&qs, &doc, &map(json!({"name": null}))).unwrap_err();
        assert_eq!(errs[0].code, "required");
    }

    #[test]
    fn metadata_rules() {
        assert!(validate_metadata(&json!({"utm": "x"})).is_ok());
        assert_eq!(
            validate_metadata(&json!([1])).unwrap_err().code,
            "wrong_type"
        );
        assert_eq!(
            validate_metadata(&json!({"a": "\u{0}"})).unwrap_err().code,
            "invalid_character"
        );
        assert_eq!(
            validate_metadata(&json!({"a": "x".repeat(20_000)}))
                .unwrap_err()
                .code,
            "too_long"
        );
    }
}

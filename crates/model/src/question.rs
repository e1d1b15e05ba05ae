//! Forms and questions: their types, their input specifications and the rules that govern them.

use std::collections::HashSet;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::FieldError;
use crate::text::{check_label, check_text};

/// Most questions a form may have (deleted ones included).
pub const QUESTIONS_MAX: usize = 500;
/// Most options a choice question may have.
pub const OPTIONS_MAX: usize = 500;
const TITLE_MAX: usize = 500;
const DESCRIPTION_MAX: usize = 10_000;
const LABEL_MAX: usize = 1_000;
const CODE_MAX: usize = 100;

/// The kind of answer a question takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionType {
    /// A single line of text.
    Text,
    /// Free text over several lines.
    LongText,
    /// A JSON number.
    Number,
    /// An e-mail address.
    Email,
    /// A phone number, stored as E.164.
    Phone,
    /// One code among the question's options.
    SingleChoice,
    /// Distinct codes among the question's options.
    MultiChoice,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// `true` or `false`.
    Boolean,
}

impl QuestionType {
    /// Every type, in documentation order.
    pub const ALL: [QuestionType; 9] = [
        Self::Text,
        Self::LongText,
        Self::Number,
        Self::Email,
        Self::Phone,
        Self::SingleChoice,
        Self::MultiChoice,
        Self::Date,
        Self::Boolean,
    ];

    /// The type's name as stored and as seen in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::LongText => "long_text",
            Self::Number => "number",
            Self::Email => "email",
            Self::Phone => "phone",
            Self::SingleChoice => "single_choice",
            Self::MultiChoice => "multi_choice",
            Self::Date => "date",
            Self::Boolean => "boolean",
        }
    }

    /// Parses a stored type name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether answers are codes among the question's options.
    pub fn is_choice(self) -> bool {
        matches!(self, Self::SingleChoice | Self::MultiChoice)
    }
}

/// One option of a choice question: a stable code (what answers hold) and a label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceOption {
    /// Stable code, the value answers carry.
    pub code: String,
    /// Text shown to respondents.
    pub label: String,
}

/// A question as stored: the definition answers are validated against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// Question id.
    pub id: Uuid,
    /// Text shown to respondents.
    pub label: String,
    /// Kind of answer.
    #[serde(rename = "type")]
    pub qtype: QuestionType,
    /// Optional stable name, usable instead of the id when submitting answers.
    pub alias: Option<String>,
    /// Display order within the form.
    pub position: i32,
    /// Whether a submission must answer it.
    pub required: bool,
    /// Options of a choice question; empty otherwise.
    pub options: Vec<ChoiceOption>,
    /// For a phone question: the region (ISO 3166-1 alpha-2, `GB`) of numbers written without
    /// a country code, as libphonenumber's default region. `None`: a country code is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
}

/// A new question, as given to `POST /v1/forms` or `POST /v1/forms/{id}/questions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuestionSpec {
    /// Text shown to respondents.
    pub label: String,
    /// Kind of answer.
    #[serde(rename = "type")]
    pub qtype: QuestionType,
    /// Optional stable name.
    #[serde(default)]
    pub alias: Option<String>,
    /// Whether a submission must answer it.
    #[serde(default)]
    pub required: bool,
    /// Options, required for choice questions and refused for the others.
    #[serde(default)]
    pub options: Option<Vec<ChoiceOption>>,
    /// Phone questions only: the region of numbers written without a country code.
    #[serde(default)]
    pub default_region: Option<String>,
}

/// A new form, as given to `POST /v1/forms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormSpec {
    /// Title of the form.
    pub title: String,
    /// Optional description.
    #[serde(default)]
    pub description: Option<String>,
    /// Questions in display order.
    #[serde(default)]
    pub questions: Vec<QuestionSpec>,
}

/// A change to a question, as given to `PATCH /v1/forms/{id}/questions/{qid}`. Absent fields
/// are left as they are; `"alias": null` removes the alias.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuestionPatch {
    /// New label.
    #[serde(default)]
    pub label: Option<String>,
    /// New alias; `Some(None)` removes it.
    #[serde(default, deserialize_with = "present")]
    pub alias: Option<Option<String>>,
    /// New required flag.
    #[serde(default)]
    pub required: Option<bool>,
    /// New options (choice questions only). Existing answers keep the codes they hold.
    #[serde(default)]
    pub options: Option<Vec<ChoiceOption>>,
    /// New position.
    #[serde(default)]
    pub position: Option<i32>,
    /// The type cannot change once answers may exist; accepted only if unchanged.
    #[serde(default, rename = "type")]
    pub qtype: Option<QuestionType>,
    /// New default region of a phone question; `Some(None)` removes it.
    #[serde(default, deserialize_with = "present")]
    pub default_region: Option<Option<String>>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn push(errors: &mut Vec<FieldError>, field: &str, r: Result<(), (&'static str, String)>) {
    if let Err((code, message)) = r {
        errors.push(FieldError::new(field, code, message));
    }
}

/// Checks an alias: a lower-case identifier that cannot be mistaken for a question id.
fn check_alias(alias: &str) -> Result<(), (&'static str, String)> {
    let mut chars = alias.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || alias.len() > 63 {
        return Err((
            "invalid_alias",
            "alias must be 1 to 63 characters of a-z, 0-9 and '_', starting with a letter".into(),
        ));
    }
    if Uuid::parse_str(alias).is_ok() {
        return Err((
            "invalid_alias",
            "alias must not look like a question id".into(),
        ));
    }
    Ok(())
}

fn check_options(
    errors: &mut Vec<FieldError>,
    field: &str,
    qtype: QuestionType,
    options: Option<&[ChoiceOption]>,
) {
    match (qtype.is_choice(), options) {
        (true, None) | (true, Some([])) => errors.push(FieldError::new(
            format!("{field}.options"),
            "required",
            format!("a {} question needs at least one option", qtype.as_str()),
        )),
        (false, Some(_)) => errors.push(FieldError::new(
            format!("{field}.options"),
            "not_allowed",
            format!("a {} question takes no options", qtype.as_str()),
        )),
        (true, Some(options)) => {
            if options.len() > OPTIONS_MAX {
                errors.push(FieldError::new(
                    format!("{field}.options"),
                    "too_many",
                    format!("at most {OPTIONS_MAX} options"),
                ));
            }
            let mut seen = HashSet::new();
            for (i, o) in options.iter().enumerate() {
                let f = format!("{field}.options[{i}]");
                push(errors, &format!("{f}.code"), check_label(&o.code, CODE_MAX));
                push(
                    errors,
                    &format!("{f}.label"),
                    check_label(&o.label, LABEL_MAX),
                );
                if !seen.insert(o.code.as_str()) {
                    errors.push(FieldError::new(
                        format!("{f}.code"),
                        "duplicate",
                        format!("option code '{}' appears twice", o.code),
                    ));
                }
            }
        }
        (false, None) => {}
    }
}

/// Validates one new question. `field` is its path in the request body.
pub fn validate_question_spec(q: &QuestionSpec, field: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    push(
        &mut errors,
        &format!("{field}.label"),
        check_label(&q.label, LABEL_MAX),
    );
    if let Some(alias) = &q.alias {
        push(&mut errors, &format!("{field}.alias"), check_alias(alias));
    }
    check_options(&mut errors, field, q.qtype, q.options.as_deref());
    if let Some(region) = &q.default_region {
        push(
            &mut errors,
            &format!("{field}.default_region"),
            check_region(q.qtype, region),
        );
    }
    errors
}

/// Checks a phone question's default region: a region libphonenumber knows.
fn check_region(qtype: QuestionType, region: &str) -> Result<(), (&'static str, String)> {
    if qtype != QuestionType::Phone {
        return Err((
            "not_allowed",
            "only phone questions take a default region".into(),
        ));
    }
    if crate::text::phone_region(region).is_none() {
        return Err((
            "invalid_region",
            format!("'{region}' is not a region code (ISO 3166-1 alpha-2, e.g. GB)"),
        ));
    }
    Ok(())
}

/// Validates a new form and its questions (aliases unique within the form).
pub fn validate_form_spec(form: &FormSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    push(&mut errors, "title", check_label(&form.title, TITLE_MAX));
    if let Some(d) = &form.description {
        push(&mut errors, "description", check_text(d, DESCRIPTION_MAX));
    }
    if form.questions.len() > QUESTIONS_MAX {
        errors.push(FieldError::new(
            "questions",
            "too_many",
            format!("at most {QUESTIONS_MAX} questions"),
        ));
    }
    let mut aliases = HashSet::new();
    for (i, q) in form.questions.iter().enumerate() {
        let field = format!("questions[{i}]");
        errors.extend(validate_question_spec(q, &field));
        if let Some(alias) = &q.alias
            && !aliases.insert(alias.as_str())
        {
            errors.push(FieldError::new(
                format!("{field}.alias"),
                "duplicate",
                format!("alias '{alias}' is used by another question of this form"),
            ));
        }
    }
    errors
}

/// Validates a change to `current`; returns the question as it would be after the change.
pub fn validate_question_patch(
    current: &Question,
    patch: &QuestionPatch,
) -> Result<Question, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut next = current.clone();
    if let Some(t) = patch.qtype
        && t != current.qtype
    {
        errors.push(FieldError::new(
            "type",
            "immutable",
            "a question's type cannot change; add a new question and delete this one",
        ));
    }
    if let Some(label) = &patch.label {
        push(&mut errors, "label", check_label(label, LABEL_MAX));
        next.label = label.clone();
    }
    if let Some(alias) = &patch.alias {
        if let Some(a) = alias {
            push(&mut errors, "alias", check_alias(a));
        }
        next.alias = alias.clone();
    }
    if let Some(required) = patch.required {
        next.required = required;
    }
    if let Some(region) = &patch.default_region {
        if let Some(r) = region {
            push(
                &mut errors,
                "default_region",
                check_region(current.qtype, r),
            );
        }
        next.default_region = region.clone();
    }
    if let Some(position) = patch.position {
        next.position = position;
    }
    if let Some(options) = &patch.options {
        check_options(&mut errors, "", current.qtype, Some(options));
        next.options = options.clone();
    }
    // check_options prefixes "options" with the (empty) field path.
    for e in &mut errors {
        if let Some(rest) = e.field.strip_prefix('.') {
            e.field = rest.to_string();
        }
    }
    if errors.is_empty() {
        Ok(next)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> FormSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn accepts_a_well_formed_form() {
        let f = spec(serde_json::json!({
            "title": "Survey",
            "questions": [
                {"label": "Name", "type": "text", "alias": "name", "required": true},
                {"label": "Colour", "type": "single_choice", "options": [{"code": "r", "label": "Red"}]}
            ]
        }));
        assert_eq!(validate_form_spec(&f), vec![]);
    }

    #[test]
    fn refuses_bad_questions_with_their_paths() {
        let f = spec(serde_json::json!({
            "title": " ",
            "questions": [
                {"label": "A", "type": "text", "alias": "Bad-Alias"},
                {"label": "B", "type": "single_choice"},
                {"label": "C", "type": "number", "options": [{"code": "x", "label": "X"}]},
                {"label": "D", "type": "multi_choice", "options": [{"code": "x", "label": "X"}, {"code": "x", "label": "Y"}]},
                {"label": "E", "type": "text", "alias": "dup"},
                {"label": "F", "type": "text", "alias": "dup"},
                {"label": "G", "type": "text", "alias": "deadbeefdeadbeefdeadbeefdeadbeef"}
            ]
        }));
        let got: Vec<(String, &str)> = validate_form_spec(&f)
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect();
        assert_eq!(
            got,
            vec![
                ("title".into(), "blank"),
                ("questions[0].alias".into(), "invalid_alias"),
                ("questions[1].options".into(), "required"),
                ("questions[2].options".into(), "not_allowed"),
                ("questions[3].options[1].code".into(), "duplicate"),
                ("questions[5].alias".into(), "duplicate"),
                ("questions[6].alias".into(), "invalid_alias"),
            ]
        );
    }

    #[test]
    fn unknown_type_and_fields_are_refused_by_the_decoder() {
        let bad = serde_json::from_value::<FormSpec>(serde_json::json!({
            "title": "T", "questions": [{"label": "A", "type": "colour"}]
        }));
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("unknown variant `colour`")
        );
        let bad =
            serde_json::from_value::<FormSpec>(serde_json::json!({"title": "T", "colour": 1}));
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("unknown field `colour`")
        );
    }

    #[test]
    fn patch_keeps_type_and_can_clear_alias() {
        let q = Question {
            id: Uuid::nil(),
            label: "A".into(),
            qtype: QuestionType::Text,
            alias: Some("a".into()),
            position: 0,
            required: false,
            options: vec![],
            default_region: None,
        };
        let p: QuestionPatch = serde_json::from_str(r#"{"alias": null, "label": "B"}"#).unwrap();
        let next = validate_question_patch(&q, &p).unwrap();
        assert_eq!((next.alias, next.label.as_str()), (None, "B"));
        let p: QuestionPatch = serde_json::from_str(r#"{"type": "number"}"#).unwrap();
        assert_eq!(
            validate_question_patch(&q, &p).unwrap_err()[0].code,
            "immutable"
        );
        let p: QuestionPatch =
            serde_json::from_str(r#"{"options": [{"code": "a", "label": "A"}]}"#).unwrap();
        assert_eq!(
            validate_question_patch(&q, &p).unwrap_err()[0].field,
            "options"
        );
        let p: QuestionPatch = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(validate_question_patch(&q, &p).unwrap(), q);
    }

    #[test]
    fn type_names_round_trip() {
        for t in QuestionType::ALL {
            assert_eq!(QuestionType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }
}

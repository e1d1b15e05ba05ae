//! The domain model of Collect, free of IO: question types, the definition of a form's
//! questions, answer values and the rules that decide whether a submission fits its form.
//!
//! Everything here is pure so that the forms API, the CDC reader and the connectors agree on
//! one meaning of "a valid answer" and can unit-test it byte by byte.

mod answer;
mod error;
pub mod number;
mod question;
mod text;

pub use answer::{
    AnswerEntry, AnswerInputs, AnswerValue, ResponseDocument, apply_answer_patch, inputs_from_map,
    resolve_answers, validate_metadata,
};
pub use error::FieldError;
pub use number::{Decimal, NUMBER_MAX_DIGITS};
pub use question::{
    ChoiceOption, FormSpec, QUESTIONS_MAX, Question, QuestionPatch, QuestionSpec, QuestionType,
    validate_form_spec, validate_question_patch, validate_question_spec,
};
pub use text::{TEXT_MAX_CHARS, normalize_email, normalize_phone};

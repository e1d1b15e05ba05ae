//! A validation failure tied to one field of the input.

use serde::Serialize;

/// One reason why an input was refused, naming the field it concerns.
///
/// `field` is a dotted path into the request body (`questions[2].options[0].code`,
/// `answers.email`), `code` a stable machine-readable word, `message` a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the offending field in the request body.
    pub field: String,
    /// Stable, machine-readable reason (`required`, `wrong_type`, `too_long`, ...).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

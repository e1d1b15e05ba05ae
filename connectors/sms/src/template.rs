//! Message templates: text with `{{name}}` placeholders.

use collect_events::{Answer, ResponseEvent};

/// Longest message body Twilio takes, in characters (UTF-16 units; error 21617).
pub const MAX_CHARS: usize = 1600;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    /// Parses `text`; placeholders are `{{name}}` with letters, digits, `_` and `-`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("template must not be empty".into());
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "unclosed '{{{{' at character {}",
                    text.len() - rest.len() + open
                )
            })?;
            let name = after[..close].trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "placeholder '{{{{{}}}}}' is not a name",
                    &after[..close]
                ));
            }
            pieces.push(Piece::Field(name.to_string()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Self(pieces))
    }

    /// The message for `r`: unknown or unanswered placeholders become empty; cut to
    /// `max_segments` segments and [`MAX_CHARS`] in the encoding it is sent in
    /// ([`crate::encoding::cut`]).
    pub fn render(&self, r: &ResponseEvent, max_segments: usize) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(name) => out.push_str(&field(r, name)),
            }
        }
        crate::encoding::cut(&out, max_segments, MAX_CHARS)
    }
}

/// An answer as text.
pub fn answer_text(a: &Answer) -> String {
    if let Some(t) = &a.text {
        return t.clone();
    }
    if let Some(n) = &a.number {
        return n.strip_suffix(".0").unwrap_or(n).to_string();
    }
    if let Some(b) = a.boolean {
        return if b { "yes" } else { "no" }.into();
    }
    if let Some(d) = a.date {
        return chrono::NaiveDate::from_num_days_from_ce_opt(d + 719_163)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
    }
    if let Some(c) = &a.choices {
        return c.join(", ");
    }
    String::new()
}

/// The answer to the question `key` (alias or id).
pub fn answer<'a>(r: &'a ResponseEvent, key: &str) -> Option<&'a Answer> {
    r.answers
        .iter()
        .find(|a| a.alias.as_deref() == Some(key) || a.question_id == key)
}

fn field(r: &ResponseEvent, name: &str) -> String {
    match name {
        "response_id" => r.response_id.clone(),
        "form_id" => r.form_id.clone(),
        _ => answer(r, name).map(answer_text).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_renders_and_refuses() {
        let t = Template::parse("Thanks {{ name }}! Ref {{response_id}} {{missing}}.").unwrap();
        let r = ResponseEvent {
            event_id: String::new(),
            op: collect_events::ResponseOp::Created,
            response_id: "r1".into(),
            form_id: "f1".into(),
            org_id: String::new(),
            revision: 1,
            source: String::new(),
            metadata_json: "{}".into(),
            answers: vec![Answer {
                question_id: "q1".into(),
                alias: Some("name".into()),
                question_type: "text".into(),
                text: Some("Ada".into()),
                number: None,
                boolean: None,
                date: None,
                choices: None,
            }],
            submitted_at: 0,
            updated_at: 0,
            deleted_at: None,
            commit_lsn: 0,
            commit_ts: 0,
            xid: 0,
        };
        assert_eq!(t.render(&r, 10), "Thanks Ada! Ref r1 .");
        assert!(
            Template::parse("Hi {{name")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            Template::parse("Hi {{na me}}")
                .unwrap_err()
                .contains("not a name")
        );
        assert!(Template::parse("  ").is_err());
        let long = Template::parse(&"x".repeat(2000)).unwrap().render(&r, 10);
        assert_eq!(crate::encoding::segments(&long), 10);
        assert!(long.ends_with("..."));
    }
}

//! Where things go in the sheet, and what the cells hold (pure).
//!
//! Row 1 is the header: the response's own fields, then one column per question, in the
//! order questions were first seen; a new question adds a column at the right, a relabel
//! rewrites its header cell, a deleted question keeps its column. Every response has one row,
//! fixed when it is first seen.

use chrono::{DateTime, NaiveDate};
use collect_events::{Answer, ResponseEvent, ResponseOp};
use serde_json::Value;

use crate::config::OnDelete;

/// Headers of the columns before the questions.
pub const FIXED: [&str; 5] = [
    "Response ID",
    "Submitted at",
    "Updated at",
    "Revision",
    "Status",
];

/// Most characters Google keeps in a cell.
pub const CELL_CHARS: usize = 50_000;
/// What replaces the end of a longer text.
pub const TRUNCATED: &str = "…[truncated]";

/// A0-style column letters of a 0-based index.
pub fn column_letters(mut index: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push((b'A' + (index % 26) as u8) as char);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    out.iter().rev().collect()
}

/// `'Tab'!A{row}:{last}{row}` for a 0-based row and a width.
pub fn row_range(tab: &str, row: u32, width: usize) -> String {
    format!(
        "'{}'!A{}:{}{}",
        tab.replace('\'', "''"),
        row + 1,
        column_letters(width.saturating_sub(1)),
        row + 1
    )
}

/// A text for a cell: at most [`CELL_CHARS`] characters, marked when cut.
pub fn cell_text(s: &str) -> Value {
    if s.chars().count() <= CELL_CHARS {
        return Value::String(s.to_string());
    }
    let keep = CELL_CHARS - TRUNCATED.chars().count();
    let mut t: String = s.chars().take(keep).collect();
    t.push_str(TRUNCATED);
    Value::String(t)
}

fn time(micros: i64) -> Value {
    DateTime::from_timestamp_micros(micros)
        .map(|t| Value::String(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()))
        .unwrap_or(Value::Null)
}

/// An answer's cell.
pub fn answer_cell(a: &Answer) -> Value {
    if let Some(t) = &a.text {
        return cell_text(t);
    }
    if let Some(n) = &a.number {
        // A number the sheet can compute with where a double keeps its digits (the double's
        // shortest form is the same decimal); the exact digits as text otherwise.
        return match collect_model::Decimal::parse(n)
            .ok()
            .and_then(|d| d.to_f64_exact())
        {
            // Whole numbers as integers (`2`, not `2.0`), as a person would type them.
            Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Value::from(x as i64),
            Some(x) => serde_json::Number::from_f64(x)
                .map_or_else(|| Value::String(n.clone()), Value::Number),
            None => Value::String(n.clone()),
        };
    }
    if let Some(b) = a.boolean {
        return Value::Bool(b);
    }
    if let Some(d) = a.date {
        let day = NaiveDate::from_num_days_from_ce_opt(d + 719_163);
        return day
            .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
            .unwrap_or(Value::Null);
    }
    if let Some(c) = &a.choices {
        return cell_text(&c.join(", "));
    }
    Value::String(String::new())
}

/// The cells of a response's row, `width` wide; `column_of` gives each answer's column.
pub fn row_cells(
    r: &ResponseEvent,
    width: usize,
    on_delete: OnDelete,
    column_of: impl Fn(&str) -> Option<usize>,
) -> Vec<Value> {
    let deleted = r.op == ResponseOp::Deleted || r.deleted_at.is_some();
    let mut cells = vec![Value::String(String::new()); width.max(FIXED.len())];
    cells[0] = Value::String(r.response_id.clone());
    cells[1] = time(r.submitted_at);
    cells[2] = time(r.updated_at);
    cells[3] = Value::from(r.revision);
    cells[4] = Value::String(if deleted { "deleted" } else { "active" }.into());
    if deleted && on_delete == OnDelete::Clear {
        return cells;
    }
    for a in &r.answers {
        if let Some(c) = column_of(&a.question_id)
            && c < cells.len()
        {
            cells[c] = answer_cell(a);
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer {
            question_id: "q".into(),
            alias: None,
            question_type: "text".into(),
            text: None,
            number: None,
            boolean: None,
            date: None,
            choices: None,
        }
    }

    #[test]
    fn cells() {
        assert_eq!(
            answer_cell(&Answer {
                text: Some("=SUM(A1)".into()),
                ..answer()
            }),
            Value::String("=SUM(A1)".into())
        );
        assert_eq!(
            answer_cell(&Answer {
                number: Some("42.5".into()),
                ..answer()
            }),
            serde_json::json!(42.5)
        );
        assert_eq!(
            answer_cell(&Answer {
                number: Some("2.0".into()),
                ..answer()
            }),
            serde_json::json!(2)
        );
        assert_eq!(
            answer_cell(&Answer {
                number: Some("12345678901234567890.5".into()),
                ..answer()
            }),
            Value::String("12345678901234567890.5".into())
        );
        for exact in [
            "12345678901234567890123",
            "0.12345678901234567890",
            "9007199254740993",
        ] {
            assert_eq!(
                answer_cell(&Answer {
                    number: Some(exact.into()),
                    ..answer()
                }),
                Value::String(exact.into())
            );
        }
        assert_eq!(
            answer_cell(&Answer {
                number: Some("0.1".into()),
                ..answer()
            }),
            serde_json::json!(0.1)
        );
        assert_eq!(
            answer_cell(&Answer {
                date: Some(19_000),
                ..answer()
            }),
            Value::String("2022-01-08".into())
        );
        assert_eq!(
            answer_cell(&Answer {
                choices: Some(vec!["a".into(), "b".into()]),
                ..answer()
            }),
            Value::String("a, b".into())
        );
        let long = "é".repeat(CELL_CHARS + 10);
        let Value::String(cut) = cell_text(&long) else {
            panic!()
        };
        assert_eq!(cut.chars().count(), CELL_CHARS);
        assert!(cut.ends_with(TRUNCATED));
        assert_eq!(column_letters(0), "A");
        assert_eq!(column_letters(27), "AB");
        assert_eq!(row_range("It's", 4, 7), "'It''s'!A5:G5");
    }
}

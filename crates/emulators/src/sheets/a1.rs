//! A1 notation, as the Sheets API reads it: `Sheet1!A1:C5`, `'My sheet'!B:B`, `A1`, `Sheet1`,
//! `Sheet1!3:4`. Rows and columns are 0-based here.

/// A parsed range. `None` bounds are open (whole rows or columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct A1 {
    /// Sheet title, if the range names one.
    pub sheet: Option<String>,
    /// First row.
    pub start_row: Option<u32>,
    /// First column.
    pub start_col: Option<u32>,
    /// Last row (inclusive).
    pub end_row: Option<u32>,
    /// Last column (inclusive).
    pub end_col: Option<u32>,
    /// Whether the range names a second corner (`A1:C3`) rather than one cell (`A1`).
    pub has_end: bool,
}

/// Column letters (`A`, `Z`, `AA`) to a 0-based index.
pub fn column_index(letters: &str) -> Option<u32> {
    if letters.is_empty() || letters.len() > 3 {
        return None;
    }
    let mut n: u32 = 0;
    for c in letters.chars() {
        let c = c.to_ascii_uppercase();
        if !c.is_ascii_uppercase() {
            return None;
        }
        n = n * 26 + (c as u32 - 'A' as u32 + 1);
    }
    Some(n - 1)
}

/// A 0-based column index to letters.
pub fn column_letters(mut index: u32) -> String {
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

/// One side of a range: `B3` (both), `B` (column only), `3` (row only).
fn cell(s: &str) -> Option<(Option<u32>, Option<u32>)> {
    let split = s.find(|c: char| c.is_ascii_digit()).unwrap_or(s.len());
    let (letters, digits) = s.split_at(split);
    let col = if letters.is_empty() {
        None
    } else {
        Some(column_index(letters)?)
    };
    let row = if digits.is_empty() {
        None
    } else {
        let n: u32 = digits.parse().ok()?;
        if n == 0 {
            return None;
        }
        Some(n - 1)
    };
    if col.is_none() && row.is_none() {
        return None;
    }
    Some((row, col))
}

/// Quotes a sheet title for A1 when it needs it.
pub fn quote_sheet(title: &str) -> String {
    if title.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !title.chars().next().is_some_and(|c| c.is_ascii_digit())
    {
        title.to_string()
    } else {
        format!("'{}'", title.replace('\'', "''"))
    }
}

/// Parses A1 notation; `None` when it is not a valid range.
pub fn parse(range: &str) -> Option<A1> {
    let range = range.trim();
    let (sheet, rest) = if let Some(stripped) = range.strip_prefix('\'') {
        // 'Sheet ''name'''!A1
        let mut title = String::new();
        let mut chars = stripped.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().map(|(_, n)| *n) == Some('\'') {
                    title.push('\'');
                    chars.next();
                } else {
                    end = Some(i);
                    break;
                }
            } else {
                title.push(c);
            }
        }
        let after = &stripped[end? + 1..];
        match after.strip_prefix('!') {
            Some(r) => (Some(title), r),
            None if after.is_empty() => (Some(title), ""),
            None => return None,
        }
    } else if let Some((s, r)) = range.split_once('!') {
        (Some(s.to_string()), r)
    } else if cell(range.split(':').next().unwrap_or_default()).is_some() {
        (None, range)
    } else {
        (Some(range.to_string()), "")
    };
    if rest.is_empty() {
        return Some(A1 {
            sheet,
            start_row: None,
            start_col: None,
            end_row: None,
            end_col: None,
            has_end: true,
        });
    }
    let (a, b) = match rest.split_once(':') {
        Some((a, b)) => (cell(a)?, Some(cell(b)?)),
        None => (cell(rest)?, None),
    };
    let has_end = b.is_some();
    let (end_row, end_col) = match b {
        Some((r, c)) => (r, c),
        // A single cell: the range is that cell.
        None => a,
    };
    Some(A1 {
        sheet,
        start_row: a.0,
        start_col: a.1,
        end_row,
        end_col,
        has_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns() {
        for (s, i) in [
            ("A", 0),
            ("Z", 25),
            ("AA", 26),
            ("AZ", 51),
            ("BA", 52),
            ("ZZ", 701),
            ("AAA", 702),
        ] {
            assert_eq!(column_index(s), Some(i));
            assert_eq!(column_letters(i), s);
        }
        assert_eq!(column_index("a1"), None);
    }

    #[test]
    fn ranges() {
        let r = parse("Sheet1!A1:C5").unwrap();
        assert_eq!(
            (
                r.sheet.as_deref(),
                r.start_row,
                r.start_col,
                r.end_row,
                r.end_col
            ),
            (Some("Sheet1"), Some(0), Some(0), Some(4), Some(2))
        );
        let r = parse("'It''s here'!B:B").unwrap();
        assert_eq!(
            (
                r.sheet.as_deref(),
                r.start_row,
                r.start_col,
                r.end_row,
                r.end_col
            ),
            (Some("It's here"), None, Some(1), None, Some(1))
        );
        let r = parse("A7").unwrap();
        assert_eq!(
            (r.sheet, r.start_row, r.end_row, r.start_col),
            (None, Some(6), Some(6), Some(0))
        );
        let r = parse("Responses").unwrap();
        assert_eq!((r.sheet.as_deref(), r.start_row), (Some("Responses"), None));
        let r = parse("Sheet1!3:4").unwrap();
        assert_eq!(
            (r.start_row, r.end_row, r.start_col),
            (Some(2), Some(3), None)
        );
        for bad in ["Sheet1!A0", "Sheet1!:B2", "'unterminated!A1", "Sheet1!A1:"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(quote_sheet("Sheet1"), "Sheet1");
        assert_eq!(quote_sheet("My sheet"), "'My sheet'");
    }
}

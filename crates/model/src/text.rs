//! Text rules shared by every textual field: length limits, forbidden characters, e-mail
//! addresses and phone numbers.

/// Longest text answer accepted, in characters (Unicode scalar values).
pub const TEXT_MAX_CHARS: usize = 50_000;

/// Checks a free text: at most `max` characters and no NUL (Postgres cannot store it).
pub(crate) fn check_text(value: &str, max: usize) -> Result<(), (&'static str, String)> {
    if value.contains('\0') {
        return Err((
            "invalid_character",
            "text must not contain NUL characters".into(),
        ));
    }
    let chars = value.chars().count();
    if chars > max {
        return Err((
            "too_long",
            format!("text is {chars} characters long; the limit is {max}"),
        ));
    }
    Ok(())
}

/// Checks a required short text (labels, titles): not blank, at most `max` characters.
pub(crate) fn check_label(value: &str, max: usize) -> Result<(), (&'static str, String)> {
    if value.trim().is_empty() {
        return Err(("blank", "must not be blank".into()));
    }
    check_text(value, max)
}

/// Validates an e-mail address and returns it with its domain lower-cased.
///
/// The rule is the practical subset of RFC 5321 that mail providers accept: one `@`, a local
/// part of 1 to 64 printable characters without spaces, and a domain of at least two
/// dot-separated labels of letters, digits and hyphens, 254 characters at most in all.
pub fn normalize_email(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.len() > 254 {
        return Err("e-mail address is longer than 254 characters".into());
    }
    let Some((local, domain)) = value.rsplit_once('@') else {
        return Err("e-mail address must contain '@'".into());
    };
    if local.is_empty() || local.len() > 64 {
        return Err("the part before '@' must be 1 to 64 characters".into());
    }
    let local_ok = local.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || "!#$%&'*+-/=?^_`{|}~.".contains(c)
            || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
    });
    if !local_ok || local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("the part before '@' has characters an address cannot hold".into());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("the domain must contain a dot".into());
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
            });
        if !ok {
            return Err(format!("'{domain}' is not a valid domain"));
        }
    }
    Ok(format!("{local}@{}", domain.to_lowercase()))
}

/// Validates a phone number in international form and returns it as E.164 (`+` and 8 to 15
/// digits, no leading zero in the country code).
///
/// Spaces, dashes, dots and parentheses are accepted as separators, and a leading `00` as the
/// international prefix. Numbers without a country code are refused rather than guessed.
pub fn normalize_phone(value: &str) -> Result<String, String> {
    let trimmed = value.trim();
    let rest = if let Some(r) = trimmed.strip_prefix('+') {
        r
    } else if let Some(r) = trimmed.strip_prefix("00") {
        r
    } else {
        return Err("phone number must start with '+' and the country code (E.164)".into());
    };
    let mut digits = String::with_capacity(16);
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(format!("phone number contains '{c}'")),
        }
    }
    if !(8..=15).contains(&digits.len()) {
        return Err(format!(
            "phone number has {} digits; E.164 allows 8 to 15",
            digits.len()
        ));
    }
    if digits.starts_with('0') {
        return Err("country code cannot start with 0".into());
    }
    Ok(format!("+{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "Ann@example.com"
        );
        assert!(normalize_email("a.b+tag@sub.example.org").is_ok());
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@x.io",
            "a@x..io",
            "a@-x.io",
            ".a@x.io",
            "a..b@x.io",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad} should be refused");
        }
        assert!(normalize_email(&format!("{}@x.io", "a".repeat(65))).is_err());
    }

    #[test]
    fn phones() {
        assert_eq!(
            normalize_phone("+1 (415) 555-0100").unwrap(),
            "+14155550100"
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0958").unwrap(),
            "+442079460958"
        );
        for bad in [
            "4155550100",
            "+1 415",
            "+0123456789",
            "+1415555010012345",
            "+1-415-CALL-NOW",
            "",
        ] {
            assert!(normalize_phone(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn text_limits() {
        assert!(check_text(&"é".repeat(TEXT_MAX_CHARS), TEXT_MAX_CHARS).is_ok());
        assert_eq!(
            check_text(&"a".repeat(TEXT_MAX_CHARS + 1), TEXT_MAX_CHARS)
                .unwrap_err()
                .0,
            "too_long"
        );
        assert_eq!(check_text("a\0b", 10).unwrap_err().0, "invalid_character");
        assert_eq!(check_label("   ", 10).unwrap_err().0, "blank");
    }
}

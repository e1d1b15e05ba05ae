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

/// The libphonenumber region of an ISO 3166-1 alpha-2 code (`GB`), if it is one.
pub(crate) fn phone_region(code: &str) -> Option<phonenumber::country::Id> {
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    code.parse().ok()
}

/// Parses, validates and formats a phone number with libphonenumber's metadata (the
/// `phonenumber` crate) and returns it in E.164 (`+447700900123`).
///
/// Written with its country code (`+44 (0)20 7946 0958`, or `00` as the international
/// prefix), a national trunk prefix is dropped where that country's rules say so (the UK's
/// `0`) and kept where it belongs to the number (Italy's leading `0`). Without a country code
/// the number is read as a number of `default_region` (an ISO 3166-1 alpha-2 code), and
/// refused when there is none rather than guessed. A number libphonenumber does not know as
/// valid for its country (impossible lengths, unassigned ranges such as `+1 000 000 0000`) is
/// refused.
pub fn normalize_phone(value: &str, default_region: Option<&str>) -> Result<String, String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err("phone number is empty".into());
    }
    if trimmed.chars().count() > 64 {
        return Err("phone number is longer than 64 characters".into());
    }
    if let Some(c) = trimmed
        .chars()
        .find(|c| !(c.is_ascii_digit() || " -.()/+\u{a0}".contains(*c)))
    {
        return Err(format!("phone number contains '{c}'"));
    }
    // A leading 00 is the international prefix of most countries (ITU-T E.164 annex).
    let international = match trimmed.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => trimmed.to_string(),
    };
    let region = match default_region {
        Some(code) => {
            Some(phone_region(code).ok_or_else(|| format!("'{code}' is not a region code"))?)
        }
        None => None,
    };
    if region.is_none() && !international.starts_with('+') {
        return Err(
            "phone number must start with '+' and the country code (E.164), or the question must name a default region".into(),
        );
    }
    let number = phonenumber::parse(region, &international)
        .map_err(|e| format!("'{trimmed}' is not a phone number: {e}"))?;
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    if phonenumber::is_valid(&number) {
        return Ok(e164);
    }
    // libphonenumber only parsed the trunk prefix away when the rest was a valid number; a
    // number reserved for fiction keeps it: drop it by the country's rule, then check.
    let national = number.national().to_string();
    let code = number.code().value();
    let stripped = phonenumber::metadata::DATABASE
        .by_code(&code)
        .unwrap_or_default()
        .into_iter()
        .find_map(|m| m.national_prefix().and_then(|p| national.strip_prefix(p)))
        .unwrap_or(&national)
        .to_string();
    if reserved_for_fiction(code, &stripped) {
        return Ok(format!("+{code}{stripped}"));
    }
    Err(format!(
        "'{trimmed}' is not a valid number for its country (libphonenumber)"
    ))
}

/// Numbers a regulator reserves for drama and documentation, which forms see in examples and
/// tests: valid in form, never assigned, so libphonenumber does not list them. Ofcom's UK
/// mobile range 07700 900000 to 900999 and 01632 960000 to 960999 (the UK's other drama
/// ranges, such as 020 7946 0xxx, sit inside assigned ranges and are valid already).
fn reserved_for_fiction(code: u16, national: &str) -> bool {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    code == 44
        && national.len() == 10
        && digits(national)
        && (national.starts_with("7700900") || national.starts_with("1632960"))
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
        let e164 = |s: &str| normalize_phone(s, None).unwrap();
        assert_eq!(e164("+1 (415) 555-0100"), "+14155550100");
        assert_eq!(e164("0044 20 7946 0958"), "+442079460958");
        // The UK's trunk 0 written after the country code is dropped, as libphonenumber does.
        assert_eq!(e164("+44 (0)20 7946 0958"), "+442079460958");
        assert_eq!(e164("+44 07911 123456"), "+447911123456");
        assert_eq!(e164("+44 07700 900000"), "+447700900000");
        assert_eq!(e164("+49 (0)30 901820"), "+4930901820");
        // Italy's leading 0 belongs to the number and stays.
        assert_eq!(e164("+39 06 6982 1234"), "+390669821234");
        // Without a country code: the question's default region.
        assert_eq!(
            normalize_phone("020 7946 0958", Some("GB")).unwrap(),
            "+442079460958"
        );
        assert_eq!(
            normalize_phone("(415) 555-0100", Some("US")).unwrap(),
            "+14155550100"
        );
        // A country code wins over the default region.
        assert_eq!(
            normalize_phone("+33 1 42 68 53 00", Some("GB")).unwrap(),
            "+33142685300"
        );
        for bad in [
            "4155550100",
            "+1 415",
            "+0123456789",
            "+1415555010012345",
            "+1-415-CALL-NOW",
            "+1 000 000 0000",
            "+44 20 1234",
            "+1234",
            "",
        ] {
            assert!(
                normalize_phone(bad, None).is_err(),
                "{bad} should be refused"
            );
        }
        assert!(normalize_phone("020 7946 0958", Some("gb")).is_err());
        assert!(normalize_phone("020 7946 0958", Some("ZZ")).is_err());
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

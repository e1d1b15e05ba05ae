//! Which `To` and `From` numbers the emulator takes, and the ones Twilio documents as magic.
//!
//! Twilio refuses a `To` that is not a valid phone number (21211) and a `From` that is not
//! one (21212). "Valid" is decided here by libphonenumber's metadata (the `phonenumber`
//! crate): the number must be written in E.164 (`+`, country code, national number, nothing
//! else), and libphonenumber must know it as a valid number of its country, so `+1234`,
//! `+10000000000` or a UK number with its trunk `0` kept (`+4402079460958`) are refused.
//!
//! Twilio's magic test numbers `+15005550000` to `+15005550009` (Twilio's "Test
//! credentials" page) answer as Twilio documents each one (see [`magic_to`] and
//! [`magic_from`]); `+15005550006` is the valid sender. libphonenumber knows them as valid
//! already (the US 500 area code holds personal numbers), and a test says so.
//!
//! One range is taken although libphonenumber does not list it: Ofcom's drama range
//! `+447700900000` to `+447700900999`, valid in form, reserved for fiction and never
//! assigned.

/// Whether `n` is a phone number Twilio would take as `To` or `From`: E.164 and valid for
/// its country by libphonenumber, or in Ofcom's drama range.
pub fn is_valid_number(n: &str) -> bool {
    let Some(digits) = n.strip_prefix('+') else {
        return false;
    };
    // E.164: a country code that does not start with 0, at most 15 digits in all.
    if !(2..=15).contains(&digits.len())
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.starts_with('0')
    {
        return false;
    }
    if is_ofcom_drama(digits) {
        return true;
    }
    match phonenumber::parse(None, n) {
        // The number must be the one written: libphonenumber may read past a trunk prefix
        // or an extension that E.164 has no room for.
        Ok(parsed) => {
            phonenumber::is_valid(&parsed)
                && parsed.format().mode(phonenumber::Mode::E164).to_string() == n
        }
        Err(_) => false,
    }
}

/// Ofcom's UK mobile drama range, 07700 900000 to 07700 900999.
fn is_ofcom_drama(digits: &str) -> bool {
    digits.len() == 12 && digits.starts_with("447700900")
}

/// What Twilio answers for a magic `To` number, as its "Test credentials" page lists them:
/// (error code, message). `None` for every other number.
pub fn magic_to(to: &str) -> Option<(u32, String)> {
    Some(match to {
        "+15005550001" => (
            21211,
            format!("The 'To' number {to} is not a valid phone number."),
        ),
        "+15005550002" => (
            21612,
            format!(
                "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number via SMS."
            ),
        ),
        "+15005550003" => (
            21408,
            format!(
                "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}."
            ),
        ),
        "+15005550004" => (
            21610,
            "Attempt to send to unsubscribed recipient".to_string(),
        ),
        "+15005550009" => (
            21614,
            format!("'To' number {to} is not a valid mobile number"),
        ),
        _ => return None,
    })
}

/// What Twilio answers for a magic `From` number: `+15005550006` sends, the others are
/// refused as the "Test credentials" page lists them. `None` for every other number.
pub fn magic_from(from: &str) -> Option<(u32, String)> {
    Some(match from {
        "+15005550001" => (
            21212,
            format!(
                "The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."
            ),
        ),
        "+15005550007" => (
            21606,
            format!(
                "The 'From' phone number provided ({from}) is not a valid message-capable Twilio phone number for this destination/account."
            ),
        ),
        "+15005550008" => (
            21611,
            format!(
                "This 'From' number {from} has exceeded the maximum number of queued messages."
            ),
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_numbers_by_libphonenumber() {
        for ok in [
            "+4791234567",
            "+4790000000",
            "+442079460958",
            "+16502530011",
            "+14155552671",
            "+390669821234",
            "+33142685300",
            "+15005550006",
            "+15005550100",
            "+447700900000",
            "+447700900999",
            // Recipients the connector's and the pipeline's tests text through the emulator.
            "+4799999999",
            "+4791234568",
            "+4790000001",
            "+4790000002",
            "+4791000000",
            "+4791000199",
            "+16502530001",
            "+16502530013",
        ] {
            assert!(is_valid_number(ok), "{ok} must be valid");
        }
        for bad in [
            "+1234",
            "+10000000000",
            "+4402079460958",
            "+0123",
            "91234567",
            "+47 91234567",
            "+4791234567x",
            "+",
            "",
            "+447700901000",
            "+1415555267123456",
        ] {
            assert!(!is_valid_number(bad), "{bad} must be invalid");
        }
    }

    #[test]
    fn libphonenumber_knows_twilios_magic_numbers_as_valid() {
        for n in ["+15005550006", "+15005550001", "+15005550009"] {
            let parsed = phonenumber::parse(None, n).map(|p| phonenumber::is_valid(&p));
            assert_eq!(parsed.ok(), Some(true), "{n}");
        }
        // The drama range is not listed: it is valid only by the rule above.
        let drama = phonenumber::parse(None, "+447700900000").map(|p| phonenumber::is_valid(&p));
        assert_eq!(drama.ok(), Some(false));
    }

    #[test]
    fn magic_numbers_answer_as_twilio_lists_them() {
        assert_eq!(magic_to("+15005550001").map(|m| m.0), Some(21211));
        assert_eq!(magic_to("+15005550009").map(|m| m.0), Some(21614));
        assert_eq!(magic_to("+15005550006"), None);
        assert_eq!(magic_from("+15005550001").map(|m| m.0), Some(21212));
        assert_eq!(magic_from("+15005550006"), None);
        assert_eq!(magic_from("+4791234567"), None);
    }
}

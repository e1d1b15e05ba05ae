//! How many SMS segments a body takes, in the encoding Twilio sends it in.
//!
//! Twilio sends a body in GSM-7 when every character is in the GSM 03.38 (3GPP TS 23.038)
//! default alphabet or its extension table, and falls back to UCS-2 otherwise (Twilio's
//! glossary, "What is UCS-2 character encoding?" and "How long can a message be?"). One
//! segment carries 140 octets: 160 septets in GSM-7, 70 UTF-16 code units in UCS-2. A
//! longer body is concatenated, and each segment gives 6 octets to the user data header,
//! leaving 153 septets or 67 code units. A character of the extension table (`^{}\[~]|€`
//! and form feed) is an escape and a septet: two septets. A character outside the Basic
//! Multilingual Plane is a surrogate pair: two code units. Neither is split across two
//! segments (TS 23.038 forbids splitting an escape sequence; a split surrogate would show as
//! garbage), so segments are filled character by character.

/// The encoding a body is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// GSM 03.38 default alphabet and extension table, 7 bits a character.
    Gsm7,
    /// UCS-2 (UTF-16 code units), 16 bits a unit.
    Ucs2,
}

impl Encoding {
    /// The name Twilio's documentation uses.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

/// The GSM 03.38 default alphabet, in code order (0x1B, the escape, left out).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: each is the escape then its code, two septets.
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// Septets of `c` in GSM-7, or `None` when GSM-7 has no such character.
fn septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The encoding of `body` and its number of segments (at least 1).
pub fn segments(body: &str) -> (Encoding, usize) {
    let gsm: Option<Vec<usize>> = body.chars().map(septets).collect();
    let (encoding, units, one, many) = match gsm {
        Some(units) => (Encoding::Gsm7, units, 160, 153),
        None => (
            Encoding::Ucs2,
            body.chars().map(char::len_utf16).collect(),
            70,
            67,
        ),
    };
    if units.iter().sum::<usize>() <= one {
        return (encoding, 1);
    }
    let (mut count, mut free) = (1, many);
    for u in units {
        if u > free {
            count += 1;
            free = many;
        }
        free -= u;
    }
    (encoding, count)
}

/// Length of `body` as Twilio's 1600-character limit counts it: UTF-16 code units, so that
/// a character outside the Basic Multilingual Plane (an emoji) counts twice (Twilio's page
/// on error 21617).
pub fn limit_length(body: &str) -> usize {
    body.encode_utf16().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_fills_160_then_153() {
        assert_eq!(segments("x"), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"x".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"x".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"x".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"x".repeat(307)), (Encoding::Gsm7, 3));
        assert_eq!(segments(&"x".repeat(1600)), (Encoding::Gsm7, 11));
        // The whole default alphabet is GSM-7, accents and Greek capitals included.
        assert_eq!(segments(GSM7_BASIC).0, Encoding::Gsm7);
        assert_eq!(segments("Ærøskøbing: 5 € ~ Ωmega").0, Encoding::Gsm7);
    }

    #[test]
    fn extension_characters_take_two_septets() {
        assert_eq!(segments(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"€".repeat(81)), (Encoding::Gsm7, 2));
        assert_eq!(
            segments(&format!("{}[", "x".repeat(159))),
            (Encoding::Gsm7, 2)
        );
        // 152 septets then an escape: it does not fit in the first segment's last septet.
        let body = format!("{}{}", "x".repeat(152), "^".repeat(5));
        assert_eq!(segments(&body), (Encoding::Gsm7, 2));
        let body = format!("{}{}", "x".repeat(152), "^".repeat(77));
        assert_eq!(segments(&body), (Encoding::Gsm7, 3));
    }

    #[test]
    fn anything_else_is_ucs2_by_utf16_units() {
        // A backtick is ASCII but not GSM-7; 'ç' is not in the default alphabet ('Ç' is).
        assert_eq!(segments("`").0, Encoding::Ucs2);
        assert_eq!(segments("ç").0, Encoding::Ucs2);
        assert_eq!(segments(&"ж".repeat(70)), (Encoding::Ucs2, 1));
        assert_eq!(segments(&"ж".repeat(71)), (Encoding::Ucs2, 2));
        assert_eq!(segments(&"ж".repeat(134)), (Encoding::Ucs2, 2));
        assert_eq!(segments(&"ж".repeat(135)), (Encoding::Ucs2, 3));
        // An emoji is two code units.
        assert_eq!(segments(&"😀".repeat(35)), (Encoding::Ucs2, 1));
        assert_eq!(segments(&"😀".repeat(36)), (Encoding::Ucs2, 2));
        assert_eq!(
            segments(&format!("{}😀😀", "ж".repeat(66))),
            (Encoding::Ucs2, 1)
        );
        // 66 units then surrogate pairs: no pair is split, so each segment after the first
        // holds 33 pairs (66 units), and 34 pairs need two more (134 units would fit in 2).
        let body = format!("{}{}", "ж".repeat(66), "😀".repeat(34));
        assert_eq!(segments(&body), (Encoding::Ucs2, 3));
        assert_eq!(limit_length("😀x"), 3);
    }
}

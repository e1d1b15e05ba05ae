//! Message length as the carrier counts it (3GPP TS 23.038, and Twilio's "What the heck is a
//! segment?"): a text made only of characters of the GSM 03.38 default alphabet is sent in
//! GSM-7, where a character of the extension table (`^ { } \ [ ~ ] | €` and form feed)
//! takes two septets; any other character makes the whole message UCS-2, counted in UTF-16
//! code units. One segment holds 160 septets or 70 units; a concatenated message 153 or 67
//! per segment (the rest is the concatenation header). A cut keeps the message within its
//! limit in the encoding it will be sent in, with a cut marker of that encoding.

/// Characters of the GSM 03.38 default alphabet (one septet each).
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters of the GSM 03.38 extension table (an escape and a septet: two each).
const EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// How a message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// GSM 03.38 7-bit default alphabet.
    Gsm7,
    /// UCS-2 (UTF-16 code units).
    Ucs2,
}

/// The encoding `text` is sent in.
pub fn encoding(text: &str) -> Encoding {
    if text
        .chars()
        .all(|c| BASIC.contains(c) || EXTENSION.contains(c))
    {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// What one character costs in `enc`: septets for GSM-7, UTF-16 units for UCS-2.
fn cost(c: char, enc: Encoding) -> usize {
    match enc {
        Encoding::Gsm7 if EXTENSION.contains(c) => 2,
        Encoding::Gsm7 => 1,
        Encoding::Ucs2 => c.len_utf16(),
    }
}

/// Length in septets (GSM-7) or UTF-16 units (UCS-2).
pub fn units(text: &str, enc: Encoding) -> usize {
    text.chars().map(|c| cost(c, enc)).sum()
}

/// Segments the carrier sends `text` in (0 for an empty text).
pub fn segments(text: &str) -> usize {
    let enc = encoding(text);
    let n = units(text, enc);
    let (single, multi) = match enc {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => (70, 67),
    };
    match n {
        0 => 0,
        n if n <= single => 1,
        n => n.div_ceil(multi),
    }
}

/// `text` cut to at most `max_segments` segments and at most `max_chars` UTF-16 units (the
/// provider's limit on the body: Twilio's 1,600 characters), in the encoding it is sent in,
/// with a cut marker of that encoding (`...` in GSM-7, `…` in UCS-2). A character is never
/// split (an extension character's escape, a surrogate pair).
pub fn cut(text: &str, max_segments: usize, max_chars: usize) -> String {
    let enc = encoding(text);
    let per = match enc {
        Encoding::Gsm7 => 153,
        Encoding::Ucs2 => 67,
    };
    let limit = if max_segments <= 1 {
        match enc {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    } else {
        per * max_segments
    };
    if units(text, enc) <= limit && text.encode_utf16().count() <= max_chars {
        return text.to_string();
    }
    let marker = match enc {
        Encoding::Gsm7 => "...",
        Encoding::Ucs2 => "…",
    };
    let budget = limit.saturating_sub(units(marker, enc));
    let char_budget = max_chars.saturating_sub(marker.encode_utf16().count());
    let mut out = String::new();
    let (mut used, mut chars) = (0, 0);
    for c in text.chars() {
        let (u, w) = (cost(c, enc), c.len_utf16());
        if used + u > budget || chars + w > char_budget {
            break;
        }
        used += u;
        chars += w;
        out.push(c);
    }
    out.push_str(marker);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_as_the_carrier_does() {
        assert_eq!(encoding("Hello, Ada!"), Encoding::Gsm7);
        assert_eq!(encoding("Price: 5€ [x]"), Encoding::Gsm7);
        assert_eq!(units("5€ [x]", Encoding::Gsm7), 9);
        assert_eq!(encoding("Merci, Zoë 😀"), Encoding::Ucs2);
        assert_eq!(encoding("tick `"), Encoding::Ucs2);
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"€".repeat(80)), 1);
        assert_eq!(segments(&"€".repeat(81)), 2);
        assert_eq!(segments(&"ж".repeat(70)), 1);
        assert_eq!(segments(&"ж".repeat(71)), 2);
        assert_eq!(segments(&"😀".repeat(35)), 1);
        assert_eq!(segments(""), 0);
    }

    #[test]
    fn cuts_within_the_limit_of_its_own_encoding() {
        let long = "a".repeat(2000);
        let c = cut(&long, 10, 1600);
        assert_eq!(units(&c, Encoding::Gsm7), 1530);
        assert!(c.ends_with("..."));
        assert_eq!(segments(&c), 10);
        // Extension characters count twice and are never split.
        let c = cut(&"€".repeat(2000), 10, 1600);
        assert!(units(&c, Encoding::Gsm7) <= 1530);
        assert_eq!(encoding(&c), Encoding::Gsm7);
        // UCS-2: 67 units a segment, surrogate pairs kept whole, the marker in UCS-2.
        let c = cut(&"😀".repeat(1000), 10, 1600);
        assert!(c.encode_utf16().count() <= 670);
        assert!(c.ends_with('…'));
        assert_eq!(segments(&c), 10);
        // Short texts stay as they are.
        assert_eq!(cut("Thanks Ada", 10, 1600), "Thanks Ada");
        // One segment at most.
        assert_eq!(segments(&cut(&"b".repeat(500), 1, 1600)), 1);
    }
}

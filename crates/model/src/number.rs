//! Exact decimal numbers: a `number` answer keeps the digits it was submitted with.
//!
//! A JSON number literal (RFC 8259 §6: `-? int frac? exp?`) is turned into the plain decimal
//! form Postgres's `numeric` prints (no exponent, the scale the literal had: `1.50` stays
//! `1.50`, `1.5e-3` is `0.0015`, `1e3` is `1000`), so the value reads the same in the API, in
//! `responses.answers` (`jsonb` keeps numbers as `numeric`), in `answers.value_number`
//! (`numeric`), in events (Avro `string`) and in the sheet. Nothing goes through a binary
//! double on the way.

use std::fmt;

/// Most digits before, and most digits after, the decimal point of a number answer. Postgres's
/// `numeric` takes 131,072 and 16,383; this bound keeps documents and events small.
pub const NUMBER_MAX_DIGITS: usize = 1000;

/// An exact decimal in canonical plain form: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, never `-0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal(String);

/// Why a literal is not a number answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Not a JSON number literal.
    #[error("'{0}' is not a number")]
    Syntax(String),
    /// More digits than [`NUMBER_MAX_DIGITS`] before or after the point.
    #[error("the number has more than {NUMBER_MAX_DIGITS} digits before or after the point")]
    OutOfRange,
}

impl Decimal {
    /// Parses a JSON number literal (or the plain decimal Postgres prints) exactly.
    pub fn parse(literal: &str) -> Result<Self, NumberError> {
        let syntax = || NumberError::Syntax(literal.chars().take(40).collect());
        let s = literal.trim();
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || (mantissa.contains('.') && !digits(frac)) {
            return Err(syntax());
        }
        if int.len() > 1 && int.starts_with('0') {
            return Err(syntax());
        }
        let exp: i64 = match exp {
            None => 0,
            Some(e) => {
                let body = e.strip_prefix(['+', '-']).unwrap_or(e);
                if !digits(body) {
                    return Err(syntax());
                }
                // Any exponent past the bound gives too many digits either way.
                if body.trim_start_matches('0').len() > 6 {
                    return Err(NumberError::OutOfRange);
                }
                e.parse().map_err(|_| syntax())?
            }
        };
        let limit = NUMBER_MAX_DIGITS as i64;
        // value = all × 10^(exp - frac.len()); scale as Postgres keeps it.
        let all = format!("{int}{frac}");
        let shift = exp - frac.len() as i64;
        let (int_part, frac_part) = if shift >= 0 {
            if all.len() as i64 + shift > limit + 1 {
                return Err(NumberError::OutOfRange);
            }
            (
                format!("{all}{}", "0".repeat(shift as usize)),
                String::new(),
            )
        } else {
            let scale = (-shift) as usize;
            if scale > NUMBER_MAX_DIGITS {
                return Err(NumberError::OutOfRange);
            }
            let padded = if all.len() <= scale {
                format!("{}{all}", "0".repeat(scale + 1 - all.len()))
            } else {
                all
            };
            let (i, f) = padded.split_at(padded.len() - scale);
            (i.to_string(), f.to_string())
        };
        let int_part = match int_part.trim_start_matches('0') {
            "" => "0".to_string(),
            t => t.to_string(),
        };
        if int_part.len() > NUMBER_MAX_DIGITS {
            return Err(NumberError::OutOfRange);
        }
        let zero = int_part == "0" && frac_part.bytes().all(|b| b == b'0');
        let mut out = String::with_capacity(int_part.len() + frac_part.len() + 2);
        if negative && !zero {
            out.push('-');
        }
        out.push_str(&int_part);
        if !frac_part.is_empty() {
            out.push('.');
            out.push_str(&frac_part);
        }
        Ok(Self(out))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as a double, when the double keeps its digits: the double's shortest
    /// decimal form is the same number (trailing fractional zeros aside). `12345678901234567890123`
    /// and `0.12345678901234567890` do not; `0.1` and `9007199254740992` do.
    pub fn to_f64_exact(&self) -> Option<f64> {
        let x: f64 = self.0.parse().ok()?;
        if !x.is_finite() {
            return None;
        }
        let mine = strip_zeros(&self.0);
        let back = Decimal::parse(&format!("{x:e}")).ok()?;
        (strip_zeros(back.as_str()) == mine).then_some(x)
    }
}

fn strip_zeros(s: &str) -> String {
    let t = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    };
    if t == "-0" { "0".into() } else { t.into() }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Decimal::parse(s).unwrap().0
    }

    #[test]
    fn keeps_every_digit_in_postgres_numeric_form() {
        assert_eq!(canon("12345678901234567890123"), "12345678901234567890123");
        assert_eq!(canon("0.12345678901234567890"), "0.12345678901234567890");
        assert_eq!(canon("9007199254740993"), "9007199254740993");
        assert_eq!(canon("1.50"), "1.50");
        assert_eq!(canon("1e3"), "1000");
        assert_eq!(canon("1.5E-3"), "0.0015");
        assert_eq!(canon("1.50e1"), "15.0");
        assert_eq!(canon("-0.0"), "0.0");
        assert_eq!(canon("-12.5"), "-12.5");
        assert_eq!(canon("0"), "0");
        assert_eq!(canon("0e5"), "0");
        assert_eq!(canon("123e-5"), "0.00123");
    }

    #[test]
    fn refuses_what_is_not_a_json_number_or_too_long() {
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "NaN", "Infinity", "0x10", "1 2",
        ] {
            assert!(
                matches!(Decimal::parse(bad), Err(NumberError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(
            Decimal::parse("1e999"),
            Ok(Decimal(format!("1{}", "0".repeat(999))))
        );
        assert_eq!(Decimal::parse("1e1000"), Err(NumberError::OutOfRange));
        assert_eq!(Decimal::parse("1e-1001"), Err(NumberError::OutOfRange));
        assert_eq!(
            Decimal::parse("1e99999999999"),
            Err(NumberError::OutOfRange)
        );
        assert!(Decimal::parse(&"9".repeat(1001)).is_err());
    }

    #[test]
    fn a_double_only_where_it_keeps_the_digits() {
        assert_eq!(Decimal::parse("0.1").unwrap().to_f64_exact(), Some(0.1));
        assert_eq!(Decimal::parse("2.50").unwrap().to_f64_exact(), Some(2.5));
        assert_eq!(
            Decimal::parse("9007199254740992").unwrap().to_f64_exact(),
            Some(9_007_199_254_740_992.0)
        );
        assert_eq!(
            Decimal::parse("9007199254740993").unwrap().to_f64_exact(),
            None
        );
        assert_eq!(
            Decimal::parse("0.12345678901234567890")
                .unwrap()
                .to_f64_exact(),
            None
        );
        assert_eq!(
            Decimal::parse("12345678901234567890123")
                .unwrap()
                .to_f64_exact(),
            None
        );
    }
}

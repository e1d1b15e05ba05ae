//! Decoding errors.

/// Why some bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field it must hold.
    #[error("message truncated: needed {needed} more bytes for {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The message starts with a tag this decoder does not know.
    #[error("unknown {kind} tag {tag:#04x} ('{}')", *tag as char)]
    UnknownTag {
        /// What kind of message or field the tag introduces.
        kind: &'static str,
        /// The tag byte.
        tag: u8,
    },
    /// A string is not NUL-terminated or not UTF-8.
    #[error("invalid string in {field}")]
    InvalidString {
        /// The field being read.
        field: &'static str,
    },
    /// A length or count is negative or larger than the message.
    #[error("invalid length {value} for {field}")]
    InvalidLength {
        /// The field being read.
        field: &'static str,
        /// The length found.
        value: i64,
    },
    /// Bytes remain after the message's last field.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// A message that only exists inside a streamed transaction came outside one, or the
    /// reverse.
    #[error("{0}")]
    Protocol(&'static str),
}

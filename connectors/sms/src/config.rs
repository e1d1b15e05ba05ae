//! Configuration and credentials of an SMS integration.

use serde::{Deserialize, Serialize};

/// Twilio's API.
pub const TWILIO_API: &str = "https://api.twilio.com";

fn default_api() -> String {
    TWILIO_API.into()
}
fn default_per_sender() -> u32 {
    1
}
fn default_per_account() -> u32 {
    100
}
fn default_reconcile_after() -> u64 {
    60
}
fn default_max_segments() -> usize {
    10
}

/// Who gets the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Recipient {
    /// The respondent: the answer to this question (its id or alias), a phone number.
    Question(String),
    /// A fixed number (E.164), e.g. the form's owner, told of every response.
    Number(String),
}

/// Send rates, counted as the provider counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Messages per second from the sender number (a US long code: 1).
    #[serde(default = "default_per_sender")]
    pub per_sender_per_second: u32,
    /// Messages per second of the whole account.
    #[serde(default = "default_per_account")]
    pub account_per_second: u32,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            per_sender_per_second: default_per_sender(),
            account_per_second: default_per_account(),
        }
    }
}

/// What to do with a send whose fate is unknown (timeout, reset, 5xx) and that the
/// provider's message list does not show once `reconcile_after_secs` have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unresolved {
    /// The provider never accepted it: send it (the default).
    #[default]
    Resend,
    /// Leave it to an operator: the event goes to the dead-letter topic, marked ambiguous.
    DeadLetter,
}

/// Configuration of an SMS integration (unknown fields are refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Provider (`twilio`: Twilio's Programmable Messaging API or a compatible one).
    #[serde(default = "default_provider")]
    pub provider: String,
    /// Base URL of the provider's API.
    #[serde(default = "default_api")]
    pub api_base_url: String,
    /// The sender number (E.164).
    pub from: String,
    /// Who gets the message.
    pub to: Recipient,
    /// The message: text with `{{alias}}` (or `{{question id}}`) placeholders replaced by
    /// answers, and `{{response_id}}`, `{{form_id}}`.
    pub template: String,
    /// The public base URL of `collect connect` (its connect API). When set, the provider
    /// posts each message's delivery status to `{base}/v1/callbacks/{integration}`, signed
    /// with the account's auth token, and the ledger keeps it.
    #[serde(default)]
    pub status_callback_base_url: Option<String>,
    /// Send rates.
    #[serde(default)]
    pub rates: Rates,
    /// Seconds after an ambiguous send before the provider's list is trusted to say it was
    /// never accepted.
    #[serde(default = "default_reconcile_after")]
    pub reconcile_after_secs: u64,
    /// An ambiguous send the provider does not know of after `reconcile_after_secs`.
    #[serde(default)]
    pub unresolved: Unresolved,
    /// Most segments a message takes (1 to 10; Twilio recommends at most 10): longer
    /// messages are cut in the encoding they are sent in, with a cut marker.
    #[serde(default = "default_max_segments")]
    pub max_segments: usize,
}

fn default_provider() -> String {
    "twilio".into()
}

/// Credentials (stored encrypted, never returned).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Account SID (`AC...`).
    pub account_sid: String,
    /// Auth token.
    pub auth_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.account_sid)
    }
}

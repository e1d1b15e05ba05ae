//! SMS providers: the calls the sink needs, and what each answer means for a message that
//! must go out at most once.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Recipient (E.164).
    pub to: String,
    /// Sender (E.164).
    pub from: String,
    /// Text.
    pub body: String,
    /// Where the provider reports delivery.
    pub status_callback: Option<String>,
}

/// What became of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Accepted; the provider's id of the message.
    Accepted(String),
    /// Refused before anything was done (rate limited): safe to send again later.
    NotProcessed {
        /// Why.
        reason: String,
        /// The provider's Retry-After.
        retry_after: Option<Duration>,
    },
    /// Refused for good (invalid number, recipient opted out).
    Permanent(String),
    /// Unknown: the request may have reached the provider (timeout, connection reset, 5xx).
    /// Never sent again before the provider's list says it was not accepted.
    Ambiguous(String),
    /// The credentials or the account are refused: nothing can be sent until someone acts.
    Fatal(String),
}

/// A provider of SMS.
pub trait Provider: Send + Sync + 'static {
    /// The account, for rate-limit keys.
    fn account(&self) -> &str;

    /// Sends one message.
    fn send(&self, m: &Outgoing) -> impl Future<Output = SendOutcome> + Send;

    /// The provider's id of a message like `m` (same recipient, sender and text) created at
    /// or after `since` (our clock: the provider converts it to its own, from the `Date` of
    /// its answer, so a clock skew between us changes nothing) and not among `exclude`
    /// (messages already accounted for), if the provider has one. `Err` when the list cannot
    /// be read.
    fn find(
        &self,
        m: &Outgoing,
        since: DateTime<Utc>,
        exclude: &[String],
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
}

/// Twilio's Programmable Messaging API (or one that speaks it).
pub struct Twilio {
    http: reqwest::Client,
    base: String,
    account: String,
    token: String,
}

/// Most pages of the message list read when reconciling one send (of 1,000 messages each).
const MAX_PAGES: usize = 50;

impl Twilio {
    /// A client of the API at `base` (`https://api.twilio.com`).
    pub fn new(base: &str, account: &str, token: &str) -> Result<Self, String> {
        // One client per process, shared by every SMS integration: one connection pool and
        // one loading of the TLS roots.
        static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let http = match HTTP.get() {
            Some(c) => c.clone(),
            None => {
                let c = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(15))
                    .build()
                    .map_err(|e| e.to_string())?;
                HTTP.get_or_init(|| c).clone()
            }
        };
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            account: account.to_string(),
            token: token.to_string(),
        })
    }

    fn messages_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base, self.account
        )
    }
}

/// Twilio's error body: `{"code", "message", ...}`.
fn twilio_error(body: &Value) -> (u64, String) {
    (
        body["code"].as_u64().unwrap_or(0),
        body["message"].as_str().unwrap_or("").to_string(),
    )
}

impl Provider for Twilio {
    fn account(&self) -> &str {
        &self.account
    }

    async fn send(&self, m: &Outgoing) -> SendOutcome {
        let mut form = vec![
            ("To", m.to.as_str()),
            ("From", m.from.as_str()),
            ("Body", m.body.as_str()),
        ];
        if let Some(cb) = &m.status_callback {
            form.push(("StatusCallback", cb.as_str()));
        }
        let resp = match collect_telemetry::inject(
            self.http
                .post(self.messages_url())
                .basic_auth(&self.account, Some(&self.token))
                .form(&form),
        )
        .send()
        .await
        {
            Ok(r) => r,
            // Not connected: the request never left.
            Err(e) if e.is_connect() => {
                return SendOutcome::NotProcessed {
                    reason: format!("cannot reach the provider: {e}"),
                    retry_after: None,
                };
            }
            Err(e) => return SendOutcome::Ambiguous(format!("no answer from the provider: {e}")),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(collect_connect::retry::parse_retry_after);
        let body: Value = match resp.json().await {
            Ok(b) => b,
            Err(e) if (200..300).contains(&status) => {
                return SendOutcome::Ambiguous(format!("accepted ({status}) but unreadable: {e}"));
            }
            Err(_) => Value::Null,
        };
        let (code, message) = twilio_error(&body);
        match status {
            200..=299 => match body["sid"].as_str() {
                Some(sid) => SendOutcome::Accepted(sid.to_string()),
                None => SendOutcome::Ambiguous(format!("accepted ({status}) without a sid")),
            },
            429 => SendOutcome::NotProcessed {
                reason: format!("rate limited ({code}): {message}"),
                retry_after,
            },
            401 | 403 => SendOutcome::Fatal(format!(
                "the provider refuses the account's credentials ({status} {code}: {message})"
            )),
            404 => SendOutcome::Fatal(format!(
                "the provider does not know account {} ({code}: {message})",
                self.account
            )),
            400..=499 => {
                SendOutcome::Permanent(format!("refused by the provider ({code}): {message}"))
            }
            _ => SendOutcome::Ambiguous(format!("provider error {status} ({code}): {message}")),
        }
    }

    async fn find(
        &self,
        m: &Outgoing,
        since: DateTime<Utc>,
        exclude: &[String],
    ) -> Result<Option<String>, String> {
        // Newest first, by recipient and sender (not by DateSent: a queued message has no
        // date_sent yet); the text and creation time pick the message out.
        let mut url = format!(
            "{}?To={}&From={}&PageSize=1000",
            self.messages_url(),
            enc(&m.to),
            enc(&m.from),
        );
        let mut since = since;
        for page_no in 0..MAX_PAGES {
            let mut older = false;
            let asked = Utc::now();
            let resp = collect_telemetry::inject(
                self.http
                    .get(&url)
                    .basic_auth(&self.account, Some(&self.token)),
            )
            .send()
            .await
            .map_err(|e| format!("listing messages: {e}"))?;
            if page_no == 0 {
                // The provider's clock decides: `since` moves by how far its clock is from
                // ours (its Date header against our clock halfway through the call).
                let answered = Utc::now();
                let theirs = resp
                    .headers()
                    .get(reqwest::header::DATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
                    .map(|d| d.with_timezone(&Utc));
                if let Some(theirs) = theirs {
                    let ours = asked + (answered - asked) / 2;
                    since += theirs - ours;
                }
            }
            let status = resp.status();
            let page: Value = resp
                .json()
                .await
                .map_err(|e| format!("listing messages: {e}"))?;
            if !status.is_success() {
                let (code, message) = twilio_error(&page);
                return Err(format!("listing messages: {status} ({code}): {message}"));
            }
            for msg in page["messages"].as_array().into_iter().flatten() {
                let created = msg["date_created"]
                    .as_str()
                    .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
                    .map(|d| d.with_timezone(&Utc));
                older |= created.is_some_and(|c| c < since);
                if msg["body"].as_str() == Some(m.body.as_str())
                    && msg["to"].as_str() == Some(m.to.as_str())
                    && created.is_some_and(|c| c >= since)
                    && let Some(sid) = msg["sid"].as_str()
                    && !exclude.iter().any(|e| e == sid)
                {
                    return Ok(Some(sid.to_string()));
                }
            }
            match page["next_page_uri"].as_str() {
                Some(_) if older => return Ok(None),
                Some(next) => url = format!("{}{next}", self.base),
                None => return Ok(None),
            }
        }
        Err(format!(
            "more than {MAX_PAGES} pages of messages to {}; cannot tell",
            m.to
        ))
    }
}

fn enc(s: &str) -> String {
    s.replace('+', "%2B")
}

/// Twilio's request signature: HMAC-SHA1 with the auth token over the URL followed by
/// every POST parameter's name and value, sorted by name; base64.
pub fn twilio_signature(token: &str, url: &str, params: &[(String, String)]) -> String {
    use base64::Engine;
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        token.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::hmac::sign(&key, data.as_bytes()).as_ref())
}

/// Whether `signature` is Twilio's signature of the request (compared in constant time).
pub fn twilio_signature_ok(
    token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    use base64::Engine;
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let expected = twilio_signature(token, url, params);
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(expected) else {
        return false;
    };
    given.len() == expected.len()
        && given
            .iter()
            .zip(&expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_url_and_every_parameter() {
        let params = vec![
            ("MessageStatus".to_string(), "delivered".to_string()),
            ("MessageSid".to_string(), "SM1".to_string()),
        ];
        let url = "https://collect.example.com/v1/callbacks/x";
        let sig = twilio_signature("token", url, &params);
        assert!(twilio_signature_ok("token", url, &params, &sig));
        // Parameter order does not matter; the URL, a value and the token do.
        let reversed: Vec<_> = params.iter().rev().cloned().collect();
        assert!(twilio_signature_ok("token", url, &reversed, &sig));
        assert!(!twilio_signature_ok(
            "token",
            &format!("{url}?a=1"),
            &params,
            &sig
        ));
        let mut changed = params.clone();
        changed[0].1 = "undelivered".into();
        assert!(!twilio_signature_ok("token", url, &changed, &sig));
        assert!(!twilio_signature_ok("other", url, &params, &sig));
        assert!(!twilio_signature_ok("token", url, &params, "not base64!"));
    }
}

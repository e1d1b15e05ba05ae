//! `collect emulate sms`: an SMS provider with Twilio's Programmable Messaging REST API, as
//! Twilio documents it, under the same paths as `https://api.twilio.com`:
//!
//! - `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (form-encoded `To`, `From`,
//!   `Body`, `StatusCallback`) answers 201 with the Message resource;
//! - `GET /2010-04-01/Accounts/{AccountSid}/Messages.json` lists messages, newest first,
//!   filtered by `To`, `From`, `DateSent`, `DateSent<`, `DateSent>` (a day `YYYY-MM-DD` or
//!   an instant `YYYY-MM-DDThh:mm:ssZ`, bounds included), paged with `PageSize` (50 by
//!   default, 1000 at most: larger sizes are served 1000 a page) and `PageToken`
//!   (`next_page_uri`);
//! - `GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json` fetches one.
//!
//! HTTP basic auth with the account SID and auth token. Twilio's errors
//! (`{"code", "message", "more_info", "status"}`): 20003 (authentication), 20404 (not found),
//! 21211 and 21212 (`To` or `From` not a valid phone number, by libphonenumber's metadata:
//! [`numbers`]), 21602 (no body), 21604 (no `To`), 21617 (body over 1600 characters), 21610
//! (recipient opted out), 20429 (too many requests: per sender per second, and account-wide
//! per second), and the answers of Twilio's magic test numbers (`+1500555000x`).
//! `num_segments` counts GSM-7 or UCS-2 segments as Twilio does ([`segments`]). Accepted
//! messages go `queued`, then `sent` and `delivered`, each change POSTed to the
//! `StatusCallback` URL. Every answer carries an HTTP `Date` (RFC 7231) from the provider's
//! clock.
//!
//! Admin (`/emulator/...`): create accounts, opt numbers out (and back in), set the rate
//! limits, inject latency, 5xx, 429 storms, connections dropped after the message was
//! accepted (the ambiguous case a sender must reconcile) and a provider clock that is off by
//! `clock_offset_secs`, read statistics and every message.

mod admin;
mod api;
pub mod numbers;
pub mod segments;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{delete, get, post, put};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use numbers::is_valid_number;
use segments::Encoding;

/// The API version in every path.
pub const API_VERSION: &str = "2010-04-01";
/// Longest message body, in characters (UTF-16 code units: an emoji counts twice).
pub const MAX_BODY_CHARS: usize = 1600;
/// Largest clock offset the admin surface takes, either way: ten years.
pub const MAX_CLOCK_OFFSET_SECS: i64 = 10 * 366 * 24 * 3600;

/// Rate limits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Messages per second from one sender number (a US long code sends 1).
    pub per_sender_per_second: u32,
    /// Messages per second of the whole account.
    pub account_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_sender_per_second: 10,
            account_per_second: 100,
        }
    }
}

/// Injected faults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every API request.
    pub latency_ms: u64,
    /// Share (0 to 1) of API requests answered with `error_status` before doing anything.
    pub error_rate: f64,
    /// 500 or 503.
    pub error_status: u16,
    /// Every send is answered 429 (20429) for this many seconds from now.
    pub throttle_seconds: u64,
    /// Share (0 to 1) of sends that are accepted (the message exists and will be delivered)
    /// and whose connection is then closed without an answer.
    pub drop_after_accept_rate: f64,
    /// Milliseconds from acceptance to `sent`, and again to `delivered`.
    pub delivery_ms: u64,
    /// Seconds the provider's clock is ahead of this machine's (negative: behind). Every
    /// time the provider stamps (`date_created`, `date_updated`, `date_sent`, which the
    /// `DateSent` filters compare) and the HTTP `Date` header are read from that clock, so
    /// that a client whose clock differs from the provider's can be tested. Messages keep
    /// the stamps they got when the clock was set otherwise.
    pub clock_offset_secs: i64,
}

#[derive(Debug, Clone)]
struct Message {
    sid: String,
    account_sid: String,
    to: String,
    from: String,
    body: String,
    status: &'static str,
    encoding: Encoding,
    num_segments: usize,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
    sent: Option<DateTime<Utc>>,
    status_callback: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    accepted: u64,
    dropped_after_accept: u64,
    rejected: u64,
    throttled: u64,
    injected_errors: u64,
    callbacks: u64,
}

struct Inner {
    accounts: HashMap<String, String>,
    messages: Vec<Message>,
    by_sid: HashMap<String, usize>,
    opted_out: HashSet<String>,
    limits: Limits,
    faults: Faults,
    throttle_until: Option<Instant>,
    windows: HashMap<String, (u64, u32)>,
    stats: Stats,
}

impl Inner {
    /// Now, by the provider's clock.
    fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        TimeDelta::try_seconds(self.faults.clock_offset_secs)
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(now)
    }
}

/// The emulator.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
    /// Base URL clients reach it at.
    pub base_url: Arc<str>,
}

fn hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

impl Message {
    /// The Message resource as Twilio's API returns it (dates in RFC 2822, counts as
    /// strings).
    fn to_json(&self) -> Value {
        let uri = format!(
            "/{API_VERSION}/Accounts/{}/Messages/{}.json",
            self.account_sid, self.sid
        );
        json!({
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": self.created.to_rfc2822(),
            "date_sent": self.sent.map(|d| d.to_rfc2822()),
            "date_updated": self.updated.to_rfc2822(),
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": self.from,
            "messaging_service_sid": null,
            "num_media": "0",
            "num_segments": self.num_segments.to_string(),
            "price": null,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": self.to,
            "uri": uri,
        })
    }

    /// The message log's entry: the resource, and the encoding it was counted in (which
    /// Twilio's resource does not show).
    fn to_log_json(&self) -> Value {
        let mut v = self.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("encoding".into(), json!(self.encoding.name()));
        }
        v
    }
}

impl Emulator {
    /// An empty emulator reachable at `base_url`.
    pub fn new(base_url: &str) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                accounts: HashMap::new(),
                messages: Vec::new(),
                by_sid: HashMap::new(),
                opted_out: HashSet::new(),
                limits: Limits::default(),
                faults: Faults::default(),
                throttle_until: None,
                windows: HashMap::new(),
                stats: Stats::default(),
            })),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            base_url: base_url.trim_end_matches('/').into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Now, by the provider's clock (this machine's plus `clock_offset_secs`).
    pub fn now(&self) -> DateTime<Utc> {
        self.lock().now()
    }

    /// Creates an account; returns (account SID, auth token).
    pub fn create_account(&self) -> (String, String) {
        let (sid, token) = (format!("AC{}", hex(32)), hex(32));
        self.lock().accounts.insert(sid.clone(), token.clone());
        (sid, token)
    }

    /// Every message of every account, oldest first, as the API shows them, with the
    /// `encoding` each was counted in (`GSM-7` or `UCS-2`).
    pub fn messages(&self) -> Vec<Value> {
        self.lock()
            .messages
            .iter()
            .map(Message::to_log_json)
            .collect()
    }

    /// Moves a message to `status` and tells its callback.
    fn advance(&self, sid: &str, status: &'static str) {
        let callback = {
            let mut inner = self.lock();
            let Some(&i) = inner.by_sid.get(sid) else {
                return;
            };
            let now = inner.now();
            let Some(m) = inner.messages.get_mut(i) else {
                return;
            };
            m.status = status;
            m.updated = now;
            if status == "sent" {
                m.sent = Some(now);
            }
            let m = m.clone();
            let token = inner.accounts.get(&m.account_sid).cloned();
            m.status_callback.clone().map(|url| {
                (
                    url,
                    token.unwrap_or_default(),
                    vec![
                        ("MessageSid", m.sid.clone()),
                        ("SmsSid", m.sid.clone()),
                        ("AccountSid", m.account_sid.clone()),
                        ("From", m.from.clone()),
                        ("To", m.to.clone()),
                        ("MessageStatus", status.to_string()),
                        ("SmsStatus", status.to_string()),
                        ("ApiVersion", API_VERSION.to_string()),
                    ],
                )
            })
        };
        if let Some((url, token, form)) = callback {
            let (http, me) = (self.http.clone(), self.clone());
            let signature = sign(&token, &url, &form);
            tokio::spawn(async move {
                let sent = http
                    .post(&url)
                    .header("X-Twilio-Signature", signature)
                    .form(&form)
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    me.lock().stats.callbacks += 1;
                }
            });
        }
    }
}

/// The `X-Twilio-Signature` of a callback, as Twilio documents it: HMAC-SHA1 keyed with the
/// account's auth token over the URL followed by each parameter's name and value, sorted
/// by name, base64-encoded.
fn sign(token: &str, url: &str, form: &[(&str, String)]) -> String {
    let mut params: Vec<&(&str, String)> = form.iter().collect();
    params.sort_by(|a, b| a.0.cmp(b.0));
    let mut data = url.to_string();
    for (k, v) in params {
        data.push_str(k);
        data.push_str(v);
    }
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        token.as_bytes(),
    );
    STANDARD.encode(aws_lc_rs::hmac::sign(&key, data.as_bytes()).as_ref())
}

/// The routes.
pub fn router(emulator: Emulator) -> Router {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{account}/Messages.json",
            post(api::send).get(api::list),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Messages/{sid}",
            get(api::fetch),
        )
        .route("/emulator/accounts", post(admin::account))
        .route("/emulator/opt-outs", post(admin::opt_out))
        .route("/emulator/opt-outs/{number}", delete(admin::opt_in))
        .route("/emulator/faults", put(admin::faults))
        .route("/emulator/limits", put(admin::limits))
        .route("/emulator/stats", get(admin::stats))
        .route("/emulator/messages", get(admin::messages))
        .layer(axum::middleware::map_response_with_state(
            emulator.clone(),
            api::date_header,
        ))
        .with_state(emulator)
}

/// Serves the emulator on `listener` until `shutdown` resolves. Each connection is served on
/// its own, so that a send answered with a dropped connection can close just that one.
pub async fn serve(
    listener: TcpListener,
    emulator: Emulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::hangup::serve(listener, router(emulator), shutdown).await
}

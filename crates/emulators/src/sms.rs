//! `collect emulate sms`: an SMS provider with Twilio's Programmable Messaging REST API, as
//! Twilio documents it, under the same paths as `https://api.twilio.com`:
//!
//! - `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (form-encoded `To`, `From`,
//!   `Body`, `StatusCallback`) answers 201 with the Message resource;
//! - `GET /2010-04-01/Accounts/{AccountSid}/Messages.json` lists messages, newest first,
//!   filtered by `To`, `From`, `DateSent`, `DateSent<`, `DateSent>`, paged with `PageSize`
//!   (at most 1000) and `PageToken` (`next_page_uri`);
//! - `GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json` fetches one.
//!
//! HTTP basic auth with the account SID and auth token. Twilio's errors
//! (`{"code", "message", "more_info", "status"}`): 20003 (authentication), 20404 (not found),
//! 21211 and 21212 (invalid To or From: numbers must be E.164), 21602 (no body), 21617 (body
//! over 1600 characters), 21610 (recipient opted out), 20429 (too many requests: per sender
//! per second, and account-wide per second). Accepted messages go `queued`, then `sent` and
//! `delivered`, each change POSTed to the `StatusCallback` URL.
//!
//! Admin (`/emulator/...`): create accounts, opt numbers out (and back in), set the rate limits, inject
//! latency, 5xx, 429 storms and connections dropped after the message was accepted (the
//! ambiguous case a sender must reconcile), read statistics and every message.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::admin::{bad, chance, check_faults, throttle_until};

/// The API version in every path.
pub const API_VERSION: &str = "2010-04-01";
/// Longest message body, in characters.
pub const MAX_BODY_CHARS: usize = 1600;

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
}

#[derive(Debug, Clone, Serialize)]
struct Message {
    sid: String,
    account_sid: String,
    to: String,
    from: String,
    body: String,
    status: &'static str,
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

/// Whether `n` is an E.164 number: `+`, a non-zero digit, at most 15 digits in all.
pub fn is_e164(n: &str) -> bool {
    let Some(digits) = n.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Segments of a body: 160 GSM characters (153 when split), 70 UCS-2 (67 when split).
fn segments(body: &str) -> usize {
    let n = body.chars().count();
    let (one, many) = if body.is_ascii() {
        (160, 153)
    } else {
        (70, 67)
    };
    if n <= one { 1 } else { n.div_ceil(many) }
}

/// A Twilio error answer.
fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        s,
        axum::Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        })),
    )
        .into_response()
}

impl Message {
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

    /// Creates an account; returns (account SID, auth token).
    pub fn create_account(&self) -> (String, String) {
        let (sid, token) = (format!("AC{}", hex(32)), hex(32));
        self.lock().accounts.insert(sid.clone(), token.clone());
        (sid, token)
    }

    /// Every message of every account, oldest first, as the API shows them.
    pub fn messages(&self) -> Vec<Value> {
        self.lock().messages.iter().map(Message::to_json).collect()
    }

    /// Moves a message to `status` and tells its callback.
    fn advance(&self, sid: &str, status: &'static str) {
        let callback = {
            let mut inner = self.lock();
            let Some(&i) = inner.by_sid.get(sid) else {
                return;
            };
            let now = Utc::now();
            let m = &mut inner.messages[i];
            m.status = status;
            m.updated = now;
            if status == "sent" {
                m.sent = Some(now);
            }
            let token = inner.accounts.get(&inner.messages[i].account_sid).cloned();
            let m = &inner.messages[i];
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

/// Counts one send against the per-second windows of `keys`; false when one is full.
fn admit(inner: &mut Inner, keys: &[(String, u32)]) -> bool {
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for (key, limit) in keys {
        let w = inner.windows.entry(key.clone()).or_insert((second, 0));
        if w.0 != second {
            *w = (second, 0);
        }
        if w.1 >= *limit {
            return false;
        }
    }
    for (key, _) in keys {
        if let Some(w) = inner.windows.get_mut(key) {
            w.1 += 1;
        }
    }
    true
}

/// What a request's connection should do after the answer is decided.
#[derive(Clone, Default)]
struct Hangup(Arc<Notify>);

fn authorized(inner: &Inner, account: &str, headers: &HeaderMap) -> bool {
    let Some(token) = inner.accounts.get(account) else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .is_some_and(|raw| raw == format!("{account}:{token}").as_bytes())
}

/// Latency and injected 5xx, common to every API call.
async fn faults(e: &Emulator) -> Option<Response> {
    let (latency, fail, status) = {
        let mut inner = e.lock();
        let f = inner.faults.clone();
        let fail = chance(f.error_rate);
        if fail {
            inner.stats.injected_errors += 1;
        }
        (f.latency_ms, fail, f.error_status)
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    fail.then(|| {
        twilio_error(
            if status == 503 { 503 } else { 500 },
            20500,
            "An internal server error has occurred",
        )
    })
}

async fn send(
    State(e): State<Emulator>,
    Path(account): Path<String>,
    headers: HeaderMap,
    hangup: Option<axum::Extension<Hangup>>,
    body: String,
) -> Response {
    if let Some(r) = faults(&e).await {
        return r;
    }
    let form: HashMap<String, String> = form_urlencoded(&body);
    let (message, dropped, delivery) = {
        let mut inner = e.lock();
        if !authorized(&inner, &account, &headers) {
            return twilio_error(401, 20003, "Authenticate");
        }
        let to = form.get("To").cloned().unwrap_or_default();
        let from = form.get("From").cloned().unwrap_or_default();
        let text = form.get("Body").cloned().unwrap_or_default();
        let refusal = if to.is_empty() {
            Some((21604, "A 'To' phone number is required.".to_string()))
        } else if !is_e164(&to) {
            Some((
                21211,
                format!("The 'To' number {to} is not a valid phone number."),
            ))
        } else if !is_e164(&from) {
            Some((
                21212,
                format!(
                    "The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."
                ),
            ))
        } else if text.is_empty() {
            Some((21602, "Message body is required.".to_string()))
        } else if text.chars().count() > MAX_BODY_CHARS {
            Some((
                21617,
                "The concatenated message body exceeds the 1600 character limit.".to_string(),
            ))
        } else if inner.opted_out.contains(&to) {
            Some((
                21610,
                "Attempt to send to unsubscribed recipient".to_string(),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            inner.stats.rejected += 1;
            return twilio_error(400, code, &message);
        }
        let limits = inner.limits;
        let throttled = inner.throttle_until.is_some_and(|t| Instant::now() < t)
            || !admit(
                &mut inner,
                &[
                    (format!("sender:{from}"), limits.per_sender_per_second),
                    (format!("account:{account}"), limits.account_per_second),
                ],
            );
        if throttled {
            inner.stats.throttled += 1;
            return twilio_error(429, 20429, "Too Many Requests");
        }
        let now = Utc::now();
        let m = Message {
            sid: format!("SM{}", hex(32)),
            account_sid: account.clone(),
            num_segments: segments(&text),
            to,
            from,
            body: text,
            status: "queued",
            created: now,
            updated: now,
            sent: None,
            status_callback: form.get("StatusCallback").cloned(),
        };
        let i = inner.messages.len();
        inner.by_sid.insert(m.sid.clone(), i);
        inner.messages.push(m.clone());
        inner.stats.accepted += 1;
        let dropped = chance(inner.faults.drop_after_accept_rate);
        if dropped {
            inner.stats.dropped_after_accept += 1;
        }
        (m, dropped, inner.faults.delivery_ms)
    };
    {
        let (e, sid) = (e.clone(), message.sid.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delivery)).await;
            e.advance(&sid, "sent");
            tokio::time::sleep(Duration::from_millis(delivery)).await;
            e.advance(&sid, "delivered");
        });
    }
    if dropped && let Some(axum::Extension(d)) = hangup {
        // The message is accepted; the sender never hears so.
        d.0.notify_one();
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    (StatusCode::CREATED, axum::Json(message.to_json())).into_response()
}

fn form_urlencoded(body: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

/// `DateSent` filters: `YYYY-MM-DD`, compared by day.
fn day(s: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

async fn list(
    State(e): State<Emulator>,
    Path(account): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = faults(&e).await {
        return r;
    }
    let inner = e.lock();
    if !authorized(&inner, &account, &headers) {
        return twilio_error(401, 20003, "Authenticate");
    }
    let page_size: usize = match q.get("PageSize").map(|s| s.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return twilio_error(400, 20001, "Invalid PageSize"),
    };
    // PageToken is opaque to clients: here, the index after the last message shown.
    let (page, skip): (usize, usize) = match q.get("PageToken") {
        Some(t) => match t.strip_prefix("PA").and_then(|n| n.parse().ok()) {
            Some(skip) => (
                q.get("Page").and_then(|p| p.parse().ok()).unwrap_or(0),
                skip,
            ),
            None => return twilio_error(400, 20001, "Invalid PageToken"),
        },
        None => (0, 0),
    };
    let sent_on = q.get("DateSent").and_then(|d| day(d));
    let before = q.get("DateSent<").and_then(|d| day(d));
    let after = q.get("DateSent>").and_then(|d| day(d));
    let matching: Vec<&Message> = inner
        .messages
        .iter()
        .rev()
        .filter(|m| m.account_sid == account)
        .filter(|m| q.get("To").is_none_or(|t| *t == m.to))
        .filter(|m| q.get("From").is_none_or(|f| *f == m.from))
        .filter(|m| {
            let d = m.sent.unwrap_or(m.created).date_naive();
            sent_on.is_none_or(|s| d == s)
                && before.is_none_or(|b| d <= b)
                && after.is_none_or(|a| d >= a)
        })
        .collect();
    let shown: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(page_size)
        .map(|m| m.to_json())
        .collect();
    let base = format!("/{API_VERSION}/Accounts/{account}/Messages.json");
    let filters: String = ["To", "From", "DateSent", "DateSent<", "DateSent>"]
        .iter()
        .filter_map(|k| q.get(*k).map(|v| format!("&{k}={}", urlencode(v))))
        .collect();
    let next = (skip + shown.len() < matching.len()).then(|| {
        format!(
            "{base}?PageSize={page_size}&Page={}&PageToken=PA{}{filters}",
            page + 1,
            skip + shown.len()
        )
    });
    let start = skip;
    axum::Json(json!({
        "end": start + shown.len().saturating_sub(1),
        "first_page_uri": format!("{base}?PageSize={page_size}&Page=0{filters}"),
        "next_page_uri": next,
        "page": page,
        "page_size": page_size,
        "previous_page_uri": null,
        "start": start,
        "uri": format!("{base}?PageSize={page_size}&Page={page}{filters}"),
        "messages": shown,
    }))
    .into_response()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn fetch(
    State(e): State<Emulator>,
    Path((account, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = faults(&e).await {
        return r;
    }
    let inner = e.lock();
    if !authorized(&inner, &account, &headers) {
        return twilio_error(401, 20003, "Authenticate");
    }
    let sid = sid.strip_suffix(".json").unwrap_or(&sid);
    match inner.by_sid.get(sid).map(|i| &inner.messages[*i]) {
        Some(m) if m.account_sid == account => axum::Json(m.to_json()).into_response(),
        _ => twilio_error(
            404,
            20404,
            &format!(
                "The requested resource /{API_VERSION}/Accounts/{account}/Messages/{sid}.json was not found"
            ),
        ),
    }
}

async fn admin_account(State(e): State<Emulator>) -> Response {
    let (sid, token) = e.create_account();
    (
        StatusCode::CREATED,
        axum::Json(json!({"account_sid": sid, "auth_token": token})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptOut {
    number: String,
}

async fn admin_opt_out(State(e): State<Emulator>, axum::Json(b): axum::Json<OptOut>) -> Response {
    if !is_e164(&b.number) {
        return bad("number must be E.164");
    }
    e.lock().opted_out.insert(b.number.clone());
    axum::Json(json!({"opted_out": b.number})).into_response()
}

async fn admin_opt_in(State(e): State<Emulator>, Path(number): Path<String>) -> Response {
    if e.lock().opted_out.remove(&number) {
        axum::Json(json!({"opted_in": number})).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "that number has not opted out"})),
        )
            .into_response()
    }
}

async fn admin_faults(State(e): State<Emulator>, axum::Json(f): axum::Json<Faults>) -> Response {
    if let Some(refused) = check_faults(
        &[f.error_rate, f.drop_after_accept_rate],
        f.error_rate,
        f.error_status,
    ) {
        return refused;
    }
    let mut inner = e.lock();
    inner.throttle_until = throttle_until(f.throttle_seconds);
    inner.faults = f.clone();
    axum::Json(json!(f)).into_response()
}

async fn admin_limits(State(e): State<Emulator>, axum::Json(l): axum::Json<Limits>) -> Response {
    if l.per_sender_per_second == 0 || l.account_per_second == 0 {
        return bad("limits must be at least 1 per second");
    }
    e.lock().limits = l;
    axum::Json(json!(l)).into_response()
}

async fn admin_stats(State(e): State<Emulator>) -> Response {
    axum::Json(json!(e.lock().stats)).into_response()
}

async fn admin_messages(State(e): State<Emulator>) -> Response {
    axum::Json(json!(e.messages())).into_response()
}

/// The routes.
pub fn router(emulator: Emulator) -> Router {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{account}/Messages.json",
            post(send).get(list),
        )
        .route("/2010-04-01/Accounts/{account}/Messages/{sid}", get(fetch))
        .route("/emulator/accounts", post(admin_account))
        .route("/emulator/opt-outs", post(admin_opt_out))
        .route(
            "/emulator/opt-outs/{number}",
            axum::routing::delete(admin_opt_in),
        )
        .route("/emulator/faults", put(admin_faults))
        .route("/emulator/limits", put(admin_limits))
        .route("/emulator/stats", get(admin_stats))
        .route("/emulator/messages", get(admin_messages))
        .with_state(emulator)
}

/// Serves the emulator on `listener` until `shutdown` resolves. Each connection is served on
/// its own, so that a send answered with a dropped connection can close just that one.
pub async fn serve(
    listener: TcpListener,
    emulator: Emulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(emulator);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            () = &mut shutdown => return Ok(()),
        };
        let hangup = Hangup::default();
        let app = app.clone().layer(axum::Extension(hangup.clone()));
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = hangup.0.notified() => {} // dropping `conn` closes the socket
            }
        });
    }
}

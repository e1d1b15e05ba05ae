//! The Twilio API calls: send, list, fetch, their errors and the HTTP `Date` of every answer.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use super::numbers::{magic_from, magic_to};
use super::segments::{limit_length, segments};
use super::{API_VERSION, Emulator, Inner, MAX_BODY_CHARS, Message, hex, is_valid_number};
use crate::admin::chance;
use crate::hangup::Hangup;

/// A Twilio error answer: `{"code", "message", "more_info", "status"}` with that status.
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

/// Sets the HTTP `Date` of every answer from the provider's clock, in RFC 7231's
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), as Twilio sends one. hyper would add its
/// own from this machine's clock; it keeps one that is there.
pub(super) async fn date_header(State(e): State<Emulator>, mut r: Response) -> Response {
    let date = e.now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(v) = HeaderValue::from_str(&date) {
        r.headers_mut().insert(header::DATE, v);
    }
    r
}

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
async fn injected(e: &Emulator) -> Option<Response> {
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

/// Why Twilio would refuse this send, in the order it checks: (code, message).
fn refusal(inner: &Inner, to: &str, from: &str, text: &str) -> Option<(u32, String)> {
    if to.is_empty() {
        return Some((21604, "A 'To' phone number is required.".into()));
    }
    if !is_valid_number(to) {
        return Some((
            21211,
            format!("The 'To' number {to} is not a valid phone number."),
        ));
    }
    if from.is_empty() {
        return Some((21603, "A 'From' phone number is required.".into()));
    }
    if !is_valid_number(from) {
        return Some((
            21212,
            format!(
                "The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."
            ),
        ));
    }
    if let Some(refused) = magic_from(from).or_else(|| magic_to(to)) {
        return Some(refused);
    }
    if text.is_empty() {
        return Some((21602, "Message body is required.".into()));
    }
    if limit_length(text) > MAX_BODY_CHARS {
        return Some((
            21617,
            "The concatenated message body exceeds the 1600 character limit.".into(),
        ));
    }
    if inner.opted_out.contains(to) {
        return Some((21610, "Attempt to send to unsubscribed recipient".into()));
    }
    None
}

pub(super) async fn send(
    State(e): State<Emulator>,
    Path(account): Path<String>,
    headers: HeaderMap,
    hangup: Option<axum::Extension<Hangup>>,
    body: String,
) -> Response {
    if let Some(r) = injected(&e).await {
        return r;
    }
    let form: HashMap<String, String> = form_urlencoded(&body);
    let (message, dropped, delivery) = {
        let mut inner = e.lock();
        if !authorized(&inner, &account, &headers) {
            return twilio_error(401, 20003, "Authenticate");
        }
        let field = |k: &str| form.get(k).cloned().unwrap_or_default();
        let (to, from, text) = (field("To"), field("From"), field("Body"));
        if let Some((code, message)) = refusal(&inner, &to, &from, &text) {
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
        let now = inner.now();
        let (encoding, num_segments) = segments(&text);
        let m = Message {
            sid: format!("SM{}", hex(32)),
            account_sid: account.clone(),
            encoding,
            num_segments,
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
    if dropped && let Some(axum::Extension(h)) = hangup {
        // The message is accepted; the sender never hears so.
        h.now().await;
    }
    (StatusCode::CREATED, axum::Json(message.to_json())).into_response()
}

fn form_urlencoded(body: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

/// A `DateSent` filter: a day (`YYYY-MM-DD`, GMT) or an instant (`YYYY-MM-DDThh:mm:ssZ`,
/// which Twilio's helper libraries send for a datetime), compared to the second.
#[derive(Clone, Copy)]
enum DateFilter {
    Day(NaiveDate),
    At(i64),
}

impl DateFilter {
    fn parse(s: &str) -> Option<Self> {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map(Self::Day)
            .ok()
            .or_else(|| {
                DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|d| Self::At(d.timestamp()))
            })
    }

    /// How `t` compares to the filter: `Less` when it is before it.
    fn cmp(self, t: DateTime<Utc>) -> std::cmp::Ordering {
        match self {
            Self::Day(d) => t.date_naive().cmp(&d),
            Self::At(s) => t.timestamp().cmp(&s),
        }
    }
}

pub(super) async fn list(
    State(e): State<Emulator>,
    Path(account): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    use std::cmp::Ordering::{Greater, Less};
    if let Some(r) = injected(&e).await {
        return r;
    }
    let inner = e.lock();
    if !authorized(&inner, &account, &headers) {
        return twilio_error(401, 20003, "Authenticate");
    }
    // At most 1000 a page: a larger PageSize (a helper library's `list(limit=5000)` sends
    // its limit as the page size) is served 1000 at a time rather than refused.
    let page_size: usize = match q.get("PageSize").map(|s| s.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if n >= 1 => n.min(1000),
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
    let mut dates = [None; 3];
    for (slot, key) in dates.iter_mut().zip(["DateSent", "DateSent<", "DateSent>"]) {
        if let Some(v) = q.get(key) {
            match DateFilter::parse(v) {
                Some(f) => *slot = Some(f),
                None => return twilio_error(400, 20001, &format!("Invalid {key}: {v}")),
            }
        }
    }
    let [on, before, after] = dates;
    let matching: Vec<&Message> = inner
        .messages
        .iter()
        .rev()
        .filter(|m| m.account_sid == account)
        .filter(|m| q.get("To").is_none_or(|t| *t == m.to))
        .filter(|m| q.get("From").is_none_or(|f| *f == m.from))
        .filter(|m| {
            // A message not sent yet is found by when it was created.
            let t = m.sent.unwrap_or(m.created);
            on.is_none_or(|f| f.cmp(t).is_eq())
                && before.is_none_or(|f| f.cmp(t) != Greater)
                && after.is_none_or(|f| f.cmp(t) != Less)
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
        .filter_map(|k| {
            q.get(*k)
                .map(|v| format!("&{}={}", urlencode(k), urlencode(v)))
        })
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

pub(super) async fn fetch(
    State(e): State<Emulator>,
    Path((account, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = injected(&e).await {
        return r;
    }
    let inner = e.lock();
    if !authorized(&inner, &account, &headers) {
        return twilio_error(401, 20003, "Authenticate");
    }
    let sid = sid.strip_suffix(".json").unwrap_or(&sid);
    match inner.by_sid.get(sid).and_then(|i| inner.messages.get(*i)) {
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

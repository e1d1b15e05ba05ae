//! The respondents and the form owners: submissions at a steady rate across every form, edits
//! and deletions of earlier responses, each request retried (with the same
//! `Idempotency-Key` for a submission) while the API or Postgres is down, as a client of a
//! forms backend would.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Numbers the SMS provider has opted out (texted STOP): a send to them is refused for good.
pub const OPTED_OUT: [&str; 3] = ["+4790000001", "+4790000002", "+4790000003"];

/// What a response's phone answer is, and what the SMS integration must do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phone {
    /// Texted exactly once, to this E.164 number.
    Texted(String),
    /// No phone, or an opted-out one: exactly one dead letter.
    Refused,
}

/// The phone answer of the `i`th submission, as people type them, and what it means.
pub fn phone(i: usize) -> (Option<String>, Phone) {
    match i % 100 {
        0 => (None, Phone::Refused),
        1 => (
            Some(OPTED_OUT[i / 100 % OPTED_OUT.len()].to_string()),
            Phone::Refused,
        ),
        k => {
            let n = 1_000_000 + i % 8_999_999;
            let e164 = format!("+479{n:07}");
            let digits = format!("{n:07}");
            let typed = match k % 3 {
                0 => format!("+47 9{} {} {}", &digits[..2], &digits[2..4], &digits[4..]),
                1 => e164.clone(),
                _ => {
                    // A London number written with its trunk 0 in brackets.
                    let d = format!("{:04}", i % 10_000);
                    let e = format!("+44207946{d}");
                    return (Some(format!("+44 (0)20 7946 {d}")), Phone::Texted(e));
                }
            };
            (Some(typed), Phone::Texted(e164))
        }
    }
}

/// A submission the API acknowledged.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: String,
    pub form: usize,
    pub phone: Phone,
}

/// What the load did, shared with the chaos events (requests in flight) and the check.
#[derive(Default)]
pub struct Ledger {
    pub submitted: Mutex<Vec<Submitted>>,
    /// Responses an edit or deletion may pick (acknowledged, texted, not deleted, not busy).
    editable: Mutex<Vec<(String, usize)>>,
    pub in_flight: AtomicUsize,
    pub edits: AtomicU64,
    /// The name of each response's last acknowledged edit.
    pub edited: Mutex<HashMap<String, String>>,
    /// Responses whose deletion was acknowledged.
    pub deleted: Mutex<HashSet<String>>,
    pub deletes: AtomicU64,
    /// Requests sent again after a connection error or a 5xx.
    pub retries: AtomicU64,
    /// Requests that never got an answer within the retry budget.
    pub gave_up: AtomicU64,
    /// Answers that were not what the request should get (a bug, or the run's own error).
    pub refused: Mutex<Vec<String>>,
}

impl Ledger {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn submitted(&self) -> Vec<Submitted> {
        Self::lock(&self.submitted).clone()
    }

    pub fn edited(&self) -> HashMap<String, String> {
        Self::lock(&self.edited).clone()
    }

    pub fn deleted(&self) -> HashSet<String> {
        Self::lock(&self.deleted).clone()
    }

    pub fn refused(&self) -> Vec<String> {
        Self::lock(&self.refused).clone()
    }
}

/// Where and how to send.
#[derive(Clone)]
pub struct Target {
    pub http: reqwest::Client,
    pub api: String,
    pub key: String,
    pub forms: Vec<String>,
    pub tag: String,
}

/// A request and its answer, sent again on a connection error, a 5xx or a 429 for up to
/// three minutes (backoff 100 ms doubling to 2 s).
async fn send(
    t: &Target,
    ledger: &Ledger,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    idempotency_key: Option<&str>,
) -> Option<(u16, Value)> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut backoff = Duration::from_millis(100);
    ledger.in_flight.fetch_add(1, Ordering::SeqCst);
    let out = loop {
        let mut r = t
            .http
            .request(method.clone(), format!("{}{path}", t.api))
            .bearer_auth(&t.key)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            r = r.json(b);
        }
        if let Some(k) = idempotency_key {
            r = r.header("Idempotency-Key", k);
        }
        match r.send().await {
            Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {}
            Ok(resp) if resp.status().as_u16() == 204 => break Some((204, Value::Null)),
            Ok(resp) => {
                let status = resp.status().as_u16();
                // A body cut off (the API killed while answering) is no answer: ask again
                // (a submission with its idempotency key, an edit to the same value).
                if let Ok(v) = resp.json::<Value>().await {
                    break Some((status, v));
                }
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            ledger.gave_up.fetch_add(1, Ordering::Relaxed);
            break None;
        }
        ledger.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    };
    ledger.in_flight.fetch_sub(1, Ordering::SeqCst);
    out
}

fn refuse(ledger: &Ledger, what: String) {
    Ledger::lock(&ledger.refused).push(what);
}

async fn submit(t: Target, ledger: Arc<Ledger>, i: usize) {
    let form = i % t.forms.len();
    let (typed, phone) = phone(i);
    let mut answers = json!({"name": format!("respondent {i}")});
    if let Some(p) = typed {
        answers["phone"] = json!(p);
    }
    let key = format!("chaos-{}-{i}", t.tag);
    let path = format!("/v1/forms/{}/responses", t.forms[form]);
    let body = json!({ "answers": answers });
    let Some((status, v)) = send(
        &t,
        &ledger,
        reqwest::Method::POST,
        &path,
        Some(&body),
        Some(&key),
    )
    .await
    else {
        return;
    };
    let Some(id) = v["id"].as_str().filter(|_| status == 201 || status == 200) else {
        refuse(&ledger, format!("submission {i}: {status} {v}"));
        return;
    };
    if matches!(phone, Phone::Texted(_)) {
        Ledger::lock(&ledger.editable).push((id.to_string(), form));
    }
    Ledger::lock(&ledger.submitted).push(Submitted {
        id: id.to_string(),
        form,
        phone,
    });
}

/// Takes a random editable response out of the pool (it goes back after an edit).
fn pick(ledger: &Ledger) -> Option<(String, usize)> {
    let mut pool = Ledger::lock(&ledger.editable);
    if pool.is_empty() {
        return None;
    }
    let i = rand::rng().random_range(0..pool.len());
    Some(pool.swap_remove(i))
}

async fn edit(t: Target, ledger: Arc<Ledger>, (id, form): (String, usize), n: u64) {
    let path = format!("/v1/forms/{}/responses/{id}", t.forms[form]);
    // PATCH replaces the answers it names; the phone stays as it was.
    let name = format!("edited {n}");
    let body = json!({"answers": {"name": name}});
    match send(
        &t,
        &ledger,
        reqwest::Method::PATCH,
        &path,
        Some(&body),
        None,
    )
    .await
    {
        Some((200, _)) => {
            ledger.edits.fetch_add(1, Ordering::Relaxed);
            Ledger::lock(&ledger.edited).insert(id.clone(), name);
        }
        Some((s, v)) => refuse(&ledger, format!("edit of {id}: {s} {v}")),
        None => {}
    }
    Ledger::lock(&ledger.editable).push((id, form));
}

async fn delete(t: Target, ledger: Arc<Ledger>, (id, form): (String, usize)) {
    let path = format!("/v1/forms/{}/responses/{id}", t.forms[form]);
    match send(&t, &ledger, reqwest::Method::DELETE, &path, None, None).await {
        // 404: an earlier attempt deleted it and its answer was lost.
        Some((204 | 404, _)) => {
            ledger.deletes.fetch_add(1, Ordering::Relaxed);
            Ledger::lock(&ledger.deleted).insert(id.clone());
        }
        Some((s, v)) => refuse(&ledger, format!("deletion of {id}: {s} {v}")),
        None => {}
    }
}

/// Sends `n` submissions at `rate` a second (at most `concurrency` requests at once), and
/// more while `more` stays true, an edit after every `edit_every`th and a deletion after
/// every `delete_every`th; returns when every request has its answer.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    t: Target,
    ledger: Arc<Ledger>,
    more: Arc<std::sync::atomic::AtomicBool>,
    n: usize,
    rate: u32,
    concurrency: usize,
    edit_every: usize,
    delete_every: usize,
) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0.. {
        if i >= n && !more.load(Ordering::SeqCst) {
            break;
        }
        tick.tick().await;
        let Ok(p) = permits.clone().acquire_owned().await else {
            break;
        };
        let (tt, l) = (t.clone(), ledger.clone());
        tasks.spawn(async move {
            submit(tt, l, i).await;
            drop(p);
        });
        if edit_every > 0
            && i % edit_every == edit_every - 1
            && let Some(r) = pick(&ledger)
        {
            let (tt, l) = (t.clone(), ledger.clone());
            let p = permits.clone().acquire_owned().await;
            tasks.spawn(async move {
                edit(tt, l, r, i as u64).await;
                drop(p);
            });
        }
        if delete_every > 0
            && i % delete_every == delete_every - 1
            && let Some(r) = pick(&ledger)
        {
            let (tt, l) = (t.clone(), ledger.clone());
            let p = permits.clone().acquire_owned().await;
            tasks.spawn(async move {
                delete(tt, l, r).await;
                drop(p);
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

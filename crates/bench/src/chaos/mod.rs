//! `collect-bench chaos`: the whole pipeline as real processes (crates/bench/src/chaos/stack.rs)
//! with F forms, each with a Google Sheets and an SMS integration; N responses at a steady
//! rate through the forms API, with edits and deletions, while two streams of faults run at
//! random times, each fault several times:
//!
//! - parts: kill -9 of the API, of the reader holding the slot (the standby takes over), of
//!   the busiest `collect connect`, and of the broker, each started again a second later
//!   (a service manager's restart delay); an immediate Postgres restart (SIGQUIT, crash
//!   recovery). Each waits for its moment: requests in flight at the API or Postgres,
//!   records flowing through the reader or the broker, rows being written by the process;
//! - third parties: at the Sheets emulator, 5xx storms (answered before or after the write),
//!   429 storms and writes applied with the connection dropped; at the SMS emulator, 5xx,
//!   429 and messages accepted with the connection dropped. Each lasts `--storm-secs` (5) and
//!   at least until the provider has answered so five times.
//!
//! Then it waits for the pipeline to converge and checks everything against Postgres
//! ([`check`]), printing a table (and writing it to a file with `--write`).

mod check;
mod load;
pub(crate) mod stack;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt as _, stream};
use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

pub(crate) use check::FormSetup;
use check::{Sources, Tally};
use load::{Ledger, OPTED_OUT, Target};
use stack::{Options, Stack, metric};

/// Options of the chaos run.
#[derive(clap::Args)]
pub struct Args {
    /// The `collect` binary every part runs (build it with --release).
    #[arg(long, default_value = "target/release/collect")]
    collect_bin: PathBuf,
    /// Forms, each with a Sheets and an SMS integration.
    #[arg(long, default_value_t = 200)]
    forms: usize,
    /// Submissions (edits and deletions come on top).
    #[arg(long, default_value_t = 100_000)]
    responses: usize,
    /// Submissions per second.
    #[arg(long, default_value_t = 300)]
    rate: u32,
    /// An edit of an earlier response after every this many submissions (0: none).
    #[arg(long, default_value_t = 10)]
    edit_every: usize,
    /// A deletion after every this many submissions (0: none).
    #[arg(long, default_value_t = 50)]
    delete_every: usize,
    /// Times each fault happens.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Partitions of the topics.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Seconds each provider storm lasts at least.
    #[arg(long, default_value_t = 5)]
    storm_secs: u64,
    /// Seconds to wait for convergence after the load and the faults.
    #[arg(long, default_value_t = 900)]
    converge_secs: u64,
    /// Replace the part of this file between `<!-- chaos:begin -->` and `<!-- chaos:end -->`
    /// with the table.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Fail (exit 1) unless nothing was lost, duplicated or wrong.
    #[arg(long)]
    strict: bool,
}

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillApi,
    KillReader,
    KillConnect,
    KillBroker,
    RestartPostgres,
    Sheets5xx,
    Sheets429,
    SheetsDrop,
    Sms5xx,
    Sms429,
    SmsDrop,
}

impl Fault {
    const PARTS: [Fault; 5] = [
        Fault::KillApi,
        Fault::KillReader,
        Fault::KillConnect,
        Fault::KillBroker,
        Fault::RestartPostgres,
    ];
    const PROVIDERS: [Fault; 6] = [
        Fault::Sheets5xx,
        Fault::Sheets429,
        Fault::SheetsDrop,
        Fault::Sms5xx,
        Fault::Sms429,
        Fault::SmsDrop,
    ];

    fn label(self) -> &'static str {
        match self {
            Fault::KillApi => "kill -9 of the forms API",
            Fault::KillReader => "kill -9 of the active reader",
            Fault::KillConnect => "kill -9 of a connect process",
            Fault::KillBroker => "kill -9 of the broker",
            Fault::RestartPostgres => "immediate Postgres restart",
            Fault::Sheets5xx => "Sheets 5xx storms (before and after writing)",
            Fault::Sheets429 => "Sheets 429 storms",
            Fault::SheetsDrop => "Sheets writes applied, connection dropped",
            Fault::Sms5xx => "SMS 5xx storms",
            Fault::Sms429 => "SMS 429 storms",
            Fault::SmsDrop => "SMS sends accepted, connection dropped",
        }
    }
}

/// A provider's admin call that must succeed.
async fn admin(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Result<Value> {
    let r = http
        .request(method, format!("{base}/emulator/{path}"))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{path}: {status} {v}");
    }
    Ok(v)
}

/// Waits until `progress` grows past its first value (at most `limit`); whether it did.
async fn until_grows<F, Fut>(limit: Duration, mut progress: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let start = progress().await;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if progress().await > start {
            return true;
        }
    }
    false
}

/// The forms, their spreadsheets (each shared with a service account of its own) and both
/// integrations, attached through the connect API.
pub(crate) async fn set_up(
    http: &reqwest::Client,
    s: &Stack,
    key: &str,
    forms: usize,
    with_sms: bool,
) -> Result<(Vec<FormSetup>, Value)> {
    let sheets = s.sheets.url();
    let sms = s.sms.url();
    admin(
        http,
        &sheets,
        reqwest::Method::PUT,
        "quotas",
        json!({
        "read_per_minute_user": 100_000, "read_per_minute_project": 1_000_000,
        "write_per_minute_user": 100_000, "write_per_minute_project": 1_000_000}),
    )
    .await?;
    let account = admin(http, &sms, reqwest::Method::POST, "accounts", Value::Null).await?;
    admin(
        http,
        &sms,
        reqwest::Method::PUT,
        "limits",
        json!({"per_sender_per_second": 100, "account_per_second": 5_000}),
    )
    .await?;
    for n in OPTED_OUT {
        admin(
            http,
            &sms,
            reqwest::Method::POST,
            "opt-outs",
            json!({"number": n}),
        )
        .await?;
    }
    let connect = s.connects[0].url();
    let api = s.api.url();
    let made: Vec<Result<FormSetup>> = stream::iter(0..forms)
        .map(|i| {
            let (sheets, sms, connect, api, account) = (&sheets, &sms, &connect, &api, &account);
            async move {
                let form: Value = http
                    .post(format!("{api}/v1/forms"))
                    .bearer_auth(key)
                    .json(&json!({"title": format!("Chaos form {i}"), "questions": [
                        {"label": "Name", "type": "text", "alias": "name", "required": true},
                        {"label": "Mobile", "type": "phone", "alias": "phone"}]}))
                    .send()
                    .await?
                    .json()
                    .await?;
                let form_id = form["id"].as_str().with_context(|| format!("form not created: {form}"))?.to_string();
                let sa = admin(http, sheets, reqwest::Method::POST, "service-accounts",
                    json!({"name": format!("chaos-{i}"), "project": format!("chaos-{}", i % 10)})).await?;
                let email = sa["client_email"].as_str().context("service account")?.to_string();
                let sheet = admin(http, sheets, reqwest::Method::POST, "spreadsheets",
                    json!({"title": format!("Chaos form {i}"), "shared_with": [email]})).await?;
                let spreadsheet = sheet["spreadsheetId"].as_str().context("spreadsheet")?.to_string();
                let token = admin(http, sheets, reqwest::Method::POST, "access-tokens",
                    json!({"email": email, "ttl_seconds": 86_400})).await?["access_token"]
                    .as_str().context("token")?.to_string();
                let q = json!({"read_requests_per_minute_per_user": 100_000,
                               "read_requests_per_minute_per_project": 1_000_000,
                               "write_requests_per_minute_per_user": 100_000,
                               "write_requests_per_minute_per_project": 1_000_000});
                let attach = |body: Value| async move {
                    let r = http
                        .post(format!("{connect}/v1/integrations"))
                        .bearer_auth(key)
                        .json(&body)
                        .send()
                        .await?;
                    let status = r.status();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if status.as_u16() != 201 {
                        bail!("attaching: {status} {v}");
                    }
                    Ok::<Value, anyhow::Error>(v)
                };
                attach(json!({"kind": "sheets", "form_id": form_id, "name": format!("responses {i}"),
                    "config": {"spreadsheet_id": spreadsheet, "api_base_url": sheets, "quotas": q},
                    "credentials": {"type": "service_account", "key": sa}})).await?;
                if !with_sms {
                    return Ok(FormSetup { id: form_id, spreadsheet, token, sms_integration: String::new() });
                }
                let from = format!("+4741{:06}", 100_000 + i);
                let sms_integration = attach(json!({"kind": "sms", "form_id": form_id, "name": format!("confirmation {i}"),
                    "config": {"api_base_url": sms, "from": from, "to": {"question": "phone"},
                               "template": "Hi {{name}}, thanks for signing up. Ref {{response_id}}",
                               "rates": {"per_sender_per_second": 50, "account_per_second": 5_000},
                               "reconcile_after_secs": 10},
                    "credentials": {"account_sid": account["account_sid"], "auth_token": account["auth_token"]}}))
                    .await?["id"].as_str().context("integration id")?.to_string();
                Ok(FormSetup { id: form_id, spreadsheet, token, sms_integration })
            }
        })
        .buffered(8)
        .collect()
        .await;
    let forms = made.into_iter().collect::<Result<Vec<_>>>()?;
    Ok((forms, account))
}

/// Runs one fault of the parts stream; a line saying what happened.
async fn part_fault(
    f: Fault,
    s: &mut Stack,
    http: &reqwest::Client,
    ledger: &Ledger,
) -> Result<String> {
    let t = Instant::now();
    let what = match f {
        Fault::KillApi | Fault::RestartPostgres => {
            // A moment with requests in flight.
            let deadline = Instant::now() + Duration::from_secs(30);
            while ledger.in_flight.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let in_flight = ledger.in_flight.load(Ordering::SeqCst);
            if f == Fault::KillApi {
                s.api.kill9();
                tokio::time::sleep(Duration::from_secs(1)).await;
                s.api.start(http).await?;
            } else {
                s.pg.restart_immediate().await?;
            }
            format!("{} requests in flight", in_flight)
        }
        Fault::KillReader => {
            // A reader streams again within seconds of a Postgres restart or a kill.
            let deadline = Instant::now() + Duration::from_secs(60);
            let i = loop {
                if let Some(i) = s.active_reader(http).await {
                    break i;
                }
                if Instant::now() > deadline {
                    bail!("no reader was streaming for 60 s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let url = s.readers[i].url();
            let flowing = until_grows(Duration::from_secs(30), || {
                metric(http, &url, "collect_cdc_events_total")
            })
            .await;
            s.readers[i].kill9();
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.readers[i].start(http).await?;
            format!("{} (events flowing: {flowing})", s.readers[i].name)
        }
        Fault::KillConnect => {
            let mut busiest = 0;
            let mut most = -1.0;
            for (i, c) in s.connects.iter().enumerate() {
                let n = metric(http, &c.url(), "collect_connect_feed_subscriptions").await;
                if n > most {
                    (busiest, most) = (i, n);
                }
            }
            let url = s.connects[busiest].url();
            let writing = until_grows(Duration::from_secs(30), || {
                metric(http, &url, "collect_connect_written_total")
            })
            .await;
            s.connects[busiest].kill9();
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.connects[busiest].start(http).await?;
            format!(
                "{} running {most} integrations (writing: {writing})",
                s.connects[busiest].name
            )
        }
        Fault::KillBroker => {
            let producing = match s.active_reader(http).await {
                Some(i) => {
                    let url = s.readers[i].url();
                    until_grows(Duration::from_secs(30), || {
                        metric(http, &url, "collect_cdc_events_total")
                    })
                    .await
                }
                None => false,
            };
            s.broker.kill9()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.broker.restart().await?;
            format!("records flowing: {producing}")
        }
        _ => unreachable!("a provider fault in the parts stream"),
    };
    Ok(format!(
        "{:>7.1} s to recover; {what}",
        t.elapsed().as_secs_f64()
    ))
}

/// Runs one fault of the providers stream: sets it for at least `least`, and until the
/// provider has answered with it five times (at most 60 s), then clears it.
async fn provider_fault(
    f: Fault,
    http: &reqwest::Client,
    sheets: &str,
    sms: &str,
    least: Duration,
) -> Result<(f64, String)> {
    let (base, faults, stat) = match f {
        Fault::Sheets5xx => (
            sheets,
            json!({"error_rate": 0.3, "error_status": 503, "fail_after_write_rate": 0.2}),
            "injected_errors",
        ),
        Fault::Sheets429 => (
            sheets,
            // Throttled until cleared below: the storm lasts until it was met.
            json!({"throttle_seconds": 120}),
            "throttled",
        ),
        Fault::SheetsDrop => (
            sheets,
            json!({"drop_after_write_rate": 0.3}),
            "dropped_after_write",
        ),
        Fault::Sms5xx => (
            sms,
            json!({"error_rate": 0.3, "error_status": 500}),
            "injected_errors",
        ),
        Fault::Sms429 => (
            sms,
            // Throttled until cleared below: the storm lasts until it was met.
            json!({"throttle_seconds": 120}),
            "throttled",
        ),
        Fault::SmsDrop => (
            sms,
            json!({"drop_after_accept_rate": 0.3}),
            "dropped_after_accept",
        ),
        _ => unreachable!("a part fault in the providers stream"),
    };
    let count = || async {
        admin(http, base, reqwest::Method::GET, "stats", Value::Null)
            .await
            .ok()
            .and_then(|v| v[stat].as_f64())
            .unwrap_or(0.0)
    };
    let before = count().await;
    admin(http, base, reqwest::Method::PUT, "faults", faults).await?;
    let t = Instant::now();
    while (count().await < before + 5.0 || t.elapsed() < least)
        && t.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin(http, base, reqwest::Method::PUT, "faults", json!({})).await?;
    let met = count().await - before;
    Ok((
        met,
        format!("{:>7.1} s, met {met} times", t.elapsed().as_secs_f64()),
    ))
}

/// `rounds` of each of `kinds`, shuffled, at random moments spread over `span`.
fn schedule(kinds: &[Fault], rounds: usize, span: Duration) -> Vec<(Duration, Fault)> {
    let mut all: Vec<Fault> = kinds
        .iter()
        .flat_map(|k| std::iter::repeat_n(*k, rounds))
        .collect();
    let mut rng = rand::rng();
    all.shuffle(&mut rng);
    let slot = span.as_secs_f64() / (all.len() + 1) as f64;
    all.into_iter()
        .enumerate()
        .map(|(i, f)| {
            let at = slot * (i as f64 + rng.random_range(0.5..1.5));
            (Duration::from_secs_f64(at), f)
        })
        .collect()
}

fn table(
    a: &Args,
    ledger: &Ledger,
    counts: &[(Fault, usize, f64)],
    t: &Tally,
    load_secs: f64,
    converge: Option<f64>,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "`collect-bench chaos --forms {} --responses {} --rate {} --edit-every {} --delete-every {} --rounds {} --storm-secs {}`\n\n",
        a.forms, a.responses, a.rate, a.edit_every, a.delete_every, a.rounds, a.storm_secs
    ));
    out.push_str("| Figure | Value |\n| --- | --- |\n");
    let mut row = |k: &str, v: String| out.push_str(&format!("| {k} | {v} |\n"));
    row(
        "Forms (each a Sheets and an SMS integration)",
        a.forms.to_string(),
    );
    row(
        "Submissions acknowledged",
        ledger.submitted().len().to_string(),
    );
    row("Responses in Postgres", t.responses.to_string());
    row(
        "Edits / deletions",
        format!(
            "{} / {}",
            ledger.edits.load(Ordering::Relaxed),
            ledger.deletes.load(Ordering::Relaxed)
        ),
    );
    row("Load time", format!("{load_secs:.0} s"));
    row(
        "API requests retried (connection errors, 5xx)",
        ledger.retries.load(Ordering::Relaxed).to_string(),
    );
    row(
        "API requests given up (3 min without an answer)",
        ledger.gave_up.load(Ordering::Relaxed).to_string(),
    );
    for (f, n, met) in counts {
        if Fault::PROVIDERS.contains(f) {
            row(f.label(), format!("{n} (answered so {met} times)"));
        } else {
            row(f.label(), n.to_string());
        }
    }
    row("Rows in the sheets", t.rows.to_string());
    row("Texts sent", t.texts.to_string());
    row(
        "Dead letters (expected: one per response without a usable phone)",
        format!("{} ({} repeated)", t.dead_letters, t.dead_letter_repeats),
    );
    row("**Lost**", t.lost.to_string());
    row("**Duplicated**", t.duplicated.to_string());
    row(
        "**Wrong** (plus stale revisions)",
        format!("{} (+{})", t.wrong, t.stale),
    );
    row(
        "Time to converge after the last fault",
        match converge {
            Some(s) => format!("{s:.1} s"),
            None => format!("did not converge within {} s", a.converge_secs),
        },
    );
    out
}

/// Replaces what lies between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in `path`.
pub(crate) fn write_between(path: &std::path::Path, name: &str, text: &str) -> Result<()> {
    let old = std::fs::read_to_string(path)?;
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let (Some(b), Some(e)) = (old.find(&begin), old.find(&end)) else {
        bail!("{} has no {begin} ... {end} markers", path.display());
    };
    std::fs::write(path, format!("{}{begin}\n{text}{}", &old[..b], &old[e..]))?;
    Ok(())
}

pub async fn run(a: Args) -> Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let total = a.forms * 2;
    let mut s = Stack::start(
        &Options {
            bin: a.collect_bin.clone(),
            // Each process runs about 60% of the integrations: both work, and either can take
            // most of the other's while it restarts.
            capacity: (total * 3).div_ceil(5).max(1),
            partitions: a.partitions,
            fsync: true,
        },
        &http,
    )
    .await?;
    println!("chaos: logs of every part in {}", s.log_dir().display());
    let key = s.org("chaos").await?;
    let t = Instant::now();
    let (forms, _) = set_up(&http, &s, &key, a.forms, true).await?;
    // Every integration runs somewhere before the load starts.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut running = 0.0;
        for c in &s.connects {
            running += metric(&http, &c.url(), "collect_connect_feed_subscriptions").await;
        }
        if running >= total as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {running} of {total} integrations run after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "chaos: {} forms with {total} integrations set up in {:.1} s",
        a.forms,
        t.elapsed().as_secs_f64()
    );

    let ledger = Arc::new(Ledger::default());
    let target = Target {
        http: http.clone(),
        api: s.api.url(),
        key: key.clone(),
        forms: forms.iter().map(|f| f.id.clone()).collect(),
        tag: format!("{:x}", rand::rng().random::<u32>()),
    };
    let span = Duration::from_secs_f64(a.responses as f64 / f64::from(a.rate.max(1)));
    let started = Instant::now();
    let more = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = tokio::spawn(load::run(
        target,
        ledger.clone(),
        more.clone(),
        a.responses,
        a.rate,
        64,
        a.edit_every,
        a.delete_every,
    ));
    let (sheets_url, sms_url) = (s.sheets.url(), s.sms.url());
    let storm = Duration::from_secs(a.storm_secs);
    let providers = {
        let http = http.clone();
        let plan = schedule(&Fault::PROVIDERS, a.rounds, span);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut done = Vec::new();
            for (at, f) in plan {
                tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
                let (met, line) = match provider_fault(f, &http, &sheets_url, &sms_url, storm).await
                {
                    Ok(l) => l,
                    Err(e) => (0.0, format!("failed: {e:#}")),
                };
                println!(
                    "  [{:>6.1} s] {}: {line}",
                    started.elapsed().as_secs_f64(),
                    f.label()
                );
                done.push((f, met));
            }
            done
        })
    };
    let mut done = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (at, f) in schedule(&Fault::PARTS, a.rounds, span) {
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        match part_fault(f, &mut s, &http, &ledger).await {
            Ok(line) => {
                println!(
                    "  [{:>6.1} s] {}: {line}",
                    started.elapsed().as_secs_f64(),
                    f.label()
                );
                done.push((f, 0.0));
            }
            Err(e) => {
                println!("  {}: did not happen: {e:#}", f.label());
                skipped.push(format!("{}: {e:#}", f.label()));
                // A part that did not come back is started again for the rest of the run.
                for p in [&mut s.api]
                    .into_iter()
                    .chain(s.readers.iter_mut())
                    .chain(s.connects.iter_mut())
                {
                    if !p.running() {
                        p.start(&http).await?;
                    }
                }
            }
        }
    }
    for (f, met) in providers.await? {
        if met > 0.0 {
            done.push((f, met));
        } else {
            skipped.push(format!("{}: never met", f.label()));
        }
    }
    // The load runs until both streams of faults are over, so every fault meets traffic.
    more.store(false, Ordering::SeqCst);
    load.await?;
    let load_secs = started.elapsed().as_secs_f64();
    let calm = Instant::now();
    println!(
        "chaos: load and faults over after {:.0} s; waiting for convergence",
        started.elapsed().as_secs_f64()
    );

    let sources = Sources {
        http: &http,
        db_url: &s.db_url,
        sheets: &s.sheets.url(),
        sms: &s.sms.url(),
        brokers: &s.broker.bootstrap(),
        forms: &forms,
    };
    let acknowledged = ledger.submitted();
    let (tally, converged) = loop {
        let t = match check::look(&sources, &acknowledged, &ledger).await {
            Ok(t) => t,
            // A provider or the broker answering badly once is not the verdict.
            Err(e) if calm.elapsed() < Duration::from_secs(a.converge_secs) => {
                println!("  a look failed ({e:#}); looking again");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if t.converged() {
            break (t, Some(calm.elapsed().as_secs_f64()));
        }
        if calm.elapsed() > Duration::from_secs(a.converge_secs) {
            break (t, None);
        }
        println!(
            "  {:>6.0} s: {} lost, {} stale, {} wrong, {} duplicated so far",
            calm.elapsed().as_secs_f64(),
            t.lost,
            t.stale,
            t.wrong,
            t.duplicated
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    // Give a late duplicate every chance to appear: wait until no integration has records
    // left to write (at most two minutes), then longer than a worker's longest retry wait
    // (30 s), and look once more.
    let tally = if converged.is_some() {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let mut lag = 0.0;
            for c in &s.connects {
                lag += metric(&http, &c.url(), "collect_connect_consumer_lag").await;
            }
            if lag == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(35)).await;
        check::look(&sources, &acknowledged, &ledger).await?
    } else {
        tally
    };
    // Each fault: how many times, and (storms) how many answers the provider gave so.
    let mut counts: Vec<(Fault, usize, f64)> = Vec::new();
    for f in Fault::PARTS.iter().chain(Fault::PROVIDERS.iter()) {
        let of: Vec<f64> = done
            .iter()
            .filter(|(d, _)| d == f)
            .map(|(_, m)| *m)
            .collect();
        counts.push((*f, of.len(), of.iter().sum()));
    }
    let mut tally = tally;
    check::explain_untexted(&sources, &mut tally).await?;
    let report = table(&a, &ledger, &counts, &tally, load_secs, converged);
    println!("\n{report}");
    for e in &tally.examples {
        println!("  e.g. {e}");
    }
    for r in ledger.refused().iter().take(10) {
        println!("  refused by the API: {r}");
    }
    if let Some(path) = &a.write {
        write_between(path, "chaos", &report)?;
        println!("written to {}", path.display());
    }
    // Also: the run did what it says (every submission answered, edits and deletions made,
    // every fault at its moment), so a pass is not a run that tested little.
    let exercised = ledger.gave_up.load(Ordering::Relaxed) == 0
        && acknowledged.len() >= a.responses
        && (a.edit_every == 0 || ledger.edits.load(Ordering::Relaxed) > 0)
        && (a.delete_every == 0 || ledger.deletes.load(Ordering::Relaxed) > 0)
        && skipped.is_empty();
    if !exercised {
        println!(
            "  not every fault or request happened as planned: {} given up, {} of {} submissions acknowledged, skipped: {skipped:?}",
            ledger.gave_up.load(Ordering::Relaxed),
            acknowledged.len(),
            a.responses
        );
    }
    let clean = converged.is_some()
        && tally.lost == 0
        && tally.duplicated == 0
        && tally.wrong == 0
        && tally.stale == 0
        && ledger.refused().is_empty()
        && exercised;
    if a.strict && !clean {
        bail!(
            "the chaos run lost, duplicated or changed something (see above); logs in {}",
            s.log_dir().display()
        );
    }
    Ok(())
}

//! The Google Sheets connector against the dev stack's emulator (Google's quotas: 60 write
//! requests per minute per user, 300 per project):
//!
//! 1. backlog: N responses are submitted through the forms API first, then a Sheets
//!    integration is attached; measured: the time until every row is in the sheet, rows per
//!    second, write requests and rows per write request (from the emulator's request log);
//! 2. trickle: responses at a steady rate to the live integration; measured: write requests
//!    per minute and rows per request, and the delay from submission to the row being in the
//!    sheet (read back with values.get once a second, so within about a second).
//!
//! Every row is checked at the end: the sheet holds each submitted response exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Who reads the sheet back: another principal in another project, so the benchmark's reads
/// do not count against the connector's quotas.
const READER: &str = "reader@bench-reader.iam.gserviceaccount.com";

/// Options of the Sheets benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// The dev stack's stack.json (API, connect API and emulator URLs, API key).
    #[arg(long, default_value = ".collect/stack.json")]
    stack: String,
    /// Responses in the backlog.
    #[arg(long, default_value_t = 50_000)]
    backlog: usize,
    /// Concurrent clients submitting the backlog.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Responses per second in the trickle phase.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// Seconds of the trickle phase (0: skip it).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

pub(crate) struct Stack {
    pub(crate) http: reqwest::Client,
    pub(crate) api: String,
    pub(crate) key: String,
    pub(crate) connect: String,
    pub(crate) sheets: String,
}

impl Stack {
    /// The dev stack described by `path` (its stack.json), and that file's contents.
    pub(crate) fn load(path: &str) -> Result<(Self, Value)> {
        let stack: Value = serde_json::from_str(
            &std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        )?;
        let field = |k: &str| -> Result<String> {
            Ok(stack[k]
                .as_str()
                .with_context(|| format!("{k} missing from {path}"))?
                .to_string())
        };
        let s = Stack {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()?,
            api: field("api_url")?,
            key: field("api_key")?,
            connect: field("connect_url")?,
            sheets: field("sheets_emulator_url")?,
        };
        Ok((s, stack))
    }

    /// A service account `name` of `project` (its key and e-mail), a spreadsheet titled
    /// `title` shared with it and with `readers` (e-mails and their projects), and the
    /// readers' access tokens.
    pub(crate) async fn new_sheet(
        &self,
        name: &str,
        project: &str,
        title: &str,
        readers: &[(String, String)],
    ) -> Result<(Value, String, String, Vec<String>)> {
        let key = self
            .post(
                format!("{}/emulator/service-accounts", self.sheets),
                None,
                json!({"name": name, "project": project}),
            )
            .await?;
        let email = key["client_email"]
            .as_str()
            .context("client_email")?
            .to_string();
        let sheet = self
            .post(
                format!("{}/emulator/spreadsheets", self.sheets),
                None,
                json!({"title": title, "shared_with":
                    std::iter::once(&email).chain(readers.iter().map(|r| &r.0)).collect::<Vec<_>>()}),
            )
            .await?;
        let spreadsheet = sheet["spreadsheetId"]
            .as_str()
            .context("spreadsheetId")?
            .to_string();
        let mut tokens = Vec::new();
        for (reader, project) in readers {
            tokens.push(
                self.post(
                    format!("{}/emulator/access-tokens", self.sheets),
                    None,
                    json!({"email": reader, "project": project}),
                )
                .await?["access_token"]
                    .as_str()
                    .context("access_token")?
                    .to_string(),
            );
        }
        Ok((key, email, spreadsheet, tokens))
    }

    pub(crate) async fn post(
        &self,
        url: String,
        bearer: Option<&str>,
        body: Value,
    ) -> Result<Value> {
        let mut r = self.http.post(&url).json(&body);
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {url}: {status}: {v}");
        }
        Ok(v)
    }

    pub(crate) async fn get(&self, url: String, bearer: Option<&str>) -> Result<Value> {
        let mut r = self.http.get(&url);
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        Ok(r.send().await?.error_for_status()?.json().await?)
    }

    async fn submit(&self, form: &str, n: usize) -> Result<String> {
        let plan = ["free", "pro", "team"][n % 3];
        let v = self
            .post(
                format!("{}/v1/forms/{form}/responses", self.api),
                Some(&self.key),
                json!({"answers": {
                    "name": format!("Respondent {n}"),
                    "email": format!("user{n}@example.com"),
                    "age": 18 + n % 70,
                    "plan": plan,
                    "comment": "x".repeat(20 + n % 100),
                }}),
            )
            .await?;
        Ok(v["id"].as_str().context("response id")?.to_string())
    }

    /// Response ids in column A of the sheet, with how often each appears.
    pub(crate) async fn ids_in_sheet(
        &self,
        spreadsheet: &str,
        token: &str,
    ) -> Result<HashMap<String, u32>> {
        let resp = self
            .http
            .get(format!(
                "{}/v4/spreadsheets/{spreadsheet}/values/Responses!A2:A",
                self.sheets
            ))
            .bearer_auth(token)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::BAD_REQUEST {
            // The connector has not made the tab yet: Google answers 400 for the range.
            return Ok(HashMap::new());
        }
        let v: Value = resp.error_for_status()?.json().await?;
        let mut ids = HashMap::new();
        for row in v["values"].as_array().into_iter().flatten() {
            if let Some(id) = row[0].as_str() {
                *ids.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        Ok(ids)
    }

    async fn write_log(&self, principal: &str) -> Result<Vec<Value>> {
        let log = self
            .get(format!("{}/emulator/requests", self.sheets), None)
            .await?;
        Ok(log
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["principal"] == principal)
            .cloned()
            .collect())
    }
}

/// The cumulative buckets (`le` in seconds, count) of the connector's
/// `collect_connect_commit_to_durable_seconds` for one integration, from its `/metrics`.
async fn durable_buckets(s: &Stack, integration: &str) -> Result<Vec<(f64, f64)>> {
    let text = s
        .http
        .get(format!("{}/metrics", s.connect))
        .send()
        .await?
        .text()
        .await?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("collect_connect_commit_to_durable_seconds_bucket{")
        else {
            continue;
        };
        if !rest.contains(&format!("integration=\"{integration}\"")) {
            continue;
        }
        let le = rest
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(|v| {
                if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap_or(f64::NAN)
                }
            });
        let count = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok());
        if let (Some(le), Some(count)) = (le, count) {
            out.push((le, count));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// The `q` quantile of the events counted between two readings of the buckets, interpolated
/// within its bucket as Prometheus's `histogram_quantile` does.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, c - b)
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, c) in counts {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = if c > prev.1 {
                (rank - prev.1) / (c - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, c);
    }
    None
}

fn per_request(log: &[Value]) -> (usize, f64, u64, u64, u64) {
    let rows: Vec<u64> = log.iter().filter_map(|e| e["rows"].as_u64()).collect();
    let bytes = log
        .iter()
        .filter_map(|e| e["bytes"].as_u64())
        .max()
        .unwrap_or(0);
    let n = rows.len();
    let mean = if n == 0 {
        0.0
    } else {
        rows.iter().sum::<u64>() as f64 / n as f64
    };
    (
        n,
        mean,
        rows.iter().copied().min().unwrap_or(0),
        rows.iter().copied().max().unwrap_or(0),
        bytes,
    )
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: Args) -> Result<()> {
    let (s, _) = Stack::load(&args.stack)?;
    let s = Arc::new(s);

    let form = s
        .post(
            format!("{}/v1/forms", s.api),
            Some(&s.key),
            json!({"title": "sheets bench", "questions": [
                {"label": "Name", "type": "text", "alias": "name", "required": true},
                {"label": "E-mail", "type": "email", "alias": "email"},
                {"label": "Age", "type": "number", "alias": "age"},
                {"label": "Plan", "type": "single_choice", "alias": "plan", "options": [
                    {"code": "free", "label": "Free"}, {"code": "pro", "label": "Pro"},
                    {"code": "team", "label": "Team"}]},
                {"label": "Comment", "type": "long_text", "alias": "comment"}]}),
        )
        .await?;
    let form = form["id"].as_str().context("form id")?.to_string();

    // 1. The backlog.
    println!(
        "submitting {} responses ({} clients)...",
        args.backlog, args.concurrency
    );
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (s, form, next, total) = (s.clone(), form.clone(), next.clone(), args.backlog);
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(ids);
                }
                ids.push(s.submit(&form, n).await?);
            }
        }));
    }
    let mut backlog: Vec<String> = Vec::new();
    for c in clients {
        backlog.extend(c.await??);
    }
    println!("  submitted in {:.1} s", started.elapsed().as_secs_f64());

    let (key, email, spreadsheet, tokens) = s
        .new_sheet(
            &format!("bench-{}", &form[form.len() - 8..]),
            "collect-bench",
            "sheets bench",
            &[(READER.into(), "bench-reader".into())],
        )
        .await?;
    let token = tokens.concat();
    let before = s.get(format!("{}/emulator/stats", s.sheets), None).await?;

    let attached = Instant::now();
    let no_buckets: Vec<(f64, f64)> = Vec::new();
    let integration = s
        .post(
            format!("{}/v1/integrations", s.connect),
            Some(&s.key),
            json!({"kind": "sheets", "form_id": form, "name": format!("sheets bench {form}"),
                   "config": {"spreadsheet_id": spreadsheet, "api_base_url": s.sheets},
                   "credentials": {"type": "service_account", "key": key}}),
        )
        .await?;
    let integration = integration["id"]
        .as_str()
        .context("integration id")?
        .to_string();
    println!("integration {integration} attached; draining the backlog...");
    let deadline = attached + Duration::from_secs(3600);
    // Poll the sheet's column A: the rows that are really there.
    loop {
        let ids = s.ids_in_sheet(&spreadsheet, &token).await?;
        if ids.len() >= backlog.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {} of {} rows after an hour", ids.len(), backlog.len());
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let drained = attached.elapsed();
    let after = s.get(format!("{}/emulator/stats", s.sheets), None).await?;
    let log = s.write_log(&email).await?;
    let (n, mean, min, max, bytes) = per_request(&log);
    let delta = |k: &str| {
        after[k]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before[k].as_u64().unwrap_or(0))
    };
    println!("backlog of {} responses:", backlog.len());
    println!(
        "  drained in {:.1} s: {:.0} rows/s",
        drained.as_secs_f64(),
        backlog.len() as f64 / drained.as_secs_f64()
    );
    println!(
        "  write requests: {} (values.batchUpdate: {n}; the rest grow the grid), 429 answers: {}",
        delta("write_requests"),
        delta("throttled")
    );
    println!(
        "  rows per values.batchUpdate: mean {mean:.0}, min {min}, max {max}; largest request {:.2} MB",
        bytes as f64 / 1e6
    );
    let backlog_buckets = durable_buckets(&s, &integration).await?;
    if let (Some(p50), Some(p99)) = (
        quantile(&no_buckets, &backlog_buckets, 0.5),
        quantile(&no_buckets, &backlog_buckets, 0.99),
    ) {
        println!(
            "  commit to durable in the sheet (the connector's histogram): p50 {p50:.1} s, p99 {p99:.1} s"
        );
    }

    // 2. The trickle.
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    if args.seconds > 0 {
        println!(
            "trickle: {} responses/s for {} s...",
            args.rate, args.seconds
        );
        let log_before = log.len();
        let t0 = Instant::now();
        let mut sent: BTreeMap<String, Instant> = BTreeMap::new();
        let gap = Duration::from_micros(1_000_000 / args.rate.max(1));
        let mut next_at = Instant::now();
        let mut n = args.backlog;
        let mut last_poll = Instant::now();
        let mut pending: BTreeMap<String, Instant> = BTreeMap::new();
        let poll = |pending: &mut BTreeMap<String, Instant>,
                    latency: &mut Histogram<u64>,
                    ids: HashMap<String, u32>| {
            let now = Instant::now();
            pending.retain(|id, at| {
                if ids.contains_key(id) {
                    let _ = latency.record(now.duration_since(*at).as_millis() as u64);
                    false
                } else {
                    true
                }
            });
        };
        while t0.elapsed() < Duration::from_secs(args.seconds) {
            let id = s.submit(&form, n).await?;
            n += 1;
            let now = Instant::now();
            sent.insert(id.clone(), now);
            pending.insert(id, now);
            if last_poll.elapsed() >= Duration::from_millis(1100) {
                last_poll = Instant::now();
                let ids = s.ids_in_sheet(&spreadsheet, &token).await?;
                poll(&mut pending, &mut latency, ids);
            }
            next_at += gap;
            if let Some(wait) = next_at.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let end = Instant::now() + Duration::from_secs(120);
        while !pending.is_empty() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let ids = s.ids_in_sheet(&spreadsheet, &token).await?;
            poll(&mut pending, &mut latency, ids);
        }
        let minutes = t0.elapsed().as_secs_f64() / 60.0;
        let log = s.write_log(&email).await?;
        let trickle_log = &log[log_before.min(log.len())..];
        let (n, mean, _, max, _) = per_request(trickle_log);
        println!(
            "  {} responses; write requests: {n} ({:.1} per minute; quota 60), rows per request: mean {mean:.1}, max {max}",
            sent.len(),
            n as f64 / minutes
        );
        println!(
            "  submission to row in the sheet (read every 1.1 s): p50 {} ms, p99 {} ms, max {} ms; {} never arrived",
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.max(),
            pending.len()
        );
        let trickle_buckets = durable_buckets(&s, &integration).await?;
        if let (Some(p50), Some(p99)) = (
            quantile(&backlog_buckets, &trickle_buckets, 0.5),
            quantile(&backlog_buckets, &trickle_buckets, 0.99),
        ) {
            println!(
                "  commit to durable in the sheet (the connector's histogram): p50 {:.0} ms, p99 {:.0} ms",
                p50 * 1e3,
                p99 * 1e3
            );
        }
        backlog.extend(sent.into_keys());
    }

    // Every response once.
    let ids = s.ids_in_sheet(&spreadsheet, &token).await?;
    let missing = backlog.iter().filter(|id| !ids.contains_key(*id)).count();
    let doubled = ids.values().filter(|c| **c > 1).count();
    println!(
        "check: {} responses submitted, {} rows in the sheet, {missing} missing, {doubled} with more than one row",
        backlog.len(),
        ids.values().sum::<u32>()
    );
    if missing > 0 || doubled > 0 {
        bail!("the sheet does not hold every response exactly once");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_within_buckets_between_two_readings() {
        let before = vec![(1.0, 10.0), (2.0, 10.0), (f64::INFINITY, 10.0)];
        let after = vec![(1.0, 10.0), (2.0, 110.0), (f64::INFINITY, 110.0)];
        // The 100 new events all fell in (1, 2]: the median is half way.
        assert_eq!(quantile(&before, &after, 0.5), Some(1.5));
        assert_eq!(quantile(&before, &before, 0.5), None);
        assert_eq!(quantile(&[], &after, 1.0), Some(2.0));
    }
}

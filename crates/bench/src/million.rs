//! `collect-bench million`: N responses (a million by default) across F forms, each form with
//! a Google Sheets integration, through the whole pipeline as real processes (the chaos run's
//! stack, without faults), in three timed phases:
//!
//! 1. the forms API alone: N submissions from C concurrent clients (the readers and the
//!    connect processes stopped, so the WAL waits in the slot): submissions per second and
//!    latency percentiles;
//! 2. the same WAL decoded twice: `pg_recvlogical` on a second pgoutput slot created before
//!    the load, then the reader (`collect cdc`) on its own slot, each to the WAL's end, alone
//!    on the machine but for the broker: drain times and their ratio;
//! 3. from the connect processes' start (the topic holds every response) until every sheet
//!    holds each of its form's responses (read back with values.get): rows per second
//!    across all sheets;
//!
//! sampling every process once a second throughout: resident memory and threads (Postgres as
//! the sum of its processes' proportional set sizes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt as _, stream};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::chaos::stack::{Options, Stack, metric};
use crate::chaos::{FormSetup, set_up};

/// Options of the million-response run.
#[derive(clap::Args)]
pub struct Args {
    /// The `collect` binary every part runs (build it with --release).
    #[arg(long, default_value = "target/release/collect")]
    collect_bin: std::path::PathBuf,
    /// Forms, each with a Sheets integration.
    #[arg(long, default_value_t = 200)]
    forms: usize,
    /// Responses.
    #[arg(long, default_value_t = 1_000_000)]
    responses: usize,
    /// Concurrent API clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Partitions of the topics.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Seconds to wait for the sheets after the reader starts.
    #[arg(long, default_value_t = 3600)]
    deliver_secs: u64,
    /// Replace the part of this file between `<!-- million:begin -->` and
    /// `<!-- million:end -->` with the table.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
}

/// Peak resident memory (KiB) and threads seen per process.
#[derive(Default)]
struct Peaks(BTreeMap<String, (u64, u64)>);

fn status_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Proportional set size (KiB) of a process: its share of shared pages, so that a sum over
/// Postgres's processes counts shared buffers once.
fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The postmaster and every process it started.
fn postgres_tree(postmaster: u32) -> Vec<u32> {
    let mut out = vec![postmaster];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            out.push(pid);
        }
    }
    out
}

impl Peaks {
    fn see(&mut self, name: &str, rss_kb: u64, threads: u64) {
        let e = self.0.entry(name.to_string()).or_default();
        e.0 = e.0.max(rss_kb);
        e.1 = e.1.max(threads);
    }

    fn sample(&mut self, s: &Stack) {
        for p in s.parts() {
            if let Some(pid) = p.pid() {
                self.see(
                    &p.name,
                    status_field(pid, "VmRSS:"),
                    status_field(pid, "Threads:"),
                );
            }
        }
        if let Some(pid) = s.broker.pid() {
            self.see(
                "broker (Tansu)",
                status_field(pid, "VmRSS:"),
                status_field(pid, "Threads:"),
            );
        }
        let pm = std::fs::read_to_string(s.pg.dir().join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if let Some(pm) = pm {
            let tree = postgres_tree(pm);
            let pss: u64 = tree.iter().map(|p| pss_kb(*p)).sum();
            self.see("Postgres (all processes, PSS)", pss, tree.len() as u64);
        }
    }
}

async fn sql(url: &str) -> Result<tokio_postgres::Client> {
    collect_testkit::connect(url).await
}

/// Rows (response ids) in each form's sheet.
async fn rows(http: &reqwest::Client, sheets: &str, forms: &[FormSetup]) -> Result<Vec<usize>> {
    let read: Vec<Result<usize>> = stream::iter(forms)
        .map(|f| async move {
            let v: Value = http
                .get(format!(
                    "{sheets}/v4/spreadsheets/{}/values/Responses!A2:A",
                    f.spreadsheet
                ))
                .bearer_auth(&f.token)
                .send()
                .await?
                .json()
                .await?;
            let ids: std::collections::HashSet<&str> = v["values"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|r| r.get(0).and_then(Value::as_str))
                .collect();
            let all = v["values"].as_array().map_or(0, Vec::len);
            if ids.len() != all {
                bail!("a response in two rows in {}", f.spreadsheet);
            }
            Ok(ids.len())
        })
        .buffered(8)
        .collect()
        .await;
    read.into_iter().collect()
}

pub async fn run(a: Args) -> Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let mut s = Stack::start(
        &Options {
            bin: a.collect_bin.clone(),
            capacity: a.forms.div_ceil(5) * 3,
            partitions: a.partitions,
            fsync: true,
        },
        &http,
    )
    .await?;
    println!("million: logs of every part in {}", s.log_dir().display());
    let key = s.org("million").await?;
    let (forms, _) = set_up(&http, &s, &key, a.forms, false).await?;
    // Sampled from the load on: the readers and connect processes are stopped first.
    let mut peaks = Peaks::default();

    // Phase 1: the API alone; the WAL waits in both slots, the connect processes are
    // stopped (their integrations wait at their stored positions).
    for r in &mut s.readers {
        r.kill9();
    }
    for c in &mut s.connects {
        c.kill9();
    }
    let c = sql(&s.db_url).await?;
    c.batch_execute("SELECT pg_create_logical_replication_slot('reference', 'pgoutput')")
        .await?;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (http, api, key) = (http.clone(), s.api.url(), key.clone());
            let forms: Vec<String> = forms.iter().map(|f| f.id.clone()).collect();
            let (next, errors, n) = (next.clone(), errors.clone(), a.responses as u64);
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(hist);
                    }
                    let form = &forms[i as usize % forms.len()];
                    let body = json!({"answers": {"name": format!("respondent {i}"),
                                                  "phone": format!("+47 9{:07}", i % 10_000_000)}});
                    let t = Instant::now();
                    let ok = http
                        .post(format!("{api}/v1/forms/{form}/responses"))
                        .bearer_auth(&key)
                        .json(&body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().as_u16() == 201);
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut clients = futures::future::join_all(clients);
    let sampled = loop {
        tokio::select! {
            done = &mut clients => break done,
            () = tokio::time::sleep(Duration::from_secs(1)) => peaks.sample(&s),
        }
    };
    for h in sampled {
        hist.add(h??)?;
    }
    let api_secs = started.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    let end: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let wal_bytes: i64 = c
        .query_one(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'reference'",
            &[],
        )
        .await?
        .get(0);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  API: {} submissions in {api_secs:.1} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, {errors} errors; WAL {:.0} MB",
        a.responses,
        (a.responses as u64 - errors) as f64 / api_secs,
        ms(0.5),
        ms(0.99),
        wal_bytes as f64 / 1e6
    );

    // Phase 2: the same WAL through pg_recvlogical, then through the reader.
    let t = Instant::now();
    crate::cdc::recvlogical(&s.db_url, "reference", &end)?;
    let recv_secs = t.elapsed().as_secs_f64();
    c.batch_execute("SELECT pg_drop_replication_slot('reference')")
        .await?;
    println!("  pg_recvlogical: {recv_secs:.1} s to the WAL's end");
    let reader_start = Instant::now();
    s.readers[0].start(&http).await?;
    let deadline = Instant::now() + Duration::from_secs(a.deliver_secs);
    loop {
        let done: bool = c
            .query_one(
                "SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = 'collect'",
                &[&end],
            )
            .await?
            .get(0);
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("the reader did not reach {end}");
        }
        peaks.sample(&s);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reader_secs = reader_start.elapsed().as_secs_f64();
    println!(
        "  reader: {reader_secs:.1} s to the WAL's end ({:.2}x pg_recvlogical's rate)",
        recv_secs / reader_secs
    );

    // Phase 3: the connect processes start again; every sheet complete.
    let connect_start = Instant::now();
    for c in &mut s.connects {
        c.start(&http).await?;
    }
    let per_form = |f: usize| a.responses / a.forms + usize::from(f < a.responses % a.forms);
    let want: usize = a.responses;
    let mut last_look = Instant::now();
    let sheets_secs = loop {
        peaks.sample(&s);
        let mut written = 0.0;
        for p in &s.connects {
            written += metric(&http, &p.url(), "collect_connect_committed_total").await;
        }
        if written as usize >= want || last_look.elapsed() > Duration::from_secs(60) {
            last_look = Instant::now();
            let got = rows(&http, &s.sheets.url(), &forms).await?;
            if got.iter().enumerate().all(|(f, n)| *n == per_form(f)) {
                break connect_start.elapsed().as_secs_f64();
            }
            println!(
                "  {:>6.0} s: {} of {want} rows",
                connect_start.elapsed().as_secs_f64(),
                got.iter().sum::<usize>()
            );
        }
        if Instant::now() > deadline {
            bail!("the sheets were not complete after {} s", a.deliver_secs);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    peaks.sample(&s);

    let mut report = String::new();
    report.push_str(&format!(
        "`collect-bench million --forms {} --responses {} --concurrency {}`\n\n| Figure | Value |\n| --- | --- |\n",
        a.forms, a.responses, a.concurrency
    ));
    let mut row = |k: &str, v: String| report.push_str(&format!("| {k} | {v} |\n"));
    row(
        "API: submissions per second",
        format!(
            "{:.0} ({} in {api_secs:.0} s, {errors} errors)",
            (a.responses as u64 - errors) as f64 / api_secs,
            a.responses
        ),
    );
    row(
        "API: latency p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            ms(0.5),
            ms(0.99),
            hist.max() as f64 / 1000.0
        ),
    );
    row(
        "WAL written by the load",
        format!("{:.0} MB", wal_bytes as f64 / 1e6),
    );
    row(
        "pg_recvlogical to the WAL's end",
        format!("{recv_secs:.1} s"),
    );
    row(
        "Reader (`collect cdc`) to the WAL's end, from its process start",
        format!(
            "{reader_secs:.1} s: **{:.2}x** pg_recvlogical's rate",
            recv_secs / reader_secs
        ),
    );
    row(
        "Every sheet complete, from the connect processes' start (the topic holding every response)",
        format!(
            "{sheets_secs:.0} s: **{:.0} rows/s** across {} sheets",
            want as f64 / sheets_secs,
            a.forms
        ),
    );
    for (name, (kb, threads)) in &peaks.0 {
        row(
            &format!("Peak of {name}"),
            format!(
                "{:.0} MB, {threads} {}",
                *kb as f64 / 1024.0,
                if name.starts_with("Postgres") {
                    "processes"
                } else {
                    "threads"
                }
            ),
        );
    }
    println!("\n{report}");
    if let Some(path) = &a.write {
        crate::chaos::write_between(path, "million", &report)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

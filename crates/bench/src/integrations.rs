//! Many integrations in one `collect connect` process (the dev stack's): F forms, each with
//! K Google Sheets integrations (each its own service account, project and spreadsheet, as
//! separate customers would have), attached through the connect API. Measured from
//! `/proc/<pid>` of the process: threads, open file descriptors, resident memory, and CPU
//! while idle once every integration runs; then the delay from attaching one more
//! integration to its first row in the sheet; then R responses per form submitted through
//! the forms API: the time until every sheet holds each of its form's responses exactly
//! once (read back with values.get, one reader per sheet), rows per second, and the peak
//! threads and resident memory meanwhile. With `--handover`, then: a second `collect
//! connect` started like the first, one response per form submitted, SIGKILL of the first;
//! the time until the second runs every integration and until every sheet holds every
//! response once.
//!
//! The process's capacity (`COLLECT_CONNECT_CAPACITY`, 2,000) must exceed F x K.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt as _, stream};
use serde_json::{Value, json};

use crate::sheets::Stack;

/// Options of the integrations benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// The dev stack's stack.json.
    #[arg(long, default_value = ".collect/stack.json")]
    stack: String,
    /// Forms.
    #[arg(long, default_value_t = 500)]
    forms: usize,
    /// Sheets integrations per form.
    #[arg(long, default_value_t = 2)]
    per_form: usize,
    /// Responses per form in the load phase.
    #[arg(long, default_value_t = 20)]
    responses: usize,
    /// Seconds of the idle measurement.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Concurrent requests while setting up and submitting.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Then start a second `collect connect`, kill the first with SIGKILL and measure the
    /// hand-over.
    #[arg(long)]
    handover: bool,
}

/// One reading of `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    threads: u64,
    rss_kb: u64,
    hwm_kb: u64,
    fds: u64,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

fn sample(pid: u32) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(Sample {
        threads: field("Threads:"),
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64,
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after the ')'.
        cpu_ticks: ticks(11) + ticks(12),
    })
}

fn connect_pid(stack: &Value) -> Result<u32> {
    let log = stack["logs"]["connect"]
        .as_str()
        .context("logs.connect missing from stack.json")?;
    let state = std::path::Path::new(log)
        .parent()
        .and_then(|p| p.parent())
        .context("state directory")?;
    let text = std::fs::read_to_string(state.join("connect.pid"))?;
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .context("connect.pid")
}

/// A value of a connect process's `/metrics` at `base` (every series of `name`, summed).
async fn metric(s: &Stack, base: &str, name: &str) -> Result<f64> {
    let text = s
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(collect_testkit::metric_sum(&text, name))
}

/// Tells this run's names from earlier runs' on the same stack.
fn run_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{:x}", ms % 0xffff_ffff)
    })
}

/// Active integrations in the stack's database (every one a process should run).
async fn active(database_url: &str) -> Result<usize> {
    let (c, conn) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM integrations WHERE status = 'active'",
            &[],
        )
        .await?
        .get(0);
    task.abort();
    Ok(n as usize)
}

/// One integration's destination.
struct Sheet {
    form: usize,
    spreadsheet: String,
    /// Readers' tokens (each its own user and project: Google's read quota is per user).
    readers: Vec<String>,
}

/// Makes a spreadsheet shared with a service account of its own project, attaches a Sheets
/// integration of `form` writing into it, and returns it with a reader's token.
async fn attach(s: &Stack, form_ix: usize, form: &str, k: usize, readers: usize) -> Result<Sheet> {
    let k = format!("{}-{k}", run_tag());
    let readers: Vec<(String, String)> = (0..readers)
        .map(|r| {
            (
                format!("reader{r}-{k}@scale-reader-{r}-{k}.iam.gserviceaccount.com"),
                format!("scale-reader-{r}-{k}"),
            )
        })
        .collect();
    let (key, _, spreadsheet, tokens) = s
        .new_sheet(
            &format!("scale-{k}"),
            &format!("scale-{k}"),
            &format!("scale {k}"),
            &readers,
        )
        .await?;
    s.post(
        format!("{}/v1/integrations", s.connect),
        Some(&s.key),
        json!({"kind": "sheets", "form_id": form, "name": format!("scale {k}"),
               "config": {"spreadsheet_id": spreadsheet, "api_base_url": s.sheets},
               "credentials": {"type": "service_account", "key": key}}),
    )
    .await?;
    Ok(Sheet {
        form: form_ix,
        spreadsheet,
        readers: tokens,
    })
}

async fn new_form(s: &Stack, title: String) -> Result<String> {
    let v = s
        .post(
            format!("{}/v1/forms", s.api),
            Some(&s.key),
            json!({"title": title, "questions": [
                {"label": "Name", "type": "text", "alias": "name", "required": true},
                {"label": "Comment", "type": "long_text", "alias": "comment"}]}),
        )
        .await?;
    Ok(v["id"].as_str().context("form id")?.to_string())
}

async fn submit(s: &Stack, form: &str, n: usize) -> Result<String> {
    let v = s
        .post(
            format!("{}/v1/forms/{form}/responses", s.api),
            Some(&s.key),
            json!({"answers": {"name": format!("Respondent {n}"), "comment": "x".repeat(20 + n % 80)}}),
        )
        .await?;
    Ok(v["id"].as_str().context("response id")?.to_string())
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: Args) -> Result<()> {
    let (s, stack) = Stack::load(&args.stack)?;
    let s = Arc::new(s);
    let pid = connect_pid(&stack)?;
    let before = sample(pid)?;
    let database_url = stack["database_url"]
        .as_str()
        .context("database_url missing from stack.json")?
        .to_string();
    let subscribed0 = active(&database_url).await?;
    println!(
        "collect connect (pid {pid}) before: {} threads, {} fds, {:.0} MB resident, {subscribed0} integrations",
        before.threads,
        before.fds,
        before.rss_kb as f64 / 1024.0
    );

    // Forms and integrations.
    let n = args.forms * args.per_form;
    println!(
        "creating {} forms and attaching {n} Sheets integrations...",
        args.forms
    );
    let t = Instant::now();
    let forms: Vec<String> = stream::iter(0..args.forms)
        .map(|i| {
            let s = s.clone();
            async move { new_form(&s, format!("scale form {i}")).await }
        })
        .buffered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let sheets: Vec<Sheet> = stream::iter(0..n)
        .map(|k| {
            let (s, form) = (s.clone(), forms[k % args.forms].clone());
            async move { attach(&s, k % args.forms, &form, k, 1).await }
        })
        .buffered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    println!("  attached in {:.1} s", t.elapsed().as_secs_f64());
    let want = active(&database_url).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while metric(&s, &s.connect, "collect_connect_feed_subscriptions").await? < want as f64 {
        if Instant::now() > deadline {
            bail!("not every integration runs after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "  every integration running {:.1} s after the first was attached",
        t.elapsed().as_secs_f64()
    );

    // Idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = sample(pid)?;
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let b = sample(pid)?;
    let idle_cpu = (b.cpu_ticks - a.cpu_ticks) as f64 / TICKS / args.idle_secs as f64 * 100.0;
    println!(
        "idle with {} integrations: {} threads, {} fds, {:.0} MB resident, {idle_cpu:.2}% of a core over {} s",
        want,
        b.threads,
        b.fds,
        b.rss_kb as f64 / 1024.0,
        args.idle_secs
    );

    // A new integration on a form with a response.
    let form = new_form(&s, "scale latecomer".into()).await?;
    let id = submit(&s, &form, 0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    // Read every 0.1 s by 12 readers in turn (each within Google's 60 reads a minute).
    let late = attach(&s, usize::MAX, &form, n, 12).await?;
    let mut polls = 0usize;
    let first_row = loop {
        polls += 1;
        let reader = &late.readers[polls % late.readers.len()];
        let ids = s.ids_in_sheet(&late.spreadsheet, reader).await?;
        if ids.contains_key(&id) {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the new integration wrote nothing in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "a new integration: its first row {:.2} s after it was attached (polled every 0.1 s)",
        first_row.as_secs_f64()
    );

    // Load.
    let total = args.forms * args.responses;
    println!(
        "submitting {total} responses ({} per form)...",
        args.responses
    );
    let peak = Arc::new(std::sync::Mutex::new(Sample::default()));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while let Ok(x) = sample(pid) {
                {
                    let mut p = peak
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    p.threads = p.threads.max(x.threads);
                    p.rss_kb = p.rss_kb.max(x.rss_kb);
                    p.fds = p.fds.max(x.fds);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let t = Instant::now();
    let mut by_form = submit_all(&s, &forms, total, args.concurrency).await?;
    println!("  submitted in {:.1} s", t.elapsed().as_secs_f64());
    let sheets = Arc::new(sheets);
    let (wrong, twice) = converge(&s, &sheets, &by_form).await?;
    let converged = t.elapsed();
    sampling.abort();
    let peak = *peak
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let after = sample(pid)?;
    let rows = total * args.per_form;
    println!(
        "  every sheet complete {:.1} s after the first submission: {rows} rows, {:.0} rows/s",
        converged.as_secs_f64(),
        rows as f64 / converged.as_secs_f64()
    );
    println!("  rows of another form: {wrong}; responses in two rows: {twice}");
    println!(
        "  peak while loaded: {} threads, {} fds, {:.0} MB resident (VmHWM {:.0} MB)",
        peak.threads,
        peak.fds,
        peak.rss_kb as f64 / 1024.0,
        after.hwm_kb as f64 / 1024.0
    );
    if wrong > 0 || twice > 0 {
        bail!("{wrong} rows of another form, {twice} responses twice");
    }
    if args.handover {
        let all = active(&database_url).await?;
        handover(
            &s,
            pid,
            &forms,
            &sheets,
            &mut by_form,
            all,
            args.concurrency,
        )
        .await?;
    }
    Ok(())
}

/// Submits `total` responses round robin over `forms`; each form's response ids.
async fn submit_all(
    s: &Arc<Stack>,
    forms: &[String],
    total: usize,
    concurrency: usize,
) -> Result<Vec<HashSet<String>>> {
    let next = Arc::new(AtomicUsize::new(0));
    let forms = Arc::new(forms.to_vec());
    let submitted: Vec<(usize, String)> = stream::iter(0..total)
        .map(|_| {
            let (s, forms, next) = (s.clone(), forms.clone(), next.clone());
            async move {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let f = k % forms.len();
                Ok::<_, anyhow::Error>((f, submit(&s, &forms[f], k).await?))
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let mut by_form = vec![HashSet::new(); forms.len()];
    for (f, id) in submitted {
        by_form[f].insert(id);
    }
    Ok(by_form)
}

/// Reads every sheet (each reader at most once a second) until each holds every response
/// of its form; then how many rows belong to another form and how many responses are in
/// two rows.
async fn converge(
    s: &Arc<Stack>,
    sheets: &Arc<Vec<Sheet>>,
    by_form: &[HashSet<String>],
) -> Result<(usize, usize)> {
    let mut pending: Vec<usize> = (0..sheets.len()).collect();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let (mut wrong, mut twice) = (0usize, 0usize);
    while !pending.is_empty() {
        let round = Instant::now();
        let results: Vec<(usize, Result<std::collections::HashMap<String, u32>>)> =
            stream::iter(pending.clone())
                .map(|i| {
                    let (s, sheets) = (s.clone(), sheets.clone());
                    async move {
                        let sh = &sheets[i];
                        (i, s.ids_in_sheet(&sh.spreadsheet, &sh.readers[0]).await)
                    }
                })
                .buffer_unordered(32)
                .collect()
                .await;
        pending.clear();
        for (i, r) in results {
            let ids = r?;
            let want = &by_form[sheets[i].form];
            if want.iter().all(|id| ids.contains_key(id)) {
                wrong += ids.keys().filter(|id| !want.contains(*id)).count();
                twice += ids.values().filter(|c| **c > 1).count();
            } else {
                pending.push(i);
            }
        }
        if Instant::now() > deadline {
            bail!("{} sheets incomplete after 30 minutes", pending.len());
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(1100).saturating_sub(round.elapsed())).await;
        }
    }
    Ok((wrong, twice))
}

/// Starts a second `collect connect` like the first (its command line, environment and
/// directory, another `--listen` port), submits one response per form, kills the first with
/// SIGKILL, and measures how long until the second runs every integration and until every
/// sheet holds every response once. The second process is stopped at the end.
#[allow(clippy::too_many_arguments)]
async fn handover(
    s: &Arc<Stack>,
    pid: u32,
    forms: &[String],
    sheets: &Arc<Vec<Sheet>>,
    by_form: &mut [HashSet<String>],
    integrations: usize,
    concurrency: usize,
) -> Result<()> {
    let split = |b: Vec<u8>| -> Vec<String> {
        b.split(|c| *c == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    };
    let mut cmd = split(std::fs::read(format!("/proc/{pid}/cmdline"))?);
    let env = split(std::fs::read(format!("/proc/{pid}/environ"))?);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    match cmd.iter().position(|a| a == "--listen") {
        Some(i) if i + 1 < cmd.len() => cmd[i + 1] = listen.clone(),
        _ => cmd.extend(["--listen".to_string(), listen.clone()]),
    }
    let log = std::fs::File::create("/tmp/collect-bench-connect-2.log")?;
    let mut second = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env_clear()
        .envs(env.iter().filter_map(|kv| kv.split_once('=')))
        .current_dir(cwd)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting a second collect connect")?;
    let base = format!("http://{listen}");
    let ready = Instant::now();
    while s
        .http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().is_success())
        .ok()
        != Some(true)
    {
        if ready.elapsed() > Duration::from_secs(60) {
            let _ = second.kill();
            bail!("the second collect connect is not ready; see /tmp/collect-bench-connect-2.log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "hand-over: a second collect connect (pid {}) on {listen}",
        second.id()
    );
    // Responses in flight when the first dies.
    let more = submit_all(s, forms, forms.len(), concurrency).await?;
    for (f, ids) in more.into_iter().enumerate() {
        by_form[f].extend(ids);
    }
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    let killed = Instant::now();
    let result = async {
        while metric(s, &base, "collect_connect_feed_subscriptions").await? < integrations as f64 {
            if killed.elapsed() > Duration::from_secs(300) {
                bail!("the second process runs not every integration after 5 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let running = killed.elapsed();
        let (wrong, twice) = converge(s, sheets, by_form).await?;
        Ok((running, killed.elapsed(), wrong, twice))
    }
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let _ = second.wait();
    let (running, done, wrong, twice) = result?;
    println!(
        "  kill -9 of the first: the second runs all {integrations} integrations after {:.1} s (polled every 0.1 s); every sheet complete after {:.1} s",
        running.as_secs_f64(),
        done.as_secs_f64()
    );
    println!("  rows of another form: {wrong}; responses in two rows: {twice}");
    println!("  (the dev stack's collect connect is gone: `deploy/dev up` starts it again)");
    if wrong > 0 || twice > 0 {
        bail!("{wrong} rows of another form, {twice} responses twice");
    }
    Ok(())
}

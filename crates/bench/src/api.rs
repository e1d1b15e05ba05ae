//! Load on the submission endpoint: N concurrent clients, each submitting responses of five
//! answers as fast as the API answers, for a fixed duration after a warm-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Options of the API benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// The dev stack's stack.json (gives the API URL and key).
    #[arg(long, default_value = ".collect/stack.json")]
    stack: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Forms the submissions are spread over.
    #[arg(long, default_value_t = 10)]
    forms: usize,
}

fn answers(rng: &mut impl Rng, n: u64) -> Value {
    let plans = ["free", "pro", "team"];
    json!({
        "answers": {
            "name": format!("Respondent {n}"),
            "email": format!("user{n}@example.com"),
            "age": rng.random_range(18..90),
            "plan": plans[rng.random_range(0..plans.len())],
            "comment": "x".repeat(rng.random_range(10..200)),
        }
    })
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: Args) -> Result<()> {
    let stack: Value = serde_json::from_str(
        &std::fs::read_to_string(&args.stack).with_context(|| format!("reading {}", args.stack))?,
    )?;
    let base = stack["api_url"].as_str().context("api_url")?.to_string();
    let key = stack["api_key"].as_str().context("api_key")?.to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;

    let mut forms = Vec::new();
    for i in 0..args.forms {
        let form: Value = http
            .post(format!("{base}/v1/forms"))
            .bearer_auth(&key)
            .json(&json!({
                "title": format!("bench form {i}"),
                "questions": [
                    {"label": "Name", "type": "text", "alias": "name", "required": true},
                    {"label": "E-mail", "type": "email", "alias": "email", "required": true},
                    {"label": "Age", "type": "number", "alias": "age"},
                    {"label": "Plan", "type": "single_choice", "alias": "plan",
                     "options": [{"code": "free", "label": "Free"}, {"code": "pro", "label": "Pro"}, {"code": "team", "label": "Team"}]},
                    {"label": "Comment", "type": "long_text", "alias": "comment"}
                ]
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        forms.push(form["id"].as_str().context("form id")?.to_string());
    }
    let forms = Arc::new(forms);
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.seconds);

    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (http, base, key, forms, counter, errors) = (
            http.clone(),
            base.clone(),
            key.clone(),
            forms.clone(),
            counter.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut done = 0u64;
            let mut rng = rand::rngs::SmallRng::from_os_rng();
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let form = &forms[rng.random_range(0..forms.len())];
                let body = answers(&mut rng, n);
                let t0 = Instant::now();
                let resp = http
                    .post(format!("{base}/v1/forms/{form}/responses"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await;
                let ok = matches!(&resp, Ok(r) if r.status().as_u16() == 201);
                if let Ok(r) = resp {
                    let _ = r.bytes().await;
                }
                let micros = t0.elapsed().as_micros() as u64;
                if t0 >= measure_from && t0 < end {
                    if ok {
                        hist.record(micros.max(1))?;
                        done += 1;
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok((hist, done))
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut done = 0;
    for t in tasks {
        let (h, d) = t.await??;
        total.add(h)?;
        done += d;
    }
    let errors = errors.load(Ordering::Relaxed);
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "submissions (5 answers each), {} clients, {} s measured after {} s warm-up, {} forms",
        args.concurrency, args.seconds, args.warmup, args.forms
    );
    println!("  ok:         {done}");
    println!("  errors:     {errors}");
    println!(
        "  throughput: {:.0} submissions/s",
        done as f64 / args.seconds as f64
    );
    println!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        total.max() as f64 / 1000.0
    );
    if errors > 0 {
        bail!("{errors} submissions failed");
    }
    Ok(())
}

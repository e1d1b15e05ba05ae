//! Postgres-to-Kafka benchmark of `collect cdc`, with `pg_recvlogical` as the reference.
//!
//! Starts its own Postgres cluster, broker and registry (the test harness), runs the reader
//! as a real process and reports three figures:
//! 1. throughput: N responses (5 answers each) are written while the reader is stopped; then
//!    `pg_recvlogical` (pgoutput, same publication) drains that WAL from a slot of its own,
//!    and the reader drains it from its slot up to the same end position, every event
//!    acknowledged by the broker. Both as row changes per second.
//! 2. commit-to-ack latency at a steady rate (one transaction per response), from the
//!    reader's own histogram.
//! 3. peak RSS of the reader through one transaction of M rows.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use collect_testkit::{Broker, PgCluster, PgOptions};

/// Options of the CDC benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// The `collect` binary to run as the reader (build it with --release).
    #[arg(long, default_value = "target/release/collect")]
    collect_bin: String,
    /// Responses written for the throughput run.
    #[arg(long, default_value_t = 200_000)]
    responses: u64,
    /// Steady rate (responses per second, one transaction each) for the latency run.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Rows of the single large transaction (0: skip).
    #[arg(long, default_value_t = 1_000_000)]
    large_transaction: u64,
    /// Compression of the reader's batches.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Forms the responses are spread over (one form keeps everything in one partition).
    #[arg(long, default_value_t = 12)]
    forms: u32,
    /// Extra librdkafka setting for the reader, KEY=VALUE (repeatable).
    #[arg(long = "kafka-option")]
    kafka_options: Vec<String>,
}

struct Bench {
    pg: PgCluster,
    broker: Broker,
    db_url: String,
    registry: String,
    org: String,
    questions: Vec<String>,
    collect_bin: String,
    metrics_port: u16,
    kafka_options: Vec<String>,
    forms: u32,
    compression: String,
}

async fn sql(url: &str) -> Result<tokio_postgres::Client> {
    collect_testkit::connect(url).await
}

impl Bench {
    async fn start(
        collect_bin: String,
        kafka_options: Vec<String>,
        forms: u32,
        compression: String,
    ) -> Result<Bench> {
        let pg = PgCluster::start(PgOptions::default()).await?;
        let broker = Broker::start().await?;
        let admin = sql(&pg.url("postgres")).await?;
        admin.batch_execute("CREATE DATABASE bench").await?;
        let db_url = pg.url("bench");
        collect_testkit::migrate(&db_url).await?;
        let pool = collect_store::connect_pool(&db_url, &collect_store::PoolSettings::default())
            .map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let registry = format!("http://{}", listener.local_addr()?);
        tokio::spawn(collect_registry::serve(
            listener,
            pool,
            std::future::pending(),
        ));
        let c = sql(&db_url).await?;
        c.batch_execute(
            "INSERT INTO organizations (id, name) VALUES ('01900000-0000-7000-8000-00000000000a', 'bench');
             INSERT INTO forms (id, org_id, title) VALUES ('01900000-0000-7000-8000-00000000000f', '01900000-0000-7000-8000-00000000000a', 'bench');
             INSERT INTO questions (id, form_id, label, type, alias, position) VALUES
               ('01900000-0000-7000-8000-000000000001', '01900000-0000-7000-8000-00000000000f', 'Name', 'text', 'name', 0),
               ('01900000-0000-7000-8000-000000000002', '01900000-0000-7000-8000-00000000000f', 'E-mail', 'email', 'email', 1),
               ('01900000-0000-7000-8000-000000000003', '01900000-0000-7000-8000-00000000000f', 'Age', 'number', 'age', 2),
               ('01900000-0000-7000-8000-000000000004', '01900000-0000-7000-8000-00000000000f', 'Plan', 'text', 'plan', 3),
               ('01900000-0000-7000-8000-000000000005', '01900000-0000-7000-8000-00000000000f', 'Comment', 'long_text', 'comment', 4);",
        )
        .await?;
        Ok(Bench {
            pg,
            broker,
            db_url,
            registry,
            org: "01900000-0000-7000-8000-00000000000a".into(),
            questions: (1..=5)
                .map(|i| format!("01900000-0000-7000-8000-00000000000{i}"))
                .collect(),
            collect_bin,
            metrics_port: collect_testkit::process::free_port()?,
            kafka_options,
            forms: forms.max(1),
            compression,
        })
    }

    /// `INSERT` of `$1` responses with five answers each (document and typed rows), as the
    /// API writes them.
    fn insert_sql(&self) -> String {
        let q = &self.questions;
        format!(
            "WITH r AS (
               INSERT INTO responses (form_id, id, org_id, source, answers)
               SELECT ('01900000-0000-7000-8000-' || lpad(to_hex(15 + (g + $1) % {forms}), 12, '0'))::uuid,
                      gen_random_uuid(), '{org}', 'bench', jsonb_build_object(
                 '{q0}', jsonb_build_object('alias', 'name', 'type', 'text', 'value', 'Respondent ' || g),
                 '{q1}', jsonb_build_object('alias', 'email', 'type', 'email', 'value', 'user' || g || '@example.com'),
                 '{q2}', jsonb_build_object('alias', 'age', 'type', 'number', 'value', 18 + g % 70),
                 '{q3}', jsonb_build_object('alias', 'plan', 'type', 'text', 'value', 'pro'),
                 '{q4}', jsonb_build_object('alias', 'comment', 'type', 'long_text', 'value', repeat('comment ', 1 + g % 25)))
               FROM generate_series(1, $1::int) g
               RETURNING form_id, id, answers)
             INSERT INTO answers (form_id, response_id, question_id, value_text)
             SELECT r.form_id, r.id, kv.key::uuid, kv.value->>'value' FROM r, jsonb_each(r.answers) kv",
            forms = self.forms,
            org = self.org,
            q0 = q[0],
            q1 = q[1],
            q2 = q[2],
            q3 = q[3],
            q4 = q[4],
        )
    }

    fn reader(&self) -> Result<Child> {
        let extra: Vec<String> = self
            .kafka_options
            .iter()
            .flat_map(|o| ["--kafka-option".to_string(), o.clone()])
            .collect();
        Command::new(&self.collect_bin)
            .args([
                "cdc",
                "--partitions",
                "6",
                "--heartbeat-secs",
                "1",
                "--max-queued",
                "50000",
                "--status-interval-ms",
                "50",
                "--compression",
                &self.compression,
            ])
            .args(extra)
            .env("COLLECT_DATABASE_URL", &self.db_url)
            .env("COLLECT_REGISTRY_URL", &self.registry)
            .env("COLLECT_KAFKA_BROKERS", self.broker.bootstrap())
            .env(
                "COLLECT_CDC_METRICS_LISTEN",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with cargo build --release)",
                    self.collect_bin
                )
            })
    }

    async fn metrics(&self) -> Result<String> {
        Ok(
            reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
                .await?
                .text()
                .await?,
        )
    }

    async fn wait_streaming(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) =
                reqwest::get(format!("http://127.0.0.1:{}/status", self.metrics_port)).await
                && let Ok(v) = r.json::<serde_json::Value>().await
                && v["state"] == "streaming"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("reader not streaming after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the reader's slot is confirmed at or past `lsn`.
    async fn wait_confirmed(
        &self,
        c: &tokio_postgres::Client,
        lsn: &str,
        limit: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let done: bool = c
                .query_one(
                    "SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = 'collect'",
                    &[&lsn],
                )
                .await?
                .get(0);
            if done {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the reader did not confirm {lsn} within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command: state is index 0, utime 11, stime 12 (clock ticks of 1/100 s).
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds per thread name of a process.
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let tid: u32 = t.file_name().to_string_lossy().parse().unwrap_or(0);
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let stat =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *out.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    out
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Quantile from a Prometheus histogram's cumulative buckets (linear within a bucket).
fn quantile(metrics: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\""))
            && let Some((le, count)) = rest.split_once("\"} ")
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((le, count.trim().parse().ok()?));
        }
    }
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let frac = if count > prev.1 {
                (target - prev.1) / (count - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

/// Runs the three parts and prints their figures.
/// Decodes slot `slot` with `pg_recvlogical` (pgoutput, protocol 2, publication `collect`)
/// up to `end`, the way a reader would, writing the output nowhere.
pub(crate) fn recvlogical(db_url: &str, slot: &str, end: &str) -> Result<()> {
    let bin = collect_testkit::pg_bin_dir()?.join("pg_recvlogical");
    let out = Command::new(&bin)
        .args([
            "-d",
            db_url,
            "--slot",
            slot,
            "--start",
            "--no-loop",
            "-E",
            end,
            "-f",
            "/dev/null",
        ])
        .args(["-o", "proto_version=2", "-o", "publication_names=collect"])
        .output()?;
    if !out.status.success() {
        bail!(
            "pg_recvlogical failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub async fn run(a: Args) -> Result<()> {
    let b = Bench::start(
        a.collect_bin.clone(),
        a.kafka_options.clone(),
        a.forms,
        a.compression.clone(),
    )
    .await?;
    let c = sql(&b.db_url).await?;
    println!(
        "cdc benchmark: Postgres {} (fsync off), Tansu broker, reader {}, responses spread over {} forms, compression {}",
        b.pg.port(),
        a.collect_bin,
        b.forms,
        b.compression
    );

    // 1. Throughput against pg_recvlogical.
    let reader = b.reader()?;
    b.wait_streaming().await?;
    stop(reader);
    c.batch_execute("SELECT pg_create_logical_replication_slot('reference', 'pgoutput')")
        .await?;
    let insert = b.insert_sql();
    let t = Instant::now();
    let mut left = a.responses;
    while left > 0 {
        let n = left.min(1000) as i32;
        c.execute(&insert, &[&n]).await?;
        left -= n as u64;
    }
    let end: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    println!(
        "  wrote {} responses (5 answers each, 1,000 per transaction) in {:.1} s; WAL end {end}",
        a.responses,
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    recvlogical(&b.db_url, "reference", &end)?;
    let reference = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let reader = b.reader()?;
    b.wait_streaming().await?;
    let startup = t.elapsed().as_secs_f64();
    let broker_pid = b.broker.pid().unwrap_or(0);
    let walsender: Option<i32> = c
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'collect'",
            &[],
        )
        .await?
        .and_then(|r| r.get(0));
    let walsender = walsender.map(|p| p as u32).unwrap_or(0);
    let cpu_before = (
        cpu_seconds(reader.id()),
        cpu_seconds(broker_pid),
        cpu_seconds(walsender),
    );
    let threads_before = thread_cpu(reader.id());
    let t = Instant::now();
    b.wait_confirmed(&c, &end, Duration::from_secs(1800))
        .await?;
    let ours = t.elapsed().as_secs_f64();
    let cpu = (
        cpu_seconds(reader.id()) - cpu_before.0,
        cpu_seconds(broker_pid) - cpu_before.1,
        cpu_seconds(walsender) - cpu_before.2,
    );
    let n = a.responses as f64;
    println!(
        "  pg_recvlogical (pgoutput, to /dev/null): {reference:.2} s, {:.0} row changes/s",
        n / reference
    );
    println!(
        "  collect cdc (to Kafka, all acked, slot confirmed): {ours:.2} s after {startup:.2} s of start-up, {:.0} row changes/s ({:.2}x pg_recvlogical)",
        n / ours,
        reference / ours
    );
    let per = |secs: f64| secs * 1e6 / n;
    let threads: Vec<String> = thread_cpu(reader.id())
        .into_iter()
        .map(|(name, secs)| {
            (
                name.clone(),
                secs - threads_before.get(&name).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, secs)| *secs > 0.05)
        .map(|(name, secs)| format!("{name} {secs:.1} s"))
        .collect();
    println!(
        "  CPU during the drain: reader {:.1} s ({:.1} us/change), broker {:.1} s ({:.1} us/change), walsender {:.1} s ({:.1} us/change)",
        cpu.0,
        per(cpu.0),
        cpu.1,
        per(cpu.1),
        cpu.2,
        per(cpu.2)
    );
    println!("  reader threads: {}", threads.join(", "));
    println!(
        "  reader peak RSS so far: {:.1} MiB",
        peak_rss_mib(reader.id()).unwrap_or(f64::NAN)
    );
    c.batch_execute("SELECT pg_drop_replication_slot('reference')")
        .await?;

    // 2. Commit-to-ack latency at a steady rate, one transaction per response.
    let before = b.metrics().await?;
    let single = b.insert_sql();
    let writers = 8u64;
    let per_writer = a.rate / writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let url = b.db_url.clone();
        let stmt = single.clone();
        let total = per_writer * a.seconds;
        tasks.push(tokio::spawn(async move {
            let c = sql(&url).await?;
            let prepared = c.prepare(&stmt).await?;
            let gap = Duration::from_secs_f64(1.0 / per_writer as f64);
            let mut next = Instant::now();
            for _ in 0..total {
                c.execute(&prepared, &[&1i32]).await?;
                next += gap;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let end: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    b.wait_confirmed(&c, &end, Duration::from_secs(300)).await?;
    let after = b.metrics().await?;
    let delta = subtract_histogram(&after, &before, "collect_cdc_commit_to_ack_seconds");
    let written = per_writer * writers * a.seconds;
    println!(
        "  latency run: {written} responses in {elapsed:.1} s ({:.0}/s, one transaction each)",
        written as f64 / elapsed
    );
    for q in [0.5, 0.9, 0.99] {
        let v = quantile(&delta, "collect_cdc_commit_to_ack_seconds", q).unwrap_or(f64::NAN);
        println!("    commit-to-ack p{:.0}: {:.1} ms", q * 100.0, v * 1000.0);
    }

    // 3. Peak RSS through one large transaction.
    if a.large_transaction > 0 {
        let t = Instant::now();
        let tx = c.simple_query("BEGIN").await;
        tx?;
        let mut left = a.large_transaction;
        while left > 0 {
            let n = left.min(10_000) as i32;
            c.execute(&insert, &[&n]).await?;
            left -= n as u64;
        }
        c.simple_query("COMMIT").await?;
        let end: String = c
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        println!(
            "  wrote one transaction of {} responses in {:.1} s",
            a.large_transaction,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        b.wait_confirmed(&c, &end, Duration::from_secs(3600))
            .await?;
        println!(
            "  reader confirmed it after {:.1} s; reader peak RSS {:.1} MiB",
            t.elapsed().as_secs_f64(),
            peak_rss_mib(reader.id()).unwrap_or(f64::NAN)
        );
    }
    stop(reader);
    Ok(())
}

/// The `after - before` of a histogram's bucket counts, as metrics text.
fn subtract_histogram(after: &str, before: &str, name: &str) -> String {
    let counts = |text: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket")))
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0.0)))
            })
            .collect()
    };
    let b = counts(before);
    counts(after)
        .into_iter()
        .map(|(k, v)| {
            let old = b
                .iter()
                .find(|(bk, _)| *bk == k)
                .map(|x| x.1)
                .unwrap_or(0.0);
            format!("{k} {}", v - old)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_buckets() {
        let text =
            "h_bucket{le=\"0.01\"} 50\nh_bucket{le=\"0.1\"} 100\nh_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(quantile(text, "h", 0.5), Some(0.01));
        let p99 = quantile(text, "h", 0.99).unwrap();
        assert!((p99 - 0.0982).abs() < 1e-9, "{p99}");
        assert_eq!(quantile("", "h", 0.5), None);
    }
}

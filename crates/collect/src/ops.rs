//! Operators' tools: `collect status` and `collect replay`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use collect_connect::Kinds;
use collect_connect::offsets::{Position, Positions};
use collect_connect::store::{Integration, IntegrationStore};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::kafka_options::KafkaOptions;
use crate::{Db, store};

/// Where the events are (no registry needed).
#[derive(clap::Args)]
pub struct Topics {
    /// Kafka bootstrap servers.
    #[arg(long, env = "COLLECT_KAFKA_BROKERS")]
    brokers: String,
    /// Topic of response events.
    #[arg(
        long,
        env = "COLLECT_RESPONSES_TOPIC",
        default_value = "collect.responses"
    )]
    responses_topic: String,
    /// Topic of form events.
    #[arg(long, env = "COLLECT_FORMS_TOPIC", default_value = "collect.forms")]
    forms_topic: String,
    #[command(flatten)]
    kafka: KafkaOptions,
}

/// Options of `collect status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    topics: Topics,
    /// Replication slot of the reader.
    #[arg(long, env = "COLLECT_CDC_SLOT", default_value = "collect")]
    slot: String,
    /// The reader's metrics address, for its state (`/status`); without it, the state is
    /// read from Postgres only.
    #[arg(long, env = "COLLECT_CDC_URL")]
    cdc_url: Option<String>,
    /// Dead-letter topics whose records are counted.
    #[arg(
        long = "dead-letter-topic",
        default_values_t = ["collect.cdc.dlq".to_string(), "collect.connect.dlq".to_string()]
    )]
    dead_letter_topics: Vec<String>,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `collect snapshot`.
#[derive(clap::Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    pipeline: crate::Pipeline,
    /// The form to re-emit.
    #[arg(long)]
    form: Uuid,
    /// Topic of changes that cannot become events.
    #[arg(
        long,
        env = "COLLECT_CDC_DEAD_LETTER_TOPIC",
        default_value = "collect.cdc.dlq"
    )]
    dead_letter_topic: String,
    /// Rows per chunk.
    #[arg(long, default_value_t = 1000)]
    chunk: i64,
    /// Compression of the records (as the reader's `--compression`).
    #[arg(long, env = "COLLECT_KAFKA_COMPRESSION", default_value = "lz4")]
    compression: String,
    /// Largest record in bytes (as the reader's `--max-message-bytes`).
    #[arg(long, env = "COLLECT_KAFKA_MAX_MESSAGE_BYTES", default_value_t = collect_cdc::kafka::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Hours before compaction may remove a record of the topics it creates (as the
    /// reader's `--min-compaction-lag-hours`).
    #[arg(long, env = "COLLECT_KAFKA_MIN_COMPACTION_LAG_HOURS", default_value_t = collect_cdc::kafka::DEFAULT_MIN_COMPACTION_LAG_HOURS)]
    min_compaction_lag_hours: u64,
    #[command(flatten)]
    kafka: KafkaOptions,
}

/// `collect snapshot --form F`: the form's current responses, re-emitted from Postgres.
pub async fn snapshot(a: SnapshotArgs) -> Result<()> {
    if a.chunk < 1 {
        bail!("--chunk must be at least 1");
    }
    let kafka = collect_cdc::kafka::KafkaSettings {
        brokers: a.pipeline.brokers.clone(),
        responses_topic: a.pipeline.responses_topic.clone(),
        forms_topic: a.pipeline.forms_topic.clone(),
        dead_letter_topic: a.dead_letter_topic.clone(),
        partitions: 12,
        replication_factor: -1,
        message_timeout: Duration::from_secs(300),
        max_queued: 100_000,
        compression: a.compression.clone(),
        max_message_bytes: a.max_message_bytes,
        min_compaction_lag: Duration::from_secs(a.min_compaction_lag_hours.saturating_mul(3600)),
        extra: a.kafka.resolve()?,
    };
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now() - Duration::from_secs(10);
    let rows = collect_cdc::snapshot_form(
        &a.db.database_url,
        &kafka,
        &a.pipeline.registry_url,
        a.form,
        a.chunk,
        |done, total| {
            if done >= total || tty || last.elapsed() >= Duration::from_secs(2) {
                let line = bar(done as i64, total as i64, started);
                if tty {
                    eprint!("\r{line}");
                } else {
                    eprintln!("{line}");
                }
                last = Instant::now();
            }
        },
    )
    .await?;
    if tty {
        eprintln!();
    }
    println!(
        "{}",
        json!({"form": a.form, "rows": rows, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

fn bar(done: i64, target: i64, started: Instant) -> String {
    let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
    let share = if target == 0 {
        1.0
    } else {
        done as f64 / target as f64
    };
    let width = 30;
    let filled = ((share * width as f64) as usize).min(width);
    format!(
        "[{}{}] {:>3.0}% {done}/{target} records, {rate:.0}/s",
        "#".repeat(filled),
        ".".repeat(width - filled),
        share * 100.0
    )
}

/// Options of `collect replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    topics: Topics,
    /// The integration to replay.
    #[arg(long)]
    integration: Uuid,
    /// Longest wait for the integration's worker to stop, and for progress between two
    /// looks, in seconds.
    #[arg(long, default_value_t = 120)]
    wait_secs: u64,
    /// Return once the offsets are rewound, without following the progress.
    #[arg(long)]
    no_follow: bool,
    /// Replay a notification integration (SMS): past responses since its start that were
    /// never notified are sent now. Without it such a replay says what it would send and
    /// changes nothing.
    #[arg(long)]
    send_past_responses: bool,
}

/// An operator's tool holding an integration's lease: the integration was paused (if it was
/// active), no worker runs it, and the tool writes with a lease generation of its own, so a
/// worker that still thinks it holds the lease writes nothing (see `collect_connect::lease`).
pub(crate) struct HeldLease {
    client: deadpool_postgres::Object,
    integrations: IntegrationStore,
    id: Uuid,
    was_active: bool,
    /// The generation the tool writes with.
    pub generation: i64,
}

impl HeldLease {
    /// Pauses `i` (if active) and waits up to `wait` for its worker to stop and the lease to
    /// be free; takes it and a new generation. Resumes it on failure.
    pub(crate) async fn take(
        store: &collect_store::Store,
        i: &Integration,
        why: &str,
        wait: Duration,
    ) -> Result<Self> {
        let integrations = IntegrationStore::new(store.pool().clone());
        let was_active = i.status == "active";
        if was_active {
            integrations.set_status(i.id, "paused", Some(why)).await?;
        }
        let client = store.pool().get().await?;
        let key = collect_connect::supervisor::lease_key(i.id);
        let deadline = Instant::now() + wait;
        loop {
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await?
                .get(0);
            if got {
                break;
            }
            if Instant::now() > deadline {
                if was_active {
                    integrations.set_status(i.id, "active", None).await?;
                }
                bail!(
                    "integration {} is still running somewhere after {wait:?}; nothing changed",
                    i.id
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let generation = collect_connect::lease::take(&**client, i.id).await?;
        Ok(Self {
            client,
            integrations,
            id: i.id,
            was_active,
            generation,
        })
    }

    /// Lets the lease go and resumes the integration if it was active.
    pub(crate) async fn release(self) -> Result<()> {
        let key = collect_connect::supervisor::lease_key(self.id);
        self.client
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await?;
        if self.was_active {
            self.integrations
                .set_status(self.id, "active", None)
                .await?;
        }
        Ok(())
    }

    /// Whether the integration was active before the tool paused it.
    pub(crate) fn was_active(&self) -> bool {
        self.was_active
    }
}

fn positions(t: &Topics, i: &Integration, db: &deadpool_postgres::Pool) -> Result<Positions> {
    Positions::new(
        &t.brokers,
        &t.kafka.resolve()?,
        &[&t.responses_topic, &t.forms_topic],
        i.id,
        i.form_id,
        db.clone(),
    )
    .map_err(anyhow::Error::msg)
}

async fn read_positions(
    t: &Topics,
    i: &Integration,
    db: &deadpool_postgres::Pool,
) -> Result<Vec<Position>> {
    positions(t, i, db)?
        .read()
        .await
        .map_err(anyhow::Error::msg)
}

/// A consumer of `brokers` with the operator's librdkafka `options`; `group`, when given, is
/// its group id (never joined: partitions are assigned by hand, nothing is committed).
pub(crate) fn consumer(
    brokers: &str,
    options: &[(String, String)],
    group: Option<&str>,
) -> Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    if let Some(g) = group {
        config.set("group.id", g).set("enable.auto.commit", "false");
    }
    for (k, v) in options {
        config.set(k, v);
    }
    Ok(config.create()?)
}

/// `(partition, low, high)` of every partition of `topic`; empty when it does not exist
/// (blocking).
pub(crate) fn watermarks(c: &BaseConsumer, topic: &str) -> Result<Vec<(i32, i64, i64)>> {
    let meta = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = meta
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    partitions
        .into_iter()
        .map(|p| {
            let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            Ok((p, low, high))
        })
        .collect()
}

/// Records in each of `topics` (all partitions), from the watermarks; `None` for a topic
/// that does not exist.
fn count_records(
    brokers: &str,
    options: &[(String, String)],
    topics: &[String],
) -> Result<Vec<(String, Option<i64>)>> {
    let c = consumer(brokers, options, None)?;
    topics
        .iter()
        .map(|topic| {
            let marks = watermarks(&c, topic)?;
            let n = (!marks.is_empty())
                .then(|| marks.iter().map(|(_, low, high)| (high - low).max(0)).sum());
            Ok((topic.clone(), n))
        })
        .collect()
}

fn bytes(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `collect status`.
pub async fn status(a: StatusArgs) -> Result<()> {
    let store = store(&a.db, 2).await?;
    let c = store.pool().get().await?;
    let slot = c
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, wal_status \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&a.slot],
        )
        .await
        .context("reading pg_replication_slots")?;
    let snapshot = c
        .query_opt(
            "SELECT completed_at IS NOT NULL, rows_done FROM cdc_snapshots WHERE slot_name = $1",
            &[&a.slot],
        )
        .await?;
    let slot_json = match &slot {
        Some(r) => json!({
            "name": a.slot,
            "active": r.get::<_, bool>(0),
            "confirmed_flush_lsn": r.get::<_, Option<String>>(1),
            "lag_bytes": r.get::<_, Option<i64>>(2),
            "wal_status": r.get::<_, Option<String>>(3),
            "snapshot": snapshot.as_ref().map(|s| json!({"done": s.get::<_, bool>(0), "rows": s.get::<_, i64>(1)})),
        }),
        None => json!({"name": a.slot, "exists": false}),
    };
    let reader = match &a.cdc_url {
        Some(url) => match reqwest::get(format!("{}/status", url.trim_end_matches('/'))).await {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(e) => json!({"error": e.to_string()}),
        },
        None => Value::Null,
    };
    let integrations = IntegrationStore::new(store.pool().clone()).all().await?;
    let mut rows = Vec::new();
    for i in &integrations {
        let pos = read_positions(&a.topics, i, store.pool()).await;
        let (lag, pos_json) = match &pos {
            Ok(p) => (json!(p.iter().map(Position::lag).sum::<i64>()), json!(p)),
            Err(e) => (Value::Null, json!({"error": e.to_string()})),
        };
        rows.push(json!({
            "id": i.id, "name": i.name, "kind": i.kind, "form_id": i.form_id,
            "status": i.status, "status_reason": i.status_reason,
            "lag": lag, "positions": pos_json,
        }));
    }
    let (brokers, options, topics) = (
        a.topics.brokers.clone(),
        a.topics.kafka.resolve()?,
        a.dead_letter_topics.clone(),
    );
    let dead =
        tokio::task::spawn_blocking(move || count_records(&brokers, &options, &topics)).await??;
    let dead_json: serde_json::Map<String, Value> =
        dead.iter().map(|(t, n)| (t.clone(), json!(n))).collect();
    let out = json!({
        "slot": slot_json,
        "reader": reader,
        "integrations": rows,
        "dead_letters": dead_json,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("reader");
    match &slot {
        Some(r) => println!(
            "  slot {}: {}, lag {}, confirmed {}{}",
            a.slot,
            if r.get::<_, bool>(0) {
                "active"
            } else {
                "inactive"
            },
            r.get::<_, Option<i64>>(2)
                .map(bytes)
                .unwrap_or_else(|| "-".into()),
            r.get::<_, Option<String>>(1).unwrap_or_else(|| "-".into()),
            match &snapshot {
                Some(s) if s.get::<_, bool>(0) => String::new(),
                Some(s) => format!(", snapshot running ({} rows)", s.get::<_, i64>(1)),
                None => ", no snapshot yet".into(),
            }
        ),
        None => println!("  slot {}: does not exist (the reader never ran)", a.slot),
    }
    if !reader.is_null() {
        println!(
            "  state: {}",
            reader["state"].as_str().unwrap_or(&reader.to_string())
        );
    }
    println!("integrations ({})", integrations.len());
    for r in &rows {
        println!(
            "  {} {:<8} {:<7} form {} lag {}{}{}",
            r["id"].as_str().unwrap_or_default(),
            r["kind"].as_str().unwrap_or_default(),
            r["status"].as_str().unwrap_or_default(),
            r["form_id"].as_str().unwrap_or_default(),
            r["lag"],
            r["name"]
                .as_str()
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default(),
            r["status_reason"]
                .as_str()
                .map(|s| format!(": {s}"))
                .unwrap_or_default(),
        );
    }
    println!("dead letters");
    for (t, n) in &dead {
        match n {
            Some(n) => println!("  {t}: {n}"),
            None => println!("  {t}: no such topic"),
        }
    }
    Ok(())
}

/// `collect replay`: the integration reads its form's partitions again from the oldest
/// record the topics hold. Its sink is idempotent, so what it already wrote is rewritten
/// in place (Sheets) or skipped (SMS); what it lacks arrives. Its worker reads from the
/// rewound position and joins the process's live reading at its head, so there is no gap
/// between replayed and live events.
pub async fn replay(a: ReplayArgs) -> Result<()> {
    let store = store(&a.db, 2).await?;
    let integrations = IntegrationStore::new(store.pool().clone());
    let i = integrations
        .all()
        .await?
        .into_iter()
        .find(|i| i.id == a.integration)
        .with_context(|| format!("no integration {}", a.integration))?;
    if crate::kinds::Installed.notifies(&i.kind) && !a.send_past_responses {
        let c = store.pool().get().await?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM responses WHERE form_id = $1 AND deleted_at IS NULL \
                 AND ($2::timestamptz IS NULL OR submitted_at >= $2)",
                &[&i.form_id, &i.start_at],
            )
            .await?
            .get(0);
        let since = i.start_at.map_or_else(
            || "the form's first response".to_string(),
            |t| t.to_rfc3339(),
        );
        bail!(
            "integration {} ({}) notifies people: a replay reads again the {n} live responses \
             submitted since {since} (its start); those already notified under '{}' are \
             skipped by its ledger, the others are sent now. Nothing changed; run again with \
             --send-past-responses to do it",
            i.id,
            i.kind,
            i.purpose()
        );
    }
    let wait = Duration::from_secs(a.wait_secs.max(1));
    // Hold the integration's lease while rewinding: once we have it, no worker runs it.
    let held = HeldLease::take(&store, &i, "paused for a replay", wait).await?;
    let was_active = held.was_active();
    let p = positions(&a.topics, &i, store.pool())?;
    let rewound = p.rewind().await;
    held.release().await?;
    let rewound = rewound.map_err(anyhow::Error::msg)?;
    let target: i64 = rewound.iter().map(|p| p.high - p.low).sum();
    eprintln!(
        "replaying integration {} ({}): {} records in its partitions",
        i.id, i.kind, target
    );
    if a.no_follow || !was_active {
        println!(
            "{}",
            json!({"integration": i.id, "rewound": rewound, "records": target, "followed": false})
        );
        return Ok(());
    }
    // Follow: the committed offsets move towards the ends as of the rewind.
    let ends: Vec<(String, i32, i64)> = rewound
        .iter()
        .map(|p| (p.topic.clone(), p.partition, p.high))
        .collect();
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_progress = (0, Instant::now());
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        let now = read_positions(&a.topics, &i, store.pool()).await?;
        let done: i64 = now
            .iter()
            .map(|p| {
                let end = ends
                    .iter()
                    .find(|(t, n, _)| *t == p.topic && *n == p.partition)
                    .map(|e| e.2)
                    .unwrap_or(p.high);
                (p.committed.unwrap_or(p.low).min(end) - p.low).max(0)
            })
            .sum();
        let finished = done >= target;
        if finished || tty || last_print.elapsed() >= Duration::from_secs(2) {
            let line = bar(done, target, started);
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            last_print = Instant::now();
        }
        if finished {
            if tty {
                eprintln!();
            }
            break;
        }
        if done > last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > wait {
            bail!(
                "no progress for {wait:?} at {done} of {target} records; is `collect connect` running and the integration active?"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{}",
        json!({"integration": i.id, "records": target, "followed": true,
               "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

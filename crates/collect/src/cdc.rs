//! `collect cdc`.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::kafka_options::KafkaOptions;
use crate::{Db, Pipeline, shutdown_signal};

/// Options of `collect cdc`.
#[derive(clap::Args)]
pub struct CdcArgs {
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    pipeline: Pipeline,
    /// Replication slot.
    #[arg(long, env = "COLLECT_CDC_SLOT", default_value = "collect")]
    slot: String,
    /// Publication.
    #[arg(long, env = "COLLECT_CDC_PUBLICATION", default_value = "collect")]
    publication: String,
    /// Topic of changes that cannot become events.
    #[arg(
        long,
        env = "COLLECT_CDC_DEAD_LETTER_TOPIC",
        default_value = "collect.cdc.dlq"
    )]
    dead_letter_topic: String,
    /// Partitions of the topics the reader creates.
    #[arg(long, env = "COLLECT_TOPIC_PARTITIONS", default_value_t = 12)]
    partitions: i32,
    /// Replication factor of the topics the reader creates (-1: broker default).
    #[arg(long, env = "COLLECT_TOPIC_REPLICATION", default_value_t = -1, allow_negative_numbers = true)]
    replication_factor: i32,
    /// Seconds between heartbeats while nothing arrives (0: off).
    #[arg(long, env = "COLLECT_CDC_HEARTBEAT_SECS", default_value_t = 10)]
    heartbeat_secs: u64,
    /// Milliseconds between standby status updates.
    #[arg(long, default_value_t = 1000)]
    status_interval_ms: u64,
    /// Rows per snapshot chunk.
    #[arg(long, default_value_t = 1000)]
    snapshot_chunk: i64,
    /// Seconds librdkafka retries a record before the session restarts.
    #[arg(long, default_value_t = 300)]
    message_timeout_secs: u64,
    /// Most records queued in the producer.
    #[arg(long, default_value_t = 10_000)]
    max_queued: usize,
    /// Compression of produced batches (lz4, zstd, snappy, gzip, none). Tansu spends more
    /// CPU decompressing than it saves: the dev stack uses none.
    #[arg(long, env = "COLLECT_KAFKA_COMPRESSION", default_value = "lz4")]
    compression: String,
    /// Largest record in bytes: the producer's message.max.bytes and the max.message.bytes
    /// of the topics the reader creates. Larger events become bounded dead letters.
    #[arg(long, env = "COLLECT_KAFKA_MAX_MESSAGE_BYTES", default_value_t = collect_cdc::kafka::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Hours a record of the compacted topics the reader creates is kept before compaction
    /// may remove it (their min.compaction.lag.ms): an integration less than this behind
    /// reads every event, one further behind only each response's latest state.
    #[arg(
        long,
        env = "COLLECT_KAFKA_MIN_COMPACTION_LAG_HOURS",
        default_value_t = collect_cdc::kafka::DEFAULT_MIN_COMPACTION_LAG_HOURS
    )]
    min_compaction_lag_hours: u64,
    #[command(flatten)]
    kafka: KafkaOptions,
    /// When the slot is found invalidated (wal_status = 'lost') or dropped: `resnapshot`
    /// (a new slot and a fresh consistent snapshot; sinks keep the newest revision) or
    /// `stop` (report it and exit).
    #[arg(long, env = "COLLECT_CDC_ON_SLOT_LOST", default_value = "resnapshot", value_parser = ["resnapshot", "stop"])]
    on_slot_lost: String,
    /// Address of /metrics, /status, /healthz and /readyz.
    #[arg(
        long,
        env = "COLLECT_CDC_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: String,
}

/// Runs the CDC reader until Ctrl-C or SIGTERM.
pub async fn run(a: CdcArgs) -> Result<()> {
    let cfg = collect_cdc::Config {
        database_url: a.db.database_url,
        registry_url: a.pipeline.registry_url,
        slot: a.slot,
        publication: a.publication,
        kafka: collect_cdc::kafka::KafkaSettings {
            brokers: a.pipeline.brokers,
            responses_topic: a.pipeline.responses_topic,
            forms_topic: a.pipeline.forms_topic,
            dead_letter_topic: a.dead_letter_topic,
            partitions: a.partitions,
            replication_factor: a.replication_factor,
            message_timeout: Duration::from_secs(a.message_timeout_secs),
            max_queued: a.max_queued,
            compression: a.compression,
            max_message_bytes: a.max_message_bytes,
            min_compaction_lag: Duration::from_secs(
                a.min_compaction_lag_hours.saturating_mul(3600),
            ),
            extra: a.kafka.resolve()?,
        },
        heartbeat: (a.heartbeat_secs > 0).then(|| Duration::from_secs(a.heartbeat_secs)),
        status_interval: Duration::from_millis(a.status_interval_ms.max(10)),
        snapshot_chunk: a.snapshot_chunk,
        on_slot_lost: if a.on_slot_lost == "stop" {
            collect_cdc::OnSlotLost::Stop
        } else {
            collect_cdc::OnSlotLost::Resnapshot
        },
    };
    cfg.validate()?;
    let metrics = collect_cdc::metrics::Metrics::new(&cfg.slot);
    let listener = TcpListener::bind(&a.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.metrics_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "cdc metrics listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut http_stop = stopped.clone();
    let http = tokio::spawn(collect_cdc::metrics::serve(
        listener,
        metrics.clone(),
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    collect_cdc::run(cfg, metrics, stopped).await?;
    let _ = http.await;
    Ok(())
}

//! `collect dead-letters list|redrive`: what the connectors could not write, and writing it
//! again after a fix.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use collect_connect::crypto::Sealer;
use collect_connect::decode::{Decoder, Stream};
use collect_connect::kind::Kinds;
use collect_connect::limits::Limiter;
use collect_connect::metrics::Metrics;
use collect_connect::store::IntegrationStore;
use collect_connect::{Delivery, SinkContext};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::kafka_options::KafkaOptions;
use crate::kinds::Installed;
use crate::ops::{consumer, watermarks};
use crate::{Db, store};

/// Where the dead letters are.
#[derive(clap::Args)]
pub struct Source {
    /// Kafka bootstrap servers.
    #[arg(long, env = "COLLECT_KAFKA_BROKERS")]
    brokers: String,
    /// The connectors' dead-letter topic.
    #[arg(
        long,
        env = "COLLECT_CONNECT_DEAD_LETTER_TOPIC",
        default_value = "collect.connect.dlq"
    )]
    topic: String,
    #[command(flatten)]
    kafka: KafkaOptions,
    /// Only the dead letters of this integration.
    #[arg(long)]
    integration: Option<Uuid>,
}

/// `collect dead-letters ...`
#[derive(Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters with their reasons (oldest first).
    List {
        #[command(flatten)]
        source: Source,
        /// Only those whose original record is of this form.
        #[arg(long)]
        form: Option<Uuid>,
        /// Most dead letters shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write dead letters again through their integration's sink (after a fix): one by its
    /// position (`--at PARTITION:OFFSET`, repeatable), those of a form (`--form`), or all of
    /// the integration (`--all`).
    Redrive {
        #[command(flatten)]
        db: Db,
        #[command(flatten)]
        source: Source,
        /// Schema registry base URL (to decode the original records).
        #[arg(long, env = "COLLECT_REGISTRY_URL")]
        registry_url: String,
        /// Topic of form events (records from it are form events).
        #[arg(long, env = "COLLECT_FORMS_TOPIC", default_value = "collect.forms")]
        forms_topic: String,
        /// Key sealing credentials at rest (as given to `collect connect`).
        #[arg(long, env = "COLLECT_SECRET_KEY", hide_env_values = true)]
        secret_key: String,
        /// A dead letter's position in the dead-letter topic.
        #[arg(long = "at", value_parser = parse_at)]
        at: Vec<(i32, i64)>,
        /// The dead letters whose original record is of this form.
        #[arg(long)]
        form: Option<Uuid>,
        /// Every dead letter of the integration.
        #[arg(long)]
        all: bool,
    },
}

fn parse_at(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not PARTITION:OFFSET"))?;
    Ok((
        p.parse().map_err(|_| format!("bad partition in '{s}'"))?,
        o.parse().map_err(|_| format!("bad offset in '{s}'"))?,
    ))
}

/// One dead letter as read.
struct Letter {
    partition: i32,
    offset: i64,
    headers: HashMap<String, String>,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    timestamp: Option<i64>,
}

impl Letter {
    fn header(&self, k: &str) -> &str {
        self.headers.get(k).map(String::as_str).unwrap_or("")
    }

    fn form(&self) -> String {
        self.header("collect.form").to_string()
    }

    /// The record's key: the response (or question, or form) id.
    fn subject(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).to_string())
            .unwrap_or_default()
    }

    fn to_json(&self) -> Value {
        json!({
            "at": format!("{}:{}", self.partition, self.offset),
            "integration": self.header("collect.integration"),
            "kind": self.header("collect.kind"),
            "reason": self.header("collect.reason"),
            "form": self.form(),
            "key": self.subject(),
            "source": {
                "topic": self.header("collect.source.topic"),
                "partition": self.header("collect.source.partition").parse::<i64>().ok(),
                "offset": self.header("collect.source.offset").parse::<i64>().ok(),
            },
            "timestamp_ms": self.timestamp,
        })
    }
}

/// Every dead letter of the topic up to its end as of now, filtered (blocking).
fn read(s: &Source, keep: impl Fn(&Letter) -> bool) -> Result<Vec<Letter>> {
    let consumer = consumer(
        &s.brokers,
        &s.kafka.resolve()?,
        Some("collect.dead-letters.reader"),
    )?;
    let marks = watermarks(&consumer, &s.topic)?;
    if marks.is_empty() {
        bail!("topic {} does not exist", s.topic);
    }
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for (p, low, high) in marks {
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(&s.topic, p, Offset::Offset(low))?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let mut idle = 0;
    while !ends.is_empty() {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            idle += 1;
            if idle > 60 {
                bail!("the dead-letter topic stopped answering");
            }
            continue;
        };
        idle = 0;
        let m = m?;
        let (p, o) = (m.partition(), m.offset());
        let mut headers = HashMap::new();
        if let Some(h) = m.headers() {
            for x in h.iter() {
                if let Some(v) = x.value {
                    headers.insert(x.key.to_string(), String::from_utf8_lossy(v).to_string());
                }
            }
        }
        let letter = Letter {
            partition: p,
            offset: o,
            headers,
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            timestamp: m.timestamp().to_millis(),
        };
        if keep(&letter) {
            out.push(letter);
        }
        if ends.get(&p).is_some_and(|end| o + 1 >= *end) {
            ends.remove(&p);
        }
    }
    Ok(out)
}

fn of_integration(s: &Source, l: &Letter) -> bool {
    s.integration
        .is_none_or(|i| l.header("collect.integration") == i.to_string())
}

/// `collect dead-letters ...`
pub async fn run(cmd: DeadLettersCommand) -> Result<()> {
    match cmd {
        DeadLettersCommand::List {
            source,
            form,
            limit,
            json,
        } => {
            let letters = tokio::task::spawn_blocking(move || {
                read(&source, |l| {
                    of_integration(&source, l) && form.is_none_or(|f| l.form() == f.to_string())
                })
            })
            .await??;
            for l in letters.iter().take(limit) {
                if json {
                    println!("{}", l.to_json());
                } else {
                    println!(
                        "{}:{}  {} {}  form {} key {}  from {}/{}@{}  {}",
                        l.partition,
                        l.offset,
                        l.header("collect.kind"),
                        l.header("collect.integration"),
                        l.form(),
                        l.subject(),
                        l.header("collect.source.topic"),
                        l.header("collect.source.partition"),
                        l.header("collect.source.offset"),
                        l.header("collect.reason"),
                    );
                }
            }
            if !json {
                eprintln!(
                    "{} dead letter(s){}",
                    letters.len(),
                    if letters.len() > limit {
                        format!(", {limit} shown")
                    } else {
                        String::new()
                    }
                );
            }
            Ok(())
        }
        DeadLettersCommand::Redrive {
            db,
            source,
            registry_url,
            forms_topic,
            secret_key,
            at,
            form,
            all,
        } => {
            let Some(integration) = source.integration else {
                bail!("give --integration: dead letters are re-driven through one integration");
            };
            if at.is_empty() && form.is_none() && !all {
                bail!("say which dead letters: --at PARTITION:OFFSET, --form FORM or --all");
            }
            let sealer = Sealer::from_base64(&secret_key)?;
            let store = store(&db, 4).await?;
            let i = IntegrationStore::new(store.pool().clone())
                .all()
                .await?
                .into_iter()
                .find(|i| i.id == integration)
                .with_context(|| format!("no integration {integration}"))?;
            let letters = tokio::task::spawn_blocking(move || {
                read(&source, |l| {
                    of_integration(&source, l)
                        && (all
                            || at.contains(&(l.partition, l.offset))
                            || form.is_some_and(|f| l.form() == f.to_string()))
                })
            })
            .await??;
            if letters.is_empty() {
                bail!("no such dead letter of integration {integration}");
            }
            let decoder = Decoder::new(&registry_url);
            let mut batch = Vec::new();
            let mut undecodable = Vec::new();
            for l in &letters {
                let stream = if l.header("collect.source.topic") == forms_topic {
                    Stream::Forms
                } else {
                    Stream::Responses
                };
                match decoder.decode(stream, &l.value).await {
                    Ok(event) => batch.push(Delivery {
                        event,
                        topic: l.header("collect.source.topic").to_string(),
                        partition: l.header("collect.source.partition").parse().unwrap_or(-1),
                        offset: l.header("collect.source.offset").parse().unwrap_or(-1),
                        redriven: true,
                    }),
                    Err(e) => undecodable.push(json!({
                        "at": format!("{}:{}", l.partition, l.offset),
                        "reason": format!("still undecodable: {e}"),
                    })),
                }
            }
            let credentials = match &i.sealed_credentials() {
                Some(sealed) => Some(serde_json::from_slice::<Value>(&sealer.open(sealed)?)?),
                None => None,
            };
            // One writer per integration: the re-drive holds the integration's lease (its
            // worker stops meanwhile) and writes with a lease generation of its own.
            let held = crate::ops::HeldLease::take(
                &store,
                &i,
                "paused for a dead-letter re-drive",
                std::time::Duration::from_secs(120),
            )
            .await?;
            let metrics = Metrics::new();
            let (_stop, stopped) = tokio::sync::watch::channel(false);
            let ctx = SinkContext {
                integration_id: i.id,
                form_id: i.form_id,
                purpose: i.purpose(),
                lease_generation: held.generation,
                limiter: Limiter::new(),
                metrics: metrics.sink(&i.id.to_string(), &i.kind),
                db: store.pool().clone(),
                stop: stopped,
            };
            let n = batch.len();
            let outcome = match Arc::new(Installed).redrive(
                &i.kind,
                &i.config,
                credentials.as_ref(),
                batch.clone(),
                ctx,
            ) {
                Ok(write) => write.await,
                Err(e) => {
                    held.release().await?;
                    bail!("{e}");
                }
            };
            held.release().await?;
            let report = match outcome {
                Ok(o) => {
                    let still: Vec<Value> = o
                        .rejected
                        .iter()
                        .map(|(k, reason)| {
                            json!({"source_offset": batch.get(*k).map(|d| d.offset), "reason": reason})
                        })
                        .collect();
                    json!({
                        "integration": i.id,
                        "redriven": n,
                        "written": n - still.len(),
                        "still_failing": still,
                        "undecodable": undecodable,
                    })
                }
                Err(e) => bail!("the sink refused the re-drive: {e}; nothing was marked"),
            };
            println!("{report}");
            Ok(())
        }
    }
}

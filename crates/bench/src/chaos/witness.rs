//! What the run saw while it went on, for a verdict the end alone cannot give: the broker
//! compacts a key's older records away (Tansu does so each time it starts, newest records
//! included), so at the end a response deleted during the run may have only its deletion
//! left in the topic. Its SMS integration then rightly never texted it if, and only if, the
//! integration had not read its creation when the broker restarted. So a tap reads the
//! responses topic as it is written and keeps where each response's first record that is
//! not a deletion was, and when; and each kill of the broker takes the integrations' stored
//! positions at that moment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

/// Where a record was: partition and offset.
type At = (i32, i64);

/// The integrations' stored positions on the responses topic: `(integration, partition)`
/// to the next offset each would read.
type Positions = HashMap<(String, i32), i64>;

#[derive(Default)]
struct Seen {
    /// Each response's first record that is not a deletion, and when the tap read it.
    creations: HashMap<String, (At, Instant)>,
    /// At each kill of the broker: when, and the positions then.
    kills: Vec<(Instant, Positions)>,
}

/// The tap and the positions at each broker kill. Stops its tap when dropped.
pub struct Witness {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Witness {
    /// Starts the tap on `partitions` partitions of `topic`, from their beginning.
    pub fn start(brokers: &str, topic: &str, partitions: i32) -> Result<Self> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "collect-bench-chaos-witness")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, halt) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let schema = collect_events::response_codec().schema();
            while !halt.load(Ordering::SeqCst) {
                // Errors (the broker killed) pass: librdkafka connects again by itself.
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let Some(event) = m
                    .payload()
                    .and_then(|v| collect_events::split_frame(v).ok())
                    .and_then(|(_, payload)| {
                        collect_events::decode::<collect_events::ResponseEvent>(
                            payload, schema, None,
                        )
                        .ok()
                    })
                else {
                    continue;
                };
                if event.op == collect_events::ResponseOp::Deleted || event.deleted_at.is_some() {
                    continue;
                }
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .creations
                    .entry(event.response_id)
                    .or_insert(((m.partition(), m.offset()), Instant::now()));
            }
        });
        Ok(Self { seen, stop })
    }

    /// Takes the positions every integration has stored on `topic` (call it right after the
    /// broker was killed).
    pub async fn broker_killed(&self, db_url: &str, topic: &str) -> Result<()> {
        let at = Instant::now();
        let c = collect_testkit::connect(db_url).await?;
        let rows = c
            .query(
                "SELECT integration_id::text, kafka_partition, next_offset \
                 FROM integration_positions WHERE topic = $1",
                &[&topic],
            )
            .await?;
        let positions: Positions = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kills
            .push((at, positions));
        Ok(())
    }

    /// Whether `integration` had not read the creation of `response` when the broker was
    /// killed after that creation was written (so that the restart may have compacted it
    /// away before the integration read it).
    pub fn behind_at_a_restart(&self, integration: &str, response: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(&((partition, offset), read_at)) = seen.creations.get(response) else {
            return false;
        };
        seen.kills.iter().any(|(at, positions)| {
            *at > read_at
                && positions
                    .get(&(integration.to_string(), partition))
                    .is_none_or(|next| *next <= offset)
        })
    }
}

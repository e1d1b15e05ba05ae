//! The conformance suite every sink must pass, generic over the sink (feature
//! `conformance`). A connector crate implements [`Target`] for its sink (how to build one,
//! how to see what reached the third party, how to slow the third party down) and calls
//! [`run_all`] from a test on a multi-threaded runtime:
//!
//! 1. redelivery after a crash between a write and its commit writes nothing twice;
//! 2. a poison record goes to the dead-letter topic and the partition goes on;
//! 3. a slow sink keeps memory bounded: the runtime reads at most one batch ahead of what
//!    is durable, the backlog stays in Kafka;
//! 4. shutdown in the middle of a batch loses nothing.

pub mod env;
pub mod memory;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

pub use env::Env;

use crate::sink::{BatchOutcome, Delivery, Sink, SinkContext, SinkError};
use crate::store::Integration;

/// A sink under test.
pub trait Target: Send + Sync {
    /// Its sink.
    type S: Sink;
    /// Its kind's name.
    fn kind(&self) -> &'static str;
    /// The configuration of a fresh test integration (each call: a fresh destination).
    fn config(&self) -> impl Future<Output = Value> + Send;
    /// A sink of `integration`, as a restarted process would build it.
    fn sink(&self, integration: &Integration) -> Self::S;
    /// What reached the third party: per response id, how many copies (rows, messages) and
    /// the latest revision.
    fn observe(
        &self,
        integration: &Integration,
    ) -> impl Future<Output = HashMap<String, (usize, i32)>> + Send;
    /// Makes every write of the third party take at least `d` (zero: back to normal).
    fn slow_down(&self, integration: &Integration, d: Duration) -> impl Future<Output = ()> + Send;
}

/// A scenario's failure.
pub type Outcome = Result<(), String>;

/// Waits until `cond` holds on what the third party shows, or fails after `limit`.
pub async fn wait_observed<T: Target>(
    t: &T,
    i: &Integration,
    limit: Duration,
    what: &str,
    cond: impl Fn(&HashMap<String, (usize, i32)>) -> bool,
) -> Result<HashMap<String, (usize, i32)>, String> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let seen = t.observe(i).await;
        if cond(&seen) {
            return Ok(seen);
        }
        if tokio::time::Instant::now() >= end {
            return Err(format!(
                "{what}: not reached within {limit:?}; third party shows {} responses",
                seen.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_once(seen: &HashMap<String, (usize, i32)>, ids: &[String]) -> Result<(), String> {
    for id in ids {
        match seen.get(id) {
            Some((1, _)) => {}
            Some((n, _)) => return Err(format!("response {id} is there {n} times")),
            None => return Err(format!("response {id} is missing")),
        }
    }
    Ok(())
}

/// Wraps a sink: after the first successful write it tells `written` and never returns,
/// standing for a process that dies between a write and the commit of its offsets.
struct StallAfterWrite<S> {
    inner: S,
    written: Arc<Notify>,
}

impl<S: Sink> Sink for StallAfterWrite<S> {
    async fn start(&mut self, ctx: &SinkContext) -> Result<(), SinkError> {
        self.inner.start(ctx).await
    }

    async fn write(
        &mut self,
        batch: &[Delivery],
        ctx: &SinkContext,
    ) -> Result<BatchOutcome, SinkError> {
        self.inner.write(batch, ctx).await?;
        self.written.notify_one();
        std::future::pending().await
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

/// 1. A crash after a write but before its commit: the batch comes again and is written
///    again, but never twice at the third party.
pub async fn redelivery_after_crash<T: Target>(env: &Env, t: &T) -> Outcome {
    let i = env.integration(t.kind(), t.config().await).await?;
    let first = ids(20);
    env.produce(
        &first
            .iter()
            .map(|id| env.response(id, 1, "first"))
            .collect::<Vec<_>>(),
    )
    .await?;
    let written = Arc::new(Notify::new());
    let w = env.start(
        StallAfterWrite {
            inner: t.sink(&i),
            written: written.clone(),
        },
        t.kind(),
        &i,
    );
    tokio::time::timeout(Duration::from_secs(60), written.notified())
        .await
        .map_err(|_| "the first write never happened".to_string())?;
    w.handle.abort();
    let _ = w.handle.await;
    // The process restarts: the uncommitted batch is delivered again, with new events.
    let second = ids(5);
    env.produce(
        &second
            .iter()
            .map(|id| env.response(id, 1, "second"))
            .collect::<Vec<_>>(),
    )
    .await?;
    let w = env.start(t.sink(&i), t.kind(), &i);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let seen = wait_observed(t, &i, Duration::from_secs(60), "all 25 responses", |s| {
        all.iter().all(|id| s.contains_key(id))
    })
    .await?;
    all_once(&seen, &all)?;
    w.stop().await;
    // At least once, really: the uncommitted first batch was delivered a second time.
    let l = [i.id.to_string(), t.kind().to_string()];
    let delivered = env
        .shared
        .metrics
        .delivered
        .with_label_values(&[&l[0], &l[1]])
        .get();
    if delivered < 45 {
        return Err(format!(
            "{delivered} deliveries: the uncommitted batch was not delivered again"
        ));
    }
    Ok(())
}

/// 2. A record that is not an event goes to the dead-letter topic with its reason and
///    origin; the events after it are written.
pub async fn poison_goes_to_dead_letters<T: Target>(env: &Env, t: &T) -> Outcome {
    let i = env.integration(t.kind(), t.config().await).await?;
    let before = ids(5);
    let after = ids(5);
    env.produce(
        &before
            .iter()
            .map(|id| env.response(id, 1, "ok"))
            .collect::<Vec<_>>(),
    )
    .await?;
    env.produce_poison(b"\x00\x00\x00\x00\x01not avro at all")
        .await?;
    env.produce(
        &after
            .iter()
            .map(|id| env.response(id, 1, "ok"))
            .collect::<Vec<_>>(),
    )
    .await?;
    let w = env.start(t.sink(&i), t.kind(), &i);
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    let seen = wait_observed(
        t,
        &i,
        Duration::from_secs(60),
        "the 10 good responses",
        |s| all.iter().all(|id| s.contains_key(id)),
    )
    .await?;
    all_once(&seen, &all)?;
    let dead = env.dead_letters(1, Duration::from_secs(30)).await;
    let d = dead.first().ok_or("no dead letter")?;
    if d.value != b"\x00\x00\x00\x00\x01not avro at all" {
        return Err("the dead letter does not carry the original record".into());
    }
    if d.headers.get("collect.integration") != Some(&i.id.to_string())
        || !d.headers.contains_key("collect.reason")
    {
        return Err(format!("dead letter headers: {:?}", d.headers));
    }
    w.stop().await;
    Ok(())
}

/// 3. With a slow third party and a backlog, the runtime reads at most one batch ahead of
///    what is durable; everything is written once it speeds up again.
pub async fn slow_sink_keeps_memory_bounded<T: Target>(env: &Env, t: &T, batch: usize) -> Outcome {
    let i = env.integration(t.kind(), t.config().await).await?;
    t.slow_down(&i, Duration::from_millis(300)).await;
    let all = ids(batch * 8);
    env.produce(
        &all.iter()
            .map(|id| env.response(id, 1, "slow"))
            .collect::<Vec<_>>(),
    )
    .await?;
    let w = env.start(t.sink(&i), t.kind(), &i);
    let labels = [i.id.to_string(), t.kind().to_string()];
    let m = &env.shared.metrics;
    let ahead = || {
        let l = [labels[0].as_str(), labels[1].as_str()];
        m.delivered.with_label_values(&l).get() as i64
            - m.committed.with_label_values(&l).get() as i64
    };
    let mut max_ahead = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        max_ahead = max_ahead.max(ahead());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if max_ahead > batch as i64 {
        return Err(format!(
            "{max_ahead} events were held in memory; the bound is one batch of {batch}"
        ));
    }
    t.slow_down(&i, Duration::ZERO).await;
    let seen = wait_observed(t, &i, Duration::from_secs(120), "the whole backlog", |s| {
        all.iter().all(|id| s.contains_key(id))
    })
    .await?;
    all_once(&seen, &all)?;
    w.stop().await;
    Ok(())
}

/// 4. Shutdown while a batch is being written: the worker stops within bounds, and after a
///    restart every event is there once.
pub async fn shutdown_mid_batch_loses_nothing<T: Target>(env: &Env, t: &T) -> Outcome {
    let i = env.integration(t.kind(), t.config().await).await?;
    t.slow_down(&i, Duration::from_millis(800)).await;
    let all = ids(60);
    env.produce(
        &all.iter()
            .map(|id| env.response(id, 1, "stop"))
            .collect::<Vec<_>>(),
    )
    .await?;
    let w = env.start(t.sink(&i), t.kind(), &i);
    let labels = [i.id.to_string(), t.kind().to_string()];
    let l = [labels[0].as_str(), labels[1].as_str()];
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.shared.metrics.delivered.with_label_values(&l).get() == 0 {
        if tokio::time::Instant::now() > end {
            return Err("no batch was delivered".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exit = w.stop().await;
    if exit != crate::worker::WorkerExit::Stopped {
        return Err(format!("worker ended with {exit:?}"));
    }
    t.slow_down(&i, Duration::ZERO).await;
    let w = env.start(t.sink(&i), t.kind(), &i);
    let seen = wait_observed(
        t,
        &i,
        Duration::from_secs(60),
        "every event after restart",
        |s| all.iter().all(|id| s.contains_key(id)),
    )
    .await?;
    all_once(&seen, &all)?;
    w.stop().await;
    Ok(())
}

/// Runs every scenario, each in an environment of its own; returns the failures.
pub async fn run_all<T: Target>(t: &T) -> Vec<String> {
    let mut failures = Vec::new();
    macro_rules! scenario {
        ($name:literal, $f:expr) => {
            match Env::new().await {
                Ok(mut env) => {
                    env.settings(|s| {
                        s.batch_max_events = 50;
                        s.batch_ceiling_events = 50;
                    });
                    if let Err(e) = $f(&env).await {
                        failures.push(format!("{}: {e}", $name));
                    }
                }
                Err(e) => failures.push(format!("{}: environment: {e}", $name)),
            }
        };
    }
    scenario!("redelivery after a crash", |env| redelivery_after_crash(
        env, t
    ));
    scenario!("poison to dead letters", |env| poison_goes_to_dead_letters(
        env, t
    ));
    scenario!("slow sink, bounded memory", |env| {
        slow_sink_keeps_memory_bounded(env, t, 50)
    });
    scenario!(
        "shutdown mid-batch",
        |env| shutdown_mid_batch_loses_nothing(env, t)
    );
    failures
}

/// Logs of a test, through the test harness's writer (`RUST_LOG` overrides the default:
/// warnings, and the runtime's own information).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,collect_connect=info,rdkafka=error")
            }),
        )
        .with_test_writer()
        .try_init();
}

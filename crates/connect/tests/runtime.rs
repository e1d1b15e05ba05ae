//! The connector runtime against the real broker, registry and Postgres, with the in-memory
//! reference sink: the conformance suite, retries, fatal errors and rejected events.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Duration;

use collect_connect::conformance::memory::{MemorySink, store};
use collect_connect::conformance::{Env, Target, logs, run_all, wait_observed};
use collect_connect::store::Integration;
use collect_connect::worker::WorkerExit;
use serde_json::{Value, json};

struct MemoryTarget;

fn store_of(i: &Integration) -> String {
    i.config["store"].as_str().unwrap().to_string()
}

impl Target for MemoryTarget {
    type S = MemorySink;

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn config(&self) -> Value {
        json!({"store": uuid::Uuid::new_v4().to_string()})
    }

    fn sink(&self, i: &Integration) -> MemorySink {
        MemorySink::new(&store_of(i))
    }

    async fn observe(&self, i: &Integration) -> HashMap<String, (usize, i32)> {
        let s = store(&store_of(i));
        let s = s.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: HashMap<String, (usize, i32)> = HashMap::new();
        for (id, rev, _) in &s.rows {
            let e = out.entry(id.clone()).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(*rev);
        }
        out
    }

    async fn slow_down(&self, i: &Integration, d: Duration) {
        store(&store_of(i))
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .latency = d;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_sink_passes_the_conformance_suite() {
    logs();
    let failures = run_all(&MemoryTarget).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_are_retried_and_edits_land_in_place() {
    logs();
    let env = Env::new().await.unwrap();
    let t = MemoryTarget;
    let i = env.integration("memory", t.config().await).await.unwrap();
    store(&store_of(&i)).lock().unwrap().fail_next = 3;
    let id = uuid::Uuid::new_v4().to_string();
    env.produce(&[
        env.response(&id, 1, "a"),
        env.response(&id, 2, "b"),
        env.response(&id, 3, "c"),
    ])
    .await
    .unwrap();
    let w = env.start(t.sink(&i), "memory", &i);
    let seen = wait_observed(&t, &i, Duration::from_secs(60), "revision 3", |s| {
        s.get(&id) == Some(&(1, 3))
    })
    .await
    .unwrap();
    assert_eq!(seen.len(), 1);
    let l = [i.id.to_string(), "memory".to_string()];
    assert_eq!(
        env.shared
            .metrics
            .retries
            .with_label_values(&[&l[0], &l[1]])
            .get(),
        3
    );
    // An older revision arriving late (a replay) does not move the row back.
    env.produce(&[env.response(&id, 2, "b")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_observed(&t, &i, Duration::from_secs(30), "still revision 3", |s| {
        s.get(&id) == Some(&(1, 3))
    })
    .await
    .unwrap();
    assert_eq!(w.stop().await, WorkerExit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_pauses_without_committing_and_rejected_events_are_dead_lettered() {
    logs();
    let env = Env::new().await.unwrap();
    let t = MemoryTarget;
    let i = env.integration("memory", t.config().await).await.unwrap();
    let s = store(&store_of(&i));
    s.lock().unwrap().reject_name = Some("refuse me".into());
    let (a, b) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    env.produce(&[
        env.response(&a, 1, "fine"),
        env.response(&b, 1, "refuse me"),
    ])
    .await
    .unwrap();
    let w = env.start(t.sink(&i), "memory", &i);
    wait_observed(&t, &i, Duration::from_secs(60), "the accepted one", |s| {
        s.contains_key(&a)
    })
    .await
    .unwrap();
    let dead = env.dead_letters(1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].headers["collect.reason"].contains("refuse me"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(w.stop().await, WorkerExit::Stopped);

    // The third party now refuses everything for good: the worker stops as paused, and
    // nothing after the last durable batch is committed.
    s.lock().unwrap().fatal = Some("credentials revoked".into());
    let c = uuid::Uuid::new_v4().to_string();
    env.produce(&[env.response(&c, 1, "later")]).await.unwrap();
    let w = env.start(t.sink(&i), "memory", &i);
    let exit = tokio::time::timeout(Duration::from_secs(30), w.handle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, WorkerExit::Paused("credentials revoked".into()));
    s.lock().unwrap().fatal = None;
    let w = env.start(t.sink(&i), "memory", &i);
    let seen = wait_observed(
        &t,
        &i,
        Duration::from_secs(60),
        "the later one after resume",
        |s| s.contains_key(&c),
    )
    .await
    .unwrap();
    assert!(!seen.contains_key(&b));
    assert_eq!(w.stop().await, WorkerExit::Stopped);
}

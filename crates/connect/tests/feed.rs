//! The process's shared reading of the event topics (crates/connect/src/feed/) against the
//! real broker, registry and Postgres: many integrations of several forms on one partition,
//! one of them slow, a memory budget far smaller than the backlog.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Duration;

use collect_connect::conformance::memory::{MemorySink, store};
use collect_connect::conformance::{Env, logs};
use collect_connect::store::Integration;
use collect_connect::worker::WorkerExit;
use serde_json::json;

fn store_of(i: &Integration) -> String {
    i.config["store"].as_str().unwrap().to_string()
}

/// Rows per response id in the integration's memory store.
fn rows(i: &Integration) -> HashMap<String, usize> {
    let s = store(&store_of(i));
    let s = s.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = HashMap::new();
    for (id, _, _) in &s.rows {
        *out.entry(id.clone()).or_insert(0) += 1;
    }
    out
}

fn delivered(env: &Env, i: &Integration) -> u64 {
    env.shared
        .metrics
        .delivered
        .with_label_values(&[i.id.to_string().as_str(), "memory"])
        .get()
}

/// Produces `n` new responses (revision 1, name `name`) of the test form; their ids.
async fn produce_new(env: &Env, n: usize, name: &str) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    env.produce(
        &ids.iter()
            .map(|id| env.response(id, 1, name))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    ids
}

async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reading_serves_every_integration_and_a_slow_one_holds_back_none() {
    logs();
    let mut env = Env::new().await.unwrap();
    // A budget of 1 MiB for a backlog of several: integrations are detached and catch up.
    env.settings(|s| {
        s.memory_budget_bytes = 1024 * 1024;
        s.batch_max_events = 100;
    });
    let sibling = env.sibling_form().await.unwrap();
    let mut ours = Vec::new();
    for _ in 0..5 {
        let config = json!({"store": uuid::Uuid::new_v4().to_string()});
        ours.push(env.integration("memory", config).await.unwrap());
    }
    let mut theirs = Vec::new();
    for _ in 0..2 {
        let config = json!({"store": uuid::Uuid::new_v4().to_string()});
        theirs.push(env.integration_on(sibling, "memory", config).await.unwrap());
    }
    let slow = &ours[0];
    store(&store_of(slow))
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .latency = Duration::from_secs(1);

    // Half the backlog before the workers start (they catch up), half while they run.
    let n = 3000;
    let mut events = Vec::new();
    let (mut mine, mut sibling_ids) = (Vec::new(), Vec::new());
    for k in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        let mut e = env.response(&id, 1, &format!("answer {k} {}", "x".repeat(200)));
        if k % 3 == 0 {
            e.form_id = sibling.to_string();
            sibling_ids.push(id);
        } else {
            mine.push(id);
        }
        events.push(e);
    }
    env.produce(&events[..n / 2]).await.unwrap();
    let workers: Vec<_> = ours
        .iter()
        .chain(&theirs)
        .map(|i| env.start(MemorySink::new(&store_of(i)), "memory", i))
        .collect();
    env.produce(&events[n / 2..]).await.unwrap();

    let complete = |i: &Integration, ids: &[String]| {
        let r = rows(i);
        ids.iter().all(|id| r.contains_key(id))
    };
    until(
        "every fast integration has its form's responses",
        120,
        || {
            ours[1..].iter().all(|i| complete(i, &mine))
                && theirs.iter().all(|i| complete(i, &sibling_ids))
        },
    )
    .await;
    // The slow one (a batch a second) was left behind and held back no one.
    let slow_rows = rows(slow).len();
    assert!(
        slow_rows < mine.len() / 2,
        "the slow integration had {slow_rows} of {} rows when the others were done",
        mine.len()
    );
    store(&store_of(slow))
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .latency = Duration::ZERO;
    until("the slow integration catches up", 120, || {
        complete(slow, &mine)
    })
    .await;

    // Each integration got each of its form's records once: no other form's, no repeat.
    for (i, ids) in ours
        .iter()
        .map(|i| (i, &mine))
        .chain(theirs.iter().map(|i| (i, &sibling_ids)))
    {
        let r = rows(i);
        assert_eq!(r.len(), ids.len(), "integration {}", i.id);
        assert!(r.values().all(|n| *n == 1), "a row written twice");
        assert_eq!(delivered(&env, i), ids.len() as u64, "integration {}", i.id);
    }
    // Bounded: every record handed out was given back once its batch was done.
    until("the budget is given back", 30, || {
        env.shared.metrics.feed_held_bytes.get() == 0
    })
    .await;
    for w in workers {
        assert_eq!(w.stop().await, WorkerExit::Stopped);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integration_restarts_from_its_own_stored_position() {
    logs();
    let env = Env::new().await.unwrap();
    let config = json!({"store": uuid::Uuid::new_v4().to_string()});
    let i = env.integration("memory", config).await.unwrap();
    let first = produce_new(&env, 50, "first").await;
    let w = env.start(MemorySink::new(&store_of(&i)), "memory", &i);
    until("the first responses", 60, || rows(&i).len() == first.len()).await;
    assert_eq!(w.stop().await, WorkerExit::Stopped);

    // Stored in Postgres, past every record it read.
    let c = env.pool.get().await.unwrap();
    let stored: i64 = c
        .query_one(
            "SELECT next_offset FROM integration_positions WHERE integration_id = $1 \
             AND topic = $2",
            &[&i.id, &env.shared.settings.responses_topic],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, first.len() as i64);

    // Others arrive while it is stopped; it reads only those, once.
    let second = produce_new(&env, 30, "second").await;
    let before = delivered(&env, &i);
    let w = env.start(MemorySink::new(&store_of(&i)), "memory", &i);
    until("the second responses", 60, || {
        rows(&i).len() == first.len() + second.len()
    })
    .await;
    assert_eq!(delivered(&env, &i) - before, second.len() as u64);
    assert!(rows(&i).values().all(|n| *n == 1));
    assert_eq!(w.stop().await, WorkerExit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integration_from_before_positions_starts_where_its_consumer_group_was() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    logs();
    let env = Env::new().await.unwrap();
    let config = json!({"store": uuid::Uuid::new_v4().to_string()});
    let mut i = env.integration("memory", config).await.unwrap();
    let old = produce_new(&env, 20, "before the upgrade").await;
    // A worker of the former version committed these to the integration's own group.
    let topic = env.shared.settings.responses_topic.clone();
    let partition = collect_events::partition_for(
        &env.form.to_string(),
        collect_connect::conformance::env::PARTITIONS,
    );
    let group: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", collect_connect::offsets::group_of(i.id))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(old.len() as i64))
        .unwrap();
    group.commit(&tpl, CommitMode::Sync).unwrap();
    drop(group);
    // The integration is older than the positions table.
    i.created_at = chrono::DateTime::from_timestamp(1_600_000_000, 0).unwrap();

    let new = produce_new(&env, 10, "after").await;
    let w = env.start(MemorySink::new(&store_of(&i)), "memory", &i);
    until("the responses after the group's offset", 60, || {
        rows(&i).len() == new.len()
    })
    .await;
    let r = rows(&i);
    assert!(new.iter().all(|id| r.contains_key(id)));
    assert!(
        old.iter().all(|id| !r.contains_key(id)),
        "read again what the group had committed"
    );
    assert_eq!(w.stop().await, WorkerExit::Stopped);
    let c = env.pool.get().await.unwrap();
    let stored: i64 = c
        .query_one(
            "SELECT next_offset FROM integration_positions WHERE integration_id = $1 AND topic = $2",
            &[&i.id, &topic],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, (old.len() + new.len()) as i64);
}

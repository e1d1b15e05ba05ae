//! A lost slot recovers by itself. A binary of its own: it lowers `max_slot_wal_keep_size`
//! on its Postgres cluster (one per test process), which would invalidate other tests' slots.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Stack, ids};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

async fn wal_status(s: &Stack) -> Option<String> {
    s.sql
        .query_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&s.name],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_reported_then_recovered_by_a_fresh_snapshot() {
    let s = Stack::new().await;
    for stmt in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
    ] {
        s.sql.batch_execute(stmt).await.unwrap();
    }
    let form = s.form("lost").await["id"].as_str().unwrap().to_string();
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    let first = s.submit(&form, json!({"name": "first"})).await;
    s.responses(WAIT, |e| ids(e).contains(&first)).await;
    reader.stop().await;

    // The reader is behind: a response, then far more WAL than the slot may keep.
    let behind = s.submit(&form, json!({"name": "behind"})).await;
    s.sql
        .batch_execute(
            "CREATE TABLE junk (x text); \
             INSERT INTO junk SELECT repeat(md5(i::text), 60) FROM generate_series(1, 40000) i",
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while wal_status(&s).await.as_deref() != Some("lost") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never invalidated: {:?}",
            wal_status(&s).await
        );
        for stmt in ["SELECT pg_switch_wal()", "CHECKPOINT"] {
            s.sql.batch_execute(stmt).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Told to stop, the reader says why and stops.
    let mut cfg = s.config();
    cfg.on_slot_lost = collect_cdc::OnSlotLost::Stop;
    let stopping = s.start_reader(cfg);
    let ended = tokio::time::timeout(WAIT, stopping.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ended, Err(collect_cdc::CdcError::SlotLost(ref m)) if m.contains("invalidated")),
        "{ended:?}"
    );
    assert_eq!(stopping.metrics.slot_lost.get(), 1);

    // By default it recovers: a new slot and a fresh snapshot carry the response it missed.
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    let after = s.submit(&form, json!({"name": "after"})).await;
    let events = s
        .responses(WAIT, |e| {
            let got = ids(e);
            got.contains(&behind) && got.contains(&after)
        })
        .await;
    assert!(
        events
            .iter()
            .any(|e| e.value.response_id == behind
                && e.value.op == collect_events::ResponseOp::Snapshot),
        "the missed response did not come from the snapshot"
    );
    assert_eq!(reader.metrics.slot_lost.get(), 1);
    let status = reader.metrics.status();
    assert!(
        status
            .slot_lost
            .as_deref()
            .is_some_and(|m| m.contains("invalidated")),
        "{status:?}"
    );
    assert_ne!(wal_status(&s).await.as_deref(), Some("lost"));
    reader.stop().await;
}

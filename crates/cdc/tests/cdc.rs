//! The CDC reader end to end: real Postgres, the real broker, the registry and the forms API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use collect_events::{ResponseOp, partition_for};
use common::{Stack, ids};
use reqwest::Method;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_and_new_responses_arrive_in_form_order() {
    let s = Stack::new().await;
    let forms: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                s.form(&format!("F{i}")).await["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        v
    };
    // Responses that exist before the reader first starts (the snapshot's).
    let mut before = BTreeSet::new();
    for i in 0..20 {
        before.insert(
            s.submit(&forms[i % 3], json!({"name": format!("old {i}"), "age": i}))
                .await,
        );
    }
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    // Responses written once the reader streams.
    let mut after = BTreeSet::new();
    for i in 0..30 {
        after.insert(
            s.submit(&forms[i % 3], json!({"name": format!("new {i}")}))
                .await,
        );
    }
    let edited = after.iter().next().unwrap().clone();
    let form_of_edited = {
        let rows = s
            .sql
            .query_one(
                "SELECT form_id::text FROM responses WHERE id = $1::text::uuid",
                &[&edited],
            )
            .await
            .unwrap();
        rows.get::<_, String>(0)
    };
    s.call(
        Method::PATCH,
        &format!("/v1/forms/{form_of_edited}/responses/{edited}"),
        Some(json!({"answers": {"age": 99}})),
    )
    .await;
    s.call(
        Method::DELETE,
        &format!("/v1/forms/{form_of_edited}/responses/{edited}"),
        None,
    )
    .await;

    let all: BTreeSet<String> = before.union(&after).cloned().collect();
    let events = s
        .responses(WAIT, |evs| {
            ids(evs).len() == 50 && evs.iter().any(|e| e.value.op == ResponseOp::Deleted)
        })
        .await;
    assert_eq!(ids(&events), all);

    // Every record of a form sits in the partition murmur2(form id) picks, keyed by response.
    for e in &events {
        assert_eq!(
            e.partition,
            partition_for(&e.value.form_id, 4),
            "{:?}",
            e.value.event_id
        );
        assert_eq!(e.key, e.value.response_id);
    }
    // Old responses came from the snapshot, new ones as changes; within a partition the
    // snapshot comes first and changes follow in commit order.
    for e in &events {
        let expected = if before.contains(&e.value.response_id) {
            ResponseOp::Snapshot
        } else {
            e.value.op
        };
        assert_eq!(e.value.op, expected);
    }
    let mut by_partition: HashMap<i32, Vec<&common::Rec<collect_events::ResponseEvent>>> =
        HashMap::new();
    for e in &events {
        by_partition.entry(e.partition).or_default().push(e);
    }
    for evs in by_partition.values() {
        let mut seen_change = false;
        let mut last_lsn = 0;
        for e in evs {
            if e.value.op == ResponseOp::Snapshot {
                assert!(!seen_change, "a snapshot record after a change record");
            } else {
                seen_change = true;
                assert!(e.value.commit_lsn >= last_lsn, "commit order broken");
                last_lsn = e.value.commit_lsn;
            }
        }
    }
    // The edited response: created (rev 1), updated (rev 2), deleted (rev 3), in this order.
    let history: Vec<(ResponseOp, i32)> = events
        .iter()
        .filter(|e| e.value.response_id == edited)
        .map(|e| (e.value.op, e.value.revision))
        .collect();
    assert_eq!(
        history,
        vec![
            (ResponseOp::Created, 1),
            (ResponseOp::Updated, 2),
            (ResponseOp::Deleted, 3)
        ]
    );
    let updated = events
        .iter()
        .find(|e| e.value.response_id == edited && e.value.op == ResponseOp::Updated)
        .unwrap();
    let age = updated
        .value
        .answers
        .iter()
        .find(|a| a.alias.as_deref() == Some("age"))
        .unwrap();
    assert_eq!(age.number.as_deref(), Some("99"));
    // Event ids are unique and deterministic in form.
    let distinct: BTreeSet<&str> = events.iter().map(|e| e.value.event_id.as_str()).collect();
    assert_eq!(distinct.len(), events.len());

    // Form events: 3 forms and 9 questions from the snapshot.
    let forms_events = s.form_events(WAIT, |n| n >= 12).await;
    assert_eq!(
        forms_events
            .iter()
            .filter(|e| e.value.form.is_some())
            .count(),
        3
    );
    assert_eq!(
        forms_events
            .iter()
            .filter(|e| e.value.question.is_some())
            .count(),
        9
    );

    // The slot moves past everything acknowledged.
    let last_lsn = events
        .iter()
        .map(|e| e.value.commit_lsn as u64)
        .max()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.confirmed_lsn().await <= last_lsn {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot not confirmed past {last_lsn:x}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.stop().await;
}

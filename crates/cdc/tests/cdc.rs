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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_the_snapshot_are_neither_lost_nor_duplicated() {
    let s = Stack::new().await;
    let form = s.form("busy").await["id"].as_str().unwrap().to_string();
    let mut expected = BTreeSet::new();
    for i in 0..150 {
        expected.insert(s.submit(&form, json!({"name": format!("pre {i}")})).await);
    }
    // A writer keeps submitting while the reader creates its slot and reads the snapshot.
    let writer = {
        let (api, key, form) = (s.api.clone(), s.key.clone(), form.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut ids = BTreeSet::new();
            for i in 0..150 {
                let r: serde_json::Value = http
                    .post(format!("{api}/v1/forms/{form}/responses"))
                    .bearer_auth(&key)
                    .json(&json!({"answers": {"name": format!("during {i}")}}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                ids.insert(r["id"].as_str().unwrap().to_string());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        })
    };
    let mut cfg = s.config();
    cfg.snapshot_chunk = 10;
    let reader = s.start_reader(cfg);
    expected.extend(writer.await.unwrap());
    let events = s.responses(WAIT, |evs| ids(evs).len() == 300).await;
    assert_eq!(ids(&events), expected);
    // Each response is either in the snapshot or a change after it, never both, never twice.
    let mut seen: HashMap<&str, Vec<ResponseOp>> = HashMap::new();
    for e in &events {
        seen.entry(&e.value.response_id)
            .or_default()
            .push(e.value.op);
    }
    for (id, ops) in &seen {
        assert!(
            ops == &[ResponseOp::Snapshot] || ops == &[ResponseOp::Created],
            "{id}: {ops:?}"
        );
    }
    assert!(
        seen.values().any(|o| o == &[ResponseOp::Created]),
        "some writes came after the snapshot point"
    );
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_snapshot_resumes_instead_of_restarting() {
    let s = Stack::new().await;
    let form = s.form("big").await["id"].as_str().unwrap().to_string();
    // Rows straight in SQL: quicker than the API for a few hundred.
    let org: String = s
        .sql
        .query_one("SELECT org_id::text FROM forms LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    s.sql
        .execute(
            "INSERT INTO responses (form_id, id, org_id, answers)
             SELECT $1::text::uuid, gen_random_uuid(), $2::text::uuid, '{}' FROM generate_series(1, 400)",
            &[&form, &org],
        )
        .await
        .unwrap();
    let mut cfg = s.config();
    cfg.snapshot_chunk = 5;
    let reader = s.start_reader(cfg.clone());
    // Crash the reader once some chunks are acknowledged, well before the end.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let done: Option<i64> = s
            .sql
            .query_opt(
                "SELECT rows_done FROM cdc_snapshots WHERE slot_name = $1",
                &[&s.name],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        if done.unwrap_or(0) >= 100 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    reader.task.abort();
    let _ = reader.task.await;
    let done_at_crash: i64 = s
        .sql
        .query_one(
            "SELECT rows_done FROM cdc_snapshots WHERE slot_name = $1",
            &[&s.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        done_at_crash < 400,
        "the snapshot finished before the crash; make it bigger"
    );

    let reader = s.start_reader(cfg);
    let events = s.responses(WAIT, |evs| ids(evs).len() == 400).await;
    let snapshot_records = events
        .iter()
        .filter(|e| e.value.op == ResponseOp::Snapshot)
        .count();
    // Acknowledged chunks are not read again: at most the chunk in flight is repeated
    // (plus whatever the producer had sent past the last stored chunk).
    assert!(
        snapshot_records < 400 + 200,
        "{snapshot_records} records: the snapshot restarted"
    );
    let completed: bool = s
        .sql
        .query_one(
            "SELECT completed_at IS NOT NULL FROM cdc_snapshots WHERE slot_name = $1",
            &[&s.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(completed);
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_carried_not_lost() {
    let s = Stack::new().await;
    let form = s.form("toast").await["id"].as_str().unwrap().to_string();
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    // 50,000 characters that do not compress: the document is stored out of line.
    let essay: String = (0..50_000u64)
        .map(|i| char::from(b'a' + ((i.wrapping_mul(2_654_435_761) >> 7) % 26) as u8))
        .collect();
    let id = s
        .submit(&form, json!({"name": "Toast", "essay": essay}))
        .await;
    let stored: i32 = s
        .sql
        .query_one(
            "SELECT pg_column_size(answers) FROM responses WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored > 2000, "document should be TOASTed");
    // These updates leave the document column untouched: pgoutput sends it as "unchanged".
    s.sql
        .execute(
            "UPDATE responses SET source = 'import' WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    s.call(
        Method::DELETE,
        &format!("/v1/forms/{form}/responses/{id}"),
        None,
    )
    .await;
    let events = s.responses(WAIT, |evs| evs.len() == 3).await;
    let ops: Vec<ResponseOp> = events.iter().map(|e| e.value.op).collect();
    assert_eq!(
        ops,
        vec![
            ResponseOp::Created,
            ResponseOp::Updated,
            ResponseOp::Deleted
        ]
    );
    for e in &events {
        let got = e
            .value
            .answers
            .iter()
            .find(|a| a.alias.as_deref() == Some("essay"))
            .unwrap();
        assert_eq!(
            got.text.as_deref(),
            Some(essay.as_str()),
            "{:?} lost the essay",
            e.value.op
        );
    }
    assert_eq!(events[1].value.source, "import");
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_changes_go_to_the_dead_letter_topic_and_the_stream_goes_on() {
    let s = Stack::new().await;
    let form = s.form("dlq").await["id"].as_str().unwrap().to_string();
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    let bad = s.submit(&form, json!({"name": "will be corrupted"})).await;
    // Someone edits the document by hand into something that is not a response document.
    s.sql
        .execute(
            "UPDATE responses SET answers = '{\"not-a-question-id\": 5}' WHERE id = $1::text::uuid",
            &[&bad],
        )
        .await
        .unwrap();
    // A schema change: a new column is picked up from the Relation message.
    s.sql
        .batch_execute("ALTER TABLE responses ADD COLUMN note text DEFAULT 'n'")
        .await
        .unwrap();
    let good = s.submit(&form, json!({"name": "after"})).await;
    s.sql.batch_execute("TRUNCATE answers").await.unwrap();
    let events = s.responses(WAIT, |evs| ids(evs).contains(&good)).await;
    assert_eq!(
        events.iter().filter(|e| e.value.response_id == bad).count(),
        1,
        "only the creation"
    );
    let dlq = s.read_raw(&s.topic("dlq"), WAIT, |r| !r.is_empty()).await;
    assert_eq!(dlq.len(), 1);
    let common::RawRec {
        key,
        payload,
        headers,
        ..
    } = &dlq[0];
    assert!(key.starts_with("responses/"), "{key}");
    let body: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(body["table"], "responses");
    assert_eq!(body["op"], "update");
    assert_eq!(body["row"]["id"], bad.as_str());
    assert!(
        headers["collect.reason"].contains("not a response document"),
        "{headers:?}"
    );
    assert_eq!(reader.metrics.dead_letters.get(), 1);
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_advances_when_only_unpublished_tables_are_written() {
    let s = Stack::new().await;
    s.form("quiet").await;
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    s.sql
        .batch_execute("CREATE TABLE scratch (v text)")
        .await
        .unwrap();
    let before = s.confirmed_lsn().await;
    for _ in 0..20 {
        s.sql
            .batch_execute(
                "INSERT INTO scratch SELECT repeat('x', 1000) FROM generate_series(1, 200)",
            )
            .await
            .unwrap();
    }
    let written: i64 = s
        .sql
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.confirmed_lsn().await < written as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot stuck at {:x} (was {before:x})",
            s.confirmed_lsn().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_active_reader_dies() {
    let s = Stack::new().await;
    let form = s.form("ha").await["id"].as_str().unwrap().to_string();
    let active = s.start_reader(s.config());
    active.streaming().await;
    let standby = s.start_reader(s.config());
    let deadline = tokio::time::Instant::now() + WAIT;
    while standby.metrics.status().state != "standby" {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = s.submit(&form, json!({"name": "one"})).await;
    s.responses(WAIT, |evs| ids(evs).contains(&first)).await;
    // The active reader dies: its connections drop with it.
    active.task.abort();
    let _ = active.task.await;
    let died = tokio::time::Instant::now();
    standby.streaming().await;
    let took = died.elapsed();
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    let second = s.submit(&form, json!({"name": "two"})).await;
    s.responses(WAIT, |evs| ids(evs).contains(&second)).await;
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_streams_through() {
    let s = Stack::new().await;
    let form = s.form("bulk").await["id"].as_str().unwrap().to_string();
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    let org: String = s
        .sql
        .query_one("SELECT org_id::text FROM forms LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let n = 50_000;
    s.sql
        .execute(
            "INSERT INTO responses (form_id, id, org_id, answers)
             SELECT $1::text::uuid, gen_random_uuid(), $2::text::uuid, '{}' FROM generate_series(1, $3::int)",
            &[&form, &org, &n],
        )
        .await
        .unwrap();
    let events = s
        .responses(Duration::from_secs(240), |evs| evs.len() >= n as usize)
        .await;
    assert_eq!(ids(&events).len(), n as usize);
    let xids: BTreeSet<i64> = events.iter().map(|e| e.value.xid).collect();
    assert_eq!(xids.len(), 1, "one transaction");
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_the_topics_take_is_a_bounded_dead_letter_and_the_stream_goes_on() {
    let mut s = Stack::new().await;
    // Topics and producer at 64 KiB; the API still takes documents of 512 KiB.
    s.max_message_bytes = 64 * 1024;
    let form = s.form("big").await["id"].as_str().unwrap().to_string();
    let other = s.form("other").await["id"].as_str().unwrap().to_string();
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    // The topics the reader created say so, and keep every record a week before compaction.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &s.brokers)
            .create()
            .unwrap();
    let responses = s.topic("responses");
    let described = admin
        .describe_configs(
            [rdkafka::admin::ResourceSpecifier::Topic(responses.as_str())].iter(),
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let config = described.into_iter().next().unwrap().unwrap();
    let value = |k: &str| config.get(k).and_then(|e| e.value.clone());
    assert_eq!(value("cleanup.policy").as_deref(), Some("compact"));
    assert_eq!(value("max.message.bytes").as_deref(), Some("65536"));
    assert_eq!(value("min.compaction.lag.ms").as_deref(), Some("604800000"));
    let big = s
        .submit(&form, json!({"name": "big", "essay": "é".repeat(45_000)}))
        .await;
    let after = s.submit(&form, json!({"name": "after"})).await;
    let elsewhere = s.submit(&other, json!({"name": "elsewhere"})).await;
    let events = s
        .responses(WAIT, |evs| {
            let got = ids(evs);
            got.contains(&after) && got.contains(&elsewhere)
        })
        .await;
    assert!(
        !ids(&events).contains(&big),
        "the oversized event was produced"
    );
    let dlq = s.read_raw(&s.topic("dlq"), WAIT, |r| !r.is_empty()).await;
    assert_eq!(dlq.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&dlq[0].payload).unwrap();
    assert_eq!(body["table"], "responses");
    assert_eq!(body["row"]["id"], big.as_str());
    assert_eq!(body["row"]["form_id"], form.as_str());
    assert_eq!(body["row_omitted"], true);
    assert!(
        body["row"].get("answers").is_none(),
        "the row itself was kept"
    );
    assert!(
        dlq[0].payload.len() < 16 * 1024,
        "dead letter of {} bytes",
        dlq[0].payload.len()
    );
    assert!(
        dlq[0].headers["collect.reason"].contains("max.message.bytes"),
        "{:?}",
        dlq[0].headers
    );
    assert_eq!(reader.metrics.dead_letters.get(), 1);
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_other_session_settings_changes_nothing_downstream() {
    let s = Stack::new().await;
    s.sql
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET DateStyle = 'SQL, DMY'; \
             ALTER DATABASE \"{}\" SET IntervalStyle = 'sql_standard'; \
             ALTER DATABASE \"{}\" SET extra_float_digits = -2",
            s.db.name, s.db.name, s.db.name
        ))
        .await
        .unwrap();
    // Existing rows go through the snapshot, new ones through the stream: both read text.
    let form = s.form("datestyle").await;
    let form_id = form["id"].as_str().unwrap().to_string();
    let before = s
        .call(
            Method::POST,
            &format!("/v1/forms/{form_id}/responses"),
            Some(json!({"answers": {"name": "before", "age": 0.1}})),
        )
        .await;
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    let after = s
        .call(
            Method::POST,
            &format!("/v1/forms/{form_id}/responses"),
            Some(json!({"answers": {"name": "after", "age": 12.25}})),
        )
        .await;
    let want: Vec<String> = [&before, &after]
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let events = s
        .responses(WAIT, |evs| want.iter().all(|w| ids(evs).contains(w)))
        .await;
    for r in [&before, &after] {
        let e = events
            .iter()
            .find(|e| e.value.response_id == r["id"].as_str().unwrap())
            .unwrap();
        let submitted = chrono::DateTime::parse_from_rfc3339(r["submitted_at"].as_str().unwrap())
            .unwrap()
            .timestamp_micros();
        assert_eq!(e.value.submitted_at, submitted, "{r}");
        let age = e
            .value
            .answers
            .iter()
            .find(|a| a.alias.as_deref() == Some("age"));
        assert!(age.and_then(|a| a.number.as_deref()).is_some());
    }
    let numbers: Vec<&str> = events
        .iter()
        .flat_map(|e| e.value.answers.iter())
        .filter_map(|a| a.number.as_deref())
        .collect();
    assert!(
        numbers.contains(&"0.1") && numbers.contains(&"12.25"),
        "{numbers:?}"
    );
    // The form event's times too.
    let forms = s.form_events(WAIT, |n| n >= 1).await;
    let created = chrono::DateTime::parse_from_rfc3339(form["created_at"].as_str().unwrap())
        .unwrap()
        .timestamp_micros();
    assert!(
        forms
            .iter()
            .filter_map(|f| f.value.form.as_ref())
            .any(|f| f.created_at == created),
        "no form event with the form's creation time"
    );
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_of_one_partition_is_reported_and_never_silent() {
    let s = Stack::new().await;
    // A partition that lost REPLICA IDENTITY FULL, another that lost its TRUNCATE trigger:
    // the reader puts both back before streaming.
    s.sql
        .batch_execute(
            "ALTER TABLE responses_p03 REPLICA IDENTITY DEFAULT; \
             DROP TRIGGER collect_truncate_notice ON responses_p05",
        )
        .await
        .unwrap();
    let form = s.form("truncated").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    let row = s
        .sql
        .query_one(
            "SELECT (SELECT relreplident::text FROM pg_class WHERE relname = 'responses_p03'), \
             EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'collect_truncate_notice' \
                     AND tgrelid = 'responses_p05'::regclass)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "f");
    assert!(row.get::<_, bool>(1));
    let gone = s.submit(&form, json!({"name": "gone"})).await;
    let partition: String = s
        .sql
        .query_one(
            "SELECT tableoid::regclass::text FROM responses WHERE id = $1::text::uuid",
            &[&gone],
        )
        .await
        .unwrap()
        .get(0);
    s.sql
        .batch_execute(&format!("TRUNCATE {partition}"))
        .await
        .unwrap();
    let after = s.submit(&form, json!({"name": "after"})).await;
    s.responses(WAIT, |evs| ids(evs).contains(&after)).await;
    let dlq = s
        .read_raw(&s.topic("dlq"), WAIT, |r| {
            r.iter()
                .any(|r| r.headers.get("collect.op").map(String::as_str) == Some("truncate"))
        })
        .await;
    let letter = dlq
        .iter()
        .find(|r| r.headers["collect.op"] == "truncate")
        .unwrap();
    assert!(
        letter.headers["collect.reason"].contains(&partition),
        "{:?}",
        letter.headers
    );
    let body: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(body["row"]["tables"], json!([partition]));
    assert_eq!(reader.metrics.truncations.get(), 1);
    assert!(
        reader
            .metrics
            .status()
            .last_truncation
            .is_some_and(|t| t.contains(&partition))
    );
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_idle_database_heartbeats_keep_restart_lsn_moving() {
    let s = Stack::new().await;
    s.form("idle").await;
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    let restart = || async {
        s.sql
            .query_one(
                "SELECT (restart_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&s.name],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let first = restart().await;
    // Nothing is written to this database from now on: only the reader's heartbeats (every
    // second here) make WAL the slot may pass. Postgres moves restart_lsn when the walsender
    // decodes a running-transactions record (logged every 15 s while WAL is written).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while restart().await <= first {
        assert!(
            tokio::time::Instant::now() < deadline,
            "restart_lsn stayed at {first}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The retained WAL is measured from restart_lsn, and stays small.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reader.metrics.slot_retained_wal_bytes.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained WAL never measured"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        reader.metrics.slot_retained_wal_bytes.get() < 64 * 1024 * 1024,
        "{}",
        reader.metrics.slot_retained_wal_bytes.get()
    );
    reader.stop().await;
}

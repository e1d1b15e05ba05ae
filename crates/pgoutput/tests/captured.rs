//! The decoder against bytes Postgres really sends: a scenario covering every message kind
//! (TOAST, replica identities, truncate, messages, custom types, streamed commit and abort)
//! is captured from a live Postgres on every run, and from Postgres 15.18 once into
//! `fixtures/pg15.hex` (regenerate with `COLLECT_CAPTURE_FIXTURES=1`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use collect_pgoutput::{LogicalMessage, OldTuple, ReplicaIdentity, StreamState, TupleValue};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pg15.hex");
/// Rows in each streamed transaction (with logical_decoding_work_mem = 64kB).
const STREAMED_ROWS: usize = 800;

fn big_value() -> String {
    // 20,000 characters that compress poorly, so the value is stored out of line (TOAST).
    (0..2500u64)
        .map(|i| format!("{:08x}", i.wrapping_mul(2_654_435_761) ^ 0x5bd1e995))
        .collect()
}

async fn capture() -> Vec<Bytes> {
    let db = collect_testkit::fresh_db().await.unwrap();
    let c = db.connect().await.unwrap();
    let slot = format!("cap_{}", &db.name[2..14]);
    c.batch_execute(
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE t (id int PRIMARY KEY, name text, big text, n numeric, flag bool, m mood);
         ALTER TABLE t REPLICA IDENTITY FULL;
         CREATE TABLE k (id int PRIMARY KEY, v text);
         CREATE PUBLICATION p FOR TABLE t, k;",
    )
    .await
    .unwrap();
    c.execute(
        &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO t VALUES (1, 'a', $1, 1.5, true, 'ok')",
        &[&big_value()],
    )
    .await
    .unwrap();
    // One statement (so one transaction) per step.
    let streamed = format!(
        "INSERT INTO t SELECT g, 'n' || g, repeat('y', 20), g, g % 2 = 0, 'sad' FROM generate_series(10, {}) g",
        9 + STREAMED_ROWS
    );
    let aborted = format!(
        "INSERT INTO t SELECT g, 'n' || g, repeat('z', 20) FROM generate_series(100000, {}) g",
        99_999 + STREAMED_ROWS
    );
    for step in [
        "UPDATE t SET name = 'b' WHERE id = 1",
        "DELETE FROM t WHERE id = 1",
        "BEGIN",
        "INSERT INTO k VALUES (1, 'v')",
        "UPDATE k SET id = 2 WHERE id = 1",
        "DELETE FROM k WHERE id = 2",
        "COMMIT",
        "TRUNCATE t, k",
        "SELECT pg_logical_emit_message(true, 'collect.test', 'hello')",
        "SELECT pg_logical_emit_message(false, 'collect.hb', 'beat')",
        &streamed,
        "BEGIN",
        &aborted,
        "ROLLBACK",
        "INSERT INTO t (id, name) VALUES (2, NULL)",
    ] {
        c.batch_execute(step).await.unwrap();
    }
    c.batch_execute("SET logical_decoding_work_mem = '64kB'")
        .await
        .unwrap();
    let rows = c
        .query(
            &format!(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL,
                   'proto_version', '2', 'publication_names', 'p', 'streaming', 'on', 'messages', 'true')"
            ),
            &[],
        )
        .await
        .unwrap();
    c.batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await
        .unwrap();
    rows.iter()
        .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0)))
        .collect()
}

fn text(v: &TupleValue) -> Option<&str> {
    match v {
        TupleValue::Text(b) => Some(std::str::from_utf8(b).unwrap()),
        _ => None,
    }
}

/// Decodes the captured stream and checks every message against the scenario.
fn check(raw: &[Bytes]) {
    let mut state = StreamState::default();
    let msgs: Vec<LogicalMessage> = raw.iter().map(|b| state.decode(b).unwrap()).collect();
    assert!(!state.in_segment());

    // Relations and the custom type.
    let rel = |name: &str| {
        msgs.iter()
            .find_map(|m| match m {
                LogicalMessage::Relation(r) if r.name == name => Some(r.clone()),
                _ => None,
            })
            .unwrap()
    };
    let t = rel("t");
    assert_eq!(t.namespace, "public");
    assert_eq!(t.replica_identity, ReplicaIdentity::Full);
    let cols: Vec<(&str, bool)> = t.columns.iter().map(|c| (c.name.as_str(), c.key)).collect();
    // With REPLICA IDENTITY FULL every column is part of the identity.
    assert_eq!(
        cols,
        vec![
            ("id", true),
            ("name", true),
            ("big", true),
            ("n", true),
            ("flag", true),
            ("m", true)
        ]
    );
    let k = rel("k");
    assert_eq!(k.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        k.columns.iter().map(|c| c.key).collect::<Vec<_>>(),
        vec![true, false]
    );
    let mood = msgs
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Type { oid, name, .. } if name == "mood" => Some(*oid),
            _ => None,
        })
        .unwrap();
    assert_eq!(t.columns[5].type_oid, mood);

    // Insert with a TOASTed value, then an update that leaves it unchanged: the new tuple
    // says "unchanged", the FULL old tuple carries the value.
    let big = big_value();
    let inserts: Vec<&Vec<TupleValue>> = msgs
        .iter()
        .filter_map(|m| match m {
            LogicalMessage::Insert {
                relation,
                new,
                xid: None,
            } if *relation == t.oid => Some(&new.0),
            _ => None,
        })
        .collect();
    let first = inserts[0];
    assert_eq!(
        first.iter().map(text).collect::<Vec<_>>(),
        vec![
            Some("1"),
            Some("a"),
            Some(big.as_str()),
            Some("1.5"),
            Some("t"),
            Some("ok")
        ]
    );
    let update = msgs
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Update {
                relation, old, new, ..
            } if *relation == t.oid => Some((old.clone(), new.clone())),
            _ => None,
        })
        .unwrap();
    let (Some(OldTuple::Full(old)), new) = update else {
        panic!("expected a full old tuple")
    };
    assert_eq!(new.0[2], TupleValue::UnchangedToast);
    assert_eq!(text(&new.0[1]), Some("b"));
    assert_eq!(text(&old.0[2]), Some(big.as_str()));
    let delete = msgs
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Delete { relation, old, .. } if *relation == t.oid => Some(old.clone()),
            _ => None,
        })
        .unwrap();
    let OldTuple::Full(deleted) = delete else {
        panic!("expected a full old tuple")
    };
    assert_eq!(text(&deleted.0[1]), Some("b"));
    assert_eq!(text(&deleted.0[2]), Some(big.as_str()));

    // Default identity: key-only old tuples.
    let k_update = msgs
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Update {
                relation,
                old: Some(OldTuple::Key(o)),
                new,
                ..
            } if *relation == k.oid => Some((o.clone(), new.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(text(&k_update.0.0[0]), Some("1"));
    assert_eq!(k_update.0.0[1], TupleValue::Null);
    assert_eq!(
        k_update.1.0.iter().map(text).collect::<Vec<_>>(),
        vec![Some("2"), Some("v")]
    );
    assert!(msgs.iter().any(|m| matches!(m,
        LogicalMessage::Delete { relation, old: OldTuple::Key(o), .. } if *relation == k.oid && text(&o.0[0]) == Some("2"))));

    // Truncate of both tables.
    let truncated = msgs
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Truncate {
                relations, options, ..
            } => Some((relations.clone(), *options)),
            _ => None,
        })
        .unwrap();
    let mut want = vec![t.oid, k.oid];
    want.sort();
    let mut got = truncated.0.clone();
    got.sort();
    assert_eq!((got, truncated.1), (want, 0));

    // Logical messages, transactional and not.
    assert!(msgs.iter().any(|m| matches!(m,
        LogicalMessage::Message { transactional: true, prefix, content, .. } if prefix == "collect.test" && &content[..] == b"hello")));
    assert!(msgs.iter().any(|m| matches!(m,
        LogicalMessage::Message { transactional: false, prefix, content, xid: None, .. } if prefix == "collect.hb" && &content[..] == b"beat")));

    // Streamed transactions: segments with xids, one committed, one aborted.
    let starts: Vec<(u32, bool)> = msgs
        .iter()
        .filter_map(|m| match m {
            LogicalMessage::StreamStart { xid, first_segment } => Some((*xid, *first_segment)),
            _ => None,
        })
        .collect();
    let xids: std::collections::BTreeSet<u32> = starts.iter().map(|s| s.0).collect();
    assert_eq!(xids.len(), 2, "two streamed transactions");
    assert!(
        starts.len() > 2,
        "large transactions come in several segments"
    );
    let committed = msgs
        .iter()
        .find_map(|m| match m {
            LogicalMessage::StreamCommit {
                xid,
                end_lsn,
                commit_lsn,
                ..
            } => {
                assert!(end_lsn > commit_lsn);
                Some(*xid)
            }
            _ => None,
        })
        .unwrap();
    let aborted = msgs
        .iter()
        .find_map(|m| match m {
            LogicalMessage::StreamAbort { xid, subxid } => {
                assert_eq!(xid, subxid);
                Some(*xid)
            }
            _ => None,
        })
        .unwrap();
    assert_ne!(committed, aborted);
    let streamed_rows = |x: u32| {
        msgs.iter()
            .filter(|m| matches!(m, LogicalMessage::Insert { xid: Some(i), .. } if *i == x))
            .count()
    };
    assert_eq!(streamed_rows(committed), STREAMED_ROWS);
    assert!(streamed_rows(aborted) > 0);
    for m in &msgs {
        if let LogicalMessage::Insert {
            xid: Some(_), new, ..
        } = m
        {
            assert_eq!(new.0.len(), 6);
        }
    }

    // The last row: NULLs.
    let last = inserts.last().unwrap();
    assert_eq!(text(&last[0]), Some("2"));
    assert_eq!(
        &last[1..],
        &[
            TupleValue::Null,
            TupleValue::Null,
            TupleValue::Null,
            TupleValue::Null,
            TupleValue::Null
        ]
    );

    // Non-streamed transactions are framed by Begin and Commit with matching LSNs.
    let mut open = None;
    for m in &msgs {
        match m {
            LogicalMessage::Begin { final_lsn, .. } => {
                assert!(open.is_none());
                open = Some(*final_lsn);
            }
            LogicalMessage::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                assert_eq!(open.take(), Some(*commit_lsn));
                assert!(end_lsn > commit_lsn);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn decodes_a_live_capture() {
    let raw = capture().await;
    if std::env::var("COLLECT_CAPTURE_FIXTURES").is_ok() {
        let text: Vec<String> = raw.iter().map(hex::encode).collect();
        std::fs::write(FIXTURE, text.join("\n") + "\n").unwrap();
    }
    check(&raw);
}

fn fixture() -> Vec<Bytes> {
    std::fs::read_to_string(FIXTURE)
        .unwrap()
        .lines()
        .map(|l| Bytes::from(hex::decode(l).unwrap()))
        .collect()
}

#[test]
fn decodes_the_postgres_15_fixture() {
    check(&fixture());
}

#[test]
fn truncated_and_corrupted_messages_are_errors_not_panics() {
    let raw = fixture();
    let mut seen_errors = 0;
    for msg in raw.iter().take(200) {
        for cut in 0..msg.len().min(64) {
            let short = msg.slice(..cut);
            if collect_pgoutput::decode(&short, false).is_err()
                && collect_pgoutput::decode(&short, true).is_err()
            {
                seen_errors += 1;
            }
        }
        // Flip every byte of the first 32 in turn: decoding may fail, never panic.
        for i in 0..msg.len().min(32) {
            let mut b = msg.to_vec();
            b[i] ^= 0xA5;
            let _ = collect_pgoutput::decode(&Bytes::from(b), false);
        }
    }
    assert!(seen_errors > 0);
}

//! The harness itself: real servers start, survive `kill -9` with their data, and each test
//! database is fresh and migrated.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use collect_testkit::{Broker, PgCluster, PgOptions, connect, fresh_db};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test]
async fn fresh_databases_are_separate_and_migrated() {
    let a = fresh_db().await.unwrap();
    let b = fresh_db().await.unwrap();
    assert_ne!(a.name, b.name);
    let ca = a.connect().await.unwrap();
    let cb = b.connect().await.unwrap();
    ca.execute(
        "INSERT INTO organizations (id, name) VALUES (gen_random_uuid(), 'a')",
        &[],
    )
    .await
    .unwrap();
    let count = |c: tokio_postgres::Client| async move {
        c.query_one("SELECT count(*) FROM organizations", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(count(ca).await, 1);
    assert_eq!(count(cb).await, 0);
}

#[tokio::test]
async fn postgres_is_logical_and_survives_kill9() {
    let mut pg = PgCluster::start(PgOptions::default()).await.unwrap();
    let c = connect(&pg.url("postgres")).await.unwrap();
    let level: String = c.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(level, "logical");
    c.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    drop(c);
    pg.kill9().unwrap();
    assert!(
        connect(&pg.url("postgres")).await.is_err(),
        "postgres still answers after kill -9"
    );
    pg.restart().await.unwrap();
    let c = connect(&pg.url("postgres")).await.unwrap();
    let v: i32 = c.query_one("SELECT v FROM t", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

#[tokio::test]
async fn broker_keeps_acknowledged_records_across_kill9() {
    let mut broker = Broker::start().await.unwrap();
    broker.create_topic("harness", 3).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..10 {
        let payload = format!("record-{i}");
        producer
            .send(
                FutureRecord::to("harness")
                    .key("k")
                    .payload(&payload)
                    .partition(1),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    drop(producer);
    broker.kill9().unwrap();
    broker.restart().await.unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "harness-check")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("harness", 1, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 10 {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("records not read back within 30 s")
            .unwrap();
        got.push(String::from_utf8(msg.payload().unwrap().to_vec()).unwrap());
    }
    let want: Vec<String> = (0..10).map(|i| format!("record-{i}")).collect();
    assert_eq!(got, want);
}

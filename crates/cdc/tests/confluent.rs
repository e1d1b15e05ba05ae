//! Decodability by an independent Confluent client: `tests/confluent_check.py` reads the
//! responses topic with confluent-kafka's Consumer and AvroDeserializer through `collect
//! registry`, and drives the registry with Confluent's SchemaRegistryClient.
//!
//! Needs a Python with confluent-kafka[avro,schemaregistry]: `tests/run` installs one and
//! runs this test (it is ignored by a bare `cargo test`). `COLLECT_PYTHON` names it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Stack, ids};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs confluent-kafka for Python; tests/run provides it"]
async fn a_confluent_client_decodes_every_event_through_the_registry() {
    let python = std::env::var("COLLECT_PYTHON")
        .expect("set COLLECT_PYTHON to a python with confluent-kafka (tests/run does)");
    let s = Stack::new().await;
    let mut expected = BTreeSet::new();
    let mut forms = Vec::new();
    for i in 0..3 {
        forms.push(
            s.form(&format!("F{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for i in 0..10 {
        expected.insert(
            s.submit(
                &forms[i % 3],
                json!({"name": format!("before {i}"), "age": i}),
            )
            .await,
        );
    }
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    for i in 0..20 {
        expected.insert(
            s.submit(
                &forms[i % 3],
                json!({"name": format!("after {i}"), "essay": "long ".repeat(i)}),
            )
            .await,
        );
    }
    s.responses(Duration::from_secs(90), |evs| ids(evs).len() == 30)
        .await;

    let expect_file = collect_testkit::process::scratch_dir("confluent")
        .unwrap()
        .join("expect.json");
    std::fs::write(&expect_file, serde_json::to_string(&expected).unwrap()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/confluent_check.py"
    );
    let out = tokio::process::Command::new(python)
        .args([
            script,
            "--brokers",
            &s.brokers,
            "--registry",
            &s.registry,
            "--topic",
            &s.topic("responses"),
        ])
        .arg("--expect-file")
        .arg(&expect_file)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["responses"], 30);
    assert_eq!(summary["forms"], 3);
    reader.stop().await;
}

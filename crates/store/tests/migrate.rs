//! The migration runner against real Postgres.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use collect_store::migrate::{self, MIGRATIONS};

#[tokio::test]
async fn applies_once_and_refuses_edited_migrations() {
    let pg = collect_testkit::shared_postgres().await.unwrap();
    let admin = collect_testkit::connect(&pg.url("postgres")).await.unwrap();
    let name = format!("m_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut c = collect_testkit::connect(&pg.url(&name)).await.unwrap();

    let err = migrate::check_current(&c).await.unwrap_err();
    assert!(err.to_string().contains("run `collect migrate`"), "{err}");

    let first = migrate::run(&mut c).await.unwrap();
    assert_eq!(first, MIGRATIONS.iter().map(|m| m.name).collect::<Vec<_>>());
    assert_eq!(migrate::run(&mut c).await.unwrap(), Vec::<&str>::new());
    migrate::check_current(&c).await.unwrap();

    // The schema is what the CDC reader relies on.
    let identity: Vec<(String, String)> = c
        .query(
            "SELECT relname::text, relreplident::text FROM pg_class
             WHERE relname IN ('forms', 'questions', 'responses', 'responses_p00', 'responses_p15')
             ORDER BY relname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(identity.iter().all(|(_, i)| i == "f"), "{identity:?}");
    assert_eq!(identity.len(), 5);

    // A migration whose text changed after it was applied is refused, and nothing is applied.
    c.execute(
        "UPDATE schema_migrations SET sha256 = '\\x00' WHERE version = 1",
        &[],
    )
    .await
    .unwrap();
    let err = migrate::run(&mut c).await.unwrap_err();
    assert!(
        err.to_string().contains("changed after it was applied"),
        "{err}"
    );
    let err = migrate::check_current(&c).await.unwrap_err();
    assert!(err.to_string().contains("differs"), "{err}");
}

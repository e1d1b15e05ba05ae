//! The `collect` binary's configuration paths: good input works, bad input fails clearly and
//! writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

fn collect(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_collect"));
    cmd.args(args)
        .env_remove("COLLECT_DATABASE_URL")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

async fn orgs(url: &str) -> i64 {
    let c = collect_testkit::connect(url).await.unwrap();
    c.query_one("SELECT count(*) FROM organizations", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn org_create_prints_a_working_key() {
    let db = collect_testkit::fresh_db().await.unwrap();
    let out = collect(
        &["org", "create", "--name", "Acme"],
        &[("COLLECT_DATABASE_URL", &db.url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v["api_key"].as_str().unwrap();
    assert!(key.starts_with("ck_") && key.len() == 43, "{key}");
    let c = db.connect().await.unwrap();
    let row = c
        .query_one(
            "SELECT o.id::text, k.prefix FROM organizations o JOIN api_keys k ON k.org_id = o.id WHERE o.name = 'Acme'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), v["org_id"].as_str().unwrap());
    assert_eq!(row.get::<_, String>(1), &key[..8]);
    // The key is stored only as a digest.
    let clear: i64 = c
        .query_one(
            "SELECT count(*) FROM api_keys WHERE position($1 in encode(key_sha256, 'escape')) > 0",
            &[&key],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(clear, 0);
}

#[tokio::test]
async fn bad_configuration_fails_clearly_and_writes_nothing() {
    let db = collect_testkit::fresh_db().await.unwrap();
    let before = orgs(&db.url).await;

    let out = collect(&["org", "create", "--name", "X"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--database-url"), "{}", stderr(&out));

    let out = collect(
        &[
            "org",
            "create",
            "--name",
            "X",
            "--database-url",
            "not a url at all",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid database URL"),
        "{}",
        stderr(&out)
    );

    let out = collect(
        &["org", "create", "--name", "   "],
        &[("COLLECT_DATABASE_URL", &db.url)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("organization name must be 1 to 200 characters"),
        "{}",
        stderr(&out)
    );

    let out = collect(
        &[
            "api",
            "--listen",
            "not-an-address",
            "--database-url",
            &db.url,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot listen on not-an-address"),
        "{}",
        stderr(&out)
    );

    let out = collect(
        &["api", "--db-connections", "many", "--database-url", &db.url],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid value 'many'"),
        "{}",
        stderr(&out)
    );

    let out = collect(
        &["api", "--log-format", "xml", "--database-url", &db.url],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));

    assert_eq!(orgs(&db.url).await, before);
}

#[tokio::test]
async fn api_refuses_an_unmigrated_database() {
    let pg = collect_testkit::shared_postgres().await.unwrap();
    let admin = collect_testkit::connect(&pg.url("postgres")).await.unwrap();
    let name = format!("e_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let out = collect(
        &[
            "api",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &pg.url(&name),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("run `collect migrate`"),
        "{}",
        stderr(&out)
    );
    // `collect migrate` then makes it current.
    let out = collect(&["migrate", "--database-url", &pg.url(&name)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let c = collect_testkit::connect(&pg.url(&name)).await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, collect_store::migrate::MIGRATIONS.len() as i64);
}

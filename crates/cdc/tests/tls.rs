//! TLS to Postgres on every connection, the replication connection included: a Postgres with
//! `ssl=on` and a certificate signed by a CA the test makes (openssl, `collect_testkit::tls`), and the reader, the
//! registry and the API pointed at it with `sslmode=require|verify-ca|verify-full`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use collect_cdc::client::{ConnectParams, ReplicationClient};
use collect_testkit::{PgCluster, PgOptions};
use common::{Stack, ids};
use serde_json::json;

/// The test certificates (testkit), the server's files owned by the postgres user.
fn certificates() -> (collect_testkit::tls::Certificates, PathBuf) {
    let certs = collect_testkit::tls::certificates().unwrap();
    let d = certs.dir().to_path_buf();
    if unsafe_is_root() {
        for f in ["server.key", "server.crt"] {
            let out = Command::new("chown")
                .args(["postgres", &d.join(f).display().to_string()])
                .output()
                .unwrap();
            assert!(out.status.success());
        }
    }
    (certs, d)
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_speaks_tls_as_sslmode_says() {
    let (_keep, dir) = certificates();
    let pg = PgCluster::start(PgOptions {
        settings: vec![
            ("ssl".into(), "on".into()),
            (
                "ssl_cert_file".into(),
                dir.join("server.crt").display().to_string(),
            ),
            (
                "ssl_key_file".into(),
                dir.join("server.key").display().to_string(),
            ),
        ],
        ..PgOptions::default()
    })
    .await
    .unwrap();
    let ca = dir.join("ca.pem").display().to_string();
    let other = dir.join("other.pem").display().to_string();
    let base = pg.url("postgres");
    let plain = collect_testkit::connect(&base).await.unwrap();
    let walsender_ssl = || async {
        plain
            .query_one(
                "SELECT bool_and(s.ssl) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
                &[],
            )
            .await
            .unwrap()
            .get::<_, Option<bool>>(0)
    };

    // The replication connection, in each mode that encrypts.
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = format!("{base}?sslmode={mode}&sslrootcert={ca}");
        let mut c = ReplicationClient::connect(&ConnectParams::from_url(&url, "tls-test").unwrap())
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        c.identify_system().await.unwrap();
        let tls: bool = plain
            .query_one(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = 'tls-test' AND a.backend_type = 'walsender'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(tls, "{mode}: the replication connection is not encrypted");
        drop(c);
        // A pool connection (the API, the registry, the connector's state).
        let pool =
            collect_store::connect_pool(&url, &collect_store::PoolSettings::default()).unwrap();
        let tls: bool = pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(tls, "{mode}: the pool connection is not encrypted");
    }
    // Verification refuses a certificate from another CA, and verify-full a wrong name.
    let wrong_ca = format!("{base}?sslmode=verify-ca&sslrootcert={other}");
    assert!(
        ReplicationClient::connect(&ConnectParams::from_url(&wrong_ca, "x").unwrap())
            .await
            .is_err()
    );
    let pool =
        collect_store::connect_pool(&wrong_ca, &collect_store::PoolSettings::default()).unwrap();
    assert!(pool.get().await.is_err());
    let by_name = base.replace("127.0.0.1", "localhost");
    let url = format!("{by_name}?sslmode=verify-full&sslrootcert={ca}");
    assert!(
        ReplicationClient::connect(&ConnectParams::from_url(&url, "x").unwrap())
            .await
            .is_err()
    );
    let url = format!("{by_name}?sslmode=verify-ca&sslrootcert={ca}");
    assert!(
        ReplicationClient::connect(&ConnectParams::from_url(&url, "x").unwrap())
            .await
            .is_ok()
    );
    // A server without TLS is refused when TLS is required.
    let shared = collect_testkit::shared_postgres().await.unwrap();
    let url = format!("{}?sslmode=require", shared.url("postgres"));
    let err = ReplicationClient::connect(&ConnectParams::from_url(&url, "x").unwrap())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not offer TLS"), "{err}");

    // The whole reader over verify-full: its events arrive, and every connection it (and the
    // registry and API beside it) holds to the database is encrypted.
    let db = collect_testkit::fresh_db_on(&pg).await.unwrap();
    let url = format!("{}?sslmode=verify-full&sslrootcert={ca}", db.url);
    let s = Stack::on(db, url).await;
    let form = s.form("tls").await["id"].as_str().unwrap().to_string();
    let reader = s.start_reader(s.config());
    reader.streaming().await;
    let r = s.submit(&form, json!({"name": "over TLS"})).await;
    s.responses(std::time::Duration::from_secs(90), |e| ids(e).contains(&r))
        .await;
    assert_eq!(walsender_ssl().await, Some(true));
    let row = plain
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1 AND a.client_addr IS NOT NULL \
             AND a.application_name <> 'tests'",
            &[&s.name],
        )
        .await
        .unwrap();
    let (clear, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(all >= 3, "{all} connections");
    // The test's own plain connection to the database is the only one in the clear.
    assert!(clear <= 1, "{clear} of {all} connections in the clear");
    reader.stop().await;
}

//! The replication client authenticates as libpq does: trust, cleartext password, MD5 and
//! SCRAM-SHA-256, and reports a wrong password as the server's error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use collect_cdc::client::{ConnectParams, ReplError, ReplicationClient};
use collect_testkit::{PgCluster, PgOptions};

async fn check(method: Option<&str>) {
    let options = PgOptions {
        password_auth: method.map(|m| (m.to_string(), "s3cret'pw".to_string())),
        ..PgOptions::default()
    };
    let pg = PgCluster::start(options).await.unwrap();
    let url = pg.url("postgres");
    let params = ConnectParams::from_url(&url, "auth-test").unwrap();
    let mut client = ReplicationClient::connect(&params).await.unwrap();
    let system = client.identify_system().await.unwrap();
    assert_eq!(system.dbname.as_deref(), Some("postgres"));
    assert!(system.xlogpos.0 > 0);
    // The server really used the method under test.
    let c = collect_testkit::connect(&url).await.unwrap();
    let stored: String = c
        .query_one(
            "SELECT coalesce(left(rolpassword, 5), '') FROM pg_authid WHERE rolname = 'postgres'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    match method {
        Some("md5") => assert_eq!(&stored[..3], "md5"),
        Some("scram-sha-256") => assert_eq!(stored, "SCRAM"),
        _ => {}
    }
    if method.is_some() {
        let wrong = url.replace("s3cret'pw", "nope");
        let err =
            ReplicationClient::connect(&ConnectParams::from_url(&wrong, "auth-test").unwrap())
                .await
                .err()
                .expect("a wrong password is refused");
        assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
        let none = url.replace(":s3cret'pw", "");
        let err = ReplicationClient::connect(&ConnectParams::from_url(&none, "auth-test").unwrap())
            .await
            .err()
            .expect("no password is refused");
        assert!(matches!(err, ReplError::Auth(_)), "{err}");
    }
}

#[tokio::test]
async fn trust() {
    check(None).await;
}

#[tokio::test]
async fn cleartext_password() {
    check(Some("password")).await;
}

#[tokio::test]
async fn md5() {
    check(Some("md5")).await;
}

#[tokio::test]
async fn scram_sha_256() {
    check(Some("scram-sha-256")).await;
}

#[test]
fn bad_connection_settings_are_refused_before_connecting() {
    assert!(
        ConnectParams::from_url("not a url", "x")
            .unwrap_err()
            .contains("invalid database URL")
    );
    assert!(
        ConnectParams::from_url("postgres://u@h/db?sslmode=sometimes", "x")
            .unwrap_err()
            .contains("sslmode")
    );
    assert!(
        ConnectParams::from_url(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem",
            "x"
        )
        .unwrap_err()
        .contains("/nonexistent.pem")
    );
    assert!(
        ConnectParams::from_url("host=/var/run/postgresql user=u", "x")
            .unwrap_err()
            .contains("unix socket")
    );
    let p = ConnectParams::from_url("postgres://u:secret@h:5433/db", "x").unwrap();
    assert!(
        !format!("{p:?}").contains("secret"),
        "the password must not be printed"
    );
}

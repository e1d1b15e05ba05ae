//! The connect API and the supervisor, over HTTP, against real Postgres and the broker, with
//! the in-memory reference kind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use collect_connect::api::{ApiState, router};
use collect_connect::conformance::Env;
use collect_connect::conformance::memory::{Memory, store};
use collect_connect::crypto::Sealer;
use collect_connect::store::IntegrationStore;
use collect_connect::supervisor::{self, Connect, Running};
use serde_json::{Value, json};

collect_connect::kinds!(TestKinds { Memory });

struct Api {
    base: String,
    http: reqwest::Client,
    env: Env,
    stop: tokio::sync::watch::Sender<bool>,
}

async fn start() -> Api {
    let env = Env::new().await.unwrap();
    let sealer =
        Arc::new(Sealer::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap());
    let running = Running::default();
    let state = ApiState {
        keys: collect_store::Store::new(env.pool.clone()),
        integrations: IntegrationStore::new(env.pool.clone()),
        kinds: Arc::new(TestKinds),
        sealer: sealer.clone(),
        running: running.clone(),
        metrics: env.shared.metrics.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let connect = Connect {
        store: IntegrationStore::new(env.pool.clone()),
        sealer,
        kinds: Arc::new(TestKinds),
        shared: env.shared.clone(),
        capacity: 10,
        poll: Duration::from_millis(200),
        running,
        database_url: env.db.url.clone(),
    };
    tokio::spawn(supervisor::run(connect, stopped));
    Api {
        base,
        http: reqwest::Client::new(),
        env,
        stop,
    }
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn rows(&self) -> i64 {
        let c = self.env.pool.get().await.unwrap();
        c.query_one("SELECT count(*) FROM integrations", &[])
            .await
            .unwrap()
            .get(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_by_api_run_pause_resume_and_hide_their_credentials() {
    let api = start().await;
    let key = api.env.api_key.clone();
    let form = api.env.form.to_string();
    let name = uuid::Uuid::new_v4().to_string();
    let (s, created) = api
        .send(
            reqwest::Method::POST,
            "/v1/integrations",
            Some(&key),
            Some(json!({"kind": "memory", "form_id": form, "name": "crm", "config": {"store": name}, "credentials": {"token": "s3cr3t-t0ken"}})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["status"], "active");
    assert_eq!(created["has_credentials"], true);
    assert!(
        !created.to_string().contains("s3cr3t"),
        "credentials must never be returned"
    );
    let c = api.env.pool.get().await.unwrap();
    let sealed: Vec<u8> = c
        .query_one(
            "SELECT credentials FROM integrations WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !sealed.windows(6).any(|w| w == b"s3cr3t"),
        "credentials are encrypted at rest"
    );

    // The supervisor runs it: events reach the memory store.
    let r = uuid::Uuid::new_v4().to_string();
    api.env
        .produce(&[api.env.response(&r, 1, "via api")])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !store(&name).lock().unwrap().index.contains_key(&r) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the integration never wrote"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store(&name).lock().unwrap().credentials,
        Some(json!({"token": "s3cr3t-t0ken"})),
        "the sink is built with the decrypted credentials"
    );
    let (_, shown) = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/integrations/{id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(shown["runtime"]["here"], true, "{shown}");
    assert_eq!(shown["runtime"]["state"], "running", "{shown}");
    let (_, list) = api
        .send(reqwest::Method::GET, "/v1/integrations", Some(&key), None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Paused by an operator: it stops; new events wait in Kafka; resumed: they arrive.
    let (s, paused) = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/integrations/{id}/pause"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!((s, paused["status"].as_str()), (200, Some("paused")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = uuid::Uuid::new_v4().to_string();
    api.env
        .produce(&[api.env.response(&later, 1, "while paused")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!store(&name).lock().unwrap().index.contains_key(&later));
    api.send(
        reqwest::Method::POST,
        &format!("/v1/integrations/{id}/resume"),
        Some(&key),
        None,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !store(&name).lock().unwrap().index.contains_key(&later) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "resume did not deliver"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A fatal error of the sink pauses it, with the reason, visible in the API.
    store(&name).lock().unwrap().fatal = Some("credentials revoked upstream".into());
    api.env
        .produce(&[api.env.response(&uuid::Uuid::new_v4().to_string(), 1, "x")])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, i) = api
            .send(
                reqwest::Method::GET,
                &format!("/v1/integrations/{id}"),
                Some(&key),
                None,
            )
            .await;
        if i["status"] == "paused" {
            assert_eq!(i["status_reason"], "credentials revoked upstream");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never paused: {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The state metric says so, for alerting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = api
            .http
            .get(format!("{}/metrics", api.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let paused = text.lines().any(|l| {
            l.starts_with("collect_connect_integration_state{")
                && l.contains(&format!("integration=\"{id}\""))
                && l.contains("state=\"paused\"")
                && l.ends_with(" 1")
        });
        if paused {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no paused state in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Applying again by name replaces, it does not duplicate.
    let (s, again) = api
        .send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": form, "name": "crm", "config": {"store": name}})))
        .await;
    assert_eq!((s, again["id"].as_str()), (200, Some(id.as_str())));
    // ... and a new configuration lifts a pause the runtime made (the fatal error above),
    assert_eq!(
        (again["status"].as_str(), again["status_reason"].as_str()),
        (Some("active"), None),
        "{again}"
    );
    // but not an operator's.
    store(&name).lock().unwrap().fatal = None;
    api.send(
        reqwest::Method::POST,
        &format!("/v1/integrations/{id}/pause"),
        Some(&key),
        None,
    )
    .await;
    let (_, again) = api
        .send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": form, "name": "crm", "config": {"store": name}})))
        .await;
    assert_eq!(again["status"], "paused", "{again}");
    assert_eq!(
        api.send(
            reqwest::Method::DELETE,
            &format!("/v1/integrations/{id}"),
            Some(&key),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        api.send(
            reqwest::Method::GET,
            &format!("/v1/integrations/{id}"),
            Some(&key),
            None
        )
        .await
        .0,
        404
    );
    let _ = api.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let api = start().await;
    let key = api.env.api_key.clone();
    let form = api.env.form.to_string();
    let other = collect_store::Store::new(api.env.pool.clone())
        .create_org("other")
        .await
        .unwrap()
        .api_key;
    let good = json!({"kind": "memory", "form_id": form, "config": {"store": "x"}});
    let before = api.rows().await;
    let raw = |body: &'static str, ct: &'static str| {
        api.http
            .post(format!("{}/v1/integrations", api.base))
            .bearer_auth(&key)
            .header("content-type", ct)
            .body(body)
    };
    for (name, (status, body), want_status, want_code) in [
        ("no key", api.send(reqwest::Method::POST, "/v1/integrations", None, Some(good.clone())).await, 401, "unauthorized"),
        ("malformed json", { let r = raw("{\"kind\":", "application/json").send().await.unwrap(); (r.status().as_u16(), r.json().await.unwrap()) }, 400, "malformed_json"),
        ("not json", { let r = raw("kind=memory", "text/plain").send().await.unwrap(); (r.status().as_u16(), r.json().await.unwrap()) }, 415, "unsupported_media_type"),
        ("missing kind", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"form_id": form}))).await, 422, "invalid_body"),
        ("unknown field", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": form, "colour": 1}))).await, 422, "invalid_body"),
        ("unknown kind", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "fax", "form_id": form}))).await, 422, "validation_failed"),
        ("bad form id", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": "nope", "config": {"store": "x"}}))).await, 422, "validation_failed"),
        ("config not an object", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": form, "config": [1]}))).await, 422, "validation_failed"),
        ("config with an unknown field", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": form, "config": {"store": "x", "size": 3}}))).await, 422, "validation_failed"),
        ("config missing a field", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": form, "config": {}}))).await, 422, "validation_failed"),
        ("credentials refused by the kind", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": form, "config": {"store": "x"}, "credentials": "hunter2"}))).await, 422, "credentials_refused"),
        ("blank name", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": form, "name": " ", "config": {"store": "x"}}))).await, 422, "validation_failed"),
        ("another organization's form", api.send(reqwest::Method::POST, "/v1/integrations", Some(&other), Some(good.clone())).await, 404, "not_found"),
        ("unknown form", api.send(reqwest::Method::POST, "/v1/integrations", Some(&key), Some(json!({"kind": "memory", "form_id": uuid::Uuid::now_v7().to_string(), "config": {"store": "x"}}))).await, 404, "not_found"),
        ("unknown integration", api.send(reqwest::Method::POST, &format!("/v1/integrations/{}/pause", uuid::Uuid::now_v7()), Some(&key), None).await, 404, "not_found"),
        ("malformed integration id", api.send(reqwest::Method::GET, "/v1/integrations/12", Some(&key), None).await, 404, "not_found"),
    ] {
        assert_eq!(status, want_status, "{name}: {body}");
        assert_eq!(body["error"]["code"], want_code, "{name}: {body}");
        assert_eq!(api.rows().await, before, "{name} wrote something");
    }
    // The field errors name the field.
    let (_, body) = api
        .send(
            reqwest::Method::POST,
            "/v1/integrations",
            Some(&key),
            Some(json!({"kind": "memory", "form_id": form, "config": {"store": "x", "size": 3}})),
        )
        .await;
    assert_eq!(body["error"]["details"][0]["field"], "config");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `size`"),
        "{body}"
    );
    // Another organization cannot see or pause ours.
    let (s, created) = api
        .send(
            reqwest::Method::POST,
            "/v1/integrations",
            Some(&key),
            Some(good),
        )
        .await;
    assert_eq!(s, 201);
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        api.send(
            reqwest::Method::GET,
            &format!("/v1/integrations/{id}"),
            Some(&other),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        api.send(
            reqwest::Method::POST,
            &format!("/v1/integrations/{id}/pause"),
            Some(&other),
            None
        )
        .await
        .0,
        404
    );
    let (_, shown) = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/integrations/{id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(shown["status"], "active");

    // A named integration cannot move to another form (its offsets and state are the form's).
    let other_form = uuid::Uuid::now_v7();
    let c = api.env.pool.get().await.unwrap();
    c.execute(
        "INSERT INTO forms (id, org_id, title) VALUES ($1, $2, 'second')",
        &[&other_form, &api.env.org],
    )
    .await
    .unwrap();
    let named = json!({"kind": "memory", "form_id": form, "name": "crm", "config": {"store": "x"}});
    assert_eq!(
        api.send(
            reqwest::Method::POST,
            "/v1/integrations",
            Some(&key),
            Some(named)
        )
        .await
        .0,
        201
    );
    let before = api.rows().await;
    let moved = json!({"kind": "memory", "form_id": other_form.to_string(), "name": "crm", "config": {"store": "y"}});
    let (s, body) = api
        .send(
            reqwest::Method::POST,
            "/v1/integrations",
            Some(&key),
            Some(moved),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (409, Some("integration_exists")),
        "{body}"
    );
    assert_eq!(api.rows().await, before);
    let kept: String = c
        .query_one("SELECT form_id::text || ' ' || (config->>'store') FROM integrations WHERE name = 'crm'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        kept,
        format!("{form} x"),
        "the stored integration is unchanged"
    );
    let _ = api.stop.send(true);
}

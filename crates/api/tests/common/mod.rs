//! Test environment of the API suite: a fresh organization on a real API over real Postgres.
//!
//! By default each test gets a fresh database on the harness' Postgres cluster and its own API
//! server on a free port. With `COLLECT_STACK=<path to .collect/stack.json>` the same tests
//! run against an already running stack (`deploy/dev up`), each in a new organization.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use collect_store::{PoolSettings, Store, connect_pool};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

pub struct Env {
    pub base: String,
    pub http: reqwest::Client,
    pub key: String,
    pub org: Uuid,
    pub db: tokio_postgres::Client,
    pub database_url: String,
    pub store: Store,
    pub external: bool,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts an error reply's status and code and returns its body.
    #[track_caller]
    pub fn error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.body["error"]["code"], code, "body: {}", self.body);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        &self.body
    }

    /// Asserts a success status and returns the body.
    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        &self.body
    }

    /// The `(field, code)` pairs of a validation error.
    pub fn field_codes(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self.body["error"]["details"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| {
                        (
                            d["field"].as_str().unwrap().to_string(),
                            d["code"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

async fn pool_store(url: &str) -> Store {
    Store::new(connect_pool(url, &PoolSettings::default()).unwrap())
}

impl Env {
    pub async fn new() -> Env {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let (base, database_url, external) = match std::env::var("COLLECT_STACK") {
            Ok(path) => {
                let stack: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                (
                    stack["api_url"]
                        .as_str()
                        .unwrap()
                        .trim_end_matches('/')
                        .to_string(),
                    stack["database_url"].as_str().unwrap().to_string(),
                    true,
                )
            }
            Err(_) => {
                let db = collect_testkit::fresh_db().await.unwrap();
                let base = start_api(&db.url).await;
                (base, db.url, false)
            }
        };
        let store = pool_store(&database_url).await;
        let org = store.create_org("test org").await.unwrap();
        let db = collect_testkit::connect(&database_url).await.unwrap();
        Env {
            base,
            http,
            key: org.api_key,
            org: org.org_id,
            db,
            database_url,
            store,
            external,
        }
    }

    /// A second organization on the same API, for isolation tests.
    pub async fn other_org(&self) -> String {
        self.store.create_org("other org").await.unwrap().api_key
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.reply(req).await
    }

    pub async fn reply(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    /// Rows of this organization: forms, questions, responses, answers, plus the sum of form
    /// versions and response revisions (which move on every write that changes something).
    pub async fn counts(&self) -> [i64; 6] {
        let row = self
            .db
            .query_one(
                "SELECT
                   (SELECT count(*) FROM forms WHERE org_id = $1),
                   (SELECT count(*) FROM questions q JOIN forms f ON f.id = q.form_id WHERE f.org_id = $1),
                   (SELECT count(*) FROM responses WHERE org_id = $1),
                   (SELECT count(*) FROM answers a JOIN forms f ON f.id = a.form_id WHERE f.org_id = $1),
                   (SELECT coalesce(sum(version), 0)::bigint FROM forms WHERE org_id = $1),
                   (SELECT coalesce(sum(revision), 0)::bigint FROM responses WHERE org_id = $1)",
                &[&self.org],
            )
            .await
            .unwrap();
        [
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        ]
    }

    /// A form with one question of each type (all optional except `name`).
    pub async fn sample_form(&self) -> Value {
        self.post(
            "/v1/forms",
            json!({
                "title": "Sample",
                "description": "one question of each type",
                "questions": [
                    {"label": "Name", "type": "text", "alias": "name", "required": true},
                    {"label": "Bio", "type": "long_text", "alias": "bio"},
                    {"label": "Age", "type": "number", "alias": "age"},
                    {"label": "E-mail", "type": "email", "alias": "email"},
                    {"label": "Phone", "type": "phone", "alias": "phone"},
                    {"label": "Plan", "type": "single_choice", "alias": "plan",
                     "options": [{"code": "free", "label": "Free"}, {"code": "pro", "label": "Pro"}]},
                    {"label": "Topics", "type": "multi_choice", "alias": "topics",
                     "options": [{"code": "a", "label": "A"}, {"code": "b", "label": "B"}]},
                    {"label": "Birthday", "type": "date", "alias": "birthday"},
                    {"label": "Agree", "type": "boolean", "alias": "agree"}
                ]
            }),
        )
        .await
        .ok(201)
        .clone()
    }
}

/// Starts the API over `database_url` on a free port; returns its base URL. The server lives
/// on the test's runtime.
pub async fn start_api(database_url: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = collect_api::AppState::new(pool_store(database_url).await);
    tokio::spawn(collect_api::serve(listener, state, std::future::pending()));
    base
}

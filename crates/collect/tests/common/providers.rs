//! The third parties of the process tests (the Sheets and SMS emulators, in this process,
//! over real HTTP) and the `collect` processes that talk to them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Env, Proc};

/// An emulator admin call (`/emulator/{path}`) that must succeed; its JSON answer.
async fn admin(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let r = http
        .request(method, format!("{base}/emulator/{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

pub const SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// What most Sheets process tests start from: a fresh environment whose form `title` has one
/// required text question (alias `name`), the shared broker's address, a Sheets emulator of
/// the test's own and a spreadsheet shared with a service account.
pub async fn named_form_with_sheet(title: &str) -> (Env, String, Google, GoogleSheet) {
    let e = super::env(json!({"title": title, "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let brokers = collect_testkit::shared_broker().await.unwrap().bootstrap();
    let google = Google::start().await;
    let gs = google.sheet().await;
    (e, brokers, google, gs)
}

/// A Sheets emulator of the test's own.
pub struct Google {
    pub base: String,
    http: reqwest::Client,
}

/// A service account, a spreadsheet shared with it, and a token to read it back.
pub struct GoogleSheet {
    pub key: Value,
    pub spreadsheet: String,
    pub token: String,
}

impl Google {
    /// Google's quotas doubled (to keep tests short; the connector is told the same), a
    /// service account, a spreadsheet shared with it, a token to read it with.
    pub async fn sheet(&self) -> GoogleSheet {
        self.admin(
            reqwest::Method::PUT,
            "quotas",
            json!({"read_per_minute_user": 600, "read_per_minute_project": 600,
                   "write_per_minute_user": 120, "write_per_minute_project": 600}),
        )
        .await;
        let key = self.account("collect-pipeline").await;
        let email = key["client_email"].as_str().unwrap().to_string();
        let sheet = self
            .admin(
                reqwest::Method::POST,
                "spreadsheets",
                json!({"title": "Sign-ups", "shared_with": [email]}),
            )
            .await;
        let token = self.token(&email).await;
        GoogleSheet {
            key,
            spreadsheet: sheet["spreadsheetId"].as_str().unwrap().to_string(),
            token,
        }
    }

    /// A service account of project forms-prod: its JSON key.
    pub async fn account(&self, name: &str) -> Value {
        self.admin(
            reqwest::Method::POST,
            "service-accounts",
            json!({"name": name, "project": "forms-prod"}),
        )
        .await
    }

    /// An access token of the account `email` (project forms-prod).
    pub async fn token(&self, email: &str) -> String {
        self.admin(
            reqwest::Method::POST,
            "access-tokens",
            json!({"email": email, "project": "forms-prod"}),
        )
        .await["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The Sheets integration's body for the connect API.
    pub fn integration(&self, e: &Env, s: &GoogleSheet) -> Value {
        json!({
            "kind": "sheets", "form_id": e.form_id(), "name": "sign-up sheet",
            "config": {"spreadsheet_id": s.spreadsheet, "api_base_url": self.base,
                       "quotas": {"read_requests_per_minute_per_user": 600,
                                  "read_requests_per_minute_per_project": 600,
                                  "write_requests_per_minute_per_user": 120,
                                  "write_requests_per_minute_per_project": 600}},
            "credentials": {"type": "service_account", "key": s.key}
        })
    }

    pub async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(collect_emulators::sheets::serve(
            l,
            collect_emulators::sheets::Emulator::new(&base),
            std::future::pending(),
        ));
        Self {
            base,
            http: reqwest::Client::new(),
        }
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        admin(&self.http, &self.base, method, path, body).await
    }

    /// Waits until the emulator's statistic `name` reaches `at_least` (60 s at most).
    pub async fn wait_stat(&self, name: &str, at_least: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let stats = self.admin(reqwest::Method::GET, "stats", Value::Null).await;
            if stats[name].as_u64().unwrap_or(0) >= at_least {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never reached {at_least}: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn faults(&self, f: Value) {
        self.admin(reqwest::Method::PUT, "faults", f).await;
    }

    /// The sheet's cells, read with a plain `values.get` and a token the emulator issued.
    pub async fn values(&self, token: &str, spreadsheet: &str) -> Vec<Vec<Value>> {
        let r: Value = self
            .http
            .get(format!(
                "{}/v4/spreadsheets/{spreadsheet}/values/Responses!A1:Z",
                self.base
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(r["values"].clone()).unwrap_or_default()
    }
}

pub fn connector(e: &Env, brokers: &str) -> Proc {
    connector_with(e, brokers, &[])
}

/// A connector with extra environment variables (`COLLECT_CONNECT_CAPACITY`, ...).
pub fn connector_with(e: &Env, brokers: &str, extra: &[(&str, &str)]) -> Proc {
    let mut vars = e.process_env(brokers);
    vars.push(("COLLECT_SECRET_KEY".into(), SECRET.into()));
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Proc::start(
        &["connect", "--poll-ms", "300", "--batch-max-wait-ms", "200"],
        &vars,
        "COLLECT_CONNECT_LISTEN",
    )
}

/// Submits `n` responses named `{prefix}{i}`, one every `gap`.
pub fn load(
    e: &Env,
    prefix: &str,
    n: usize,
    gap: Duration,
) -> tokio::task::JoinHandle<Vec<String>> {
    let prefix = prefix.to_string();
    load_with(e, n, gap, move |i| json!({"name": format!("{prefix}{i}")}))
}

/// Submits `n` responses with the answers `answers(i)`, one every `gap`.
pub fn load_with(
    e: &Env,
    n: usize,
    gap: Duration,
    answers: impl Fn(usize) -> Value + Send + 'static,
) -> tokio::task::JoinHandle<Vec<String>> {
    let form = e.form_id().to_string();
    load_to(e, n, gap, move |i| (form.clone(), answers(i)))
}

/// Submits `n` responses, the `i`th to form and answers `to(i)`, one every `gap`; their ids
/// in order.
pub fn load_to(
    e: &Env,
    n: usize,
    gap: Duration,
    to: impl Fn(usize) -> (String, Value) + Send + 'static,
) -> tokio::task::JoinHandle<Vec<String>> {
    let (api, key) = (e.api.clone(), e.key.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let (form, answers) = to(i);
            let r: Value = http
                .post(format!("{api}/v1/forms/{form}/responses"))
                .bearer_auth(&key)
                .json(&json!({"answers": answers}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ids.push(r["id"].as_str().unwrap().to_string());
            tokio::time::sleep(gap).await;
        }
        ids
    })
}

/// An SMS provider (the emulator) with one account.
pub struct Texts {
    pub base: String,
    pub http: reqwest::Client,
    pub account: Value,
}

impl Texts {
    pub async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(collect_emulators::sms::serve(
            l,
            collect_emulators::sms::Emulator::new(&base),
            std::future::pending(),
        ));
        let http = reqwest::Client::new();
        let account = admin(&http, &base, reqwest::Method::POST, "accounts", Value::Null).await;
        Self {
            base,
            http,
            account,
        }
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        admin(&self.http, &self.base, method, path, body).await
    }

    pub async fn put(&self, path: &str, body: Value) {
        self.admin(reqwest::Method::PUT, path, body).await;
    }

    /// Messages per response (the template ends with the response id).
    pub async fn per_response(&self) -> BTreeMap<String, usize> {
        let all = self
            .admin(reqwest::Method::GET, "messages", Value::Null)
            .await;
        let mut out = BTreeMap::new();
        for m in all.as_array().unwrap() {
            let id = m["body"].as_str().unwrap().rsplit("Ref ").next().unwrap();
            *out.entry(id.to_string()).or_insert(0) += 1;
        }
        out
    }
}

/// `collect dead-letters redrive --integration <id> --all` (must succeed): its JSON report.
pub fn redrive(e: &Env, brokers: &str, integration: &str) -> Value {
    let out = collect(
        e,
        brokers,
        &[
            "dead-letters",
            "redrive",
            "--integration",
            integration,
            "--all",
            "--secret-key",
            SECRET,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()
}

/// Runs `collect <args>` to completion with the environment's variables.
pub fn collect(e: &Env, brokers: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_collect"))
        .args(args)
        .envs(e.process_env(brokers))
        .output()
        .unwrap()
}

//! The whole pipeline with real processes: responses submitted through the forms API reach a
//! Google Sheet (the emulator, over HTTP) through `collect cdc` and `collect connect`, one row
//! per response, while the connector is killed with SIGKILL and the emulator answers storms
//! of 5xx and 429, applies writes and then fails them, and the form's questions change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Env, Proc, env, metric, reader};
use serde_json::{Value, json};

const SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Google {
    base: String,
    http: reqwest::Client,
    emulator: collect_emulators::sheets::Emulator,
}

/// A service account, a spreadsheet shared with it, and a token to read it back.
struct GoogleSheet {
    key: Value,
    spreadsheet: String,
    token: String,
}

impl Google {
    /// Google's quotas doubled (to keep tests short; the connector is told the same), a
    /// service account, a spreadsheet shared with it, a token to read it with.
    async fn sheet(&self) -> GoogleSheet {
        self.admin(
            reqwest::Method::PUT,
            "quotas",
            json!({"read_per_minute_user": 600, "read_per_minute_project": 600,
                   "write_per_minute_user": 120, "write_per_minute_project": 600}),
        )
        .await;
        let key = self
            .admin(
                reqwest::Method::POST,
                "service-accounts",
                json!({"name": "collect-pipeline", "project": "forms-prod"}),
            )
            .await;
        let email = key["client_email"].as_str().unwrap().to_string();
        let sheet = self
            .admin(
                reqwest::Method::POST,
                "spreadsheets",
                json!({"title": "Sign-ups", "shared_with": [email]}),
            )
            .await;
        let token = self
            .admin(
                reqwest::Method::POST,
                "access-tokens",
                json!({"email": email, "project": "forms-prod"}),
            )
            .await["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        GoogleSheet {
            key,
            spreadsheet: sheet["spreadsheetId"].as_str().unwrap().to_string(),
            token,
        }
    }

    /// The Sheets integration's body for the connect API.
    fn integration(&self, e: &Env, s: &GoogleSheet) -> Value {
        json!({
            "kind": "sheets", "form_id": e.form_id(), "name": "sign-up sheet",
            "config": {"spreadsheet_id": s.spreadsheet, "api_base_url": self.base,
                       "quotas": {"write_requests_per_minute_per_user": 120,
                                  "write_requests_per_minute_per_project": 600}},
            "credentials": {"type": "service_account", "key": s.key}
        })
    }

    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let emulator = collect_emulators::sheets::Emulator::new(&base);
        tokio::spawn(collect_emulators::sheets::serve(
            l,
            emulator.clone(),
            std::future::pending(),
        ));
        Self {
            base,
            http: reqwest::Client::new(),
            emulator,
        }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}/emulator/{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Waits until the emulator's statistic `name` reaches `at_least` (60 s at most).
    async fn wait_stat(&self, name: &str, at_least: u64) {
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

    async fn faults(&self, f: Value) {
        self.admin(reqwest::Method::PUT, "faults", f).await;
    }

    /// The sheet's cells, read with a plain `values.get` and a token the emulator issued.
    async fn values(&self, token: &str, spreadsheet: &str) -> Vec<Vec<Value>> {
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

fn connector(e: &Env, brokers: &str) -> Proc {
    let mut vars = e.process_env(brokers);
    vars.push(("COLLECT_SECRET_KEY".into(), SECRET.into()));
    Proc::start(
        &["connect", "--poll-ms", "300", "--batch-max-wait-ms", "200"],
        &vars,
        "COLLECT_CONNECT_LISTEN",
    )
}

/// Submits `n` responses named `{prefix}{i}`, one every `gap`.
fn load(e: &Env, prefix: &str, n: usize, gap: Duration) -> tokio::task::JoinHandle<Vec<String>> {
    let prefix = prefix.to_string();
    load_with(e, n, gap, move |i| json!({"name": format!("{prefix}{i}")}))
}

/// Submits `n` responses with the answers `answers(i)`, one every `gap`.
fn load_with(
    e: &Env,
    n: usize,
    gap: Duration,
    answers: impl Fn(usize) -> Value + Send + 'static,
) -> tokio::task::JoinHandle<Vec<String>> {
    let (api, key, form) = (e.api.clone(), e.key.clone(), e.form_id().to_string());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let r: Value = http
                .post(format!("{api}/v1/forms/{form}/responses"))
                .bearer_auth(&key)
                .json(&json!({"answers": answers(i)}))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_is_one_row_through_kill_9_storms_and_question_changes() {
    let e = env(json!({"title": "Sign-up", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let name_q = e.form["questions"][0]["id"].as_str().unwrap().to_string();
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let google = Google::start().await;
    let gs = google.sheet().await;
    let (spreadsheet, token) = (gs.spreadsheet.clone(), gs.token.clone());

    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let mut connect = connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;
    let created: Value = e
        .http
        .post(format!("{}/v1/integrations", connect.url()))
        .bearer_auth(&e.key)
        .json(&google.integration(&e, &gs))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let integration = created["id"]
        .as_str()
        .expect("integration created")
        .to_string();

    // Phase 1: load, with the connector killed (SIGKILL) twice while it writes.
    let first = load(&e, "a", 150, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    connect.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    connect = connector(&e, &brokers);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    connect.kill9();
    connect = connector(&e, &brokers);
    let mut ids: Vec<String> = first.await.unwrap();

    // Phase 2: 5xx storms, including writes applied and then answered 500. The storm lasts
    // until the connector has run into it several times.
    google
        .faults(json!({"error_rate": 0.4, "error_status": 503, "fail_after_write_rate": 0.4}))
        .await;
    let storm = load(&e, "b", 100, Duration::from_millis(10));
    google.wait_stat("injected_errors", 3).await;
    ids.extend(storm.await.unwrap());
    // Phase 3: a 429 storm, over once the connector has been refused a few times.
    google.faults(json!({"throttle_seconds": 120})).await;
    let storm = load(&e, "c", 50, Duration::from_millis(10));
    google.wait_stat("throttled", 3).await;
    ids.extend(storm.await.unwrap());
    google.faults(json!({})).await;

    // Phase 4: the form changes: a relabel and a new question; edits and a deletion.
    let (s, _) = e
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/forms/{}/questions/{name_q}", e.form_id()),
            Some(json!({"label": "Full name"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = e
        .call(
            reqwest::Method::POST,
            &format!("/v1/forms/{}/questions", e.form_id()),
            Some(json!({"label": "City", "type": "text", "alias": "city"})),
        )
        .await;
    assert_eq!(s, 201);
    let mut edited = BTreeMap::new();
    for (i, id) in ids.iter().step_by(25).enumerate() {
        let (s, body) = e
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/forms/{}/responses/{id}", e.form_id()),
                Some(json!({"answers": {"name": format!("edited{i}"), "city": "Oslo"}})),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        edited.insert(id.clone(), format!("edited{i}"));
        if i == 3 {
            connect.kill9();
            connect = connector(&e, &brokers);
        }
    }
    let deleted = ids[7].clone();
    let (s, _) = e
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/forms/{}/responses/{deleted}", e.form_id()),
            None,
        )
        .await;
    assert_eq!(s, 204);
    for i in 0..20 {
        ids.push(
            e.submit(json!({"name": format!("d{i}"), "city": "Bergen"}))
                .await,
        );
    }

    // Every response has exactly one row, with its latest state, under the latest header.
    let want: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(want.len(), 320);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let rows = loop {
        let v = google.values(&token, &spreadsheet).await;
        let header_ok = v.first().is_some_and(|h| {
            h.get(5).and_then(Value::as_str) == Some("Full name")
                && h.get(6).and_then(Value::as_str) == Some("City")
        });
        let by_id: BTreeMap<&str, &Vec<Value>> = v
            .iter()
            .skip(1)
            .filter_map(|r| Some((r.first()?.as_str()?, r)))
            .collect();
        let settled = header_ok
            && want.iter().all(|id| by_id.contains_key(id.as_str()))
            && edited.iter().all(|(id, name)| {
                by_id[id.as_str()].get(5).and_then(Value::as_str) == Some(name.as_str())
            })
            && by_id[deleted.as_str()].get(4).and_then(Value::as_str) == Some("deleted");
        if settled {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sheet never settled: header {:?}, {} of {} responses present",
            v.first(),
            want.iter()
                .filter(|id| by_id.contains_key(id.as_str()))
                .count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let data: Vec<&Vec<Value>> = rows.iter().skip(1).filter(|r| !r.is_empty()).collect();
    assert_eq!(
        data.len(),
        want.len(),
        "one row per response, no duplicates"
    );
    let distinct: BTreeSet<&str> = data.iter().filter_map(|r| r[0].as_str()).collect();
    assert_eq!(distinct.len(), want.len());
    for r in &data {
        let id = r[0].as_str().unwrap();
        if let Some(name) = edited.get(id) {
            assert_eq!(r[3], "2", "an edit is revision 2: {r:?}");
            assert_eq!(
                (r[5].as_str(), r[6].as_str()),
                (Some(name.as_str()), Some("Oslo"))
            );
        }
    }
    let last = data.iter().find(|r| r[5] == "d19").unwrap();
    assert_eq!(last[6], "Bergen");

    // The emulator saw the storms and the connector counted them.
    let text = connect.metrics().await;
    assert!(
        metric(&text, "collect_connect_written_total") > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, "collect_connect_requests_total") > 0.0,
        "{text}"
    );
    let shown: Value = e
        .http
        .get(format!("{}/v1/integrations/{integration}", connect.url()))
        .bearer_auth(&e.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "active", "{shown}");
    drop(google.emulator);
    connect.kill9();
    cdc.kill9();
}

/// An SMS provider (the emulator) with one account.
struct Texts {
    base: String,
    http: reqwest::Client,
    account: Value,
}

impl Texts {
    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(collect_emulators::sms::serve(
            l,
            collect_emulators::sms::Emulator::new(&base),
            std::future::pending(),
        ));
        let http = reqwest::Client::new();
        let account: Value = http
            .post(format!("{base}/emulator/accounts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Self {
            base,
            http,
            account,
        }
    }

    async fn put(&self, path: &str, body: Value) {
        let r = self
            .http
            .put(format!("{}/emulator/{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Messages per response (the template ends with the response id).
    async fn per_response(&self) -> BTreeMap<String, usize> {
        let all: Value = self
            .http
            .get(format!("{}/emulator/messages", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for m in all.as_array().unwrap() {
            let id = m["body"].as_str().unwrap().rsplit("Ref ").next().unwrap();
            *out.entry(id.to_string()).or_insert(0) += 1;
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_and_one_sms_per_response_through_kill_9_and_provider_faults() {
    let e = env(json!({"title": "Appointments", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true},
        {"label": "Mobile", "type": "phone", "alias": "phone", "required": true}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let google = Google::start().await;
    let gs = google.sheet().await;
    let texts = Texts::start().await;
    texts
        .put(
            "limits",
            json!({"per_sender_per_second": 200, "account_per_second": 200}),
        )
        .await;

    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let mut connect = connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;
    for body in [
        google.integration(&e, &gs),
        json!({
            "kind": "sms", "form_id": e.form_id(), "name": "confirmations",
            "config": {"api_base_url": texts.base, "from": "+15005550006",
                       "to": {"question": "phone"},
                       "template": "Hi {{name}}, your booking is confirmed. Ref {{response_id}}",
                       "rates": {"per_sender_per_second": 100, "account_per_second": 100},
                       "reconcile_after_secs": 1},
            "credentials": {"account_sid": texts.account["account_sid"],
                            "auth_token": texts.account["auth_token"]}
        }),
    ] {
        let r = e
            .http
            .post(format!("{}/v1/integrations", connect.url()))
            .bearer_auth(&e.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    }

    // Responses while both providers misbehave and the connector is killed twice: the SMS
    // provider drops connections after accepting and answers 500 before accepting; Google
    // answers 503 and applies writes it then fails.
    texts
        .put(
            "faults",
            json!({"drop_after_accept_rate": 0.3, "error_rate": 0.2, "error_status": 500}),
        )
        .await;
    google
        .faults(json!({"error_rate": 0.3, "error_status": 503, "fail_after_write_rate": 0.2}))
        .await;
    let writes = load_with(
        &e,
        120,
        Duration::from_millis(15),
        |i| json!({"name": format!("p{i}"), "phone": format!("+47 91{:06}", i)}),
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    connect.kill9();
    connect = connector(&e, &brokers);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    connect.kill9();
    connect = connector(&e, &brokers);
    let ids: BTreeSet<String> = writes.await.unwrap().into_iter().collect();
    assert_eq!(ids.len(), 120);
    tokio::time::sleep(Duration::from_secs(2)).await;
    texts.put("faults", json!({})).await;
    google.faults(json!({})).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let rows = google.values(&gs.token, &gs.spreadsheet).await;
        let in_sheet: BTreeSet<String> = rows
            .iter()
            .skip(1)
            .filter_map(|r| r.first()?.as_str().map(str::to_string))
            .collect();
        let texted = texts.per_response().await;
        if ids.is_subset(&in_sheet) && ids.iter().all(|id| texted.contains_key(id)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} rows, {} of {} texted",
            ids.iter().filter(|id| in_sheet.contains(*id)).count(),
            ids.len(),
            ids.iter().filter(|id| texted.contains_key(*id)).count(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Give a duplicate every chance to appear, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = google.values(&gs.token, &gs.spreadsheet).await;
    assert_eq!(rows.len() - 1, ids.len(), "one row per response");
    let texted = texts.per_response().await;
    let not_once: Vec<_> = texted.iter().filter(|(_, n)| **n != 1).collect();
    assert!(not_once.is_empty(), "texted more than once: {not_once:?}");
    assert_eq!(texted.len(), ids.len());
    let stats: Value = texts
        .http
        .get(format!("{}/emulator/stats", texts.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        stats["dropped_after_accept"].as_u64().unwrap() > 0
            && stats["injected_errors"].as_u64().unwrap() > 0,
        "the faults were met: {stats}"
    );
    connect.kill9();
    cdc.kill9();
}

/// Runs `collect <args>` to completion with the environment's variables.
fn collect(e: &Env, brokers: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_collect"))
        .args(args)
        .envs(e.process_env(brokers))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sheet_gets_every_past_response_once_by_replay_while_new_ones_arrive() {
    let e = env(json!({"title": "Survey", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let google = Google::start().await;
    let first = google.sheet().await;
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let connect = connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;

    // Thousands of past responses, delivered to a first sheet.
    let past: BTreeSet<String> = load(&e, "past", 2000, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let create = |body: Value| {
        let (http, url, key) = (e.http.clone(), connect.url(), e.key.clone());
        async move {
            let r = http
                .post(format!("{url}/v1/integrations"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let id = create(google.integration(&e, &first)).await;
    let in_sheet = |s: &GoogleSheet| {
        let (google, token, spreadsheet) = (&google, s.token.clone(), s.spreadsheet.clone());
        async move {
            let rows = google.values(&token, &spreadsheet).await;
            let mut ids: BTreeMap<String, usize> = BTreeMap::new();
            for r in rows.iter().skip(1) {
                if let Some(id) = r.first().and_then(Value::as_str) {
                    *ids.entry(id.to_string()).or_insert(0) += 1;
                }
            }
            ids
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let seen = in_sheet(&first).await;
        if past.iter().all(|id| seen.contains_key(id)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first sheet never filled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Ops point the integration at a new sheet and replay, while responses keep coming.
    let second = google.sheet().await;
    assert_eq!(create(google.integration(&e, &second)).await, id);
    let live = load(&e, "live", 200, Duration::from_millis(20));
    let out = tokio::task::spawn_blocking({
        let (e_brokers, id) = (brokers.clone(), id.clone());
        let vars = e.process_env(&e_brokers);
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_collect"))
                .args(["replay", "--integration", &id, "--wait-secs", "60"])
                .envs(vars)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    assert!(stderr.contains("100%"), "progress shown: {stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["followed"], true, "{summary}");
    let live: BTreeSet<String> = live.await.unwrap().into_iter().collect();
    let all: BTreeSet<String> = past.union(&live).cloned().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let seen = loop {
        let seen = in_sheet(&second).await;
        if all.iter().all(|id| seen.contains_key(id)) {
            break seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} in the new sheet",
            all.iter().filter(|id| seen.contains_key(*id)).count(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(seen.len(), all.len(), "nothing but the form's responses");
    assert!(seen.values().all(|n| *n == 1), "each exactly once");

    // `collect status` tells the same story, as JSON and as text; bad input is refused.
    let dlq = e.topic("dlq");
    let connect_dlq = e.topic("connect.dlq");
    let status_args = [
        "status",
        "--json",
        "--dead-letter-topic",
        dlq.as_str(),
        "--dead-letter-topic",
        connect_dlq.as_str(),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = collect(&e, &brokers, &status_args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["integrations"][0]["lag"] == 0 {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag never reached 0: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status["slot"]["active"], true, "{status}");
    assert_eq!(status["integrations"][0]["id"], id.as_str());
    assert_eq!(status["integrations"][0]["status"], "active");
    assert_eq!(status["dead_letters"][dlq.as_str()], 0, "{status}");
    let text = collect(
        &e,
        &brokers,
        &["status", "--dead-letter-topic", dlq.as_str()],
    );
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains(&id) && text.contains("sheets") && text.contains("lag 0"),
        "{text}"
    );
    let bad = collect(&e, &brokers, &["replay", "--integration", "not-a-uuid"]);
    assert!(!bad.status.success());
    let unknown = collect(
        &e,
        &brokers,
        &["replay", "--integration", &uuid::Uuid::now_v7().to_string()],
    );
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no integration"));
    connect.kill9();
    cdc.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_redriven_after_a_fix() {
    let e = env(json!({"title": "Reminders", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true},
        {"label": "Mobile", "type": "phone", "alias": "phone"}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let texts = Texts::start().await;
    for n in ["+4790000001", "+4790000002"] {
        let r = texts
            .http
            .post(format!("{}/emulator/opt-outs", texts.base))
            .json(&json!({"number": n}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let connect = connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;
    let created: Value = e
        .http
        .post(format!("{}/v1/integrations", connect.url()))
        .bearer_auth(&e.key)
        .json(&json!({
            "kind": "sms", "form_id": e.form_id(), "name": "reminders",
            "config": {"api_base_url": texts.base, "from": "+15005550006",
                       "to": {"question": "phone"},
                       "template": "See you soon, {{name}}. Ref {{response_id}}",
                       "rates": {"per_sender_per_second": 50},
                       "status_callback_base_url": connect.url()},
            "credentials": {"account_sid": texts.account["account_sid"],
                            "auth_token": texts.account["auth_token"]}
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let mut good = Vec::new();
    for i in 0..4 {
        good.push(
            e.submit(json!({"name": format!("g{i}"), "phone": format!("+4791{i:06}")}))
                .await,
        );
    }
    let opted = [
        e.submit(json!({"name": "o1", "phone": "+4790000001"}))
            .await,
        e.submit(json!({"name": "o2", "phone": "+4790000002"}))
            .await,
    ];
    let no_phone = e.submit(json!({"name": "nobody"})).await;

    // Listed, with their reasons.
    let list = |extra: &[&str]| {
        let mut args = vec![
            "dead-letters",
            "list",
            "--integration",
            id.as_str(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = collect(&e, &brokers, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let letters = loop {
        let letters = list(&[]);
        if letters.len() >= 3 {
            break letters;
        }
        assert!(tokio::time::Instant::now() < deadline, "{letters:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(letters.len(), 3, "{letters:?}");
    let by_key: BTreeMap<&str, &str> = letters
        .iter()
        .map(|l| (l["key"].as_str().unwrap(), l["reason"].as_str().unwrap()))
        .collect();
    assert!(by_key[opted[0].as_str()].contains("21610"), "{by_key:?}");
    assert!(
        by_key[no_phone.as_str()].contains("not answered"),
        "{by_key:?}"
    );
    assert!(letters.iter().all(|l| l["form"] == e.form_id()));
    assert_eq!(
        list(&["--form", &uuid::Uuid::now_v7().to_string()]).len(),
        0
    );
    let texted = texts.per_response().await;
    assert!(good.iter().all(|g| texted.get(g) == Some(&1)));
    assert!(!texted.contains_key(&opted[0]));

    // Delivery reports come back to `collect connect`, signed; the ledger keeps them.
    let c = e.db.connect().await.unwrap();
    let delivered = || async {
        c.query_one(
            "SELECT count(*) FROM sms_ledger WHERE integration_id = $1::text::uuid AND delivery_status = 'delivered'",
            &[&id],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered().await < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery reports never recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A forged report is refused and changes nothing.
    let sid: String = c
        .query_one(
            "SELECT provider_sid FROM sms_ledger WHERE integration_id = $1::text::uuid AND state = 'sent' LIMIT 1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    for signature in [Some("bm90IGEgc2lnbmF0dXJl"), None] {
        let mut r = e
            .http
            .post(format!("{}/v1/callbacks/{id}", connect.url()))
            .form(&[
                ("MessageSid", sid.as_str()),
                ("MessageStatus", "undelivered"),
            ]);
        if let Some(sig) = signature {
            r = r.header("X-Twilio-Signature", sig);
        }
        assert_eq!(r.send().await.unwrap().status().as_u16(), 403);
    }
    assert_eq!(delivered().await, 4);
    let r = e
        .http
        .post(format!(
            "{}/v1/callbacks/{}",
            connect.url(),
            uuid::Uuid::now_v7()
        ))
        .form(&[("MessageSid", "SM1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Bad input changes nothing.
    for args in [
        vec!["dead-letters", "redrive", "--integration", id.as_str()],
        vec!["dead-letters", "redrive", "--all"],
        vec![
            "dead-letters",
            "redrive",
            "--integration",
            id.as_str(),
            "--at",
            "x",
        ],
    ] {
        let mut full = args.clone();
        full.extend(["--secret-key", SECRET]);
        let out = collect(&e, &brokers, &full);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    assert_eq!(texts.per_response().await.len(), 4);

    // The recipients opt back in; all dead letters are re-driven: two are sent, the one
    // without a number is still refused.
    for n in ["+4790000001", "+4790000002"] {
        let r = texts
            .http
            .delete(format!("{}/emulator/opt-outs/{n}", texts.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let redrive = || {
        let out = collect(
            &e,
            &brokers,
            &[
                "dead-letters",
                "redrive",
                "--integration",
                id.as_str(),
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
    };
    let report = redrive();
    assert_eq!(
        (report["redriven"].as_u64(), report["written"].as_u64()),
        (Some(3), Some(2)),
        "{report}"
    );
    assert!(
        report["still_failing"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not answered")
    );
    let texted = texts.per_response().await;
    assert_eq!(texted.get(&opted[0]), Some(&1));
    assert_eq!(texted.get(&opted[1]), Some(&1));
    // Re-driving again sends nothing twice.
    redrive();
    let again = texts.per_response().await;
    assert_eq!(again, texted);
    connect.kill9();
    cdc.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_form_refills_a_sheet_when_the_topics_lost_its_responses() {
    let e = env(json!({"title": "Archive", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let ids: BTreeSet<String> = load(&e, "old", 300, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .collect();
    // Topics that hold none of them, as if retention had dropped everything.
    let (responses, forms) = (e.topic("fresh.responses"), e.topic("fresh.forms"));
    broker.create_topic(&responses, 3).unwrap();
    broker.create_topic(&forms, 3).unwrap();
    let mut vars = e.process_env(&brokers);
    for (k, v) in vars.iter_mut() {
        if k == "COLLECT_RESPONSES_TOPIC" {
            *v = responses.clone();
        }
        if k == "COLLECT_FORMS_TOPIC" {
            *v = forms.clone();
        }
    }
    let snapshot = |vars: &[(String, String)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_collect"))
            .args([
                "snapshot",
                "--form",
                e.form_id(),
                "--chunk",
                "64",
                "--compression",
                "none",
            ])
            .envs(vars.iter().cloned())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("100%"));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let report = snapshot(&vars);
    assert_eq!(
        report["rows"], 302,
        "the form, its question, its 300 responses: {report}"
    );

    let google = Google::start().await;
    let gs = google.sheet().await;
    let mut cvars = vars.clone();
    cvars.push(("COLLECT_SECRET_KEY".into(), SECRET.into()));
    let connect = Proc::start(
        &["connect", "--poll-ms", "300", "--batch-max-wait-ms", "200"],
        &cvars,
        "COLLECT_CONNECT_LISTEN",
    );
    connect.wait("/readyz", |_| true).await;
    let r = e
        .http
        .post(format!("{}/v1/integrations", connect.url()))
        .bearer_auth(&e.key)
        .json(&google.integration(&e, &gs))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let rows_by_id = || async {
        let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in google
            .values(&gs.token, &gs.spreadsheet)
            .await
            .into_iter()
            .skip(1)
        {
            if let Some(id) = r.first().and_then(Value::as_str) {
                m.entry(id.to_string())
                    .or_default()
                    .push(Value::Array(r.clone()));
            }
        }
        m
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let m = rows_by_id().await;
        if ids.iter().all(|id| m.contains_key(id)) {
            assert_eq!(m.len(), ids.len());
            assert!(m.values().all(|r| r.len() == 1));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {}",
            m.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // An edit, then another snapshot: the row changes in place, nothing is added.
    let edited = ids.iter().next().unwrap().clone();
    let (s, _) = e
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/forms/{}/responses/{edited}", e.form_id()),
            Some(json!({"answers": {"name": "renamed"}})),
        )
        .await;
    assert_eq!(s, 200);
    snapshot(&vars);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = rows_by_id().await;
        if m[&edited][0][5] == "renamed" {
            assert_eq!(m[&edited][0][3], "2");
            assert_eq!(m.len(), ids.len());
            assert!(m.values().all(|r| r.len() == 1));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", m[&edited]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A form that does not exist is refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collect"))
        .args(["snapshot", "--form", &uuid::Uuid::now_v7().to_string()])
        .envs(vars.iter().cloned())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no form"));
    connect.kill9();
}

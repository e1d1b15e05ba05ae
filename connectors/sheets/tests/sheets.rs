//! The Sheets connector against the Sheets emulator, through the runtime, with the real broker
//! and Postgres: the conformance suite, then the connector's own promises. What the tests
//! check is read back from the emulated sheet with a plain Sheets v4 `values.get`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use collect_connect::conformance::{Env, Target, run_all, wait_observed};
use collect_connect::store::Integration;
use collect_connect::worker::WorkerExit;
use collect_events::{Answer, ResponseEvent, ResponseOp};
use collect_sheets::{Config, Credentials, SheetsSink};
use serde_json::{Value, json};

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,collect_sheets=info,rdkafka=error")
            }),
        )
        .with_test_writer()
        .try_init();
}

/// An emulator of its own, a service account that writes, and a reader's token.
struct Google {
    base: String,
    http: reqwest::Client,
    key: Value,
    reader: String,
}

impl Google {
    async fn start() -> Google {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let emulator = collect_emulators::sheets::Emulator::new(&base);
        tokio::spawn(collect_emulators::sheets::serve(
            listener,
            emulator,
            std::future::pending(),
        ));
        let http = reqwest::Client::new();
        let key: Value = http
            .post(format!("{base}/emulator/service-accounts"))
            .json(&json!({"name": "collect-writer", "project": "forms-prod"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let reader_key: Value = http
            .post(format!("{base}/emulator/service-accounts"))
            .json(&json!({"name": "auditor", "project": "audit"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sa = yup_oauth2::parse_service_account_key(reader_key.to_string()).unwrap();
        let auth = yup_oauth2::ServiceAccountAuthenticator::builder(sa)
            .build()
            .await
            .unwrap();
        let reader = auth
            .token(&["https://www.googleapis.com/auth/spreadsheets"])
            .await
            .unwrap()
            .token()
            .unwrap()
            .to_string();
        // The tests read the sheet often; writes keep Google's quotas (60 and 300 a minute).
        http.put(format!("{base}/emulator/quotas"))
            .json(&json!({"read_per_minute_user": 1_000_000, "read_per_minute_project": 1_000_000, "write_per_minute_user": 60, "write_per_minute_project": 300}))
            .send()
            .await
            .unwrap();
        Google {
            base,
            http,
            key,
            reader,
        }
    }

    async fn spreadsheet(&self) -> String {
        let s: Value = self
            .http
            .post(format!("{}/emulator/spreadsheets", self.base))
            .json(&json!({"title": "Responses"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        s["spreadsheetId"].as_str().unwrap().to_string()
    }

    /// A GET of the Sheets API as a reader, retried through injected faults.
    async fn read(&self, path: &str) -> Value {
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let resp = self
                .http
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.reader)
                .send()
                .await
                .unwrap();
            if resp.status().is_success() {
                return resp.json().await.unwrap();
            }
            assert!(
                tokio::time::Instant::now() < end,
                "reading {path}: {}",
                resp.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `values.get` of a range, as anyone would read it.
    async fn values(&self, spreadsheet: &str, range: &str) -> Vec<Vec<Value>> {
        let v = self
            .read(&format!("/v4/spreadsheets/{spreadsheet}/values/{range}"))
            .await;
        v["values"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| r.as_array().cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A tab added by the writer itself (as a crash between addSheet and the ledger would
    /// leave it).
    async fn add_tab(&self, spreadsheet: &str, title: &str) {
        let email = self.key["client_email"].as_str().unwrap();
        let token: Value = self
            .http
            .post(format!("{}/emulator/access-tokens", self.base))
            .json(&json!({"email": email, "project": "forms-prod"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r = self
            .http
            .post(format!(
                "{}/v4/spreadsheets/{spreadsheet}:batchUpdate",
                self.base
            ))
            .bearer_auth(token["access_token"].as_str().unwrap())
            .json(
                &json!({"requests": [{"addSheet": {"properties": {"title": title,
                "gridProperties": {"rowCount": 200, "columnCount": 5}}}}]}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    async fn tabs(&self, spreadsheet: &str) -> Vec<String> {
        let v = self.read(&format!("/v4/spreadsheets/{spreadsheet}")).await;
        v["sheets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["properties"]["title"].as_str().unwrap().to_string())
            .collect()
    }

    async fn faults(&self, f: Value) {
        self.http
            .put(format!("{}/emulator/faults", self.base))
            .json(&f)
            .send()
            .await
            .unwrap();
    }
}

struct SheetsTarget {
    google: Google,
}

impl SheetsTarget {
    fn spreadsheet_of(i: &Integration) -> String {
        i.config["spreadsheet_id"].as_str().unwrap().to_string()
    }
}

impl Target for SheetsTarget {
    type S = SheetsSink;

    fn kind(&self) -> &'static str {
        "sheets"
    }

    async fn config(&self) -> Value {
        json!({"spreadsheet_id": self.google.spreadsheet().await, "api_base_url": self.google.base})
    }

    fn sink(&self, i: &Integration) -> SheetsSink {
        let config: Config = serde_json::from_value(i.config.clone()).unwrap();
        SheetsSink::new(
            config,
            Credentials::ServiceAccount {
                key: self.google.key.clone(),
            },
        )
    }

    async fn observe(&self, i: &Integration) -> HashMap<String, (usize, i32)> {
        let id = Self::spreadsheet_of(i);
        let mut out: HashMap<String, (usize, i32)> = HashMap::new();
        for tab in self.google.tabs(&id).await {
            for row in self.google.values(&id, &format!("'{tab}'!A2:E")).await {
                let Some(rid) = row
                    .first()
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                else {
                    continue;
                };
                let rev = row
                    .get(3)
                    .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(0);
                let e = out.entry(rid.to_string()).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(rev);
            }
        }
        out
    }

    async fn slow_down(&self, _i: &Integration, d: Duration) {
        self.google
            .faults(json!({"latency_ms": d.as_millis() as u64}))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sheets_sink_passes_the_conformance_suite() {
    logs();
    let target = SheetsTarget {
        google: Google::start().await,
    };
    let failures = run_all(&target).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

fn answer(qid: &str, alias: &str, text: &str) -> Answer {
    Answer {
        question_id: qid.into(),
        alias: Some(alias.into()),
        question_type: "text".into(),
        text: Some(text.into()),
        number: None,
        boolean: None,
        date: None,
        choices: None,
    }
}

const Q1: &str = "01900000-0000-7000-8000-0000000000a1";
const Q2: &str = "01900000-0000-7000-8000-0000000000a2";

fn response(env: &Env, id: &str, revision: i32, answers: Vec<Answer>) -> ResponseEvent {
    ResponseEvent {
        answers,
        ..env.response(id, revision, "")
    }
}

/// Waits until the sheet has `want` rows and a header that holds `header` from column F
/// on. Form events and responses travel on two topics, so a response can reach the sink
/// before the question it answers: its column first shows the alias, then the label once
/// the form event lands. The header is eventually right, so the test waits for it.
async fn rows(g: &Google, spreadsheet: &str, want: usize, header: &[&str]) -> Vec<Vec<Value>> {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = g.values(spreadsheet, "Responses!A1:Z").await;
        let labels_ok = v.first().is_some_and(|h| {
            header
                .iter()
                .enumerate()
                .all(|(i, l)| h.get(5 + i).and_then(Value::as_str) == Some(*l))
        });
        if v.len() >= want && labels_ok {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "sheet has {} rows, want {want} under {header:?}: {v:?}",
            v.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_follow_questions_and_edits_land_in_place() {
    logs();
    let env = Env::new().await.unwrap();
    let t = SheetsTarget {
        google: Google::start().await,
    };
    let i = env.integration("sheets", t.config().await).await.unwrap();
    let sheet = SheetsTarget::spreadsheet_of(&i);
    let w = env.start(t.sink(&i), "sheets", &i);
    env.produce_forms(&[env.question(Q1, "Your name", "name", 0, false)])
        .await
        .unwrap();
    let (a, b) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    named(&env, &a, 1, "=SUM(A1)").await;
    let v = rows(&t.google, &sheet, 2, &["Your name"]).await;
    assert_eq!(
        v[0],
        json!([
            "Response ID",
            "Submitted at",
            "Updated at",
            "Revision",
            "Status",
            "Your name"
        ])
        .as_array()
        .unwrap()
        .clone()
    );
    assert_eq!(
        (
            v[1][0].as_str(),
            v[1][3].as_str(),
            v[1][4].as_str(),
            v[1][5].as_str()
        ),
        (
            Some(a.as_str()),
            Some("1"),
            Some("active"),
            Some("=SUM(A1)")
        )
    );

    // A new question: a column at the right. A relabel: the header cell changes.
    env.produce_forms(&[
        env.question(Q2, "City", "city", 1, false),
        env.question(Q1, "Full name", "name", 0, false),
    ])
    .await
    .unwrap();
    let long = "x".repeat(60_000);
    env.produce(&[response(
        &env,
        &b,
        1,
        vec![answer(Q1, "name", "Bob"), answer(Q2, "city", &long)],
    )])
    .await
    .unwrap();
    let v = rows(&t.google, &sheet, 3, &["Full name", "City"]).await;
    assert_eq!(v[0][5], "Full name");
    assert_eq!(v[0][6], "City");
    let city = v[2][6].as_str().unwrap();
    assert_eq!(city.chars().count(), 50_000);
    assert!(city.ends_with("…[truncated]"));

    // Edits rewrite the same row; an older revision arriving late changes nothing; a
    // deletion marks the row.
    env.produce(&[response(
        &env,
        &a,
        2,
        vec![answer(Q1, "name", "Ann"), answer(Q2, "city", "Oslo")],
    )])
    .await
    .unwrap();
    named(&env, &a, 1, "stale").await;
    let mut del = response(&env, &b, 2, vec![answer(Q1, "name", "Bob")]);
    del.op = ResponseOp::Deleted;
    del.deleted_at = Some(1_700_000_000_000_100);
    env.produce(&[del]).await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = t.google.values(&sheet, "Responses!A1:Z").await;
        let done = v.len() == 3 && v[1][5] == "Ann" && v[1][6] == "Oslo" && v[2][4] == "deleted";
        if done {
            assert_eq!(v[1][3], "2");
            assert_eq!(v[2][5], "Bob", "marked, not cleared (the default)");
            break;
        }
        assert!(tokio::time::Instant::now() < end, "{v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.stop().await, WorkerExit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_over_near_the_cell_limit_or_pauses_as_configured() {
    logs();
    let env = Env::new().await.unwrap();
    let t = SheetsTarget {
        google: Google::start().await,
    };
    // A margin that leaves room for 60,000 cells: the spreadsheet's Sheet1 and our first
    // grid (1000 x 26 each) and a little more: growing past row 1000 must roll over.
    let margin = 10_000_000 - 60_000;
    let mut config = t.config().await;
    config["cell_limit_margin"] = json!(margin);
    let i = env.integration("sheets", config).await.unwrap();
    let sheet = SheetsTarget::spreadsheet_of(&i);
    // A tab a crash left between addSheet and the ledger: the rollover adopts it.
    t.google.add_tab(&sheet, "Responses 2").await;
    let ids: Vec<String> = (0..1100)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    env.produce(
        &ids.iter()
            .map(|id| env.response(id, 1, "n"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let w = env.start(t.sink(&i), "sheets", &i);
    let seen = wait_observed(&t, &i, Duration::from_secs(90), "all 1100 rows", |s| {
        ids.iter().all(|id| s.contains_key(id))
    })
    .await
    .unwrap();
    assert!(seen.values().all(|(n, _)| *n == 1));
    let mut tabs = t.google.tabs(&sheet).await;
    tabs.sort();
    assert_eq!(
        tabs,
        vec!["Responses", "Responses 2", "Sheet1"],
        "rolled over to a second tab, the leftover one"
    );
    assert_eq!(
        t.google.values(&sheet, "'Responses 2'!A1:A1").await[0][0],
        "Response ID"
    );
    // A question added after the rollover: every tab, the older and narrower one too, gets
    // the header (and the width) it needs; nothing pauses.
    env.produce_forms(&[env.question(Q1, "Added later", "later", 0, false)])
        .await
        .unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    for tab in ["Responses", "Responses 2"] {
        loop {
            let header = t.google.values(&sheet, &format!("'{tab}'!A1:Z1")).await;
            if header
                .first()
                .is_some_and(|h| h.iter().any(|c| c.as_str() == Some("Added later")))
            {
                break;
            }
            assert!(tokio::time::Instant::now() < end, "{tab}: {header:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(w.stop().await, WorkerExit::Stopped);

    // on_cell_limit = pause: the integration stops with a reason instead.
    let mut config = t.config().await;
    config["cell_limit_margin"] = json!(margin);
    config["on_cell_limit"] = json!("pause");
    let i = env.integration("sheets", config).await.unwrap();
    let w = env.start(t.sink(&i), "sheets", &i);
    let exit = tokio::time::timeout(Duration::from_secs(90), w.handle)
        .await
        .unwrap()
        .unwrap();
    let WorkerExit::Paused(reason) = exit else {
        panic!("expected a pause, got {exit:?}")
    };
    assert!(reason.contains("cell limit"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storms_of_429_and_5xx_write_every_row_once_and_revoked_credentials_pause() {
    logs();
    let mut env = Env::new().await.unwrap();
    env.settings(|s| s.batch_max_events = 200);
    let t = SheetsTarget {
        google: Google::start().await,
    };
    let i = env.integration("sheets", t.config().await).await.unwrap();
    let w = env.start(t.sink(&i), "sheets", &i);
    let ids: Vec<String> = (0..600).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    t.google
        .faults(json!({"error_rate": 0.4, "error_status": 503, "fail_after_write_rate": 0.3}))
        .await;
    env.produce(
        &ids[..300]
            .iter()
            .map(|id| env.response(id, 1, "storm"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.google.faults(json!({"throttle_seconds": 3})).await;
    env.produce(
        &ids[300..]
            .iter()
            .map(|id| env.response(id, 1, "storm"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let seen = wait_observed(&t, &i, Duration::from_secs(120), "all 600 rows", |s| {
        ids.iter().all(|id| s.contains_key(id))
    })
    .await
    .unwrap();
    assert!(
        seen.values().all(|(n, _)| *n == 1),
        "a row was written twice"
    );
    let l = [i.id.to_string(), "sheets".to_string()];
    assert!(
        env.shared
            .metrics
            .retries
            .with_label_values(&[&l[0], &l[1]])
            .get()
            > 0,
        "the storms caused retries"
    );
    assert!(
        env.shared
            .metrics
            .throttles
            .with_label_values(&[&l[0], &l[1]])
            .get()
            > 0,
        "429s were counted"
    );
    assert_eq!(w.stop().await, WorkerExit::Stopped);

    // The service account is disabled: the worker pauses with the reason.
    t.google.faults(json!({})).await;
    let email = t.google.key["client_email"].as_str().unwrap().to_string();
    t.google
        .http
        .post(format!(
            "{}/emulator/service-accounts/{email}/disable",
            t.google.base
        ))
        .send()
        .await
        .unwrap();
    let w = env.start(t.sink(&i), "sheets", &i);
    let reason = ended(w.handle, "Paused").await;
    assert!(reason.contains("refused"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pointing_at_another_spreadsheet_starts_a_fresh_layout_there() {
    logs();
    let env = Env::new().await.unwrap();
    let t = SheetsTarget {
        google: Google::start().await,
    };
    let i = env.integration("sheets", t.config().await).await.unwrap();
    let first = SheetsTarget::spreadsheet_of(&i);
    let w = env.start(t.sink(&i), "sheets", &i);
    env.produce_forms(&[env.question(Q1, "Your name", "name", 0, false)])
        .await
        .unwrap();
    let old: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    env.produce(
        &old.iter()
            .map(|id| response(&env, id, 1, vec![answer(Q1, "name", "old")]))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(rows(&t.google, &first, 4, &["Your name"]).await.len(), 4);
    assert_eq!(w.stop().await, WorkerExit::Stopped);

    // Ops point the integration at a new spreadsheet.
    let second = t.google.spreadsheet().await;
    let mut moved = i.clone();
    moved.config["spreadsheet_id"] = json!(second);
    let w = env.start(t.sink(&moved), "sheets", &moved);
    let new: Vec<String> = (0..2).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    env.produce(
        &new.iter()
            .map(|id| response(&env, id, 1, vec![answer(Q1, "name", "new")]))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let v = rows(&t.google, &second, 3, &[]).await;
    assert_eq!(
        v.len(),
        3,
        "a header and the two new rows, from the top: {v:?}"
    );
    assert_eq!(v[0][0], "Response ID");
    let ids: Vec<&str> = v[1..].iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(ids, new.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        t.google.values(&first, "Responses!A1:Z").await.len(),
        4,
        "the first spreadsheet is left as it was"
    );
    assert_eq!(w.stop().await, WorkerExit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_write_that_failed_is_written_again_on_retry() {
    logs();
    let env = Env::new().await.unwrap();
    let t = SheetsTarget {
        google: Google::start().await,
    };
    let i = env.integration("sheets", t.config().await).await.unwrap();
    let sheet = SheetsTarget::spreadsheet_of(&i);
    let w = env.start(t.sink(&i), "sheets", &i);
    let first = uuid::Uuid::new_v4().to_string();
    env.produce(&[env.response(&first, 1, "before")])
        .await
        .unwrap();
    rows(&t.google, &sheet, 2, &[]).await;
    // Every write fails (503) while the new question's column is stored and its header
    // written: the retried batch must write the header it needs, not leave it blank.
    t.google
        .faults(json!({"error_rate": 1.0, "error_status": 503}))
        .await;
    env.produce_forms(&[env.question(Q2, "Asked later", "later", 0, false)])
        .await
        .unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats: Value = t
            .google
            .http
            .get(format!("{}/emulator/stats", t.google.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["injected_errors"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.google.faults(json!({})).await;
    let header = rows(&t.google, &sheet, 2, &["name", "Asked later"]).await;
    assert_eq!(
        header[0].get(6).and_then(Value::as_str),
        Some("Asked later")
    );
    assert_eq!(w.stop().await, WorkerExit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tab_pauses_the_integration_with_the_reason_and_is_not_written_elsewhere() {
    logs();
    let env = Env::new().await.unwrap();
    let t = SheetsTarget {
        google: Google::start().await,
    };
    let i = env.integration("sheets", t.config().await).await.unwrap();
    let sheet = SheetsTarget::spreadsheet_of(&i);
    let w = env.start(t.sink(&i), "sheets", &i);
    let first = uuid::Uuid::new_v4().to_string();
    env.produce(&[env.response(&first, 1, "before")])
        .await
        .unwrap();
    rows(&t.google, &sheet, 2, &[]).await;
    // A person deletes the connector's tab; the next response has nowhere to go.
    let meta = t.google.read(&format!("/v4/spreadsheets/{sheet}")).await;
    let gid = meta["sheets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["properties"]["title"] == "Responses")
        .map(|s| s["properties"]["sheetId"].clone())
        .unwrap();
    let r = t
        .google
        .http
        .post(format!(
            "{}/v4/spreadsheets/{sheet}:batchUpdate",
            t.google.base
        ))
        .bearer_auth(&t.google.reader)
        .json(&json!({"requests": [{"deleteSheet": {"sheetId": gid}}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let tabs_after_delete = t.google.tabs(&sheet).await;
    env.produce(&[env.response(&uuid::Uuid::new_v4().to_string(), 1, "after")])
        .await
        .unwrap();
    let reason = ended(w.handle, "Paused").await;
    assert!(
        reason.contains("was deleted") && reason.contains(&sheet),
        "{reason}"
    );
    // Nothing was written elsewhere: the tab is not recreated and the other tabs are empty.
    assert_eq!(t.google.tabs(&sheet).await, tabs_after_delete);
    for tab in tabs_after_delete {
        assert_eq!(
            t.google.values(&sheet, &format!("'{tab}'!A1:Z")).await,
            Vec::<Vec<Value>>::new(),
            "{tab}"
        );
    }
}

/// Waits (60 s at most) for a worker to end as `how` (`Paused` or `Rewound`); its reason.
async fn ended(handle: tokio::task::JoinHandle<WorkerExit>, how: &str) -> String {
    let exit = tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .unwrap()
        .unwrap();
    match (how, exit) {
        ("Paused", WorkerExit::Paused(reason)) | ("Rewound", WorkerExit::Rewound(reason)) => reason,
        (_, other) => panic!("expected {how}, got {other:?}"),
    }
}

/// Produces one response answering Q1 (`name`).
async fn named(env: &Env, id: &str, revision: i32, name: &str) {
    env.produce(&[response(env, id, revision, vec![answer(Q1, "name", name)])])
        .await
        .unwrap();
}

/// A person's `batchUpdate` of the spreadsheet (the auditor shares it as an editor).
async fn person(g: &Google, spreadsheet: &str, requests: Value) {
    let r = g
        .http
        .post(format!(
            "{}/v4/spreadsheets/{spreadsheet}:batchUpdate",
            g.base
        ))
        .bearer_auth(&g.reader)
        .json(&json!({ "requests": requests }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// A person typing `text` into cell `a1` of tab Responses.
async fn type_cell(g: &Google, spreadsheet: &str, a1: &str, text: &str) {
    let r = g
        .http
        .put(format!(
            "{}/v4/spreadsheets/{spreadsheet}/values/Responses!{a1}?valueInputOption=USER_ENTERED",
            g.base
        ))
        .bearer_auth(&g.reader)
        .json(&json!({ "values": [[text]] }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// The sheet id of tab `title`.
async fn sheet_id(g: &Google, spreadsheet: &str, title: &str) -> Value {
    let meta = g.read(&format!("/v4/spreadsheets/{spreadsheet}")).await;
    meta["sheets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["properties"]["title"] == title)
        .map(|s| s["properties"]["sheetId"].clone())
        .unwrap()
}

/// Waits (60 s at most) until the sheet's cells satisfy `ok`; returns them.
async fn until(
    g: &Google,
    spreadsheet: &str,
    what: &str,
    ok: impl Fn(&[Vec<Value>]) -> bool,
) -> Vec<Vec<Value>> {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = g.values(spreadsheet, "Responses!A1:Z").await;
        if ok(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "{what}: {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cells holding these texts.
fn texts(t: &[&str]) -> Vec<Value> {
    t.iter().map(|s| json!(s)).collect()
}

/// The row whose cell in column `col` (0-based) is `id`.
fn row_of<'a>(v: &'a [Vec<Value>], col: usize, id: &str) -> Option<&'a Vec<Value>> {
    v.iter().find(|r| r.get(col) == Some(&json!(id)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_follow_their_question_when_a_person_inserts_moves_or_deletes_columns() {
    logs();
    let env = Env::new().await.unwrap();
    let t = SheetsTarget {
        google: Google::start().await,
    };
    let g = &t.google;
    let i = env.integration("sheets", t.config().await).await.unwrap();
    let sheet = SheetsTarget::spreadsheet_of(&i);
    let w = env.start(t.sink(&i), "sheets", &i);
    let (first, second, third) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    named(&env, &first, 1, "Ada").await;
    rows(g, &sheet, 2, &["name"]).await;
    let gid = sheet_id(g, &sheet, "Responses").await;

    // A header cell typed over is only text: the next batch writes it again.
    type_cell(g, &sheet, "C1", "When").await;
    named(&env, &second, 1, "Grace").await;
    let v = rows(g, &sheet, 3, &["name"]).await;
    assert_eq!(v[0][2], json!("Updated at"), "the header is written again");

    // A column inserted among the connector's (B), with a person's note in it: answers
    // follow their columns one to the right, and the note stays.
    person(
        g,
        &sheet,
        json!([{"insertDimension": {"range": {"sheetId": gid, "dimension": "COLUMNS",
            "startIndex": 1, "endIndex": 2}, "inheritFromBefore": true}}]),
    )
    .await;
    type_cell(g, &sheet, "B1", "Follow-up").await;
    type_cell(g, &sheet, "B2", "call back").await;
    env.produce(&[
        response(&env, &first, 2, vec![answer(Q1, "name", "Ada L.")]),
        response(&env, &third, 1, vec![answer(Q1, "name", "Alan")]),
    ])
    .await
    .unwrap();
    let v = until(g, &sheet, "rows after the inserted column", |v| {
        row_of(v, 0, &third).is_some() && row_of(v, 0, &first).is_some_and(|r| r[4] == json!("2"))
    })
    .await;
    // The fixed columns with the person's column among them.
    let fixed = [
        "Response ID",
        "Follow-up",
        "Submitted at",
        "Updated at",
        "Revision",
        "Status",
    ];
    assert_eq!(v[0], texts(&[&fixed[..], &["name"]].concat()));
    let r = row_of(&v, 0, &first).unwrap();
    assert_eq!((&r[1], &r[6]), (&json!("call back"), &json!("Ada L.")));
    assert_eq!(row_of(&v, 0, &third).unwrap()[6], json!("Alan"));
    assert_eq!(v.len(), 4, "one row per response: {v:?}");

    // The question's column dragged to B, then a batch of form events alone (the question
    // relabelled: no row to check, the header written): the label follows the column, and
    // the person's header in C stays.
    person(
        g,
        &sheet,
        json!([{"moveDimension": {"source": {"sheetId": gid, "dimension": "COLUMNS",
            "startIndex": 6, "endIndex": 7}, "destinationIndex": 1}}]),
    )
    .await;
    env.produce_forms(&[env.question(Q1, "Name", "name", 0, false)])
        .await
        .unwrap();
    until(g, &sheet, "the relabel at the moved column", |v| {
        v.first().is_some_and(|h| h.get(1) == Some(&json!("Name")))
    })
    .await;
    assert_eq!(
        g.values(&sheet, "Responses!A1:Z").await[0][2],
        json!("Follow-up")
    );
    // Its answers follow it there too.
    named(&env, &second, 2, "Grace H.").await;
    let v = until(g, &sheet, "the edit after the move", |v| {
        row_of(v, 0, &second).is_some_and(|r| r.get(5) == Some(&json!("2")))
    })
    .await;
    assert_eq!(v[0][1], json!("Name"));
    assert_eq!(v[0][2], json!("Follow-up"));
    let r = row_of(&v, 0, &second).unwrap();
    assert_eq!(r[1], json!("Grace H."));
    assert_eq!(row_of(&v, 0, &first).unwrap()[2], json!("call back"));

    // The question's column deleted: it stays deleted; the rest of the row still follows.
    person(
        g,
        &sheet,
        json!([{"deleteDimension": {"range": {"sheetId": gid, "dimension": "COLUMNS",
            "startIndex": 1, "endIndex": 2}}}]),
    )
    .await;
    named(&env, &first, 3, "Ada Lovelace").await;
    let v = until(g, &sheet, "the edit after the deletion", |v| {
        row_of(v, 0, &first).is_some_and(|r| r.get(4) == Some(&json!("3")))
    })
    .await;
    assert_eq!(
        v[0],
        texts(&fixed),
        "the deleted column is not written again"
    );
    assert_eq!(row_of(&v, 0, &first).unwrap()[1], json!("call back"));
    assert!(
        !v.iter().flatten().any(|c| c == &json!("Ada Lovelace")),
        "{v:?}"
    );

    // Only the Response ID column cannot go: the integration pauses with the reason and
    // writes nothing.
    person(
        g,
        &sheet,
        json!([{"deleteDimension": {"range": {"sheetId": gid, "dimension": "COLUMNS",
            "startIndex": 0, "endIndex": 1}}}]),
    )
    .await;
    let before = g.values(&sheet, "Responses!A1:Z").await;
    named(&env, &third, 2, "Alan T.").await;
    let reason = ended(w.handle, "Paused").await;
    assert!(
        reason.contains("Response ID column") && reason.contains("resume the integration"),
        "{reason}"
    );
    assert_eq!(g.values(&sheet, "Responses!A1:Z").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tab_is_recreated_and_refilled_when_configured() {
    logs();
    let env = Env::new().await.unwrap();
    let t = SheetsTarget {
        google: Google::start().await,
    };
    let g = &t.google;
    let mut config = t.config().await;
    config["on_deleted_tab"] = json!("recreate");
    let i = env.integration("sheets", config).await.unwrap();
    let sheet = SheetsTarget::spreadsheet_of(&i);
    let w = env.start(t.sink(&i), "sheets", &i);
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let events: Vec<ResponseEvent> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| response(&env, id, 1, vec![answer(Q1, "name", &format!("r{n}"))]))
        .collect();
    env.produce(&events).await.unwrap();
    rows(g, &sheet, 4, &["name"]).await;
    let gid = sheet_id(g, &sheet, "Responses").await;
    person(g, &sheet, json!([{"deleteSheet": {"sheetId": gid}}])).await;
    let last = uuid::Uuid::new_v4().to_string();
    named(&env, &last, 1, "r3").await;
    // The worker recreates the tab, moves its offsets back and ends to be restarted.
    let reason = ended(w.handle, "Rewound").await;
    assert!(reason.contains("recreated"), "{reason}");
    assert_ne!(sheet_id(g, &sheet, "Responses").await, gid, "a new tab");
    // Restarted (the supervisor does it at once), it refills the tab from the oldest event.
    let w = env.start(t.sink(&i), "sheets", &i);
    let v = until(g, &sheet, "every response back in the recreated tab", |v| {
        ids.iter()
            .chain([&last])
            .all(|id| row_of(v, 0, id).is_some())
    })
    .await;
    assert_eq!(v.len(), 5, "one row per response and the header: {v:?}");
    assert_eq!(v[0][0], json!("Response ID"));
    // The refill was asked once: the restarted worker runs until it is stopped.
    assert_eq!(w.stop().await, WorkerExit::Stopped);
}

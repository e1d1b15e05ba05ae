//! The SMS connector against the SMS emulator, through the runtime, with the real broker and
//! Postgres: the conformance suite, then the connector's own promises. What the tests check
//! is read back from the provider's message log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use collect_connect::Kind;
use collect_connect::conformance::{Env, Target, run_all};
use collect_connect::store::Integration;
use collect_connect::worker::WorkerExit;
use collect_events::{Answer, ResponseEvent};
use collect_sms::{Sms, SmsSink, Twilio};
use serde_json::{Value, json};

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,collect_sms=info,rdkafka=error")
            }),
        )
        .with_test_writer()
        .try_init();
}

/// An SMS emulator of its own.
struct Provider {
    base: String,
    http: reqwest::Client,
}

impl Provider {
    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(collect_emulators::sms::serve(
            l,
            collect_emulators::sms::Emulator::new(&base),
            std::future::pending(),
        ));
        let p = Self {
            base,
            http: reqwest::Client::new(),
        };
        p.admin(
            reqwest::Method::PUT,
            "limits",
            json!({"per_sender_per_second": 1000, "account_per_second": 1000}),
        )
        .await;
        p
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

    async fn account(&self) -> (String, String) {
        let a = self
            .admin(reqwest::Method::POST, "accounts", Value::Null)
            .await;
        (
            a["account_sid"].as_str().unwrap().into(),
            a["auth_token"].as_str().unwrap().into(),
        )
    }

    /// Messages of `account`.
    async fn messages(&self, account: &str) -> Vec<Value> {
        self.admin(reqwest::Method::GET, "messages", Value::Null)
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["account_sid"] == account)
            .cloned()
            .collect()
    }
}

struct SmsTarget {
    provider: Provider,
}

const TEMPLATE: &str = "Thanks {{name}}! Ref {{response_id}}";

impl SmsTarget {
    async fn integration_config(&self, extra: Value) -> Value {
        let (sid, token) = self.provider.account().await;
        let mut config = json!({
            "api_base_url": self.provider.base,
            "from": "+15005550006",
            "to": {"question": "phone"},
            "template": TEMPLATE,
            "rates": {"per_sender_per_second": 500, "account_per_second": 500},
            "reconcile_after_secs": 1,
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        json!({"config": config, "credentials": {"account_sid": sid, "auth_token": token}})
    }

    fn account_of(i: &Integration) -> String {
        i.config["__account"].as_str().unwrap().to_string()
    }
}

/// The test keeps the credentials beside the config (the runtime would decrypt them).
fn stored(prepared: &Value) -> Value {
    let mut c = prepared["config"].clone();
    c["__account"] = prepared["credentials"]["account_sid"].clone();
    c["__token"] = prepared["credentials"]["auth_token"].clone();
    c
}

fn sink_of(i: &Integration) -> SmsSink<Twilio> {
    let mut config = i.config.clone();
    let creds = json!({"account_sid": config["__account"], "auth_token": config["__token"]});
    config.as_object_mut().unwrap().remove("__account");
    config.as_object_mut().unwrap().remove("__token");
    Sms::build(&config, Some(&creds)).unwrap()
}

impl Target for SmsTarget {
    type S = SmsSink<Twilio>;

    fn kind(&self) -> &'static str {
        "sms"
    }

    async fn config(&self) -> Value {
        // The conformance responses answer only "name": send to a fixed number.
        stored(
            &self
                .integration_config(json!({"to": {"number": "+4791234567"}}))
                .await,
        )
    }

    fn sink(&self, i: &Integration) -> SmsSink<Twilio> {
        sink_of(i)
    }

    async fn observe(&self, i: &Integration) -> HashMap<String, (usize, i32)> {
        let mut out: HashMap<String, (usize, i32)> = HashMap::new();
        for m in self.provider.messages(&Self::account_of(i)).await {
            if let Some(id) = m["body"].as_str().and_then(|b| b.rsplit("Ref ").next()) {
                out.entry(id.to_string()).or_insert((0, 1)).0 += 1;
            }
        }
        out
    }

    async fn slow_down(&self, _i: &Integration, d: Duration) {
        self.provider
            .admin(
                reqwest::Method::PUT,
                "faults",
                json!({"latency_ms": d.as_millis() as u64}),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sms_sink_passes_the_conformance_suite() {
    logs();
    let target = SmsTarget {
        provider: Provider::start().await,
    };
    let failures = run_all(&target).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

fn with_phone(env: &Env, id: &str, phone: &str) -> ResponseEvent {
    let mut r = env.response(id, 1, "Ada");
    r.answers.push(Answer {
        question_id: "01900000-0000-7000-8000-0000000000bb".into(),
        alias: Some("phone".into()),
        question_type: "phone".into(),
        text: Some(phone.into()),
        number: None,
        boolean: None,
        date: None,
        choices: None,
    });
    r
}

/// A test's own Postgres, broker and provider, and an SMS integration configured with
/// `extra` on top of the tests' defaults; with its provider account.
async fn set_up(extra: Value) -> (Env, SmsTarget, Integration, String) {
    logs();
    let env = Env::new().await.unwrap();
    let t = SmsTarget {
        provider: Provider::start().await,
    };
    let i = env
        .integration("sms", stored(&t.integration_config(extra).await))
        .await
        .unwrap();
    let account = SmsTarget::account_of(&i);
    (env, t, i, account)
}

/// Waits until the account has `n` messages; returns them.
async fn messages(p: &Provider, account: &str, n: usize) -> Vec<Value> {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = p.messages(account).await;
        if m.len() >= n {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{} of {n} messages: {m:?}",
            m.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `n` of the integration's ledger entries are `sent` (reconciled or sent).
async fn wait_sent(env: &Env, i: &Integration, n: i64) {
    let c = env.pool.get().await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sent: i64 = c
            .query_one(
                "SELECT count(*) FROM sms_ledger WHERE integration_id = $1 AND state = 'sent'",
                &[&i.id],
            )
            .await
            .unwrap()
            .get(0);
        if sent == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{sent} of {n} reconciled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn per_response(ms: &[Value]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in ms {
        let id = m["body"].as_str().unwrap().rsplit("Ref ").next().unwrap();
        *out.entry(id.to_string()).or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_sends_are_reconciled_never_duplicated() {
    let (env, t, i, account) = set_up(json!({})).await;
    // Every send is accepted and its connection dropped: the sink cannot know; the
    // provider's list tells it the message exists.
    t.provider
        .admin(
            reqwest::Method::PUT,
            "faults",
            json!({"drop_after_accept_rate": 1.0}),
        )
        .await;
    let ids: Vec<String> = (0..5).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    env.produce(
        &ids.iter()
            .map(|id| with_phone(&env, id, "+47 912 34 567"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let w = env.start(sink_of(&i), "sms", &i);
    let ms = messages(&t.provider, &account, 5).await;
    assert_eq!(ms[0]["to"], "+4791234567", "normalised to E.164");
    // Let the reconciliation run, then check nothing was sent twice.
    wait_sent(&env, &i, 5).await;
    let counts = per_response(&t.provider.messages(&account).await);
    assert!(
        ids.iter().all(|id| counts.get(id) == Some(&1)),
        "{counts:?}"
    );

    // 500s before anything is stored: ambiguous too; the list shows nothing, so after the
    // reconcile delay each is sent, once.
    t.provider
        .admin(
            reqwest::Method::PUT,
            "faults",
            json!({"error_rate": 1.0, "error_status": 500}),
        )
        .await;
    let more: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    env.produce(
        &more
            .iter()
            .map(|id| with_phone(&env, id, "+4791234568"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let c = env.pool.get().await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ambiguous: i64 = c
            .query_one(
                "SELECT count(*) FROM sms_ledger WHERE integration_id = $1 AND state = 'ambiguous'",
                &[&i.id],
            )
            .await
            .unwrap()
            .get(0);
        if ambiguous >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no ambiguous send recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.provider
        .admin(reqwest::Method::PUT, "faults", json!({}))
        .await;
    let ms = messages(&t.provider, &account, 8).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = per_response(&t.provider.messages(&account).await);
    assert_eq!(ms.len(), 8);
    assert!(
        ids.iter().chain(&more).all(|id| counts.get(id) == Some(&1)),
        "{counts:?}"
    );
    assert_eq!(w.stop().await, WorkerExit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_numbers_go_to_dead_letters_and_429s_are_retried() {
    let (env, t, i, account) = set_up(json!({})).await;
    // The provider allows 2 a second from our number; the sink is told 500: it gets 429s.
    t.provider
        .admin(
            reqwest::Method::PUT,
            "limits",
            json!({"per_sender_per_second": 2, "account_per_second": 1000}),
        )
        .await;
    t.provider
        .admin(
            reqwest::Method::POST,
            "opt-outs",
            json!({"number": "+4799999999"}),
        )
        .await;
    let good: Vec<String> = (0..8).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let (bad, none, opted) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let mut events: Vec<ResponseEvent> = good
        .iter()
        .map(|id| with_phone(&env, id, "+4791234567"))
        .collect();
    events.insert(3, with_phone(&env, &bad, "12"));
    events.insert(5, env.response(&none, 1, "no phone"));
    events.push(with_phone(&env, &opted, "+4799999999"));
    // An edit of a response already texted sends nothing more.
    let mut edit = with_phone(&env, &good[0], "+4791234567");
    edit.revision = 2;
    events.push(edit);
    env.produce(&events).await.unwrap();
    let w = env.start(sink_of(&i), "sms", &i);
    let dead = env.dead_letters(3, Duration::from_secs(60)).await;
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.headers["collect.reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("invalid phone number '12'")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not answered")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("21610")), "{reasons:?}");
    let ms = messages(&t.provider, &account, 8).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = per_response(&t.provider.messages(&account).await);
    assert_eq!(ms.len(), 8);
    assert!(
        good.iter().all(|id| counts.get(id) == Some(&1)),
        "{counts:?}"
    );
    let stats = t
        .provider
        .admin(reqwest::Method::GET, "stats", Value::Null)
        .await;
    assert!(stats["throttled"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(w.stop().await, WorkerExit::Stopped);
}

#[tokio::test]
async fn configuration_is_validated() {
    let ok =
        json!({"from": "+15005550006", "to": {"question": "phone"}, "template": "Hi {{name}}"});
    let creds = json!({"account_sid": "AC1", "auth_token": "t"});
    let prepared = Sms::prepare(ok.clone(), Some(creds.clone())).await.unwrap();
    assert_eq!(prepared.config["rates"]["per_sender_per_second"], 1);
    for (change, field) in [
        (json!({"from": "5550006"}), "config.from"),
        (json!({"to": {"number": "12"}}), "config.to.number"),
        (json!({"to": {"email": "x"}}), "config"),
        (json!({"template": "Hi {{name"}), "config.template"),
        (json!({"provider": "carrier-pigeon"}), "config.provider"),
        (json!({"colour": "red"}), "config"),
        (
            json!({"rates": {"per_sender_per_second": 0}}),
            "config.rates",
        ),
    ] {
        let mut c = ok.clone();
        for (k, v) in change.as_object().unwrap() {
            c[k] = v.clone();
        }
        match Sms::prepare(c, Some(creds.clone())).await {
            Err(collect_connect::KindError::Invalid(errors)) => {
                assert_eq!(errors[0].field, field, "{change}: {errors:?}")
            }
            other => panic!("{change}: {other:?}"),
        }
    }
    assert!(Sms::prepare(ok.clone(), None).await.is_err());
    assert!(
        Sms::prepare(ok, Some(json!({"account_sid": "AC1"})))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_trusts_the_providers_clock_and_looks_more_than_once() {
    let (env, t, i, account) = set_up(json!({"reconcile_after_secs": 2})).await;
    // The provider's clock is ten minutes behind ours, and every send is accepted then its
    // connection dropped: only the provider's list can say the messages exist.
    t.provider
        .admin(
            reqwest::Method::PUT,
            "faults",
            json!({"drop_after_accept_rate": 1.0, "clock_offset_secs": -600}),
        )
        .await;
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    env.produce(
        &ids.iter()
            .map(|id| with_phone(&env, id, "+4791234569"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let _w = env.start(sink_of(&i), "sms", &i);
    wait_sent(&env, &i, 3).await;
    let counts = per_response(&t.provider.messages(&account).await);
    assert!(
        ids.iter().all(|id| counts.get(id) == Some(&1)),
        "a message was sent twice: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_report_before_its_sid_is_kept_and_applied() {
    let db = collect_testkit::fresh_db().await.unwrap();
    let pool =
        collect_store::connect_pool(&db.url, &collect_store::PoolSettings::default()).unwrap();
    let (integration, form, response) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    // The ledger writes under the integration's lease (generation 0 until taken).
    let c = pool.get().await.unwrap();
    let org = uuid::Uuid::now_v7();
    c.execute(
        "INSERT INTO organizations (id, name) VALUES ($1, 'org')",
        &[&org],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO integrations (id, org_id, form_id, kind, config) VALUES ($1, $2, $3, 'sms', '{}')",
        &[&integration, &org, &form],
    )
    .await
    .unwrap();
    let ledger = collect_sms::ledger::Ledger::new(pool.clone(), integration, form, "thanks".into());
    // A writer with another generation claims nothing.
    let stale = collect_sms::ledger::Ledger::new(pool.clone(), integration, form, "thanks".into())
        .fenced(7);
    assert!(stale.claim(response, "+4791234567", "Hi").await.is_err());
    assert!(ledger.claim(response, "+4791234567", "Hi").await.unwrap());
    // The provider's callback comes before its answer to the send.
    assert!(!ledger.delivery("SM1", "sent").await.unwrap());
    assert!(!ledger.delivery("SM1", "delivered").await.unwrap());
    assert!(
        !ledger.delivery("SM1", "sent").await.unwrap(),
        "late, earlier"
    );
    ledger
        .set(response, "sent", Some("SM1"), None)
        .await
        .unwrap();
    let c = pool.get().await.unwrap();
    let status: Option<String> = c
        .query_one(
            "SELECT delivery_status FROM sms_ledger WHERE provider_sid = 'SM1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status.as_deref(), Some("delivered"));
    // Known now: a late earlier status changes nothing.
    assert!(ledger.delivery("SM1", "sent").await.unwrap());
    let status: Option<String> = c
        .query_one(
            "SELECT delivery_status FROM sms_ledger WHERE provider_sid = 'SM1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status.as_deref(), Some("delivered"));
    let pending: i64 = c
        .query_one("SELECT count(*) FROM sms_delivery_pending", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0);
}

/// A response deleted before the integration texted it: when the integration reads its
/// creation it texts it (once, whatever comes after); when it reads only the deletion (it
/// was behind and the compacted topic kept the latest record) it texts nothing, sends no
/// dead letter, and its ledger says why; a send claimed before a crash and then deleted is
/// still settled with the provider's list (here: sent, as the provider never had it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_read_before_the_creation_is_recorded_not_texted() {
    let (env, t, i, account) = set_up(json!({})).await;
    let (read, compacted, after, in_flight) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    // A claim a crashed worker left a minute ago, its send unknown.
    env.pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO sms_ledger (integration_id, response_id, form_id, purpose, state, \
             to_number, body, claimed_at) VALUES ($1, $2::text::uuid, $3, $4, 'claimed', \
             '+4791234569', $5, now() - interval '1 minute')",
            &[
                &i.id,
                &in_flight,
                &i.form_id,
                &i.purpose(),
                &format!("Thanks Ada! Ref {in_flight}"),
            ],
        )
        .await
        .unwrap();
    let deletion = |id: &str| {
        let mut d = with_phone(&env, id, "+4791234567");
        d.revision = 2;
        d.op = collect_events::ResponseOp::Deleted;
        d.deleted_at = Some(d.updated_at);
        d
    };
    let events = vec![
        with_phone(&env, &read, "+4791234567"),
        deletion(&read),
        // Only the deletion of this one is left in the topic.
        deletion(&compacted),
        deletion(&in_flight),
        with_phone(&env, &after, "+4791234568"),
    ];
    env.produce(&events).await.unwrap();
    let w = env.start(sink_of(&i), "sms", &i);
    let ms = messages(&t.provider, &account, 3).await;
    wait_sent(&env, &i, 3).await;
    assert_eq!(w.stop().await, WorkerExit::Stopped);
    let counts = per_response(&t.provider.messages(&account).await);
    assert_eq!(ms.len(), 3, "{counts:?}");
    assert_eq!(counts.get(&read), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&after), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&in_flight), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&compacted), None, "{counts:?}");
    let c = env.pool.get().await.unwrap();
    let states: Vec<(String, String, Option<String>)> = c
        .query(
            "SELECT response_id::text, state, error FROM sms_ledger WHERE integration_id = $1",
            &[&i.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let state = |id: &str| states.iter().find(|s| s.0 == id).cloned();
    assert_eq!(
        state(&compacted).map(|s| (s.1, s.2)),
        Some((
            "skipped".to_string(),
            Some("deleted before it was texted".to_string())
        )),
        "{states:?}"
    );
    assert_eq!(
        state(&read).map(|s| s.1),
        Some("sent".to_string()),
        "{states:?}"
    );
    assert!(
        env.dead_letters(1, Duration::from_secs(2)).await.is_empty(),
        "no dead letter"
    );
}

//! The operators' tools on the running pipeline: `collect replay` refills a re-pointed sheet
//! while new responses arrive, `collect dead-letters` lists and re-drives what a connector
//! could not write, `collect snapshot` re-emits a form the topics lost, `collect status`
//! tells how it all stands.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::providers::{Google, GoogleSheet, SECRET, Texts, collect, connector, load, redrive};
use common::{Proc, env, reader};
use serde_json::{Value, json};

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
    // Refused before anything changed: the integration is still active, its offsets where
    // they were.
    let after = collect(&e, &brokers, &status_args);
    let after: Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(after["integrations"][0]["status"], "active");
    assert_eq!(
        after["integrations"][0]["positions"],
        status["integrations"][0]["positions"]
    );
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
    let redrive_all = || redrive(&e, &brokers, &id);
    let report = redrive_all();
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
    redrive_all();
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
    // A form that does not exist is refused, and nothing reaches the topics.
    let before = records(&brokers, &[&responses, &forms]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collect"))
        .args(["snapshot", "--form", &uuid::Uuid::now_v7().to_string()])
        .envs(vars.iter().cloned())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no form"));
    assert_eq!(records(&brokers, &[&responses, &forms]), before);
    connect.kill9();
}

/// Records held by `topics`, all partitions together (from the watermarks).
fn records(brokers: &str, topics: &[&str]) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut n = 0;
    for topic in topics {
        let meta = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        for p in meta.topics()[0].partitions() {
            let (low, high) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap();
            n += high - low;
        }
    }
    n
}

/// Messages to each recipient in the SMS emulator's log.
async fn texts_to(texts: &Texts) -> BTreeMap<String, usize> {
    let all = texts
        .admin(reqwest::Method::GET, "messages", Value::Null)
        .await;
    let mut out = BTreeMap::new();
    for m in all.as_array().unwrap() {
        *out.entry(m["to"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_texts_only_responses_after_its_start_and_never_twice() {
    let e = env(json!({"title": "Thanks", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true},
        {"label": "Mobile", "type": "phone", "alias": "phone"}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let texts = Texts::start().await;
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let connect = connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;
    let past: Vec<String> = (1..=5).map(|i| format!("+1650253000{i}")).collect();
    for (i, p) in past.iter().enumerate() {
        e.submit(json!({"name": format!("past {i}"), "phone": p}))
            .await;
    }
    let attach = |start: Option<&str>| {
        let mut body = json!({
            "kind": "sms", "form_id": e.form_id(), "name": "thanks",
            "config": {"api_base_url": texts.base, "from": "+15005550006",
                       "to": {"question": "phone"}, "template": "Thanks {{name}}",
                       "rates": {"per_sender_per_second": 50}},
            "credentials": {"account_sid": texts.account["account_sid"],
                            "auth_token": texts.account["auth_token"]}
        });
        if let Some(s) = start {
            body["start"] = json!(s);
        }
        let (http, url, key) = (e.http.clone(), connect.url(), e.key.clone());
        async move {
            let r: Value = http
                .post(format!("{url}/v1/integrations"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_string()
        }
    };
    let wait_texted = |to: String| {
        let texts = &texts;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            while texts_to(texts).await.get(&to).copied().unwrap_or(0) == 0 {
                assert!(tokio::time::Instant::now() < deadline, "{to} never texted");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    let delete = |id: String| {
        let (http, url, key) = (e.http.clone(), connect.url(), e.key.clone());
        async move {
            let r = http
                .delete(format!("{url}/v1/integrations/{id}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    };

    // Attached with the kind's default start (its creation), deleted, attached again.
    let first = attach(None).await;
    e.submit(json!({"name": "new 1", "phone": "+16502530011"}))
        .await;
    wait_texted("+16502530011".into()).await;
    delete(first).await;
    let second = attach(None).await;
    e.submit(json!({"name": "new 2", "phone": "+16502530012"}))
        .await;
    wait_texted("+16502530012".into()).await;
    let got = texts_to(&texts).await;
    for p in &past {
        assert_eq!(got.get(p), None, "past respondent {p} texted: {got:?}");
    }
    assert_eq!(got.get("+16502530011"), Some(&1), "{got:?}");
    assert_eq!(got.get("+16502530012"), Some(&1), "{got:?}");

    // A replay of a notification says what it would send and changes nothing without the flag.
    let out = collect(&e, &brokers, &["replay", "--integration", &second]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--send-past-responses"), "{said}");

    // Attached again under the same name, asking for the whole history: the past
    // respondents get their one message now, the others nothing more (same form and purpose).
    delete(second).await;
    let _third = attach(Some("history")).await;
    for p in &past {
        wait_texted(p.clone()).await;
    }
    e.submit(json!({"name": "new 3", "phone": "+16502530013"}))
        .await;
    wait_texted("+16502530013".into()).await;
    let got = texts_to(&texts).await;
    assert!(
        got.values().all(|n| *n == 1),
        "someone texted twice: {got:?}"
    );
    assert_eq!(got.len(), 8, "{got:?}");
    connect.kill9();
}

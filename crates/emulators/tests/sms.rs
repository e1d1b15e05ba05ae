//! The SMS emulator driven over HTTP as a Twilio client would: form-encoded sends with basic
//! auth, Twilio's error codes, paging by `next_page_uri`, status callbacks, and the faults.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use collect_emulators::sms::{Emulator, serve};
use serde_json::{Value, json};

struct Sms {
    base: String,
    http: reqwest::Client,
    sid: String,
    token: String,
}

async fn start() -> Sms {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(serve(l, Emulator::new(&base), std::future::pending()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let a: Value = http
        .post(format!("{base}/emulator/accounts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Sms {
        sid: a["account_sid"].as_str().unwrap().into(),
        token: a["auth_token"].as_str().unwrap().into(),
        base,
        http,
    }
}

impl Sms {
    fn messages_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base, self.sid
        )
    }

    async fn send(&self, form: &[(&str, &str)]) -> Result<(u16, Value), reqwest::Error> {
        let r = self
            .http
            .post(self.messages_url())
            .basic_auth(&self.sid, Some(&self.token))
            .form(form)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
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

    async fn count(&self) -> usize {
        self.admin(reqwest::Method::GET, "messages", Value::Null)
            .await
            .as_array()
            .unwrap()
            .len()
    }
}

#[tokio::test]
async fn sends_list_fetch_and_twilio_errors() {
    let s = start().await;
    let (status, m) = s
        .send(&[
            ("To", "+4791234567"),
            ("From", "+15005550006"),
            ("Body", "Thanks, Ada"),
        ])
        .await
        .unwrap();
    assert_eq!(status, 201, "{m}");
    let sid = m["sid"].as_str().unwrap();
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
    assert_eq!(
        (
            m["status"].as_str(),
            m["to"].as_str(),
            m["num_segments"].as_str(),
            m["direction"].as_str()
        ),
        (
            Some("queued"),
            Some("+4791234567"),
            Some("1"),
            Some("outbound-api")
        )
    );
    assert!(
        m["date_created"].as_str().unwrap().ends_with("+0000"),
        "RFC 2822 dates"
    );
    let fetched: Value = s
        .http
        .get(format!(
            "{}/2010-04-01/Accounts/{}/Messages/{sid}.json",
            s.base, s.sid
        ))
        .basic_auth(&s.sid, Some(&s.token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["body"], "Thanks, Ada");

    // Every refusal: Twilio's status, code and message, and nothing stored.
    s.admin(
        reqwest::Method::POST,
        "opt-outs",
        json!({"number": "+4790000000"}),
    )
    .await;
    let long = "x".repeat(1601);
    let before = s.count().await;
    for (form, status, code) in [
        (
            vec![("To", "91234567"), ("From", "+15005550006"), ("Body", "x")],
            400,
            21211,
        ),
        (
            vec![("To", "+0123"), ("From", "+15005550006"), ("Body", "x")],
            400,
            21211,
        ),
        (vec![("From", "+15005550006"), ("Body", "x")], 400, 21604),
        (
            vec![("To", "+4791234567"), ("From", "bad"), ("Body", "x")],
            400,
            21212,
        ),
        (
            vec![("To", "+4791234567"), ("From", "+15005550006")],
            400,
            21602,
        ),
        (
            vec![
                ("To", "+4791234567"),
                ("From", "+15005550006"),
                ("Body", long.as_str()),
            ],
            400,
            21617,
        ),
        (
            vec![
                ("To", "+4790000000"),
                ("From", "+15005550006"),
                ("Body", "x"),
            ],
            400,
            21610,
        ),
    ] {
        let (got, body) = s.send(&form).await.unwrap();
        assert_eq!(
            (got, body["code"].as_u64()),
            (status, Some(code)),
            "{form:?}: {body}"
        );
        assert_eq!(
            body["more_info"],
            format!("https://www.twilio.com/docs/errors/{code}")
        );
        assert_eq!(s.count().await, before, "{form:?} stored a message");
    }
    let r = s
        .http
        .post(s.messages_url())
        .basic_auth(&s.sid, Some("wrong"))
        .form(&[
            ("To", "+4791234567"),
            ("From", "+15005550006"),
            ("Body", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 20003);
    let r = s
        .http
        .get(format!(
            "{}/2010-04-01/Accounts/{}/Messages/SM{}.json",
            s.base,
            s.sid,
            "0".repeat(32)
        ))
        .basic_auth(&s.sid, Some(&s.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(s.count().await, before);

    // Listing pages through every message to one number, newest first.
    for i in 0..5 {
        s.send(&[
            ("To", "+4791111111"),
            ("From", "+15005550006"),
            ("Body", &format!("n{i}")),
        ])
        .await
        .unwrap();
    }
    let mut url = format!("{}?To=%2B4791111111&PageSize=2", s.messages_url());
    let mut bodies = Vec::new();
    loop {
        let page: Value = s
            .http
            .get(&url)
            .basic_auth(&s.sid, Some(&s.token))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(page["messages"].as_array().unwrap().len() <= 2);
        bodies.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["body"].as_str().unwrap().to_string()),
        );
        match page["next_page_uri"].as_str() {
            Some(next) => url = format!("{}{next}", s.base),
            None => break,
        }
    }
    assert_eq!(bodies, ["n4", "n3", "n2", "n1", "n0"]);
}

#[tokio::test]
async fn rate_limits_callbacks_and_faults() {
    let s = start().await;
    // Per-sender limit: a burst from one number is cut at the limit, with 20429.
    s.admin(
        reqwest::Method::PUT,
        "limits",
        json!({"per_sender_per_second": 2, "account_per_second": 100}),
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        let (status, body) = s
            .send(&[
                ("To", "+4791234567"),
                ("From", "+16502530110"),
                ("Body", "x"),
            ])
            .await
            .unwrap();
        codes.push((status, body["code"].as_u64()));
    }
    assert!(codes.contains(&(429, Some(20429))), "{codes:?}");
    assert!(
        codes.iter().filter(|c| c.0 == 201).count() <= 4,
        "{codes:?}"
    );

    // Status callbacks: sent, then delivered, form-encoded as Twilio posts them.
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/status", l.local_addr().unwrap());
    let app = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/status",
            axum::routing::post(
                move |axum::Form(f): axum::Form<std::collections::HashMap<String, String>>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock()
                            .unwrap()
                            .push((f["MessageSid"].clone(), f["MessageStatus"].clone()));
                        ""
                    }
                },
            ),
        )
    };
    tokio::spawn(async move { axum::serve(l, app).await });
    s.admin(reqwest::Method::PUT, "faults", json!({"delivery_ms": 20}))
        .await;
    let (_, m) = s
        .send(&[
            ("To", "+4791234567"),
            ("From", "+16502530120"),
            ("Body", "hi"),
            ("StatusCallback", &hook),
        ])
        .await
        .unwrap();
    let sid = m["sid"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "callbacks: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (sid.clone(), "sent".to_string()),
            (sid, "delivered".to_string())
        ]
    );

    // 5xx before anything: nothing stored.
    let before = s.count().await;
    s.admin(
        reqwest::Method::PUT,
        "faults",
        json!({"error_rate": 1.0, "error_status": 503}),
    )
    .await;
    let (status, body) = s
        .send(&[
            ("To", "+4791234567"),
            ("From", "+16502530130"),
            ("Body", "x"),
        ])
        .await
        .unwrap();
    assert_eq!((status, body["status"].as_u64()), (503, Some(503)));
    assert_eq!(s.count().await, before);

    // Accepted, then the connection is dropped: the sender sees an error, the message exists.
    s.admin(
        reqwest::Method::PUT,
        "faults",
        json!({"drop_after_accept_rate": 1.0}),
    )
    .await;
    let r = s
        .send(&[
            ("To", "+4792222222"),
            ("From", "+16502530140"),
            ("Body", "ambiguous"),
        ])
        .await;
    assert!(r.is_err(), "the sender must not hear back: {r:?}");
    let all = s.admin(reqwest::Method::GET, "messages", Value::Null).await;
    assert_eq!(all.as_array().unwrap().last().unwrap()["body"], "ambiguous");
    let stats = s.admin(reqwest::Method::GET, "stats", Value::Null).await;
    assert_eq!(stats["dropped_after_accept"], 1);
    assert!(stats["throttled"].as_u64().unwrap() >= 1);
    // Bad knobs are refused.
    let r = s
        .http
        .put(format!("{}/emulator/faults", s.base))
        .json(&json!({"error_rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = s
        .http
        .put(format!("{}/emulator/limits", s.base))
        .json(&json!({"per_sender_per_second": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

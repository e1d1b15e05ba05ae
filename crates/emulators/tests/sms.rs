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

impl Sms {
    /// A GET of the API with the account's credentials: (status, Date header, body).
    async fn get(&self, path_and_query: &str) -> (u16, String, Value) {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .basic_auth(&self.sid, Some(&self.token))
            .send()
            .await
            .unwrap();
        let date = r.headers()["date"].to_str().unwrap().to_string();
        (r.status().as_u16(), date, r.json().await.unwrap())
    }

    fn path(&self) -> String {
        format!("/2010-04-01/Accounts/{}/Messages.json", self.sid)
    }

    /// The message log's entry for `sid`.
    async fn logged(&self, sid: &str) -> Value {
        let all = self
            .admin(reqwest::Method::GET, "messages", Value::Null)
            .await;
        all.as_array()
            .unwrap()
            .iter()
            .find(|m| m["sid"] == sid)
            .cloned()
            .unwrap_or_else(|| panic!("{sid} is not in the message log"))
    }

    /// Every message a list returns, following `next_page_uri`, and the page sizes seen.
    async fn list_all(&self, query: &str) -> (Vec<Value>, Vec<usize>) {
        let (mut url, mut all, mut sizes) = (format!("{}?{query}", self.path()), vec![], vec![]);
        loop {
            let (status, _, page) = self.get(&url).await;
            assert_eq!(status, 200, "{page}");
            let messages = page["messages"].as_array().unwrap();
            sizes.push(messages.len());
            all.extend(messages.iter().cloned());
            match page["next_page_uri"].as_str() {
                Some(next) => url = next.to_string(),
                None => return (all, sizes),
            }
        }
    }
}

#[tokio::test]
async fn to_and_from_are_phone_numbers_by_libphonenumber() {
    let s = start().await;
    let before = s.count().await;
    for (to, from, code) in [
        // Twilio's own helper library sent this and the emulator took it.
        ("+1234", "+15005550006", 21211),
        ("+10000000000", "+15005550006", 21211),
        // A UK number with its trunk 0 kept, and a US number in the fictional 555 exchange.
        ("+4402079460958", "+15005550006", 21211),
        ("+15555550100", "+15005550006", 21211),
        ("+4791234567", "+1234", 21212),
        ("+4791234567", "", 21603),
        // Twilio's magic test numbers answer as Twilio lists them.
        ("+15005550001", "+15005550006", 21211),
        ("+15005550009", "+15005550006", 21614),
        ("+15005550004", "+15005550006", 21610),
        ("+4791234567", "+15005550001", 21212),
    ] {
        let (status, body) = s
            .send(&[("To", to), ("From", from), ("Body", "x")])
            .await
            .unwrap();
        assert_eq!(
            (status, body["code"].as_u64()),
            (400, Some(code)),
            "{to} {from}: {body}"
        );
        assert_eq!(body["status"], 400);
        assert_eq!(
            body["more_info"],
            format!("https://www.twilio.com/docs/errors/{code}")
        );
        if code == 21211 {
            assert_eq!(
                body["message"],
                format!("The 'To' number {to} is not a valid phone number.")
            );
        }
    }
    assert_eq!(s.count().await, before, "a refused send was logged");
    let stats = s.admin(reqwest::Method::GET, "stats", Value::Null).await;
    assert_eq!(stats["rejected"], 10);

    // Valid numbers of several countries, the magic valid sender, and Ofcom's drama range.
    for to in [
        "+442079460958",
        "+16502530011",
        "+390669821234",
        "+447700900123",
        "+15005550100",
    ] {
        let (status, m) = s
            .send(&[("To", to), ("From", "+15005550006"), ("Body", "x")])
            .await
            .unwrap();
        assert_eq!(status, 201, "{to}: {m}");
        assert_eq!(s.logged(m["sid"].as_str().unwrap()).await["to"], to);
    }
    // Opt-outs take only valid numbers too.
    let r = s
        .http
        .post(format!("{}/emulator/opt-outs", s.base))
        .json(&json!({"number": "+1234"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn num_segments_in_gsm7_or_ucs2_as_twilio_counts_them() {
    let s = start().await;
    s.admin(
        reqwest::Method::PUT,
        "limits",
        json!({"per_sender_per_second": 1000, "account_per_second": 1000}),
    )
    .await;
    let ext = format!("{}{}", "a".repeat(153), "{}[]"); // 157 characters, 161 septets
    let cases = [
        ("x".repeat(160), "1", "GSM-7"),
        ("x".repeat(161), "2", "GSM-7"),
        ("x".repeat(306), "2", "GSM-7"),
        ("x".repeat(307), "3", "GSM-7"),
        ("x".repeat(1600), "11", "GSM-7"),
        ("€".repeat(80), "1", "GSM-7"),
        (ext.clone(), "2", "GSM-7"),
        ("Ærøskøbing ÄÖÜ §¿¡ Δ".to_string(), "1", "GSM-7"),
        ("`".to_string(), "1", "UCS-2"),
        ("ж".repeat(70), "1", "UCS-2"),
        ("ж".repeat(71), "2", "UCS-2"),
        ("ж".repeat(134), "2", "UCS-2"),
        ("ж".repeat(135), "3", "UCS-2"),
        ("😀".repeat(35), "1", "UCS-2"),
        ("😀".repeat(36), "2", "UCS-2"),
        ("😀".repeat(800), "25", "UCS-2"),
    ];
    for (body, segments, encoding) in &cases {
        let (status, m) = s
            .send(&[
                ("To", "+4791234567"),
                ("From", "+15005550006"),
                ("Body", body),
            ])
            .await
            .unwrap();
        assert_eq!(status, 201, "{m}");
        let sid = m["sid"].as_str().unwrap();
        let (_, _, fetched) = s
            .get(&format!(
                "/2010-04-01/Accounts/{}/Messages/{sid}.json",
                s.sid
            ))
            .await;
        let (all, _) = s.list_all("To=%2B4791234567&PageSize=1000").await;
        let listed = all.iter().find(|l| l["sid"] == sid).unwrap();
        let logged = s.logged(sid).await;
        let what = format!("{} chars", body.chars().count());
        // A string, as in Twilio's Message resource, in send, fetch, list and the log.
        for v in [&m, &fetched, listed, &logged] {
            assert_eq!(v["num_segments"], json!(segments), "{what}: {v}");
        }
        assert_eq!(logged["encoding"], *encoding, "{what}");
        assert_eq!(logged["body"], json!(body));
    }
    // 1600 characters is the limit; an emoji counts as two.
    let before = s.count().await;
    for body in ["x".repeat(1601), "😀".repeat(801)] {
        let (status, e) = s
            .send(&[
                ("To", "+4791234567"),
                ("From", "+15005550006"),
                ("Body", &body),
            ])
            .await
            .unwrap();
        assert_eq!((status, e["code"].as_u64()), (400, Some(21617)), "{e}");
    }
    assert_eq!(s.count().await, before);
}

/// Parses an HTTP `Date` (RFC 7231 IMF-fixdate).
fn http_date(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::NaiveDateTime::parse_from_str(s, "%a, %d %b %Y %H:%M:%S GMT")
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .and_utc()
}

fn rfc2822(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc2822(v.as_str().unwrap())
        .unwrap()
        .to_utc()
}

#[tokio::test]
async fn clock_offset_shifts_every_time_the_provider_reports() {
    let s = start().await;
    let near = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
        (a - b).num_seconds().abs() <= 5
    };
    // Without an offset, the Date header is this machine's time.
    let (status, date, _) = s.get(&s.path()).await;
    assert_eq!(status, 200);
    assert!(near(http_date(&date), chrono::Utc::now()), "{date}");

    for offset in [-7200_i64, 3 * 86400] {
        s.admin(
            reqwest::Method::PUT,
            "faults",
            json!({"clock_offset_secs": offset, "delivery_ms": 10}),
        )
        .await;
        let provider = chrono::Utc::now() + chrono::TimeDelta::seconds(offset);
        let r = s
            .http
            .post(s.messages_url())
            .basic_auth(&s.sid, Some(&s.token))
            .form(&[
                ("To", "+4791234567"),
                ("From", "+15005550006"),
                ("Body", "clock"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let date = http_date(r.headers()["date"].to_str().unwrap());
        assert!(near(date, provider), "Date {date} with offset {offset}");
        let m: Value = r.json().await.unwrap();
        assert!(near(rfc2822(&m["date_created"]), provider), "{m}");
        let sid = m["sid"].as_str().unwrap().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let logged = loop {
            let logged = s.logged(&sid).await;
            if logged["status"] == "delivered" {
                break logged;
            }
            assert!(tokio::time::Instant::now() < deadline, "{logged}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for k in ["date_created", "date_updated", "date_sent"] {
            assert!(near(rfc2822(&logged[k]), provider), "{k}: {logged}");
        }
        // Errors carry the provider's Date too.
        let r = s
            .http
            .get(s.messages_url())
            .basic_auth(&s.sid, Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert!(near(
            http_date(r.headers()["date"].to_str().unwrap()),
            provider
        ));

        // DateSent> decides by the provider's stamps: this machine's "a minute ago" finds
        // the message only when the provider's clock is ahead.
        let ago = (chrono::Utc::now() - chrono::TimeDelta::seconds(60))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let (found, _) = s
            .list_all(&format!("DateSent%3E={}", ago.replace(':', "%3A")))
            .await;
        let found = found.iter().any(|l| l["sid"] == sid.as_str());
        assert_eq!(found, offset > 0, "DateSent>{ago} with offset {offset}");
        let stamp = rfc2822(&logged["date_sent"])
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        for key in ["DateSent", "DateSent%3E", "DateSent%3C"] {
            let (at, _) = s.list_all(&format!("{key}={stamp}")).await;
            assert!(at.iter().any(|l| l["sid"] == sid.as_str()), "{key}={stamp}");
        }
    }
    // Offsets are bounded, and unreadable dates are refused rather than ignored.
    let r = s
        .http
        .put(format!("{}/emulator/faults", s.base))
        .json(&json!({"clock_offset_secs": i64::MAX}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (status, _, e) = s.get(&format!("{}?DateSent%3E=yesterday", s.path())).await;
    assert_eq!((status, e["code"].as_u64()), (400, Some(20001)), "{e}");
}

#[tokio::test]
async fn a_recipient_with_many_messages_pages_through_all_of_them() {
    let s = start().await;
    s.admin(
        reqwest::Method::PUT,
        "limits",
        json!({"per_sender_per_second": 1000, "account_per_second": 1000}),
    )
    .await;
    for i in 0..120 {
        for to in ["+4791111111", "+4792222222"] {
            let (status, m) = s
                .send(&[
                    ("To", to),
                    ("From", "+15005550006"),
                    ("Body", &format!("{to} {i}")),
                ])
                .await
                .unwrap();
            assert_eq!(status, 201, "{m}");
        }
    }
    let (all, sizes) = s.list_all("To=%2B4791111111&PageSize=50").await;
    assert_eq!(sizes, [50, 50, 20]);
    let bodies: Vec<&str> = all.iter().map(|m| m["body"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..120).rev().map(|i| format!("+4791111111 {i}")).collect();
    assert_eq!(
        bodies, expected,
        "newest first, each once, only that recipient"
    );
    // The default page is 50; today's messages by day, none before yesterday's end.
    let (_, sizes) = s.list_all("To=%2B4791111111").await;
    assert_eq!(sizes, [50, 50, 20]);
    // By day: a message not sent yet is found by its creation (a run across midnight GMT
    // splits the 120 between two days).
    let day_of = |m: &Value| {
        let stamp = if m["date_sent"].is_null() {
            &m["date_created"]
        } else {
            &m["date_sent"]
        };
        rfc2822(stamp).format("%Y-%m-%d").to_string()
    };
    let day = day_of(&all[0]);
    let (on_day, _) = s
        .list_all(&format!("To=%2B4791111111&DateSent={day}&PageSize=1000"))
        .await;
    let (after, _) = s
        .list_all(&format!("To=%2B4791111111&DateSent%3E={day}"))
        .await;
    let expected = all.iter().filter(|m| day_of(m) == day).count();
    assert!(expected > 0);
    assert_eq!((on_day.len(), after.len()), (expected, expected));
    // A page size over Twilio's 1000 is served 1000 a page; none is refused.
    let (status, _, page) = s
        .get(&format!("{}?To=%2B4791111111&PageSize=5000", s.path()))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (
            page["page_size"].as_u64(),
            page["messages"].as_array().unwrap().len()
        ),
        (Some(1000), 120)
    );
    assert!(page["next_page_uri"].is_null());
    let (status, _, e) = s.get(&format!("{}?PageSize=0", s.path())).await;
    assert_eq!((status, e["code"].as_u64()), (400, Some(20001)));
    let (before, _) = s.list_all("To=%2B4791111111&DateSent%3C=2001-01-01").await;
    assert!(before.is_empty());
}

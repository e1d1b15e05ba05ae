//! One response's journey as one OpenTelemetry trace, with real processes: `collect api`,
//! `collect cdc` and `collect connect` export spans over OTLP/HTTP (protobuf) to a receiver
//! in this test, which decodes OTLP's protobufs. A response submitted with the caller's W3C
//! `traceparent` reaches a Google Sheet and an SMS provider (the emulators, behind a
//! recording proxy); the test then finds, in the caller's trace, the API's server span, the
//! reader's `create` span and the connector's `process` spans, each the child of the one
//! before; the connector's `write` spans linked to them; the Google and Twilio requests
//! carrying a write span's `traceparent`; and the JSON logs of the API and the connector
//! carrying the trace and span ids of the span they were logged in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use common::providers::{Google, SECRET, Texts};
use common::{Proc, env, reader};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use serde_json::{Value, json};

/// A span as the receiver got it; ids in lowercase hex.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    kind: i32,
    links: Vec<(String, String)>,
    attributes: BTreeMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Got>>>;

fn text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    match &v.value {
        Some(V::StringValue(s)) => s.clone(),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Keeps the spans of an OTLP export request.
fn keep(req: ExportTraceServiceRequest, spans: &Spans) {
    let mut got = spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(Got {
                    service: service.clone(),
                    name: s.name,
                    trace: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    kind: s.kind,
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    attributes: s
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                a.value.as_ref().map(text).unwrap_or_default(),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
}

/// `POST /v1/traces` of OTLP/HTTP: an `ExportTraceServiceRequest` in protobuf.
async fn receive(State(spans): State<Spans>, body: Bytes) -> (StatusCode, HeaderMap, Vec<u8>) {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, HeaderMap::new(), Vec::new());
    };
    keep(req, &spans);
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/x-protobuf".parse().unwrap());
    (StatusCode::OK, headers, Vec::new())
}

/// OTLP/gRPC's `TraceService`.
struct GrpcReceiver(Spans);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(request.into_inner(), &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(spans.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, spans)
}

/// A request's path and its `traceparent` header.
type Seen = (String, Option<String>);

/// A proxy in front of a third party that records the `traceparent` of every request.
#[derive(Clone)]
struct Recorder {
    target: String,
    /// Path and `traceparent` of every request.
    seen: Arc<Mutex<Vec<Seen>>>,
    http: reqwest::Client,
}

async fn forward(
    State(r): State<Recorder>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes) {
    let tp = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    r.seen.lock().unwrap().push((uri.path().to_string(), tp));
    let mut req = r.http.request(
        method,
        format!(
            "{}{}",
            r.target,
            uri.path_and_query().map_or("/", |p| p.as_str())
        ),
    );
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    let resp = req.body(body).send().await.unwrap();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let mut out = HeaderMap::new();
    for (k, v) in resp.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            out.insert(k, v.clone());
        }
    }
    (status, out, resp.bytes().await.unwrap())
}

impl Recorder {
    async fn start(target: &str) -> (String, Self) {
        let r = Recorder {
            target: target.to_string(),
            seen: Arc::default(),
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(forward).with_state(r.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, r)
    }

    /// The trace ids of the `traceparent`s of requests whose path contains `part`.
    fn traced(&self, part: &str) -> Vec<(String, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.contains(part))
            .filter_map(|(_, tp)| {
                let tp = tp.as_deref()?;
                let mut it = tp.split('-');
                let (_, t, s) = (it.next()?, it.next()?, it.next()?);
                Some((t.to_string(), s.to_string()))
            })
            .collect()
    }
}

/// Waits (60 s at most) until `ok` holds of the spans received so far.
async fn wait_spans(spans: &Spans, what: &str, ok: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = spans.lock().unwrap().clone();
        if ok(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never arrived; spans: {:#?}",
            now.iter()
                .map(|s| (&s.service, &s.name, &s.trace))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JSON log lines of a process that carry `trace_id`.
fn traced_log_lines(p: &Proc) -> Vec<Value> {
    std::fs::read_to_string(&p.log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("trace_id").is_some())
        .collect()
}

/// The headers of the `nth` record (1-based) keyed `key` in `topic`, read from the beginning
/// (60 s at most).
async fn record_headers(
    brokers: &str,
    topic: &str,
    key: &str,
    nth: usize,
) -> BTreeMap<String, String> {
    use rdkafka::message::{Headers, Message};
    let consumer = common::from_beginning(brokers, topic, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "record {nth} of {key} never reached {topic}"
        );
        let got = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)));
        if let Some(Ok(m)) = got
            && m.key() == Some(key.as_bytes())
        {
            seen += 1;
            if seen == nth {
                return m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                                (h.key.to_string(), v.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            }
        }
    }
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_response_is_one_trace_from_the_api_to_google_and_twilio() {
    let e = env(json!({"title": "Bookings", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true},
        {"label": "Phone", "type": "phone", "alias": "phone", "required": true}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let (otlp, spans) = receiver().await;
    let google = Google::start().await;
    let gs = google.sheet().await;
    let texts = Texts::start().await;
    let (sheets_proxy, sheets_seen) = Recorder::start(&google.base).await;
    let (sms_proxy, sms_seen) = Recorder::start(&texts.base).await;

    let mut vars = e.process_env(&brokers);
    vars.retain(|(k, _)| k != "RUST_LOG");
    vars.extend(
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            (
                "RUST_LOG",
                "info,collect_api=debug,collect_connect=debug,librdkafka=warn,rdkafka=warn",
            ),
            ("COLLECT_SECRET_KEY", SECRET),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let api = Proc::start(&["api"], &vars, "COLLECT_API_LISTEN");
    api.wait("/readyz", |_| true).await;
    let cdc = Proc::start(
        &["cdc", "--partitions", "3", "--heartbeat-secs", "1"],
        &vars,
        "COLLECT_CDC_METRICS_LISTEN",
    );
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let connect = Proc::start(
        &["connect", "--poll-ms", "300", "--batch-max-wait-ms", "200"],
        &vars,
        "COLLECT_CONNECT_LISTEN",
    );
    connect.wait("/readyz", |_| true).await;
    let mut sheet = google.integration(&e, &gs);
    sheet["config"]["api_base_url"] = json!(sheets_proxy);
    let sms = json!({
        "kind": "sms", "form_id": e.form_id(), "name": "confirmations",
        "config": {"api_base_url": sms_proxy, "from": "+15005550006",
                   "to": {"question": "phone"},
                   "template": "Hi {{name}}, Ref {{response_id}}",
                   "reconcile_after_secs": 30},
        "credentials": {"account_sid": texts.account["account_sid"],
                        "auth_token": texts.account["auth_token"]}
    });
    for body in [sheet, sms] {
        e.attach(&connect, &body).await;
    }

    // The caller's own trace: the API continues it.
    let r = e
        .http
        .post(format!("{}/v1/forms/{}/responses", api.url(), e.form_id()))
        .bearer_auth(&e.key)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"answers": {"name": "Ada", "phone": "+442079460958"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The response reached both third parties.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !google
        .values(&gs.token, &gs.spreadsheet)
        .await
        .iter()
        .any(|row| row.iter().any(|c| c == &json!(id)))
    {
        assert!(tokio::time::Instant::now() < deadline, "no row for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while texts.per_response().await.get(&id) != Some(&1) {
        assert!(tokio::time::Instant::now() < deadline, "no SMS for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // API → reader → connector (both integrations), each span the child of the one before.
    let in_trace = |s: &Got| s.trace == CALLER_TRACE;
    let all = wait_spans(&spans, "the process spans of both integrations", |got| {
        got.iter()
            .filter(|s| in_trace(s) && s.name.starts_with("process "))
            .count()
            >= 2
    })
    .await;
    let server: Vec<&Got> = all
        .iter()
        .filter(|s| in_trace(s) && s.service == "collect-api")
        .collect();
    assert_eq!(server.len(), 1, "{server:#?}");
    let server = server[0];
    assert_eq!(
        server.parent, CALLER_SPAN,
        "the API continues the caller's trace"
    );
    assert_eq!(server.name, "POST /v1/forms/{form_id}/responses");
    assert_eq!(server.kind, 2, "server"); // SPAN_KIND_SERVER
    assert_eq!(server.attributes["http.response.status_code"], "201");
    let create: Vec<&Got> = all
        .iter()
        .filter(|s| in_trace(s) && s.service == "collect-cdc")
        .collect();
    assert_eq!(create.len(), 1, "{create:#?}");
    let create = create[0];
    assert_eq!(create.name, format!("create {}", e.topic("responses")));
    assert_eq!(
        create.parent, server.id,
        "the reader continues the stored context"
    );
    assert_eq!(create.kind, 4, "producer"); // SPAN_KIND_PRODUCER
    assert_eq!(create.attributes["messaging.system"], "kafka");
    assert_eq!(create.attributes["messaging.kafka.message.key"], id);
    let process: Vec<&Got> = all
        .iter()
        .filter(|s| in_trace(s) && s.service == "collect-connect")
        .collect();
    assert_eq!(process.len(), 2, "one per integration: {process:#?}");
    for p in &process {
        assert_eq!(p.name, format!("process {}", e.topic("responses")));
        assert_eq!(
            p.parent, create.id,
            "the connector continues the record's header"
        );
        assert_eq!(p.kind, 5, "consumer"); // SPAN_KIND_CONSUMER
        assert!(
            p.attributes["messaging.consumer.group.name"].starts_with("collect.integration."),
            "{p:#?}"
        );
    }

    // The reader's transaction span links to the create span.
    wait_spans(&spans, "the reader's send span", |got| {
        got.iter().any(|s| {
            s.service == "collect-cdc"
                && s.name == "send"
                && s.links
                    .contains(&(CALLER_TRACE.to_string(), create.id.clone()))
        })
    })
    .await;

    // Each integration's write span links to its process span, and the outbound requests
    // to Google and Twilio carry a write span's context.
    let all = wait_spans(&spans, "a write span linked to each process span", |got| {
        process.iter().all(|p| {
            got.iter().any(|s| {
                s.service == "collect-connect"
                    && s.name.starts_with("write ")
                    && s.links.contains(&(CALLER_TRACE.to_string(), p.id.clone()))
            })
        })
    })
    .await;
    let writes: Vec<&Got> = all
        .iter()
        .filter(|s| s.name.starts_with("write ") && s.links.iter().any(|l| l.0 == CALLER_TRACE))
        .collect();
    for (seen, kind, path) in [
        (&sheets_seen, "write sheets", "/v4/spreadsheets"),
        (&sms_seen, "write sms", "/Messages"),
    ] {
        let write = writes
            .iter()
            .find(|s| s.name == kind)
            .unwrap_or_else(|| panic!("no {kind} span: {writes:#?}"));
        let carried = seen.traced(path);
        assert!(
            carried.contains(&(write.trace.clone(), write.id.clone())),
            "no request to {path} carried the {kind} span's context: {carried:?}"
        );
    }

    // JSON logs carry the ids of the span they were logged in.
    let api_lines = traced_log_lines(&api);
    assert!(
        api_lines
            .iter()
            .any(|l| l["trace_id"] == CALLER_TRACE && l["span_id"] == server.id.as_str()),
        "no API log line with the request span's ids"
    );
    let connect_lines = traced_log_lines(&connect);
    for w in &writes {
        assert!(
            connect_lines
                .iter()
                .any(|l| l["trace_id"] == w.trace.as_str() && l["span_id"] == w.id.as_str()),
            "no connector log line with the ids of {}",
            w.name
        );
    }

    // No credential reached a log line or a span: the API key, the SMS auth token, the
    // service account's private key, the key that seals credentials.
    let private_key = gs.key["private_key"].as_str().unwrap();
    let secrets = [
        e.key.clone(),
        texts.account["auth_token"].as_str().unwrap().to_string(),
        private_key
            .lines()
            .find(|l| l.len() > 40 && !l.starts_with("-----"))
            .unwrap()
            .to_string(),
        SECRET.to_string(),
    ];
    let spans_text = format!("{:?}", spans.lock().unwrap());
    for p in [&api, &cdc, &connect] {
        let log = std::fs::read_to_string(&p.log).unwrap();
        for secret in &secrets {
            assert!(
                !log.contains(secret.as_str()),
                "a credential is in {}",
                p.log.display()
            );
            assert!(
                !spans_text.contains(secret.as_str()),
                "a credential is in a span"
            );
        }
    }
    drop((api, cdc, connect));
}

/// OTLP over gRPC: the API exports its server span to a `TraceService` in this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_otlp_grpc_too() {
    let e = env(json!({"title": "Grpc", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let spans: Spans = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", l.local_addr().unwrap());
    let service = TraceServiceServer::new(GrpcReceiver(spans.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let mut vars = e.process_env("127.0.0.1:9");
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), otlp));
    vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()));
    vars.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    vars.push(("OTEL_SERVICE_NAME".into(), "forms-api".into()));
    let api = Proc::start(&["api"], &vars, "COLLECT_API_LISTEN");
    api.wait("/readyz", |_| true).await;
    let r = e
        .http
        .post(format!("{}/v1/forms/{}/responses", api.url(), e.form_id()))
        .bearer_auth(&e.key)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"answers": {"name": "Ada"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = wait_spans(&spans, "the API's server span over gRPC", |got| {
        got.iter().any(|s| s.trace == CALLER_TRACE)
    })
    .await;
    let server = got.iter().find(|s| s.trace == CALLER_TRACE).unwrap();
    assert_eq!(server.parent, CALLER_SPAN);
    assert_eq!(server.service, "forms-api", "OTEL_SERVICE_NAME is honoured");
    assert_eq!(server.name, "POST /v1/forms/{form_id}/responses");
}

/// A reader that does not trace copies a stored `traceparent` into the record header
/// unchanged, and an unsupported trace setting only turns traces off, with a warning that
/// names the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untraced_readers_pass_the_context_on_and_bad_otel_settings_only_turn_traces_off() {
    let e = env(json!({"title": "Plain", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let mut vars = e.process_env(&brokers);
    vars.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        "http://127.0.0.1:9".into(),
    ));
    vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()));
    // An unusable trace setting turns traces off with a warning; the process serves.
    let api = Proc::start(&["api"], &vars, "COLLECT_API_LISTEN");
    api.wait("/readyz", |_| true).await;
    let log = std::fs::read_to_string(&api.log).unwrap();
    assert!(
        log.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json") && log.contains("traces are off"),
        "{log}"
    );
    drop(api);

    // Untraced: the reader copies a stored context into the record's header.
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let id = e.submit(json!({"name": "Grace"})).await;
    let tp = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let db = e.db.connect().await.unwrap();
    db.execute(
        "UPDATE responses SET trace_context = $1, revision = revision + 1 WHERE id = $2::text::uuid",
        &[&tp, &id],
    )
    .await
    .unwrap();
    let headers = record_headers(&brokers, &e.topic("responses"), &id, 2).await;
    assert_eq!(headers.get("traceparent"), Some(&tp), "{headers:?}");
}

//! The registry over HTTP against real Postgres: Confluent's paths, bodies and error codes,
//! bad input that changes nothing, ids that survive a restart, and schema_registry_converter
//! (a Confluent client we did not write) working against it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use collect_store::{PoolSettings, connect_pool};
use reqwest::StatusCode;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::{Value, json};

struct Reg {
    base: String,
    http: reqwest::Client,
    db: tokio_postgres::Client,
    url: String,
}

async fn start_on(url: &str) -> String {
    let pool = connect_pool(url, &PoolSettings::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(collect_registry::serve(
        listener,
        pool,
        std::future::pending(),
    ));
    base
}

impl Reg {
    async fn new() -> Reg {
        let db = collect_testkit::fresh_db().await.unwrap();
        Reg {
            base: start_on(&db.url).await,
            http: reqwest::Client::new(),
            db: db.connect().await.unwrap(),
            url: db.url,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        assert_eq!(
            resp.headers()["content-type"],
            "application/vnd.schemaregistry.v1+json"
        );
        (status, resp.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn rows(&self) -> (i64, i64, i64) {
        let r = self
            .db
            .query_one(
                "SELECT (SELECT count(*) FROM registry_schemas), (SELECT count(*) FROM registry_versions),
                        (SELECT count(*) FROM registry_config)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    }
}

fn record(fields: Value) -> Value {
    json!({"schema": json!({"type": "record", "name": "R", "namespace": "t", "fields": fields}).to_string()})
}

#[track_caller]
fn code(reply: &(StatusCode, Value), status: u16, error_code: u64) {
    assert_eq!(reply.0.as_u16(), status, "{}", reply.1);
    assert_eq!(reply.1["error_code"], error_code, "{}", reply.1);
    assert!(reply.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn register_look_up_version_and_evolve() {
    let r = Reg::new().await;
    let v1 = record(json!([{"name": "a", "type": "string"}]));
    let (s, body) = r.post("/subjects/orders-value/versions", v1.clone()).await;
    assert_eq!(s, 200, "{body}");
    let id1 = body["id"].as_i64().unwrap();
    // Same schema again (whitespace differs): same id, no new version.
    let spaced = json!({"schema": "{ \"type\": \"record\", \"name\": \"R\", \"namespace\": \"t\", \"fields\": [ {\"name\": \"a\", \"type\": \"string\"} ] }"});
    assert_eq!(
        r.post("/subjects/orders-value/versions", spaced).await.1["id"],
        id1
    );
    assert_eq!(r.get("/subjects/orders-value/versions").await.1, json!([1]));
    // The same schema under another subject keeps its global id.
    assert_eq!(
        r.post("/subjects/other-value/versions", v1.clone()).await.1["id"],
        id1
    );

    // BACKWARD by default: a new field with a default is fine, one without is refused.
    let v2 = record(
        json!([{"name": "a", "type": "string"}, {"name": "b", "type": "int", "default": 0}]),
    );
    let id2 = r
        .post("/subjects/orders-value/versions", v2.clone())
        .await
        .1["id"]
        .as_i64()
        .unwrap();
    assert_ne!(id1, id2);
    let before = r.rows().await;
    let bad = record(json!([{"name": "a", "type": "string"}, {"name": "c", "type": "int"}]));
    code(
        &r.post("/subjects/orders-value/versions", bad.clone()).await,
        409,
        409,
    );
    assert_eq!(r.rows().await, before);
    let compat = r
        .post(
            "/compatibility/subjects/orders-value/versions/latest?verbose=true",
            bad.clone(),
        )
        .await;
    assert_eq!(compat.1["is_compatible"], false);
    assert!(!compat.1["messages"].as_array().unwrap().is_empty());
    let compat = r
        .post(
            "/compatibility/subjects/orders-value/versions/latest",
            v2.clone(),
        )
        .await;
    assert_eq!(compat.1, json!({"is_compatible": true}));

    // Reads.
    let latest = r.get("/subjects/orders-value/versions/latest").await.1;
    assert_eq!(
        (latest["version"].as_i64(), latest["id"].as_i64()),
        (Some(2), Some(id2))
    );
    assert_eq!(latest["subject"], "orders-value");
    let first = r.get("/subjects/orders-value/versions/1").await.1;
    assert_eq!(first["id"].as_i64(), Some(id1));
    let by_id = r.get(&format!("/schemas/ids/{id2}")).await.1;
    let parsed: Value = serde_json::from_str(by_id["schema"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["fields"][1]["name"], "b");
    assert_eq!(
        r.get(&format!("/schemas/ids/{id2}/schema")).await.1["name"],
        "R"
    );
    assert_eq!(
        r.get(&format!("/schemas/ids/{id1}/subjects")).await.1,
        json!(["orders-value", "other-value"])
    );
    assert_eq!(
        r.get(&format!("/schemas/ids/{id1}/versions")).await.1,
        json!([{"subject": "orders-value", "version": 1}, {"subject": "other-value", "version": 1}])
    );
    assert_eq!(
        r.get("/subjects").await.1,
        json!(["orders-value", "other-value"])
    );
    let found = r.post("/subjects/orders-value", v1.clone()).await;
    assert_eq!(
        (found.1["version"].as_i64(), found.1["id"].as_i64()),
        (Some(1), Some(id1))
    );
    assert_eq!(r.get("/schemas/types").await.1, json!(["AVRO"]));

    // Config: per subject overrides global; NONE accepts the incompatible schema.
    assert_eq!(
        r.get("/config").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    code(&r.get("/config/orders-value").await, 404, 40408);
    assert_eq!(
        r.get("/config/orders-value?defaultToGlobal=true").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    let set = r
        .call(
            reqwest::Method::PUT,
            "/config/orders-value",
            Some(json!({"compatibility": "NONE"})),
        )
        .await;
    assert_eq!(set.1, json!({"compatibility": "NONE"}));
    assert_eq!(r.post("/subjects/orders-value/versions", bad).await.0, 200);
    let del = r
        .call(reqwest::Method::DELETE, "/config/orders-value", None)
        .await;
    assert_eq!(del.1, json!({"compatibilityLevel": "NONE"}));
    let set = r
        .call(
            reqwest::Method::PUT,
            "/config",
            Some(json!({"compatibility": "FULL_TRANSITIVE"})),
        )
        .await;
    assert_eq!(set.1, json!({"compatibility": "FULL_TRANSITIVE"}));

    // Soft delete, then permanent.
    let deleted = r
        .call(reqwest::Method::DELETE, "/subjects/other-value", None)
        .await;
    assert_eq!(deleted.1, json!([1]));
    code(&r.get("/subjects/other-value/versions").await, 404, 40401);
    assert_eq!(
        r.get("/subjects?deleted=true").await.1,
        json!(["orders-value", "other-value"])
    );
    let gone = r
        .call(
            reqwest::Method::DELETE,
            "/subjects/other-value?permanent=true",
            None,
        )
        .await;
    assert_eq!(gone.1, json!([1]));
    assert_eq!(
        r.get("/subjects?deleted=true").await.1,
        json!(["orders-value"])
    );
    // The schema itself keeps its id (other subjects use it, and old events name it).
    assert_eq!(r.get(&format!("/schemas/ids/{id1}")).await.0, 200);
}

#[tokio::test]
async fn bad_requests_get_confluent_codes_and_change_nothing() {
    let r = Reg::new().await;
    r.post(
        "/subjects/s-value/versions",
        record(json!([{"name": "a", "type": "string"}])),
    )
    .await;
    let before = r.rows().await;
    let raw = |body: &'static str| {
        r.http
            .post(format!("{}/subjects/s-value/versions", r.base))
            .header("Content-Type", "application/json")
            .body(body)
    };
    for (name, reply, status, ec) in [
        ("not JSON", { let x = raw("{\"schema\": ").send().await.unwrap(); (x.status(), x.json::<Value>().await.unwrap()) }, 400, 400),
        ("no schema field", { let x = raw("{\"schemaa\": \"x\"}").send().await.unwrap(); (x.status(), x.json().await.unwrap()) }, 400, 400),
        ("schema not JSON", r.post("/subjects/s-value/versions", json!({"schema": "{not json"})).await, 422, 42201),
        ("schema not Avro", r.post("/subjects/s-value/versions", json!({"schema": "{\"type\": \"recordd\"}"})).await, 422, 42201),
        ("record without fields", r.post("/subjects/s-value/versions", json!({"schema": "{\"type\": \"record\", \"name\": \"X\"}"})).await, 422, 42201),
        ("protobuf", r.post("/subjects/s-value/versions", json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"})).await, 422, 42201),
        ("references", r.post("/subjects/s-value/versions", json!({"schema": "\"string\"", "references": [{"name": "x", "subject": "y", "version": 1}]})).await, 422, 42201),
        ("unknown id", r.get("/schemas/ids/999").await, 404, 40403),
        ("bad id", r.get("/schemas/ids/abc").await, 404, 40403),
        ("unknown subject", r.get("/subjects/nope/versions").await, 404, 40401),
        ("unknown version", r.get("/subjects/s-value/versions/7").await, 404, 40402),
        ("bad version", r.get("/subjects/s-value/versions/zero").await, 422, 42202),
        ("negative version", r.get("/subjects/s-value/versions/-5").await, 422, 42202),
        ("lookup of an unknown schema", r.post("/subjects/s-value", record(json!([{"name": "z", "type": "long"}]))).await, 404, 40403),
        ("lookup in an unknown subject", r.post("/subjects/nope", record(json!([]))).await, 404, 40401),
        ("bad level", r.call(reqwest::Method::PUT, "/config", Some(json!({"compatibility": "SIDEWAYS"}))).await, 422, 42203),
        ("bad level body", r.call(reqwest::Method::PUT, "/config/s-value", Some(json!({"level": "NONE"}))).await, 400, 400),
        ("permanent delete first", r.call(reqwest::Method::DELETE, "/subjects/s-value?permanent=true", None).await, 404, 40405),
        ("delete unknown subject", r.call(reqwest::Method::DELETE, "/subjects/nope", None).await, 404, 40401),
        ("delete unknown config", r.call(reqwest::Method::DELETE, "/config/nope", None).await, 404, 40408),
    ] {
        assert_eq!(reply.0.as_u16(), status, "{name}: {}", reply.1);
        assert_eq!(reply.1["error_code"], ec, "{name}: {}", reply.1);
        assert_eq!(r.rows().await, before, "{name} changed the store");
    }
    assert_eq!(
        r.get("/config").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
}

#[tokio::test]
async fn ids_survive_a_restart_of_the_registry() {
    let r = Reg::new().await;
    let id = r
        .post(
            "/subjects/k-value/versions",
            record(json!([{"name": "a", "type": "int"}])),
        )
        .await
        .1["id"]
        .as_i64()
        .unwrap();
    let restarted = start_on(&r.url).await;
    let body: Value = reqwest::get(format!("{restarted}/schemas/ids/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body["schema"].as_str().unwrap().contains("\"name\":\"a\""));
    let again: Value = r
        .http
        .post(format!("{restarted}/subjects/k2-value/versions"))
        .json(&record(json!([{"name": "b", "type": "int"}])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(again["id"].as_i64().unwrap() > id, "ids are never reused");
}

#[tokio::test]
async fn schema_registry_converter_round_trips_through_it() {
    let r = Reg::new().await;
    let sr = SrSettings::new(r.base.clone());
    let schema = collect_events::RESPONSE_EVENT_SCHEMA;
    let registered = post_schema(
        &sr,
        "responses-value".into(),
        SuppliedSchema::new(
            Some("io.collect.events.ResponseEvent".into()),
            SchemaType::Avro,
            schema.into(),
        ),
    )
    .await
    .unwrap();
    let fetched = get_schema_by_id(registered.id, &sr).await.unwrap();
    assert!(fetched.schema.contains("ResponseEvent"));

    // Encode with the converter's encoder, decode with ours, and the reverse.
    let event = collect_events::ResponseEvent {
        event_id: "1/2".into(),
        op: collect_events::ResponseOp::Created,
        response_id: "r".into(),
        form_id: "f".into(),
        org_id: "o".into(),
        revision: 1,
        source: "api".into(),
        metadata_json: "{}".into(),
        answers: vec![],
        submitted_at: 1,
        updated_at: 2,
        deleted_at: None,
        commit_lsn: 3,
        commit_ts: 4,
        xid: 5,
    };
    let encoder = AvroEncoder::new(sr.clone());
    let bytes = encoder
        .encode_struct(
            &event,
            &SubjectNameStrategy::TopicNameStrategy("responses".into(), false),
        )
        .await
        .unwrap();
    let (id, payload) = collect_events::split_frame(&bytes).unwrap();
    assert_eq!(id, registered.id);
    let parsed = apache_avro::Schema::parse_str(schema).unwrap();
    let ours: collect_events::ResponseEvent =
        collect_events::decode(payload, &parsed, None).unwrap();
    assert_eq!(ours, event);
    let mine = collect_events::encode(registered.id, &parsed, &event).unwrap();
    let decoded = AvroDecoder::new(sr).decode(Some(&mine)).await.unwrap();
    let theirs: collect_events::ResponseEvent = apache_avro::from_value(&decoded.value).unwrap();
    assert_eq!(theirs, event);
}

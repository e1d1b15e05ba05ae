//! `collect registry`: the part of the Confluent Schema Registry REST API that Avro clients
//! use, stored in Postgres so that schema ids survive restarts.
//!
//! Served: register and look up schemas under subjects, get schemas by global id, list
//! subjects and versions, soft and permanent deletion, compatibility checks and the global
//! and per-subject compatibility configuration (NONE, BACKWARD, FORWARD, FULL and their
//! transitive forms, default BACKWARD), with Confluent's error codes and media type. Only
//! Avro schemas without references are accepted. Production may point at Confluent Schema
//! Registry, Karapace or Apicurio instead: the clients in this project only use these calls.

pub mod compat;
mod error;
mod store;

use std::future::Future;

use apache_avro::Schema;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use deadpool_postgres::Pool;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use compat::Level;
pub use error::RegistryError;
pub use store::{Store, SubjectVersion};

/// Media type of every answer.
pub const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub(crate) fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    reply(StatusCode::OK, body)
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The routes, over a pool on a database migrated with the project's migrations.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_schema))
        .route("/schemas/ids/{id}/versions", get(versions_of_schema))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(raw_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route("/config", get(global_config).put(set_global_config))
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(set_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(|| async { ok(json!({"mode": "READWRITE"})) }))
        .route(
            "/mode/{subject}",
            get(|| async { ok(json!({"mode": "READWRITE"})) }),
        )
        .route("/healthz", get(|| async { ok(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            reply(
                StatusCode::NOT_FOUND,
                json!({"error_code": 404, "message": "HTTP 404 Not Found"}),
            )
        })
        .with_state(Store::new(pool))
}

/// Serves the registry on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    pool: Pool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(pool))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(store): State<Store>) -> Result<Response> {
    store.ping().await?;
    Ok(ok(json!({"status": "ready"})))
}

fn parse_id(raw: &str) -> Result<i32> {
    raw.parse::<i32>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| RegistryError::SchemaNotFound(raw.to_string()))
}

/// A version path segment: a positive number, `latest` or `-1`.
enum VersionRef {
    Latest,
    Number(i32),
}

fn parse_version(raw: &str) -> Result<VersionRef> {
    match raw {
        "latest" | "-1" => Ok(VersionRef::Latest),
        n => n
            .parse::<i32>()
            .ok()
            .filter(|v| *v >= 1)
            .map(VersionRef::Number)
            .ok_or_else(|| RegistryError::InvalidVersion(raw.to_string())),
    }
}

async fn find_version(
    store: &Store,
    subject: &str,
    raw: &str,
    deleted: bool,
) -> Result<SubjectVersion> {
    let wanted = parse_version(raw)?;
    let all = store.versions(subject, deleted).await?;
    if all.is_empty() {
        return Err(RegistryError::SubjectNotFound(subject.to_string()));
    }
    let found = match wanted {
        VersionRef::Latest => all.iter().rev().find(|v| !v.deleted),
        VersionRef::Number(n) => all.iter().find(|v| v.version == n),
    };
    found.cloned().ok_or(match wanted {
        VersionRef::Number(n) => RegistryError::VersionNotFound(n),
        VersionRef::Latest => RegistryError::SubjectNotFound(subject.to_string()),
    })
}

fn version_json(v: &SubjectVersion) -> Value {
    json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema})
}

/// Query flags Confluent accepts on several calls. Like Confluent's server, booleans are
/// case-insensitive (`verbose=True` from the Python client) and unknown parameters
/// (`normalize`, `format`, ...) are ignored.
#[derive(Debug, Default)]
struct Flags {
    deleted: bool,
    permanent: bool,
    verbose: bool,
    default_to_global: bool,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Flags {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let mut flags = Flags::default();
        for pair in parts.uri.query().unwrap_or_default().split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
            let on = v.eq_ignore_ascii_case("true");
            match k {
                "deleted" => flags.deleted = on,
                "permanent" => flags.permanent = on,
                "verbose" => flags.verbose = on,
                "defaultToGlobal" => flags.default_to_global = on,
                _ => {}
            }
        }
        Ok(flags)
    }
}

/// The body of register, lookup and compatibility calls. Unknown fields (metadata, ruleSet,
/// normalize, ...) sent by newer clients are ignored, as Confluent's own server does for
/// features it is not configured for.
#[derive(Debug, Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn parse_body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::BadRequest(format!("invalid request body: {e}")))
}

/// Validates a submitted schema; returns its parsed form and compact text.
fn parse_schema(body: &SchemaBody) -> Result<(Schema, String)> {
    match body.schema_type.as_deref() {
        None | Some("AVRO") => {}
        Some(other) => {
            return Err(RegistryError::InvalidSchema(format!(
                "schema type {other} is not supported; this registry stores AVRO schemas"
            )));
        }
    }
    if !body.references.is_empty() {
        return Err(RegistryError::InvalidSchema(
            "schema references are not supported".into(),
        ));
    }
    let json: Value = serde_json::from_str(&body.schema)
        .map_err(|e| RegistryError::InvalidSchema(format!("not JSON: {e}")))?;
    let text = json.to_string();
    let schema =
        Schema::parse_str(&text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
    Ok((schema, text))
}

fn parse_stored(text: &str) -> Result<Schema> {
    Schema::parse_str(text)
        .map_err(|e| RegistryError::Store(format!("stored schema does not parse: {e}")))
}

async fn schema_by_id(State(store): State<Store>, Path(id): Path<String>) -> Result<Response> {
    let schema = store
        .schema(parse_id(&id)?)
        .await?
        .ok_or(RegistryError::SchemaNotFound(id))?;
    Ok(ok(json!({ "schema": schema })))
}

async fn raw_schema_by_id(State(store): State<Store>, Path(id): Path<String>) -> Result<Response> {
    let schema = store
        .schema(parse_id(&id)?)
        .await?
        .ok_or(RegistryError::SchemaNotFound(id))?;
    Ok(reply(
        StatusCode::OK,
        serde_json::from_str(&schema).unwrap_or(Value::String(schema)),
    ))
}

async fn subjects_of_schema(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Response> {
    let n = parse_id(&id)?;
    store
        .schema(n)
        .await?
        .ok_or(RegistryError::SchemaNotFound(id))?;
    let mut subjects: Vec<String> = store
        .versions_of_schema(n)
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    Ok(ok(json!(subjects)))
}

async fn versions_of_schema(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Response> {
    let n = parse_id(&id)?;
    store
        .schema(n)
        .await?
        .ok_or(RegistryError::SchemaNotFound(id))?;
    let pairs: Vec<Value> = store
        .versions_of_schema(n)
        .await?
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(ok(json!(pairs)))
}

async fn subjects(State(store): State<Store>, flags: Flags) -> Result<Response> {
    Ok(ok(json!(store.subjects(flags.deleted).await?)))
}

async fn versions(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
) -> Result<Response> {
    let all = store.versions(&subject, flags.deleted).await?;
    if all.is_empty() {
        return Err(RegistryError::SubjectNotFound(subject));
    }
    Ok(ok(json!(all.iter().map(|v| v.version).collect::<Vec<_>>())))
}

async fn register(
    State(store): State<Store>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let body: SchemaBody = parse_body(&body)?;
    let (schema, text) = parse_schema(&body)?;
    let id = store
        .register(&subject, "AVRO", &text, |level, existing| {
            let old: Vec<Schema> = existing
                .iter()
                .filter_map(|v| Schema::parse_str(&v.schema).ok())
                .collect();
            compat::check(level, &schema, &old)
        })
        .await?;
    tracing::info!(subject, id, "schema registered");
    Ok(ok(json!({ "id": id })))
}

async fn lookup(
    State(store): State<Store>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let body: SchemaBody = parse_body(&body)?;
    let (_, text) = parse_schema(&body)?;
    let all = store.versions(&subject, false).await?;
    if all.is_empty() {
        return Err(RegistryError::SubjectNotFound(subject));
    }
    let v = all
        .iter()
        .find(|v| v.schema == text)
        .ok_or_else(|| RegistryError::SchemaNotFound(format!("under subject '{subject}'")))?;
    Ok(ok(version_json(v)))
}

async fn version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
) -> Result<Response> {
    Ok(ok(version_json(
        &find_version(&store, &subject, &version, flags.deleted).await?,
    )))
}

async fn raw_version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response> {
    let v = find_version(&store, &subject, &version, false).await?;
    Ok(reply(
        StatusCode::OK,
        serde_json::from_str(&v.schema).unwrap_or(Value::String(v.schema)),
    ))
}

async fn referenced_by(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response> {
    find_version(&store, &subject, &version, false).await?;
    Ok(ok(json!([])))
}

async fn delete_subject(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
) -> Result<Response> {
    Ok(ok(json!(
        store.delete(&subject, None, flags.permanent).await?
    )))
}

async fn delete_version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
) -> Result<Response> {
    let n = match parse_version(&version)? {
        VersionRef::Number(n) => n,
        VersionRef::Latest => {
            find_version(&store, &subject, "latest", false)
                .await?
                .version
        }
    };
    let done = store.delete(&subject, Some(n), flags.permanent).await?;
    Ok(ok(json!(done.first().copied().unwrap_or(n))))
}

fn compatibility_answer(problems: Vec<String>, verbose: bool) -> Response {
    let mut body = json!({"is_compatible": problems.is_empty()});
    if verbose {
        body["messages"] = json!(problems);
    }
    ok(body)
}

async fn effective_level(store: &Store, subject: &str) -> Result<Level> {
    Ok(match store.config(Some(subject)).await? {
        Some(l) => l,
        None => store.config(None).await?.unwrap_or(Level::Backward),
    })
}

async fn compatibility(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
    body: Bytes,
) -> Result<Response> {
    let body: SchemaBody = parse_body(&body)?;
    let (schema, _) = parse_schema(&body)?;
    let level = effective_level(&store, &subject).await?;
    let against = match find_version(&store, &subject, &version, false).await {
        Ok(v) => vec![parse_stored(&v.schema)?],
        Err(RegistryError::SubjectNotFound(_))
            if matches!(parse_version(&version)?, VersionRef::Latest) =>
        {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    // Against one given version, the direction of the level applies, not its transitivity.
    let direct = match level {
        Level::BackwardTransitive => Level::Backward,
        Level::ForwardTransitive => Level::Forward,
        Level::FullTransitive => Level::Full,
        l => l,
    };
    Ok(compatibility_answer(
        compat::check(direct, &schema, &against),
        flags.verbose,
    ))
}

async fn compatibility_all(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
    body: Bytes,
) -> Result<Response> {
    let body: SchemaBody = parse_body(&body)?;
    let (schema, _) = parse_schema(&body)?;
    let level = effective_level(&store, &subject).await?;
    let existing = store
        .versions(&subject, false)
        .await?
        .iter()
        .map(|v| parse_stored(&v.schema))
        .collect::<Result<Vec<_>>>()?;
    Ok(compatibility_answer(
        compat::check(level, &schema, &existing),
        flags.verbose,
    ))
}

/// The body of config updates.
#[derive(Debug, Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn parse_level(bytes: &Bytes) -> Result<Level> {
    let body: ConfigBody = parse_body(bytes)?;
    Level::parse(&body.compatibility).ok_or(RegistryError::InvalidCompatibility(body.compatibility))
}

async fn global_config(State(store): State<Store>) -> Result<Response> {
    let level = store.config(None).await?.unwrap_or(Level::Backward);
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

async fn set_global_config(State(store): State<Store>, body: Bytes) -> Result<Response> {
    let level = parse_level(&body)?;
    store.set_config(None, level).await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn subject_config(
    State(store): State<Store>,
    Path(subject): Path<String>,
    flags: Flags,
) -> Result<Response> {
    let level = match store.config(Some(&subject)).await? {
        Some(l) => l,
        None if flags.default_to_global => store.config(None).await?.unwrap_or(Level::Backward),
        None => return Err(RegistryError::NoSubjectConfig(subject)),
    };
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

async fn set_subject_config(
    State(store): State<Store>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let level = parse_level(&body)?;
    store.set_config(Some(&subject), level).await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn delete_subject_config(
    State(store): State<Store>,
    Path(subject): Path<String>,
) -> Result<Response> {
    let old = store
        .delete_config(&subject)
        .await?
        .ok_or_else(|| RegistryError::NoSubjectConfig(subject.clone()))?;
    Ok(ok(json!({"compatibilityLevel": old.as_str()})))
}

//! Kinds of integration and the one place they are registered.
//!
//! A connector crate implements [`Kind`] (its name, how its configuration is validated, how
//! its sink is built). The binary lists the kinds it ships with [`kinds!`]:
//!
//! ```ignore
//! collect_connect::kinds!(pub Installed { collect_sheets::Sheets, collect_sms::Sms });
//! ```
//!
//! Adding a kind is its own crate plus one entry in that list.

use std::future::Future;

use collect_model::FieldError;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::sink::Sink;
use crate::worker::{Job, WorkerExit};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    /// Fields that do not fit, each with a reason.
    #[error("invalid: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The third party refused the credentials (e.g. an expired authorization code).
    #[error("credentials refused: {0}")]
    Refused(String),
    /// No kind of that name is installed.
    #[error("unknown kind '{0}'")]
    Unknown(String),
}

/// A validated configuration, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Configuration (no secrets).
    pub config: Value,
    /// Credentials, stored encrypted.
    pub credentials: Option<Value>,
}

/// Decodes `value` into `T`, reporting serde's complaint (unknown field, wrong type) as a
/// field error under `field`.
pub fn decode<T: DeserializeOwned>(field: &str, value: Value) -> Result<T, KindError> {
    serde_json::from_value(value)
        .map_err(|e| KindError::Invalid(vec![FieldError::new(field, "invalid", e.to_string())]))
}

/// Serializes a validated value back for storage.
pub fn encode<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A kind of integration.
pub trait Kind: Send + Sync + 'static {
    /// Its name in the API and in declarative files (`sheets`).
    const NAME: &'static str;
    /// Its sink.
    type Sink: Sink;
    /// Where a new integration of this kind starts when it does not say
    /// ([`crate::store::Start`]): a mirror (a sheet) takes the form's whole history, a
    /// notification (an SMS) only responses submitted from its creation on.
    const DEFAULT_START: crate::store::Start = crate::store::Start::History;
    /// Whether the kind notifies people (each delivery reaches a person once): operators'
    /// tools ask for an explicit flag before they send past responses again.
    const NOTIFIES: bool = false;

    /// Validates a new integration's configuration and credentials (unknown fields refused)
    /// and completes them, for example by exchanging an authorization code for a refresh
    /// token. Runs when the integration is created or replaced.
    fn prepare(
        config: Value,
        credentials: Option<Value>,
    ) -> impl Future<Output = Result<Prepared, KindError>> + Send;

    /// Builds the sink of one stored integration.
    fn build(config: &Value, credentials: Option<&Value>) -> Result<Self::Sink, KindError>;

    /// A request the third party sent about one integration (a delivery report), received
    /// by the connect API at `POST /v1/callbacks/{integration}`. The kind authenticates it
    /// (e.g. the provider's signature) and records what it says. By default a kind takes
    /// no callbacks.
    fn callback(
        config: &Value,
        credentials: Option<&Value>,
        call: Callback,
    ) -> impl Future<Output = Result<(), CallbackError>> + Send {
        let _ = (config, credentials, call);
        async { Err(CallbackError::NotSupported) }
    }
}

/// A third party's request about an integration.
#[derive(Debug, Clone)]
pub struct Callback {
    /// The integration.
    pub integration_id: uuid::Uuid,
    /// The path and query called (`/v1/callbacks/{id}?...`); the kind prefixes the public
    /// base URL it gave the third party to get the URL signatures cover.
    pub path: String,
    /// Request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: bytes::Bytes,
    /// Postgres, for the kind's state.
    pub db: deadpool_postgres::Pool,
}

impl Callback {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The kind takes no callbacks.
    #[error("this kind of integration takes no callbacks")]
    NotSupported,
    /// The request is not from the third party (bad or missing signature).
    #[error("unauthenticated callback: {0}")]
    Unauthenticated(String),
    /// The request is malformed.
    #[error("malformed callback: {0}")]
    Malformed(String),
    /// Recording it failed; the third party should try again.
    #[error("{0}")]
    Unavailable(String),
}

/// The kinds a process can run; see [`kinds!`].
pub trait Kinds: Send + Sync + 'static {
    /// Names of the installed kinds.
    fn names(&self) -> Vec<&'static str>;

    /// [`Kind::DEFAULT_START`] of kind `kind` (`History` for an unknown kind).
    fn default_start(&self, kind: &str) -> crate::store::Start;

    /// [`Kind::NOTIFIES`] of kind `kind`.
    fn notifies(&self, kind: &str) -> bool;

    /// [`Kind::prepare`] of kind `kind`.
    fn prepare(
        &self,
        kind: &str,
        config: Value,
        credentials: Option<Value>,
    ) -> BoxFuture<'static, Result<Prepared, KindError>>;

    /// Builds the sink of kind `kind` and returns its worker, ready to be spawned.
    fn worker(
        &self,
        kind: &str,
        config: &Value,
        credentials: Option<&Value>,
        job: Job,
    ) -> Result<BoxFuture<'static, WorkerExit>, KindError>;

    /// [`Kind::callback`] of kind `kind`.
    fn callback(
        &self,
        kind: &str,
        config: Value,
        credentials: Option<Value>,
        call: Callback,
    ) -> BoxFuture<'static, Result<(), CallbackError>>;

    /// Builds the sink of kind `kind` and writes `batch` with it once (after `start`): the
    /// re-drive of dead letters by an operator.
    fn redrive(
        &self,
        kind: &str,
        config: &Value,
        credentials: Option<&Value>,
        batch: Vec<crate::sink::Delivery>,
        ctx: crate::sink::SinkContext,
    ) -> Result<
        BoxFuture<'static, Result<crate::sink::BatchOutcome, crate::sink::SinkError>>,
        KindError,
    >;
}

/// Starts `sink` and writes `batch` with it, retrying retryable errors a few times.
pub async fn write_once<S: Sink>(
    mut sink: S,
    batch: Vec<crate::sink::Delivery>,
    ctx: crate::sink::SinkContext,
) -> Result<crate::sink::BatchOutcome, crate::sink::SinkError> {
    let policy = crate::retry::RetryPolicy {
        max_attempts: 6,
        ..crate::retry::RetryPolicy::default()
    };
    let mut attempt = 0;
    loop {
        let result = match sink.start(&ctx).await {
            Ok(()) => sink.write(&batch, &ctx).await,
            Err(e) => Err(e),
        };
        match result {
            Err(crate::sink::SinkError::Retryable {
                message,
                retry_after,
            }) if attempt + 1 < policy.max_attempts => {
                tracing::warn!(error = message, "re-drive failed; retrying");
                tokio::time::sleep(policy.backoff(attempt, retry_after)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Declares the installed kinds: `kinds!(pub Installed { crate_a::KindA, crate_b::KindB });`
#[macro_export]
macro_rules! kinds {
    ($vis:vis $name:ident { $($kind:ty),* $(,)? }) => {
        /// The installed kinds of integration.
        $vis struct $name;

        impl $crate::kind::Kinds for $name {
            fn names(&self) -> Vec<&'static str> {
                vec![$(<$kind as $crate::kind::Kind>::NAME),*]
            }

            fn default_start(&self, kind: &str) -> $crate::store::Start {
                $(
                    if kind == <$kind as $crate::kind::Kind>::NAME {
                        return <$kind as $crate::kind::Kind>::DEFAULT_START;
                    }
                )*
                $crate::store::Start::History
            }

            fn notifies(&self, kind: &str) -> bool {
                $(
                    if kind == <$kind as $crate::kind::Kind>::NAME {
                        return <$kind as $crate::kind::Kind>::NOTIFIES;
                    }
                )*
                false
            }

            fn prepare(
                &self,
                kind: &str,
                config: $crate::serde_json::Value,
                credentials: Option<$crate::serde_json::Value>,
            ) -> $crate::BoxFuture<'static, Result<$crate::kind::Prepared, $crate::kind::KindError>> {
                $(
                    if kind == <$kind as $crate::kind::Kind>::NAME {
                        return Box::pin(<$kind as $crate::kind::Kind>::prepare(config, credentials));
                    }
                )*
                let kind = kind.to_string();
                Box::pin(async move { Err($crate::kind::KindError::Unknown(kind)) })
            }

            fn worker(
                &self,
                kind: &str,
                config: &$crate::serde_json::Value,
                credentials: Option<&$crate::serde_json::Value>,
                job: $crate::worker::Job,
            ) -> Result<$crate::BoxFuture<'static, $crate::worker::WorkerExit>, $crate::kind::KindError> {
                $(
                    if kind == <$kind as $crate::kind::Kind>::NAME {
                        let sink = <$kind as $crate::kind::Kind>::build(config, credentials)?;
                        return Ok(Box::pin($crate::worker::run(sink, <$kind as $crate::kind::Kind>::NAME, job)));
                    }
                )*
                Err($crate::kind::KindError::Unknown(kind.to_string()))
            }

            fn callback(
                &self,
                kind: &str,
                config: $crate::serde_json::Value,
                credentials: Option<$crate::serde_json::Value>,
                call: $crate::kind::Callback,
            ) -> $crate::BoxFuture<'static, Result<(), $crate::kind::CallbackError>> {
                $(
                    if kind == <$kind as $crate::kind::Kind>::NAME {
                        return Box::pin(async move {
                            <$kind as $crate::kind::Kind>::callback(&config, credentials.as_ref(), call).await
                        });
                    }
                )*
                Box::pin(async { Err($crate::kind::CallbackError::NotSupported) })
            }

            fn redrive(
                &self,
                kind: &str,
                config: &$crate::serde_json::Value,
                credentials: Option<&$crate::serde_json::Value>,
                batch: Vec<$crate::sink::Delivery>,
                ctx: $crate::sink::SinkContext,
            ) -> Result<$crate::BoxFuture<'static, Result<$crate::sink::BatchOutcome, $crate::sink::SinkError>>, $crate::kind::KindError> {
                $(
                    if kind == <$kind as $crate::kind::Kind>::NAME {
                        let sink = <$kind as $crate::kind::Kind>::build(config, credentials)?;
                        return Ok(Box::pin($crate::kind::write_once(sink, batch, ctx)));
                    }
                )*
                Err($crate::kind::KindError::Unknown(kind.to_string()))
            }
        }
    };
}

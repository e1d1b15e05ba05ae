//! The Google Sheets connector: every response of a form becomes exactly one row of a
//! spreadsheet, rewritten in place when the response is edited.
//!
//! - `config.rs`: configuration and credentials (service account key, user refresh token,
//!   or an authorization code exchanged when the integration is created).
//! - `auth.rs`: access tokens (yup-oauth2 for service accounts).
//! - `service.rs`: the Sheets API calls, with `google-sheets4`'s types.
//! - `layout.rs`: header, columns and cells.
//! - `state.rs`: rows, columns and tabs kept in Postgres.
//! - `sink.rs`: the [`collect_connect::Sink`].
//!
//! See METRICS.md for what it reports.

pub mod auth;
pub mod config;
pub mod layout;
pub mod service;
pub mod sink;
pub mod state;

use collect_connect::kind::{Kind, KindError, Prepared, decode, encode};
use collect_model::FieldError;
use serde_json::Value;

pub use config::{Config, Credentials};
pub use sink::SheetsSink;

/// The `sheets` kind.
pub struct Sheets;

fn field(f: &str, code: &'static str, m: impl Into<String>) -> KindError {
    KindError::Invalid(vec![FieldError::new(f, code, m)])
}

impl Kind for Sheets {
    const NAME: &'static str = "sheets";
    type Sink = SheetsSink;

    async fn prepare(config: Value, credentials: Option<Value>) -> Result<Prepared, KindError> {
        let config: Config = decode("config", config)?;
        if config.sheet_title.trim().is_empty() || config.sheet_title.chars().count() > 90 {
            return Err(field(
                "config.sheet_title",
                "invalid",
                "sheet_title must be 1 to 90 characters",
            ));
        }
        if !(config.api_base_url.starts_with("https://")
            || config.api_base_url.starts_with("http://"))
        {
            return Err(field(
                "config.api_base_url",
                "invalid",
                "api_base_url must be an http(s) URL",
            ));
        }
        if !(10_000..=10_485_760).contains(&config.max_request_bytes) {
            return Err(field(
                "config.max_request_bytes",
                "invalid",
                "max_request_bytes must be between 10000 and 10485760",
            ));
        }
        if config.quotas.write_requests_per_minute_per_user == 0
            || config.quotas.write_requests_per_minute_per_project == 0
            || config.quotas.read_requests_per_minute_per_user == 0
            || config.quotas.read_requests_per_minute_per_project == 0
        {
            return Err(field("config.quotas", "invalid", "quotas must be positive"));
        }
        let credentials = credentials.ok_or_else(|| {
            field(
                "credentials",
                "required",
                "a Sheets integration needs credentials",
            )
        })?;
        let credentials: Credentials = decode("credentials", credentials)?;
        let credentials = match credentials {
            Credentials::ServiceAccount { key } => {
                yup_oauth2::parse_service_account_key(key.to_string()).map_err(|e| {
                    field(
                        "credentials.key",
                        "invalid",
                        format!("not a service account key: {e}"),
                    )
                })?;
                Credentials::ServiceAccount { key }
            }
            Credentials::AuthorizationCode {
                client_id,
                client_secret,
                code,
                redirect_uri,
                token_uri,
            } => {
                let http = crate::sink::shared_http();
                let refresh_token = auth::exchange_code(
                    &http,
                    &client_id,
                    &client_secret,
                    &code,
                    &redirect_uri,
                    &token_uri,
                )
                .await
                .map_err(KindError::Refused)?;
                Credentials::AuthorizedUser {
                    client_id,
                    client_secret,
                    refresh_token,
                    token_uri,
                }
            }
            user @ Credentials::AuthorizedUser { .. } => user,
        };
        Ok(Prepared {
            config: encode(&config),
            credentials: Some(encode(&credentials)),
        })
    }

    fn build(config: &Value, credentials: Option<&Value>) -> Result<SheetsSink, KindError> {
        let config: Config = decode("config", config.clone())?;
        let credentials: Credentials =
            decode("credentials", credentials.cloned().unwrap_or(Value::Null))?;
        Ok(SheetsSink::new(config, credentials))
    }
}

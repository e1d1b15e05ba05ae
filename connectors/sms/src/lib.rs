//! The SMS connector: a message per response, at most one, through a Twilio-compatible
//! provider.
//!
//! - `config.rs`: configuration (sender, recipient, template, rates) and credentials.
//! - `template.rs`: `{{alias}}` templates over the answers.
//! - `provider.rs`: the [`provider::Provider`] trait and Twilio's Messages API, with each
//!   answer classified: accepted, not processed (429), permanent, ambiguous, fatal.
//! - `ledger.rs`: the Postgres ledger claimed before every provider call.
//! - `sink.rs`: the [`collect_connect::Sink`].

pub mod config;
pub mod encoding;
pub mod ledger;
pub mod provider;
pub mod sink;
pub mod template;

use collect_connect::kind::{Callback, CallbackError, Kind, KindError, Prepared, decode, encode};
use collect_model::FieldError;
use serde_json::Value;
use uuid::Uuid;

pub use config::{Config, Credentials, Recipient};
pub use provider::Twilio;
pub use sink::SmsSink;

/// The `sms` kind.
pub struct Sms;

fn field(f: &str, code: &'static str, m: impl Into<String>) -> KindError {
    KindError::Invalid(vec![FieldError::new(f, code, m)])
}

fn check(config: &Config) -> Result<(), KindError> {
    if config.provider != "twilio" {
        return Err(field(
            "config.provider",
            "invalid",
            format!("unknown provider '{}'; known: twilio", config.provider),
        ));
    }
    if !(config.api_base_url.starts_with("https://") || config.api_base_url.starts_with("http://"))
    {
        return Err(field(
            "config.api_base_url",
            "invalid",
            "api_base_url must be an http(s) URL",
        ));
    }
    if collect_model::normalize_phone(&config.from, None).as_deref() != Ok(config.from.as_str()) {
        return Err(field(
            "config.from",
            "invalid_phone",
            "from must be the sender's number in E.164 (+ and digits)",
        ));
    }
    match &config.to {
        Recipient::Number(n)
            if collect_model::normalize_phone(n, None).as_deref() != Ok(n.as_str()) =>
        {
            return Err(field(
                "config.to.number",
                "invalid_phone",
                "to.number must be a number in E.164 (+ and digits)",
            ));
        }
        Recipient::Question(q) if q.trim().is_empty() => {
            return Err(field(
                "config.to.question",
                "invalid",
                "to.question must name a question (its id or alias)",
            ));
        }
        _ => {}
    }
    template::Template::parse(&config.template)
        .map_err(|e| field("config.template", "invalid", e))?;
    if let Some(base) = &config.status_callback_base_url
        && !(base.starts_with("https://") || base.starts_with("http://"))
    {
        return Err(field(
            "config.status_callback_base_url",
            "invalid",
            "status_callback_base_url must be an http(s) URL",
        ));
    }
    if config.rates.per_sender_per_second == 0 || config.rates.account_per_second == 0 {
        return Err(field("config.rates", "invalid", "rates must be positive"));
    }
    if !(1..=10).contains(&config.max_segments) {
        return Err(field(
            "config.max_segments",
            "invalid",
            "max_segments must be 1 to 10",
        ));
    }
    if config.reconcile_after_secs > 86_400 {
        return Err(field(
            "config.reconcile_after_secs",
            "invalid",
            "reconcile_after_secs must be at most 86400",
        ));
    }
    Ok(())
}

impl Kind for Sms {
    const NAME: &'static str = "sms";
    type Sink = SmsSink<Twilio>;
    /// A notification: only responses submitted after the integration was attached.
    const DEFAULT_START: collect_connect::store::Start = collect_connect::store::Start::Creation;
    const NOTIFIES: bool = true;

    async fn prepare(config: Value, credentials: Option<Value>) -> Result<Prepared, KindError> {
        let config: Config = decode("config", config)?;
        check(&config)?;
        let credentials = credentials.ok_or_else(|| {
            field(
                "credentials",
                "required",
                "an SMS integration needs the provider account's credentials",
            )
        })?;
        let c: Credentials = decode("credentials", credentials)?;
        if c.account_sid.trim().is_empty() || c.auth_token.trim().is_empty() {
            return Err(field(
                "credentials",
                "invalid",
                "account_sid and auth_token are required",
            ));
        }
        Ok(Prepared {
            config: encode(&config),
            credentials: Some(encode(&c)),
        })
    }

    fn build(config: &Value, credentials: Option<&Value>) -> Result<Self::Sink, KindError> {
        let config: Config = decode("config", config.clone())?;
        let c: Credentials = decode("credentials", credentials.cloned().unwrap_or(Value::Null))?;
        let provider = Twilio::new(&config.api_base_url, &c.account_sid, &c.auth_token)
            .map_err(|e| field("config", "invalid", e))?;
        SmsSink::new(config, provider).map_err(|e| field("config.template", "invalid", e))
    }

    /// A delivery report: `MessageSid` and `MessageStatus`, form-encoded, signed by the
    /// provider (`X-Twilio-Signature`) with the account's auth token over the URL it was
    /// given and the parameters.
    async fn callback(
        config: &Value,
        credentials: Option<&Value>,
        call: Callback,
    ) -> Result<(), CallbackError> {
        let config: Config = serde_json::from_value(config.clone())
            .map_err(|e| CallbackError::Unavailable(format!("stored config: {e}")))?;
        let Some(base) = &config.status_callback_base_url else {
            return Err(CallbackError::NotSupported);
        };
        let c: Credentials = serde_json::from_value(credentials.cloned().unwrap_or(Value::Null))
            .map_err(|e| CallbackError::Unavailable(format!("stored credentials: {e}")))?;
        let url = format!("{}{}", base.trim_end_matches('/'), call.path);
        let params: Vec<(String, String)> = url::form_urlencoded::parse(&call.body)
            .into_owned()
            .collect();
        let signature = call
            .header("x-twilio-signature")
            .ok_or_else(|| CallbackError::Unauthenticated("no X-Twilio-Signature".into()))?;
        if !provider::twilio_signature_ok(&c.auth_token, &url, &params, signature) {
            return Err(CallbackError::Unauthenticated(
                "X-Twilio-Signature does not match".into(),
            ));
        }
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let (Some(sid), Some(status)) = (get("MessageSid"), get("MessageStatus")) else {
            return Err(CallbackError::Malformed(
                "MessageSid and MessageStatus are required".into(),
            ));
        };
        // Delivery reports name the integration (their URL) and the message; form and
        // purpose do not matter to them.
        ledger::Ledger::new(
            call.db.clone(),
            call.integration_id,
            Uuid::nil(),
            String::new(),
        )
        .delivery(sid, status)
        .await
        .map_err(CallbackError::Unavailable)?;
        Ok(())
    }
}

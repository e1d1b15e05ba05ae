//! Access tokens: service accounts through yup-oauth2 (JWT bearer, the key's `token_uri`),
//! user consent through a refresh-token exchange of our own (yup-oauth2's authorized-user
//! flow hard-codes Google's token URL, so it could not talk to the emulator or a proxy).

use std::time::{Duration, Instant};

use collect_connect::SinkError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use yup_oauth2::authenticator::DefaultAuthenticator;

use crate::config::Credentials;

/// The Sheets scope.
pub const SCOPE: &str = "https://www.googleapis.com/auth/spreadsheets";

/// Who writes: quota keys as Google counts them.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Per-user quota key.
    pub user: String,
    /// Per-project quota key.
    pub project: String,
    /// What an operator needs to share the spreadsheet with.
    pub share_with: String,
}

enum Source {
    ServiceAccount(Box<DefaultAuthenticator>),
    User {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
        cached: Mutex<Option<(String, Instant)>>,
    },
}

/// Gets access tokens for one integration.
pub struct Auth {
    source: Source,
    http: reqwest::Client,
    /// Quota identity.
    pub identity: Identity,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

fn short_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Exchanges an authorization code for tokens; returns the refresh token.
pub async fn exchange_code(
    http: &reqwest::Client,
    client_id: &str,
    client_secret: &str,
    code: &str,
    redirect_uri: &str,
    token_uri: &str,
) -> Result<String, String> {
    let resp = http
        .post(token_uri)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", client_id),
            ("client_secret", client_secret),
            ("redirect_uri", redirect_uri),
        ])
        .send()
        .await
        .map_err(|e| format!("token endpoint unreachable: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let e: Option<TokenError> = serde_json::from_str(&body).ok();
        return Err(match e {
            Some(e) => format!("{}: {}", e.error, e.error_description.unwrap_or_default()),
            None => format!("token endpoint answered {status}"),
        });
    }
    #[derive(Deserialize)]
    struct WithRefresh {
        refresh_token: Option<String>,
    }
    let t: WithRefresh =
        serde_json::from_str(&body).map_err(|e| format!("token endpoint answer: {e}"))?;
    t.refresh_token.ok_or_else(|| {
        "the token endpoint returned no refresh token (was access_type=offline requested?)".into()
    })
}

impl Auth {
    /// Builds the token source of `credentials` (never an authorization code: those are
    /// exchanged when the integration is created).
    pub async fn new(credentials: &Credentials, http: reqwest::Client) -> Result<Self, SinkError> {
        let (source, identity) = match credentials {
            Credentials::ServiceAccount { key } => {
                let sa = yup_oauth2::parse_service_account_key(key.to_string())
                    .map_err(|e| SinkError::fatal(format!("service account key: {e}")))?;
                let identity = Identity {
                    user: format!("sa:{}", sa.client_email),
                    project: format!(
                        "project:{}",
                        sa.project_id
                            .clone()
                            .unwrap_or_else(|| sa.client_email.clone())
                    ),
                    share_with: sa.client_email.clone(),
                };
                let auth = yup_oauth2::ServiceAccountAuthenticator::builder(sa)
                    .build()
                    .await
                    .map_err(|e| SinkError::retryable(format!("token client: {e}")))?;
                (Source::ServiceAccount(Box::new(auth)), identity)
            }
            Credentials::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => (
                Source::User {
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    refresh_token: refresh_token.clone(),
                    token_uri: token_uri.clone(),
                    cached: Mutex::new(None),
                },
                Identity {
                    user: format!("user:{}", short_hash(refresh_token)),
                    project: format!("client:{client_id}"),
                    share_with: "the authorizing user".into(),
                },
            ),
            Credentials::AuthorizationCode { .. } => {
                return Err(SinkError::fatal(
                    "an authorization code must be exchanged when the integration is created",
                ));
            }
        };
        Ok(Self {
            source,
            http,
            identity,
        })
    }

    /// A valid access token. Revoked or invalid credentials are fatal (the integration is
    /// paused and reported); an unreachable token endpoint is retryable.
    pub async fn token(&self) -> Result<String, SinkError> {
        match &self.source {
            Source::ServiceAccount(auth) => {
                let t = auth.token(&[SCOPE]).await.map_err(|e| match &e {
                    yup_oauth2::Error::AuthError(_) => {
                        SinkError::fatal(format!("Google refused the service account: {e}"))
                    }
                    _ => SinkError::retryable(format!("token endpoint: {e}")),
                })?;
                t.token().map(str::to_string).ok_or_else(|| {
                    SinkError::retryable("the token endpoint returned no access token")
                })
            }
            Source::User {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
                cached,
            } => {
                let mut cached = cached.lock().await;
                if let Some((token, until)) = cached.as_ref()
                    && Instant::now() < *until
                {
                    return Ok(token.clone());
                }
                let resp = self
                    .http
                    .post(token_uri)
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("client_id", client_id.as_str()),
                        ("client_secret", client_secret.as_str()),
                        ("refresh_token", refresh_token.as_str()),
                    ])
                    .send()
                    .await
                    .map_err(|e| {
                        SinkError::retryable(format!("token endpoint unreachable: {e}"))
                    })?;
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if status.is_server_error() || status.as_u16() == 429 {
                    return Err(SinkError::retryable(format!(
                        "token endpoint answered {status}"
                    )));
                }
                if !status.is_success() {
                    let why = serde_json::from_str::<TokenError>(&body)
                        .map(|e| {
                            format!("{}: {}", e.error, e.error_description.unwrap_or_default())
                        })
                        .unwrap_or_else(|_| format!("status {status}"));
                    return Err(SinkError::fatal(format!(
                        "Google refused the refresh token ({why}); the user must authorize again"
                    )));
                }
                let t: TokenAnswer = serde_json::from_str(&body)
                    .map_err(|e| SinkError::retryable(format!("token answer: {e}")))?;
                let life = Duration::from_secs(t.expires_in.unwrap_or(3600).saturating_sub(60));
                *cached = Some((t.access_token.clone(), Instant::now() + life));
                Ok(t.access_token)
            }
        }
    }

    /// Forgets a cached token (after a 401).
    pub async fn invalidate(&self) {
        if let Source::User { cached, .. } = &self.source {
            *cached.lock().await = None;
        }
    }
}

//! Google's OAuth2 token endpoint as documented for server-to-server (JWT bearer) and web
//! server (authorization code, refresh token) flows, and the principals behind tokens.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, KeyPair as _, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Scopes that grant Sheets access.
pub const SHEETS_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/spreadsheets",
    "https://www.googleapis.com/auth/drive",
];

/// Google's canonical OAuth2 token endpoint, the audience of service-account JWTs.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// Lifetime of access tokens.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// An OAuth error answer: status and `{"error", "error_description"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: u16,
    /// `invalid_grant`, `invalid_client`, `unsupported_grant_type`, `invalid_request`.
    pub error: &'static str,
    /// Description.
    pub description: String,
}

impl OAuthError {
    fn grant(description: impl Into<String>) -> Self {
        Self {
            status: 400,
            error: "invalid_grant",
            description: description.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": self.error, "error_description": self.description})
    }
}

/// Who an access token speaks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Principal {
    /// E-mail of the user or service account.
    pub email: String,
    /// Project the client belongs to (quotas per project count here).
    pub project: String,
}

#[derive(Serialize, Deserialize)]
struct ServiceAccount {
    public_key: Vec<u8>,
    project: String,
    disabled: bool,
}

#[derive(Serialize, Deserialize)]
struct Client {
    secret: String,
    project: String,
}

#[derive(Serialize, Deserialize)]
struct RefreshToken {
    client_id: String,
    user: String,
    revoked: bool,
}

#[derive(Serialize, Deserialize)]
struct Code {
    client_id: String,
    user: String,
    redirect_uri: String,
    expires: SystemTime,
}

/// OAuth state of the emulator.
#[derive(Default, Serialize, Deserialize)]
pub struct OAuth {
    accounts: HashMap<String, ServiceAccount>,
    clients: HashMap<String, Client>,
    refresh: HashMap<String, RefreshToken>,
    codes: HashMap<String, Code>,
    tokens: HashMap<String, (Principal, SystemTime)>,
}

fn random(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl OAuth {
    /// Creates a service account and a key for it, returned as the JSON key file the Cloud
    /// console gives (token_uri pointing at this emulator).
    pub fn create_service_account(
        &mut self,
        name: &str,
        project: &str,
        token_uri: &str,
    ) -> Result<Value, String> {
        let key =
            KeyPair::generate(KeySize::Rsa2048).map_err(|e| format!("key generation: {e}"))?;
        let pkcs8 = key.as_der().map_err(|e| format!("key encoding: {e}"))?;
        let email = format!("{name}@{project}.iam.gserviceaccount.com");
        self.accounts.insert(
            email.clone(),
            ServiceAccount {
                public_key: key.public_key().as_ref().to_vec(),
                project: project.to_string(),
                disabled: false,
            },
        );
        let base = token_uri.trim_end_matches("/token");
        Ok(json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": random(40).to_lowercase(),
            "private_key": pem("PRIVATE KEY", pkcs8.as_ref()),
            "client_email": email,
            "client_id": rand::rng().random_range(100_000_000_000_000_000u64..999_999_999_999_999_999).to_string(),
            "auth_uri": format!("{base}/o/oauth2/auth"),
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": format!("{base}/oauth2/v1/certs"),
            "client_x509_cert_url": format!("{base}/robot/v1/metadata/x509/{email}"),
        }))
    }

    /// Disables a service account: its JWTs are refused from now on.
    pub fn disable_service_account(&mut self, email: &str) -> bool {
        match self.accounts.get_mut(email) {
            Some(a) => {
                a.disabled = true;
                self.tokens.retain(|_, (p, _)| p.email != email);
                true
            }
            None => false,
        }
    }

    /// Creates an OAuth client (web application) of `project`.
    pub fn create_client(&mut self, project: &str) -> (String, String) {
        let id = format!(
            "{}-{}.apps.googleusercontent.com",
            rand::rng().random_range(100_000_000_000u64..999_999_999_999),
            random(32).to_lowercase()
        );
        let secret = format!("GOCSPX-{}", random(28));
        self.clients.insert(
            id.clone(),
            Client {
                secret: secret.clone(),
                project: project.into(),
            },
        );
        (id, secret)
    }

    /// Issues an authorization code, as the consent screen does when `user` accepts.
    pub fn issue_code(
        &mut self,
        client_id: &str,
        user: &str,
        redirect_uri: &str,
    ) -> Option<String> {
        self.clients.get(client_id)?;
        let code = format!("4/0A{}", random(60));
        self.codes.insert(
            code.clone(),
            Code {
                client_id: client_id.into(),
                user: user.into(),
                redirect_uri: redirect_uri.into(),
                expires: SystemTime::now() + Duration::from_secs(600),
            },
        );
        Some(code)
    }

    /// Revokes a refresh token, or every refresh token of a user.
    pub fn revoke(&mut self, token_or_user: &str) -> usize {
        let mut n = 0;
        for (t, r) in self.refresh.iter_mut() {
            if t == token_or_user || r.user == token_or_user {
                r.revoked = true;
                n += 1;
            }
        }
        let revoked_users: Vec<String> = self
            .refresh
            .values()
            .filter(|r| r.revoked)
            .map(|r| r.user.clone())
            .collect();
        self.tokens
            .retain(|_, (p, _)| !revoked_users.contains(&p.email));
        n
    }

    /// Issues an access token for `principal` valid for `lifetime` (admin: a token to read
    /// sheets with by hand, as the OAuth playground would give).
    pub fn mint_for(&mut self, principal: Principal, lifetime: Duration) -> String {
        let token = format!("ya29.{}", random(120));
        self.tokens
            .insert(token.clone(), (principal, SystemTime::now() + lifetime));
        token
    }

    fn mint(&mut self, principal: Principal) -> (String, u64) {
        let now = SystemTime::now();
        self.tokens.retain(|_, (_, expires)| *expires > now);
        let token = format!("ya29.{}", random(120));
        self.tokens.insert(
            token.clone(),
            (principal, SystemTime::now() + TOKEN_LIFETIME),
        );
        (token, TOKEN_LIFETIME.as_secs() - 1)
    }

    /// Who a bearer token speaks for, if it is valid.
    pub fn principal(&self, token: &str) -> Option<Principal> {
        let (p, expires) = self.tokens.get(token)?;
        (SystemTime::now() < *expires).then(|| p.clone())
    }

    fn client(&self, form: &HashMap<String, String>) -> Result<&Client, OAuthError> {
        let id = form
            .get("client_id")
            .map(String::as_str)
            .unwrap_or_default();
        let client = self.clients.get(id).ok_or_else(|| OAuthError {
            status: 401,
            error: "invalid_client",
            description: "The OAuth client was not found.".into(),
        })?;
        if form.get("client_secret").map(String::as_str) != Some(client.secret.as_str()) {
            return Err(OAuthError {
                status: 401,
                error: "invalid_client",
                description: "Unauthorized".into(),
            });
        }
        Ok(client)
    }

    /// `POST /token` with a form body.
    pub fn token(
        &mut self,
        form: &HashMap<String, String>,
        token_uri: &str,
    ) -> Result<Value, OAuthError> {
        match form.get("grant_type").map(String::as_str) {
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                let assertion = form
                    .get("assertion")
                    .ok_or_else(|| OAuthError::grant("Missing required parameter: assertion"))?;
                let principal = self.verify_jwt(assertion, token_uri)?;
                let (token, expires_in) = self.mint(principal);
                Ok(json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}))
            }
            Some("refresh_token") => {
                let project = self.client(form)?.project.clone();
                let rt = form
                    .get("refresh_token")
                    .map(String::as_str)
                    .unwrap_or_default();
                let r = self
                    .refresh
                    .get(rt)
                    .ok_or_else(|| OAuthError::grant("Bad Request"))?;
                if r.revoked {
                    return Err(OAuthError::grant("Token has been expired or revoked."));
                }
                if form.get("client_id") != Some(&r.client_id) {
                    return Err(OAuthError {
                        status: 401,
                        error: "unauthorized_client",
                        description: "Unauthorized".into(),
                    });
                }
                let user = r.user.clone();
                let (token, expires_in) = self.mint(Principal {
                    email: user,
                    project,
                });
                Ok(
                    json!({"access_token": token, "expires_in": expires_in, "scope": SHEETS_SCOPES[0], "token_type": "Bearer"}),
                )
            }
            Some("authorization_code") => {
                let project = self.client(form)?.project.clone();
                let code = form.get("code").map(String::as_str).unwrap_or_default();
                let c = self
                    .codes
                    .remove(code)
                    .ok_or_else(|| OAuthError::grant("Malformed auth code."))?;
                if SystemTime::now() > c.expires {
                    return Err(OAuthError::grant("Bad Request"));
                }
                if form.get("client_id") != Some(&c.client_id)
                    || form.get("redirect_uri") != Some(&c.redirect_uri)
                {
                    return Err(OAuthError {
                        status: 400,
                        error: "redirect_uri_mismatch",
                        description: "Bad Request".into(),
                    });
                }
                let refresh = format!("1//0{}", random(100));
                self.refresh.insert(
                    refresh.clone(),
                    RefreshToken {
                        client_id: c.client_id,
                        user: c.user.clone(),
                        revoked: false,
                    },
                );
                let (token, expires_in) = self.mint(Principal {
                    email: c.user,
                    project,
                });
                Ok(json!({
                    "access_token": token, "expires_in": expires_in, "refresh_token": refresh,
                    "scope": SHEETS_SCOPES[0], "token_type": "Bearer"
                }))
            }
            Some(other) => Err(OAuthError {
                status: 400,
                error: "unsupported_grant_type",
                description: format!("Invalid grant_type: {other}"),
            }),
            None => Err(OAuthError {
                status: 400,
                error: "invalid_request",
                description: "Missing required parameter: grant_type".into(),
            }),
        }
    }

    /// Checks a service account's JWT (RS256, signed with its key; `aud` the token URI or
    /// Google's canonical one; at
    /// most an hour long; a Sheets scope).
    fn verify_jwt(&self, jwt: &str, token_uri: &str) -> Result<Principal, OAuthError> {
        let bad = |d: &str| OAuthError::grant(d.to_string());
        let parts: Vec<&str> = jwt.split('.').collect();
        let [h, c, s] = parts[..] else {
            return Err(bad("Invalid JWT: malformed"));
        };
        let decode = |p: &str| {
            URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .map_err(|_| bad("Invalid JWT: malformed"))
        };
        let header: Value = serde_json::from_slice(&decode(h)?)
            .map_err(|_| bad("Invalid JWT: malformed header"))?;
        let claims: Value = serde_json::from_slice(&decode(c)?)
            .map_err(|_| bad("Invalid JWT: malformed claims"))?;
        if header["alg"] != "RS256" {
            return Err(bad("Invalid JWT: unsupported algorithm"));
        }
        let iss = claims["iss"].as_str().unwrap_or_default();
        let account = self
            .accounts
            .get(iss)
            .ok_or_else(|| bad("Invalid JWT Signature."))?;
        if account.disabled {
            return Err(bad("Invalid JWT Signature."));
        }
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &account.public_key)
            .verify(format!("{h}.{c}").as_bytes(), &decode(s)?)
            .map_err(|_| bad("Invalid JWT Signature."))?;
        // Google takes its canonical token endpoint as the audience whatever URL the
        // assertion is posted to (google-auth always signs for it), and the key's token_uri.
        let aud = claims["aud"].as_str();
        if aud != Some(token_uri) && aud != Some(GOOGLE_TOKEN_URI) {
            return Err(bad("Invalid JWT: audience is not the token endpoint"));
        }
        let (iat, exp, now) = (
            claims["iat"].as_i64().unwrap_or(0),
            claims["exp"].as_i64().unwrap_or(0),
            now_secs(),
        );
        if exp - iat > 3600 || exp < now || iat > now + 300 {
            return Err(bad(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
            ));
        }
        let scopes = claims["scope"].as_str().unwrap_or_default();
        if !scopes
            .split_whitespace()
            .any(|s| SHEETS_SCOPES.contains(&s))
        {
            return Err(OAuthError {
                status: 400,
                error: "invalid_scope",
                description: "Invalid OAuth scope or ID token audience provided.".into(),
            });
        }
        let email = claims["sub"].as_str().unwrap_or(iss).to_string();
        Ok(Principal {
            email,
            project: account.project.clone(),
        })
    }
}

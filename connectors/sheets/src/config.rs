//! Configuration and credentials of a Sheets integration.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Google's endpoints, the defaults of every URL below.
pub const GOOGLE_SHEETS: &str = "https://sheets.googleapis.com";
/// Google's OAuth2 token endpoint.
pub const GOOGLE_TOKEN: &str = "https://oauth2.googleapis.com/token";

fn default_sheets_url() -> String {
    GOOGLE_SHEETS.into()
}
fn default_token_uri() -> String {
    GOOGLE_TOKEN.into()
}
fn default_sheet_title() -> String {
    "Responses".into()
}
fn default_per_user() -> u32 {
    60
}
fn default_per_project() -> u32 {
    300
}
fn default_max_bytes() -> usize {
    2_000_000
}
fn default_cell_margin() -> u64 {
    100_000
}

/// What to do with a deleted response's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Keep the answers, set the status column to `deleted`.
    #[default]
    Mark,
    /// Blank the answers, set the status column to `deleted`.
    Clear,
}

/// What to do when the spreadsheet approaches Google's 10,000,000 cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCellLimit {
    /// Add a new sheet (tab) to the spreadsheet and continue there.
    #[default]
    Rollover,
    /// Pause the integration and report it.
    Pause,
}

/// What to do when a person deletes a tab the connector writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeletedTab {
    /// Pause the integration and report it (the person may have meant it).
    #[default]
    Pause,
    /// Add the tab again under its title, write its header, and read every event of the
    /// integration again from the oldest the topics hold, so that each response whose row
    /// was in it gets a row again (the others are rewritten in place).
    Recreate,
}

/// Quotas, counted as Google counts them ("Usage limits" of the Sheets API: per minute,
/// per user and per project, reads and writes apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Write requests per minute per user (Google: 60).
    #[serde(default = "default_per_user")]
    pub write_requests_per_minute_per_user: u32,
    /// Write requests per minute per project (Google: 300).
    #[serde(default = "default_per_project")]
    pub write_requests_per_minute_per_project: u32,
    /// Read requests per minute per user (Google: 60).
    #[serde(default = "default_per_user")]
    pub read_requests_per_minute_per_user: u32,
    /// Read requests per minute per project (Google: 300).
    #[serde(default = "default_per_project")]
    pub read_requests_per_minute_per_project: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            write_requests_per_minute_per_user: default_per_user(),
            write_requests_per_minute_per_project: default_per_project(),
            read_requests_per_minute_per_user: default_per_user(),
            read_requests_per_minute_per_project: default_per_project(),
        }
    }
}

/// Configuration of a Sheets integration (unknown fields are refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The spreadsheet to write to. Without it, the connector creates one titled
    /// `spreadsheet_title` on first start and keeps its id.
    #[serde(default)]
    pub spreadsheet_id: Option<String>,
    /// Title of a spreadsheet the connector creates.
    #[serde(default)]
    pub spreadsheet_title: Option<String>,
    /// Title of the sheet (tab) rows go to; rollovers add ` 2`, ` 3`, ...
    #[serde(default = "default_sheet_title")]
    pub sheet_title: String,
    /// Base URL of the Sheets API.
    #[serde(default = "default_sheets_url")]
    pub api_base_url: String,
    /// Deleted responses: `mark` (default) or `clear`.
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Near the cell limit: `rollover` (default) or `pause`.
    #[serde(default)]
    pub on_cell_limit: OnCellLimit,
    /// A tab a person deleted: `pause` (default) or `recreate` (and refill).
    #[serde(default)]
    pub on_deleted_tab: OnDeletedTab,
    /// Cells kept free below Google's 10,000,000 before the connector rolls over or pauses.
    #[serde(default = "default_cell_margin")]
    pub cell_limit_margin: u64,
    /// Write quotas.
    #[serde(default)]
    pub quotas: Quotas,
    /// Largest request body, in bytes (Google recommends 2 MB at most).
    #[serde(default = "default_max_bytes")]
    pub max_request_bytes: usize,
}

/// Credentials of a Sheets integration. Stored encrypted, never returned.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credentials {
    /// A service account's JSON key (the spreadsheet must be shared with its e-mail).
    ServiceAccount {
        /// The key file as Google gives it (its `token_uri` says where tokens come from).
        key: Value,
    },
    /// A user's consent, kept as a refresh token.
    AuthorizedUser {
        /// OAuth client id.
        client_id: String,
        /// OAuth client secret.
        client_secret: String,
        /// The user's refresh token.
        refresh_token: String,
        /// Token endpoint.
        #[serde(default = "default_token_uri")]
        token_uri: String,
    },
    /// An authorization code from the consent screen (what the forms product's
    /// createIntegration call sends); exchanged for a refresh token when the integration is
    /// created, and stored as `authorized_user`.
    AuthorizationCode {
        /// OAuth client id.
        client_id: String,
        /// OAuth client secret.
        client_secret: String,
        /// The code.
        code: String,
        /// The redirect URI the code was issued for.
        redirect_uri: String,
        /// Token endpoint.
        #[serde(default = "default_token_uri")]
        token_uri: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        let kind = match self {
            Credentials::ServiceAccount { .. } => "service_account",
            Credentials::AuthorizedUser { .. } => "authorized_user",
            Credentials::AuthorizationCode { .. } => "authorization_code",
        };
        write!(f, "Credentials({kind}, <redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_refusals() {
        let c: Config = serde_json::from_value(json!({"spreadsheet_id": "abc"})).unwrap();
        assert_eq!(c.sheet_title, "Responses");
        assert_eq!(c.api_base_url, GOOGLE_SHEETS);
        assert_eq!(c.quotas, Quotas::default());
        assert_eq!(
            (c.on_delete, c.on_cell_limit),
            (OnDelete::Mark, OnCellLimit::Rollover)
        );
        let e = serde_json::from_value::<Config>(json!({"spreadsheet": "abc"})).unwrap_err();
        assert!(e.to_string().contains("unknown field `spreadsheet`"));
        let e = serde_json::from_value::<Config>(json!({"on_delete": "burn"})).unwrap_err();
        assert!(e.to_string().contains("unknown variant `burn`"));
        let creds: Credentials = serde_json::from_value(json!({
            "type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "very-secret"
        }))
        .unwrap();
        assert!(!format!("{creds:?}").contains("very-secret"));
        assert!(
            serde_json::from_value::<Credentials>(json!({"type": "api_key", "key": "x"})).is_err()
        );
    }
}

//! The Sheets API v4 calls the connector makes, with `google-sheets4`'s request and response
//! types, and what each failure means for the runtime.

use std::time::Duration;

use collect_connect::retry::parse_retry_after;
use google_sheets4::api::{
    BatchUpdateSpreadsheetRequest, BatchUpdateSpreadsheetResponse, BatchUpdateValuesRequest,
    BatchUpdateValuesResponse, DataFilter, DeveloperMetadata, DeveloperMetadataLookup, Request,
    SearchDeveloperMetadataRequest, SearchDeveloperMetadataResponse, Sheet, SheetProperties,
    Spreadsheet, SpreadsheetProperties, ValueRange,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// Try again later (429, 5xx, timeouts, connection failures).
    Retryable {
        /// What happened.
        message: String,
        /// Retry-After, if given.
        retry_after: Option<Duration>,
    },
    /// The token was refused (expired or revoked): get a new one, then give up.
    Unauthorized(String),
    /// Google refused the request itself (400), for example a value or range it will not
    /// take: retrying changes nothing.
    Refused(String),
    /// The integration cannot go on (403 no access, 404 spreadsheet gone).
    Fatal(String),
}

/// A spreadsheet the connector writes to.
#[derive(Clone)]
pub struct Service {
    http: reqwest::Client,
    base: String,
}

fn google_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

impl Service {
    /// Calls against `base` (Google's `https://sheets.googleapis.com`, or an emulator).
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, CallError> {
        let mut req = collect_telemetry::inject(
            self.http
                .request(method, format!("{}{path}", self.base))
                .bearer_auth(token),
        );
        if let Some(b) = body {
            // As Google's own client libraries do: unset fields are left out, not sent as null.
            let mut v = serde_json::to_value(b)
                .map_err(|e| CallError::Refused(format!("encoding the request: {e}")))?;
            google_sheets4::common::remove_json_null_values(&mut v);
            req = req.json(&v);
        }
        let resp = req.send().await.map_err(|e| CallError::Retryable {
            message: format!("Sheets API unreachable: {e}"),
            retry_after: None,
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp.text().await.map_err(|e| CallError::Retryable {
            message: format!("reading the answer: {e}"),
            retry_after: None,
        })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| CallError::Retryable {
                message: format!("unexpected answer: {e}"),
                retry_after: None,
            });
        }
        let message = format!("{status}: {}", google_message(&text));
        Err(match status.as_u16() {
            429 | 408 | 500 | 502 | 503 | 504 => CallError::Retryable {
                message,
                retry_after,
            },
            401 => CallError::Unauthorized(message),
            // Older Google APIs answer rate limits with 403 and a RESOURCE_EXHAUSTED status.
            403 if text.contains("RESOURCE_EXHAUSTED") || text.contains("rateLimitExceeded") => {
                CallError::Retryable {
                    message,
                    retry_after,
                }
            }
            403 => CallError::Fatal(format!("no access to the spreadsheet ({message})")),
            404 => CallError::Fatal(format!("the spreadsheet does not exist ({message})")),
            400 => CallError::Refused(message),
            _ => CallError::Retryable {
                message,
                retry_after,
            },
        })
    }

    /// `spreadsheets.create` with one sheet.
    pub async fn create(
        &self,
        token: &str,
        title: &str,
        sheet_title: &str,
    ) -> Result<Spreadsheet, CallError> {
        let body = Spreadsheet {
            properties: Some(SpreadsheetProperties {
                title: Some(title.into()),
                ..Default::default()
            }),
            sheets: Some(vec![Sheet {
                properties: Some(SheetProperties {
                    title: Some(sheet_title.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        self.call(
            token,
            reqwest::Method::POST,
            "/v4/spreadsheets",
            Some(&body),
        )
        .await
    }

    /// `spreadsheets.get` (properties of every sheet).
    pub async fn get(&self, token: &str, id: &str) -> Result<Spreadsheet, CallError> {
        self.call::<(), _>(
            token,
            reqwest::Method::GET,
            &format!("/v4/spreadsheets/{id}"),
            None,
        )
        .await
    }

    /// `spreadsheets.batchUpdate`.
    pub async fn batch_update(
        &self,
        token: &str,
        id: &str,
        requests: Vec<Request>,
    ) -> Result<BatchUpdateSpreadsheetResponse, CallError> {
        let body = BatchUpdateSpreadsheetRequest {
            requests: Some(requests),
            ..Default::default()
        };
        self.call(
            token,
            reqwest::Method::POST,
            &format!("/v4/spreadsheets/{id}:batchUpdate"),
            Some(&body),
        )
        .await
    }

    /// `spreadsheets.developerMetadata.search` for the metadata with key `key` (Sheets API
    /// v4, "Read, write, and search metadata"): each entry with its location as it is now
    /// (metadata on a column moves with the column).
    pub async fn search_metadata(
        &self,
        token: &str,
        id: &str,
        key: &str,
    ) -> Result<Vec<DeveloperMetadata>, CallError> {
        let body = SearchDeveloperMetadataRequest {
            data_filters: Some(vec![DataFilter {
                developer_metadata_lookup: Some(DeveloperMetadataLookup {
                    metadata_key: Some(key.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
        };
        let answer: SearchDeveloperMetadataResponse = self
            .call(
                token,
                reqwest::Method::POST,
                &format!("/v4/spreadsheets/{id}/developerMetadata:search"),
                Some(&body),
            )
            .await?;
        Ok(answer
            .matched_developer_metadata
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.developer_metadata)
            .collect())
    }

    /// `spreadsheets.values.batchGet` of `ranges` (A1), unformatted: the values as stored,
    /// one `ValueRange` per range in the order given (trailing empty rows and cells left
    /// out, as Google does).
    pub async fn batch_get(
        &self,
        token: &str,
        id: &str,
        ranges: &[String],
    ) -> Result<Vec<ValueRange>, CallError> {
        let mut path = format!(
            "/v4/spreadsheets/{id}/values:batchGet?valueRenderOption=UNFORMATTED_VALUE&majorDimension=ROWS"
        );
        for r in ranges {
            path.push_str("&ranges=");
            path.push_str(&url::form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>());
        }
        let answer: google_sheets4::api::BatchGetValuesResponse = self
            .call::<(), _>(token, reqwest::Method::GET, &path, None)
            .await?;
        Ok(answer.value_ranges.unwrap_or_default())
    }

    /// `spreadsheets.values.batchUpdate` with `valueInputOption=RAW`: values are stored as
    /// given (an answer starting with `=` stays text, never becomes a formula).
    pub async fn write(
        &self,
        token: &str,
        id: &str,
        data: Vec<ValueRange>,
    ) -> Result<BatchUpdateValuesResponse, CallError> {
        let body = BatchUpdateValuesRequest {
            data: Some(data),
            value_input_option: Some("RAW".into()),
            ..Default::default()
        };
        self.call(
            token,
            reqwest::Method::POST,
            &format!("/v4/spreadsheets/{id}/values:batchUpdate"),
            Some(&body),
        )
        .await
    }
}

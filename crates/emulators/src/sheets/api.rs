//! The Sheets API v4 calls under `/v4/spreadsheets/...`, routed by method and the path after
//! the spreadsheet id.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::fields::Mask;
use super::model::{GoogleError, Render, Spreadsheet};
use super::oauth::Principal;
use super::values::InsertData;
use super::{Emulator, Inner, MAX_BODY, admit, error, google};
use crate::admin::chance;
use crate::hangup::Hangup;

pub(super) fn with_sheet<T>(
    inner: &mut Inner,
    id: &str,
    p: &Principal,
    f: impl FnOnce(&mut Spreadsheet) -> Result<T, GoogleError>,
) -> Result<T, GoogleError> {
    let s = inner
        .spreadsheets
        .get_mut(id)
        .ok_or_else(|| google(404, "NOT_FOUND", "Requested entity was not found."))?;
    if let Some(shared) = &s.shared_with
        && !shared.contains(&p.email)
    {
        return Err(google(
            403,
            "PERMISSION_DENIED",
            "The caller does not have permission",
        ));
    }
    f(s)
}

pub(super) async fn create(
    State(e): State<Emulator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let who = admit(&e, &headers, true).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|err| GoogleError::invalid(format!("Invalid JSON payload received. {err}")))?;
        let title = v["properties"]["title"]
            .as_str()
            .unwrap_or("Untitled spreadsheet")
            .to_string();
        let sheets: Vec<(String, u32, u32)> = v["sheets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let p = &s["properties"];
                        (
                            p["title"]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| format!("Sheet{}", i + 1)),
                            p["gridProperties"]["rowCount"].as_u64().unwrap_or(1000) as u32,
                            p["gridProperties"]["columnCount"].as_u64().unwrap_or(26) as u32,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok::<Value, GoogleError>(e.create_owned(&title, &sheets, None, Some(who.email)))
    }
    .await;
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(err) => error(&err),
    }
}

fn query_value<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn render_of(option: Option<&str>) -> Result<Render, GoogleError> {
    match option.unwrap_or("FORMATTED_VALUE") {
        "FORMATTED_VALUE" => Ok(Render::Formatted),
        "UNFORMATTED_VALUE" => Ok(Render::Unformatted),
        "FORMULA" => Ok(Render::Formula),
        other => Err(GoogleError::invalid(format!(
            "Invalid value at 'value_render_option' ({other})"
        ))),
    }
}

fn input_option(option: Option<&str>) -> Result<bool, GoogleError> {
    match option {
        Some("RAW") => Ok(false),
        Some("USER_ENTERED") => Ok(true),
        Some(other) => Err(GoogleError::invalid(format!(
            "Invalid value at 'value_input_option' ({other})"
        ))),
        None => Err(GoogleError::invalid(
            "'valueInputOption' is required but not specified",
        )),
    }
}

/// The calls, by name as Google's discovery document names them.
fn route(method: &Method, tail: &str) -> Option<&'static str> {
    let values = tail.strip_prefix("/values/");
    Some(match (method, tail) {
        (&Method::GET, "") => "spreadsheets.get",
        (&Method::POST, ":batchUpdate") => "spreadsheets.batchUpdate",
        (&Method::POST, "/values:batchUpdate") => "values.batchUpdate",
        (&Method::GET, "/values:batchGet") => "values.batchGet",
        (&Method::POST, "/values:batchGetByDataFilter") => "values.batchGetByDataFilter",
        (&Method::POST, "/values:batchUpdateByDataFilter") => "values.batchUpdateByDataFilter",
        (&Method::POST, "/developerMetadata:search") => "developerMetadata.search",
        (&Method::GET, t) if t.starts_with("/developerMetadata/") => "developerMetadata.get",
        (&Method::GET, _) if values.is_some() => "values.get",
        (&Method::PUT, _) if values.is_some() => "values.update",
        (&Method::POST, t) if values.is_some() && t.ends_with(":clear") => "values.clear",
        (&Method::POST, t) if values.is_some() && t.ends_with(":append") => "values.append",
        _ => return None,
    })
}

/// Calls that count against the read quotas (the rest are writes).
const READS: [&str; 6] = [
    "spreadsheets.get",
    "values.get",
    "values.batchGet",
    "values.batchGetByDataFilter",
    "developerMetadata.search",
    "developerMetadata.get",
];

/// Every `/v4/spreadsheets/{...}` call, routed by method and the path after the id.
pub(super) async fn api(
    State(e): State<Emulator>,
    Path(rest): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    hangup: Option<axum::Extension<Hangup>>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(&GoogleError::invalid(format!(
                "Request payload size exceeds the limit: {MAX_BODY} bytes."
            )));
        }
    };
    let (id, tail) = match rest.find(['/', ':']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest.as_str(), ""),
    };
    let Some(name) = route(&method, tail) else {
        return error(&google(404, "NOT_FOUND", "Requested entity was not found."));
    };
    let write = !READS.contains(&name);
    *e.lock().stats.requests.entry(name.into()).or_default() += 1;
    let p = match admit(&e, &headers, write).await {
        Ok(p) => p,
        Err(err) => return error(&err),
    };
    let parsed: Result<Value, GoogleError> = if method != Method::GET && !body.is_empty() {
        serde_json::from_slice(&body)
            .map_err(|err| GoogleError::invalid(format!("Invalid JSON payload received. {err}")))
    } else {
        Ok(Value::Null)
    };
    let body = match parsed {
        Ok(b) => b,
        Err(err) => return error(&err),
    };
    let range = tail
        .strip_prefix("/values/")
        .map(|r| {
            r.trim_end_matches(":clear")
                .trim_end_matches(":append")
                .to_string()
        })
        .unwrap_or_default();
    let (result, dropped) = {
        let mut inner = e.lock();
        let fail_after = write && chance(inner.faults.fail_after_write_rate);
        let drop_after = write && !fail_after && chance(inner.faults.drop_after_write_rate);
        let result = call(&mut inner, name, id, tail, &range, &q, &body, &p);
        if write && result.is_ok() {
            inner.stats.write_requests += 1;
            if drop_after {
                inner.stats.dropped_after_write += 1;
            }
        }
        (result.map(|v| (v, fail_after)), drop_after)
    };
    if dropped
        && result.is_ok()
        && let Some(axum::Extension(h)) = hangup
    {
        // Applied; the caller never hears so.
        h.now().await;
    }
    let mut inner = e.lock();
    match result {
        Ok((_, true)) => {
            inner.stats.injected_errors += 1;
            error(&google(500, "INTERNAL", "Internal error encountered."))
        }
        Ok((v, false)) => axum::Json(v).into_response(),
        Err(err) => error(&err),
    }
}

/// `spreadsheets.get`: `includeGridData` honoured unless a `fields` mask is given (Google
/// ignores it then), in which case grid data is returned when the mask asks for `data`.
fn get_spreadsheet(s: &Spreadsheet, q: &[(String, String)]) -> Result<Value, GoogleError> {
    let mask = query_value(q, "fields").map(Mask::parse).transpose()?;
    let grid = match &mask {
        Some(m) => m.mentions("data"),
        None => query_value(q, "includeGridData") == Some("true"),
    };
    let v = s.to_json(grid);
    Ok(match mask {
        Some(m) => m.apply(&v),
        None => v,
    })
}

fn values_of(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn call(
    inner: &mut Inner,
    name: &str,
    id: &str,
    tail: &str,
    range: &str,
    q: &[(String, String)],
    body: &Value,
    p: &Principal,
) -> Result<Value, GoogleError> {
    let major = |v: &Value| v["majorDimension"].as_str().unwrap_or("ROWS").to_string();
    match name {
        "spreadsheets.get" => with_sheet(inner, id, p, |s| get_spreadsheet(s, q)),
        "spreadsheets.batchUpdate" => {
            let requests = values_of(&body["requests"]);
            with_sheet(inner, id, p, |s| {
                let replies = s.batch_update(&requests, p)?;
                let mut out = json!({"spreadsheetId": s.id, "replies": replies});
                if body["includeSpreadsheetInResponse"].as_bool() == Some(true) {
                    out["updatedSpreadsheet"] = s.to_json(false);
                }
                Ok(out)
            })
        }
        "values.get" => {
            let r = render_of(query_value(q, "valueRenderOption"))?;
            with_sheet(inner, id, p, |s| s.get_values(range, r))
        }
        "values.batchGet" => {
            let r = render_of(query_value(q, "valueRenderOption"))?;
            with_sheet(inner, id, p, |s| {
                let ranges = q
                    .iter()
                    .filter(|(k, _)| k == "ranges")
                    .map(|(_, v)| s.get_values(v, r))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(json!({"spreadsheetId": s.id, "valueRanges": ranges}))
            })
        }
        "values.batchGetByDataFilter" => {
            let r = render_of(body["valueRenderOption"].as_str())?;
            let filters = values_of(&body["dataFilters"]);
            with_sheet(inner, id, p, |s| s.get_by_filters(&filters, r, p))
        }
        "developerMetadata.search" => {
            let filters = values_of(&body["dataFilters"]);
            with_sheet(inner, id, p, |s| s.search_metadata(&filters, p))
        }
        "developerMetadata.get" => {
            let mid = tail
                .trim_start_matches("/developerMetadata/")
                .parse::<i64>()
                .map_err(|_| GoogleError::invalid("metadataId must be an integer"))?;
            with_sheet(inner, id, p, |s| s.get_metadata(mid, p))
        }
        "values.update" => {
            let ue = input_option(query_value(q, "valueInputOption"))?;
            let values = values_of(&body["values"]);
            let r = with_sheet(inner, id, p, |s| {
                s.update_values(range, &major(body), &values, ue, p)
            })?;
            inner.stats.cells_written += r["updatedCells"].as_u64().unwrap_or(0);
            Ok(r)
        }
        "values.append" => {
            let ue = input_option(query_value(q, "valueInputOption"))?;
            let insert = InsertData::parse(query_value(q, "insertDataOption"))?;
            let values = values_of(&body["values"]);
            let r = with_sheet(inner, id, p, |s| {
                s.append_values(range, &major(body), &values, ue, insert, p)
            })?;
            inner.stats.cells_written += r["updates"]["updatedCells"].as_u64().unwrap_or(0);
            Ok(r)
        }
        "values.clear" => with_sheet(inner, id, p, |s| {
            let current = s.get_values(range, Render::Unformatted)?;
            let rows = current["values"].as_array().map(|a| a.len()).unwrap_or(0);
            let cols = current["values"]
                .as_array()
                .and_then(|a| a.iter().filter_map(|r| r.as_array().map(|x| x.len())).max())
                .unwrap_or(0);
            let blank: Vec<Value> = (0..rows)
                .map(|_| Value::Array(vec![Value::String(String::new()); cols]))
                .collect();
            s.update_values(range, "ROWS", &blank, false, p)?;
            Ok(json!({"spreadsheetId": s.id, "clearedRange": current["range"]}))
        }),
        "values.batchUpdateByDataFilter" => {
            let ue = input_option(body["valueInputOption"].as_str())?;
            let data = values_of(&body["data"]);
            let r = with_sheet(inner, id, p, |s| s.update_by_filters(&data, ue, p))?;
            inner.stats.cells_written += r["totalUpdatedCells"].as_u64().unwrap_or(0);
            Ok(r)
        }
        "values.batchUpdate" => {
            let ue = input_option(body["valueInputOption"].as_str())?;
            let data = values_of(&body["data"]);
            let r = with_sheet(inner, id, p, |s| {
                // All or nothing, like Google: apply to a copy first.
                let mut next = s.clone();
                let mut responses = Vec::new();
                for d in &data {
                    let range = d["range"]
                        .as_str()
                        .ok_or_else(|| GoogleError::invalid("Invalid data: range is required"))?;
                    let values = values_of(&d["values"]);
                    responses.push(next.update_values(range, &major(d), &values, ue, p)?);
                }
                *s = next;
                let sum = |k: &str| {
                    responses
                        .iter()
                        .map(|r| r[k].as_u64().unwrap_or(0))
                        .sum::<u64>()
                };
                Ok(json!({
                    "spreadsheetId": s.id,
                    "totalUpdatedRows": sum("updatedRows"),
                    "totalUpdatedColumns": sum("updatedColumns"),
                    "totalUpdatedCells": sum("updatedCells"),
                    "totalUpdatedSheets": 1,
                    "responses": responses,
                }))
            })?;
            inner.stats.cells_written += r["totalUpdatedCells"].as_u64().unwrap_or(0);
            let log_entry = json!({
                "method": name,
                "spreadsheet": id,
                "principal": p.email,
                "value_input_option": body["valueInputOption"],
                "ranges": data.iter().map(|d| d["range"].clone()).collect::<Vec<_>>(),
                "rows": data.iter().map(|d| d["values"].as_array().map(|v| v.len()).unwrap_or(0)).sum::<usize>(),
                "bytes": body.to_string().len(),
            });
            inner.log.push_back(log_entry);
            if inner.log.len() > 1000 {
                inner.log.pop_front();
            }
            Ok(r)
        }
        _ => Err(google(404, "NOT_FOUND", "Requested entity was not found.")),
    }
}

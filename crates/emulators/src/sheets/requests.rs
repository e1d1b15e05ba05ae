//! `spreadsheets.batchUpdate`: every request applied in order to a copy, which replaces the
//! spreadsheet only when all succeeded (Google: "if any request is not valid, the entire
//! request will fail and nothing will be applied"), with a reply per request (`{}` for those
//! without one). Served: addSheet, appendDimension, updateSheetProperties, deleteSheet,
//! insertDimension, deleteDimension, moveDimension, sortRange, addProtectedRange,
//! deleteProtectedRange, createDeveloperMetadata, updateDeveloperMetadata,
//! deleteDeveloperMetadata. Any other kind is Google's 400 INVALID_ARGUMENT for an unknown
//! field.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::model::{GoogleError, Sheet, Spreadsheet};
use super::oauth::Principal;

type Result<T> = std::result::Result<T, GoogleError>;

/// `updateSheetProperties` fields that only change looks, accepted and not kept.
const COSMETIC_FIELDS: [&str; 7] = [
    "hidden",
    "tabColor",
    "tabColorStyle",
    "rightToLeft",
    "gridProperties.frozenRowCount",
    "gridProperties.frozenColumnCount",
    "gridProperties.hideGridlines",
];

impl Spreadsheet {
    /// `spreadsheets.batchUpdate` by `who`: applies every request or none.
    pub fn batch_update(&mut self, requests: &[Value], who: &Principal) -> Result<Vec<Value>> {
        let mut next = self.clone();
        let mut replies = Vec::new();
        for (i, req) in requests.iter().enumerate() {
            let obj = req.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
                GoogleError::invalid(format!(
                    "Invalid requests[{i}]: exactly one kind of request is expected"
                ))
            })?;
            let Some((kind, body)) = obj.iter().next() else {
                continue;
            };
            let reply = match kind.as_str() {
                "addSheet" => next.add_sheet(body),
                "appendDimension" => next.append_dimension(body),
                "updateSheetProperties" => next.update_sheet_properties(body),
                "deleteSheet" => next.delete_sheet(body),
                "insertDimension" => next.insert_dimension(body),
                "deleteDimension" => next.delete_dimension(body, who),
                "moveDimension" => next.move_dimension(body, who),
                "sortRange" => next.sort_range(body, who),
                "addProtectedRange" => next.add_protected_range(body, who),
                "deleteProtectedRange" => next.delete_protected_range(body),
                "createDeveloperMetadata" => next.create_metadata(body, who),
                "updateDeveloperMetadata" => next.update_metadata(body, who),
                "deleteDeveloperMetadata" => next.delete_metadata(body, who),
                other => {
                    return Err(GoogleError::invalid(format!(
                        "Invalid JSON payload received. Unknown name \"{other}\" at 'requests[{i}]': Cannot find field."
                    )));
                }
            };
            replies.push(reply.map_err(|e| located(e, i, kind))?);
        }
        next.check_cells()?;
        *self = next;
        Ok(replies)
    }

    fn add_sheet(&mut self, body: &Value) -> Result<Value> {
        let p = &body["properties"];
        let title = match p["title"].as_str() {
            Some(t) => t.to_string(),
            None => format!("Sheet{}", self.sheets.len() + 1),
        };
        if self.sheets.iter().any(|s| s.title == title) {
            return Err(GoogleError::invalid(format!(
                "A sheet with the name \"{title}\" already exists. Please enter another name."
            )));
        }
        let grid = &p["gridProperties"];
        let rows = grid["rowCount"].as_u64().unwrap_or(1000) as u32;
        let cols = grid["columnCount"].as_u64().unwrap_or(26) as u32;
        let id = match p["sheetId"].as_i64() {
            Some(id) if self.sheets.iter().any(|s| s.sheet_id == id) => {
                return Err(GoogleError::invalid(format!(
                    "A sheet with the id {id} already exists."
                )));
            }
            Some(id) => id,
            None => self.next_id(),
        };
        self.sheets.push(Sheet {
            sheet_id: id,
            title,
            rows,
            cols,
            cells: BTreeMap::new(),
        });
        let index = self.sheets.len() - 1;
        Ok(json!({"addSheet": {"properties": self.sheets[index].properties(index)}}))
    }

    fn append_dimension(&mut self, body: &Value) -> Result<Value> {
        let length = body["length"]
            .as_u64()
            .filter(|n| *n > 0)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| GoogleError::invalid("length must be positive"))?;
        let pos = self.sheet_pos(body["sheetId"].as_i64().unwrap_or(0))?;
        let sheet = &mut self.sheets[pos];
        match body["dimension"].as_str().unwrap_or_default() {
            "ROWS" => sheet.rows = sheet.rows.saturating_add(length),
            "COLUMNS" => sheet.cols = sheet.cols.saturating_add(length),
            _ => return Err(GoogleError::invalid("dimension must be ROWS or COLUMNS")),
        }
        Ok(json!({}))
    }

    /// `updateSheetProperties`: `title` (a tab rename: the sheet id stays) and
    /// `gridProperties.rowCount` / `columnCount` (a smaller grid drops the cells, rows,
    /// columns and metadata beyond it), as the `fields` mask names them (`*` for all).
    fn update_sheet_properties(&mut self, body: &Value) -> Result<Value> {
        let fields: Vec<&str> = body["fields"]
            .as_str()
            .ok_or_else(|| GoogleError::invalid("fields is required"))?
            .split(',')
            .map(str::trim)
            .collect();
        let p = &body["properties"];
        let pos = self.sheet_pos(p["sheetId"].as_i64().unwrap_or(0))?;
        let (mut rows, mut cols) = (self.sheets[pos].rows, self.sheets[pos].cols);
        let mut title = None;
        let grid = &p["gridProperties"];
        let count = |v: &Value, name: &str| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    GoogleError::invalid(format!("gridProperties.{name} must be positive"))
                })
        };
        for f in &fields {
            match *f {
                "title" => title = Some(p["title"].as_str().unwrap_or_default().to_string()),
                "gridProperties.rowCount" => rows = count(&grid["rowCount"], "rowCount")?,
                "gridProperties.columnCount" => cols = count(&grid["columnCount"], "columnCount")?,
                "*" | "gridProperties" => {
                    if !grid["rowCount"].is_null() {
                        rows = count(&grid["rowCount"], "rowCount")?;
                    }
                    if !grid["columnCount"].is_null() {
                        cols = count(&grid["columnCount"], "columnCount")?;
                    }
                    if *f == "*" {
                        title = p["title"].as_str().map(str::to_string);
                    }
                }
                f if COSMETIC_FIELDS.contains(&f) => {}
                other => return Err(GoogleError::invalid(format!("Invalid field mask: {other}"))),
            }
        }
        if let Some(t) = title {
            if t.trim().is_empty() {
                return Err(GoogleError::invalid("A sheet's title cannot be empty."));
            }
            let taken = self
                .sheets
                .iter()
                .enumerate()
                .any(|(i, s)| i != pos && s.title == t);
            if taken {
                return Err(GoogleError::invalid(format!(
                    "A sheet with the name \"{t}\" already exists. Please enter another name."
                )));
            }
            self.sheets[pos].title = t;
        }
        self.resize(pos, rows, cols);
        Ok(json!({}))
    }

    /// `deleteSheet`: the sheet, its metadata and its protected ranges.
    fn delete_sheet(&mut self, body: &Value) -> Result<Value> {
        let id = body["sheetId"].as_i64().unwrap_or(0);
        let pos = self.sheet_pos(id)?;
        if self.sheets.len() == 1 {
            return Err(GoogleError::invalid(
                "You can't remove all the sheets in a document.",
            ));
        }
        self.sheets.remove(pos);
        self.metadata.retain(|m| m.location.sheet_id() != Some(id));
        self.protected.retain(|p| p.range.sheet_id != id);
        Ok(json!({}))
    }
}

/// Google names the failing request: "Invalid requests[2].deleteDimension: ...". Refusals
/// of protected cells and of the cell limit read as Google words them, unprefixed.
fn located(e: GoogleError, i: usize, kind: &str) -> GoogleError {
    if e.code != 400
        || e.message.starts_with("You are trying")
        || e.message.starts_with("This action")
    {
        return e;
    }
    GoogleError {
        message: format!("Invalid requests[{i}].{kind}: {}", e.message),
        ..e
    }
}

//! Spreadsheets as the Sheets API v4 documents them: sheets with a grid size, cells, and the
//! `values` operations (update, get, append), with Google's limits: the grid bounds every
//! write, 10,000,000 cells per spreadsheet, 50,000 characters per cell, and protected ranges
//! refuse writes by those who are not their editors. The `batchUpdate` requests live in
//! `requests.rs` and `dimensions.rs`, developer metadata in `metadata.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::a1::{self, A1, column_letters, quote_sheet};
use super::metadata::DeveloperMetadata;
use super::oauth::Principal;
use super::protection::ProtectedRange;

/// Most cells in a spreadsheet, all sheets together.
pub const CELL_LIMIT: u64 = 10_000_000;
/// Most characters in a cell.
pub const CELL_CHARS: usize = 50_000;

/// An error with Google's code and status (`{"error": {"code", "message", "status"}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleError {
    /// HTTP status.
    pub code: u16,
    /// Google's status word (`INVALID_ARGUMENT`, ...).
    pub status: &'static str,
    /// Message.
    pub message: String,
}

impl GoogleError {
    /// 400 INVALID_ARGUMENT.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            status: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message, "status": self.status}})
    }
}

type Result<T> = std::result::Result<T, GoogleError>;

/// A cell's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    /// Text.
    Text(String),
    /// A number.
    Number(serde_json::Number),
    /// A boolean.
    Bool(bool),
    /// A formula (entered with USER_ENTERED); the emulator does not evaluate formulas.
    Formula(String),
}

/// How values are rendered on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// FORMATTED_VALUE (the default): everything as text.
    Formatted,
    /// UNFORMATTED_VALUE: numbers and booleans as JSON.
    Unformatted,
    /// FORMULA: formulas as entered.
    Formula,
}

impl Cell {
    /// A `CellData` with the value as entered, as computed and as shown.
    fn grid_value(&self) -> Value {
        let typed = |v: &Cell| match v {
            Cell::Text(s) => json!({"stringValue": s}),
            Cell::Number(n) => json!({"numberValue": n}),
            Cell::Bool(b) => json!({"boolValue": b}),
            Cell::Formula(f) => json!({"formulaValue": f}),
        };
        let effective = match self {
            Cell::Formula(_) => {
                json!({"errorValue": {"type": "NAME", "message": "Unknown function"}})
            }
            other => typed(other),
        };
        json!({
            "userEnteredValue": typed(self),
            "effectiveValue": effective,
            "formattedValue": self.render(Render::Formatted),
        })
    }

    fn render(&self, how: Render) -> Value {
        match (self, how) {
            (Cell::Text(s), _) => Value::String(s.clone()),
            (Cell::Number(n), Render::Formatted) => Value::String(general_format(n)),
            (Cell::Number(n), _) => Value::Number(n.clone()),
            (Cell::Bool(b), Render::Formatted) => {
                Value::String(if *b { "TRUE" } else { "FALSE" }.into())
            }
            (Cell::Bool(b), _) => Value::Bool(*b),
            (Cell::Formula(f), Render::Formula) => Value::String(f.clone()),
            (Cell::Formula(_), _) => Value::String("#NAME?".into()),
        }
    }
}

/// A number as the "General" format shows it: whole numbers without a decimal point.
fn general_format(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(x) if n.is_f64() && x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        // Exponents as the sheet writes them: 1E+20.
        _ => n.to_string().to_uppercase(),
    }
}

/// One sheet (tab).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sheet {
    /// Stable id.
    pub sheet_id: i64,
    /// Title.
    pub title: String,
    /// Rows in the grid.
    pub rows: u32,
    /// Columns in the grid.
    pub cols: u32,
    /// Cells with content, by (row, column).
    #[serde(with = "cells")]
    pub cells: BTreeMap<(u32, u32), Cell>,
}

impl Sheet {
    /// `GridData` of the whole sheet from A1 to its last cell with content: each cell's
    /// `userEnteredValue`, `effectiveValue` and `formattedValue`.
    fn grid_data(&self) -> Value {
        let mut rows: Vec<Value> = Vec::new();
        for ((r, c), cell) in &self.cells {
            while rows.len() <= *r as usize {
                rows.push(json!({"values": []}));
            }
            if let Some(values) = rows[*r as usize]["values"].as_array_mut() {
                while values.len() < *c as usize {
                    values.push(json!({}));
                }
                values.push(cell.grid_value());
            }
        }
        json!({"startRow": 0, "startColumn": 0, "rowData": rows})
    }

    pub(crate) fn properties(&self, index: usize) -> Value {
        json!({
            "sheetId": self.sheet_id,
            "title": self.title,
            "index": index,
            "sheetType": "GRID",
            "gridProperties": {"rowCount": self.rows, "columnCount": self.cols}
        })
    }
}

/// A spreadsheet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spreadsheet {
    /// Id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Sheets in order.
    pub sheets: Vec<Sheet>,
    /// Principals allowed in (`None`: anyone with a valid token).
    pub shared_with: Option<Vec<String>>,
    pub(crate) next_sheet_id: i64,
    /// Who created it through the API (the owner edits protected ranges too).
    #[serde(default)]
    pub owner: Option<String>,
    /// Developer metadata, wherever it is located.
    #[serde(default)]
    pub metadata: Vec<DeveloperMetadata>,
    /// Protected ranges of every sheet.
    #[serde(default)]
    pub protected: Vec<ProtectedRange>,
    /// Last id given to a protected range or metadata.
    #[serde(default)]
    pub(crate) next_object_id: i64,
}

/// Cells as a list of `[row, column, cell]` (JSON object keys cannot be pairs).
mod cells {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::Cell;

    pub fn serialize<S: Serializer>(
        cells: &BTreeMap<(u32, u32), Cell>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(cells.iter().map(|((r, c), v)| (r, c, v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<(u32, u32), Cell>, D::Error> {
        let list: Vec<(u32, u32, Cell)> = Vec::deserialize(d)?;
        Ok(list.into_iter().map(|(r, c, v)| ((r, c), v)).collect())
    }
}

/// Where a range's writes go, after bounds checks.
pub(crate) struct Target {
    pub(crate) sheet: usize,
    pub(crate) row: u32,
    pub(crate) col: u32,
    pub(crate) end_row: Option<u32>,
    pub(crate) end_col: Option<u32>,
}

pub(crate) fn grid_error(title: &str, row: u32, col: u32, rows: u32, cols: u32) -> GoogleError {
    GoogleError::invalid(format!(
        "Range ({}!{}{}) exceeds grid limits. Max rows: {rows}, max columns: {cols}",
        quote_sheet(title),
        column_letters(col),
        row + 1
    ))
}

pub(crate) fn unparsable(range: &str) -> GoogleError {
    GoogleError::invalid(format!("Unable to parse range: {range}"))
}

impl Spreadsheet {
    /// A new spreadsheet with one sheet per (title, rows, columns).
    pub fn new(
        id: String,
        title: String,
        sheets: &[(String, u32, u32)],
        shared_with: Option<Vec<String>>,
    ) -> Self {
        let mut s = Spreadsheet {
            id,
            title,
            sheets: Vec::new(),
            shared_with,
            next_sheet_id: 0,
            owner: None,
            metadata: Vec::new(),
            protected: Vec::new(),
            next_object_id: 0,
        };
        let default = [("Sheet1".to_string(), 1000, 26)];
        for (title, rows, cols) in if sheets.is_empty() {
            &default[..]
        } else {
            sheets
        } {
            let id = s.next_id();
            s.sheets.push(Sheet {
                sheet_id: id,
                title: title.clone(),
                rows: *rows,
                cols: *cols,
                cells: BTreeMap::new(),
            });
        }
        s
    }

    pub(crate) fn next_id(&mut self) -> i64 {
        let id = self.next_sheet_id;
        self.next_sheet_id += 1_000_003;
        id
    }

    /// Cells in the grids of every sheet.
    pub fn cells(&self) -> u64 {
        self.sheets
            .iter()
            .map(|s| u64::from(s.rows) * u64::from(s.cols))
            .sum()
    }

    pub(crate) fn check_cells(&self) -> Result<()> {
        if self.cells() > CELL_LIMIT {
            return Err(GoogleError::invalid(format!(
                "This action would increase the number of cells in the workbook above the limit of {CELL_LIMIT} cells."
            )));
        }
        Ok(())
    }

    /// The Spreadsheet resource: properties, sheets with their protected ranges and
    /// sheet-level developer metadata, spreadsheet-level developer metadata, and with
    /// `grid_data` each sheet's cells (`sheets[].data`, as `includeGridData=true` asks).
    pub fn to_json(&self, grid_data: bool) -> Value {
        let sheets: Vec<Value> = self
            .sheets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut v = json!({"properties": s.properties(i)});
                let protected: Vec<Value> = self
                    .protected
                    .iter()
                    .filter(|p| p.range.sheet_id == s.sheet_id)
                    .map(ProtectedRange::to_json)
                    .collect();
                if !protected.is_empty() {
                    v["protectedRanges"] = json!(protected);
                }
                let meta: Vec<Value> = self
                    .metadata
                    .iter()
                    .filter(|m| m.location.sheet_id() == Some(s.sheet_id) && m.location.is_sheet())
                    .map(DeveloperMetadata::to_json)
                    .collect();
                if !meta.is_empty() {
                    v["developerMetadata"] = json!(meta);
                }
                if grid_data {
                    v["data"] = json!([s.grid_data()]);
                }
                v
            })
            .collect();
        let mut out = json!({
            "spreadsheetId": self.id,
            "properties": {"title": self.title, "locale": "en_US", "timeZone": "Etc/GMT"},
            "sheets": sheets,
            "spreadsheetUrl": format!("https://docs.google.com/spreadsheets/d/{}/edit", self.id),
        });
        let meta: Vec<Value> = self
            .metadata
            .iter()
            .filter(|m| m.location.sheet_id().is_none())
            .map(DeveloperMetadata::to_json)
            .collect();
        if !meta.is_empty() {
            out["developerMetadata"] = json!(meta);
        }
        out
    }

    /// The index of the sheet with `sheet_id`.
    pub(crate) fn sheet_pos(&self, sheet_id: i64) -> Result<usize> {
        self.sheets
            .iter()
            .position(|s| s.sheet_id == sheet_id)
            .ok_or_else(|| GoogleError::invalid(format!("No grid with id: {sheet_id}")))
    }

    fn sheet_index(&self, a1: &A1, range: &str) -> Result<usize> {
        match &a1.sheet {
            None => Ok(0),
            Some(title) => self
                .sheets
                .iter()
                .position(|s| &s.title == title)
                .ok_or_else(|| unparsable(range)),
        }
    }

    pub(crate) fn target(&self, range: &str) -> Result<(Target, A1)> {
        let a = a1::parse(range).ok_or_else(|| unparsable(range))?;
        let sheet = self.sheet_index(&a, range)?;
        let t = Target {
            sheet,
            row: a.start_row.unwrap_or(0),
            col: a.start_col.unwrap_or(0),
            end_row: a.end_row,
            end_col: a.end_col,
        };
        Ok((t, a))
    }

    pub(crate) fn a1_text(&self, sheet: usize, r0: u32, c0: u32, r1: u32, c1: u32) -> String {
        format!(
            "{}!{}{}:{}{}",
            quote_sheet(&self.sheets[sheet].title),
            column_letters(c0),
            r0 + 1,
            column_letters(c1),
            r1 + 1
        )
    }

    /// `values.update` of one range: `values` laid out from the range's top-left, by row
    /// (or by column with `major = "COLUMNS"`); a one-cell range is only the anchor. `null`
    /// skips a cell, `""` clears it. With `user_entered`, text that looks like a number, a
    /// boolean or a formula becomes one; with RAW it stays text. A write to a cell of a
    /// range protected against `who` is refused and nothing is written.
    pub fn update_values(
        &mut self,
        range: &str,
        major: &str,
        values: &[Value],
        user_entered: bool,
        who: &Principal,
    ) -> Result<Value> {
        let (mut t, a) = self.target(range)?;
        if !a.has_end {
            t.end_row = None;
            t.end_col = None;
        }
        let rows: Vec<Vec<Value>> = values
            .iter()
            .map(|r| {
                r.as_array()
                    .cloned()
                    .ok_or_else(|| GoogleError::invalid("Invalid values: each row must be a list"))
            })
            .collect::<Result<_>>()?;
        let by_columns = match major {
            "" | "ROWS" | "DIMENSION_UNSPECIFIED" => false,
            "COLUMNS" => true,
            other => {
                return Err(GoogleError::invalid(format!(
                    "Invalid value at 'data.major_dimension' ({other})"
                )));
            }
        };
        let sheet = &self.sheets[t.sheet];
        let (title, grid_rows, grid_cols) = (sheet.title.clone(), sheet.rows, sheet.cols);
        let mut writes: Vec<((u32, u32), Option<Cell>)> = Vec::new();
        let (mut max_r, mut max_c, mut cells) = (t.row, t.col, 0u64);
        let mut any = false;
        for (i, row) in rows.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let (dr, dc) = if by_columns {
                    (j as u32, i as u32)
                } else {
                    (i as u32, j as u32)
                };
                let (r, c) = (t.row + dr, t.col + dc);
                if let Some(end) = t.end_row
                    && r > end
                {
                    return Err(GoogleError::invalid(format!(
                        "Requested writing within range [{range}], but tried writing to row [{}]",
                        r + 1
                    )));
                }
                if let Some(end) = t.end_col
                    && c > end
                {
                    return Err(GoogleError::invalid(format!(
                        "Requested writing within range [{range}], but tried writing to column [{}]",
                        column_letters(c)
                    )));
                }
                if r >= grid_rows || c >= grid_cols {
                    return Err(grid_error(&title, r, c, grid_rows, grid_cols));
                }
                let cell = match v {
                    Value::Null => continue,
                    Value::String(s) if s.is_empty() => None,
                    Value::String(s) => {
                        if s.chars().count() > CELL_CHARS {
                            return Err(GoogleError::invalid(format!(
                                "Your input contains more than the maximum of {CELL_CHARS} characters in a single cell."
                            )));
                        }
                        Some(if user_entered {
                            interpret(s)
                        } else {
                            Cell::Text(s.clone())
                        })
                    }
                    Value::Number(n) => Some(Cell::Number(n.clone())),
                    Value::Bool(b) => Some(Cell::Bool(*b)),
                    _ => {
                        return Err(GoogleError::invalid(
                            "Invalid values: a cell must be a string, number or boolean",
                        ));
                    }
                };
                writes.push(((r, c), cell));
                (max_r, max_c) = (max_r.max(r), max_c.max(c));
                any = true;
                cells += 1;
            }
        }
        let sheet_id = self.sheets[t.sheet].sheet_id;
        if writes
            .iter()
            .any(|((r, c), _)| self.protected_against(who, sheet_id, *r, *c))
        {
            return Err(super::protection::refused());
        }
        let sheet = &mut self.sheets[t.sheet];
        for (at, cell) in writes {
            match cell {
                Some(c) => sheet.cells.insert(at, c),
                None => sheet.cells.remove(&at),
            };
        }
        let mut out = json!({"spreadsheetId": self.id});
        if any {
            out["updatedRange"] = Value::String(self.a1_text(t.sheet, t.row, t.col, max_r, max_c));
            out["updatedRows"] = json!(max_r - t.row + 1);
            out["updatedColumns"] = json!(max_c - t.col + 1);
            out["updatedCells"] = json!(cells);
        }
        Ok(out)
    }

    /// `values.get` of one range: rows from the range's start to its last row with content,
    /// each without trailing empty cells.
    pub fn get_values(&self, range: &str, render: Render) -> Result<Value> {
        let (t, _) = self.target(range)?;
        let sheet = &self.sheets[t.sheet];
        // A range that starts past the grid (a person trimmed it) is refused, as Google does.
        if t.row >= sheet.rows || t.col >= sheet.cols {
            return Err(grid_error(
                &sheet.title,
                t.row,
                t.col,
                sheet.rows,
                sheet.cols,
            ));
        }
        let last_row = t
            .end_row
            .unwrap_or(sheet.rows.saturating_sub(1))
            .min(sheet.rows.saturating_sub(1));
        let last_col = t
            .end_col
            .unwrap_or(sheet.cols.saturating_sub(1))
            .min(sheet.cols.saturating_sub(1));
        let mut rows: Vec<Vec<Value>> = Vec::new();
        for ((r, c), cell) in sheet.cells.range((t.row, 0)..=(last_row, u32::MAX)) {
            if *c < t.col || *c > last_col {
                continue;
            }
            let (ri, ci) = ((r - t.row) as usize, (c - t.col) as usize);
            while rows.len() <= ri {
                rows.push(Vec::new());
            }
            let row = &mut rows[ri];
            while row.len() < ci {
                row.push(Value::String(String::new()));
            }
            row.push(cell.render(render));
        }
        let mut out = json!({
            "range": self.a1_text(t.sheet, t.row, t.col, last_row, last_col),
            "majorDimension": "ROWS",
        });
        if !rows.is_empty() {
            out["values"] = json!(rows);
        }
        Ok(out)
    }
}

/// USER_ENTERED parsing: numbers, booleans and formulas out of text.
fn interpret(s: &str) -> Cell {
    if s.starts_with('=') {
        return Cell::Formula(s.to_string());
    }
    match s.to_ascii_uppercase().as_str() {
        "TRUE" => return Cell::Bool(true),
        "FALSE" => return Cell::Bool(false),
        _ => {}
    }
    match serde_json::from_str::<serde_json::Number>(s.trim()) {
        Ok(n) => Cell::Number(n),
        Err(_) => Cell::Text(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Principal {
        Principal {
            email: "a@p.iam.gserviceaccount.com".into(),
            project: "p".into(),
        }
    }

    fn sheet() -> Spreadsheet {
        Spreadsheet::new("s1".into(), "T".into(), &[("Responses".into(), 3, 3)], None)
    }

    #[test]
    fn numbers_show_as_the_general_format_does() {
        let show = |v: Value| {
            let Value::Number(n) = v else { panic!() };
            general_format(&n)
        };
        assert_eq!(show(json!(2.0)), "2");
        assert_eq!(show(json!(2)), "2");
        assert_eq!(show(json!(-40.0)), "-40");
        assert_eq!(show(json!(2.5)), "2.5");
        assert_eq!(show(json!(1e20)), "1E+20");
    }

    #[test]
    fn write_read_and_clear() {
        let mut s = sheet();
        let r = s
            .update_values(
                "Responses!A1",
                "ROWS",
                &[json!(["id", "=SUM(A1)", 12]), json!([null, "x"])],
                false,
                &who(),
            )
            .unwrap();
        assert_eq!(r["updatedRange"], "Responses!A1:C2");
        assert_eq!(r["updatedCells"], 4, "the null cell is skipped");
        let v = s.get_values("Responses", Render::Formatted).unwrap();
        assert_eq!(v["values"], json!([["id", "=SUM(A1)", "12"], ["", "x"]]));
        s.update_values("Responses!B2", "ROWS", &[json!([""])], false, &who())
            .unwrap();
        assert_eq!(
            s.get_values("Responses!A2:C2", Render::Formatted)
                .unwrap()
                .get("values"),
            None
        );
        s.update_values("Responses!C3", "ROWS", &[json!(["=1+1"])], true, &who())
            .unwrap();
        assert_eq!(
            s.get_values("Responses!C3", Render::Formula).unwrap()["values"],
            json!([["=1+1"]])
        );
    }

    #[test]
    fn a_read_starting_past_the_grid_is_refused_as_google_does() {
        let mut s = sheet();
        s.update_values("Responses!A3", "ROWS", &[json!(["x"])], false, &who())
            .unwrap();
        for range in ["Responses!A6:F9", "Responses!D1"] {
            let e = s.get_values(range, Render::Formatted).unwrap_err();
            assert!(
                e.message.contains("exceeds grid limits"),
                "{range}: {}",
                e.message
            );
        }
        // A range that ends past the grid reads what the grid holds.
        let v = s.get_values("Responses!A1:A9", Render::Formatted).unwrap();
        assert_eq!(v["values"], json!([[], [], ["x"]]));
    }

    #[test]
    fn limits() {
        let mut s = sheet();
        let e = s
            .update_values("Responses!A4", "ROWS", &[json!(["x"])], false, &who())
            .unwrap_err();
        assert!(
            e.message
                .contains("exceeds grid limits. Max rows: 3, max columns: 3"),
            "{}",
            e.message
        );
        let e = s
            .update_values(
                "Responses!A1:B1",
                "ROWS",
                &[json!(["a", "b", "c"])],
                false,
                &who(),
            )
            .unwrap_err();
        assert!(
            e.message.contains("tried writing to column [C]"),
            "{}",
            e.message
        );
        let e = s
            .update_values("Nope!A1", "ROWS", &[json!(["x"])], false, &who())
            .unwrap_err();
        assert!(e.message.contains("Unable to parse range"));
        let big = "x".repeat(CELL_CHARS + 1);
        assert!(
            s.update_values("Responses!A1", "ROWS", &[json!([big])], false, &who())
                .is_err()
        );
        // Growing past 10M cells is refused and nothing changes.
        let e = s
            .batch_update(&[json!({"appendDimension": {"sheetId": 0, "dimension": "ROWS", "length": 5}}), json!({"appendDimension": {"sheetId": 0, "dimension": "ROWS", "length": 4_000_000}})], &who())
            .unwrap_err();
        assert!(e.message.contains("above the limit of 10000000 cells"));
        assert_eq!(s.sheets[0].rows, 3);
        let replies = s.batch_update(&[json!({"addSheet": {"properties": {"title": "Two", "gridProperties": {"rowCount": 10, "columnCount": 2}}}})], &who()).unwrap();
        assert_eq!(replies[0]["addSheet"]["properties"]["title"], "Two");
        assert_eq!(s.cells(), 9 + 20);
    }
}

//! `values.append` and the `values` calls that name their ranges by data filters
//! (`batchGetByDataFilter`, `batchUpdateByDataFilter`).
//!
//! Append, as Google's guide "Append values" describes it: the input range is searched for
//! a table (rows with content in the range's columns, contiguous from the first such row at
//! or below the range's first row),
//! and the values go to the row after the table's last, from the table's first column; with
//! no table, to the range's first cell. `OVERWRITE` writes there, growing the grid when the
//! values reach past it; `INSERT_ROWS` first inserts as many whole rows there.

use serde_json::{Value, json};

use super::a1::{column_letters, quote_sheet};
use super::model::{GoogleError, Render, Spreadsheet};
use super::oauth::Principal;

type Result<T> = std::result::Result<T, GoogleError>;

/// Where `values.append` puts what it adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertData {
    /// `OVERWRITE` (the default): write after the table, over what is there.
    Overwrite,
    /// `INSERT_ROWS`: insert rows for the new values first.
    InsertRows,
}

impl InsertData {
    /// The `insertDataOption` query parameter.
    pub fn parse(option: Option<&str>) -> Result<Self> {
        match option {
            None | Some("OVERWRITE") => Ok(InsertData::Overwrite),
            Some("INSERT_ROWS") => Ok(InsertData::InsertRows),
            Some(other) => Err(GoogleError::invalid(format!(
                "Invalid value at 'insert_data_option' ({other})"
            ))),
        }
    }
}

impl Spreadsheet {
    /// `values.append` of `values` (by rows, or by columns with `major = "COLUMNS"`) after the
    /// table found in `range`. All or nothing.
    pub fn append_values(
        &mut self,
        range: &str,
        major: &str,
        values: &[Value],
        user_entered: bool,
        insert: InsertData,
        who: &Principal,
    ) -> Result<Value> {
        let (t, a) = self.target(range)?;
        let sheet = &self.sheets[t.sheet];
        let (grid_rows, grid_cols) = (sheet.rows, sheet.cols);
        let last_col = match (a.has_end, t.end_col) {
            (true, Some(c)) => c,
            _ => grid_cols.saturating_sub(1),
        };
        // The table: the first row at or below the range's first row with content in the
        // range's columns, and the rows with content right after it. The range's last row
        // does not bound it: `Sheet1!A1:E1` appends after a table of a hundred rows.
        let last_row = grid_rows.saturating_sub(1);
        let mut table: Option<(u32, u32, u32, u32)> = None;
        // (`take_while`, not an inclusive range: a range starting past the grid is empty.)
        for ((r, c), _) in sheet
            .cells
            .range((t.row, 0)..)
            .take_while(|((r, _), _)| *r <= last_row)
        {
            if *c < t.col || *c > last_col {
                continue;
            }
            table = match table {
                None => Some((*r, *r, *c, *c)),
                Some((first, last, c0, c1)) if *r <= last + 1 => {
                    Some((first, *r, c0.min(*c), c1.max(*c)))
                }
                Some(_) => break,
            };
        }
        let (row, col) = match table {
            Some((_, last, c0, _)) => (last + 1, c0),
            None => (t.row, t.col),
        };
        let rows: Vec<usize> = values
            .iter()
            .map(|r| r.as_array().map_or(0, Vec::len))
            .collect();
        let (height, width) = match major {
            "COLUMNS" => (rows.iter().copied().max().unwrap_or(0), rows.len()),
            _ => (rows.len(), rows.iter().copied().max().unwrap_or(0)),
        };
        let (height, width) = (
            u32::try_from(height).map_err(|_| GoogleError::invalid("Too many values"))?,
            u32::try_from(width).map_err(|_| GoogleError::invalid("Too many values"))?,
        );
        let mut next = self.clone();
        let sheet_id = next.sheets[t.sheet].sheet_id;
        if height > 0 && insert == InsertData::InsertRows {
            next.insert_dimension(&json!({"range": {
                "sheetId": sheet_id, "dimension": "ROWS",
                "startIndex": row, "endIndex": row.saturating_add(height),
            }}))?;
        }
        let s = &next.sheets[t.sheet];
        let (need_rows, need_cols) = (
            s.rows.max(row.saturating_add(height)),
            s.cols.max(col.saturating_add(width)),
        );
        next.resize(t.sheet, need_rows, need_cols);
        next.check_cells()?;
        let anchor = format!(
            "{}!{}{}",
            quote_sheet(&next.sheets[t.sheet].title),
            column_letters(col),
            row + 1
        );
        let updates = next.update_values(&anchor, major, values, user_entered, who)?;
        let mut out = json!({"spreadsheetId": self.id, "updates": updates});
        if let Some((first, last, c0, c1)) = table {
            out["tableRange"] = json!(self.a1_text(t.sheet, first, c0, last, c1));
        }
        *self = next;
        Ok(out)
    }

    /// `values:batchGetByDataFilter`: the values of every range each filter selects.
    pub fn get_by_filters(
        &self,
        filters: &[Value],
        render: Render,
        who: &Principal,
    ) -> Result<Value> {
        let mut ranges = Vec::new();
        for f in filters {
            for range in self.filter_ranges(f, who)? {
                ranges.push(
                    json!({"valueRange": self.get_values(&range, render)?, "dataFilters": [f]}),
                );
            }
        }
        Ok(json!({"spreadsheetId": self.id, "valueRanges": ranges}))
    }

    /// `values:batchUpdateByDataFilter`: each `data[]` entry's values written to every range
    /// its `dataFilter` selects (a filter that selects nothing writes nothing and has no
    /// response). All or nothing.
    pub fn update_by_filters(
        &mut self,
        data: &[Value],
        user_entered: bool,
        who: &Principal,
    ) -> Result<Value> {
        let mut next = self.clone();
        let mut responses = Vec::new();
        for d in data {
            let filter = &d["dataFilter"];
            let values = d["values"].as_array().cloned().unwrap_or_default();
            let major = d["majorDimension"].as_str().unwrap_or("ROWS");
            for range in next.filter_ranges(filter, who)? {
                let mut r = next.update_values(&range, major, &values, user_entered, who)?;
                r["dataFilter"] = filter.clone();
                responses.push(r);
            }
        }
        *self = next;
        let sum = |k: &str| {
            responses
                .iter()
                .map(|r| r[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        Ok(json!({
            "spreadsheetId": self.id,
            "totalUpdatedRows": sum("updatedRows"),
            "totalUpdatedColumns": sum("updatedColumns"),
            "totalUpdatedCells": sum("updatedCells"),
            "totalUpdatedSheets": usize::from(!responses.is_empty()),
            "responses": responses,
        }))
    }
}

//! Ranges as `batchUpdate` requests name them: `GridRange` (a rectangle of a sheet, by
//! sheet id, with half-open 0-based row and column bounds, a missing bound being unbounded)
//! and `DimensionRange` (rows or columns of a sheet, half-open), and how an index moves when
//! rows or columns are inserted or deleted.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::model::GoogleError;

type Result<T> = std::result::Result<T, GoogleError>;

/// Rows or columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dim {
    /// `ROWS`.
    Rows,
    /// `COLUMNS`.
    Columns,
}

impl Dim {
    /// `ROWS` or `COLUMNS` out of a request.
    pub fn parse(v: &Value) -> Result<Self> {
        match v.as_str() {
            Some("ROWS") => Ok(Dim::Rows),
            Some("COLUMNS") => Ok(Dim::Columns),
            _ => Err(GoogleError::invalid(
                "dimension must be ROWS or COLUMNS (DIMENSION_UNSPECIFIED is not allowed)",
            )),
        }
    }

    /// The enum word.
    pub fn word(self) -> &'static str {
        match self {
            Dim::Rows => "ROWS",
            Dim::Columns => "COLUMNS",
        }
    }
}

fn index(v: &Value, name: &str) -> Result<Option<u32>> {
    match &v[name] {
        Value::Null => Ok(None),
        n => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| GoogleError::invalid(format!("{name} must be a non-negative integer"))),
    }
}

/// A `GridRange`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridRange {
    /// Sheet id.
    pub sheet_id: i64,
    /// First row (inclusive), `None` from the top.
    pub start_row: Option<u32>,
    /// Last row (exclusive), `None` to the bottom.
    pub end_row: Option<u32>,
    /// First column (inclusive).
    pub start_col: Option<u32>,
    /// Last column (exclusive).
    pub end_col: Option<u32>,
}

impl GridRange {
    /// Reads a `GridRange` object (a missing `sheetId` is sheet 0, as proto3 defaults it).
    pub fn parse(v: &Value) -> Result<Self> {
        let r = GridRange {
            sheet_id: v["sheetId"].as_i64().unwrap_or(0),
            start_row: index(v, "startRowIndex")?,
            end_row: index(v, "endRowIndex")?,
            start_col: index(v, "startColumnIndex")?,
            end_col: index(v, "endColumnIndex")?,
        };
        for (s, e) in [(r.start_row, r.end_row), (r.start_col, r.end_col)] {
            if let (Some(s), Some(e)) = (s, e)
                && s > e
            {
                return Err(GoogleError::invalid(
                    "The start index of a range must be less than or equal to its end index",
                ));
            }
        }
        Ok(r)
    }

    /// The JSON object, without unbounded sides.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"sheetId": self.sheet_id});
        for (k, x) in [
            ("startRowIndex", self.start_row),
            ("endRowIndex", self.end_row),
            ("startColumnIndex", self.start_col),
            ("endColumnIndex", self.end_col),
        ] {
            if let Some(x) = x {
                v[k] = json!(x);
            }
        }
        v
    }

    /// Rows `[start, end)` with the grid's row count closing an open end.
    pub fn rows(&self, grid_rows: u32) -> (u32, u32) {
        (
            self.start_row.unwrap_or(0),
            self.end_row.unwrap_or(grid_rows).min(grid_rows),
        )
    }

    /// Columns `[start, end)` with the grid's column count closing an open end.
    pub fn cols(&self, grid_cols: u32) -> (u32, u32) {
        (
            self.start_col.unwrap_or(0),
            self.end_col.unwrap_or(grid_cols).min(grid_cols),
        )
    }

    /// Whether the cell (row, column) is inside.
    pub fn contains(&self, row: u32, col: u32) -> bool {
        self.start_row.is_none_or(|s| row >= s)
            && self.end_row.is_none_or(|e| row < e)
            && self.start_col.is_none_or(|s| col >= s)
            && self.end_col.is_none_or(|e| col < e)
    }

    /// Whether any cell of rows `[r0, r1)` x columns `[c0, c1)` is inside.
    pub fn intersects(&self, (r0, r1): (u32, u32), (c0, c1): (u32, u32)) -> bool {
        let overlap = |s: Option<u32>, e: Option<u32>, a: u32, b: u32| {
            a < b && s.is_none_or(|s| s < b) && e.is_none_or(|e| e > a)
        };
        overlap(self.start_row, self.end_row, r0, r1)
            && overlap(self.start_col, self.end_col, c0, c1)
    }

    /// The bounds along `dim`, mutably.
    pub fn bounds_mut(&mut self, dim: Dim) -> (&mut Option<u32>, &mut Option<u32>) {
        match dim {
            Dim::Rows => (&mut self.start_row, &mut self.end_row),
            Dim::Columns => (&mut self.start_col, &mut self.end_col),
        }
    }

    /// Follows `n` rows or columns inserted at `at`: bounds at or after it move by `n`, so a
    /// range that spans the insertion point grows. Google does the same to every range it
    /// keeps (protected ranges, named ranges).
    pub fn insert(&mut self, dim: Dim, at: u32, n: u32) {
        let (s, e) = self.bounds_mut(dim);
        if let Some(s) = s.as_mut()
            && *s >= at
        {
            *s += n;
        }
        if let Some(e) = e.as_mut()
            && *e > at
        {
            *e += n;
        }
    }

    /// Follows rows or columns `[a, b)` deleted: bounds after them move back, bounds inside
    /// them go to `a`. Returns false when nothing of the range is left.
    pub fn delete(&mut self, dim: Dim, a: u32, b: u32) -> bool {
        let shift = |x: u32| {
            if x >= b {
                x - (b - a)
            } else if x >= a {
                a
            } else {
                x
            }
        };
        let (s, e) = self.bounds_mut(dim);
        *s = s.map(shift);
        *e = e.map(shift);
        match (*s, *e) {
            (Some(s), Some(e)) => s < e,
            _ => true,
        }
    }
}

/// A `DimensionRange`: rows or columns `[start, end)` of a sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DimRange {
    /// Sheet id.
    pub sheet_id: i64,
    /// Rows or columns.
    pub dim: Dim,
    /// First index (inclusive).
    pub start: u32,
    /// Last index (exclusive).
    pub end: u32,
}

impl DimRange {
    /// Reads a `DimensionRange`; an unset end is the grid's end (`grid` gives rows and
    /// columns of the sheet named).
    pub fn parse(v: &Value, grid: impl Fn(i64) -> Result<(u32, u32)>) -> Result<Self> {
        let sheet_id = v["sheetId"].as_i64().unwrap_or(0);
        let dim = Dim::parse(&v["dimension"])?;
        let (rows, cols) = grid(sheet_id)?;
        let count = match dim {
            Dim::Rows => rows,
            Dim::Columns => cols,
        };
        let start = index(v, "startIndex")?.unwrap_or(0);
        let end = index(v, "endIndex")?.unwrap_or(count);
        if start >= end {
            return Err(GoogleError::invalid(format!(
                "The range [{start}, {end}) is empty: startIndex must be less than endIndex"
            )));
        }
        Ok(DimRange {
            sheet_id,
            dim,
            start,
            end,
        })
    }

    /// The JSON object.
    pub fn to_json(&self) -> Value {
        json!({"sheetId": self.sheet_id, "dimension": self.dim.word(), "startIndex": self.start, "endIndex": self.end})
    }

    /// How many rows or columns (never 0: [`DimRange::parse`] refuses empty ranges).
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    /// Whether it holds no row or column.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_inserts_and_deletes() {
        let mut r =
            GridRange::parse(&json!({"sheetId": 3, "startRowIndex": 2, "endRowIndex": 5})).unwrap();
        assert!(r.contains(2, 7) && r.contains(4, 0) && !r.contains(5, 0) && !r.contains(1, 0));
        r.insert(Dim::Rows, 3, 2);
        assert_eq!(
            (r.start_row, r.end_row),
            (Some(2), Some(7)),
            "grows across the insert"
        );
        r.insert(Dim::Rows, 0, 1);
        assert_eq!((r.start_row, r.end_row), (Some(3), Some(8)));
        r.insert(Dim::Columns, 0, 1);
        assert_eq!((r.start_col, r.end_col), (None, None));
        assert!(r.delete(Dim::Rows, 0, 4));
        assert_eq!((r.start_row, r.end_row), (Some(0), Some(4)));
        assert!(!r.delete(Dim::Rows, 0, 10), "nothing left");
        assert!(
            !r.intersects((0, 1), (0, 1)),
            "an empty range holds no cell"
        );
        assert!(GridRange::parse(&json!({"startRowIndex": 3, "endRowIndex": 2})).is_err());
    }
}

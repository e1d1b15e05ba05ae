//! What people do to rows and columns, as `batchUpdate` requests: `insertDimension`,
//! `deleteDimension`, `moveDimension` and `sortRange`, and the trimming of a grid by
//! `updateSheetProperties`. Cells move with their row or column, and so does the developer
//! metadata on it (deleted with it); protected ranges grow and shrink with inserts and
//! deletes. Deleting, moving or sorting cells of a range protected against the requester is
//! refused as Google refuses it.

use std::cmp::Ordering;

use serde_json::{Value, json};

use super::grid::{Dim, DimRange, GridRange};
use super::model::{Cell, GoogleError, Spreadsheet};
use super::oauth::Principal;

type Result<T> = std::result::Result<T, GoogleError>;

impl Spreadsheet {
    fn dim_range(&self, v: &Value) -> Result<DimRange> {
        DimRange::parse(v, |id| {
            let s = &self.sheets[self.sheet_pos(id)?];
            Ok((s.rows, s.cols))
        })
    }

    /// Moves whole rows or columns of the sheet at `pos` through `map` (old index to new,
    /// `None`: deleted), with their metadata.
    fn remap(&mut self, pos: usize, dim: Dim, map: &dyn Fn(u32) -> Option<u32>) {
        let sheet = &mut self.sheets[pos];
        let cells = std::mem::take(&mut sheet.cells);
        sheet.cells = cells
            .into_iter()
            .filter_map(|((r, c), v)| match dim {
                Dim::Rows => map(r).map(|r| ((r, c), v)),
                Dim::Columns => map(c).map(|c| ((r, c), v)),
            })
            .collect();
        let id = sheet.sheet_id;
        self.remap_metadata(id, dim, map);
    }

    /// Rows and columns of a dimension range, the other dimension whole.
    fn span(&self, r: &DimRange, pos: usize) -> ((u32, u32), (u32, u32)) {
        let s = &self.sheets[pos];
        match r.dim {
            Dim::Rows => ((r.start, r.end), (0, s.cols)),
            Dim::Columns => ((0, s.rows), (r.start, r.end)),
        }
    }

    fn count_mut(&mut self, pos: usize, dim: Dim) -> &mut u32 {
        match dim {
            Dim::Rows => &mut self.sheets[pos].rows,
            Dim::Columns => &mut self.sheets[pos].cols,
        }
    }

    /// `insertDimension`: empty rows or columns at `[startIndex, endIndex)`; what was there
    /// and after moves down or right. `inheritFromBefore` (formatting) is accepted.
    pub(crate) fn insert_dimension(&mut self, body: &Value) -> Result<Value> {
        let r = &body["range"];
        if r["endIndex"].is_null() {
            return Err(GoogleError::invalid("range.endIndex is required"));
        }
        let start = r["startIndex"].as_u64().unwrap_or(0);
        let sheet_id = r["sheetId"].as_i64().unwrap_or(0);
        let count = self.grid_len(sheet_id, Dim::parse(&r["dimension"])?)?;
        if start > u64::from(count) {
            return Err(GoogleError::invalid(format!(
                "Cannot insert at index {start}: the sheet has only {count}"
            )));
        }
        let range = DimRange::parse(r, |_| Ok((u32::MAX, u32::MAX)))?;
        if body["inheritFromBefore"].as_bool() == Some(true) && range.start == 0 {
            return Err(GoogleError::invalid(
                "inheritFromBefore cannot be true when inserting at the start of the sheet",
            ));
        }
        let pos = self.sheet_pos(range.sheet_id)?;
        let (at, n) = (range.start, range.len());
        self.remap(pos, range.dim, &|i| Some(if i >= at { i + n } else { i }));
        let count = self.count_mut(pos, range.dim);
        *count = count.saturating_add(n);
        for p in self
            .protected
            .iter_mut()
            .filter(|p| p.range.sheet_id == range.sheet_id)
        {
            p.range.insert(range.dim, at, n);
        }
        Ok(json!({}))
    }

    /// Deletes rows or columns `[a, b)` of the sheet at `pos`: later ones move back, their
    /// metadata goes, protected ranges shrink (and go when empty).
    fn delete_span(&mut self, pos: usize, dim: Dim, a: u32, b: u32) {
        let n = b - a;
        self.remap(pos, dim, &|i| {
            if i < a {
                Some(i)
            } else if i >= b {
                Some(i - n)
            } else {
                None
            }
        });
        let count = self.count_mut(pos, dim);
        *count = count.saturating_sub(n);
        let sheet_id = self.sheets[pos].sheet_id;
        self.protected
            .retain_mut(|p| p.range.sheet_id != sheet_id || p.range.delete(dim, a, b));
    }

    /// `deleteDimension`.
    pub(crate) fn delete_dimension(&mut self, body: &Value, who: &Principal) -> Result<Value> {
        let range = self.dim_range(&body["range"])?;
        let pos = self.sheet_pos(range.sheet_id)?;
        let count = self.grid_len(range.sheet_id, range.dim)?;
        if range.end > count {
            return Err(GoogleError::invalid(format!(
                "Index {} is beyond the grid: the sheet has {count} {}",
                range.end,
                range.dim.word().to_lowercase()
            )));
        }
        if range.start == 0 && range.end == count {
            let what = match range.dim {
                Dim::Rows => "rows",
                Dim::Columns => "columns",
            };
            return Err(GoogleError::invalid(format!(
                "You can't delete all the {what} on the sheet."
            )));
        }
        let (rows, cols) = self.span(&range, pos);
        self.check_unprotected(who, range.sheet_id, rows, cols)?;
        self.delete_span(pos, range.dim, range.start, range.end);
        Ok(json!({}))
    }

    /// `moveDimension`: `destinationIndex` counts before the source is taken out, so moving
    /// rows [1, 3) of 0,1,2,3,4 to 4 gives 0,3,1,2,4 (Google's own example).
    pub(crate) fn move_dimension(&mut self, body: &Value, who: &Principal) -> Result<Value> {
        let src = self.dim_range(&body["source"])?;
        let pos = self.sheet_pos(src.sheet_id)?;
        let count = self.grid_len(src.sheet_id, src.dim)?;
        let dest = body["destinationIndex"]
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .ok_or_else(|| GoogleError::invalid("destinationIndex is required"))?;
        if src.end > count || dest > count {
            return Err(GoogleError::invalid(format!(
                "The source or destination is beyond the grid: the sheet has {count} {}",
                src.dim.word().to_lowercase()
            )));
        }
        if (src.start..=src.end).contains(&dest) {
            return Ok(json!({}));
        }
        let lo = src.start.min(dest);
        let hi = src.end.max(dest);
        let (rows, cols) = self.span(
            &DimRange {
                start: lo,
                end: hi,
                ..src
            },
            pos,
        );
        self.check_unprotected(who, src.sheet_id, rows, cols)?;
        let mut order: Vec<u32> = (lo..hi).collect();
        let taken: Vec<u32> = order
            .drain((src.start - lo) as usize..(src.end - lo) as usize)
            .collect();
        let at = if dest < src.start {
            dest
        } else {
            dest - src.len()
        };
        order.splice((at - lo) as usize..(at - lo) as usize, taken);
        let mut new_of = vec![0u32; (hi - lo) as usize];
        for (k, old) in order.iter().enumerate() {
            new_of[(old - lo) as usize] = lo + k as u32;
        }
        self.remap(pos, src.dim, &|i| {
            Some(if (lo..hi).contains(&i) {
                new_of[(i - lo) as usize]
            } else {
                i
            })
        });
        Ok(json!({}))
    }

    /// `sortRange`: orders the rows of the range by `sortSpecs` (column `dimensionIndex`,
    /// ASCENDING or DESCENDING), stably; blanks go last either way, numbers before text
    /// (compared without case) before booleans. Cells outside the range's columns stay, so
    /// a row's metadata moves with it only when the range spans every column (the whole row
    /// moved).
    pub(crate) fn sort_range(&mut self, body: &Value, who: &Principal) -> Result<Value> {
        let range = GridRange::parse(&body["range"])?;
        let pos = self.sheet_pos(range.sheet_id)?;
        let (grid_rows, grid_cols) = (self.sheets[pos].rows, self.sheets[pos].cols);
        let (r0, r1) = range.rows(grid_rows);
        let (c0, c1) = range.cols(grid_cols);
        let mut specs: Vec<(u32, bool)> = Vec::new();
        for s in body["sortSpecs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let col = s["dimensionIndex"]
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .ok_or_else(|| GoogleError::invalid("sortSpecs[].dimensionIndex is required"))?;
            if col >= grid_cols {
                return Err(GoogleError::invalid(format!(
                    "sortSpecs[].dimensionIndex {col} is beyond the grid ({grid_cols} columns)"
                )));
            }
            let descending = match s["sortOrder"].as_str().unwrap_or("ASCENDING") {
                "ASCENDING" => false,
                "DESCENDING" => true,
                other => {
                    return Err(GoogleError::invalid(format!(
                        "Invalid value at 'sort_order' ({other})"
                    )));
                }
            };
            specs.push((col, descending));
        }
        if specs.is_empty() {
            specs.push((c0, false));
        }
        if r0 >= r1 || c0 >= c1 {
            return Ok(json!({}));
        }
        self.check_unprotected(who, range.sheet_id, (r0, r1), (c0, c1))?;
        let sheet = &self.sheets[pos];
        let mut order: Vec<u32> = (r0..r1).collect();
        order.sort_by(|a, b| {
            for &(col, descending) in &specs {
                let o = compare(
                    sheet.cells.get(&(*a, col)),
                    sheet.cells.get(&(*b, col)),
                    descending,
                );
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
        let mut new_of = vec![0u32; (r1 - r0) as usize];
        for (k, old) in order.iter().enumerate() {
            new_of[(old - r0) as usize] = r0 + k as u32;
        }
        let map = |i: u32| {
            if (r0..r1).contains(&i) {
                new_of[(i - r0) as usize]
            } else {
                i
            }
        };
        if c0 == 0 && c1 >= grid_cols {
            self.remap(pos, Dim::Rows, &|i| Some(map(i)));
        } else {
            let sheet = &mut self.sheets[pos];
            let cells = std::mem::take(&mut sheet.cells);
            sheet.cells = cells
                .into_iter()
                .map(|((r, c), v)| {
                    if (c0..c1).contains(&c) {
                        ((map(r), c), v)
                    } else {
                        ((r, c), v)
                    }
                })
                .collect();
        }
        Ok(json!({}))
    }

    /// Sets the grid of the sheet at `pos` to `rows` x `cols`: growing adds empty rows and
    /// columns at the end, trimming deletes the rows and columns beyond (their cells and
    /// metadata go).
    pub(crate) fn resize(&mut self, pos: usize, rows: u32, cols: u32) {
        for (dim, want) in [(Dim::Rows, rows), (Dim::Columns, cols)] {
            let have = *self.count_mut(pos, dim);
            if want < have {
                self.delete_span(pos, dim, want, have);
            } else {
                *self.count_mut(pos, dim) = want;
            }
        }
    }
}

/// Sort order of two cells of one column; blanks last whatever the direction.
fn compare(a: Option<&Cell>, b: Option<&Cell>, descending: bool) -> Ordering {
    let (a, b) = match (a, b) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => return Ordering::Greater,
        (Some(_), None) => return Ordering::Less,
        (Some(a), Some(b)) => (a, b),
    };
    let rank = |c: &Cell| match c {
        Cell::Number(_) => 0,
        Cell::Text(_) | Cell::Formula(_) => 1,
        Cell::Bool(_) => 2,
    };
    let o = match (a, b) {
        (Cell::Number(x), Cell::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Cell::Text(x) | Cell::Formula(x), Cell::Text(y) | Cell::Formula(y)) => {
            x.to_lowercase().cmp(&y.to_lowercase())
        }
        (Cell::Bool(x), Cell::Bool(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    };
    if descending { o.reverse() } else { o }
}

//! Developer metadata (`spreadsheets.developerMetadata`): key/value pairs located on the
//! spreadsheet, a sheet, or one row or column. As Google documents, metadata on a row or
//! column stays with it when rows or columns are inserted, deleted, moved or sorted (the
//! callers remap it through [`Spreadsheet::remap_metadata`]), and goes when its row, column
//! or sheet is deleted. `PROJECT` visibility shows metadata only to the project that made it.
//!
//! Data filters (`DataFilter`: `developerMetadataLookup`, `a1Range`, `gridRange`) select
//! metadata here and, through the locations of what they select, ranges of values for
//! `values:batchGetByDataFilter` and `values:batchUpdateByDataFilter`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::a1::{self, column_letters, quote_sheet};
use super::grid::{Dim, DimRange, GridRange};
use super::model::{GoogleError, Spreadsheet, unparsable};
use super::oauth::Principal;

type Result<T> = std::result::Result<T, GoogleError>;

/// Most characters (keys and values together) of the metadata on the spreadsheet itself,
/// and, apart, on each sheet with its rows and columns: Google's guide "Read, write, and
/// search metadata", section "Metadata size limits" (30,000 characters for the spreadsheet
/// and 30,000 for each sheet). It also bounds the emulator's memory.
pub const METADATA_CHARS: usize = 30_000;

/// Where metadata is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// The spreadsheet.
    Spreadsheet,
    /// A sheet, by id.
    Sheet(i64),
    /// One row or column of a sheet.
    Dimension {
        /// Sheet id.
        sheet_id: i64,
        /// Rows or columns.
        dim: Dim,
        /// The row's or column's index.
        index: u32,
    },
}

impl Location {
    /// The sheet it is on (`None` for the spreadsheet).
    pub fn sheet_id(&self) -> Option<i64> {
        match self {
            Location::Spreadsheet => None,
            Location::Sheet(id) | Location::Dimension { sheet_id: id, .. } => Some(*id),
        }
    }

    /// Whether it is a whole sheet.
    pub fn is_sheet(&self) -> bool {
        matches!(self, Location::Sheet(_))
    }

    fn type_word(&self) -> &'static str {
        match self {
            Location::Spreadsheet => "SPREADSHEET",
            Location::Sheet(_) => "SHEET",
            Location::Dimension { dim: Dim::Rows, .. } => "ROW",
            Location::Dimension {
                dim: Dim::Columns, ..
            } => "COLUMN",
        }
    }

    /// The `DeveloperMetadataLocation` resource.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"locationType": self.type_word()});
        match self {
            Location::Spreadsheet => v["spreadsheet"] = json!(true),
            Location::Sheet(id) => v["sheetId"] = json!(id),
            Location::Dimension {
                sheet_id,
                dim,
                index,
            } => {
                let r = DimRange {
                    sheet_id: *sheet_id,
                    dim: *dim,
                    start: *index,
                    end: index + 1,
                };
                v["dimensionRange"] = r.to_json();
            }
        }
        v
    }

    /// Reads a `DeveloperMetadataLocation` (one of `spreadsheet`, `sheetId`,
    /// `dimensionRange`; a dimension range of exactly one row or column).
    fn parse(v: &Value, s: &Spreadsheet) -> Result<Self> {
        let given = ["spreadsheet", "sheetId", "dimensionRange"]
            .iter()
            .filter(|k| !v[**k].is_null())
            .count();
        if given != 1 {
            return Err(GoogleError::invalid(
                "A developer metadata location must have exactly one of spreadsheet, sheetId or dimensionRange",
            ));
        }
        if v["spreadsheet"].as_bool() == Some(true) {
            return Ok(Location::Spreadsheet);
        }
        if let Some(id) = v["sheetId"].as_i64() {
            s.sheet_pos(id)?;
            return Ok(Location::Sheet(id));
        }
        let r = DimRange::parse(&v["dimensionRange"], |id| {
            let sheet = &s.sheets[s.sheet_pos(id)?];
            Ok((sheet.rows, sheet.cols))
        })?;
        let count = s.grid_len(r.sheet_id, r.dim)?;
        if r.len() != 1 || v["dimensionRange"]["endIndex"].is_null() || r.end > count {
            return Err(GoogleError::invalid(
                "The specified DimensionRange must represent a single row or column within the grid; it cannot be unbounded or span multiple rows or columns.",
            ));
        }
        Ok(Location::Dimension {
            sheet_id: r.sheet_id,
            dim: r.dim,
            index: r.start,
        })
    }
}

/// `DOCUMENT` or `PROJECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Visibility {
    /// Seen by every project.
    Document,
    /// Seen only by the project that made it.
    Project,
}

impl Visibility {
    fn parse(v: &Value) -> Result<Self> {
        match v.as_str() {
            Some("DOCUMENT") => Ok(Visibility::Document),
            Some("PROJECT") => Ok(Visibility::Project),
            _ => Err(GoogleError::invalid(
                "Developer metadata must always have a visibility specified (DOCUMENT or PROJECT).",
            )),
        }
    }

    fn word(self) -> &'static str {
        match self {
            Visibility::Document => "DOCUMENT",
            Visibility::Project => "PROJECT",
        }
    }
}

/// One piece of developer metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeveloperMetadata {
    /// `metadataId`.
    pub id: i64,
    /// `metadataKey`.
    pub key: String,
    /// `metadataValue`.
    pub value: Option<String>,
    /// Where it is.
    pub location: Location,
    /// Who sees it.
    pub visibility: Visibility,
    /// Project that made it.
    pub project: String,
}

impl DeveloperMetadata {
    /// The `DeveloperMetadata` resource.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "metadataId": self.id,
            "metadataKey": self.key,
            "location": self.location.to_json(),
            "visibility": self.visibility.word(),
        });
        if let Some(value) = &self.value {
            v["metadataValue"] = json!(value);
        }
        v
    }

    fn visible_to(&self, who: &Principal) -> bool {
        self.visibility == Visibility::Document || self.project == who.project
    }

    fn chars(&self) -> usize {
        self.key.chars().count() + self.value.as_deref().map_or(0, |v| v.chars().count())
    }
}

impl Spreadsheet {
    /// Rows or columns in the grid of sheet `sheet_id`.
    pub(crate) fn grid_len(&self, sheet_id: i64, dim: Dim) -> Result<u32> {
        let s = &self.sheets[self.sheet_pos(sheet_id)?];
        Ok(match dim {
            Dim::Rows => s.rows,
            Dim::Columns => s.cols,
        })
    }

    /// Moves the metadata on rows or columns of `sheet_id` through `map` (old index to new;
    /// `None`: deleted with its row or column).
    pub(crate) fn remap_metadata(
        &mut self,
        sheet_id: i64,
        dim: Dim,
        map: &dyn Fn(u32) -> Option<u32>,
    ) {
        self.metadata.retain_mut(|m| match &mut m.location {
            Location::Dimension {
                sheet_id: s,
                dim: d,
                index,
            } if *s == sheet_id && *d == dim => match map(*index) {
                Some(n) => {
                    *index = n;
                    true
                }
                None => false,
            },
            _ => true,
        });
    }

    fn check_metadata_size(&self) -> Result<()> {
        let mut per: std::collections::HashMap<Option<i64>, usize> = Default::default();
        for m in &self.metadata {
            *per.entry(m.location.sheet_id()).or_default() += m.chars();
        }
        match per.into_iter().find(|(_, n)| *n > METADATA_CHARS) {
            Some((None, _)) => Err(GoogleError::invalid(format!(
                "The developer metadata of the spreadsheet would exceed the limit of {METADATA_CHARS} characters."
            ))),
            Some((Some(id), _)) => Err(GoogleError::invalid(format!(
                "The developer metadata of the sheet {id} would exceed the limit of {METADATA_CHARS} characters."
            ))),
            None => Ok(()),
        }
    }

    /// `createDeveloperMetadata`.
    pub(crate) fn create_metadata(&mut self, body: &Value, who: &Principal) -> Result<Value> {
        let m = &body["developerMetadata"];
        let key = m["metadataKey"]
            .as_str()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                GoogleError::invalid("Developer metadata must always have a key specified.")
            })?
            .to_string();
        let location = Location::parse(&m["location"], self)?;
        let visibility = Visibility::parse(&m["visibility"])?;
        let id = match m["metadataId"].as_i64() {
            Some(id) if id <= 0 => {
                return Err(GoogleError::invalid("metadataId must be positive"));
            }
            Some(id) if self.metadata.iter().any(|x| x.id == id) => {
                return Err(GoogleError::invalid(format!(
                    "Developer metadata with ID {id} already exists."
                )));
            }
            Some(id) => id,
            None => self.next_object(),
        };
        let created = DeveloperMetadata {
            id,
            key,
            value: m["metadataValue"].as_str().map(str::to_string),
            location,
            visibility,
            project: who.project.clone(),
        };
        let reply = json!({"createDeveloperMetadata": {"developerMetadata": created.to_json()}});
        self.metadata.push(created);
        self.check_metadata_size()?;
        Ok(reply)
    }

    /// `updateDeveloperMetadata`: sets the `fields` of every metadata the filters select.
    pub(crate) fn update_metadata(&mut self, body: &Value, who: &Principal) -> Result<Value> {
        let filters = body["dataFilters"].as_array().cloned().unwrap_or_default();
        let fields = body["fields"]
            .as_str()
            .ok_or_else(|| GoogleError::invalid("fields is required"))?;
        let new = &body["developerMetadata"];
        let mut hit = Vec::new();
        for f in &filters {
            for i in self.metadata_matching(f, who)? {
                if !hit.contains(&i) {
                    hit.push(i);
                }
            }
        }
        let location = match fields
            .split(',')
            .any(|f| f.trim() == "location" || f.trim() == "*")
        {
            true => Some(Location::parse(&new["location"], self)?),
            false => None,
        };
        for &i in &hit {
            for f in fields.split(',').map(str::trim) {
                let m = &mut self.metadata[i];
                match f {
                    "metadataKey" => {
                        m.key = new["metadataKey"]
                            .as_str()
                            .filter(|k| !k.is_empty())
                            .ok_or_else(|| {
                                GoogleError::invalid(
                                    "Developer metadata must always have a key specified.",
                                )
                            })?
                            .to_string()
                    }
                    "metadataValue" => m.value = new["metadataValue"].as_str().map(str::to_string),
                    "visibility" => m.visibility = Visibility::parse(&new["visibility"])?,
                    "location" | "*" => {
                        if let Some(l) = &location {
                            m.location = l.clone();
                        }
                    }
                    "metadataId" => {
                        return Err(GoogleError::invalid("metadataId cannot be updated"));
                    }
                    other => {
                        return Err(GoogleError::invalid(format!("Invalid field mask: {other}")));
                    }
                }
            }
        }
        self.check_metadata_size()?;
        let updated: Vec<Value> = hit.iter().map(|i| self.metadata[*i].to_json()).collect();
        Ok(json!({"updateDeveloperMetadata": {"developerMetadata": updated}}))
    }

    /// `deleteDeveloperMetadata`: deletes what the `dataFilter` selects.
    pub(crate) fn delete_metadata(&mut self, body: &Value, who: &Principal) -> Result<Value> {
        let hit = self.metadata_matching(&body["dataFilter"], who)?;
        let deleted: Vec<Value> = hit.iter().map(|i| self.metadata[*i].to_json()).collect();
        let mut i = 0;
        self.metadata.retain(|_| {
            i += 1;
            !hit.contains(&(i - 1))
        });
        Ok(json!({"deleteDeveloperMetadata": {"deletedDeveloperMetadata": deleted}}))
    }

    /// `developerMetadata:search`: each matched metadata once, with the filters that matched
    /// it; `{}` when none did.
    pub fn search_metadata(&self, filters: &[Value], who: &Principal) -> Result<Value> {
        let mut matched: Vec<(usize, Vec<Value>)> = Vec::new();
        for f in filters {
            for i in self.metadata_matching(f, who)? {
                match matched.iter_mut().find(|(j, _)| *j == i) {
                    Some((_, fs)) => fs.push(f.clone()),
                    None => matched.push((i, vec![f.clone()])),
                }
            }
        }
        matched.sort_by_key(|(i, _)| self.metadata[*i].id);
        if matched.is_empty() {
            return Ok(json!({}));
        }
        Ok(
            json!({"matchedDeveloperMetadata": matched.into_iter().map(|(i, fs)| json!({
            "developerMetadata": self.metadata[i].to_json(),
            "dataFilters": fs,
        })).collect::<Vec<_>>()}),
        )
    }

    /// `developerMetadata.get`.
    pub fn get_metadata(&self, id: i64, who: &Principal) -> Result<Value> {
        self.metadata
            .iter()
            .find(|m| m.id == id && m.visible_to(who))
            .map(DeveloperMetadata::to_json)
            .ok_or_else(|| GoogleError {
                code: 404,
                status: "NOT_FOUND",
                message: format!("No developer metadata with ID: {id}"),
            })
    }

    /// Indexes of the metadata a `DataFilter` selects.
    fn metadata_matching(&self, filter: &Value, who: &Principal) -> Result<Vec<usize>> {
        let visible = self
            .metadata
            .iter()
            .enumerate()
            .filter(|(_, m)| m.visible_to(who));
        if let Some(l) = filter.get("developerMetadataLookup") {
            let location = match l.get("metadataLocation") {
                Some(v) => Some(Location::parse(v, self)?),
                None => None,
            };
            let intersecting =
                l["locationMatchingStrategy"].as_str() == Some("INTERSECTING_LOCATION");
            let visibility = match l.get("visibility") {
                Some(v) => Some(Visibility::parse(v)?),
                None => None,
            };
            return Ok(visible
                .filter(|(_, m)| {
                    l["metadataId"].as_i64().is_none_or(|id| id == m.id)
                        && l["metadataKey"].as_str().is_none_or(|k| k == m.key)
                        && l["metadataValue"]
                            .as_str()
                            .is_none_or(|v| Some(v) == m.value.as_deref())
                        && l["locationType"]
                            .as_str()
                            .is_none_or(|t| t == m.location.type_word())
                        && visibility.is_none_or(|v| v == m.visibility)
                        && location.as_ref().is_none_or(|loc| {
                            *loc == m.location || (intersecting && within(&m.location, loc))
                        })
                })
                .map(|(i, _)| i)
                .collect());
        }
        let range = self.filter_grid_range(filter)?;
        Ok(visible
            .filter(|(_, m)| match &m.location {
                Location::Spreadsheet => false,
                Location::Sheet(id) => *id == range.sheet_id,
                Location::Dimension {
                    sheet_id,
                    dim,
                    index,
                } => {
                    *sheet_id == range.sheet_id
                        && match dim {
                            Dim::Rows => range.intersects((*index, index + 1), (0, u32::MAX)),
                            Dim::Columns => range.intersects((0, u32::MAX), (*index, index + 1)),
                        }
                }
            })
            .map(|(i, _)| i)
            .collect())
    }

    /// The `GridRange` of an `a1Range` or `gridRange` filter.
    fn filter_grid_range(&self, filter: &Value) -> Result<GridRange> {
        if let Some(g) = filter.get("gridRange") {
            let r = GridRange::parse(g)?;
            self.sheet_pos(r.sheet_id)?;
            return Ok(r);
        }
        let text = filter["a1Range"].as_str().ok_or_else(|| {
            GoogleError::invalid(
                "A data filter needs one of developerMetadataLookup, a1Range or gridRange",
            )
        })?;
        let a = a1::parse(text).ok_or_else(|| unparsable(text))?;
        let (t, _) = self.target(text)?;
        let sheet_id = self.sheets[t.sheet].sheet_id;
        Ok(GridRange {
            sheet_id,
            start_row: a.start_row,
            end_row: a.end_row.map(|e| e + 1),
            start_col: a.start_col,
            end_col: a.end_col.map(|e| e + 1),
        })
    }

    /// The ranges (A1) of values a `DataFilter` selects: an `a1Range` or `gridRange` itself;
    /// for a metadata lookup, the row, column or sheet of each matched metadata (metadata on
    /// the spreadsheet selects no values).
    pub fn filter_ranges(&self, filter: &Value, who: &Principal) -> Result<Vec<String>> {
        if filter.get("developerMetadataLookup").is_none() {
            let r = self.filter_grid_range(filter)?;
            let sheet = &self.sheets[self.sheet_pos(r.sheet_id)?];
            let (r0, r1) = r.rows(sheet.rows);
            let (c0, c1) = r.cols(sheet.cols);
            if r0 >= r1 || c0 >= c1 {
                return Err(GoogleError::invalid(
                    "The data filter's range is empty or outside the grid",
                ));
            }
            return Ok(vec![format!(
                "{}!{}{}:{}{}",
                quote_sheet(&sheet.title),
                column_letters(c0),
                r0 + 1,
                column_letters(c1 - 1),
                r1
            )]);
        }
        let mut out = Vec::new();
        for i in self.metadata_matching(filter, who)? {
            let loc = &self.metadata[i].location;
            let Some(sheet_id) = loc.sheet_id() else {
                continue;
            };
            let title = quote_sheet(&self.sheets[self.sheet_pos(sheet_id)?].title);
            let range = match loc {
                Location::Dimension {
                    dim: Dim::Rows,
                    index,
                    ..
                } => format!("{title}!{}:{}", index + 1, index + 1),
                Location::Dimension {
                    dim: Dim::Columns,
                    index,
                    ..
                } => {
                    let c = column_letters(*index);
                    format!("{title}!{c}:{c}")
                }
                _ => title,
            };
            if !out.contains(&range) {
                out.push(range);
            }
        }
        Ok(out)
    }
}

/// Whether `inner` lies within `outer` (INTERSECTING_LOCATION): everything is within the
/// spreadsheet, rows and columns within their sheet.
fn within(inner: &Location, outer: &Location) -> bool {
    match outer {
        Location::Spreadsheet => true,
        Location::Sheet(id) => inner.sheet_id() == Some(*id),
        Location::Dimension { .. } => inner == outer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_bounded_per_sheet_and_for_the_spreadsheet() {
        let who = Principal {
            email: "a@p.iam.gserviceaccount.com".into(),
            project: "p".into(),
        };
        let mut s = Spreadsheet::new("s".into(), "T".into(), &[("A".into(), 5, 5)], None);
        let create = |s: &mut Spreadsheet, location: Value, value: String| {
            s.batch_update(
                &[json!({"createDeveloperMetadata": {"developerMetadata": {
                    "metadataKey": "k", "metadataValue": value, "visibility": "DOCUMENT", "location": location
                }}})],
                &who,
            )
        };
        let row = json!({"dimensionRange": {"sheetId": 0, "dimension": "ROWS", "startIndex": 1, "endIndex": 2}});
        create(&mut s, row.clone(), "x".repeat(METADATA_CHARS - 2)).unwrap();
        let e = create(&mut s, json!({"sheetId": 0}), "xy".into()).unwrap_err();
        assert!(
            e.message.contains("limit of 30000 characters"),
            "{}",
            e.message
        );
        assert_eq!(s.metadata.len(), 1, "a refused batch keeps nothing");
        create(&mut s, json!({"spreadsheet": true}), "x".repeat(100)).unwrap();
        // PROJECT metadata is not seen by another project.
        s.batch_update(
            &[json!({"createDeveloperMetadata": {"developerMetadata": {
                "metadataId": 5, "metadataKey": "mine", "visibility": "PROJECT", "location": {"spreadsheet": true}
            }}})],
            &who,
        )
        .unwrap();
        let stranger = Principal {
            email: "b@q.iam.gserviceaccount.com".into(),
            project: "q".into(),
        };
        let lookup = [json!({"developerMetadataLookup": {"metadataKey": "mine"}})];
        assert_eq!(s.search_metadata(&lookup, &stranger).unwrap(), json!({}));
        assert_eq!(
            s.search_metadata(&lookup, &who).unwrap()["matchedDeveloperMetadata"][0]["developerMetadata"]
                ["metadataId"],
            5
        );
        assert_eq!(s.get_metadata(5, &stranger).unwrap_err().code, 404);
    }
}

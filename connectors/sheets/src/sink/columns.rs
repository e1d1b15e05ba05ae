//! Columns stay where the connector put them, or it stops before writing.
//!
//! A person may insert, delete or move columns among the connector's (a checkbox column
//! before the data, a question's column dragged elsewhere). Writing by the stored layout
//! would then put answers under the wrong headers and over the person's cells. Every column
//! of the connector carries developer metadata (key [`KEY`], value `fixed:<n>` or
//! `question:<id>`, on the column's dimension range), which Google moves with the column
//! through inserts, deletes, moves and sorts and deletes with it (Sheets API v4, "Read,
//! write, and search metadata"). The header row is read with every batch's verification
//! read (no extra request); only when it differs from what the connector wrote does it
//! search the metadata (one read). If a column of its is not where the layout says, the
//! integration pauses with the reason, before anything is written, until a person puts the
//! columns back and resumes it. A header whose text alone changed (a person typed over it)
//! is rewritten. Following the columns to where they went is not done yet (README).

use std::collections::{HashMap, HashSet};

use collect_connect::{SinkContext, SinkError};
use google_sheets4::api::{
    CreateDeveloperMetadataRequest, DeveloperMetadata, DeveloperMetadataLocation, DimensionRange,
    Request,
};

use super::{SheetsSink, to_sink};
use crate::layout::{FIXED, column_letters};

/// Key of the developer metadata on each of the connector's columns.
pub(super) const KEY: &str = "collect.column";

/// A column of ours: its metadata value, its 0-based index in the layout, its header.
struct Ours {
    value: String,
    index: i32,
    label: String,
}

impl SheetsSink {
    /// Every column of the layout (the fixed ones, then the questions').
    fn ours(&self) -> Vec<Ours> {
        let fixed = FIXED.iter().enumerate().map(|(i, label)| Ours {
            value: format!("fixed:{i}"),
            index: i as i32,
            label: (*label).to_string(),
        });
        let questions = self.columns.iter().map(|(q, c)| Ours {
            value: format!("question:{q}"),
            index: c.index,
            label: c.label.clone(),
        });
        fixed.chain(questions).collect()
    }

    /// Where our tags are now: (sheet id, value) to the columns they are on.
    async fn tagged(
        &self,
        ctx: &SinkContext,
    ) -> Result<HashMap<(i64, String), Vec<i32>>, SinkError> {
        let id = self.spreadsheet.clone();
        let found = self
            .call(ctx, false, |t| {
                let (s, id) = (self.service.clone(), id.clone());
                async move { s.search_metadata(&t, &id, KEY).await }
            })
            .await
            .map_err(to_sink)?;
        let mut out: HashMap<(i64, String), Vec<i32>> = HashMap::new();
        for m in found {
            let (Some(value), Some(range)) =
                (m.metadata_value, m.location.and_then(|l| l.dimension_range))
            else {
                continue;
            };
            if range.dimension.as_deref() != Some("COLUMNS") {
                continue;
            }
            let (Some(sheet), Some(start)) = (range.sheet_id, range.start_index) else {
                continue;
            };
            out.entry((i64::from(sheet), value))
                .or_default()
                .push(start);
        }
        Ok(out)
    }

    /// Tags each column of ours that is not tagged yet, in every tab, where the layout puts
    /// it. Call only where the layout is known to hold (after [`Self::columns_moved`] found
    /// nothing, or for columns just made): one search, and one `batchUpdate` when any tag
    /// is missing.
    pub(super) async fn tag_columns(&mut self, ctx: &SinkContext) -> Result<(), SinkError> {
        let found = self.tagged(ctx).await?;
        let mut requests = Vec::new();
        for t in &self.tabs {
            for c in self.ours() {
                if found.contains_key(&(t.sheet_id, c.value.clone())) {
                    continue;
                }
                requests.push(Request {
                    create_developer_metadata: Some(CreateDeveloperMetadataRequest {
                        developer_metadata: Some(DeveloperMetadata {
                            metadata_key: Some(KEY.into()),
                            metadata_value: Some(c.value),
                            location: Some(DeveloperMetadataLocation {
                                dimension_range: Some(DimensionRange {
                                    sheet_id: Some(t.sheet_id as i32),
                                    dimension: Some("COLUMNS".into()),
                                    start_index: Some(c.index),
                                    end_index: Some(c.index + 1),
                                }),
                                ..Default::default()
                            }),
                            visibility: Some("DOCUMENT".into()),
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                });
            }
        }
        self.structure(ctx, requests, Vec::new()).await
    }

    /// Whether a person moved, inserted or deleted columns among ours: the reason, for the
    /// operator, or `None` when every tagged column of every tab is where the layout says.
    /// `headers` is row 1 of each tab (by sheet id) as just read: a column without its tag
    /// (made since the last tagging) is in place if its header cell is empty or shows its
    /// label. A tab never tagged (by a version before tags) cannot tell and passes.
    pub(super) async fn columns_moved(
        &self,
        ctx: &SinkContext,
        headers: &HashMap<i64, Vec<String>>,
    ) -> Result<Option<String>, SinkError> {
        let found = self.tagged(ctx).await?;
        let tagged_tabs: HashSet<i64> = found.keys().map(|(s, _)| *s).collect();
        let ours = self.ours();
        let last = column_letters(self.width().saturating_sub(1));
        for t in &self.tabs {
            if !tagged_tabs.contains(&t.sheet_id) {
                continue;
            }
            let header = headers.get(&t.sheet_id);
            let mut problems = Vec::new();
            for c in &ours {
                let was = column_letters(c.index as usize);
                match found.get(&(t.sheet_id, c.value.clone())) {
                    Some(at) if at.contains(&c.index) => {}
                    Some(at) => problems.push(format!(
                        "'{}' is now column {} (was {was})",
                        c.label,
                        column_letters(at.first().copied().unwrap_or(0).max(0) as usize)
                    )),
                    None => {
                        let shown = header
                            .and_then(|h| h.get(c.index as usize))
                            .map(|s| s.trim())
                            .unwrap_or("");
                        if !shown.is_empty() && shown != c.label.trim() {
                            problems.push(format!(
                                "column {was} shows '{shown}' where '{}' was (deleted or moved)",
                                c.label
                            ));
                        }
                    }
                }
            }
            if !problems.is_empty() {
                let shown: Vec<String> = problems.iter().take(3).cloned().collect();
                let more = problems.len().saturating_sub(3);
                return Ok(Some(format!(
                    "in tab '{}' of spreadsheet {}, a person inserted, deleted or moved columns \
                     among the connector's columns A-{last}: {}{}. Put them back (a column of \
                     your own goes right of column {last}), then resume the integration",
                    t.title,
                    self.spreadsheet,
                    shown.join("; "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )));
            }
        }
        Ok(None)
    }

    /// Row 1 of every tab, as text, by sheet id (one read).
    pub(super) async fn read_headers(
        &self,
        ctx: &SinkContext,
    ) -> Result<HashMap<i64, Vec<String>>, SinkError> {
        let ranges: Vec<String> = self
            .tabs
            .iter()
            .map(|t| format!("{}!1:1", super::rows::quoted(&t.title)))
            .collect();
        let id = self.spreadsheet.clone();
        let got = self
            .call(ctx, false, |t| {
                let (s, id, r) = (self.service.clone(), id.clone(), ranges.clone());
                async move { s.batch_get(&t, &id, &r).await }
            })
            .await
            .map_err(to_sink)?;
        Ok(self
            .tabs
            .iter()
            .zip(&got)
            .map(|(t, vr)| (t.sheet_id, header_text(vr)))
            .collect())
    }
}

/// The first row of a read range, as text.
pub(super) fn header_text(vr: &google_sheets4::api::ValueRange) -> Vec<String> {
    vr.values
        .as_ref()
        .and_then(|rows| rows.first())
        .map(|row| row.iter().map(super::rows::text).collect())
        .unwrap_or_default()
}

/// Whether row 1 as shown matches the header the connector last wrote (`written`, the
/// layout's labels): every cell equal, or the row empty (never written yet).
pub(super) fn header_holds(shown: &[String], written: &[String]) -> bool {
    if shown.iter().all(|s| s.trim().is_empty()) {
        return true;
    }
    written
        .iter()
        .enumerate()
        .all(|(i, w)| shown.get(i).map_or("", |s| s.trim()) == w.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_holds_when_equal_or_never_written() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(header_holds(&w(&["A", "B"]), &w(&["A", "B"])));
        assert!(header_holds(&w(&["A ", "B", "notes"]), &w(&["A", "B"])));
        assert!(header_holds(&w(&[]), &w(&["A", "B"])));
        assert!(header_holds(&w(&["", ""]), &w(&["A", "B"])));
        assert!(!header_holds(&w(&["B", "A"]), &w(&["A", "B"])));
        assert!(!header_holds(&w(&["x", "A", "B"]), &w(&["A", "B"])));
        assert!(!header_holds(&w(&["A"]), &w(&["A", "B"])));
    }
}

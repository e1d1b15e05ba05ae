//! Columns follow their question. A person may insert, delete or move columns among the
//! connector's (a checkbox column before the data, a question's column dragged elsewhere);
//! writing by the stored layout would then put answers under the wrong headers and over the
//! person's cells. Every column of the connector carries developer metadata (key [`KEY`],
//! value `fixed:<n>` or `question:<id>`, on the column's dimension range), which Google
//! moves with the column through inserts, deletes, moves and sorts, and deletes with it
//! (Sheets API v4, "Read, write, and search metadata"). Row 1 is read with every batch's
//! verification read (no extra request); only when it differs from the header written
//! where the connector believes its columns are does it search the metadata (one read) and
//! learn where each column is now: its *place* in the tab. Writes then go to the places,
//! in one range per run of adjacent columns, so a person's column among them is never
//! written. A column a person deleted stays deleted: its values are no longer written to
//! that tab. Only the Response ID column cannot go (rows are found by it): its deletion
//! pauses the integration with the reason. A header typed over is written again.

use std::collections::{HashMap, HashSet};

use collect_connect::{SinkContext, SinkError};
use google_sheets4::api::{
    CreateDeveloperMetadataRequest, DeveloperMetadata, DeveloperMetadataLocation, DimensionRange,
    Request, ValueRange,
};
use serde_json::Value;

use super::{SheetsSink, to_sink};
use crate::layout::{FIXED, column_letters};
use crate::service::CallError;
use crate::state::Tab;

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

    /// The column (0-based) of layout column `layout` in the tab with sheet id `sheet`;
    /// `None` where a person deleted it. A layout column made since the places were learnt
    /// goes right of the rightmost of ours.
    pub(super) fn place(&self, sheet: i64, layout: usize) -> Option<usize> {
        let Some(p) = self.places.get(&sheet) else {
            return Some(layout);
        };
        match p.get(layout) {
            Some(at) => at.map(|c| c as usize),
            None => {
                let right = p
                    .iter()
                    .flatten()
                    .map(|c| *c as usize + 1)
                    .max()
                    .unwrap_or(0);
                Some(right + (layout - p.len()))
            }
        }
    }

    /// Columns the widest tab needs: one past the rightmost place of ours.
    pub(super) fn span(&self) -> usize {
        let width = self.width();
        self.tabs
            .iter()
            .flat_map(|t| (0..width).filter_map(|i| self.place(t.sheet_id, i)))
            .map(|c| c + 1)
            .max()
            .unwrap_or(0)
            .max(width)
    }

    /// Row `row` (0-based) of tab `tab` as the ranges that write layout-ordered `cells` to
    /// their places: one range per run of adjacent columns, so a person's column among
    /// ours is never written, nor a deleted one's.
    pub(super) fn scatter(&self, tab: &Tab, row: u32, cells: &[Value]) -> Vec<ValueRange> {
        let mut at: Vec<(usize, &Value)> = cells
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((self.place(tab.sheet_id, i)?, v)))
            .collect();
        at.sort_by_key(|(c, _)| *c);
        let mut runs: Vec<(usize, Vec<Value>)> = Vec::new();
        for (c, v) in at {
            match runs.last_mut() {
                Some((first, vals)) if *first + vals.len() == c => vals.push(v.clone()),
                _ => runs.push((c, vec![v.clone()])),
            }
        }
        let t = super::rows::quoted(&tab.title);
        runs.into_iter()
            .map(|(first, vals)| ValueRange {
                range: Some(format!(
                    "{t}!{}{}:{}{}",
                    column_letters(first),
                    row + 1,
                    column_letters(first + vals.len() - 1),
                    row + 1
                )),
                values: Some(vec![vals]),
                major_dimension: None,
            })
            .collect()
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

    /// Tags each column of ours not yet tagged, in every tab, at its place (a deleted one
    /// stays untagged). Call where the places are known (after [`Self::follow_columns`], or
    /// for columns just made): one search, and one `batchUpdate` when any tag is missing.
    pub(super) async fn tag_columns(&mut self, ctx: &SinkContext) -> Result<(), SinkError> {
        let found = self.tagged(ctx).await?;
        let mut requests = Vec::new();
        for t in &self.tabs {
            for c in self.ours() {
                if found.contains_key(&(t.sheet_id, c.value.clone())) {
                    continue;
                }
                let Some(at) = self.place(t.sheet_id, c.index as usize) else {
                    continue;
                };
                let at = at as i32;
                requests.push(Request {
                    create_developer_metadata: Some(CreateDeveloperMetadataRequest {
                        developer_metadata: Some(DeveloperMetadata {
                            metadata_key: Some(KEY.into()),
                            metadata_value: Some(c.value),
                            location: Some(DeveloperMetadataLocation {
                                dimension_range: Some(DimensionRange {
                                    sheet_id: Some(t.sheet_id as i32),
                                    dimension: Some("COLUMNS".into()),
                                    start_index: Some(at),
                                    end_index: Some(at + 1),
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
        if requests.is_empty() {
            return Ok(());
        }
        let id = self.spreadsheet.clone();
        match self
            .call(ctx, true, |t| {
                let (s, id, r) = (self.service.clone(), id.clone(), requests.clone());
                async move { s.batch_update(&t, &id, r).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            // Google keeps at most 30,000 characters of metadata per sheet ("Read, write,
            // and search metadata", size limits): past it (about 500 columns), the columns
            // go untagged and are not followed, rather than stopping the integration.
            Err(CallError::Refused(m)) => {
                tracing::warn!(integration = %ctx.integration_id, error = m, "Google refused the columns' tags; those columns are not followed if a person moves them");
                Ok(())
            }
            Err(e) => Err(to_sink(e)),
        }
    }

    /// Learns where each column of ours is in every tab, from the tags (one search), and
    /// keeps it in `places` (see [`locate`]). A tab never tagged (by a version before tags)
    /// keeps the layout's places. Fatal only when a tab's Response ID column is gone.
    /// Returns whether any place changed.
    pub(super) async fn follow_columns(
        &mut self,
        ctx: &SinkContext,
        headers: &HashMap<i64, Vec<String>>,
    ) -> Result<bool, SinkError> {
        let found = self.tagged(ctx).await?;
        let ours = self.ours();
        let width = self.width();
        let mut places = HashMap::new();
        let mut changed = false;
        let mut pending = false;
        for t in &self.tabs {
            let tags: HashMap<&str, &Vec<i32>> = found
                .iter()
                .filter(|((sheet, _), _)| *sheet == t.sheet_id)
                .map(|((_, v), at)| (v.as_str(), at))
                .collect();
            if tags.is_empty() {
                // Never tagged (a version before tags, or its tagging failed): tag it where
                // the layout puts it.
                pending = true;
                continue;
            }
            let empty = Vec::new();
            let header = headers.get(&t.sheet_id).unwrap_or(&empty);
            let place = locate(&ours, &tags, header, width);
            // A column placed without its tag (its tagging failed): tag it.
            if ours
                .iter()
                .any(|c| !tags.contains_key(c.value.as_str()) && place[c.index as usize].is_some())
            {
                pending = true;
            }
            if place[0].is_none() {
                return Err(SinkError::fatal(format!(
                    "the Response ID column of tab '{}' in spreadsheet {} was deleted: the \
                     connector finds each response's row by it. Restore it (undo the deletion), \
                     then resume the integration",
                    t.title, self.spreadsheet
                )));
            }
            let identity = place.iter().enumerate().all(|(i, p)| *p == Some(i as i32));
            let now = (!identity).then_some(place);
            if self.places.get(&t.sheet_id) != now.as_ref() {
                changed = true;
                let moves: Vec<String> = match &now {
                    Some(p) => ours
                        .iter()
                        .filter(|c| p[c.index as usize] != Some(c.index))
                        .take(10)
                        .map(|c| match p[c.index as usize] {
                            Some(to) => format!(
                                "'{}' {} -> {}",
                                c.label,
                                column_letters(c.index as usize),
                                column_letters(to as usize)
                            ),
                            None => format!("'{}' deleted", c.label),
                        })
                        .collect(),
                    None => vec!["back where the layout puts them".into()],
                };
                tracing::warn!(integration = %ctx.integration_id, tab = t.title, columns = moves.join(", "), "a person moved, inserted or deleted columns; following them");
            }
            if let Some(p) = now {
                places.insert(t.sheet_id, p);
            }
        }
        self.places = places;
        self.tags_pending |= pending;
        Ok(changed)
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
        let got = self.read_ranges(ctx, &ranges).await.map_err(to_sink)?;
        Ok(self
            .tabs
            .iter()
            .zip(&got)
            .map(|(t, vr)| (t.sheet_id, header_text(vr)))
            .collect())
    }
}

/// Where each layout column of a tab is (`None`: a person deleted it): by its tag (the one
/// on its layout column if several), else, for a column made since the last tagging, where
/// the layout put it if no other column of ours is there and row 1 shows its label or
/// nothing there.
fn locate(
    ours: &[Ours],
    tags: &HashMap<&str, &Vec<i32>>,
    header: &[String],
    width: usize,
) -> Vec<Option<i32>> {
    let mut place: Vec<Option<i32>> = vec![None; width];
    for c in ours {
        if let Some(at) = tags.get(c.value.as_str()) {
            place[c.index as usize] = Some(if at.contains(&c.index) {
                c.index
            } else {
                at.iter().copied().min().unwrap_or(c.index)
            });
        }
    }
    let mut taken: HashSet<i32> = place.iter().flatten().copied().collect();
    for c in ours {
        let i = c.index as usize;
        if place[i].is_some() {
            continue;
        }
        let shown = header.get(i).map_or("", |s| s.trim());
        // Not found by a label elsewhere: a person's column may bear the same label.
        if !taken.contains(&c.index) && (shown.is_empty() || shown == c.label.trim()) {
            place[i] = Some(c.index);
            taken.insert(c.index);
        }
    }
    place
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
/// `place` gives each layout column's column in the tab (`None`: deleted, not checked).
pub(super) fn header_holds(
    shown: &[String],
    written: &[String],
    place: impl Fn(usize) -> Option<usize>,
) -> bool {
    if shown.iter().all(|s| s.trim().is_empty()) {
        return true;
    }
    written.iter().enumerate().all(|(i, w)| match place(i) {
        Some(at) => shown.get(at).map_or("", |s| s.trim()) == w.trim(),
        None => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_holds_when_equal_or_never_written() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let same = |i: usize| Some(i);
        assert!(header_holds(&w(&["A", "B"]), &w(&["A", "B"]), same));
        assert!(header_holds(
            &w(&["A ", "B", "notes"]),
            &w(&["A", "B"]),
            same
        ));
        assert!(header_holds(&w(&[]), &w(&["A", "B"]), same));
        assert!(header_holds(&w(&["", ""]), &w(&["A", "B"]), same));
        assert!(!header_holds(&w(&["B", "A"]), &w(&["A", "B"]), same));
        assert!(!header_holds(&w(&["x", "A", "B"]), &w(&["A", "B"]), same));
        assert!(!header_holds(&w(&["A"]), &w(&["A", "B"]), same));
        // Followed: B was moved right of a person's column; a deleted column is not checked.
        let moved = |i: usize| [Some(0), Some(2)][i];
        assert!(header_holds(
            &w(&["A", "notes", "B"]),
            &w(&["A", "B"]),
            moved
        ));
        let deleted = |i: usize| [Some(0), None][i];
        assert!(header_holds(&w(&["A", "notes"]), &w(&["A", "B"]), deleted));
    }

    #[test]
    fn columns_are_located_by_tag_then_by_header() {
        let ours: Vec<Ours> = ["Response ID", "Name", "Phone"]
            .iter()
            .enumerate()
            .map(|(i, l)| Ours {
                value: format!("v{i}"),
                index: i as i32,
                label: (*l).to_string(),
            })
            .collect();
        let header: Vec<String> = ["Response ID", "Phone", "Note", "Name"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (a, b) = (vec![0], vec![3]);
        // Name's tag moved to D; Phone has no tag yet and C is nobody's: it stays at its
        // layout column only if row 1 shows it there (it shows "Note": deleted or moved).
        let tags: HashMap<&str, &Vec<i32>> = HashMap::from([("v0", &a), ("v1", &b)]);
        assert_eq!(
            locate(&ours, &tags, &header, 3),
            vec![Some(0), Some(3), None]
        );
        let header: Vec<String> = ["Response ID", "x", "Phone"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            locate(&ours, &tags, &header, 3),
            vec![Some(0), Some(3), Some(2)]
        );
    }
}

//! Rows follow their response. A spreadsheet is shared with people who sort it, insert and
//! delete rows and type beside the data, so a stored row number is a belief, not a fact.
//! Before a batch is written the connector reads, in one `values.batchGet`, the Response ID
//! cell of every row it is about to rewrite and every cell of the rows it is about to fill;
//! only when the sheet shows what the ledger says does it write. Otherwise it looks again:
//! rows moved (a sort, an inserted or deleted row) rebuild the tab's index from its Response
//! ID column; a person's content where new rows were to go moves them further down; a range
//! Google refuses (a trimmed grid, a renamed tab) makes it read the spreadsheet's properties
//! again. Measured cost: one read request per batch (Google counts reads and writes apart,
//! 60 a minute per user each), and one more read when the index is rebuilt.

use std::collections::{BTreeMap, HashMap};

use collect_connect::{SinkContext, SinkError};
use google_sheets4::api::{Spreadsheet, ValueRange};
use serde_json::Value;
use uuid::Uuid;

use super::{SheetsSink, to_sink};
use crate::layout::column_letters;
use crate::service::CallError;
use crate::state::{RowAt, State, Tab};

/// Most ranges of one `values.batchGet`; past it a tab's whole Response ID column is read.
const MAX_RANGES: usize = 100;

/// What the sheet shows where the connector believes its rows are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seen {
    /// Every known row holds its response; the rows for new responses are empty.
    Fine,
    /// A known row holds another response or none: rows were sorted, inserted or deleted.
    Moved,
    /// Content a person put where new rows were to go: new rows start after row `past`
    /// (0-based) of tab `tab`.
    Blocked {
        /// The tab.
        tab: i32,
        /// The first row after the content.
        past: i32,
    },
    /// Google refused to read a range (a trimmed grid, a renamed or deleted tab): the
    /// spreadsheet's properties must be read again.
    Stale(String),
    /// Row 1 of a tab differs from the header the connector wrote: columns may have moved
    /// (see columns.rs). Row 1 of each tab read, by sheet id.
    Header(HashMap<i64, Vec<String>>),
}

/// `'Tab'` for A1 notation.
pub(super) fn quoted(title: &str) -> String {
    format!("'{}'", title.replace('\'', "''"))
}

/// A cell's text as the API returns it unformatted (strings, numbers, booleans).
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Consecutive runs of sorted row numbers, as (first, last).
fn spans(rows: &[i32]) -> Vec<(i32, i32)> {
    let mut sorted = rows.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(i32, i32)> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == r => *last = r,
            _ => out.push((r, r)),
        }
    }
    out
}

/// One range to read and what it is for.
enum Probe {
    /// Response ID cells of rows `first..=last` of a tab (or of the whole column from row 0
    /// when `whole`).
    Ids { tab: i32, first: i32 },
    /// The cells of rows `first..` of a tab where new rows go.
    Block { tab: i32, first: i32 },
    /// Row 1 of a tab (sheet id).
    Header { sheet: i64 },
}

impl SheetsSink {
    /// `values.batchGet` of A1 `ranges` of the spreadsheet (one read request).
    pub(super) async fn read_ranges(
        &self,
        ctx: &SinkContext,
        ranges: &[String],
    ) -> Result<Vec<ValueRange>, CallError> {
        let id = self.spreadsheet.clone();
        self.call(ctx, false, |t| {
            let (s, id, r) = (self.service.clone(), id.clone(), ranges.to_vec());
            async move { s.batch_get(&t, &id, &r).await }
        })
        .await
    }

    /// Grid rows of a tab as last read (0 when unknown).
    fn grid_rows(&self, tab: i32) -> i32 {
        self.tabs
            .iter()
            .find(|t| t.index == tab)
            .and_then(|t| self.grids.get(&t.sheet_id))
            .map_or(0, |(r, _)| *r as i32)
    }

    /// The letter of the Response ID column of a tab (A unless a person moved it).
    fn id_column(&self, tab: i32) -> String {
        let sheet = self
            .tabs
            .iter()
            .find(|t| t.index == tab)
            .map(|t| t.sheet_id);
        column_letters(sheet.and_then(|s| self.place(s, 0)).unwrap_or(0))
    }

    /// The columns of our cells in a tab, by layout column, for `width` layout columns.
    fn our_columns(&self, tab: i32, width: usize) -> Vec<usize> {
        let sheet = self
            .tabs
            .iter()
            .find(|t| t.index == tab)
            .map(|t| t.sheet_id);
        (0..width)
            .filter_map(|i| match sheet {
                Some(s) => self.place(s, i),
                None => Some(i),
            })
            .collect()
    }

    fn title(&self, tab: i32) -> String {
        self.tabs
            .iter()
            .find(|t| t.index == tab)
            .map(|t| t.title.clone())
            .unwrap_or_default()
    }

    /// Reads, in one request, the Response ID cell of every row in `placed` and the `width`
    /// cells of every row in `new`, and says whether the sheet shows what the ledger says.
    /// A new-row block holding any Response ID means rows moved (a person inserted rows
    /// above them); anything else there is a person's.
    /// `fresh`: the grid sizes were read in this batch; otherwise rows past the believed grid
    /// (which a person may have grown by inserting rows) make it read them first.
    /// `header`: the header the connector last wrote; row 1 of every tab written to is read
    /// too, and checked first (columns that moved make every other check meaningless).
    pub(super) async fn look(
        &self,
        ctx: &SinkContext,
        placed: &[(Uuid, RowAt)],
        new: &[(Uuid, RowAt)],
        width: usize,
        fresh: bool,
        header: Option<&[String]>,
    ) -> Result<Seen, SinkError> {
        let mut ranges: Vec<String> = Vec::new();
        let mut probes: Vec<Probe> = Vec::new();
        let mut by_tab: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (_, at) in placed {
            by_tab.entry(at.tab).or_default().push(at.row);
        }
        if header.is_some() {
            let touched: std::collections::BTreeSet<i32> =
                placed.iter().chain(new).map(|(_, at)| at.tab).collect();
            for t in self.tabs.iter().filter(|t| touched.contains(&t.index)) {
                ranges.push(format!("{}!1:1", quoted(&t.title)));
                probes.push(Probe::Header { sheet: t.sheet_id });
            }
        }
        let span_count: usize = by_tab.values().map(|r| spans(r).len()).sum();
        for (tab, rows) in &by_tab {
            let grid = self.grid_rows(*tab);
            if rows.iter().any(|r| *r >= grid) {
                if !fresh {
                    return Ok(Seen::Stale(format!(
                        "rows past the believed grid of tab {tab}"
                    )));
                }
                // Past the grid as Google shows it: a person trimmed it, or deleted rows.
                return Ok(Seen::Moved);
            }
            let t = quoted(&self.title(*tab));
            let a = self.id_column(*tab);
            if span_count > MAX_RANGES {
                ranges.push(format!("{t}!{a}1:{a}{grid}"));
                probes.push(Probe::Ids {
                    tab: *tab,
                    first: 0,
                });
            } else {
                for (first, last) in spans(rows) {
                    ranges.push(format!("{t}!{a}{}:{a}{}", first + 1, last + 1));
                    probes.push(Probe::Ids { tab: *tab, first });
                }
            }
        }
        let mut blocks: BTreeMap<i32, (i32, i32)> = BTreeMap::new();
        for (_, at) in new {
            let e = blocks.entry(at.tab).or_insert((at.row, at.row));
            e.0 = e.0.min(at.row);
            e.1 = e.1.max(at.row);
        }
        for (tab, (first, last)) in &blocks {
            if !fresh && *last >= self.grid_rows(*tab) {
                // A person may have grown the grid (inserted rows): its size first.
                return Ok(Seen::Stale(format!(
                    "new rows past the believed grid of tab {tab}"
                )));
            }
            // Rows past the grid as Google shows it are empty (it grows before the write).
            let last = (*last).min(self.grid_rows(*tab) - 1);
            if last < *first {
                continue;
            }
            let right = self.our_columns(*tab, width).into_iter().max().unwrap_or(0);
            ranges.push(format!(
                "{}!A{}:{}{}",
                quoted(&self.title(*tab)),
                first + 1,
                column_letters(right),
                last + 1
            ));
            probes.push(Probe::Block {
                tab: *tab,
                first: *first,
            });
        }
        if ranges.is_empty() {
            return Ok(Seen::Fine);
        }
        let read = self.read_ranges(ctx, &ranges).await;
        let got: Vec<ValueRange> = match read {
            Ok(v) => v,
            Err(CallError::Refused(m)) => return Ok(Seen::Stale(m)),
            Err(e) => return Err(to_sink(e)),
        };
        // Columns first: where they moved, no other answer of the read means anything.
        let mut headers: HashMap<i64, Vec<String>> = HashMap::new();
        let mut holds = true;
        for (probe, vr) in probes.iter().zip(&got) {
            if let Probe::Header { sheet } = probe {
                let shown = super::columns::header_text(vr);
                let place = |i: usize| self.place(*sheet, i);
                holds &= super::columns::header_holds(&shown, header.unwrap_or_default(), place);
                headers.insert(*sheet, shown);
            }
        }
        if !holds {
            return Ok(Seen::Header(headers));
        }
        // What each row shows: the Response ID cell of known rows, any content of new rows.
        let mut ids: HashMap<(i32, i32), String> = HashMap::new();
        for (probe, vr) in probes.iter().zip(&got) {
            let rows = vr.values.clone().unwrap_or_default();
            match probe {
                Probe::Header { .. } => {}
                Probe::Ids { tab, first } => {
                    for (i, row) in rows.iter().enumerate() {
                        let cell = row.first().map(text).unwrap_or_default();
                        ids.insert((*tab, first + i as i32), cell);
                    }
                }
                Probe::Block { tab, first } => {
                    // Only our columns count: a person's column among them is theirs.
                    let ours = self.our_columns(*tab, width);
                    let id_at = ours.first().copied().unwrap_or(0);
                    let mut filled_to: Option<i32> = None;
                    for (i, row) in rows.iter().enumerate() {
                        if ours
                            .iter()
                            .all(|c| row.get(*c).is_none_or(|v| text(v).trim().is_empty()))
                        {
                            continue;
                        }
                        let first_cell = row.get(id_at).map(text).unwrap_or_default();
                        // A Response ID below our rows: rows were pushed down (a person
                        // inserted rows), not a person's own content.
                        if Uuid::parse_str(first_cell.trim()).is_ok() {
                            return Ok(Seen::Moved);
                        }
                        filled_to = Some(first + i as i32);
                    }
                    if let Some(last) = filled_to {
                        return Ok(Seen::Blocked {
                            tab: *tab,
                            past: last + 1,
                        });
                    }
                }
            }
        }
        for (response, at) in placed {
            let shown = ids.get(&(at.tab, at.row)).map(String::as_str).unwrap_or("");
            // A row reserved by an attempt that failed before writing is still empty.
            let reserved_only = at.revision == 0 && shown.trim().is_empty();
            if shown.trim() != response.to_string() && !reserved_only {
                tracing::info!(
                    integration = %ctx.integration_id,
                    response = %response,
                    tab = at.tab,
                    row = at.row + 1,
                    shows = shown,
                    "a row moved under the connector (sorted, inserted or deleted); reading the tab's Response ID column"
                );
                return Ok(Seen::Moved);
            }
        }
        Ok(Seen::Fine)
    }

    /// Rebuilds every tab's index from its Response ID column (one read request): each
    /// response of the ledger gets the row the sheet shows it in; one the sheet no longer
    /// shows (a person deleted its row) loses its row and gets a new one with its next event;
    /// new rows go after the last row holding a Response ID.
    pub(super) async fn rebuild(&mut self, ctx: &SinkContext) -> Result<(), SinkError> {
        // The grids as they are now: rows a person inserted may have pushed ours further.
        self.refresh(ctx).await?;
        // And the columns: the Response ID column read below must be where it is now.
        let headers = self.read_headers(ctx).await?;
        self.follow_columns(ctx, &headers).await?;
        let ranges: Vec<String> = self
            .tabs
            .iter()
            .map(|t| {
                let a = self.id_column(t.index);
                format!(
                    "{}!{a}1:{a}{}",
                    quoted(&t.title),
                    self.grids.get(&t.sheet_id).map_or(1, |(r, _)| (*r).max(1))
                )
            })
            .collect();
        let got = self.read_ranges(ctx, &ranges).await.map_err(to_sink)?;
        let state = self.state()?;
        for (tab, vr) in self.tabs.iter().zip(&got) {
            let mut found: HashMap<Uuid, i32> = HashMap::new();
            let mut last_used = 0;
            for (i, row) in vr.values.clone().unwrap_or_default().iter().enumerate() {
                let cell = row.first().map(text).unwrap_or_default();
                if cell.trim().is_empty() {
                    continue;
                }
                last_used = i as i32;
                if i > 0
                    && let Ok(u) = Uuid::parse_str(cell.trim())
                {
                    // A row a person copied shows the response twice: the first one is its.
                    found.entry(u).or_insert(i as i32);
                }
            }
            let (kept, lost) = state
                .relocate(ctx.lease_generation, tab.index, &found, last_used + 1)
                .await?;
            tracing::warn!(
                integration = %ctx.integration_id,
                tab = tab.title,
                kept,
                lost,
                next_row = last_used + 2,
                "rebuilt the tab's rows from its Response ID column"
            );
        }
        Ok(())
    }

    /// Makes columns `first..first + count` (0-based) free for new questions in every tab:
    /// where a person typed anything in them (a note beside the data, a header of their own),
    /// empty columns are inserted there (`insertDimension`), so their content moves right
    /// and is never written over. One read request; one write only when a tab needs it.
    pub(super) async fn free_columns(
        &mut self,
        ctx: &SinkContext,
        first: i32,
        count: i32,
    ) -> Result<(), SinkError> {
        // Where the new columns go in each tab: right of the rightmost of ours.
        let starts: Vec<i32> = self
            .tabs
            .iter()
            .map(|t| {
                self.place(t.sheet_id, first as usize)
                    .map_or(first, |c| c as i32)
            })
            .collect();
        let ranges: Vec<String> = self
            .tabs
            .iter()
            .zip(&starts)
            .map(|(t, first)| {
                let rows = self.grids.get(&t.sheet_id).map_or(1, |(r, _)| (*r).max(1));
                format!(
                    "{}!{}1:{}{rows}",
                    quoted(&t.title),
                    column_letters(*first as usize),
                    column_letters((first + count - 1) as usize)
                )
            })
            .collect();
        let got = match self.read_ranges(ctx, &ranges).await {
            Ok(v) => v,
            // Columns past the grid hold nothing.
            Err(CallError::Refused(_)) => return Ok(()),
            Err(e) => return Err(to_sink(e)),
        };
        let mut requests = Vec::new();
        let mut grown = Vec::new();
        for ((t, vr), first) in self.tabs.iter().zip(&got).zip(starts) {
            let used = vr
                .values
                .clone()
                .unwrap_or_default()
                .iter()
                .any(|row| row.iter().any(|v| !text(v).trim().is_empty()));
            if !used {
                continue;
            }
            tracing::info!(integration = %ctx.integration_id, tab = t.title, column = first + 1, "a person's content where new questions' columns go; inserting columns before it");
            requests.push(google_sheets4::api::Request {
                insert_dimension: Some(google_sheets4::api::InsertDimensionRequest {
                    range: Some(google_sheets4::api::DimensionRange {
                        sheet_id: Some(t.sheet_id as i32),
                        dimension: Some("COLUMNS".into()),
                        start_index: Some(first),
                        end_index: Some(first + count),
                    }),
                    inherit_from_before: Some(first > 0),
                }),
                ..Default::default()
            });
            let (r, c) = self.grids.get(&t.sheet_id).copied().unwrap_or((0, 0));
            grown.push((t.sheet_id, (r, c + count as u32)));
        }
        self.structure(ctx, requests, grown).await
    }

    /// Reads the spreadsheet's properties again: every grid's size, and the title of each of
    /// our tabs, followed by its sheet id (a person may have renamed it). A tab that is gone
    /// pauses the integration with the reason.
    pub(super) async fn refresh(&mut self, ctx: &SinkContext) -> Result<(), SinkError> {
        let id = self.spreadsheet.clone();
        let sheet = self
            .call(ctx, false, |t| {
                let (s, id) = (self.service.clone(), id.clone());
                async move { s.get(&t, &id).await }
            })
            .await
            .map_err(to_sink)?;
        let titles = self.take_properties(sheet);
        let state = crate::state::State::new(ctx.db.clone(), ctx.integration_id);
        let gone = follow_tabs(ctx, &state, &mut self.tabs, &titles).await?;
        // Boxed: recreating a tab writes its header, whose refusal reads the spreadsheet again.
        Box::pin(self.tabs_gone(ctx, gone, &titles)).await
    }

    /// Tabs a person deleted: the integration pauses with the reason, or, with
    /// `on_deleted_tab = "recreate"`, each is added again under its title (or `<title>
    /// (restored)` when another sheet took it) with its header and column tags, its rows
    /// are forgotten and a refill is requested in one transaction, and the batch ends with
    /// [`SinkError::Rewind`] so that every event is read again.
    pub(super) async fn tabs_gone(
        &mut self,
        ctx: &SinkContext,
        gone: Vec<Tab>,
        titles: &HashMap<i64, String>,
    ) -> Result<(), SinkError> {
        let Some(first) = gone.first() else {
            return Ok(());
        };
        if self.config.on_deleted_tab == crate::config::OnDeletedTab::Pause {
            return Err(SinkError::fatal(format!(
                "the tab '{}' (sheet id {}) was deleted from spreadsheet {}; re-point the \
                 integration to refill a spreadsheet, or set on_deleted_tab = \"recreate\"",
                first.title, first.sheet_id, self.spreadsheet
            )));
        }
        let state = crate::state::State::new(ctx.db.clone(), ctx.integration_id);
        let span = self.span().max(26) as u32;
        for t in &gone {
            let taken = titles.values().any(|v| *v == t.title);
            let title = if taken {
                format!("{} (restored)", t.title)
            } else {
                t.title.clone()
            };
            let sheet_id = self.add_sheet(ctx, &title, 1000, span).await?;
            let lost = state
                .recreated(ctx.lease_generation, t.index, sheet_id, &title)
                .await?;
            self.places.remove(&t.sheet_id);
            if let Some(mine) = self.tabs.iter_mut().find(|m| m.index == t.index) {
                mine.sheet_id = sheet_id;
                mine.title = title.clone();
                mine.next_row = 1;
            }
            tracing::warn!(integration = %ctx.integration_id, tab = title, rows = lost, "a person deleted the tab; recreated it, and reading every event again to refill it");
            // The refill is requested (stored above): whatever fails from here, the rewind
            // happens, and the restarted worker's start writes headers and tags again.
            if let Err(e) = self.write_header_to(ctx, &title, span as usize).await {
                tracing::warn!(integration = %ctx.integration_id, tab = title, error = %e, "the recreated tab's header is written at the restart");
            }
        }
        if let Err(e) = self.tag_columns(ctx).await {
            tracing::warn!(integration = %ctx.integration_id, error = %e, "the recreated tab's tags are written at the restart");
        }
        Err(SinkError::Rewind {
            message: format!(
                "the tab '{}' of spreadsheet {} was deleted and recreated; refilling it",
                first.title, self.spreadsheet
            ),
        })
    }

    /// Records every grid's size from a `spreadsheets.get` answer (replacing what was
    /// recorded) and returns each sheet's title by its sheet id.
    pub(super) fn take_properties(&mut self, sheet: Spreadsheet) -> HashMap<i64, String> {
        let mut titles = HashMap::new();
        self.grids.clear();
        for s in sheet.sheets.unwrap_or_default() {
            let Some(p) = s.properties else { continue };
            let (Some(sid), Some(title)) = (p.sheet_id, p.title) else {
                continue;
            };
            let g = p.grid_properties.unwrap_or_default();
            self.grids.insert(
                i64::from(sid),
                (
                    g.row_count.unwrap_or(0) as u32,
                    g.column_count.unwrap_or(0) as u32,
                ),
            );
            titles.insert(i64::from(sid), title);
        }
        titles
    }
}

/// Follows each of our tabs by its sheet id to its title in `titles` (a person may have
/// renamed it; the new title is stored). Returns the tabs that are gone (a person deleted
/// them): see [`SheetsSink::tabs_gone`].
pub(super) async fn follow_tabs(
    ctx: &SinkContext,
    state: &State,
    tabs: &mut [Tab],
    titles: &HashMap<i64, String>,
) -> Result<Vec<Tab>, SinkError> {
    let mut gone = Vec::new();
    for t in tabs {
        match titles.get(&t.sheet_id) {
            Some(title) if *title != t.title => {
                tracing::warn!(integration = %ctx.integration_id, from = t.title, to = title, "a person renamed the tab; following it");
                state.retitle(t.index, title).await?;
                t.title = title.clone();
            }
            Some(_) => {}
            None => gone.push(t.clone()),
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_consecutive_runs() {
        assert_eq!(
            spans(&[5, 1, 2, 3, 9, 10, 3]),
            vec![(1, 3), (5, 5), (9, 10)]
        );
        assert_eq!(spans(&[]), vec![]);
        assert_eq!(quoted("It's"), "'It''s'");
    }
}

//! The Sheets sink: every response of the form is one row of the sheet, kept up to date.

mod columns;
mod rows;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use collect_connect::limits::Rate;
use collect_connect::{
    BatchLimits, BatchOutcome, Delivery, Sink, SinkContext, SinkError, SinkEvent,
};
use collect_events::ResponseEvent;
use google_sheets4::api::{
    AddSheetRequest, AppendDimensionRequest, GridProperties, Request, SheetProperties, ValueRange,
};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Auth;
use crate::config::{Config, Credentials, OnCellLimit};
use crate::layout::{FIXED, row_cells};
use crate::service::{CallError, Service};
use crate::state::{Column, RowAt, State, Tab};

/// Google's limit of cells per spreadsheet.
pub const CELL_LIMIT: u64 = 10_000_000;
/// Rows added at least when a grid grows (fewer structural requests under load).
const GROW_ROWS: u32 = 1000;

/// The sink of one Sheets integration.
pub struct SheetsSink {
    config: Config,
    credentials: Credentials,
    http: reqwest::Client,
    service: Service,
    auth: Option<Auth>,
    state: Option<State>,
    spreadsheet: String,
    tabs: Vec<Tab>,
    /// Grid size (rows, columns) of every sheet of the spreadsheet, ours or not.
    grids: HashMap<i64, (u32, u32)>,
    columns: HashMap<Uuid, Column>,
    /// Where a person moved our columns, per tab (sheet id): the column of each layout
    /// column, `None` where deleted. A tab whose columns are where the layout puts them has
    /// no entry (columns.rs).
    places: HashMap<i64, Vec<Option<i32>>>,
    /// Write permits already taken for the coming write (see [`Self::prepay_write`]).
    prepaid: AtomicU32,
    /// Columns or tabs made whose tags are not written yet.
    tags_pending: bool,
}

/// The process's HTTP client for Google, shared by every Sheets sink: one connection pool
/// (Google's hosts are the same for every integration) and one loading of the TLS roots,
/// instead of one per integration.
pub(crate) fn shared_http() -> reqwest::Client {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default()
    })
    .clone()
}

impl SheetsSink {
    /// A sink for `config` and `credentials` (nothing is contacted before `start`).
    pub fn new(config: Config, credentials: Credentials) -> Self {
        let http = shared_http();
        let service = Service::new(http.clone(), &config.api_base_url);
        Self {
            config,
            credentials,
            http,
            service,
            auth: None,
            state: None,
            spreadsheet: String::new(),
            tabs: Vec::new(),
            grids: HashMap::new(),
            columns: HashMap::new(),
            places: HashMap::new(),
            prepaid: AtomicU32::new(0),
            tags_pending: false,
        }
    }

    fn state(&self) -> Result<&State, SinkError> {
        self.state
            .as_ref()
            .ok_or_else(|| SinkError::retryable("the sink was not started"))
    }

    fn width(&self) -> usize {
        self.columns
            .values()
            .map(|c| c.index as usize + 1)
            .max()
            .unwrap_or(0)
            .max(FIXED.len())
    }

    fn header(&self) -> Vec<Value> {
        let mut h: Vec<Value> = FIXED.iter().map(|s| Value::String((*s).into())).collect();
        h.resize(self.width(), Value::String(String::new()));
        for c in self.columns.values() {
            h[c.index as usize] = Value::String(c.label.clone());
        }
        h
    }

    fn cells(&self) -> u64 {
        self.grids
            .values()
            .map(|(r, c)| u64::from(*r) * u64::from(*c))
            .sum()
    }

    /// Runs one Sheets call (see [`Self::call_once`]). A read that meets a 5xx, a timeout or
    /// a dropped connection is tried again at once, twice at most (250 and 500 ms apart): a
    /// batch or a start makes several reads in a row, and one transient failure among them
    /// should not send the whole of it back to the runtime's backoff. Writes are not: a
    /// `batchUpdate` Google applied before failing must not be applied twice.
    async fn call<T, F, Fut>(&self, ctx: &SinkContext, write: bool, op: F) -> Result<T, CallError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        self.call_as(ctx, write, false, op).await
    }

    /// [`Self::call`], for the batch's values write: it uses the permit taken before the
    /// batch's check ([`Self::prepay_write`]); no other write may.
    async fn call_values<T, F, Fut>(&self, ctx: &SinkContext, op: F) -> Result<T, CallError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        self.call_as(ctx, true, true, op).await
    }

    async fn call_as<T, F, Fut>(
        &self,
        ctx: &SinkContext,
        write: bool,
        prepaid_ok: bool,
        op: F,
    ) -> Result<T, CallError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut attempt = 0u64;
        loop {
            match self.call_once(ctx, write, prepaid_ok, &op).await {
                Err(CallError::Retryable { message, .. })
                    if !write
                        && attempt < 2
                        && !message.starts_with("429")
                        && !message.starts_with(QUOTA_WAIT) =>
                {
                    attempt += 1;
                    tracing::debug!(integration = %ctx.integration_id, error = message, attempt, "a read failed; trying it again");
                    tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Waits for the quota permits of one request: per user and per project, reads and
    /// writes apart, as Google counts them, shared with every process writing for the same
    /// user (bounded: 120 s, then a retryable error).
    async fn permit(&self, ctx: &SinkContext, write: bool) -> Result<(), CallError> {
        let auth = self.auth.as_ref().ok_or_else(|| CallError::Retryable {
            message: "not started".into(),
            retry_after: None,
        })?;
        // Permits as Google counts them: per user and per project, reads and writes
        // apart, shared with every process writing for the same user.
        let q = self.config.quotas;
        let started = Instant::now();
        let (kind, per_user, per_project) = if write {
            (
                "write",
                q.write_requests_per_minute_per_user,
                q.write_requests_per_minute_per_project,
            )
        } else {
            (
                "read",
                q.read_requests_per_minute_per_user,
                q.read_requests_per_minute_per_project,
            )
        };
        for (key, rate) in [
            (
                format!("sheets:{kind}:{}", auth.identity.user),
                Rate::per_minute(per_user).with_burst(QUOTA_BURST),
            ),
            (
                format!("sheets:{kind}:{}", auth.identity.project),
                Rate::per_minute(per_project).with_burst(QUOTA_BURST),
            ),
        ] {
            ctx.limiter
                .acquire(&key, rate, Duration::from_secs(120))
                .await
                .map_err(|e| CallError::Retryable {
                    message: format!("{QUOTA_WAIT}{e}"),
                    retry_after: None,
                })?;
        }
        if started.elapsed() > Duration::from_millis(50) {
            ctx.metrics.throttled();
        }
        Ok(())
    }

    /// Takes the write permit of the batch's coming write before its check reads the
    /// sheet, so that no wait for quota falls between the check and the write (a person's
    /// edit in between would make the check stale). The next write call uses it.
    async fn prepay_write(&self, ctx: &SinkContext) -> Result<(), SinkError> {
        self.permit(ctx, true).await.map_err(to_sink)?;
        self.prepaid.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Runs one Sheets call once: quota permits first (per user and per project, reads and
    /// writes apart, as Google counts them), a fresh token after a 401, and the runtime's
    /// meaning of each failure.
    async fn call_once<T, F, Fut>(
        &self,
        ctx: &SinkContext,
        write: bool,
        prepaid_ok: bool,
        op: &F,
    ) -> Result<T, CallError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let auth = self.auth.as_ref().ok_or_else(|| CallError::Retryable {
            message: "not started".into(),
            retry_after: None,
        })?;
        let prepaid = prepaid_ok
            && self
                .prepaid
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
        if !prepaid {
            self.permit(ctx, write).await?;
        }
        for attempt in 0..2 {
            let token = auth.token().await.map_err(|e| match e {
                SinkError::Fatal { message } | SinkError::Rewind { message } => {
                    CallError::Fatal(message)
                }
                SinkError::Retryable {
                    message,
                    retry_after,
                } => CallError::Retryable {
                    message,
                    retry_after,
                },
            })?;
            match op(token).await {
                Ok(v) => {
                    ctx.metrics.request("ok");
                    return Ok(v);
                }
                Err(CallError::Unauthorized(m)) if attempt == 0 => {
                    ctx.metrics.request("error");
                    tracing::warn!(error = m, "token refused; getting a new one");
                    auth.invalidate().await;
                }
                Err(e) => {
                    let throttled = matches!(&e, CallError::Retryable { message, .. } if message.starts_with("429"));
                    ctx.metrics
                        .request(if throttled { "throttled" } else { "error" });
                    if throttled {
                        ctx.metrics.throttled();
                    }
                    return Err(e);
                }
            }
        }
        Err(CallError::Fatal(
            "Google keeps refusing fresh tokens for this spreadsheet".into(),
        ))
    }
}

fn to_sink(e: CallError) -> SinkError {
    match e {
        CallError::Retryable {
            message,
            retry_after,
        } => SinkError::Retryable {
            message,
            retry_after,
        },
        CallError::Unauthorized(m) | CallError::Fatal(m) => SinkError::fatal(m),
        CallError::Refused(m) => SinkError::fatal(format!("Google refused the request: {m}")),
    }
}

fn tab_title(base: &str, index: i32) -> String {
    if index == 0 {
        base.to_string()
    } else {
        format!("{base} {}", index + 1)
    }
}

fn question_id(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok()
}

impl Sink for SheetsSink {
    async fn start(&mut self, ctx: &SinkContext) -> Result<(), SinkError> {
        let state = State::new(ctx.db.clone(), ctx.integration_id);
        self.auth = Some(Auth::new(&self.credentials, self.http.clone()).await?);
        // The spreadsheet: the configured one, else the one already in use, else a new one.
        // A configured spreadsheet other than the one in use is a new target: its layout
        // starts afresh (a replay backfills it).
        let id = match state.spreadsheet().await? {
            Some(used)
                if self
                    .config
                    .spreadsheet_id
                    .as_ref()
                    .is_some_and(|c| *c != used) =>
            {
                let configured = self.config.spreadsheet_id.clone().unwrap_or_default();
                tracing::warn!(
                    integration = %ctx.integration_id,
                    from = used,
                    to = configured,
                    "the integration points at another spreadsheet; starting its layout afresh"
                );
                state.retarget(&configured).await?;
                configured
            }
            Some(id) => id,
            None => {
                let id = match &self.config.spreadsheet_id {
                    Some(id) => id.clone(),
                    None => {
                        let title = self
                            .config
                            .spreadsheet_title
                            .clone()
                            .unwrap_or_else(|| format!("Form {}", ctx.form_id));
                        let created = self
                            .call(ctx, true, |t| {
                                let (s, title, tab) = (
                                    self.service.clone(),
                                    title.clone(),
                                    self.config.sheet_title.clone(),
                                );
                                async move { s.create(&t, &title, &tab).await }
                            })
                            .await
                            .map_err(to_sink)?;
                        created
                            .spreadsheet_id
                            .ok_or_else(|| SinkError::retryable("created spreadsheet has no id"))?
                    }
                };
                state.set_spreadsheet(&id).await?;
                id
            }
        };
        self.spreadsheet = id.clone();
        let sheet = self
            .call(ctx, false, |t| {
                let (s, id) = (self.service.clone(), id.clone());
                async move { s.get(&t, &id).await }
            })
            .await
            .map_err(|e| match e {
                CallError::Fatal(m) => SinkError::fatal(format!(
                    "{m}; share spreadsheet {id} with {}",
                    self.auth
                        .as_ref()
                        .map(|a| a.identity.share_with.clone())
                        .unwrap_or_default()
                )),
                other => to_sink(other),
            })?;
        let mut titles = self.take_properties(sheet);
        let (mut tabs, columns) = state.load().await?;
        if tabs.is_empty() {
            let title = self.config.sheet_title.clone();
            let existing = titles.iter().find(|(_, t)| **t == title).map(|(id, _)| *id);
            let sheet_id = match existing {
                Some(id) => id,
                None => {
                    let added = self
                        .add_sheet(ctx, &title, 1000, self.width().max(26) as u32)
                        .await?;
                    titles.insert(added, title.clone());
                    added
                }
            };
            tabs.push(Tab {
                index: 0,
                sheet_id,
                title,
                next_row: 1,
            });
            state.reserve(ctx.lease_generation, &tabs, &[], &[]).await?;
        }
        // Tabs are followed by their sheet id: a renamed tab keeps its rows.
        let gone = rows::follow_tabs(ctx, &state, &mut tabs, &titles).await?;
        self.tabs = tabs;
        self.columns = columns;
        self.state = Some(state);
        self.tabs_gone(ctx, gone, &titles).await?;
        // Columns go where a person moved them (columns.rs).
        let headers = self.read_headers(ctx).await?;
        self.follow_columns(ctx, &headers).await?;
        // The header of every tab, rewritten as it is (idempotent).
        self.ensure_width(ctx).await?;
        let data = self
            .tabs
            .iter()
            .flat_map(|t| self.header_ranges(t))
            .collect();
        self.write_values(ctx, data, &[], true)
            .await
            .map_err(Refusal::into_sink)?;
        self.tag_columns(ctx).await?;
        // A recreated tab whose refill the runtime has not started yet (a crash came between).
        if self.state()?.refill_requested().await? {
            return Err(SinkError::Rewind {
                message: "a recreated tab waits for its refill".into(),
            });
        }
        Ok(())
    }

    async fn rewound(&mut self, ctx: &SinkContext) -> Result<(), SinkError> {
        let _ = ctx;
        self.state()?.refill_started().await
    }

    async fn write(
        &mut self,
        batch: &[Delivery],
        ctx: &SinkContext,
    ) -> Result<BatchOutcome, SinkError> {
        // The ledger in Postgres is the truth: what a failed attempt changed in memory (a
        // column, a tab's next row) is never trusted by the next one.
        let (tabs, columns) = self.state()?.load().await?;
        self.tabs = tabs;
        self.columns = columns;
        // The header as last written, for the check of row 1 (before this batch relabels).
        let written: Vec<String> = self.header().iter().map(rows::text).collect();
        let mut check_header = true;
        let mut outcome = BatchOutcome::default();
        let mut changed_cols: Vec<(Uuid, Column)> = Vec::new();
        let mut next_col = self.width() as i32;
        let first_new = next_col;
        // Any question event rewrites the header (a retried batch writes the header it needs,
        // even when its columns were stored by the failed attempt).
        let mut header_needed = false;
        // Form events: new questions get a column at the right, relabels change the header.
        for d in batch {
            let SinkEvent::Form(f) = &d.event else {
                continue;
            };
            let Some(q) = &f.question else { continue };
            let Some(qid) = question_id(&q.question_id) else {
                continue;
            };
            header_needed = true;
            match self.columns.get_mut(&qid) {
                Some(c) if c.label != q.label => {
                    c.label = q.label.clone();
                    changed_cols.push((qid, c.clone()));
                }
                Some(_) => {}
                None if q.deleted_at.is_none() => {
                    let c = Column {
                        index: next_col,
                        label: q.label.clone(),
                    };
                    next_col += 1;
                    self.columns.insert(qid, c.clone());
                    changed_cols.push((qid, c));
                }
                None => {}
            }
        }
        // The latest state of each response in the batch.
        let mut order: Vec<Uuid> = Vec::new();
        let mut latest: HashMap<Uuid, (usize, &ResponseEvent)> = HashMap::new();
        for (i, d) in batch.iter().enumerate() {
            let SinkEvent::Response(r) = &d.event else {
                continue;
            };
            let Some(id) = question_id(&r.response_id) else {
                outcome
                    .rejected
                    .push((i, format!("response id '{}' is not a UUID", r.response_id)));
                continue;
            };
            match latest.get(&id) {
                Some((_, prev)) if prev.revision > r.revision => {}
                Some(_) => {
                    latest.insert(id, (i, r));
                }
                None => {
                    order.push(id);
                    latest.insert(id, (i, r));
                }
            }
        }
        // Answers to questions no form event has named yet get a column too.
        for id in &order {
            for a in &latest[id].1.answers {
                let Some(qid) = question_id(&a.question_id) else {
                    continue;
                };
                if let std::collections::hash_map::Entry::Vacant(slot) = self.columns.entry(qid) {
                    let label = a.alias.clone().unwrap_or_else(|| {
                        format!("Question {}", &a.question_id[..8.min(a.question_id.len())])
                    });
                    let c = Column {
                        index: next_col,
                        label,
                    };
                    next_col += 1;
                    slot.insert(c.clone());
                    changed_cols.push((qid, c));
                }
            }
        }
        header_needed |= !changed_cols.is_empty();
        // New questions' columns never write over what a person typed there.
        if next_col > first_new {
            self.free_columns(ctx, first_new, next_col - first_new)
                .await?;
        }
        let width = self.width();
        // Rows: known responses keep theirs, new ones take the next free rows, but only once
        // the sheet shows what the ledger says (see rows.rs); events older than what the
        // sheet shows are dropped (they are replays).
        let mut attempt = 0;
        let mut fresh = false;
        let (mut placed, mut new_rows) = loop {
            // The write's quota permit first: the check below and the write then follow
            // each other without a wait (a person's edit in a wait would make it stale).
            if self.prepaid.load(Ordering::Acquire) == 0 {
                self.prepay_write(ctx).await?;
            }
            let stored = self.state()?.rows(&order).await?;
            let mut placed: Vec<(Uuid, RowAt)> = Vec::new();
            let mut new_rows: Vec<(Uuid, RowAt)> = Vec::new();
            let mut tabs = self.tabs.clone();
            for id in &order {
                let (_, r) = latest[id];
                match stored.get(id) {
                    Some(at) if at.revision > r.revision => {}
                    Some(at) => placed.push((*id, *at)),
                    None => {
                        let tab = tabs
                            .last_mut()
                            .ok_or_else(|| SinkError::retryable("no tab"))?;
                        let at = RowAt {
                            tab: tab.index,
                            row: tab.next_row,
                            revision: 0,
                        };
                        tab.next_row += 1;
                        new_rows.push((*id, at));
                    }
                }
            }
            let header = check_header.then_some(written.as_slice());
            let seen = self
                .look(ctx, &placed, &new_rows, width, fresh, header)
                .await?;
            if seen == rows::Seen::Fine {
                self.tabs = tabs;
                placed.extend(new_rows.iter().copied());
                break (placed, new_rows);
            }
            attempt += 1;
            if attempt > 5 {
                return Err(SinkError::retryable(
                    "the sheet keeps changing under the connector; reading it again",
                ));
            }
            match seen {
                rows::Seen::Moved => {
                    self.rebuild(ctx).await?;
                    fresh = true;
                }
                rows::Seen::Blocked { tab, past } => {
                    tracing::info!(integration = %ctx.integration_id, tab, row = past + 1, "a person's content where new rows were to go; they go below it");
                    self.state()?.skip_to(tab, past).await?;
                }
                rows::Seen::Stale(why) => {
                    tracing::info!(integration = %ctx.integration_id, why, "Google refused a read; reading the spreadsheet again");
                    self.refresh(ctx).await?;
                    fresh = true;
                }
                rows::Seen::Header(headers) => {
                    // Columns moved (followed from here on), or only the header's text
                    // changed (a person typed over it, or a relabel not written yet): this
                    // batch writes the header again either way.
                    let moved = self.follow_columns(ctx, &headers).await?;
                    if moved && next_col > first_new {
                        // New questions' columns go right of ours where they are now.
                        self.free_columns(ctx, first_new, next_col - first_new)
                            .await?;
                    }
                    header_needed = true;
                    check_header = false;
                }
                rows::Seen::Fine => {}
            }
            // Titles and next rows as the repair left them in the ledger.
            self.tabs = self.state()?.load().await?.0;
        };
        // Make room: grow grids, roll over near the cell limit; every tab gets the width of
        // the header it is given.
        if header_needed {
            if check_header {
                // The header goes to every tab, also those this batch's check did not read:
                // where a person moved columns there, it must follow them too.
                let headers = self.read_headers(ctx).await?;
                self.follow_columns(ctx, &headers).await?;
            }
            self.ensure_width(ctx).await?;
        }
        let tabs_before = self.tabs.len();
        let span = self.span();
        self.make_room(ctx, &mut placed, &mut new_rows, span)
            .await?;
        // Reserve before writing: a crash now leaves rows reserved, never doubled.
        self.state()?
            .reserve(ctx.lease_generation, &self.tabs, &changed_cols, &new_rows)
            .await?;
        // New columns and new tabs get their tags once stored (columns.rs); a tagging that
        // failed is tried again by the next batch.
        if next_col > first_new || self.tabs.len() != tabs_before {
            self.tags_pending = true;
        }
        if self.tags_pending {
            self.tag_columns(ctx).await?;
            self.tags_pending = false;
        }
        let mut data: Vec<(Option<Uuid>, ValueRange)> = Vec::new();
        if header_needed {
            for t in &self.tabs {
                data.extend(self.header_ranges(t).into_iter().map(|v| (None, v)));
            }
        }
        let columns: HashMap<String, usize> = self
            .columns
            .iter()
            .map(|(q, c)| (q.to_string(), c.index as usize))
            .collect();
        let mut revisions: Vec<(Uuid, i32)> = Vec::new();
        for (id, at) in &placed {
            let (_, r) = latest[id];
            let Some(tab) = self.tabs.iter().find(|t| t.index == at.tab) else {
                return Err(SinkError::retryable(format!(
                    "no tab {} in the ledger",
                    at.tab
                )));
            };
            let cells = row_cells(r, width, self.config.on_delete, |q| columns.get(q).copied());
            for range in self.scatter(tab, at.row as u32, &cells) {
                data.push((Some(*id), range));
            }
            revisions.push((*id, r.revision));
        }
        let owners: Vec<Option<Uuid>> = data.iter().map(|(id, _)| *id).collect();
        let values: Vec<ValueRange> = data.iter().map(|(_, v)| v.clone()).collect();
        let titles: HashMap<i32, String> = self
            .tabs
            .iter()
            .map(|t| (t.index, t.title.clone()))
            .collect();
        // A refusal is first taken as the connector's own stale picture (a grid trimmed, a
        // tab renamed since it last looked): read the spreadsheet again, repair, retry once;
        // only a range Google still refuses is about the event.
        let refused = match self.write_values(ctx, values.clone(), &owners, false).await {
            Ok(r) => r,
            Err(Refusal::Refused(m)) => {
                tracing::warn!(integration = %ctx.integration_id, error = m, "Google refused a write; reading the spreadsheet again");
                self.refresh(ctx).await?;
                self.grow_for(ctx, &placed, self.span()).await?;
                let values = self.retitled(values, &titles);
                match self.write_values(ctx, values, &owners, true).await {
                    Ok(r) => r,
                    Err(Refusal::Refused(m)) => return Err(SinkError::retryable(m)),
                    Err(Refusal::Sink(e)) => return Err(e),
                }
            }
            Err(Refusal::Sink(e)) => return Err(e),
        };
        for id in &refused {
            let (i, _) = latest[id];
            outcome
                .rejected
                .push((i, "Google refused this response's row (400)".into()));
        }
        revisions.retain(|(id, _)| !refused.contains(id));
        ctx.metrics.written(revisions.len() as u64);
        self.state()?.written(&revisions).await?;
        Ok(outcome)
    }

    /// Google counts write requests, not rows: under a backlog, batches of up to 5,000
    /// responses become requests of thousands of rows (split at `max_request_bytes`).
    fn batch_limits(&self) -> Option<BatchLimits> {
        Some(BatchLimits {
            events: 5_000,
            bytes: 16 * 1024 * 1024,
        })
    }
}

/// Requests a Sheets integration may make at once within Google's per-minute quotas (its
/// opening reads and writes), paid for by a slightly wider spacing after them (see
/// `collect_connect::limits::Rate`: 60 a minute with 5 at once is one every 1.09 s).
const QUOTA_BURST: u32 = 5;

/// How a wait for a quota permit that ran out begins its message (never retried at once).
const QUOTA_WAIT: &str = "waiting for quota: ";

impl SheetsSink {
    /// The header of a tab, at its columns' places.
    fn header_ranges(&self, t: &Tab) -> Vec<ValueRange> {
        self.scatter(t, 0, &self.header())
    }

    fn allocate_row(&mut self) -> Result<RowAt, SinkError> {
        let tab = self
            .tabs
            .last_mut()
            .ok_or_else(|| SinkError::retryable("no tab"))?;
        let at = RowAt {
            tab: tab.index,
            row: tab.next_row,
            revision: 0,
        };
        tab.next_row += 1;
        Ok(at)
    }

    async fn add_sheet(
        &mut self,
        ctx: &SinkContext,
        title: &str,
        rows: u32,
        cols: u32,
    ) -> Result<i64, SinkError> {
        let req = Request {
            add_sheet: Some(AddSheetRequest {
                properties: Some(SheetProperties {
                    title: Some(title.into()),
                    grid_properties: Some(GridProperties {
                        row_count: Some(rows as i32),
                        column_count: Some(cols as i32),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let id = self.spreadsheet.clone();
        let answer = match self
            .call(ctx, true, |t| {
                let (s, id, req) = (self.service.clone(), id.clone(), req.clone());
                async move { s.batch_update(&t, &id, vec![req]).await }
            })
            .await
        {
            Ok(a) => a,
            // A tab left by a crash between addSheet and the ledger: adopt it.
            Err(CallError::Refused(m)) if m.contains("already exists") => {
                return self.adopt(ctx, title).await;
            }
            Err(e) => return Err(to_sink(e)),
        };
        let sheet_id = answer
            .replies
            .and_then(|r| r.into_iter().next())
            .and_then(|r| r.add_sheet)
            .and_then(|a| a.properties)
            .and_then(|p| p.sheet_id)
            .ok_or_else(|| SinkError::retryable("addSheet returned no sheet id"))?;
        self.grids.insert(i64::from(sheet_id), (rows, cols));
        Ok(i64::from(sheet_id))
    }

    /// Writes the header to tab `title`, growing every tab to `width` columns first; a
    /// refusal reads the spreadsheet again and grows it before the one retry.
    async fn write_header_to(
        &mut self,
        ctx: &SinkContext,
        title: &str,
        width: usize,
    ) -> Result<(), SinkError> {
        self.grow_for(ctx, &[], width).await?;
        let Some(tab) = self.tabs.iter().find(|t| t.title == title) else {
            return Err(SinkError::retryable(format!(
                "no tab '{title}' in the ledger"
            )));
        };
        let header = self.header_ranges(tab);
        match self.write_values(ctx, header.clone(), &[], false).await {
            Ok(_) => Ok(()),
            Err(Refusal::Refused(m)) => {
                tracing::warn!(integration = %ctx.integration_id, tab = title, error = m, "Google refused a header; reading the spreadsheet again");
                self.refresh(ctx).await?;
                self.grow_for(ctx, &[], width).await?;
                self.write_values(ctx, header, &[], true)
                    .await
                    .map(|_| ())
                    .map_err(Refusal::into_sink)
            }
            Err(Refusal::Sink(e)) => Err(e),
        }
    }

    /// The sheet id of an existing tab titled `title`, with its grid.
    async fn adopt(&mut self, ctx: &SinkContext, title: &str) -> Result<i64, SinkError> {
        let id = self.spreadsheet.clone();
        let sheet = self
            .call(ctx, false, |t| {
                let (s, id) = (self.service.clone(), id.clone());
                async move { s.get(&t, &id).await }
            })
            .await
            .map_err(to_sink)?;
        for s in sheet.sheets.unwrap_or_default() {
            let Some(p) = s.properties else { continue };
            if p.title.as_deref() == Some(title)
                && let Some(sid) = p.sheet_id
            {
                let g = p.grid_properties.unwrap_or_default();
                self.grids.insert(
                    i64::from(sid),
                    (
                        g.row_count.unwrap_or(0) as u32,
                        g.column_count.unwrap_or(0) as u32,
                    ),
                );
                tracing::warn!(
                    spreadsheet = self.spreadsheet,
                    tab = title,
                    "adopted a tab a crash left behind"
                );
                return Ok(i64::from(sid));
            }
        }
        Err(SinkError::retryable(format!(
            "Google says a tab '{title}' exists but does not list it"
        )))
    }

    /// Widens every tab to the columns our places span.
    async fn ensure_width(&mut self, ctx: &SinkContext) -> Result<(), SinkError> {
        let width = self.span() as u32;
        let mut requests = Vec::new();
        let mut grown = Vec::new();
        for t in &self.tabs {
            let (rows, cols) = self.grids.get(&t.sheet_id).copied().unwrap_or((0, 0));
            if cols < width {
                requests.push(append(t.sheet_id, "COLUMNS", width - cols));
                grown.push((t.sheet_id, (rows, width)));
            }
        }
        self.structure(ctx, requests, grown).await
    }

    /// Grows every tab to hold the rows in `placed` and `width` columns (after a refusal
    /// showed the grid smaller than believed: a person trimmed it).
    async fn grow_for(
        &mut self,
        ctx: &SinkContext,
        placed: &[(Uuid, RowAt)],
        width: usize,
    ) -> Result<(), SinkError> {
        let mut requests = Vec::new();
        let mut grown = Vec::new();
        for t in &self.tabs {
            let (rows, cols) = self.grids.get(&t.sheet_id).copied().unwrap_or((0, 0));
            let needed = placed
                .iter()
                .filter(|(_, at)| at.tab == t.index)
                .map(|(_, at)| at.row as u32 + 1)
                .max()
                .unwrap_or(0)
                .max(t.next_row as u32);
            let (mut r, mut c) = (rows, cols);
            if needed > rows {
                r = needed + GROW_ROWS;
                requests.push(append(t.sheet_id, "ROWS", r - rows));
            }
            if (width as u32) > cols {
                c = width as u32;
                requests.push(append(t.sheet_id, "COLUMNS", c - cols));
            }
            if (r, c) != (rows, cols) {
                grown.push((t.sheet_id, (r, c)));
            }
        }
        self.structure(ctx, requests, grown).await
    }

    /// Sends structural requests (grid growth); `grown` is recorded only once Google
    /// confirmed them, so a failed append never leaves a grid believed larger than it is.
    async fn structure(
        &mut self,
        ctx: &SinkContext,
        requests: Vec<Request>,
        grown: Vec<(i64, (u32, u32))>,
    ) -> Result<(), SinkError> {
        if requests.is_empty() {
            return Ok(());
        }
        if self.cells() + self.config.cell_limit_margin > CELL_LIMIT {
            return Err(SinkError::fatal(format!(
                "spreadsheet {} would exceed Google's {CELL_LIMIT} cells; archive it and attach a new one",
                self.spreadsheet
            )));
        }
        let id = self.spreadsheet.clone();
        self.call(ctx, true, |t| {
            let (s, id, r) = (self.service.clone(), id.clone(), requests.clone());
            async move { s.batch_update(&t, &id, r).await }
        })
        .await
        .map_err(to_sink)?;
        self.grids.extend(grown);
        Ok(())
    }

    /// Grows grids for the rows about to be written, and rolls over to a new tab (or
    /// pauses) when growing would cross Google's cell limit.
    async fn make_room(
        &mut self,
        ctx: &SinkContext,
        placed: &mut [(Uuid, RowAt)],
        new_rows: &mut [(Uuid, RowAt)],
        width: usize,
    ) -> Result<(), SinkError> {
        let width = width as u32;
        let budget = CELL_LIMIT.saturating_sub(self.config.cell_limit_margin);
        let mut requests = Vec::new();
        let mut grown = Vec::new();
        let last = self
            .tabs
            .last()
            .cloned()
            .ok_or_else(|| SinkError::retryable("no tab"))?;
        let (rows, cols) = self.grids.get(&last.sheet_id).copied().unwrap_or((0, 0));
        let needed = last.next_row as u32;
        let cols_after = cols.max(width);
        let rows_after = if needed > rows {
            needed.max(rows + GROW_ROWS)
        } else {
            rows
        };
        let growth =
            u64::from(rows_after) * u64::from(cols_after) - u64::from(rows) * u64::from(cols);
        if self.cells() + growth > budget {
            if self.config.on_cell_limit == OnCellLimit::Pause {
                return Err(SinkError::fatal(format!(
                    "spreadsheet {} reached Google's cell limit ({CELL_LIMIT}); paused as configured (on_cell_limit = pause)",
                    self.spreadsheet
                )));
            }
            // Roll over: the new rows of this batch go to a new tab sized for them.
            let moving: Vec<usize> = new_rows
                .iter()
                .enumerate()
                .filter(|(_, (_, at))| at.tab == last.index && at.row as u32 >= rows)
                .map(|(i, _)| i)
                .collect();
            let index = last.index + 1;
            let title = tab_title(&self.config.sheet_title, index);
            let need_rows = moving.len() as u32 + 1 + GROW_ROWS;
            if self.cells() + u64::from(need_rows) * u64::from(width) > budget {
                return Err(SinkError::fatal(format!(
                    "spreadsheet {} has no room left for another sheet; attach a new spreadsheet",
                    self.spreadsheet
                )));
            }
            let sheet_id = self.add_sheet(ctx, &title, need_rows, width).await?;
            if let Some(t) = self.tabs.last_mut() {
                t.next_row = rows as i32;
            }
            self.tabs.push(Tab {
                index,
                sheet_id,
                title: title.clone(),
                next_row: 1,
            });
            for i in moving {
                let at = self.allocate_row()?;
                let id = new_rows[i].0;
                new_rows[i].1 = at;
                if let Some(p) = placed.iter_mut().find(|(pid, _)| *pid == id) {
                    p.1 = at;
                }
            }
            tracing::warn!(
                spreadsheet = self.spreadsheet,
                tab = title,
                "cell limit near: rolled over to a new sheet"
            );
            // The new tab needs its header, and the width for it (an adopted tab may be
            // narrower than the layout).
            self.write_header_to(ctx, &title, width as usize).await?;
        } else if rows_after > rows || cols_after > cols {
            if rows_after > rows {
                requests.push(append(last.sheet_id, "ROWS", rows_after - rows));
            }
            if cols_after > cols {
                requests.push(append(last.sheet_id, "COLUMNS", cols_after - cols));
            }
            grown.push((last.sheet_id, (rows_after, cols_after)));
        }
        // Older tabs may need more columns for rows edited there.
        for t in &self.tabs {
            if t.index == last.index {
                continue;
            }
            let (r, c) = self.grids.get(&t.sheet_id).copied().unwrap_or((0, 0));
            if c < width && placed.iter().any(|(_, at)| at.tab == t.index) {
                requests.push(append(t.sheet_id, "COLUMNS", width - c));
                grown.push((t.sheet_id, (r, width)));
            }
        }
        self.structure(ctx, requests, grown).await
    }

    /// Writes ranges in requests of at most `max_request_bytes`. A request Google refuses
    /// (400) is split until the refused range is alone; its response is returned for the
    /// dead-letter topic (a refused header stops the integration).
    async fn write_values(
        &self,
        ctx: &SinkContext,
        data: Vec<ValueRange>,
        owners: &[Option<Uuid>],
        bisect: bool,
    ) -> Result<Vec<Uuid>, Refusal> {
        let sizes: Vec<usize> = data
            .iter()
            .map(|v| serde_json::to_string(v).map(|s| s.len()).unwrap_or(0) + 16)
            .collect();
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut bytes = 0;
        for (i, size) in sizes.iter().enumerate() {
            if !current.is_empty() && bytes + size > self.config.max_request_bytes {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
            }
            current.push(i);
            bytes += size;
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        let mut refused = Vec::new();
        while let Some(chunk) = chunks.pop() {
            let ranges: Vec<ValueRange> = chunk.iter().map(|i| data[*i].clone()).collect();
            let id = self.spreadsheet.clone();
            let result = self
                .call_values(ctx, |t| {
                    let (s, id, r) = (self.service.clone(), id.clone(), ranges.clone());
                    async move { s.write(&t, &id, r).await }
                })
                .await;
            match result {
                Ok(_) => {}
                Err(CallError::Refused(m)) if !bisect => return Err(Refusal::Refused(m)),
                Err(CallError::Refused(m)) if chunk.len() > 1 => {
                    tracing::warn!(
                        error = m,
                        ranges = chunk.len(),
                        "Google refused a write; splitting it to find the range"
                    );
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    chunks.push(a.to_vec());
                    chunks.push(b.to_vec());
                }
                Err(CallError::Refused(m)) => match owners.get(chunk[0]).copied().flatten() {
                    Some(id) => {
                        tracing::warn!(error = m, response = %id, "Google refused a response's row");
                        refused.push(id);
                    }
                    None => {
                        return Err(Refusal::Sink(SinkError::fatal(format!(
                            "Google refused the header row: {m}"
                        ))));
                    }
                },
                Err(e) => return Err(Refusal::Sink(to_sink(e))),
            }
        }
        Ok(refused)
    }
}

impl SheetsSink {
    /// `values` with each range's tab title as Google now shows it (a person renamed a tab;
    /// `before` are the titles the ranges were made with, by tab index).
    fn retitled(&self, values: Vec<ValueRange>, before: &HashMap<i32, String>) -> Vec<ValueRange> {
        let renames: Vec<(String, String)> = self
            .tabs
            .iter()
            .filter_map(|t| {
                before
                    .get(&t.index)
                    .filter(|old| **old != t.title)
                    .map(|old| (rows::quoted(old), rows::quoted(&t.title)))
            })
            .collect();
        values
            .into_iter()
            .map(|mut v| {
                if let Some(range) = &v.range
                    && let Some((old, new)) = renames
                        .iter()
                        .find(|(old, _)| range.starts_with(&format!("{old}!")))
                {
                    v.range = Some(format!("{new}{}", &range[old.len()..]));
                }
                v
            })
            .collect()
    }
}

/// Why a write of values did not happen: Google refused it (400), or anything else.
enum Refusal {
    Refused(String),
    Sink(SinkError),
}

impl Refusal {
    fn into_sink(self) -> SinkError {
        match self {
            Refusal::Refused(m) => SinkError::fatal(format!("Google refused the header row: {m}")),
            Refusal::Sink(e) => e,
        }
    }
}

fn append(sheet_id: i64, dimension: &str, length: u32) -> Request {
    Request {
        append_dimension: Some(AppendDimensionRequest {
            sheet_id: Some(sheet_id as i32),
            dimension: Some(dimension.into()),
            length: Some(length as i32),
        }),
        ..Default::default()
    }
}

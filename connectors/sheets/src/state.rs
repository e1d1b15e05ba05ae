//! The connector's state in Postgres (migration `0005_sheets`): the spreadsheet, its tabs,
//! question columns and each response's row.

use std::collections::HashMap;

use collect_connect::SinkError;
use deadpool_postgres::Pool;
use uuid::Uuid;

/// A tab rows are written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tab {
    /// Order of use (0 first; rollovers add more).
    pub index: i32,
    /// Google's sheet id.
    pub sheet_id: i64,
    /// Title.
    pub title: String,
    /// Next free row (0-based; row 0 is the header).
    pub next_row: i32,
}

/// A question's column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// 0-based column.
    pub index: i32,
    /// Header label.
    pub label: String,
}

/// A response's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowAt {
    /// Tab.
    pub tab: i32,
    /// 0-based row.
    pub row: i32,
    /// Highest revision written.
    pub revision: i32,
}

fn db(e: impl std::fmt::Display) -> SinkError {
    SinkError::retryable(format!("connector state: {e}"))
}

/// State of one integration.
pub struct State {
    pool: Pool,
    id: Uuid,
}

impl State {
    /// The state of integration `id`.
    pub fn new(pool: Pool, id: Uuid) -> Self {
        Self { pool, id }
    }

    /// The spreadsheet in use, if one was chosen or created.
    pub async fn spreadsheet(&self) -> Result<Option<String>, SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        let row = c
            .query_opt(
                "SELECT spreadsheet_id FROM sheets_state WHERE integration_id = $1",
                &[&self.id],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Records the spreadsheet in use.
    pub async fn set_spreadsheet(&self, id: &str) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "INSERT INTO sheets_state (integration_id, spreadsheet_id) VALUES ($1, $2) \
             ON CONFLICT (integration_id) DO UPDATE SET spreadsheet_id = EXCLUDED.spreadsheet_id, updated_at = now()",
            &[&self.id, &id],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Points the integration at another spreadsheet: forgets the rows, tabs and columns of
    /// the previous one (they describe a sheet no longer written to), in one transaction.
    pub async fn retarget(&self, id: &str) -> Result<(), SinkError> {
        let mut c = self.pool.get().await.map_err(db)?;
        let tx = c.transaction().await.map_err(db)?;
        for table in ["sheets_rows", "sheets_tabs", "sheets_columns"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE integration_id = $1"),
                &[&self.id],
            )
            .await
            .map_err(db)?;
        }
        tx.execute(
            "UPDATE sheets_state SET spreadsheet_id = $2, updated_at = now() WHERE integration_id = $1",
            &[&self.id, &id],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Tabs in order, and question columns.
    pub async fn load(&self) -> Result<(Vec<Tab>, HashMap<Uuid, Column>), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        let tabs = c
            .query(
                "SELECT tab_index, sheet_id, title, next_row FROM sheets_tabs WHERE integration_id = $1 ORDER BY tab_index",
                &[&self.id],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| Tab { index: r.get(0), sheet_id: r.get(1), title: r.get(2), next_row: r.get(3) })
            .collect();
        let columns = c
            .query("SELECT question_id, column_index, label FROM sheets_columns WHERE integration_id = $1", &[&self.id])
            .await
            .map_err(db)?
            .iter()
            .map(|r| (r.get(0), Column { index: r.get(1), label: r.get(2) }))
            .collect();
        Ok((tabs, columns))
    }

    /// Rows of these responses.
    pub async fn rows(&self, responses: &[Uuid]) -> Result<HashMap<Uuid, RowAt>, SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        Ok(c
            .query(
                "SELECT response_id, tab_index, row_index, revision FROM sheets_rows WHERE integration_id = $1 AND response_id = ANY($2)",
                &[&self.id, &responses],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| (r.get(0), RowAt { tab: r.get(1), row: r.get(2), revision: r.get(3) }))
            .collect())
    }

    /// Stores, in one transaction and before anything is written to the sheet, new and
    /// relabelled columns, new tabs, tab cursors and new rows. A crash after this and before
    /// the sheet write leaves the rows reserved: the redelivered events find them again.
    pub async fn reserve(
        &self,
        generation: i64,
        tabs: &[Tab],
        columns: &[(Uuid, Column)],
        rows: &[(Uuid, RowAt)],
    ) -> Result<(), SinkError> {
        let mut c = self.pool.get().await.map_err(db)?;
        let tx = c.transaction().await.map_err(db)?;
        // Fenced: a writer that lost the integration's lease reserves nothing.
        collect_connect::lease::check(&tx, self.id, generation).await?;
        for t in tabs {
            tx.execute(
                "INSERT INTO sheets_tabs (integration_id, tab_index, sheet_id, title, next_row) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (integration_id, tab_index) DO UPDATE SET next_row = EXCLUDED.next_row, title = EXCLUDED.title, sheet_id = EXCLUDED.sheet_id",
                &[&self.id, &t.index, &t.sheet_id, &t.title, &t.next_row],
            )
            .await
            .map_err(db)?;
        }
        for (q, col) in columns {
            tx.execute(
                "INSERT INTO sheets_columns (integration_id, question_id, column_index, label) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (integration_id, question_id) DO UPDATE SET label = EXCLUDED.label",
                &[&self.id, q, &col.index, &col.label],
            )
            .await
            .map_err(db)?;
        }
        for (r, at) in rows {
            // A response has one row: a second writer's reservation is an error, never a
            // second row (nor a row shared by two responses: the unique index on the row).
            let n = tx
                .execute(
                    "INSERT INTO sheets_rows (integration_id, response_id, tab_index, row_index, revision) VALUES ($1, $2, $3, $4, 0) \
                     ON CONFLICT (integration_id, response_id) DO NOTHING",
                    &[&self.id, r, &at.tab, &at.row],
                )
                .await
                .map_err(db)?;
            if n != 1 {
                return Err(SinkError::retryable(format!(
                    "response {r} was given a row meanwhile; reading the rows again"
                )));
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Puts a tab's rows where the sheet shows them (after people sorted, inserted or deleted
    /// rows): `found` maps the responses read in the tab's Response ID column to their rows.
    /// Responses of the tab that are not found lose their row (a person deleted it: the next
    /// event of the response gives it a new one). The tab's next free row becomes `next_row`.
    /// One transaction; revisions are kept.
    pub async fn relocate(
        &self,
        generation: i64,
        tab: i32,
        found: &HashMap<Uuid, i32>,
        next_row: i32,
    ) -> Result<(usize, usize), SinkError> {
        let mut c = self.pool.get().await.map_err(db)?;
        let tx = c.transaction().await.map_err(db)?;
        collect_connect::lease::check(&tx, self.id, generation).await?;
        let before = tx
            .query(
                "DELETE FROM sheets_rows WHERE integration_id = $1 AND tab_index = $2 \
                 RETURNING response_id, revision",
                &[&self.id, &tab],
            )
            .await
            .map_err(db)?;
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        let mut revisions = Vec::new();
        for r in &before {
            let id: Uuid = r.get(0);
            if let Some(row) = found.get(&id) {
                ids.push(id);
                rows.push(*row);
                revisions.push(r.get::<_, i32>(1));
            }
        }
        tx.execute(
            "INSERT INTO sheets_rows (integration_id, response_id, tab_index, row_index, revision) \
             SELECT $1, u.id, $2, u.row, u.revision \
             FROM unnest($3::uuid[], $4::int[], $5::int[]) AS u(id, row, revision)",
            &[&self.id, &tab, &ids, &rows, &revisions],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "UPDATE sheets_tabs SET next_row = $3 WHERE integration_id = $1 AND tab_index = $2",
            &[&self.id, &tab, &next_row],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok((ids.len(), before.len() - ids.len()))
    }

    /// Records a tab recreated after a person deleted it: its new sheet id and title, none of
    /// its rows (their responses get rows again when read again), and the request to read
    /// every event again ([`State::refill_requested`]). One transaction, under the lease.
    pub async fn recreated(
        &self,
        generation: i64,
        tab: i32,
        sheet_id: i64,
        title: &str,
    ) -> Result<usize, SinkError> {
        let mut c = self.pool.get().await.map_err(db)?;
        let tx = c.transaction().await.map_err(db)?;
        collect_connect::lease::check(&tx, self.id, generation).await?;
        let lost = tx
            .execute(
                "DELETE FROM sheets_rows WHERE integration_id = $1 AND tab_index = $2",
                &[&self.id, &tab],
            )
            .await
            .map_err(db)?;
        tx.execute(
            "UPDATE sheets_tabs SET sheet_id = $3, title = $4, next_row = 1 \
             WHERE integration_id = $1 AND tab_index = $2",
            &[&self.id, &tab, &sheet_id, &title],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "UPDATE sheets_state SET refill_requested = true, updated_at = now() \
             WHERE integration_id = $1",
            &[&self.id],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(lost as usize)
    }

    /// Whether a recreated tab still waits for its events to be read again.
    pub async fn refill_requested(&self) -> Result<bool, SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        let row = c
            .query_opt(
                "SELECT refill_requested FROM sheets_state WHERE integration_id = $1",
                &[&self.id],
            )
            .await
            .map_err(db)?;
        Ok(row.is_some_and(|r| r.get(0)))
    }

    /// The runtime moved the offsets back: the refill is under way.
    pub async fn refill_started(&self) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "UPDATE sheets_state SET refill_requested = false, updated_at = now() \
             WHERE integration_id = $1",
            &[&self.id],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Moves a tab's next free row past content a person put there.
    pub async fn skip_to(&self, tab: i32, next_row: i32) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "UPDATE sheets_tabs SET next_row = greatest(next_row, $3) WHERE integration_id = $1 AND tab_index = $2",
            &[&self.id, &tab, &next_row],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Records a tab's new title (a person renamed it; it is followed by its sheet id).
    pub async fn retitle(&self, tab: i32, title: &str) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "UPDATE sheets_tabs SET title = $3 WHERE integration_id = $1 AND tab_index = $2",
            &[&self.id, &tab, &title],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// The response in each of these rows of `tab`, as the ledger has it.
    pub async fn owners(&self, tab: i32, rows: &[i32]) -> Result<HashMap<i32, Uuid>, SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        Ok(c
            .query(
                "SELECT row_index, response_id FROM sheets_rows WHERE integration_id = $1 AND tab_index = $2 AND row_index = ANY($3)",
                &[&self.id, &tab, &rows],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Records the revisions now in the sheet.
    pub async fn written(&self, revisions: &[(Uuid, i32)]) -> Result<(), SinkError> {
        if revisions.is_empty() {
            return Ok(());
        }
        let c = self.pool.get().await.map_err(db)?;
        let ids: Vec<Uuid> = revisions.iter().map(|(r, _)| *r).collect();
        let revs: Vec<i32> = revisions.iter().map(|(_, v)| *v).collect();
        c.execute(
            "UPDATE sheets_rows s SET revision = greatest(s.revision, u.revision) \
             FROM unnest($2::uuid[], $3::int[]) AS u(response_id, revision) \
             WHERE s.integration_id = $1 AND s.response_id = u.response_id",
            &[&self.id, &ids, &revs],
        )
        .await
        .map_err(db)?;
        Ok(())
    }
}

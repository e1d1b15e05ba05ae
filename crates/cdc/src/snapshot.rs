//! The initial snapshot: rows that existed before the slot, read from the snapshot the slot
//! exported, in key order and in chunks. After each chunk is acknowledged by the broker its
//! last key is stored in `cdc_snapshots`, so a crash resumes after it instead of starting
//! over. Streaming starts from the slot's consistent point only once the snapshot is done.
//!
//! A resumed snapshot cannot use the exported snapshot any more (it died with the crashed
//! connection): it reads the remaining rows as they are now. Changes made since the
//! consistent point then also arrive from the slot, possibly older than what the snapshot
//! already showed; every response event carries its revision (and form events the form
//! version), so sinks keep the newest state.

use std::time::{SystemTime, UNIX_EPOCH};

use collect_pgoutput::{Column, Lsn, RelationBody, ReplicaIdentity, TupleData, TupleValue};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::assemble::{ChangeKind, Position, assemble};
use crate::kafka::{Ack, Output, SendRefused};
use crate::metrics::Metrics;
use crate::row::{Relation, Row};
use crate::{CdcError, record_for};

/// How one table is read.
struct TableSpec {
    name: &'static str,
    columns: &'static [&'static str],
    /// Key columns, in order (the keyset).
    key: &'static [&'static str],
}

const SPECS: [TableSpec; 3] = [
    TableSpec {
        name: "forms",
        columns: &[
            "id",
            "org_id",
            "title",
            "description",
            "status",
            "version",
            "created_at",
            "updated_at",
            "deleted_at",
        ],
        key: &["id"],
    },
    TableSpec {
        name: "questions",
        columns: &[
            "id",
            "form_id",
            "label",
            "type",
            "alias",
            "position",
            "required",
            "options",
            "created_at",
            "updated_at",
            "deleted_at",
        ],
        key: &["id"],
    },
    TableSpec {
        name: "responses",
        columns: &[
            "form_id",
            "id",
            "org_id",
            "revision",
            "source",
            "metadata",
            "answers",
            "submitted_at",
            "updated_at",
            "deleted_at",
        ],
        key: &["form_id", "id"],
    },
];

impl TableSpec {
    fn relation(&self) -> Relation {
        Relation::from(&RelationBody {
            xid: None,
            oid: 0,
            namespace: "public".into(),
            name: self.name.into(),
            replica_identity: ReplicaIdentity::Full,
            columns: self
                .columns
                .iter()
                .map(|c| Column {
                    key: self.key.contains(c),
                    name: (*c).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    /// `SELECT` of the next chunk after the key in `$1..$k`, `LIMIT $k+1`.
    fn query(&self, first: bool) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| format!("{c}::text")).collect();
        let keys = self.key.join(", ");
        let n = self.key.len();
        let params: Vec<String> = (1..=n).map(|i| format!("${i}::text::uuid")).collect();
        let filter = if first {
            String::new()
        } else {
            format!("WHERE ({keys}) > ({})", params.join(", "))
        };
        let limit = if first {
            "$1".to_string()
        } else {
            format!("${}", n + 1)
        };
        format!(
            "SELECT {} FROM {} {filter} ORDER BY {keys} LIMIT {limit}",
            cols.join(", "),
            self.name
        )
    }
}

/// What the snapshot needs from its session.
pub struct Snapshot<'a> {
    /// Database to read.
    pub database_url: &'a str,
    /// Slot the snapshot belongs to.
    pub slot: &'a str,
    /// The slot's consistent point.
    pub consistent_point: Lsn,
    /// The exported snapshot, when the slot was created by this session.
    pub exported: Option<String>,
    /// Rows per chunk.
    pub chunk: i64,
    /// Where events go.
    pub out: &'a Output,
    /// Delivery reports of `out`.
    pub acks: &'a mut mpsc::UnboundedReceiver<Ack>,
    /// Metrics.
    pub metrics: &'a Metrics,
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, CdcError> {
    let target = collect_store::pg::target(url).map_err(CdcError::Config)?;
    Ok(target.connect().await?)
}

impl Snapshot<'_> {
    /// Reads every table from its stored progress on, emits the rows, and marks the
    /// snapshot complete. Returns the rows emitted by this call.
    pub async fn run(self) -> Result<u64, CdcError> {
        let Snapshot {
            database_url,
            slot,
            consistent_point,
            exported,
            chunk,
            out,
            acks,
            metrics,
        } = self;
        let state = connect(database_url).await?;
        let reader = connect(database_url).await?;
        reader
            .batch_execute(
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 3",
            )
            .await?;
        reader
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        if let Some(name) = &exported {
            reader
                .batch_execute(&format!(
                    "SET TRANSACTION SNAPSHOT '{}'",
                    name.replace('\'', "")
                ))
                .await?;
        }
        let row = state
            .query_one(
                "SELECT progress, rows_done FROM cdc_snapshots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        let mut progress: Value = row.get(0);
        let mut done: i64 = row.get(1);
        let estimate: i64 = reader
            .query_one(
                "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c \
                 WHERE c.relkind = 'r' AND (c.relname IN ('forms', 'questions') OR c.relname LIKE 'responses_p%')",
                &[],
            )
            .await?
            .get(0);
        state
            .execute(
                "UPDATE cdc_snapshots SET rows_estimate = $2 WHERE slot_name = $1",
                &[&slot, &estimate],
            )
            .await?;
        metrics.snapshot_rows_estimate.set(estimate);
        tracing::info!(slot, %consistent_point, resumed = exported.is_none(), estimate, "snapshot starts");
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let mut emitted = 0u64;
        for spec in &SPECS {
            let relation = spec.relation();
            loop {
                let last: Vec<String> = match &progress[spec.name] {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                };
                let rows = if last.is_empty() {
                    reader.query(&spec.query(true), &[&chunk]).await?
                } else {
                    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = last
                        .iter()
                        .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    params.push(&chunk);
                    reader.query(&spec.query(false), &params).await?
                };
                if rows.is_empty() {
                    break;
                }
                let pos = Position {
                    commit_lsn: consistent_point,
                    commit_ts: started,
                    xid: 0,
                    ordinal: 0,
                };
                let last_key = emit(spec, &relation, &rows, pos, out, acks, metrics).await?;
                progress[spec.name] = if last_key.len() == 1 {
                    json!(last_key[0])
                } else {
                    json!(last_key)
                };
                done += rows.len() as i64;
                emitted += rows.len() as u64;
                metrics.snapshot_rows.inc_by(rows.len() as u64);
                metrics.set_status(|s| s.snapshot_rows = Some((done, estimate)));
                state
                    .execute(
                        "UPDATE cdc_snapshots SET progress = $2, rows_done = $3 WHERE slot_name = $1",
                        &[&slot, &progress, &done],
                    )
                    .await?;
                if (rows.len() as i64) < chunk {
                    break;
                }
            }
        }
        reader.batch_execute("COMMIT").await?;
        state
            .execute(
                "UPDATE cdc_snapshots SET completed_at = now() WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        tracing::info!(slot, rows = done, "snapshot complete");
        Ok(emitted)
    }
}

/// Re-emits one form as it is now (the form, its questions, its responses) from Postgres, as
/// snapshot events, for when the topics no longer hold what an integration needs (`collect
/// snapshot --form`). Reads in one repeatable-read transaction, responses in chunks of
/// `chunk` by key; waits for the broker's acknowledgement of every record. `progress` is told
/// (rows done, rows in all) after every chunk. Returns the rows emitted. Sinks keep the
/// newest revision, so events that are older than ones they already applied change nothing.
pub async fn snapshot_form(
    database_url: &str,
    kafka: &crate::kafka::KafkaSettings,
    registry_url: &str,
    form: uuid::Uuid,
    chunk: i64,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, CdcError> {
    let reader = connect(database_url).await?;
    reader
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 3; \
             BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        )
        .await?;
    let form_text = form.to_string();
    let found = reader
        .query_one(
            "SELECT pg_current_wal_lsn()::text, (SELECT count(*) FROM forms WHERE id = $1::text::uuid), \
             (SELECT count(*) FROM questions WHERE form_id = $1::text::uuid), \
             (SELECT count(*) FROM responses WHERE form_id = $1::text::uuid)",
            &[&form_text],
        )
        .await?;
    let lsn: String = found.get(0);
    let (forms, questions, responses): (i64, i64, i64) = (found.get(1), found.get(2), found.get(3));
    if forms == 0 {
        return Err(CdcError::Config(format!("no form {form}")));
    }
    let total = (forms + questions + responses) as u64;
    // Only now, with a form to emit, anything is created or registered.
    crate::kafka::ensure_topics(kafka).await?;
    let (out, mut acks) = crate::kafka::Output::open(kafka, registry_url).await?;
    let metrics = Metrics::new("snapshot");
    let pos = Position {
        commit_lsn: lsn
            .parse()
            .map_err(|_| CdcError::Config(format!("unreadable LSN {lsn}")))?,
        commit_ts: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0),
        xid: 0,
        ordinal: 0,
    };
    let mut emitted = 0u64;
    for spec in &SPECS {
        let relation = spec.relation();
        let cols: Vec<String> = spec.columns.iter().map(|c| format!("{c}::text")).collect();
        let by = if spec.name == "forms" {
            "id"
        } else {
            "form_id"
        };
        let mut after: Option<String> = None;
        loop {
            let sql = format!(
                "SELECT {} FROM {} WHERE {by} = $1::text::uuid AND ($2::text IS NULL OR id > $2::text::uuid) \
                 ORDER BY id LIMIT $3",
                cols.join(", "),
                spec.name
            );
            let rows = reader.query(&sql, &[&form_text, &after, &chunk]).await?;
            if rows.is_empty() {
                break;
            }
            // The key ends with `id` in every table.
            after = emit(spec, &relation, &rows, pos, &out, &mut acks, &metrics)
                .await?
                .pop();
            emitted += rows.len() as u64;
            progress(emitted, total);
            if (rows.len() as i64) < chunk {
                break;
            }
        }
    }
    reader.batch_execute("COMMIT").await?;
    Ok(emitted)
}

/// Emits `rows` of `spec` as snapshot events at `pos` and waits until the broker has
/// acknowledged them all; returns the last row's key.
async fn emit(
    spec: &TableSpec,
    relation: &Relation,
    rows: &[tokio_postgres::Row],
    pos: Position,
    out: &Output,
    acks: &mut mpsc::UnboundedReceiver<Ack>,
    metrics: &Metrics,
) -> Result<Vec<String>, CdcError> {
    let mut outstanding = 0u64;
    let mut last_key = Vec::new();
    for r in rows {
        let values: Vec<Option<String>> = (0..spec.columns.len()).map(|i| r.get(i)).collect();
        let tuple = TupleData(
            values
                .iter()
                .map(|v| match v {
                    Some(s) => TupleValue::Text(s.clone().into()),
                    None => TupleValue::Null,
                })
                .collect(),
        );
        last_key = spec
            .key
            .iter()
            .map(|k| {
                let i = spec.columns.iter().position(|c| c == k).unwrap_or(0);
                values[i].clone().unwrap_or_default()
            })
            .collect();
        let row = Row::new(relation, &tuple, None);
        let built = assemble(&row, ChangeKind::Snapshot, pos, None);
        if let Some((record, _)) = record_for(out, &row, ChangeKind::Snapshot, pos, built, metrics)
        {
            send(out, acks, &record, &mut outstanding, metrics).await?;
        }
    }
    drain(acks, &mut outstanding, metrics).await?;
    Ok(last_key)
}

/// Sends one snapshot record, waiting for acknowledgements while the producer queue is full.
async fn send(
    out: &Output,
    acks: &mut mpsc::UnboundedReceiver<Ack>,
    record: &crate::kafka::OutRecord,
    outstanding: &mut u64,
    metrics: &Metrics,
) -> Result<(), CdcError> {
    loop {
        match out.try_send(record, 0) {
            Ok(()) => {
                *outstanding += 1;
                return Ok(());
            }
            Err(SendRefused::QueueFull) => take_ack(acks, outstanding, metrics).await?,
            Err(SendRefused::Failed(e)) => return Err(e.into()),
        }
    }
}

async fn take_ack(
    acks: &mut mpsc::UnboundedReceiver<Ack>,
    outstanding: &mut u64,
    metrics: &Metrics,
) -> Result<(), CdcError> {
    let ack = acks
        .recv()
        .await
        .ok_or_else(|| CdcError::Kafka("the producer stopped reporting deliveries".into()))?;
    if let Some(e) = ack.error {
        return Err(CdcError::Kafka(format!(
            "snapshot record not delivered: {e}"
        )));
    }
    metrics.events.with_label_values(&[&ack.topic]).inc();
    *outstanding = outstanding.saturating_sub(1);
    Ok(())
}

/// Waits until every record sent so far is acknowledged.
async fn drain(
    acks: &mut mpsc::UnboundedReceiver<Ack>,
    outstanding: &mut u64,
    metrics: &Metrics,
) -> Result<(), CdcError> {
    while *outstanding > 0 {
        take_ack(acks, outstanding, metrics).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_queries() {
        assert_eq!(
            SPECS[2].query(false),
            "SELECT form_id::text, id::text, org_id::text, revision::text, source::text, metadata::text, answers::text, \
             submitted_at::text, updated_at::text, deleted_at::text FROM responses WHERE (form_id, id) > ($1::text::uuid, $2::text::uuid) \
             ORDER BY form_id, id LIMIT $3"
        );
        assert!(
            SPECS[0]
                .query(true)
                .ends_with("FROM forms  ORDER BY id LIMIT $1")
        );
    }
}

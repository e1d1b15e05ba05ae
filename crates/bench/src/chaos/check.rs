//! What reached the other side, against Postgres (the truth): every response in its form's
//! sheet exactly once at its newest revision, every response with a number the provider
//! takes texted exactly once to that number, and exactly the dead letters that must be
//! there (the responses the SMS integration must refuse: no phone, or an opted-out one).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt as _, stream};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

use super::load::{Ledger, OPTED_OUT, Phone, Submitted};

/// A form of the run and what is attached to it.
#[derive(Debug, Clone)]
pub struct FormSetup {
    pub id: String,
    pub spreadsheet: String,
    /// A token of the service account the sheet is shared with (to read it back).
    pub token: String,
    pub sms_integration: String,
}

/// A response as Postgres has it.
#[derive(Debug)]
struct Truth {
    form: usize,
    revision: i32,
    deleted: bool,
    name: Option<String>,
    phone: Phone,
    /// The submission's `Idempotency-Key` (every submission of the run has one).
    key: Option<String>,
}

/// The counts of one look.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub responses: usize,
    pub rows: usize,
    pub texts: usize,
    pub dead_letters: usize,
    /// Missing: a row, a text, a dead letter, or an acknowledged submission not in Postgres.
    pub lost: usize,
    /// A response in two rows, texted twice.
    pub duplicated: usize,
    /// A row at an older revision than Postgres has (not yet converged).
    pub stale: usize,
    /// A cell, number or dead letter that should not be what it is.
    pub wrong: usize,
    /// The same dead letter written more than once (at-least-once to the dead-letter topic).
    pub dead_letter_repeats: usize,
    /// The first few responses never texted (see [`explain_untexted`]).
    pub untexted: Vec<String>,
    /// The first problems, for the reader of the report.
    pub examples: Vec<String>,
}

impl Tally {
    fn note(&mut self, what: String) {
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }

    pub fn converged(&self) -> bool {
        self.lost == 0 && self.stale == 0
    }
}

/// Where to look.
pub struct Sources<'a> {
    pub http: &'a reqwest::Client,
    pub db_url: &'a str,
    pub sheets: &'a str,
    pub sms: &'a str,
    pub brokers: &'a str,
    pub forms: &'a [FormSetup],
}

async fn truth(s: &Sources<'_>) -> Result<HashMap<String, Truth>> {
    let c = collect_testkit::connect(s.db_url).await?;
    let index: HashMap<&str, usize> = s
        .forms
        .iter()
        .enumerate()
        .map(|(i, f)| (f.id.as_str(), i))
        .collect();
    let rows = c
        .query(
            "SELECT id::text, form_id::text, revision, deleted_at IS NOT NULL,
                    (SELECT v->>'value' FROM jsonb_each(answers) e(k, v) WHERE v->>'alias' = 'name'),
                    (SELECT v->>'value' FROM jsonb_each(answers) e(k, v) WHERE v->>'alias' = 'phone'),
                    idempotency_key
             FROM responses",
            &[],
        )
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        let form: String = r.get(1);
        let Some(&form) = index.get(form.as_str()) else {
            continue;
        };
        let phone: Option<String> = r.get(5);
        let phone = match phone {
            Some(p) if !OPTED_OUT.contains(&p.as_str()) => Phone::Texted(p),
            _ => Phone::Refused,
        };
        out.insert(
            r.get(0),
            Truth {
                form,
                revision: r.get(2),
                deleted: r.get(3),
                name: r.get(4),
                phone,
                key: r.get(6),
            },
        );
    }
    Ok(out)
}

async fn sheet(s: &Sources<'_>, f: &FormSetup) -> Result<Vec<Vec<Value>>> {
    let v: Value = s
        .http
        .get(format!(
            "{}/v4/spreadsheets/{}/values/Responses!A1:Z",
            s.sheets, f.spreadsheet
        ))
        .bearer_auth(&f.token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(serde_json::from_value(v["values"].clone()).unwrap_or_default())
}

fn cell(row: &[Value], i: Option<usize>) -> &str {
    i.and_then(|i| row.get(i))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Every record of `topic` as (integration header, key), read from the beginning to the end
/// of every partition (nothing when the topic does not exist).
fn dead_letters(brokers: &str, topic: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    read_all(brokers, topic, |m| {
        let integration = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "collect.integration")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_default();
        let key = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        out.push((integration, key));
    })?;
    Ok(out)
}

/// A record of a response: partition, offset, and whether it says the response is deleted.
type Place = (i32, i64, bool);

/// The records of the responses topic whose value holds one of `ids` (as text: Avro strings
/// are UTF-8), as `id: [(partition, offset, whether it says the response is deleted)]` in
/// the order read (offset order within a partition). Decoded with this build's schema, the
/// one the run's reader writes with.
fn records_of(brokers: &str, topic: &str, ids: &[String]) -> Result<BTreeMap<String, Vec<Place>>> {
    let schema = collect_events::response_codec().schema();
    let mut out: BTreeMap<String, Vec<Place>> = BTreeMap::new();
    read_all(brokers, topic, |m| {
        let value = m.payload().unwrap_or_default();
        for id in ids {
            if value.windows(id.len()).any(|w| w == id.as_bytes()) {
                let deleted = collect_events::split_frame(value)
                    .ok()
                    .and_then(|(_, payload)| {
                        collect_events::decode::<collect_events::ResponseEvent>(
                            payload, schema, None,
                        )
                        .ok()
                    })
                    .is_some_and(|e| {
                        e.op == collect_events::ResponseOp::Deleted || e.deleted_at.is_some()
                    });
                out.entry(id.clone())
                    .or_default()
                    .push((m.partition(), m.offset(), deleted));
            }
        }
    })?;
    Ok(out)
}

/// Hands every record of `topic` to `each`, from the beginning to the end of every
/// partition as they were when asked (nothing when the topic does not exist).
fn read_all(
    brokers: &str,
    topic: &str,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<()> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "collect-bench-chaos-check")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(());
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut left = HashSet::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
            left.insert((p.id(), high));
        }
    }
    if left.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !left.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading {topic} took over 120 s"
        );
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                left.retain(|(q, _)| *q != p);
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {topic}")),
        };
        each(&m);
        let (p, next) = (m.partition(), m.offset() + 1);
        left.retain(|(q, high)| !(*q == p && next >= *high));
    }
    Ok(())
}

/// What the SMS ledger says of the first few never-texted responses of `t`, where their
/// records are and how far their integration's position is, for whoever reads the report
/// (asked once, for the verdict, not at every look).
pub async fn explain_untexted(s: &Sources<'_>, t: &mut Tally) -> Result<()> {
    if t.untexted.is_empty() {
        return Ok(());
    }
    let truth = truth(s).await?;
    let c = collect_testkit::connect(s.db_url).await?;
    let (brokers, ids) = (s.brokers.to_string(), t.untexted.clone());
    let records =
        tokio::task::spawn_blocking(move || records_of(&brokers, "collect.responses", &ids))
            .await??;
    for id in &t.untexted {
        let Some(r) = truth.get(id) else { continue };
        let entries: Vec<String> = c
            .query(
                "SELECT state, coalesce(error, ''), attempts, claimed_at::text FROM sms_ledger WHERE response_id = $1::text::uuid",
                &[id],
            )
            .await?
            .iter()
            .map(|l| {
                format!(
                    "{} {:?} after {} attempts since {}",
                    l.get::<_, String>(0),
                    l.get::<_, String>(1),
                    l.get::<_, i32>(2),
                    l.get::<_, String>(3)
                )
            })
            .collect();
        let positions = c
            .query(
                "SELECT topic || '/' || kafka_partition || ' at ' || next_offset || ', stored ' || updated_at::text \
                 FROM integration_positions WHERE integration_id = $1::text::uuid",
                &[&s.forms[r.form].sms_integration],
            )
            .await?
            .iter()
            .map(|p| p.get::<_, String>(0))
            .collect::<Vec<_>>();
        // Beyond the cap of notes: these five are what the report is read for.
        t.examples.push(format!(
            "response {id} (form {}, revision {}, deleted {}) never texted; SMS ledger: {entries:?}; its records (partition, offset, deleted): {:?}; the SMS integration's positions: {positions:?}",
            r.form,
            r.revision,
            r.deleted,
            records.get(id)
        ));
    }
    Ok(())
}

/// One look at everything.
pub async fn look(s: &Sources<'_>, acknowledged: &[Submitted], ledger: &Ledger) -> Result<Tally> {
    let truth = truth(s).await?;
    let mut t = Tally {
        responses: truth.len(),
        ..Tally::default()
    };
    // One response per submission: a retried submission (same key) never made a second.
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for (id, r) in &truth {
        match r.key.as_deref() {
            Some(k) => *keys.entry(k).or_default() += 1,
            None => {
                t.wrong += 1;
                t.note(format!(
                    "response {id} has no idempotency key: no client sent it"
                ));
            }
        }
    }
    for (k, n) in keys.iter().filter(|(_, n)| **n > 1) {
        t.duplicated += n - 1;
        t.note(format!("submission {k} stored {n} times"));
    }
    // Every acknowledged edit and deletion is in Postgres.
    let deleted = ledger.deleted();
    for (id, name) in ledger.edited() {
        if !deleted.contains(&id)
            && truth
                .get(&id)
                .is_some_and(|r| r.name.as_deref() != Some(name.as_str()))
        {
            t.lost += 1;
            t.note(format!(
                "response {id}: its acknowledged edit to {name:?} is not in Postgres"
            ));
        }
    }
    for id in &deleted {
        if truth.get(id).is_some_and(|r| !r.deleted) {
            t.lost += 1;
            t.note(format!(
                "response {id}: its acknowledged deletion is not in Postgres"
            ));
        }
    }
    // The API lost nothing it acknowledged, and stored the number people typed as E.164.
    for a in acknowledged {
        match truth.get(&a.id) {
            None => {
                t.lost += 1;
                t.note(format!("submission {} acknowledged, not in Postgres", a.id));
            }
            Some(r) if r.form != a.form => {
                t.wrong += 1;
                t.note(format!(
                    "response {} stored under form {}, sent to {}",
                    a.id, r.form, a.form
                ));
            }
            Some(r) if r.phone != a.phone => {
                t.wrong += 1;
                t.note(format!(
                    "response {}: phone {:?} stored, {:?} expected",
                    a.id, r.phone, a.phone
                ));
            }
            Some(_) => {}
        }
    }

    // Sheets.
    let sheets: Vec<Result<Vec<Vec<Value>>>> = stream::iter(s.forms)
        .map(|f| sheet(s, f))
        .buffered(16)
        .collect()
        .await;
    let mut by_form: Vec<Vec<(&String, &Truth)>> = vec![Vec::new(); s.forms.len()];
    for (id, r) in &truth {
        by_form[r.form].push((id, r));
    }
    for (f, rows) in sheets.into_iter().enumerate() {
        let rows = rows.with_context(|| format!("reading the sheet of form {f}"))?;
        let header: Vec<&str> = rows
            .first()
            .map(|h| h.iter().map(|c| c.as_str().unwrap_or("")).collect())
            .unwrap_or_default();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (id_c, rev_c, status_c, name_c) = (
            col("Response ID"),
            col("Revision"),
            col("Status"),
            col("Name"),
        );
        let mut seen: HashMap<&str, &Vec<Value>> = HashMap::new();
        for row in rows.iter().skip(1) {
            let id = cell(row, id_c);
            if id.is_empty() {
                continue;
            }
            t.rows += 1;
            if seen.insert(id, row).is_some() {
                t.duplicated += 1;
                t.note(format!("form {f}: response {id} in two rows"));
            }
            match truth.get(id) {
                Some(r) if r.form == f => {}
                _ => {
                    t.wrong += 1;
                    t.note(format!(
                        "form {f}: a row of response {id}, not one of this form"
                    ));
                }
            }
        }
        for (id, r) in &by_form[f] {
            let Some(row) = seen.get(id.as_str()) else {
                t.lost += 1;
                t.note(format!("form {f}: response {id} has no row"));
                continue;
            };
            let revision = cell(row, rev_c);
            if revision != r.revision.to_string() {
                if revision.parse::<i32>().is_ok_and(|v| v < r.revision) {
                    t.stale += 1;
                } else {
                    t.wrong += 1;
                }
                t.note(format!(
                    "form {f}: response {id} at revision {revision}, Postgres has {}",
                    r.revision
                ));
                continue;
            }
            let deleted = cell(row, status_c) == "deleted";
            let name_ok = r.deleted || r.name.as_deref().unwrap_or("") == cell(row, name_c);
            if deleted != r.deleted || !name_ok {
                t.wrong += 1;
                t.note(format!(
                    "form {f}: response {id}: row {row:?}, Postgres {r:?}"
                ));
            }
        }
    }

    // Texts: the template ends with "Ref {{response_id}}".
    let messages: Value = s
        .http
        .get(format!("{}/emulator/messages", s.sms))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut texted: HashMap<String, Vec<String>> = HashMap::new();
    for m in messages.as_array().map(Vec::as_slice).unwrap_or_default() {
        let body = m["body"].as_str().unwrap_or("");
        let id = body.rsplit("Ref ").next().unwrap_or("").to_string();
        texted
            .entry(id)
            .or_default()
            .push(m["to"].as_str().unwrap_or("").to_string());
        t.texts += 1;
    }
    for (id, to) in &texted {
        match truth.get(id).map(|r| &r.phone) {
            Some(Phone::Texted(want)) => {
                if to.len() > 1 {
                    t.duplicated += to.len() - 1;
                    t.note(format!("response {id} texted {} times", to.len()));
                }
                if to.iter().any(|n| n != want) {
                    t.wrong += 1;
                    t.note(format!("response {id} texted to {to:?}, not {want}"));
                }
            }
            _ => {
                t.wrong += to.len();
                t.note(format!(
                    "a text for response {id}, which must not be texted"
                ));
            }
        }
    }
    let mut untexted = Vec::new();
    for (id, r) in &truth {
        if matches!(r.phone, Phone::Texted(_)) && !texted.contains_key(id) {
            untexted.push(id.clone());
        }
    }
    // Every one of them is lost: the run's topics keep every record (see stack::event_topics),
    // so each integration reads every response's creation, whatever was deleted since.
    t.lost += untexted.len();
    t.untexted = untexted.into_iter().take(5).collect();

    // Dead letters: one per refused response, on its form's SMS integration; none anywhere
    // else, none from the reader.
    let letters = dead_letters(s.brokers, "collect.connect.dlq")?;
    t.dead_letters = letters.len();
    let mut counted: BTreeMap<(String, String), usize> = BTreeMap::new();
    for l in letters {
        *counted.entry(l).or_default() += 1;
    }
    for ((integration, id), n) in &counted {
        let expected = truth.get(id).is_some_and(|r| {
            r.phone == Phone::Refused && s.forms[r.form].sms_integration == *integration
        });
        if expected {
            t.dead_letter_repeats += n - 1;
        } else {
            t.wrong += n;
            t.note(format!(
                "dead letter of integration {integration} for response {id}, not expected"
            ));
        }
    }
    for (id, r) in &truth {
        if r.phone == Phone::Refused
            && !counted.contains_key(&(s.forms[r.form].sms_integration.clone(), id.clone()))
        {
            t.lost += 1;
            t.note(format!("response {id}: no dead letter"));
        }
    }
    let reader_letters = dead_letters(s.brokers, "collect.cdc.dlq")?;
    if !reader_letters.is_empty() {
        t.wrong += reader_letters.len();
        t.note(format!("{} reader dead letters", reader_letters.len()));
    }
    Ok(t)
}

//! A reference sink that keeps "rows" in memory, with knobs to make it slow, flaky or fatal.
//! The runtime's own tests use it; it also shows the smallest correct [`Sink`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kind::{Kind, KindError, Prepared, decode, encode};
use crate::sink::{BatchOutcome, Delivery, Sink, SinkContext, SinkError, SinkEvent};

/// What the memory "third party" holds and how it misbehaves.
#[derive(Debug, Default)]
pub struct Store {
    /// Rows in insertion order: (response id, revision, op).
    pub rows: Vec<(String, i32, String)>,
    /// Row of each response.
    pub index: HashMap<String, usize>,
    /// Write calls that reached the store.
    pub writes: u64,
    /// Latency of each write.
    pub latency: Duration,
    /// Fail the next `n` writes with a retryable error.
    pub fail_next: u32,
    /// Fail every write with a fatal error carrying this reason.
    pub fatal: Option<String>,
    /// Reject (dead-letter) responses whose name answer equals this.
    pub reject_name: Option<String>,
    /// The credentials the last sink built on this store was given (decrypted).
    pub credentials: Option<Value>,
}

static STORES: Mutex<Option<HashMap<String, Arc<Mutex<Store>>>>> = Mutex::new(None);

/// The store named `name` (created on first use), shared by every sink configured with it.
pub fn store(name: &str) -> Arc<Mutex<Store>> {
    let mut map = STORES.lock().unwrap_or_else(PoisonError::into_inner);
    map.get_or_insert_with(HashMap::new)
        .entry(name.to_string())
        .or_default()
        .clone()
}

/// Configuration of the memory kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the shared store.
    pub store: String,
}

/// The memory kind.
pub struct Memory;

/// The memory sink.
pub struct MemorySink {
    store: Arc<Mutex<Store>>,
}

impl MemorySink {
    /// A sink writing into the named store.
    pub fn new(name: &str) -> Self {
        Self { store: store(name) }
    }
}

impl Kind for Memory {
    const NAME: &'static str = "memory";
    type Sink = MemorySink;

    async fn prepare(config: Value, credentials: Option<Value>) -> Result<Prepared, KindError> {
        let c: Config = decode("config", config)?;
        if let Some(cr) = &credentials
            && !cr.is_object()
        {
            return Err(KindError::Refused(
                "credentials must be a JSON object".into(),
            ));
        }
        Ok(Prepared {
            config: encode(&c),
            credentials,
        })
    }

    fn build(config: &Value, credentials: Option<&Value>) -> Result<MemorySink, KindError> {
        let c: Config = decode("config", config.clone())?;
        let sink = MemorySink::new(&c.store);
        sink.store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .credentials = credentials.cloned();
        Ok(sink)
    }
}

impl Sink for MemorySink {
    async fn start(&mut self, _ctx: &SinkContext) -> Result<(), SinkError> {
        match &self
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fatal
        {
            Some(reason) => Err(SinkError::fatal(reason.clone())),
            None => Ok(()),
        }
    }

    async fn write(
        &mut self,
        batch: &[Delivery],
        ctx: &SinkContext,
    ) -> Result<BatchOutcome, SinkError> {
        let latency = self
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut s = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = &s.fatal {
            return Err(SinkError::fatal(reason.clone()));
        }
        if s.fail_next > 0 {
            s.fail_next -= 1;
            ctx.metrics.request("error");
            return Err(SinkError::Retryable {
                message: "injected failure".into(),
                retry_after: Some(Duration::from_millis(10)),
            });
        }
        s.writes += 1;
        ctx.metrics.request("ok");
        let mut outcome = BatchOutcome::default();
        for (i, d) in batch.iter().enumerate() {
            let SinkEvent::Response(r) = &d.event else {
                continue;
            };
            let name = r
                .answers
                .iter()
                .find(|a| a.alias.as_deref() == Some("name"))
                .and_then(|a| a.text.clone());
            if s.reject_name.is_some() && name == s.reject_name {
                outcome
                    .rejected
                    .push((i, format!("name {name:?} is refused")));
                continue;
            }
            let op = format!("{:?}", r.op);
            match s.index.get(&r.response_id).copied() {
                // Idempotent: a known response rewrites its row, and only forward.
                Some(row) => {
                    if r.revision >= s.rows[row].1 {
                        s.rows[row] = (r.response_id.clone(), r.revision, op);
                    }
                }
                None => {
                    let row = s.rows.len();
                    s.rows.push((r.response_id.clone(), r.revision, op));
                    s.index.insert(r.response_id.clone(), row);
                }
            }
            ctx.metrics.written(1);
        }
        Ok(outcome)
    }
}

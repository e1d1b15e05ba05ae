//! Runs the workers of active integrations, spread over `collect connect` processes.
//!
//! Each process holds a Postgres advisory lock per integration it runs, on one session of
//! its own, up to its capacity. Every poll it reaps finished workers (pausing integrations
//! whose sink reported a fatal error), stops workers of integrations that were paused,
//! deleted or replaced, and takes free integrations. When a process dies, its session ends,
//! its locks go, and other processes take its integrations over: the hand-over Kafka groups
//! do with rebalances, where a worker commits what is durable before it lets go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::crypto::Sealer;
use crate::kind::Kinds;
use crate::store::{Integration, IntegrationStore};
use crate::worker::{Job, Shared, WorkerExit};

/// Wakes the supervisors of this process at once (instead of at their next poll) when the
/// connect API stored, paused, resumed or deleted an integration: a new integration starts
/// within the moment, not a poll later. Processes without the API find it at their poll.
static CHANGED: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

/// Tells this process's supervisors that the integrations table changed.
pub fn integrations_changed() {
    CHANGED.notify_one();
}

/// What a process knows about the integrations it runs (for the API's status).
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// `running` or `backoff`.
    pub state: String,
    /// Last failure of a worker, if the latest ended in one.
    pub last_error: Option<String>,
}

/// Integrations running here, shared with the API.
pub type Running = Arc<Mutex<HashMap<Uuid, RunInfo>>>;

/// Everything the supervisor needs.
#[derive(Clone)]
pub struct Connect {
    /// Integrations.
    pub store: IntegrationStore,
    /// Opens stored credentials.
    pub sealer: Arc<Sealer>,
    /// Installed kinds.
    pub kinds: Arc<dyn Kinds>,
    /// What workers share.
    pub shared: Shared,
    /// Most integrations this process runs.
    pub capacity: usize,
    /// Interval of reconciliation.
    pub poll: Duration,
    /// Integrations running here.
    pub running: Running,
    /// Database URL for the lease session.
    pub database_url: String,
}

struct Worker {
    stop: watch::Sender<bool>,
    handle: JoinHandle<WorkerExit>,
    started: Instant,
    updated_at: chrono::DateTime<chrono::Utc>,
    kind: String,
}

/// The advisory lock a process holds while it runs integration `id` (its lease). Operators'
/// tools take it to be sure no worker runs the integration.
pub fn lease_key(id: Uuid) -> i64 {
    lock_key(id)
}

fn lock_key(id: Uuid) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"collect-connect:".iter().chain(id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

impl Connect {
    fn set_info(&self, id: Uuid, info: Option<RunInfo>) {
        let mut map = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match info {
            Some(i) => map.insert(id, i),
            None => map.remove(&id),
        };
    }

    fn spawn(&self, integ: &Integration, lease_generation: i64) -> Result<Worker, String> {
        let credentials = match &integ.sealed {
            Some(sealed) => {
                let plain = self.sealer.open(sealed).map_err(|e| e.to_string())?;
                Some(
                    serde_json::from_slice(&plain)
                        .map_err(|e| format!("stored credentials: {e}"))?,
                )
            }
            None => None,
        };
        let (stop, stopped) = watch::channel(false);
        let job = Job {
            integration: integ.clone(),
            lease_generation,
            shared: self.shared.clone(),
            stop: stopped,
        };
        let fut = self
            .kinds
            .worker(&integ.kind, &integ.config, credentials.as_ref(), job)
            .map_err(|e| e.to_string())?;
        Ok(Worker {
            stop,
            handle: tokio::spawn(fut),
            started: Instant::now(),
            updated_at: integ.updated_at,
            kind: integ.kind.clone(),
        })
    }
}

/// The wait before restarting a worker after its `n`th failure in a row (1-based): 5 s,
/// doubling to 60 s, each spread by up to a fifth either way, so that many workers failing
/// together (a broker outage) do not all ask again at the same moment.
fn restart_delay(n: u32) -> Duration {
    let base = Duration::from_secs(5)
        .saturating_mul(1 << n.clamp(1, 5).saturating_sub(1))
        .min(Duration::from_secs(60));
    base.mul_f64(rand::random_range(0.8..1.2))
}

/// Runs until `stop` turns true, then stops every worker (bounded) and returns.
pub async fn run(c: Connect, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let mut workers: HashMap<Uuid, Worker> = HashMap::new();
    let mut backoff: HashMap<Uuid, Instant> = HashMap::new();
    // Failures in a row of each integration whose worker failed within a minute of starting.
    let mut failures: HashMap<Uuid, u32> = HashMap::new();
    let mut lease: Option<(tokio_postgres::Client, watch::Receiver<bool>)> = None;
    // The active integrations as last read, and the table's fingerprint then.
    let mut seen: Option<(crate::store::Fingerprint, Vec<Uuid>)> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        // The lease session: every lock of this process lives on it.
        let session_lost = lease.as_ref().is_some_and(|(_, lost)| *lost.borrow());
        if session_lost {
            // Its locks are gone with it: another process may run these integrations from
            // now on. Abort at once (no graceful end of the batch in hand: at-least-once
            // makes a redelivery harmless, a second writer would not be).
            tracing::error!("lost the lease session; aborting every worker");
            for (id, w) in workers.drain() {
                w.handle.abort();
                c.set_info(id, None);
            }
            lease = None;
        }
        if lease.is_none() {
            let connected = match collect_store::pg::lease_target(&c.database_url) {
                Ok(mut t) => {
                    t.config.application_name("collect-connect-lease");
                    t.connect_watched().await.map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            match connected {
                Ok((client, rx)) => {
                    lease = Some((client, rx));
                }
                Err(e) => tracing::error!(error = %e, "cannot open the lease session"),
            }
        }

        // Reap finished workers.
        let done: Vec<Uuid> = workers
            .iter()
            .filter(|(_, w)| w.handle.is_finished())
            .map(|(id, _)| *id)
            .collect();
        let reaped = done.len();
        for id in done {
            let Some(w) = workers.remove(&id) else {
                continue;
            };
            let exit = w
                .handle
                .await
                .unwrap_or_else(|e| WorkerExit::Failed(format!("worker panicked: {e}")));
            if let Some((client, _)) = &lease {
                let _ = client
                    .execute("SELECT pg_advisory_unlock($1)", &[&lock_key(id)])
                    .await;
            }
            if !matches!(exit, WorkerExit::Failed(_)) {
                failures.remove(&id);
            }
            match exit {
                WorkerExit::Stopped => c.set_info(id, None),
                WorkerExit::Paused(reason) => {
                    if let Err(e) = c.store.set_status(id, "paused", Some(&reason)).await {
                        tracing::error!(integration = %id, error = %e, "cannot record the pause");
                    }
                    c.set_info(id, None);
                }
                WorkerExit::Rewound(_) => c.set_info(id, None), // restarted by the reconcile below
                WorkerExit::Failed(e) => {
                    let n = if w.started.elapsed() > Duration::from_secs(60) {
                        1
                    } else {
                        failures.get(&id).copied().unwrap_or(0) + 1
                    };
                    failures.insert(id, n);
                    let wait = restart_delay(n);
                    tracing::error!(integration = %id, kind = w.kind, error = e, retry_in = ?wait, failures = n, "worker failed; restarting");
                    backoff.insert(id, Instant::now() + wait);
                    c.set_info(
                        id,
                        Some(RunInfo {
                            state: "backoff".into(),
                            last_error: Some(e),
                        }),
                    );
                }
            }
        }

        // Reconcile with the table: read again only when it changed, something ended here,
        // or some active integration runs nowhere here (another process may have died).
        let fingerprint = c.store.fingerprint().await.ok();
        let idle = reaped == 0
            && fingerprint.is_some()
            && seen.as_ref().is_some_and(|(fp, active)| {
                Some(fp) == fingerprint.as_ref()
                    && active.len() == workers.len()
                    && active.iter().all(|id| workers.contains_key(id))
            });
        let listed = if idle {
            Ok(None)
        } else {
            c.store.active().await.map(Some)
        };
        match listed {
            Ok(None) => {}
            Ok(Some(active)) => {
                if let Some(fp) = fingerprint {
                    seen = Some((fp, active.iter().map(|i| i.id).collect()));
                }
                let wanted: HashMap<Uuid, &Integration> =
                    active.iter().map(|i| (i.id, i)).collect();
                // Integrations deleted, paused or no longer active leave no state here.
                backoff.retain(|id, _| wanted.contains_key(id));
                failures.retain(|id, _| wanted.contains_key(id));
                for (id, w) in &workers {
                    let gone = wanted.get(id).is_none_or(|i| i.updated_at != w.updated_at);
                    if gone {
                        let _ = w.stop.send(true);
                    }
                }
                if let Some((client, _)) = &lease {
                    // Locks first (no commit), then every new generation in one statement.
                    let mut locked: Vec<&Integration> = Vec::new();
                    for integ in &active {
                        if workers.len() + locked.len() >= c.capacity {
                            break;
                        }
                        if workers.contains_key(&integ.id)
                            || backoff.get(&integ.id).is_some_and(|t| Instant::now() < *t)
                        {
                            continue;
                        }
                        let got: bool = match client
                            .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(integ.id)])
                            .await
                        {
                            Ok(r) => r.get(0),
                            Err(_) => false,
                        };
                        if got {
                            locked.push(integ);
                        }
                    }
                    let ids: Vec<Uuid> = locked.iter().map(|i| i.id).collect();
                    let generations: HashMap<Uuid, i64> = if ids.is_empty() {
                        HashMap::new()
                    } else {
                        match crate::lease::take_many(client, &ids).await {
                            Ok(g) => g.into_iter().collect(),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot take the lease generations");
                                HashMap::new()
                            }
                        }
                    };
                    for integ in locked {
                        let unlock = || async {
                            let _ = client
                                .execute("SELECT pg_advisory_unlock($1)", &[&lock_key(integ.id)])
                                .await;
                        };
                        let Some(generation) = generations.get(&integ.id).copied() else {
                            unlock().await;
                            continue;
                        };
                        match c.spawn(integ, generation) {
                            Ok(w) => {
                                backoff.remove(&integ.id);
                                c.set_info(
                                    integ.id,
                                    Some(RunInfo {
                                        state: "running".into(),
                                        last_error: None,
                                    }),
                                );
                                workers.insert(integ.id, w);
                            }
                            Err(e) => {
                                unlock().await;
                                tracing::error!(integration = %integ.id, error = e, "cannot start the integration; pausing it");
                                let _ = c.store.set_status(integ.id, "paused", Some(&e)).await;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list integrations"),
        }

        if !idle {
            export_states(&c).await;
        }

        tokio::select! {
            _ = tokio::time::sleep(c.poll) => {}
            _ = CHANGED.notified() => {}
            _ = stop.changed() => {}
        }
    }
    stop_all(&c, &mut workers).await;
    Ok(())
}

/// Sets `collect_connect_integration_state`: `paused` for paused integrations (every process
/// says so, alerts take the max), the local state for the ones running here.
async fn export_states(c: &Connect) {
    let Ok(all) = c.store.statuses().await else {
        return;
    };
    let here = c
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let gauge = &c.shared.metrics.state;
    gauge.reset();
    for (id, kind, status) in all {
        let id_s = id.to_string();
        let state = match (status.as_str(), here.get(&id)) {
            ("paused", _) => "paused",
            (_, Some(info)) => info.state.as_str(),
            _ => continue,
        };
        gauge
            .with_label_values(&[id_s.as_str(), kind.as_str(), state])
            .set(1);
    }
}

/// Stops every worker and waits for them (30 s at most each), recording pauses.
async fn stop_all(c: &Connect, workers: &mut HashMap<Uuid, Worker>) {
    for w in workers.values() {
        let _ = w.stop.send(true);
    }
    for (id, mut w) in workers.drain() {
        match tokio::time::timeout(Duration::from_secs(30), &mut w.handle).await {
            Ok(Ok(WorkerExit::Paused(reason))) => {
                let _ = c.store.set_status(id, "paused", Some(&reason)).await;
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(integration = %id, "worker did not stop within 30 s; aborting it");
                w.handle.abort();
            }
        }
        c.set_info(id, None);
    }
}

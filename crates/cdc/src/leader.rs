//! One active reader per slot: the active reader holds a Postgres advisory lock on its own
//! session; standbys poll for it every second. When the active reader dies its session ends,
//! Postgres releases the lock, and a standby takes over.

use std::time::Duration;

use tokio::sync::watch;

use crate::CdcError;

/// The advisory lock key of a slot (FNV-1a of `collect-cdc:<slot>`).
pub fn lock_key(slot: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("collect-cdc:{slot}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Leadership of a slot, held as long as this value lives and its session is up.
pub struct Lease {
    _client: tokio_postgres::Client,
    lost: watch::Receiver<bool>,
}

impl Lease {
    /// Resolves when the session holding the lock ends (Postgres restarted, network lost).
    pub async fn lost(&mut self) {
        while !*self.lost.borrow() {
            if self.lost.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Waits until this process holds the slot's lock. `on_standby` runs once if another
/// reader holds it. Returns `None` if `shutdown` turns true first.
pub async fn acquire(
    url: &str,
    slot: &str,
    shutdown: &mut watch::Receiver<bool>,
    on_standby: impl Fn(),
) -> Result<Option<Lease>, CdcError> {
    let key = lock_key(slot);
    let target = collect_store::pg::lease_target(url).map_err(CdcError::Config)?;
    let (client, rx) = target.connect_watched().await?;
    let mut announced = false;
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        if got {
            return Ok(Some(Lease {
                _client: client,
                lost: rx,
            }));
        }
        if !announced {
            tracing::info!(slot, "another reader holds the slot; standing by");
            on_standby();
            announced = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return Ok(None),
        }
        if *shutdown.borrow() {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_differ_per_slot_and_are_stable() {
        assert_eq!(super::lock_key("collect"), super::lock_key("collect"));
        assert_ne!(super::lock_key("collect"), super::lock_key("other"));
    }
}

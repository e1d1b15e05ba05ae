//! Rate limits shared by every integration of a process, keyed as the third party counts
//! them (per user, per project, per sender, per account), with governor.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A quota: `count` requests per `per`, with bursts up to `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// `count` per minute.
    pub fn per_minute(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(60),
        }
    }

    /// `count` per second.
    pub fn per_second(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(1),
        }
    }

    fn quota(self) -> Quota {
        let count = NonZeroU32::new(self.count.max(1)).unwrap_or(NonZeroU32::MIN);
        let period = self.per / count.get();
        Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(count))
            .allow_burst(count)
    }
}

/// Waiting for a permit took longer than allowed.
#[derive(Debug, thiserror::Error)]
#[error("rate limit {key}: no permit within {waited:?}")]
pub struct Throttled {
    /// The limit's key.
    pub key: String,
    /// How long we waited.
    pub waited: Duration,
}

/// One key's rate and its limiter.
type Keyed = (Rate, Arc<DefaultDirectRateLimiter>);

/// Limiters by key. Cloning shares them.
#[derive(Clone, Default)]
pub struct Limiter {
    limiters: Arc<Mutex<HashMap<String, Keyed>>>,
}

/// Most distinct keys kept (users, projects, senders); beyond it the table is cleared, which
/// at worst lets one extra burst through.
const MAX_KEYS: usize = 10_000;

impl Limiter {
    /// A new, empty set of limiters.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, key: &str, rate: Rate) -> Arc<DefaultDirectRateLimiter> {
        let mut map = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((r, l)) = map.get(key)
            && *r == rate
        {
            return l.clone();
        }
        if map.len() >= MAX_KEYS {
            map.clear();
        }
        let l = Arc::new(RateLimiter::direct(rate.quota()));
        map.insert(key.to_string(), (rate, l.clone()));
        l
    }

    /// Waits for one permit of `key` limited to `rate`, at most `max_wait`.
    pub async fn acquire(
        &self,
        key: &str,
        rate: Rate,
        max_wait: Duration,
    ) -> Result<(), Throttled> {
        let limiter = self.get(key, rate);
        if limiter.check().is_ok() {
            return Ok(());
        }
        tokio::time::timeout(max_wait, limiter.until_ready())
            .await
            .map_err(|_| Throttled {
                key: key.to_string(),
                waited: max_wait,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_per_key_and_gives_up_after_max_wait() {
        let l = Limiter::new();
        let rate = Rate {
            count: 3,
            per: Duration::from_millis(300),
        };
        for _ in 0..3 {
            l.acquire("a", rate, Duration::ZERO).await.unwrap();
        }
        // The burst is spent: "a" waits, "b" does not.
        assert!(
            l.acquire("a", rate, Duration::from_millis(1))
                .await
                .is_err()
        );
        l.acquire("b", rate, Duration::ZERO).await.unwrap();
        let t = std::time::Instant::now();
        l.acquire("a", rate, Duration::from_secs(2)).await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "waited for the next permit"
        );
    }
}

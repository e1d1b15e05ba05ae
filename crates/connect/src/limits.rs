//! Rate limits keyed as the third party counts them (per user, per project, per sender, per
//! account). Within one process, governor's GCRA. Across processes (two `collect connect`
//! writing for integrations that share one Google user or one Twilio sender), the same
//! algorithm (GCRA: a theoretical arrival time per key) kept in Postgres (migration
//! `0013_rate_limits`, an unlogged table: no WAL, nothing for the CDC reader), one statement
//! per permit, so the processes together stay within the third party's quota.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A quota: at most `count` requests in any window of `per` (fixed, as Google's per-minute
/// quotas are counted, or rolling). GCRA: up to `burst` permits at once, then permits
/// spaced `per / (count - burst)` apart, so that any window of `per` holds at most
/// `burst + (count - burst) = count` of them. (A token bucket of `count` refilled at the
/// quota's rate would put up to twice the quota in one window: the burst, then the refill,
/// which the third party refuses with 429.) A small burst lets a new integration make its
/// first few requests at once; a larger one costs sustained rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
    /// Permits that may be taken at once (at least 1, less than `count`).
    pub burst: u32,
}

impl Rate {
    /// `count` per minute.
    pub fn per_minute(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(60),
            burst: 1,
        }
    }

    /// The same quota with up to `burst` permits at once, bounded to a twelfth of `count`
    /// (at least 1) so that the sustained rate, `count - burst` a period, stays within about
    /// 8% of the quota: 60 a minute allows 5 at once, 10 a minute none.
    pub fn with_burst(self, burst: u32) -> Self {
        let asked = Self { burst, ..self };
        Self {
            burst: asked.burst(),
            ..self
        }
    }

    fn burst(self) -> u32 {
        self.burst.min(self.count / 12).max(1)
    }

    /// `count` per second.
    pub fn per_second(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(1),
            burst: 1,
        }
    }

    /// The spacing between two permits.
    pub fn interval(self) -> Duration {
        (self.per / self.count.saturating_sub(self.burst()).max(1)).max(Duration::from_nanos(1))
    }

    fn quota(self) -> Quota {
        Quota::with_period(self.interval())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(self.burst()).unwrap_or(NonZeroU32::MIN))
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
    /// Postgres, when the limits are shared by every process of the database.
    shared: Option<deadpool_postgres::Pool>,
}

/// Most distinct keys kept (users, projects, senders); beyond it the table is cleared, which
/// at worst lets one extra burst through.
const MAX_KEYS: usize = 10_000;

impl Limiter {
    /// A new, empty set of limiters, for this process alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits shared with every process of the database behind `pool`. If Postgres fails,
    /// a permit falls back to this process's own limiter (logged).
    pub fn shared(pool: deadpool_postgres::Pool) -> Self {
        Self {
            limiters: Arc::default(),
            shared: Some(pool),
        }
    }

    /// One try at a shared permit: `Ok(None)` when granted, `Ok(Some(wait))` when the next
    /// permit comes after `wait`.
    async fn try_shared(
        pool: &deadpool_postgres::Pool,
        key: &str,
        rate: Rate,
    ) -> Result<Option<Duration>, String> {
        let c = pool.get().await.map_err(|e| e.to_string())?;
        let interval = rate.interval().as_secs_f64();
        // Up to `burst` permits ahead of the theoretical arrival time (see Rate).
        let window = interval * f64::from(rate.burst());
        // GCRA: a request conforms when the theoretical arrival time, pushed by one
        // interval, stays within the burst window from now.
        let granted = c
            .query_opt(
                "INSERT INTO rate_limits AS r (key, tat) \
                 VALUES ($1, clock_timestamp() + make_interval(secs => $2)) \
                 ON CONFLICT (key) DO UPDATE \
                 SET tat = greatest(r.tat, clock_timestamp()) + make_interval(secs => $2) \
                 WHERE greatest(r.tat, clock_timestamp()) + make_interval(secs => $2) \
                       - clock_timestamp() <= make_interval(secs => $3) \
                 RETURNING 1",
                &[&key, &interval, &window],
            )
            .await
            .map_err(|e| e.to_string())?
            .is_some();
        if granted {
            return Ok(None);
        }
        let wait: f64 = c
            .query_one(
                "SELECT coalesce(extract(epoch FROM greatest(tat, clock_timestamp()) \
                 + make_interval(secs => $2) - make_interval(secs => $3) - clock_timestamp()), 0)::float8 \
                 FROM rate_limits WHERE key = $1",
                &[&key, &interval, &window],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        Ok(Some(Duration::from_secs_f64(wait.clamp(0.005, 60.0))))
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
        if let Some(pool) = &self.shared {
            let deadline = tokio::time::Instant::now() + max_wait;
            loop {
                match Self::try_shared(pool, key, rate).await {
                    Ok(None) => return Ok(()),
                    Ok(Some(wait)) => {
                        let now = tokio::time::Instant::now();
                        if now + wait > deadline {
                            return Err(Throttled {
                                key: key.to_string(),
                                waited: max_wait,
                            });
                        }
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => {
                        tracing::warn!(
                            key,
                            error = e,
                            "shared rate limit unavailable; limiting this process alone"
                        );
                        break;
                    }
                }
            }
        }
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
    async fn a_burst_is_paid_for_by_wider_spacing_and_never_exceeds_the_quota() {
        let l = Limiter::new();
        // 24 in any 3 s, 2 at once: then one every 3 s / 22.
        let rate = Rate {
            count: 24,
            per: Duration::from_secs(3),
            burst: 2,
        };
        assert_eq!(rate.interval(), Duration::from_secs(3) / 22);
        l.acquire("k", rate, Duration::ZERO).await.unwrap();
        l.acquire("k", rate, Duration::ZERO).await.unwrap();
        assert!(
            l.acquire("k", rate, Duration::from_millis(1))
                .await
                .is_err()
        );
        // A burst never above a twelfth of the quota, whatever is asked.
        assert_eq!(Rate::per_minute(3).with_burst(10).burst, 1);
        assert_eq!(Rate::per_minute(60).with_burst(10).burst, 5);
        assert_eq!(
            Rate::per_minute(10).with_burst(5).interval(),
            Duration::from_secs(60) / 9
        );
        assert_eq!(
            Rate::per_minute(60).interval(),
            Duration::from_secs(60) / 59
        );
        assert_eq!(
            Rate::per_minute(60).with_burst(3).interval(),
            Duration::from_secs(60) / 57
        );
    }

    #[tokio::test]
    async fn limits_per_key_and_gives_up_after_max_wait() {
        let l = Limiter::new();
        let rate = Rate {
            count: 3,
            per: Duration::from_millis(300),
            burst: 1,
        };
        l.acquire("a", rate, Duration::ZERO).await.unwrap();
        // Permits are spaced (150 ms here): "a" waits, "b" does not.
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

#[cfg(test)]
mod shared_tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_share_one_quota_through_postgres() {
        let db = collect_testkit::fresh_db().await.unwrap();
        let pool = || {
            collect_store::connect_pool(&db.url, &collect_store::PoolSettings::default()).unwrap()
        };
        // Two limiters on two pools: two processes of one database.
        let (a, b) = (Limiter::shared(pool()), Limiter::shared(pool()));
        let rate = Rate {
            count: 4,
            per: Duration::from_millis(900),
            burst: 1,
        };
        a.acquire("google:user", rate, Duration::ZERO)
            .await
            .unwrap();
        // Spent for both, whoever asks; another key is untouched.
        assert!(
            b.acquire("google:user", rate, Duration::ZERO)
                .await
                .is_err()
        );
        assert!(
            a.acquire("google:user", rate, Duration::ZERO)
                .await
                .is_err()
        );
        b.acquire("google:other", rate, Duration::ZERO)
            .await
            .unwrap();
        // The next permits come one interval (300 ms) apart: no 900 ms holds more than 4.
        let t = std::time::Instant::now();
        for _ in 0..4 {
            b.acquire("google:user", rate, Duration::from_secs(2))
                .await
                .unwrap();
        }
        assert!(
            t.elapsed() >= Duration::from_millis(850),
            "{:?}",
            t.elapsed()
        );
    }
}

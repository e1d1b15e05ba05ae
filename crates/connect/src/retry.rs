//! The one retry helper: a policy (attempts, initial and maximum delay), a classifier (the
//! error says whether it is retryable and may carry a Retry-After), and full jitter.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Ceiling of the first backoff.
    pub initial: Duration,
    /// Ceiling of any backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// What the classifier says about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Give up at once.
    Permanent,
    /// Retry, after at least this long if the third party said so.
    Retry(Option<Duration>),
}

impl RetryPolicy {
    /// The backoff before attempt `attempt + 1` (attempt counts from 0): full jitter,
    /// uniformly random between zero and `min(max, initial * 2^attempt)`, raised to the
    /// Retry-After if one was given.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        let jittered =
            Duration::from_micros(rand::rng().random_range(0..=ceiling.as_micros() as u64));
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max * 4)),
            None => jittered,
        }
    }

    /// Runs `op` until it succeeds, the classifier says permanent, or attempts run out;
    /// `on_retry` is told each retry (for metrics and logs). Returns the last error.
    pub async fn run<T, E, F, Fut>(
        &self,
        mut op: F,
        classify: impl Fn(&E) -> Verdict,
        mut on_retry: impl FnMut(u32, &E, Duration),
    ) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let Verdict::Retry(after) = classify(&e) else {
                        return Err(e);
                    };
                    if attempt + 1 >= self.max_attempts {
                        return Err(e);
                    }
                    let wait = self.backoff(attempt, after);
                    on_retry(attempt, &e, wait);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// Reads an HTTP `Retry-After` value: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let secs = (when.timestamp() - chrono::Utc::now().timestamp()).max(0);
    Some(Duration::from_secs(secs as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..30 {
            let b = p.backoff(attempt, None);
            let ceiling =
                Duration::from_millis(100 * 2u64.pow(attempt.min(20))).min(Duration::from_secs(1));
            assert!(b <= ceiling, "attempt {attempt}: {b:?} > {ceiling:?}");
        }
        assert!(p.backoff(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert!(
            p.backoff(0, Some(Duration::from_secs(3600))) <= Duration::from_secs(4),
            "Retry-After is bounded"
        );
    }

    #[tokio::test]
    async fn retries_retryable_errors_and_stops_on_permanent_ones() {
        let p = RetryPolicy {
            max_attempts: 4,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let calls = AtomicU32::new(0);
        let r: Result<u32, &str> = p
            .run(
                |a| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move { if a < 2 { Err("busy") } else { Ok(a) } }
                },
                |_| Verdict::Retry(None),
                |_, _, _| {},
            )
            .await;
        assert_eq!(r, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = p
            .run(
                |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err("bad request") }
                },
                |_| Verdict::Permanent,
                |_, _, _| {},
            )
            .await;
        assert_eq!((r, calls.load(Ordering::SeqCst)), (Err("bad request"), 1));

        let mut retries = 0;
        let r: Result<(), &str> = p
            .run(
                |_| async { Err("down") },
                |_| Verdict::Retry(None),
                |_, _, _| retries += 1,
            )
            .await;
        assert_eq!(
            (r, retries),
            (Err("down"), 3),
            "gives up after max_attempts"
        );
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}

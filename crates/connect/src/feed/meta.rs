//! What the feed asks the broker besides records: partition counts and watermarks, through
//! single-flight caches, so that many workers starting at once (after a broker outage, a
//! hand-over) send one request, not one each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use super::{Feed, Inner, Tp, blocking};

/// Watermarks as last asked, and the last failed attempt.
#[derive(Default)]
pub(super) struct Marks {
    known: HashMap<Tp, ((i64, i64), Instant)>,
    /// When the last attempt that failed was made, and why: callers that were already
    /// waiting get that answer instead of asking again, one after another.
    failed: Option<(Instant, String)>,
}

/// How long a partition count is kept.
const COUNTS_MAX_AGE: Duration = Duration::from_secs(60);

impl Inner {
    /// `(low, high)` watermarks of each partition: the oldest offset the topic holds and
    /// the offset after the last record, asked at most `max_age` before the request (zero:
    /// always asked). One caller asks at a time and the answers are kept, so workers
    /// starting together share the requests; when an attempt fails, the callers that were
    /// waiting for it get its error rather than each asking in turn.
    pub(super) async fn watermarks(
        &self,
        tps: &[Tp],
        max_age: Duration,
    ) -> Result<Vec<(i64, i64)>, String> {
        let waiting_since = Instant::now();
        let mut marks = self.marks.lock().await;
        if let Some((at, e)) = &marks.failed
            && !max_age.is_zero()
            && *at >= waiting_since
        {
            return Err(e.clone());
        }
        let stale: Vec<Tp> = tps
            .iter()
            .filter(|tp| {
                marks
                    .known
                    .get(*tp)
                    .is_none_or(|(_, at)| max_age.is_zero() || at.elapsed() > max_age)
            })
            .cloned()
            .collect();
        if !stale.is_empty() {
            let (c, asked) = (self.meta.clone(), stale.clone());
            let asked_at = Instant::now();
            let found = blocking(move || {
                asked
                    .iter()
                    .map(|(t, p)| {
                        c.fetch_watermarks(t, *p, Duration::from_secs(10))
                            .map_err(|e| format!("watermarks of {t}/{p}: {e}"))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .await?;
            let found = match found {
                Ok(f) => f,
                Err(e) => {
                    marks.failed = Some((Instant::now(), e.clone()));
                    return Err(e);
                }
            };
            for (tp, m) in stale.into_iter().zip(found) {
                marks.known.insert(tp, (m, asked_at));
            }
        }
        Ok(tps
            .iter()
            .map(|tp| marks.known.get(tp).map_or((0, 0), |(m, _)| *m))
            .collect())
    }
}

impl Feed {
    /// The number of partitions of each of `topics` (blocking metadata requests, off the
    /// runtime's threads). Asked at most once a minute per topic, by one caller at a time;
    /// when asking fails, the count known before (partitions are never removed) is used.
    pub async fn partition_counts(&self, topics: &[String]) -> Result<Vec<i32>, String> {
        let mut counts = self.inner.counts.lock().await;
        let fresh = |t: &String| {
            counts
                .get(t)
                .filter(|(_, at)| at.elapsed() < COUNTS_MAX_AGE)
                .map(|(n, _)| *n)
        };
        if let Some(c) = topics.iter().map(fresh).collect::<Option<Vec<i32>>>() {
            return Ok(c);
        }
        let (c, t) = (self.inner.meta.clone(), topics.to_vec());
        let asked_at = Instant::now();
        let asked: Vec<Result<i32, String>> = blocking(move || {
            t.iter()
                .map(|topic| crate::offsets::partition_count(&*c, topic))
                .collect()
        })
        .await?;
        let mut out = Vec::with_capacity(topics.len());
        for (t, r) in topics.iter().zip(asked) {
            let known = counts.get(t).map(|(n, _)| *n);
            match (r, known) {
                (Ok(n), _) => {
                    counts.insert(t.clone(), (n, asked_at));
                    out.push(n);
                }
                (Err(e), Some(n)) => {
                    tracing::warn!(
                        topic = t,
                        error = e,
                        partitions = n,
                        "cannot ask the partition count; using the one known"
                    );
                    // Kept as if asked now: the next callers do not ask again for a minute.
                    counts.insert(t.clone(), (n, asked_at));
                    out.push(n);
                }
                (Err(e), None) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `(low, high)` watermarks of each partition: the oldest offset the topic holds and
    /// the offset after the last record, asked at most `max_age` before (zero: always
    /// asked); see [`Inner::watermarks`].
    pub async fn watermarks(
        &self,
        tps: &[Tp],
        max_age: Duration,
    ) -> Result<Vec<(i64, i64)>, String> {
        self.inner.watermarks(tps, max_age).await
    }
}

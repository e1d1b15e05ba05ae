//! The catch-up consumers: each serves the integrations behind the live consumer, one chunk
//! of one integration's partition at a time, in turn, until each reaches the head and joins
//! the live consumer (under the state lock, at the head: no gap, no repeat).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{Inner, Raw, State, Sub, Tp, form_of, permits};

/// Bytes a catch-up consumer reads for one integration before it serves the next.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Longest a catch-up consumer waits for a record of the chunk it reads.
const CHUNK_WAIT: Duration = Duration::from_secs(2);

/// What a catch-up consumer did with one integration's partition.
enum Chunk {
    /// Reached the head: the integration is live again.
    Joined,
    /// Read a chunk (or ran out of room or time): the integration waits its next turn.
    Again,
    /// The integration is gone.
    Gone,
}

/// A catch-up consumer: serves integrations behind the head, one chunk each in turn.
pub(super) async fn catch_up(inner: Arc<Inner>, consumer: StreamConsumer) {
    let mut stop = inner.stop.clone();
    let mut idle_turns = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        let job = {
            let mut s = inner.state();
            let mut job = None;
            while let Some((id, tp)) = s.behind.pop_front() {
                let ok = s
                    .subs
                    .get(&id)
                    .and_then(|sub| sub.parts.get(&tp))
                    .is_some_and(|sp| sp.queued && !sp.live);
                if ok {
                    job = Some((id, tp, s.behind.len()));
                    break;
                }
            }
            job
        };
        let Some((id, tp, waiting)) = job else {
            tokio::select! {
                _ = stop.changed() => return,
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let full = inner.state().subs.get(&id).is_some_and(Sub::full);
        if full {
            // Its worker still holds its share: serve the others first.
            requeue(&inner, id, &tp);
            idle_turns += 1;
            if idle_turns > waiting {
                idle_turns = 0;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        }
        idle_turns = 0;
        match read_chunk(&inner, &consumer, id, &tp).await {
            Chunk::Joined | Chunk::Gone => {}
            Chunk::Again => requeue(&inner, id, &tp),
        }
    }
}

fn requeue(inner: &Inner, id: u64, tp: &Tp) {
    let mut s = inner.state();
    let still = s
        .subs
        .get(&id)
        .and_then(|sub| sub.parts.get(tp))
        .is_some_and(|sp| sp.queued && !sp.live);
    if still {
        s.behind.push_back((id, tp.clone()));
    }
}

/// Joins the live consumer when `next` reached the head. Under the state lock.
fn join_if_at_head(s: &mut State, id: u64, tp: &Tp) -> bool {
    let head = s.parts.get(tp).map(|p| p.head);
    let Some(sp) = s.subs.get_mut(&id).and_then(|sub| sub.parts.get_mut(tp)) else {
        return false;
    };
    match head {
        Some(head) if sp.next >= head => {
            sp.live = true;
            sp.queued = false;
            true
        }
        _ => false,
    }
}

async fn read_chunk(inner: &Arc<Inner>, consumer: &StreamConsumer, id: u64, tp: &Tp) -> Chunk {
    let (form, start) = {
        let mut s = inner.state();
        if join_if_at_head(&mut s, id, tp) {
            return Chunk::Joined;
        }
        match s
            .subs
            .get(&id)
            .and_then(|sub| Some((sub.form.clone(), sub.parts.get(tp)?.next)))
        {
            Some(x) => x,
            None => return Chunk::Gone,
        }
    };
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(&tp.0, tp.1, Offset::Offset(start))
        .and_then(|_| consumer.assign(&tpl))
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return Chunk::Again;
    }
    let mut stop = inner.stop.clone();
    let mut read = 0usize;
    let deadline = Instant::now() + CHUNK_WAIT;
    let mut expect = start;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::select! {
            _ = stop.changed() => return Chunk::Gone,
            r = tokio::time::timeout(wait, consumer.recv()) => r,
        };
        let msg = match msg {
            // Out of time or at the end: join if nothing is left between here and the head.
            Err(_) | Ok(Err(KafkaError::PartitionEOF(_))) => {
                let mut s = inner.state();
                return if join_if_at_head(&mut s, id, tp) {
                    Chunk::Joined
                } else if s.subs.contains_key(&id) {
                    Chunk::Again
                } else {
                    Chunk::Gone
                };
            }
            Ok(Err(e)) => {
                tracing::warn!(topic = tp.0, partition = tp.1, error = %e, "catch-up consumer");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Chunk::Again;
            }
            Ok(Ok(m)) => m,
        };
        // A record of an earlier assignment still in the queue.
        if msg.topic() != tp.0 || msg.partition() != tp.1 || msg.offset() < expect {
            continue;
        }
        let offset = msg.offset();
        expect = offset + 1;
        {
            let mut s = inner.state();
            // Past a gap (compaction, control records), the position follows.
            if let Some(sp) = s.subs.get_mut(&id).and_then(|sub| sub.parts.get_mut(tp)) {
                sp.next = sp.next.max(offset);
            }
            if join_if_at_head(&mut s, id, tp) {
                return Chunk::Joined;
            }
            if !s.subs.contains_key(&id) {
                return Chunk::Gone;
            }
        }
        let raw = Raw::of(&msg);
        drop(msg);
        let Some(event) = inner.decode(&tp.0, &raw.value).await else {
            return Chunk::Gone;
        };
        if let Ok(e) = &event
            && form_of(e) != form
        {
            let mut s = inner.state();
            if let Some(sp) = s.subs.get_mut(&id).and_then(|sub| sub.parts.get_mut(tp)) {
                sp.next = offset + 1;
            }
            continue;
        }
        let c = raw.cost();
        let permit = tokio::select! {
            _ = stop.changed() => return Chunk::Gone,
            p = inner.budget.clone().acquire_many_owned(permits(c, inner.budget_bytes)) => match p {
                Ok(p) => p,
                Err(_) => return Chunk::Gone,
            },
        };
        let mut s = inner.state();
        if join_if_at_head(&mut s, id, tp) {
            // The live consumer got there first: it hands this record out.
            return Chunk::Joined;
        }
        let Some(sub) = s.subs.get_mut(&id) else {
            return Chunk::Gone;
        };
        let held = sub.counts.held.load(Ordering::Acquire);
        if held > 0 && held + c > sub.cap {
            // Its share is full: this record is read again on its next turn.
            return Chunk::Again;
        }
        sub.send(permit, |held| raw.fed(tp, event, held), c);
        if let Some(sp) = sub.parts.get_mut(tp) {
            sp.next = offset + 1;
        }
        read += c;
        if read >= CHUNK_BYTES {
            return Chunk::Again;
        }
    }
}

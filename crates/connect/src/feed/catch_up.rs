//! The catch-up consumers. Each takes, in turn, a partition with integrations behind the
//! live consumer and reads one chunk of it from the lowest position among them, handing
//! each record to every one of them whose position it is (so a hundred integrations behind
//! on one partition cost one reading, not a hundred). An integration joins the live
//! consumer when its position reaches the head, under the state lock: no gap, no repeat.
//! One consumer serves a partition at a time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{FeedContext, Inner, Raw, State, Tp};

/// Budget bytes a catch-up consumer hands out from one partition before it serves the next.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Longest a catch-up consumer waits for the next record of a chunk.
const CHUNK_WAIT: Duration = Duration::from_secs(2);

/// What a turn on a partition did.
#[derive(PartialEq, Eq)]
enum Turn {
    /// Handed out records or let integrations join.
    Progress,
    /// Every integration behind had no room (their workers hold their share): nothing read.
    NoRoom,
    /// The process's budget is spent: nothing read until workers give some back.
    NoBudget,
}

/// Budget bytes under which a catch-up consumer does not read (a record's least cost).
const MIN_ROOM: usize = 64 * 1024;

/// A catch-up consumer: serves the queued partitions one chunk each, in turn.
pub(super) async fn catch_up(inner: Arc<Inner>, consumer: StreamConsumer<FeedContext>) {
    let mut stop = inner.stop.clone();
    let mut idle_turns = 0usize;
    loop {
        if *stop.borrow() {
            return;
        }
        let job = {
            let mut s = inner.state();
            let mut job = None;
            while let Some(tp) = s.behind.pop_front() {
                let waiting = s.behind.len();
                let Some(p) = s.parts.get_mut(&tp) else {
                    continue;
                };
                p.queued = false;
                // Another consumer has it; it queues it again when done if still needed.
                if !p.serving {
                    p.serving = true;
                    job = Some((tp, waiting));
                    break;
                }
            }
            job
        };
        let Some((tp, waiting)) = job else {
            tokio::select! {
                _ = stop.changed() => return,
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let turn = serve(&inner, &consumer, &tp).await;
        let again = {
            let mut s = inner.state();
            if let Some(p) = s.parts.get_mut(&tp) {
                p.serving = false;
            }
            let behind = behind_on(&s, &tp);
            behind && s.mark_behind(&tp)
        };
        if again {
            inner.wake.notify_one();
        }
        if turn == Turn::NoBudget {
            tokio::time::sleep(Duration::from_millis(50)).await;
            idle_turns = 0;
        } else if turn == Turn::NoRoom {
            // When a whole round found no room, wait for workers to give some back.
            idle_turns += 1;
            if idle_turns > waiting {
                idle_turns = 0;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            idle_turns = 0;
        }
    }
}

/// Whether an integration on `tp` is behind the live consumer.
fn behind_on(s: &State, tp: &Tp) -> bool {
    s.parts.get(tp).is_some_and(|p| {
        p.subs.iter().any(|id| {
            s.subs
                .get(id)
                .and_then(|sub| sub.parts.get(tp))
                .is_some_and(|sp| !sp.live)
        })
    })
}

/// Lets the integrations of `members` whose position reached the head join the live
/// consumer; returns them. Under the state lock.
fn join_at_head(s: &mut State, tp: &Tp, members: &HashSet<u64>) -> Vec<u64> {
    let Some(head) = s.parts.get(tp).map(|p| p.head) else {
        return Vec::new();
    };
    let mut joined = Vec::new();
    for id in members {
        if let Some(sp) = s.subs.get_mut(id).and_then(|sub| sub.parts.get_mut(tp))
            && sp.next >= head
        {
            sp.live = true;
            joined.push(*id);
        }
    }
    joined
}

/// Moves the positions of `members` on `tp` up to `to` (each handled everything before it).
/// Under the state lock.
fn advance(s: &mut State, tp: &Tp, members: &HashSet<u64>, to: i64) {
    for id in members {
        if let Some(sp) = s.subs.get_mut(id).and_then(|sub| sub.parts.get_mut(tp)) {
            sp.next = sp.next.max(to);
        }
    }
}

/// One chunk of `tp` for the integrations behind on it.
async fn serve(inner: &Arc<Inner>, consumer: &StreamConsumer<FeedContext>, tp: &Tp) -> Turn {
    // Who takes part: integrations behind with room; those at the head join at once.
    let (mut members, start, joined) = {
        let mut s = inner.state();
        let all: HashSet<u64> = s
            .parts
            .get(tp)
            .map(|p| p.subs.iter().copied().collect())
            .unwrap_or_default();
        let behind: HashSet<u64> = all
            .into_iter()
            .filter(|id| {
                s.subs
                    .get(id)
                    .and_then(|sub| sub.parts.get(tp))
                    .is_some_and(|sp| !sp.live)
            })
            .collect();
        let joined = join_at_head(&mut s, tp, &behind);
        let members: HashSet<u64> = behind
            .into_iter()
            .filter(|id| !joined.contains(id))
            .filter(|id| s.subs.get(id).is_some_and(|sub| !sub.full()))
            .collect();
        let start = members
            .iter()
            .filter_map(|id| s.subs.get(id)?.parts.get(tp).map(|sp| sp.next))
            .min();
        (members, start, !joined.is_empty())
    };
    let Some(start) = start else {
        return if joined { Turn::Progress } else { Turn::NoRoom };
    };
    if inner.budget.available_permits() < MIN_ROOM.min(inner.budget_bytes) {
        return if joined {
            Turn::Progress
        } else {
            Turn::NoBudget
        };
    }
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(&tp.0, tp.1, Offset::Offset(start))
        .and_then(|_| consumer.assign(&tpl))
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return Turn::Progress;
    }
    let mut stop = inner.stop.clone();
    let mut handed = 0usize;
    let mut deadline = Instant::now() + CHUNK_WAIT;
    // Records before `expect` are of an earlier assignment (librdkafka discards those
    // fetched before a new assign; this is a second guard).
    let mut expect = start;
    let mut progress = joined;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::select! {
            _ = stop.changed() => return Turn::Progress,
            r = tokio::time::timeout(wait, consumer.recv()) => r,
        };
        let msg = match msg {
            Ok(Ok(m)) => m,
            Ok(Err(KafkaError::PartitionEOF(_))) => {
                // At the end: nothing lies between the members' positions and the end any
                // more (retention may have removed records never read).
                let end = consumer
                    .position()
                    .ok()
                    .and_then(|tpl| tpl.find_partition(&tp.0, tp.1)?.offset().to_raw());
                let mut s = inner.state();
                tracing::debug!(topic = tp.0, partition = tp.1, start, read_to = expect, end = ?end, members = members.len(), "catch-up reached the end");
                if let Some(end) = end.filter(|e| *e >= 0) {
                    advance(&mut s, tp, &members, end);
                }
                join_at_head(&mut s, tp, &members);
                return Turn::Progress;
            }
            Err(_) => {
                let mut s = inner.state();
                progress |= !join_at_head(&mut s, tp, &members).is_empty();
                return if progress {
                    Turn::Progress
                } else {
                    Turn::NoRoom
                };
            }
            Ok(Err(e)) => {
                tracing::warn!(topic = tp.0, partition = tp.1, error = %e, "catch-up consumer");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Turn::Progress;
            }
        };
        if msg.topic() != tp.0 || msg.partition() != tp.1 || msg.offset() < expect {
            continue;
        }
        deadline = Instant::now() + CHUNK_WAIT;
        let raw = Raw::of(&msg);
        drop(msg);
        let offset = raw.offset;
        expect = offset + 1;
        {
            // Reached the live consumer: every member that handled everything before this
            // record joins it, and the live consumer hands this record out.
            let mut s = inner.state();
            members.retain(|id| s.subs.contains_key(id));
            if s.parts.get(tp).is_some_and(|p| offset >= p.head) {
                tracing::debug!(
                    topic = tp.0,
                    partition = tp.1,
                    start,
                    offset,
                    members = members.len(),
                    "catch-up reached the live consumer"
                );
                advance(&mut s, tp, &members, offset);
                join_at_head(&mut s, tp, &members);
                return Turn::Progress;
            }
            if members.is_empty() {
                return Turn::Progress;
            }
        }
        let Some(event) = inner.decode(&tp.0, &raw.value).await else {
            return Turn::Progress;
        };
        let c = raw.cost();
        let mut s = inner.state();
        let mut stalled = Vec::new();
        for id in &members {
            let Some(sub) = s.subs.get_mut(id) else {
                stalled.push(*id);
                continue;
            };
            let Some(sp) = sub.parts.get(tp) else {
                continue;
            };
            if sp.next > offset {
                continue;
            }
            let mine = match &event {
                Ok(e) => e.form_id() == sub.form,
                Err(_) => true,
            };
            let sent = !mine
                || sub.try_send(
                    &inner.budget,
                    inner.budget_bytes,
                    |held| raw.fed(tp, event.clone(), held),
                    c,
                );
            let Some(sp) = sub.parts.get_mut(tp) else {
                continue;
            };
            if sent {
                // Past this record (handed out, or another form's).
                sp.next = offset + 1;
                progress |= mine;
            } else {
                // No room: it waits at this record for its next turn.
                sp.next = sp.next.max(offset);
                stalled.push(*id);
            }
        }
        drop(s);
        for id in stalled {
            members.remove(&id);
        }
        if members.is_empty() {
            return if progress {
                Turn::Progress
            } else {
                Turn::NoRoom
            };
        }
        handed += c;
        if handed >= CHUNK_BYTES {
            return Turn::Progress;
        }
    }
}

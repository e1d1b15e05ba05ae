//! LSN discipline: the confirmed flush LSN advances only to the end of the last transaction
//! whose records were all acknowledged by the broker, and of every transaction before it.

use std::collections::VecDeque;

use collect_pgoutput::Lsn;

/// A transaction between its Begin and the acknowledgement of its last record.
#[derive(Debug)]
struct Pending {
    seq: u64,
    /// End of the commit record, once the Commit message arrived.
    end_lsn: Option<Lsn>,
    /// Commit time (µs since the Unix epoch), for the commit-to-ack latency.
    commit_ts: i64,
    /// Records sent and not yet acknowledged.
    outstanding: u64,
    /// A record of this transaction failed for good.
    failed: bool,
}

/// A transaction that just became durable downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// Its end LSN, now the confirmed position.
    pub end_lsn: Lsn,
    /// Its commit time.
    pub commit_ts: i64,
}

/// Tracks transactions in order and the position that is safe to confirm.
#[derive(Debug)]
pub struct Tracker {
    next_seq: u64,
    pending: VecDeque<Pending>,
    confirmed: Lsn,
}

impl Tracker {
    /// A tracker whose confirmed position starts at `start` (the slot's).
    pub fn new(start: Lsn) -> Self {
        Self {
            next_seq: 0,
            pending: VecDeque::new(),
            confirmed: start,
        }
    }

    /// The position that is safe to report as flushed.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Transactions not yet confirmed.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// A transaction begins; returns its sequence number.
    pub fn begin(&mut self, commit_ts: i64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Pending {
            seq,
            end_lsn: None,
            commit_ts,
            outstanding: 0,
            failed: false,
        });
        seq
    }

    fn get(&mut self, seq: u64) -> Option<&mut Pending> {
        let front = self.pending.front()?.seq;
        let i = usize::try_from(seq.checked_sub(front)?).ok()?;
        self.pending.get_mut(i)
    }

    /// A record of transaction `seq` was handed to the producer.
    pub fn sent(&mut self, seq: u64) {
        if let Some(p) = self.get(seq) {
            p.outstanding += 1;
        }
    }

    /// The broker acknowledged a record of `seq` (or it failed for good: `ok = false`).
    /// Returns the transactions that became confirmed.
    pub fn acked(&mut self, seq: u64, ok: bool) -> Vec<Confirmed> {
        if let Some(p) = self.get(seq) {
            p.outstanding = p.outstanding.saturating_sub(1);
            p.failed |= !ok;
        }
        self.advance()
    }

    /// Transaction `seq` committed at `end_lsn`. Returns the transactions that became
    /// confirmed (it may itself, if all its records were already acknowledged).
    pub fn commit(&mut self, seq: u64, end_lsn: Lsn) -> Vec<Confirmed> {
        if let Some(p) = self.get(seq) {
            p.end_lsn = Some(end_lsn);
        }
        self.advance()
    }

    /// Whether a record failed for good: the session must stop without confirming past it.
    pub fn failed(&self) -> bool {
        self.pending.iter().any(|p| p.failed)
    }

    fn advance(&mut self) -> Vec<Confirmed> {
        let mut done = Vec::new();
        while let Some(front) = self.pending.front() {
            match front.end_lsn {
                Some(end) if front.outstanding == 0 && !front.failed => {
                    if end > self.confirmed {
                        self.confirmed = end;
                    }
                    done.push(Confirmed {
                        end_lsn: end,
                        commit_ts: front.commit_ts,
                    });
                    self.pending.pop_front();
                }
                _ => break,
            }
        }
        done
    }

    /// With nothing in flight, the server's position (a keepalive's WAL end, a heartbeat's
    /// LSN) can be confirmed: every transaction that committed before it has been received
    /// and acknowledged, and any still running will commit after it and be sent then.
    pub fn idle_at(&mut self, lsn: Lsn) {
        if self.pending.is_empty() && lsn > self.confirmed {
            self.confirmed = lsn;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_fully_acknowledged_prefixes() {
        let mut t = Tracker::new(Lsn(100));
        let a = t.begin(1);
        t.sent(a);
        t.sent(a);
        let b = t.begin(2);
        t.sent(b);
        assert!(t.commit(a, Lsn(200)).is_empty());
        assert!(t.commit(b, Lsn(300)).is_empty());
        // b is acknowledged first: nothing moves while a is out.
        assert!(t.acked(b, true).is_empty());
        assert_eq!(t.confirmed(), Lsn(100));
        assert!(t.acked(a, true).is_empty());
        let done = t.acked(a, true);
        assert_eq!(
            done,
            vec![
                Confirmed {
                    end_lsn: Lsn(200),
                    commit_ts: 1
                },
                Confirmed {
                    end_lsn: Lsn(300),
                    commit_ts: 2
                }
            ]
        );
        assert_eq!(t.confirmed(), Lsn(300));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn empty_transactions_confirm_at_commit_and_idle_positions_only_when_idle() {
        let mut t = Tracker::new(Lsn(10));
        let a = t.begin(0);
        t.idle_at(Lsn(50));
        assert_eq!(t.confirmed(), Lsn(10), "not idle: a transaction is open");
        assert_eq!(t.commit(a, Lsn(20)).len(), 1);
        assert_eq!(t.confirmed(), Lsn(20));
        t.idle_at(Lsn(50));
        assert_eq!(t.confirmed(), Lsn(50));
        t.idle_at(Lsn(40));
        assert_eq!(t.confirmed(), Lsn(50), "never backwards");
    }

    #[test]
    fn a_failed_record_blocks_confirmation() {
        let mut t = Tracker::new(Lsn(1));
        let a = t.begin(0);
        t.sent(a);
        t.commit(a, Lsn(5));
        assert!(t.acked(a, false).is_empty());
        assert!(t.failed());
        assert_eq!(t.confirmed(), Lsn(1));
        // Unknown sequence numbers (from an earlier session) are ignored.
        assert!(t.acked(999, true).is_empty());
    }
}

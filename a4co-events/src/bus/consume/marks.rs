//! Finished work the inbox has not written yet ([`crate::bus::InboxCheck::Redeliveries`]).
//!
//! The inbox is read only for redeliveries, and the broker redelivers a finished message
//! only if its acknowledgement was lost. So instead of one bucket write per message, a
//! consumer keeps its finished messages in a [`Book`] and asks the broker, every
//! [`Timing::tick`], where its acknowledgements stand ([`AckState`]):
//!
//! - a message at or below the ack floor is settled: it is kept [`Timing::grace`] longer
//!   (the broker persists its consumer state a little after reporting it), then forgotten,
//!   never written;
//! - a message still above the floor after [`Timing::risk`] (half the ack wait, so well
//!   before the broker would redeliver it) is written to the bucket, as it would have been
//!   at once before;
//! - when the connection was lost since the last look (the epoch changed), everything in
//!   the book is written: acks in flight may be lost, and a restarted broker may have
//!   forgotten some it had reported;
//! - at shutdown, what is not settled is written and flushed before the subscription
//!   stops, since another instance would get its redelivery.
//!
//! Redeliveries to this instance are answered from the book first. What the book cannot
//! protect is what the immediate write did not protect either: the process dying between
//! the handler's end and its acknowledgement leaving (see [`crate::bus::Handler`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::bus::transport::AckState;
use crate::id::EventId;

/// Finished work, as the inbox names it: an event, or a deliberate replay of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) event_id: EventId,
    /// The replay header's value, for a dead letter replayed on purpose.
    pub(super) replay: Option<Box<str>>,
}

impl Mark {
    /// Its inbox key under the consumer `durable`.
    pub(super) fn key(&self, durable: &str) -> String {
        match &self.replay {
            Some(replay) => format!("{durable}.{}.replay{replay}", self.event_id),
            None => format!("{durable}.{}", self.event_id),
        }
    }
}

/// A book holds at most this many unsettled messages; beyond it the oldest are written.
const MAX_OPEN: usize = 65_536;

/// How many are written at once when a book is full: in batches, so a stuck ack floor
/// costs one background write per batch, not one per message.
const OVERFLOW_BATCH: usize = MAX_OPEN / 16;

/// How often a book is checked and how long it keeps what.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    /// How often the broker is asked for the ack floor.
    pub(super) tick: Duration,
    /// How long a message may stay above the ack floor before it is written.
    pub(super) risk: Duration,
    /// How long a settled message is kept before it is forgotten.
    pub(super) grace: Duration,
}

impl Timing {
    /// The timing for a consumer with this ack wait.
    pub(super) fn for_ack_wait(ack_wait: Duration) -> Self {
        let risk = (ack_wait / 2).max(Duration::from_millis(50));
        Timing {
            tick: (ack_wait / 8).clamp(Duration::from_millis(20), Duration::from_secs(1)),
            risk,
            grace: Duration::from_secs(2),
        }
    }
}

/// The finished messages of one consumer that are not in the inbox's bucket.
#[derive(Debug, Default)]
pub(super) struct Book {
    /// Above the ack floor at the last look: stream sequence -> (work, finished at).
    open: BTreeMap<u64, (Mark, Instant)>,
    /// Settled, in batches by when the ack floor passed them.
    settled: VecDeque<(Instant, BTreeMap<u64, Mark>)>,
    /// The connection epoch of the last look.
    epoch: u64,
}

impl Book {
    /// A book that has seen the broker at `epoch`.
    pub(super) fn new(epoch: u64) -> Self {
        Book {
            epoch,
            ..Book::default()
        }
    }

    /// Whether nothing is kept.
    pub(super) fn is_empty(&self) -> bool {
        self.open.is_empty() && self.settled.is_empty()
    }

    /// Records finished work; returns what to write now (only when the book is full: its
    /// [`OVERFLOW_BATCH`] lowest sequences).
    pub(super) fn finished(&mut self, sequence: u64, mark: Mark, now: Instant) -> Vec<Mark> {
        self.open.insert(sequence, (mark, now));
        if self.open.len() <= MAX_OPEN {
            return Vec::new();
        }
        let keep = self.open.split_off(&self.lowest_kept());
        std::mem::replace(&mut self.open, keep)
            .into_values()
            .map(|(mark, _)| mark)
            .collect()
    }

    /// The lowest sequence a full book keeps.
    fn lowest_kept(&self) -> u64 {
        self.open
            .keys()
            .nth(OVERFLOW_BATCH)
            .copied()
            .unwrap_or(u64::MAX)
    }

    /// Whether the message at `sequence` finished as `mark`.
    pub(super) fn knows(&self, sequence: u64, mark: &Mark) -> bool {
        let matches = |m: Option<&Mark>| m == Some(mark);
        matches(self.open.get(&sequence).map(|(m, _)| m))
            || self
                .settled
                .iter()
                .any(|(_, batch)| matches(batch.get(&sequence)))
    }

    /// Takes in the broker's answer; returns what to write now.
    pub(super) fn update(&mut self, state: AckState, now: Instant, timing: Timing) -> Vec<Mark> {
        if self.epoch != state.epoch {
            self.epoch = state.epoch;
            return self.take_all();
        }
        let above = self.open.split_off(&state.floor.saturating_add(1));
        let below = std::mem::replace(&mut self.open, above);
        if !below.is_empty() {
            self.settled
                .push_back((now, below.into_iter().map(|(s, (k, _))| (s, k)).collect()));
        }
        while self
            .settled
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= timing.grace)
        {
            self.settled.pop_front();
        }
        let (due, kept) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|(_, (_, at))| now.saturating_duration_since(*at) >= timing.risk);
        self.open = kept;
        due.into_values().map(|(mark, _)| mark).collect()
    }

    /// Everything kept, settled or not, emptying the book: after a lost connection, or
    /// when its consumer is gone (the one made anew may hand any of it out again, to any
    /// instance).
    pub(super) fn take_all(&mut self) -> Vec<Mark> {
        let settled = std::mem::take(&mut self.settled)
            .into_iter()
            .flat_map(|(_, batch)| batch.into_values());
        let open = std::mem::take(&mut self.open).into_values().map(|(k, _)| k);
        settled.chain(open).collect()
    }

    /// What is not settled, emptying the book: at shutdown, after a last look.
    pub(super) fn take_open(&mut self) -> Vec<Mark> {
        self.settled.clear();
        std::mem::take(&mut self.open)
            .into_values()
            .map(|(k, _)| k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        tick: Duration::from_millis(100),
        risk: Duration::from_secs(1),
        grace: Duration::from_secs(2),
    };

    fn state(floor: u64, epoch: u64) -> AckState {
        AckState {
            floor,
            epoch,
            pending: 0,
            waiting: 0,
            created_after: 0,
        }
    }

    /// The work of event `n`.
    fn m(n: u128) -> Mark {
        Mark {
            event_id: EventId::from_uuid(uuid::Uuid::from_u128(n)),
            replay: None,
        }
    }

    fn ids(marks: Vec<Mark>) -> Vec<u128> {
        let mut ids: Vec<u128> = marks
            .iter()
            .map(|m| m.event_id.as_uuid().as_u128())
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn settled_work_is_kept_for_the_grace_then_forgotten_unwritten() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        for n in 1..=3 {
            assert!(book.finished(n as u64, m(n), t0).is_empty());
        }
        assert!(book.update(state(2, 0), t0, T).is_empty());
        assert!(book.knows(1, &m(1)) && book.knows(2, &m(2)) && book.knows(3, &m(3)));
        assert!(
            !book.knows(2, &m(1)),
            "a sequence as other work is other work"
        );
        let replayed = Mark {
            replay: Some("1".into()),
            ..m(2)
        };
        assert!(!book.knows(2, &replayed), "a replay is other work");
        let later = t0 + Duration::from_millis(900);
        assert!(book.update(state(3, 0), later, T).is_empty());
        assert!(book.update(state(3, 0), t0 + T.grace, T).is_empty());
        assert!(
            !book.knows(1, &m(1)) && !book.knows(2, &m(2)),
            "forgotten after the grace"
        );
        assert!(book.knows(3, &m(3)), "settled later, kept longer");
        assert!(book.update(state(3, 0), later + T.grace, T).is_empty());
        assert!(book.is_empty());
    }

    #[test]
    fn work_above_the_floor_for_too_long_is_written() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        book.finished(5, m(5), t0);
        book.finished(7, m(7), t0 + Duration::from_millis(500));
        assert!(
            book.update(state(4, 0), t0 + Duration::from_millis(999), T)
                .is_empty()
        );
        assert_eq!(ids(book.update(state(4, 0), t0 + T.risk, T)), [5]);
        assert!(!book.knows(5, &m(5)) && book.knows(7, &m(7)));
    }

    #[test]
    fn a_lost_connection_writes_everything_kept() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        book.finished(1, m(1), t0);
        book.finished(2, m(2), t0);
        book.update(state(1, 0), t0, T);
        let due = book.update(state(1, 1), t0 + Duration::from_millis(10), T);
        assert_eq!(
            ids(due),
            [1, 2],
            "settled ones too: a restarted broker may forget"
        );
        assert!(book.is_empty());
        book.finished(3, m(3), t0);
        assert!(
            book.update(state(3, 1), t0, T).is_empty(),
            "same epoch again"
        );
    }

    #[test]
    fn shutdown_takes_what_is_not_settled() {
        let t0 = Instant::now();
        let mut book = Book::new(3);
        book.finished(1, m(1), t0);
        book.finished(2, m(2), t0);
        assert!(book.update(state(1, 3), t0, T).is_empty());
        assert_eq!(ids(book.take_open()), [2]);
        assert!(book.is_empty());
    }

    #[test]
    fn a_full_book_writes_its_lowest_sequences_in_a_batch() {
        let t0 = Instant::now();
        let mut book = Book::new(0);
        for n in 0..MAX_OPEN as u64 {
            assert!(book.finished(n + 10, m(n.into()), t0).is_empty());
        }
        // Sequence 1 (event 999 999) is now the lowest: it and the next lowest go.
        let written = ids(book.finished(1, m(999_999), t0));
        let expected: Vec<u128> = (0..OVERFLOW_BATCH as u128 - 1).chain([999_999]).collect();
        assert_eq!(written, expected);
        assert_eq!(book.open.len(), MAX_OPEN + 1 - OVERFLOW_BATCH);
        let last_written = 10 + OVERFLOW_BATCH as u64 - 2;
        assert!(
            !book.knows(1, &m(999_999))
                && !book.knows(last_written, &m(OVERFLOW_BATCH as u128 - 2))
        );
        assert!(book.knows(last_written + 1, &m(OVERFLOW_BATCH as u128 - 1)));
        // Room again: the next messages are kept, not written.
        assert!(book.finished(u64::MAX, m(7), t0).is_empty());
        assert!(book.knows(u64::MAX, &m(7)));
    }

    #[test]
    fn keys_name_the_consumer_the_event_and_a_replay() {
        let id = "00000000-0000-0000-0000-00000000002a";
        assert_eq!(m(42).key("svc_sub"), format!("svc_sub.{id}"));
        let replayed = Mark {
            replay: Some("3".into()),
            ..m(42)
        };
        assert_eq!(replayed.key("svc_sub"), format!("svc_sub.{id}.replay3"));
    }
}

//! The takeover barrier of a pinned consumer: when an instance becomes the one taking a
//! consumer's messages, the previous instance may still hold some unsettled. Their
//! redeliveries come first; the newer messages (at or above the first sequence this
//! instance got) are held until the broker says the previous instance's are settled.

use std::collections::VecDeque;

use crate::bus::transport::AckState;

/// The barrier, and the deliveries it holds.
#[derive(Debug)]
pub(super) struct Takeover<I> {
    /// The first sequence this instance got after taking over; `None` when no takeover
    /// waits.
    from: Option<u64>,
    /// Deliveries at or above `from`, in stream order.
    held: VecDeque<I>,
    /// The fewest deliveries this instance held unsettled since the broker was last asked.
    fewest_own: usize,
    /// Whether to ask the broker at once (a takeover just began).
    ask_now: bool,
}

impl<I> Default for Takeover<I> {
    fn default() -> Self {
        Takeover {
            from: None,
            held: VecDeque::new(),
            fewest_own: usize::MAX,
            ask_now: false,
        }
    }
}

impl<I> Takeover<I> {
    /// This instance just took over, and `sequence` is the first delivery it got.
    pub(super) fn begin(&mut self, sequence: u64) {
        self.from = Some(sequence);
        self.ask_now = true;
    }

    /// Whether a takeover waits for the previous instance.
    pub(super) fn is_waiting(&self) -> bool {
        self.from.is_some()
    }

    /// Whether the delivery at `sequence` must wait (it is newer than the takeover).
    pub(super) fn holds(&self, sequence: u64) -> bool {
        self.from.is_some_and(|from| sequence >= from)
    }

    /// Holds a delivery `holds` said must wait.
    pub(super) fn hold(&mut self, item: I) {
        self.held.push_back(item);
    }

    /// How many deliveries it holds.
    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// The held deliveries, to keep alive.
    pub(super) fn held_mut(&mut self) -> impl Iterator<Item = &mut I> {
        self.held.iter_mut()
    }

    /// Once after [`Takeover::begin`]: whether to ask the broker at once.
    pub(super) fn take_ask_now(&mut self) -> bool {
        std::mem::take(&mut self.ask_now)
    }

    /// The broker is being asked; this instance holds `own` deliveries unsettled now.
    pub(super) fn asking(&mut self, own: usize) {
        self.fewest_own = own;
    }

    /// This instance holds `own` deliveries unsettled now (between asking and the answer).
    pub(super) fn observe(&mut self, own: usize) {
        self.fewest_own = self.fewest_own.min(own);
    }

    /// Whether the broker's answer ends the wait: everything below the first sequence this
    /// instance got is settled, or nothing is unsettled but this instance's own (at their
    /// fewest while the broker was asked). `false` when no takeover waits.
    pub(super) fn settled_by(&self, state: AckState) -> bool {
        self.from
            .is_some_and(|from| state.floor + 1 >= from || state.pending <= self.fewest_own as u64)
    }

    /// Ends the takeover (settled, lost to another instance, or stopping): returns what it
    /// held, in stream order, for the caller to run or give back.
    pub(super) fn end(&mut self) -> VecDeque<I> {
        self.from = None;
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(floor: u64, pending: u64) -> AckState {
        AckState {
            floor,
            pending,
            waiting: 0,
            epoch: 1,
            created_after: 0,
        }
    }

    #[test]
    fn newer_deliveries_wait_until_the_floor_reaches_the_takeover() {
        let mut takeover = Takeover::default();
        assert!(!takeover.holds(5));
        takeover.begin(10);
        assert!(takeover.take_ask_now());
        assert!(!takeover.take_ask_now(), "asked once");
        assert!(takeover.is_waiting());
        // A redelivery of the previous instance's runs; newer ones wait.
        assert!(!takeover.holds(7));
        assert!(takeover.holds(10));
        takeover.hold(10);
        takeover.hold(11);
        takeover.asking(2);
        // The previous instance's 7 is unsettled (floor 6) beside this one's two.
        assert!(!takeover.settled_by(state(6, 3)));
        assert!(takeover.settled_by(state(9, 3)));
        assert_eq!(Vec::from(takeover.end()), [10, 11]);
        assert!(!takeover.is_waiting());
        assert!(!takeover.holds(12));
        assert!(!takeover.settled_by(state(100, 0)), "no takeover waits");
    }

    #[test]
    fn only_its_own_unsettled_ends_the_wait_at_their_fewest() {
        let mut takeover = Takeover::<u64>::default();
        takeover.begin(10);
        takeover.asking(4);
        takeover.observe(6);
        takeover.observe(1);
        takeover.observe(3);
        // The floor is still low (a gap the previous instance never settled is not
        // there), and 2 unsettled are more than this instance's fewest, 1.
        assert!(!takeover.settled_by(state(2, 2)));
        assert!(takeover.settled_by(state(2, 1)));
        // A new question starts from what it holds then.
        takeover.asking(5);
        assert!(takeover.settled_by(state(2, 5)));
    }

    #[test]
    fn ending_gives_back_what_it_held() {
        let mut takeover = Takeover::default();
        takeover.begin(3);
        takeover.hold("a");
        takeover.hold("b");
        assert_eq!(takeover.held(), 2);
        assert_eq!(takeover.held_mut().count(), 2);
        assert_eq!(takeover.end().len(), 2);
        assert_eq!(takeover.held(), 0);
    }
}

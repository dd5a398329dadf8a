//! Ordering lanes: a consumer runs at most one delivery per lane at a time and queues the
//! others of that lane behind it, so the messages of one key (an aggregate, a correlation)
//! are handled in the order they came.

use std::collections::VecDeque;

/// `n` lanes, each idle or running one item with others waiting behind it.
#[derive(Debug)]
pub(super) struct Lanes<I> {
    /// Per lane: whether an item is running on it.
    busy: Vec<bool>,
    /// Per lane: the items waiting behind the running one, oldest first.
    waiting: Vec<VecDeque<I>>,
    /// How many wait, over all lanes.
    queued: usize,
}

impl<I> Lanes<I> {
    /// `n` idle lanes (at least one).
    pub(super) fn new(n: usize) -> Self {
        let n = n.max(1);
        Lanes {
            busy: vec![false; n],
            waiting: (0..n).map(|_| VecDeque::new()).collect(),
            queued: 0,
        }
    }

    /// The lane for an item: the one its key hashes to, or for an item without a key (no
    /// order asked), the first idle lane (lane 0 when none is).
    pub(super) fn lane_for(&self, key: Option<&str>) -> usize {
        let n = self.busy.len();
        match key {
            _ if n == 1 => 0,
            Some(key) => usize::try_from(fnv1a(key) % n as u64).unwrap_or(0),
            None => self.busy.iter().position(|b| !b).unwrap_or(0),
        }
    }

    /// Takes `item` onto `lane`: returns it to start now when the lane was idle (the lane is
    /// busy from now on), or queues it behind the running one and returns `None`.
    pub(super) fn admit(&mut self, lane: usize, item: I) -> Option<I> {
        if self.busy[lane] {
            self.waiting[lane].push_back(item);
            self.queued += 1;
            None
        } else {
            self.busy[lane] = true;
            Some(item)
        }
    }

    /// The item running on `lane` is done: returns the next one to start there (the lane
    /// stays busy), or `None` when nothing waits (the lane is idle from now on).
    pub(super) fn finished(&mut self, lane: usize) -> Option<I> {
        let next = self.waiting[lane].pop_front();
        match next {
            Some(_) => self.queued -= 1,
            None => self.busy[lane] = false,
        }
        next
    }

    /// How many items wait behind running ones.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// The waiting items, to keep alive.
    pub(super) fn waiting_mut(&mut self) -> impl Iterator<Item = &mut I> {
        self.waiting.iter_mut().flatten()
    }
}

/// FNV-1a: stable across processes and runs, so one key keeps its lane on every instance.
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_runs_one_at_a_time_in_arrival_order() {
        let mut lanes = Lanes::new(4);
        let lane = lanes.lane_for(Some("ord-1"));
        assert_eq!(lanes.admit(lane, "first"), Some("first"));
        assert_eq!(lanes.admit(lane, "second"), None);
        assert_eq!(lanes.admit(lane, "third"), None);
        assert_eq!(lanes.queued(), 2);
        assert_eq!(lanes.finished(lane), Some("second"));
        assert_eq!(lanes.finished(lane), Some("third"));
        assert_eq!(lanes.queued(), 0);
        assert_eq!(lanes.finished(lane), None);
        // Idle again: the next one starts at once.
        assert_eq!(lanes.admit(lane, "fourth"), Some("fourth"));
    }

    #[test]
    fn a_key_keeps_its_lane_and_keys_spread() {
        let lanes = Lanes::<()>::new(8);
        let lane = lanes.lane_for(Some("ord-42"));
        assert_eq!(lanes.lane_for(Some("ord-42")), lane);
        let used: std::collections::BTreeSet<usize> = (0..64)
            .map(|i| lanes.lane_for(Some(&format!("ord-{i}"))))
            .collect();
        assert!(used.len() > 4, "64 keys on only {used:?} of 8 lanes");
        assert!(used.iter().all(|&l| l < 8));
    }

    #[test]
    fn without_a_key_an_item_takes_the_first_idle_lane() {
        let mut lanes = Lanes::new(2);
        assert_eq!(lanes.lane_for(None), 0);
        assert!(lanes.admit(0, 'a').is_some());
        assert_eq!(lanes.lane_for(None), 1);
        assert!(lanes.admit(1, 'b').is_some());
        // All busy: it waits on lane 0.
        assert_eq!(lanes.lane_for(None), 0);
        assert_eq!(lanes.admit(0, 'c'), None);
        assert_eq!(lanes.waiting_mut().count(), 1);
    }

    #[test]
    fn one_lane_serialises_everything() {
        let lanes = Lanes::<()>::new(1);
        assert_eq!(lanes.lane_for(Some("a")), 0);
        assert_eq!(lanes.lane_for(Some("b")), 0);
        assert_eq!(lanes.lane_for(None), 0);
    }
}

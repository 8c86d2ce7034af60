//! The replay guard: event ids the app accepted, kept in a count-bounded LRU, and those being
//! handed to the app now. An id is recorded only once the app accepted the event, so a refused
//! or timed-out event is delivered again when the marketplace retries.

use std::collections::{BTreeMap, HashMap};

/// What [`Dedupe::begin`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Never seen: hand it to the app, then [`Dedupe::accepted`] or [`Dedupe::abandoned`].
    New,
    /// The app already accepted it: acknowledge without forwarding.
    Duplicate,
    /// Another copy is with the app right now: ask the marketplace to retry.
    InFlight,
}

#[derive(Debug)]
pub struct Dedupe {
    capacity: usize,
    next: u64,
    /// id → its place in `order`, for accepted ids.
    accepted: HashMap<String, u64>,
    /// Oldest use first.
    order: BTreeMap<u64, String>,
    in_flight: HashMap<String, ()>,
}

impl Dedupe {
    pub fn new(capacity: usize) -> Dedupe {
        Dedupe {
            capacity: capacity.max(1),
            next: 0,
            accepted: HashMap::new(),
            order: BTreeMap::new(),
            in_flight: HashMap::new(),
        }
    }

    pub fn begin(&mut self, id: &str) -> Begin {
        if self.was_accepted(id) {
            return Begin::Duplicate;
        }
        if self.in_flight.contains_key(id) {
            return Begin::InFlight;
        }
        self.in_flight.insert(id.to_owned(), ());
        Begin::New
    }

    /// Whether the app accepted `id`; if so it counts as seen again (most recently used now).
    pub fn was_accepted(&mut self, id: &str) -> bool {
        let Some(at) = self.accepted.get(id).copied() else {
            return false;
        };
        self.order.remove(&at);
        self.next += 1;
        self.order.insert(self.next, id.to_owned());
        self.accepted.insert(id.to_owned(), self.next);
        true
    }

    /// The app accepted the event: later copies are duplicates.
    pub fn accepted(&mut self, id: &str) {
        self.in_flight.remove(id);
        self.next += 1;
        if let Some(old) = self.accepted.insert(id.to_owned(), self.next) {
            self.order.remove(&old);
        }
        self.order.insert(self.next, id.to_owned());
        while self.accepted.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.accepted.remove(&oldest);
        }
    }

    /// The app did not take the event: the next copy is delivered.
    pub fn abandoned(&mut self, id: &str) {
        self.in_flight.remove(id);
    }

    pub fn len(&self) -> usize {
        self.accepted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_accepted_ids_are_duplicates() {
        let mut d = Dedupe::new(10);
        assert_eq!(d.begin("a"), Begin::New);
        assert_eq!(d.begin("a"), Begin::InFlight);
        d.abandoned("a");
        assert_eq!(d.begin("a"), Begin::New);
        d.accepted("a");
        assert_eq!(d.begin("a"), Begin::Duplicate);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn the_least_recently_seen_id_goes_first_past_the_cap() {
        let mut d = Dedupe::new(2);
        for id in ["a", "b"] {
            assert_eq!(d.begin(id), Begin::New);
            d.accepted(id);
        }
        // Touch "a": "b" is now the oldest.
        assert_eq!(d.begin("a"), Begin::Duplicate);
        assert_eq!(d.begin("c"), Begin::New);
        d.accepted("c");
        assert_eq!(d.len(), 2);
        assert_eq!(d.begin("a"), Begin::Duplicate);
        assert_eq!(d.begin("c"), Begin::Duplicate);
        assert_eq!(d.begin("b"), Begin::New);
    }
}

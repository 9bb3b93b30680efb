//! A bounded, direct-mapped decision cache: one slot per hash bucket, a colliding entry simply
//! replaces the previous one. Keys are stored in full, so a hash collision can never return
//! another subject's decision; the memory is at most `capacity` slots of short subjects, and
//! nothing is allocated until the first insert (idle connections stay small).

use std::cell::Cell;
use std::hash::Hasher;

use super::trie::TokenHasher;

/// Longer subjects are decided without the cache (bounds the cache's memory).
const MAX_CACHED_SUBJECT_BYTES: usize = 256;

/// Slice equality eight bytes at a time: in Wasm, `==` on slices calls a byte-by-byte `memcmp`,
/// which costs more per lookup than the hash.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails_equal = a_words.remainder() == b_words.remainder();
    tails_equal && a_words.zip(b_words).all(|(x, y)| word(x) == word(y))
}

fn word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(<[u8; 8]>::try_from(bytes).unwrap_or_default())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecisionKind {
    Publish,
    Deliver,
    /// Whether `provenance.subjects` selects a publish subject.
    Stamp,
}

#[derive(Debug)]
struct Slot {
    kind: DecisionKind,
    subject: Box<[u8]>,
    queue: Option<Box<[u8]>>,
    verdict: u8,
}

#[derive(Debug)]
pub(crate) struct DecisionCache {
    slots: Vec<Option<Slot>>,
    capacity: usize,
    /// The slot last found or filled: a stream of frames on one subject is then decided by one
    /// comparison, without hashing the subject again.
    last: Cell<usize>,
}

impl Slot {
    fn holds(&self, kind: DecisionKind, subject: &[u8], queue: Option<&[u8]>) -> bool {
        self.kind == kind
            && same_bytes(&self.subject, subject)
            && match (&self.queue, queue) {
                (None, None) => true,
                (Some(cached), Some(queue)) => same_bytes(cached, queue),
                _ => false,
            }
    }
}

impl DecisionCache {
    pub(crate) fn new(capacity: usize) -> DecisionCache {
        DecisionCache {
            slots: Vec::new(),
            capacity,
            last: Cell::new(0),
        }
    }

    fn index(&self, kind: DecisionKind, subject: &[u8], queue: Option<&[u8]>) -> usize {
        let mut hasher = TokenHasher::default();
        hasher.write_u8(kind as u8);
        hasher.write(subject);
        if let Some(queue) = queue {
            hasher.write_u8(0xff);
            hasher.write(queue);
        }
        // The hash's high half scaled to the capacity: a multiply instead of a 64-bit division
        // (slow in Wasm), and the multiplicative hash's best-mixed bits.
        (((hasher.finish() >> 32) * self.capacity as u64) >> 32) as usize
    }

    pub(crate) fn get(
        &self,
        kind: DecisionKind,
        subject: &[u8],
        queue: Option<&[u8]>,
    ) -> Option<u8> {
        let held = |index: usize| {
            self.slots
                .get(index)?
                .as_ref()
                .filter(|slot| slot.holds(kind, subject, queue))
                .map(|slot| slot.verdict)
        };
        if let Some(verdict) = held(self.last.get()) {
            return Some(verdict);
        }
        if self.slots.is_empty() {
            return None;
        }
        let index = self.index(kind, subject, queue);
        let verdict = held(index)?;
        self.last.set(index);
        Some(verdict)
    }

    pub(crate) fn insert(
        &mut self,
        kind: DecisionKind,
        subject: &[u8],
        queue: Option<&[u8]>,
        verdict: u8,
    ) {
        let key_bytes = subject.len() + queue.map_or(0, <[u8]>::len);
        if self.capacity == 0 || key_bytes > MAX_CACHED_SUBJECT_BYTES {
            return;
        }
        if self.slots.is_empty() {
            self.slots.resize_with(self.capacity, || None);
        }
        let index = self.index(kind, subject, queue);
        self.last.set(index);
        self.slots[index] = Some(Slot {
            kind,
            subject: subject.into(),
            queue: queue.map(Into::into),
            verdict,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_slot_answers_only_for_its_own_key() {
        // Capacity 1: every key shares the one slot, so each insert replaces the last one.
        let mut cache = DecisionCache::new(1);
        cache.insert(DecisionKind::Publish, b"orders.new", None, 1);
        assert_eq!(
            cache.get(DecisionKind::Publish, b"orders.new", None),
            Some(1)
        );
        cache.insert(DecisionKind::Publish, b"orders.old", None, 0);
        assert_eq!(cache.get(DecisionKind::Publish, b"orders.new", None), None);
        assert_eq!(
            cache.get(DecisionKind::Publish, b"orders.old", None),
            Some(0)
        );
        assert_eq!(cache.get(DecisionKind::Deliver, b"orders.old", None), None);
        assert_eq!(
            cache.get(DecisionKind::Publish, b"orders.old", Some(b"q")),
            None
        );
        cache.insert(DecisionKind::Deliver, b"orders.old", Some(b"q"), 1);
        assert_eq!(
            cache.get(DecisionKind::Deliver, b"orders.old", Some(b"q")),
            Some(1)
        );
        assert_eq!(cache.get(DecisionKind::Deliver, b"orders.old", None), None);
        assert_eq!(cache.get(DecisionKind::Publish, b"orders.old", None), None);
    }

    #[test]
    fn a_hit_elsewhere_moves_the_last_slot() {
        let mut cache = DecisionCache::new(64);
        let subjects: Vec<Vec<u8>> = (0..32).map(|i| format!("s.{i}").into_bytes()).collect();
        for (i, subject) in subjects.iter().enumerate() {
            cache.insert(DecisionKind::Publish, subject, None, (i % 2) as u8);
        }
        for _ in 0..2 {
            for (i, subject) in subjects.iter().enumerate() {
                let found = cache.get(DecisionKind::Publish, subject, None);
                // A colliding later subject may have replaced an earlier one; never a wrong verdict.
                assert!(found.is_none() || found == Some((i % 2) as u8), "{i}");
            }
        }
        let empty = DecisionCache::new(0);
        assert_eq!(empty.get(DecisionKind::Publish, b"s.0", None), None);
    }
}

//! A bounded, direct-mapped decision cache: one slot per hash bucket, a colliding entry simply
//! replaces the previous one. Keys are stored in full, so a hash collision can never return
//! another subject's decision; the memory is at most `capacity` slots of short subjects, and
//! nothing is allocated until the first insert (idle connections stay small).

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
}

impl DecisionCache {
    pub(crate) fn new(capacity: usize) -> DecisionCache {
        DecisionCache {
            slots: Vec::new(),
            capacity,
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
        if self.slots.is_empty() {
            return None;
        }
        let slot = self.slots[self.index(kind, subject, queue)].as_ref()?;
        let same = slot.kind == kind
            && same_bytes(&slot.subject, subject)
            && match (&slot.queue, queue) {
                (None, None) => true,
                (Some(cached), Some(queue)) => same_bytes(cached, queue),
                _ => false,
            };
        same.then_some(slot.verdict)
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
        self.slots[index] = Some(Slot {
            kind,
            subject: subject.into(),
            queue: queue.map(Into::into),
            verdict,
        });
    }
}

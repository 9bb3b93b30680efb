//! A bounded, direct-mapped decision cache: one slot per hash bucket, a colliding entry simply
//! replaces the previous one. Keys are stored in full, so a hash collision can never return
//! another subject's decision; the memory is at most `capacity` slots of short subjects, and
//! nothing is allocated until the first insert (idle connections stay small).

use std::hash::Hasher;

use super::trie::TokenHasher;

/// Longer subjects are decided without the cache (bounds the cache's memory).
const MAX_CACHED_SUBJECT_BYTES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecisionKind {
    Publish,
    Deliver,
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
        (hasher.finish() % self.capacity as u64) as usize
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
        let same = slot.kind == kind && *slot.subject == *subject && slot.queue.as_deref() == queue;
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

//! Building the bytes to forward for one chunk without copying when nothing changes.

use std::ops::Range;

/// What to do with the chunk Envoy handed to the filter.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    /// Forward the chunk as it is (the common case: no copy, no rewrite).
    Unchanged,
    /// Forward only the first bytes of the chunk (the rest was dropped, or is the start of a
    /// control line the parser holds until its end arrives). No copy is made in the VM.
    Prefix(usize),
    /// Replace the chunk with these bytes (possibly none).
    Replace(Vec<u8>),
    /// Keep the connection's client bytes inside the engine and forward nothing yet: the
    /// connection waits for the remote JWKS (see `Connection::resume`).
    Hold,
}

/// Accumulates the output for one chunk: spans kept from the chunk, spans dropped, bytes
/// inserted. Stays a zero-copy "unchanged" until the first edit.
pub(crate) struct Rewrite<'c> {
    chunk: &'c [u8],
    /// End of the kept prefix while no edit happened.
    kept: usize,
    edited: Option<Vec<u8>>,
}

impl<'c> Rewrite<'c> {
    pub(crate) fn new(chunk: &'c [u8]) -> Self {
        Rewrite {
            chunk,
            kept: 0,
            edited: None,
        }
    }

    fn edit(&mut self) -> &mut Vec<u8> {
        let (chunk, kept) = (self.chunk, self.kept);
        self.edited.get_or_insert_with(|| chunk[..kept].to_vec())
    }

    #[inline]
    pub(crate) fn keep(&mut self, span: Range<usize>) {
        if self.edited.is_none() && span.start == self.kept {
            self.kept = span.end;
            return;
        }
        let chunk = self.chunk;
        self.edit().extend_from_slice(&chunk[span]);
    }

    /// Leaves `span` out. Nothing to do now: a later `keep` or `insert` copies what was kept
    /// before the gap, and a gap at the end makes the output a prefix of the chunk.
    pub(crate) fn drop(&mut self, _span: Range<usize>) {}

    pub(crate) fn insert(&mut self, bytes: &[u8]) {
        self.edit().extend_from_slice(bytes);
    }

    pub(crate) fn finish(self) -> Forward {
        match self.edited {
            Some(bytes) => Forward::Replace(bytes),
            None if self.kept == self.chunk.len() => Forward::Unchanged,
            None => Forward::Prefix(self.kept),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeping_everything_in_order_is_unchanged() {
        let mut out = Rewrite::new(b"abcdef");
        out.keep(0..3);
        out.keep(3..6);
        assert_eq!(out.finish(), Forward::Unchanged);
    }

    #[test]
    fn a_dropped_tail_truncates() {
        let mut out = Rewrite::new(b"abcdef");
        out.keep(0..4);
        out.drop(4..6);
        assert_eq!(out.finish(), Forward::Prefix(4));
    }

    #[test]
    fn edits_copy_the_kept_prefix_once() {
        let mut out = Rewrite::new(b"abcdef");
        out.keep(0..2);
        out.drop(2..4);
        out.insert(b"XY");
        out.keep(4..6);
        assert_eq!(out.finish(), Forward::Replace(b"abXYef".to_vec()));
    }
}

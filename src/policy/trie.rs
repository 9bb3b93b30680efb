//! A token trie of permission patterns, walked like nats-server's Sublist (server/sublist.go,
//! funcs Insert, matchLevel): a client subject's literal token is looked up among the literal
//! pattern tokens, and the `*` and `>` branches are tried at every level. A wildcard token in
//! the client's subject is therefore only ever matched by a wildcard pattern token.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::subject::{has_empty_token, tokens, FULL_WILDCARD, SINGLE_WILDCARD};

/// How a pattern `*` treats a client subject's literal `>` token.
///
/// The two readings differ only for a subject with a `>` token, and natsguard takes, at every
/// decision, the one that denies more: an entry that *grants* (a plain allow, a queue allow that
/// names the client's queue) is read [`MatchMode::Strict`]; an entry that *restricts* (any queue
/// allow entry, which limits queue subscribers to its queues, and every deny entry) is read
/// [`MatchMode::NatsServer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MatchMode {
    /// nats-server's rule: a pattern `*` matches any single token, `>` included.
    NatsServer,
    /// natsguard's rule for grants: a pattern `*` does not match a literal `>` token, so
    /// allow `foo.*` never authorises `SUB foo.>` (a true subset check).
    Strict,
}

/// What the patterns ending at a node say: a plain entry, and/or queue-group entries.
#[derive(Default, Debug)]
pub(crate) struct Terminal {
    pub(crate) plain: bool,
    /// Some queue entry ends here: in an allow list it limits queue subscribers of a matching
    /// subject to the queues of the matching queue entries (nats-server's queue override).
    pub(crate) queue_restricted: bool,
    /// The queue groups those entries name. May be empty while `queue_restricted` holds: an
    /// entry whose queue template could not be filled restricts without granting any queue.
    pub(crate) queues: Vec<Box<[u8]>>,
    /// The configured entries that end here (indices into the permission set's entry table),
    /// for explanations; decisions never read them.
    pub(crate) origins: Vec<u32>,
}

#[derive(Default, Debug)]
struct Level {
    literals: HashMap<Box<[u8]>, Node, BuildHasherDefault<TokenHasher>>,
    single_wildcard: Option<Box<Node>>,
    full_wildcard: Option<Box<Node>>,
}

#[derive(Default, Debug)]
struct Node {
    next: Option<Box<Level>>,
    terminal: Option<Terminal>,
}

#[derive(Default, Debug)]
pub(crate) struct PatternTrie {
    root: Level,
    len: usize,
}

impl PatternTrie {
    /// Inserts a pattern (already validated) with an optional queue group; `origin` names the
    /// configured entry.
    pub(crate) fn insert(&mut self, pattern: &[u8], queue: Option<&[u8]>, origin: u32) {
        self.insert_entry(pattern, queue.map(Some), origin);
    }

    /// Inserts a queue entry that restricts queue subscribers of `pattern` without granting
    /// them any queue group (its queue could not be determined).
    pub(crate) fn insert_queue_restriction(&mut self, pattern: &[u8], origin: u32) {
        self.insert_entry(pattern, Some(None), origin);
    }

    /// `queue`: `None` for a plain entry; `Some(None)` for a queue entry without a grantable
    /// queue group.
    fn insert_entry(&mut self, pattern: &[u8], queue: Option<Option<&[u8]>>, origin: u32) {
        let mut level = &mut self.root;
        let mut pending = tokens(pattern).peekable();
        loop {
            let Some(token) = pending.next() else { return };
            let node: &mut Node = if token == SINGLE_WILDCARD {
                level.single_wildcard.get_or_insert_with(Box::default)
            } else if token == FULL_WILDCARD {
                level.full_wildcard.get_or_insert_with(Box::default)
            } else {
                level.literals.entry(token.into()).or_default()
            };
            if pending.peek().is_none() {
                let terminal = node.terminal.get_or_insert_with(Terminal::default);
                terminal.origins.push(origin);
                match queue {
                    None => terminal.plain = true,
                    Some(queue) => {
                        terminal.queue_restricted = true;
                        match queue {
                            Some(queue)
                                if !terminal.queues.iter().any(|known| **known == *queue) =>
                            {
                                terminal.queues.push(queue.into())
                            }
                            _ => {}
                        }
                    }
                }
                self.len += 1;
                return;
            }
            level = node.next.get_or_insert_with(Box::default);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Calls `visit` for every pattern terminal that matches `subject`; stops when `visit`
    /// returns true and returns whether it did.
    pub(crate) fn find_match(
        &self,
        subject: &[u8],
        mode: MatchMode,
        visit: &mut dyn FnMut(&Terminal) -> bool,
    ) -> bool {
        if has_empty_token(subject) {
            return false;
        }
        let subject_tokens: Vec<&[u8]> = tokens(subject).collect();
        match_level(&self.root, &subject_tokens, mode, visit)
    }

    /// True when some plain (non-queue) entry matches `subject`.
    pub(crate) fn matches_plain(&self, subject: &[u8], mode: MatchMode) -> bool {
        self.find_match(subject, mode, &mut |terminal| terminal.plain)
    }
}

/// Iterative along literal tokens; recursion happens only into `*` branches, so its depth is
/// bounded by the configured patterns, not by the client's subject.
fn match_level(
    mut level: &Level,
    subject_tokens: &[&[u8]],
    mode: MatchMode,
    visit: &mut dyn FnMut(&Terminal) -> bool,
) -> bool {
    let mut last: Option<&Node> = None;
    let mut last_single: Option<&Node> = None;
    for (index, token) in subject_tokens.iter().enumerate() {
        if let Some(full) = &level.full_wildcard {
            if full.terminal.as_ref().is_some_and(&mut *visit) {
                return true;
            }
        }
        last_single = None;
        if let Some(single) = &level.single_wildcard {
            let single_applies = mode == MatchMode::NatsServer || *token != FULL_WILDCARD;
            if single_applies {
                last_single = Some(single);
                if let Some(next) = &single.next {
                    if match_level(next, &subject_tokens[index + 1..], mode, visit) {
                        return true;
                    }
                }
            }
        }
        let is_wildcard = *token == SINGLE_WILDCARD || *token == FULL_WILDCARD;
        last = if is_wildcard {
            None
        } else {
            level.literals.get(*token)
        };
        let is_final = index + 1 == subject_tokens.len();
        if is_final {
            break;
        }
        match last.and_then(|node| node.next.as_deref()) {
            Some(next) => level = next,
            None => return false,
        }
    }
    for node in [last, last_single].into_iter().flatten() {
        if node.terminal.as_ref().is_some_and(&mut *visit) {
            return true;
        }
    }
    false
}

/// FxHash-style hasher: deterministic (no OS randomness, which the Wasm host may not offer).
/// Only configured patterns are keys, so a client cannot choose colliding keys.
#[derive(Default)]
pub(crate) struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut mix = |word: u64| self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
        let words = bytes.chunks_exact(8);
        let tail = words.remainder();
        for word in words {
            mix(u64::from_le_bytes(
                <[u8; 8]>::try_from(word).unwrap_or_default(),
            ));
        }
        if !tail.is_empty() {
            let mut word = [0u8; 8];
            word[..tail.len()].copy_from_slice(tail);
            mix(u64::from_le_bytes(word));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(patterns: &[&str]) -> PatternTrie {
        let mut trie = PatternTrie::default();
        for pattern in patterns {
            trie.insert(pattern.as_bytes(), None, 0);
        }
        trie
    }

    #[test]
    fn literal_token_rule() {
        let cases: &[(&[&str], &str, MatchMode, bool)] = &[
            (&["foo.*"], "foo.bar", MatchMode::Strict, true),
            (&["foo.*"], "foo.*", MatchMode::Strict, true),
            (&["foo.*"], "foo.>", MatchMode::Strict, false),
            (&["foo.*"], "foo.>", MatchMode::NatsServer, true),
            (&["*"], ">", MatchMode::NatsServer, true),
            (&["*"], ">", MatchMode::Strict, false),
            (&["foo.bar"], "foo.*", MatchMode::NatsServer, false),
            (&["foo.>"], "foo.*", MatchMode::Strict, true),
            (&["foo.>"], "foo.>", MatchMode::Strict, true),
            (&["foo.>"], "foo", MatchMode::Strict, false),
            (&["foo.>"], "foo.a.b", MatchMode::Strict, true),
            (&["gt.*"], "gt.*.x", MatchMode::NatsServer, false),
            (&["gt.*"], "gt", MatchMode::NatsServer, false),
            (&["a.*.c", "a.b.d"], "a.b.c", MatchMode::Strict, true),
            (&["a.*.c", "a.b.d"], "a.b.d", MatchMode::Strict, true),
            (&["a.*.c", "a.b.d"], "a.b.e", MatchMode::Strict, false),
            (&[">"], "a..b", MatchMode::NatsServer, false),
            (&[">"], "", MatchMode::NatsServer, false),
            (&["a.b"], "a.b.", MatchMode::NatsServer, false),
            (&["\u{fc}.x"], "\u{fc}.x", MatchMode::Strict, true),
        ];
        for (patterns, subject, mode, expected) in cases {
            let found = trie(patterns).matches_plain(subject.as_bytes(), *mode);
            assert_eq!(found, *expected, "{patterns:?} {subject} {mode:?}");
        }
    }

    #[test]
    fn non_utf8_subjects_match_bytewise() {
        let found = trie(&["a.*"]).matches_plain(b"a.\xff\xfe", MatchMode::Strict);
        assert!(found);
    }
}

//! Subject syntax with nats-server's rules (server/sublist.go): tokens separated by `.`, `*` and
//! `>` are wildcards only as whole tokens, `>` only last. Subjects are bytes: clients may send
//! non-UTF-8 subjects and nats-server accepts them.

pub(crate) const SEPARATOR: u8 = b'.';
pub(crate) const SINGLE_WILDCARD: &[u8] = b"*";
pub(crate) const FULL_WILDCARD: &[u8] = b">";

/// Splits a subject into its tokens. Empty tokens are kept (callers decide what they mean).
pub(crate) fn tokens(subject: &[u8]) -> impl Iterator<Item = &[u8]> {
    subject.split(|&byte| byte == SEPARATOR)
}

/// True when the subject has an empty token (`a..b`, `.a`, `a.`, or is empty): nats-server's
/// Sublist matches nothing for such a subject.
pub(crate) fn has_empty_token(subject: &[u8]) -> bool {
    tokens(subject).any(<[u8]>::is_empty)
}

/// nats-server's `subjectHasWildcard`: a whole-token `*` or `>` anywhere.
pub(crate) fn has_wildcard(subject: &[u8]) -> bool {
    tokens(subject).any(|token| token == SINGLE_WILDCARD || token == FULL_WILDCARD)
}

/// nats-server's `IsValidSubject` (used for permission entries), plus a refusal of control
/// characters, which no legitimate permission entry contains.
pub fn is_valid_subject(subject: &str) -> bool {
    if subject.is_empty() || subject.chars().any(char::is_control) {
        return false;
    }
    let mut seen_full_wildcard = false;
    for token in subject.split('.') {
        if token.is_empty() || seen_full_wildcard {
            return false;
        }
        if token.contains([' ', '\t', '\n', '\r', '\x0c']) {
            return false;
        }
        seen_full_wildcard = token == ">";
    }
    true
}

/// nats-server's `tokensCanMatch`: it looks at the first byte only, so `*x` counts as a
/// wildcard here (this only makes the delivery filter arm more often).
fn tokens_can_match(first: &[u8], second: &[u8]) -> bool {
    match (first.first(), second.first()) {
        (Some(a), Some(b)) => {
            matches!(a, b'*' | b'>') || matches!(b, b'*' | b'>') || first == second
        }
        _ => false,
    }
}

/// nats-server's `isSubsetMatchTokenized`: is every subject matched by `subject` also matched
/// by `test`?
pub(crate) fn is_subset_match(subject: &[&[u8]], test: &[&[u8]]) -> bool {
    for (index, test_token) in test.iter().enumerate() {
        let Some(token) = subject.get(index) else {
            return false;
        };
        if test_token.is_empty() {
            return false;
        }
        if *test_token == FULL_WILDCARD {
            return true;
        }
        if token.is_empty() || *token == FULL_WILDCARD {
            return false;
        }
        if *token == SINGLE_WILDCARD {
            if *test_token != SINGLE_WILDCARD {
                return false;
            }
            continue;
        }
        if *test_token != SINGLE_WILDCARD && token != test_token {
            return false;
        }
    }
    subject.len() == test.len()
}

/// nats-server's `SubjectsCollide`: could some literal subject match both patterns?
pub(crate) fn subjects_collide(first: &[u8], second: &[u8]) -> bool {
    if first == second {
        return true;
    }
    let first_tokens: Vec<&[u8]> = tokens(first).collect();
    let second_tokens: Vec<&[u8]> = tokens(second).collect();
    let (first_single, first_full) = analyze(&first_tokens);
    let (second_single, second_full) = analyze(&second_tokens);
    let first_literal = !(first_single || first_full);
    let second_literal = !(second_single || second_full);
    match (first_literal, second_literal) {
        (true, true) => return false,
        (true, false) => return is_subset_match(&first_tokens, &second_tokens),
        (false, true) => return is_subset_match(&second_tokens, &first_tokens),
        (false, false) => {}
    }
    let (first_len, second_len) = (first_tokens.len(), second_tokens.len());
    // Of different lengths, only a `>` in the shorter one can make them collide.
    if (first_len < second_len && !first_full) || (second_len < first_len && !second_full) {
        return false;
    }
    first_tokens
        .iter()
        .zip(&second_tokens)
        .all(|(a, b)| tokens_can_match(a, b))
}

fn analyze(tokens: &[&[u8]]) -> (bool, bool) {
    let single = tokens.contains(&SINGLE_WILDCARD);
    let full = tokens.contains(&FULL_WILDCARD);
    (single, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(subject: &str) -> Vec<&[u8]> {
        tokens(subject.as_bytes()).collect()
    }

    #[test]
    fn validity_follows_nats_server() {
        for valid in ["a", "a.b", "*", ">", "a.*.c", "a.>", "a*.b>", "ü.x"] {
            assert!(is_valid_subject(valid), "{valid}");
        }
        for invalid in [
            "", ".", "a.", ".a", "a..b", "a.>.b", "a b", "a\tb", "a\x0cb", "a\u{1}b",
        ] {
            assert!(!is_valid_subject(invalid), "{invalid:?}");
        }
    }

    #[test]
    fn collisions_follow_nats_server() {
        let cases = [
            ("foo.secret", "foo.*", true),
            ("foo.secret", "foo.>", true),
            ("foo.secret", "bar.*", false),
            ("foo.*", "*.bar", true),
            ("foo.*", "foo.*.x", false),
            ("foo.>", "*.*.x", true),
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("x.y", ">", true),
        ];
        for (first, second, expected) in cases {
            assert_eq!(
                subjects_collide(first.as_bytes(), second.as_bytes()),
                expected,
                "{first} {second}"
            );
        }
    }

    #[test]
    fn subset_match_follows_nats_server() {
        assert!(is_subset_match(&split("v1.x"), &split("v1.*")));
        assert!(!is_subset_match(&split("v1"), &split("v1.*")));
        assert!(is_subset_match(&split("v1.*"), &split("v1.*")));
        assert!(!is_subset_match(&split("v1.>"), &split("v1.*")));
        assert!(is_subset_match(&split("a.b.c"), &split("a.>")));
    }
}

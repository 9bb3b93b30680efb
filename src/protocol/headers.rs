//! NATS message headers (the `NATS/1.0` block of an HPUB or HMSG) as nats-server and the client
//! libraries read them: for the message-trace destinations nats-server acts on, and for the
//! headers natsguard reserves (removed from what clients publish) and adds (provenance).
//!
//! nats-server does not validate a header block (reference §1.8), and every reader reads it its
//! own way (checked in their sources):
//!
//! - nats-server (server/client.go `getHeaderKeyIndex`, `sliceHeader`): the exact, case-sensitive
//!   key right after a `\r\n` and right before `:`, anywhere in the block.
//! - nats.go (`DecodeHeadersMsg`): lines end at `\n` (a `\r` before it dropped), the first must
//!   start with `NATS/1.0`, reading stops at the first empty line, the name is everything before
//!   the first `:` (not trimmed), the first value wins.
//! - async-nats (`connection.rs`): lines end at `\n`, empty lines are skipped (reading goes on
//!   after them), a line starting with whitespace continues the previous value (folding).
//! - nats-py (`_parse_header_lines`): the block from its 11th byte on, whatever the first line
//!   was, split at `\r\n` only; names trimmed, the last value wins.
//! - Other clients compare names without regard to case (nats.js `Match.IgnoreCase`, Java's
//!   `equalsIgnoreCase`, which also folds `ſ`, `ı`, `İ` and the Kelvin sign to ASCII letters).
//!
//! So natsguard looks for a name the way the most lenient of them would find it: at any line
//! start after the version line (lines end at `\n`), trimmed, in any letter case. Where a
//! reserved name occurs at all, the block must have a shape every reader splits the same way
//! ([`is_plain`]); otherwise the reading is uncertain and the frame is refused (fail closed).

use std::ops::Range;

/// The version line every header block starts with (ADR-4).
pub const VERSION: &[u8] = b"NATS/1.0";

/// One line of a header block after its version line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderLine<'b> {
    /// The line in the block, its `\n` included.
    pub span: Range<usize>,
    /// The text before the first `:`, trimmed of spaces and tabs; `None` without a `:`.
    pub name: Option<&'b [u8]>,
    /// The text after the first `:`, trimmed of spaces and tabs.
    pub value: &'b [u8],
    /// The line starts with a space or a tab: async-nats reads it as more of the previous
    /// line's value.
    pub continued: bool,
}

/// The lines of `block` after its first (version) line. Lines end at `\n`, and a `\r` before
/// it is not part of the line, as nats.go and async-nats split them.
pub fn lines(block: &[u8]) -> impl Iterator<Item = HeaderLine<'_>> {
    let first_end = memchr::memchr(b'\n', block).map_or(block.len(), |at| at + 1);
    let mut at = first_end;
    std::iter::from_fn(move || {
        if at >= block.len() {
            return None;
        }
        let start = at;
        let end = memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |n| start + n + 1);
        at = end;
        let text = &block[start..end];
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let (name, value) = match memchr::memchr(b':', text) {
            Some(colon) => (Some(text[..colon].trim_ascii()), &text[colon + 1..]),
            None => (None, text),
        };
        Some(HeaderLine {
            span: start..end,
            name,
            value: value.trim_ascii(),
            continued: matches!(text.first(), Some(b' ' | b'\t')),
        })
    })
}

/// Whether every reader splits `block` into the same lines and header names: it starts with
/// `NATS/1.0`, every line ends with `\r\n` (no `\r` or `\n` alone), the last line is empty, and
/// no control byte other than a tab is in it.
pub fn is_plain(block: &[u8]) -> bool {
    if !block.starts_with(VERSION) || !block.ends_with(b"\r\n\r\n") {
        return false;
    }
    let mut bytes = block.iter().enumerate();
    while let Some((at, &byte)) = bytes.next() {
        match byte {
            b'\r' if block.get(at + 1) == Some(&b'\n') => {
                bytes.next();
            }
            b'\t' => {}
            0..=0x1f | 0x7f => return false,
            _ => {}
        }
    }
    true
}

/// A set of header names compared the way a case-insensitive reader compares them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderNames {
    /// As configured, for reports.
    names: Vec<Box<str>>,
    /// Folded ([`fold_name`]).
    folded: Vec<Box<[u8]>>,
    /// The folded names no other one contains: finding these finds every name.
    scanned: Vec<Box<[u8]>>,
}

impl HeaderNames {
    /// `names` must be HTTP tokens (printable ASCII without separators); duplicates in any
    /// letter case count once.
    pub fn new<'n>(names: impl IntoIterator<Item = &'n str>) -> HeaderNames {
        let mut set = HeaderNames::default();
        for name in names {
            let folded: Box<[u8]> = fold_name(name.as_bytes()).into();
            if !set.folded.contains(&folded) {
                set.names.push(name.into());
                set.folded.push(folded);
            }
        }
        set.scanned = set
            .folded
            .iter()
            .filter(|name| {
                !set.folded.iter().any(|other| {
                    other.len() < name.len() && memchr::memmem::find(name, other).is_some()
                })
            })
            .cloned()
            .collect();
        set
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names as configured (the first spelling of each).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|name| &**name)
    }

    /// Whether `name` is one of them, in any letter case (and the non-ASCII letters that fold
    /// to ASCII ones).
    pub fn contains(&self, name: &[u8]) -> bool {
        let folded = fold_name(name);
        self.folded.iter().any(|known| **known == *folded)
    }

    /// Whether some name of the set occurs anywhere in `bytes`, in any letter case. `false`
    /// means no reader can find one of these headers in a block made of these bytes.
    pub fn occur_in(&self, bytes: &[u8]) -> bool {
        if bytes.is_ascii() {
            return self
                .scanned
                .iter()
                .any(|name| contains_ignore_ascii_case(bytes, name));
        }
        let folded = fold_name(bytes);
        self.scanned
            .iter()
            .any(|name| memchr::memmem::find(&folded, name).is_some())
    }
}

/// Whether `needle` (lower case ASCII) occurs in `haystack` in any ASCII letter case.
fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut at = 0;
    while let Some(found) = memchr::memchr2(first, first.to_ascii_uppercase(), &haystack[at..]) {
        let start = at + found;
        let candidate = &haystack[start + 1..];
        if candidate.len() < rest.len() {
            return false;
        }
        if candidate[..rest.len()].eq_ignore_ascii_case(rest) {
            return true;
        }
        at = start + 1;
    }
    false
}

/// A name as case-insensitive readers compare it: ASCII letters in lower case, and the
/// non-ASCII letters whose case mapping is an ASCII letter (`ſ` → `s`, Kelvin `K` → `k`,
/// `ı` and `İ` → `i`) replaced by it. Other bytes are kept.
fn fold_name(name: &[u8]) -> Vec<u8> {
    let mut folded = Vec::with_capacity(name.len());
    let mut at = 0;
    while at < name.len() {
        let (ascii, width) = match &name[at..] {
            [0xc5, 0xbf, ..] => (Some(b's'), 2),
            [0xe2, 0x84, 0xaa, ..] => (Some(b'k'), 3),
            [0xc4, 0xb0 | 0xb1, ..] => (Some(b'i'), 2),
            _ => (None, 1),
        };
        match ascii {
            Some(letter) => folded.push(letter),
            None => folded.push(name[at].to_ascii_lowercase()),
        }
        at += width;
    }
    folded
}

/// Where the names of a set occur in a header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// As the names of these lines only (each with the lines that continue it), in a block
    /// every reader reads alike ([`is_plain`]): without them, no reader finds any of the names.
    /// Empty: nowhere a reader would read them as a name.
    Lines(Vec<Range<usize>>),
    /// Where natsguard cannot be sure how every reader reads them: in a block that is not
    /// plain, or in its version line.
    Uncertain,
}

/// Where the names of `names` occur in `block` as header names.
pub fn find(block: &[u8], names: &HeaderNames) -> Found {
    if !names.occur_in(block) {
        return Found::Lines(Vec::new());
    }
    let version_line_end = memchr::memchr(b'\n', block).map_or(block.len(), |at| at + 1);
    if !is_plain(block) || names.occur_in(&block[..version_line_end]) {
        return Found::Uncertain;
    }
    let mut found: Vec<Range<usize>> = Vec::new();
    let mut extending = false;
    for line in lines(block) {
        let named = line.name.is_some_and(|name| names.contains(name));
        match found.last_mut() {
            Some(last) if (named || line.continued) && extending && last.end == line.span.start => {
                last.end = line.span.end;
            }
            _ if named => found.push(line.span.clone()),
            _ => {}
        }
        extending = named || (extending && line.continued);
    }
    Found::Lines(found)
}

/// The bytes of `block` without the `removed` ranges (in order, not overlapping), with `added`
/// (whole header lines, `\r\n` each) right after its version line, appended to `out`.
pub fn write_rewritten(block: &[u8], removed: &[Range<usize>], added: &[u8], out: &mut Vec<u8>) {
    let version_line_end = memchr::memchr(b'\n', block).map_or(block.len(), |at| at + 1);
    out.extend_from_slice(&block[..version_line_end]);
    out.extend_from_slice(added);
    let mut at = version_line_end;
    for range in removed {
        out.extend_from_slice(&block[at..range.start]);
        at = range.end;
    }
    out.extend_from_slice(&block[at..]);
}

/// The length [`write_rewritten`] writes.
pub fn rewritten_len(block: &[u8], removed: &[Range<usize>], added: &[u8]) -> usize {
    block.len() + added.len() - removed.iter().map(ExactSizeIterator::len).sum::<usize>()
}

/// A header block of just `added` (whole header lines), for a message that had none.
pub fn write_new(added: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(VERSION);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(added);
    out.extend_from_slice(b"\r\n");
}

/// The length [`write_new`] writes.
pub fn new_len(added: &[u8]) -> usize {
    VERSION.len() + 2 + added.len() + 2
}

/// Whether `name` can be a header name every reader reads as it is: an HTTP token (RFC 9110:
/// letters, digits and ``!#$%&'*+-.^_`|~``).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// Whether `value` reads back as it is in every reader: not empty, no control byte, no space or
/// tab at either end (readers trim them).
pub fn is_plain_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && !bytes.iter().any(|&byte| byte < 0x20 || byte == 0x7f)
        && !matches!(bytes.first(), Some(b' ' | b'\t'))
        && !matches!(bytes.last(), Some(b' ' | b'\t'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> HeaderNames {
        HeaderNames::new([
            "Nats-Request-Info",
            "Nats-Publisher",
            "Nats-Publisher-Subject",
            "Nats-Publisher-Sig",
        ])
    }

    fn removed(block: &[u8]) -> Vec<u8> {
        match find(block, &names()) {
            Found::Lines(lines) => {
                let mut out = Vec::new();
                write_rewritten(block, &lines, b"", &mut out);
                assert_eq!(out.len(), rewritten_len(block, &lines, b""));
                out
            }
            Found::Uncertain => b"<uncertain>".to_vec(),
        }
    }

    #[test]
    fn lines_end_at_every_newline_and_name_trimmed_text_before_the_first_colon() {
        let block = b"NATS/1.0\r\nA: 1\r\n b:c \nX\r\n";
        let read: Vec<_> = lines(block)
            .map(|line| (line.name, line.value, line.continued))
            .collect();
        assert_eq!(
            read,
            [
                (Some(&b"A"[..]), &b"1"[..], false),
                (Some(&b"b"[..]), &b"c"[..], true),
                (None, &b"X"[..], false),
            ]
        );
    }

    #[test]
    fn every_spelling_a_reader_accepts_is_removed() {
        for line in [
            "Nats-Publisher: evil",
            "nats-publisher: evil",
            "NATS-PUBLISHER:evil",
            "Nats-Publisher :\tevil",
            " Nats-Publisher: evil",
            "\tNATS-REQUEST-INFO: {}",
            "Nats-Publisher-Sig: x",
            "Nat\u{17f}-Publi\u{17f}her: evil",
            "Nats-Request-\u{130}nfo: {}",
        ] {
            let block = format!("NATS/1.0\r\nA: 1\r\n{line}\r\nB: 2\r\n\r\n");
            assert_eq!(
                removed(block.as_bytes()),
                b"NATS/1.0\r\nA: 1\r\nB: 2\r\n\r\n",
                "{line:?}"
            );
        }
    }

    #[test]
    fn repeated_and_folded_headers_go_with_their_continuation_lines() {
        let block = b"NATS/1.0\r\nNats-Publisher: a\r\n  more\r\nKeep: 1\r\nnats-publisher: b\r\n\tNats-Request-Info: c\r\n d\r\n\r\nNats-Publisher: after the empty line\r\n\r\n";
        assert_eq!(removed(block), b"NATS/1.0\r\nKeep: 1\r\n\r\n\r\n");
    }

    #[test]
    fn names_inside_values_or_longer_names_are_left_alone() {
        for block in [
            &b"NATS/1.0\r\nX-Note: see Nats-Publisher: docs\r\n\r\n"[..],
            b"NATS/1.0\r\nX-Nats-Publisher: 1\r\nNats-Publisher-Extra: 2\r\n\r\n",
            b"NATS/1.0\r\nNats-Publisher x: 1\r\n\r\n",
        ] {
            assert_eq!(find(block, &names()), Found::Lines(Vec::new()));
        }
    }

    #[test]
    fn a_reserved_name_in_a_block_read_differently_by_some_reader_is_uncertain() {
        for block in [
            // A bare `\n`: nats.go and async-nats split there, nats-py does not.
            &b"NATS/1.0\r\nA: 1\nNats-Publisher: evil\r\n\r\n"[..],
            b"NATS/1.0\nNats-Publisher: evil\r\n\r\n",
            // A bare `\r`.
            b"NATS/1.0\r\nA: 1\rNats-Publisher: evil\r\n\r\n",
            // nats-py reads the version line's tail from byte 10 as a header line.
            b"NATS/1.0 X Nats-Publisher: evil\r\nA: 1\r\n\r\n",
            b"0123456789Nats-Publisher: evil\r\n\r\n",
            // No empty last line, a control byte.
            b"NATS/1.0\r\nNats-Publisher: evil\r\n",
            b"NATS/1.0\r\nNats-Publisher\x00: evil\r\n\r\n",
        ] {
            assert_eq!(find(block, &names()), Found::Uncertain, "{block:?}");
        }
    }

    #[test]
    fn blocks_without_a_reserved_name_are_not_read_further() {
        // Not plain, but no reader can find a reserved name in it.
        let block = b"garbage\nA: 1\r\rB";
        assert_eq!(find(block, &names()), Found::Lines(Vec::new()));
    }

    #[test]
    fn added_lines_follow_the_version_line() {
        let block = b"NATS/1.0 503\r\nnats-publisher: evil\r\nA: 1\r\n\r\n";
        let Found::Lines(lines) = find(block, &names()) else {
            panic!("plain block");
        };
        let mut out = Vec::new();
        write_rewritten(block, &lines, b"Nats-Publisher: good\r\n", &mut out);
        assert_eq!(out, b"NATS/1.0 503\r\nNats-Publisher: good\r\nA: 1\r\n\r\n");
        let mut new = Vec::new();
        write_new(b"Nats-Publisher: good\r\n", &mut new);
        assert_eq!(new, b"NATS/1.0\r\nNats-Publisher: good\r\n\r\n");
        assert_eq!(new.len(), new_len(b"Nats-Publisher: good\r\n"));
    }

    #[test]
    fn tokens_and_values() {
        assert!(is_token("Nats-Publisher"));
        for bad in ["", "Nats Publisher", "Nats:Publisher", "Näts"] {
            assert!(!is_token(bad), "{bad:?}");
        }
        assert!(is_plain_value("https://idp.example.com/alice"));
        for bad in ["", " a", "a\t", "a\r\nb", "a\u{7f}"] {
            assert!(!is_plain_value(bad), "{bad:?}");
        }
    }
}

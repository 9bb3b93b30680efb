//! The fast path for the frames of the data path: a PUB/HPUB (client) or MSG/HMSG (server) line
//! that is whole in the chunk and already in canonical form is read in one pass over its bytes.
//!
//! Canonical here means exactly what [`super::Operation::encode`] writes: the upper-case name,
//! single spaces, tokens of printable ASCII (so no UTF-8, control byte or tab to consider), sizes
//! without leading zeros, CRLF. Such a line reads one way only, and every check of the general
//! path is then implied by the scan, so this path answers "this op, canonical" or nothing: any
//! other line (lenient spellings, errors, unfinished lines) goes to the general path, which stays
//! the single authority on what nats-server accepts. `tests.rs` checks that both agree on every
//! line the fast path takes.

use super::op::{ClientOp, ServerOp};

/// Most tokens any fast-path op has (HMSG: subject, sid, reply, header size, total size).
const MAX_TOKENS: usize = 5;

/// The token boundaries of a canonical argument list: `(start, end)` of each token.
struct Tokens {
    spans: [(usize, usize); MAX_TOKENS],
    count: usize,
    /// Length of the whole line, `\r\n` included.
    line_len: usize,
}

impl Tokens {
    /// Reads the tokens of `line[from..]` up to `\r\n`: printable ASCII separated by single
    /// spaces, at most `max_tokens` of them, the argument at most `max_arg` bytes long.
    #[inline(always)]
    fn scan(line: &[u8], from: usize, max_tokens: usize, max_arg: usize) -> Option<Tokens> {
        // Past the limit the scan runs out of bytes and declines, like an unfinished line.
        let line = &line[..line.len().min(from + max_arg + 2)];
        // Locals rather than the struct's fields: they stay in registers through the loop.
        let mut spans = [(0, 0); MAX_TOKENS];
        let mut count = 0;
        let mut token_start = from;
        let mut at = from;
        loop {
            at = next_special_byte(line, at)?;
            let byte = line[at];
            if at == token_start || count == max_tokens {
                return None;
            }
            spans[count] = (token_start, at);
            count += 1;
            match byte {
                b' ' => {
                    at += 1;
                    token_start = at;
                }
                b'\r' if line.get(at + 1) == Some(&b'\n') && at - from <= max_arg => {
                    return Some(Tokens {
                        spans,
                        count,
                        line_len: at + 2,
                    });
                }
                _ => return None,
            }
        }
    }

    fn text<'a>(&self, line: &'a [u8], index: usize) -> &'a str {
        let (start, end) = self.spans[index];
        let token = &line[start..end];
        debug_assert!(token.iter().all(|byte| (0x21..0x7f).contains(byte)));
        // SAFETY: `scan` ended every token at the first byte outside 0x21..=0x7e, so a token is
        // printable ASCII, which is valid UTF-8. (Validating again costs a tenth of a frame.)
        unsafe { std::str::from_utf8_unchecked(token) }
    }

    /// A size as the canonical encoding writes it: 1 to 9 digits, no leading zero.
    fn size(&self, line: &[u8], index: usize) -> Option<u32> {
        let (start, end) = self.spans[index];
        let digits = &line[start..end];
        if digits.len() > 9 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        digits.iter().try_fold(0u32, |value, digit| {
            digit
                .is_ascii_digit()
                .then(|| value * 10 + u32::from(digit - b'0'))
        })
    }

    /// Header and total sizes, the header not larger than the total.
    fn header_sizes(&self, line: &[u8], header: usize) -> Option<(u32, u32)> {
        let sizes = (self.size(line, header)?, self.size(line, header + 1)?);
        (sizes.0 <= sizes.1).then_some(sizes)
    }
}

/// The index of the first byte from `at` on that is not printable ASCII (0x21..=0x7e): a
/// separator, the line end, or a byte the fast path declines. Eight bytes at a time: a borrow
/// out of `byte - 0x21` sets the top bit of a byte below 0x21, `byte + 1` reaches 0x80 from
/// 0x7f, and bytes from 0x80 have it already; borrows and carries only run upward from such a
/// byte, so the lowest flagged byte is exact.
#[inline]
fn next_special_byte(line: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = line.get(at..at + 8) {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(word).ok()?);
        let flagged =
            (word.wrapping_sub(ONES * 0x21) & !word | word.wrapping_add(ONES) | word) & HIGH;
        if flagged != 0 {
            return Some(at + flagged.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    (at..line.len()).find(|&index| !(0x21..0x7f).contains(&line[index]))
}

/// A canonical PUB or HPUB line at the start of `line`, and its length.
#[inline]
pub(crate) fn client_line(line: &[u8], max_arg: usize) -> Option<(ClientOp<'_>, usize)> {
    if line.starts_with(b"PUB ") {
        let tokens = Tokens::scan(line, 4, 3, max_arg)?;
        let reply = match tokens.count {
            2 => None,
            3 => Some(tokens.text(line, 1)),
            _ => return None,
        };
        let op = ClientOp::Pub {
            subject: tokens.text(line, 0),
            reply,
            payload_len: tokens.size(line, tokens.count - 1)?,
        };
        Some((op, tokens.line_len))
    } else if line.starts_with(b"HPUB ") {
        let tokens = Tokens::scan(line, 5, 4, max_arg)?;
        let reply = match tokens.count {
            3 => None,
            4 => Some(tokens.text(line, 1)),
            _ => return None,
        };
        let (header_len, total_len) = tokens.header_sizes(line, tokens.count - 2)?;
        let op = ClientOp::HPub {
            subject: tokens.text(line, 0),
            reply,
            header_len,
            total_len,
        };
        Some((op, tokens.line_len))
    } else {
        None
    }
}

/// A canonical MSG or HMSG line at the start of `line`, and its length.
#[inline]
pub(crate) fn server_line(line: &[u8], max_arg: usize) -> Option<(ServerOp<'_>, usize)> {
    if line.starts_with(b"MSG ") {
        let tokens = Tokens::scan(line, 4, 4, max_arg)?;
        let reply = match tokens.count {
            3 => None,
            4 => Some(tokens.text(line, 2)),
            _ => return None,
        };
        let op = ServerOp::Msg {
            subject: tokens.text(line, 0),
            sid: tokens.text(line, 1),
            reply,
            payload_len: tokens.size(line, tokens.count - 1)?,
        };
        Some((op, tokens.line_len))
    } else if line.starts_with(b"HMSG ") {
        let tokens = Tokens::scan(line, 5, 5, max_arg)?;
        let reply = match tokens.count {
            4 => None,
            5 => Some(tokens.text(line, 2)),
            _ => return None,
        };
        let (header_len, total_len) = tokens.header_sizes(line, tokens.count - 2)?;
        let op = ServerOp::HMsg {
            subject: tokens.text(line, 0),
            sid: tokens.text(line, 1),
            reply,
            header_len,
            total_len,
        };
        Some((op, tokens.line_len))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::parser::{parse_line, ClientToServer, Direction, ServerToClient};
    use super::super::{Limits, Operation};
    use proptest::prelude::*;

    /// Lines near the fast path's grammar: its ops and others, in any case, tokens of subject
    /// characters, wildcards, digits with leading zeros and odd bytes, every separator, every
    /// ending.
    fn near_canonical_line() -> impl Strategy<Value = Vec<u8>> {
        let name = prop::sample::select(vec![
            "PUB", "HPUB", "MSG", "HMSG", "pub", "Hpub", "msg", "SUB", "PUBX", "HMS",
        ]);
        let token = prop::sample::select(vec![
            "a",
            "foo.bar",
            "_INBOX.x.y",
            "*",
            ">",
            "0",
            "00",
            "7",
            "012",
            "10",
            "999999999",
            "1000000000",
            "4294967296",
            "é",
            "a\tb",
            "\x7f",
            "\x00",
            "",
        ]);
        let separator = prop::sample::select(vec![" ", " ", " ", "  ", "\t", " \t"]);
        let ending = prop::sample::select(vec!["\r\n", "\r\n", "\n", "\r", "", " \r\n", "\r\r\n"]);
        (
            name,
            prop::collection::vec((separator, token), 0..7),
            ending,
        )
            .prop_map(|(name, args, ending)| {
                let mut line = name.as_bytes().to_vec();
                for (separator, token) in args {
                    line.extend_from_slice(separator.as_bytes());
                    line.extend_from_slice(token.as_bytes());
                }
                line.extend_from_slice(ending.as_bytes());
                line.extend_from_slice(b"payload\r\n");
                line
            })
    }

    /// Whatever the fast path takes, the general parser reads as the same op, canonical.
    fn agrees<D: Direction>(bytes: &[u8], limits: &Limits) -> Result<bool, TestCaseError> {
        let Some((op, len)) = D::fast_line(bytes, limits.max_control_line) else {
            return Ok(false);
        };
        prop_assert_eq!(parse_line::<D>(&bytes[..len], limits), Ok((op, true)));
        prop_assert!(op.is_encoded_as(&bytes[..len]));
        Ok(true)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn the_fast_path_reads_lines_like_the_general_parser(
            line in prop_oneof![near_canonical_line(), prop::collection::vec(any::<u8>(), 0..40)],
            max_control_line in prop_oneof![Just(4096usize), 1usize..24],
        ) {
            let limits = Limits { max_control_line, ..Limits::default() };
            agrees::<ClientToServer>(&line, &limits)?;
            agrees::<ServerToClient>(&line, &limits)?;
        }
    }

    #[test]
    fn special_bytes_are_found_in_words_and_tails() {
        for len in 0..20 {
            for at in 0..len {
                for special in [0x00, 0x09, 0x0d, 0x20, 0x7f, 0x80, 0xc3, 0xff] {
                    let mut line = vec![b'a'; len];
                    line[at] = special;
                    assert_eq!(
                        super::next_special_byte(&line, 0),
                        Some(at),
                        "{len} {at} {special:#x}"
                    );
                    // Everything from a special byte on may be anything.
                    line[at..].fill(special);
                    assert_eq!(
                        super::next_special_byte(&line, 0),
                        Some(at),
                        "{len} {at} {special:#x}"
                    );
                }
            }
            let printable: Vec<u8> = (0..len).map(|i| 0x21 + (i as u8 * 7) % 0x5e).collect();
            assert_eq!(super::next_special_byte(&printable, 0), None);
        }
    }

    #[test]
    fn canonical_data_frames_take_the_fast_path() {
        let limits = Limits::default();
        for line in [
            &b"PUB a 0\r\n"[..],
            b"PUB foo.bar _INBOX.x 128\r\n",
            b"HPUB a 12 34\r\n",
            b"HPUB a r 0 999999999\r\n",
        ] {
            assert!(agrees::<ClientToServer>(line, &limits).unwrap(), "{line:?}");
        }
        for line in [
            &b"MSG a 1 0\r\n"[..],
            b"MSG foo.bar 12 _INBOX.x 128\r\n",
            b"HMSG a 1 12 34\r\n",
            b"HMSG a sid r 0 5\r\n",
        ] {
            assert!(agrees::<ServerToClient>(line, &limits).unwrap(), "{line:?}");
        }
        // The general path's cases: leniencies, limits and errors.
        let at_limit = Limits {
            max_control_line: 7,
            ..limits
        };
        assert!(agrees::<ClientToServer>(b"PUB abc 12\r\n", &at_limit).unwrap());
        let below = Limits {
            max_control_line: 5,
            ..limits
        };
        for (line, limits) in [
            (&b"PUB abc 12\r\n"[..], &below),
            (b"pub a 1\r\n", &limits),
            (b"PUB a 01\r\n", &limits),
            (b"PUB  a 1\r\n", &limits),
            (b"PUB a 1\n", &limits),
            (b"PUB a 1", &limits),
            (b"HPUB a 5 3\r\n", &limits),
            (b"PUB a b c 1\r\n", &limits),
        ] {
            assert!(!agrees::<ClientToServer>(line, limits).unwrap(), "{line:?}");
        }
    }
}

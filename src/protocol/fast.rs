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

use super::line::first_byte_outside;
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
            // The next separator, the line end, or a byte the fast path declines.
            at = first_byte_outside::<0x21>(line, at)?;
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
}

/// The arguments of a canonical data-frame line: `fixed` tokens (subject, and sid for MSG), an
/// optional reply, then `sizes` sizes (for HPUB/HMSG the header size, not above the total).
struct DataArgs<'a> {
    fixed: [&'a str; 2],
    reply: Option<&'a str>,
    sizes: [u32; 2],
    line_len: usize,
}

#[inline(always)]
fn data_args<'a>(
    line: &'a [u8],
    name: &[u8],
    fixed: usize,
    sizes: usize,
    max_arg: usize,
) -> Option<DataArgs<'a>> {
    if !line.starts_with(name) {
        return None;
    }
    let tokens = Tokens::scan(line, name.len(), fixed + 1 + sizes, max_arg)?;
    let has_reply = match tokens.count.checked_sub(fixed + sizes)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let first_size = tokens.count - sizes;
    let mut args = DataArgs {
        fixed: [""; 2],
        reply: has_reply.then(|| tokens.text(line, fixed)),
        sizes: [0; 2],
        line_len: tokens.line_len,
    };
    for index in 0..fixed {
        args.fixed[index] = tokens.text(line, index);
    }
    for index in 0..sizes {
        args.sizes[index] = tokens.size(line, first_size + index)?;
    }
    (sizes == 1 || args.sizes[0] <= args.sizes[1]).then_some(args)
}

/// A canonical PUB or HPUB line at the start of `line`, and its length.
#[inline]
pub(crate) fn client_line(line: &[u8], max_arg: usize) -> Option<(ClientOp<'_>, usize)> {
    if let Some(args) = data_args(line, b"PUB ", 1, 1, max_arg) {
        let op = ClientOp::Pub {
            subject: args.fixed[0],
            reply: args.reply,
            payload_len: args.sizes[0],
        };
        return Some((op, args.line_len));
    }
    let args = data_args(line, b"HPUB ", 1, 2, max_arg)?;
    let op = ClientOp::HPub {
        subject: args.fixed[0],
        reply: args.reply,
        header_len: args.sizes[0],
        total_len: args.sizes[1],
    };
    Some((op, args.line_len))
}

/// A canonical MSG or HMSG line at the start of `line`, and its length.
#[inline]
pub(crate) fn server_line(line: &[u8], max_arg: usize) -> Option<(ServerOp<'_>, usize)> {
    if let Some(args) = data_args(line, b"MSG ", 2, 1, max_arg) {
        let op = ServerOp::Msg {
            subject: args.fixed[0],
            sid: args.fixed[1],
            reply: args.reply,
            payload_len: args.sizes[0],
        };
        return Some((op, args.line_len));
    }
    let args = data_args(line, b"HMSG ", 2, 2, max_arg)?;
    let op = ServerOp::HMsg {
        subject: args.fixed[0],
        sid: args.fixed[1],
        reply: args.reply,
        header_len: args.sizes[0],
        total_len: args.sizes[1],
    };
    Some((op, args.line_len))
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

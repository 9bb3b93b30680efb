//! Checks on a control line that do not depend on the op's arguments: the op name, what
//! follows it, control bytes, stray `\r`, UTF-8 and the length limit.
//!
//! The same checks run on an unfinished line (whatever has arrived so far) and on the
//! finished one. Each error has a position (the first byte that makes the line invalid)
//! and the earliest one wins, so a line fails with the same error however TCP splits it.

use super::error::ProtocolError;
use super::op::{AfterName, OpName};
use super::parser::Limits;
use std::ops::Range;

/// Spaces/tabs allowed between the op name and its argument. nats-server skips any number
/// without buffering them; natsguard holds unfinished lines, so it bounds the run (a
/// longer run is refused as an over-long control line).
pub(crate) const MAX_SEPARATOR_RUN: usize = 64;

/// Longest op name (`CONNECT`).
const MAX_NAME_LEN: usize = 7;

/// An unfinished line this long is over a limit whatever its op: longest name, longest
/// separator run, the argument limit, and slack for a pending `\r` and partial UTF-8.
pub(crate) fn max_held_line(limits: &Limits) -> usize {
    limits.max_control_line.max(limits.max_connect_line) + MAX_NAME_LEN + MAX_SEPARATOR_RUN + 8
}

/// A finished line that passed every check.
pub(crate) struct Head {
    pub(crate) name: OpName,
    /// The argument (after the name and its separators, before the terminator).
    pub(crate) arg: Range<usize>,
}

fn is_separator(byte: &u8) -> bool {
    *byte == b' ' || *byte == b'\t'
}

enum Name {
    Known(OpName),
    Incomplete,
    Invalid,
}

/// Matches the op name case-insensitively, like nats-server's byte-at-a-time state machine:
/// the first two bytes decide which name it can be, the rest must follow it.
fn read_name(line: &[u8]) -> Name {
    let Some(first) = line.first() else {
        return Name::Incomplete;
    };
    let second = line.get(1).map(u8::to_ascii_uppercase);
    let name = match (first.to_ascii_uppercase(), second) {
        (b'P', Some(b'U')) => OpName::Pub,
        (b'P', Some(b'I')) => OpName::Ping,
        (b'P', Some(b'O')) => OpName::Pong,
        (b'H', Some(b'P')) => OpName::HPub,
        (b'H', Some(b'M')) => OpName::HMsg,
        (b'P' | b'H', None) => return Name::Incomplete,
        (b'P' | b'H', Some(_)) => return Name::Invalid,
        (b'C', _) => OpName::Connect,
        (b'S', _) => OpName::Sub,
        (b'U', _) => OpName::Unsub,
        (b'I', _) => OpName::Info,
        (b'M', _) => OpName::Msg,
        (b'+', _) => OpName::Ok,
        (b'-', _) => OpName::Err,
        _ => return Name::Invalid,
    };
    let text = name.text();
    let seen = text.len().min(line.len());
    if !line[..seen].eq_ignore_ascii_case(&text[..seen]) {
        Name::Invalid
    } else if seen < text.len() {
        Name::Incomplete
    } else {
        Name::Known(name)
    }
}

/// Checks `line` (without its `\n`). A finished line ends just before its `\n`, so a final
/// `\r` is its terminator; on an unfinished line a final `\r` is still undecided.
/// Returns `Ok(None)` for an unfinished line with no error so far.
pub(crate) fn check(
    line: &[u8],
    finished: bool,
    limits: &Limits,
) -> Result<Option<Head>, ProtocolError> {
    let name = match read_name(line) {
        Name::Known(name) => name,
        Name::Invalid => return Err(ProtocolError::UnknownOperation),
        Name::Incomplete if finished => return Err(ProtocolError::UnknownOperation),
        Name::Incomplete => return Ok(None),
    };
    let name_len = name.text().len();
    let end = if line.len() > name_len && line.last() == Some(&b'\r') {
        line.len() - 1
    } else {
        line.len()
    };
    let after = &line[name_len..end];

    // Errors right after the name come before any other position.
    match name.after_name() {
        AfterName::LineEnd if !after.is_empty() => return Err(ProtocolError::TrailingJunk),
        AfterName::Separator => match after.first() {
            None if finished => return Err(ProtocolError::UnknownOperation),
            Some(byte) if !is_separator(byte) => return Err(ProtocolError::UnknownOperation),
            _ => {}
        },
        _ => {}
    }

    let separators = after.iter().take_while(|byte| is_separator(byte)).count();
    let arg_start = name_len + separators;
    let limit = match name {
        OpName::Connect => limits.max_connect_line,
        _ => limits.max_control_line,
    };
    let length_error = if separators > MAX_SEPARATOR_RUN {
        Some(name_len + MAX_SEPARATOR_RUN)
    } else if measured_len(name, &line[arg_start..end]) > limit {
        Some(arg_start + limit)
    } else {
        None
    };
    let content_error = scan_content(after, finished).map(|(at, error)| (name_len + at, error));
    match (content_error, length_error) {
        (Some((at, error)), Some(too_long)) if at <= too_long => return Err(error),
        (Some((_, error)), None) => return Err(error),
        (_, Some(_)) => return Err(ProtocolError::ControlLineTooLong),
        (None, None) => {}
    }
    Ok(finished.then_some(Head {
        name,
        arg: arg_start..end,
    }))
}

/// The argument length held to the limit: nats-server's measure (everything after the
/// name and its separators), except for INFO, whose JSON alone is measured because its
/// canonical form adds a space before the line end.
fn measured_len(name: OpName, arg: &[u8]) -> usize {
    match name {
        OpName::Info => {
            arg.len()
                - arg
                    .iter()
                    .rev()
                    .take_while(|byte| is_separator(byte))
                    .count()
        }
        _ => arg.len(),
    }
}

/// The index of the first byte from `at` on outside `LOW..=0x7e` (`LOW` ≤ 0x20: a control
/// byte, DEL, a non-ASCII byte, and for `LOW` 0x21 also the space). Eight bytes at a time: a
/// borrow out of `byte - LOW` sets the top bit of a byte below `LOW`, `byte + 1` reaches 0x80
/// from 0x7f, and bytes from 0x80 have it already; borrows and carries only run upward from
/// such a byte, so the lowest flagged byte is exact.
#[inline(always)]
pub(crate) fn first_byte_outside<const LOW: u8>(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(word).ok()?);
        let below = word.wrapping_sub(ONES * u64::from(LOW)) & !word;
        let flagged = (below | word.wrapping_add(ONES) | word) & HIGH;
        if flagged != 0 {
            return Some(at + flagged.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    (at..bytes.len()).find(|&index| !(LOW..0x7f).contains(&bytes[index]))
}

/// The first control byte, stray `\r` or invalid UTF-8 in `content`, with its position.
fn scan_content(content: &[u8], finished: bool) -> Option<(usize, ProtocolError)> {
    let first = first_byte_outside::<0x20>(content, 0)?;
    let rest = &content[first..];
    let control = rest
        .iter()
        .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        .map(|at| {
            let error = if rest[at] == b'\r' {
                ProtocolError::StrayCarriageReturn
            } else {
                ProtocolError::ControlByte
            };
            (first + at, error)
        });
    let utf8 = match std::str::from_utf8(rest) {
        Ok(_) => None,
        // An unfinished line may end inside a character.
        Err(e) if e.error_len().is_none() && !finished => None,
        // Positioned where the error becomes certain: at an impossible lead byte, else at
        // the first byte that breaks the sequence (or the line end), as a line that is still
        // arriving would see it.
        Err(e) => {
            let start = e.valid_up_to();
            let certain_at = match e.error_len() {
                Some(_) if !matches!(rest[start], 0xc2..=0xf4) => start,
                Some(len) => start + len,
                None => rest.len(),
            };
            Some((first + certain_at, ProtocolError::InvalidUtf8))
        }
    };
    match (control, utf8) {
        (Some(c), Some(u)) => Some(if c.0 <= u.0 { c } else { u }),
        (c, u) => c.or(u),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(line: &[u8]) -> Result<OpName, ProtocolError> {
        check(line, true, &Limits::default()).map(|head| head.map(|h| h.name).unwrap())
    }

    #[test]
    fn op_names_are_case_insensitive() {
        assert_eq!(finished(b"pUb a 1"), Ok(OpName::Pub));
        assert_eq!(finished(b"ping"), Ok(OpName::Ping));
        assert_eq!(finished(b"+ok"), Ok(OpName::Ok));
        assert_eq!(finished(b"Connect{}"), Ok(OpName::Connect));
    }

    #[test]
    fn name_errors() {
        use ProtocolError::*;
        assert_eq!(finished(b" PUB a 1"), Err(UnknownOperation));
        assert_eq!(finished(b""), Err(UnknownOperation));
        assert_eq!(finished(b"\r"), Err(UnknownOperation));
        assert_eq!(finished(b"PU"), Err(UnknownOperation));
        assert_eq!(finished(b"PUBfoo 1"), Err(UnknownOperation));
        assert_eq!(finished(b"UNSUB"), Err(UnknownOperation));
        assert_eq!(finished(b"UNSUB\r"), Err(UnknownOperation));
        assert_eq!(finished(b"PINGX"), Err(TrailingJunk));
        assert_eq!(finished(b"PING \r"), Err(TrailingJunk));
    }

    #[test]
    fn unfinished_lines_wait_or_fail_early() {
        let limits = Limits::default();
        assert!(matches!(check(b"PU", false, &limits), Ok(None)));
        assert!(matches!(check(b"PING\r", false, &limits), Ok(None)));
        assert!(matches!(check(b"PUB a\r", false, &limits), Ok(None)));
        assert!(matches!(
            check("PUB é".as_bytes()[..5].as_ref(), false, &limits),
            Ok(None)
        ));
        assert_eq!(
            check(b"XUB", false, &limits).err(),
            Some(ProtocolError::UnknownOperation)
        );
        assert_eq!(
            check(b"PUB a\rb", false, &limits).err(),
            Some(ProtocolError::StrayCarriageReturn)
        );
    }

    #[test]
    fn length_is_measured_on_the_argument() {
        let limits = Limits {
            max_control_line: 8,
            ..Limits::default()
        };
        assert!(check(b"PUB   abcd 123\r", true, &limits).is_ok());
        assert_eq!(
            check(b"PUB abcd 1234", true, &limits).err(),
            Some(ProtocolError::ControlLineTooLong)
        );
        let long_run = [b"SUB".as_ref(), &[b' '; MAX_SEPARATOR_RUN + 1], b"a 1"].concat();
        assert_eq!(
            check(&long_run, true, &limits).err(),
            Some(ProtocolError::ControlLineTooLong)
        );
    }

    #[test]
    fn bytes_outside_the_range_are_found_in_words_and_tails() {
        fn check<const LOW: u8>(specials: &[u8]) {
            for len in 0..20 {
                for at in 0..len {
                    for &special in specials {
                        let mut bytes = vec![b'a'; len];
                        bytes[at] = special;
                        let found = first_byte_outside::<LOW>(&bytes, 0);
                        assert_eq!(found, Some(at), "{LOW:#x}: {len} {at} {special:#x}");
                        // Everything from the first such byte on may be anything.
                        bytes[at..].fill(special);
                        let found = first_byte_outside::<LOW>(&bytes, 0);
                        assert_eq!(found, Some(at), "{LOW:#x}: {len} {at} {special:#x}");
                    }
                }
                let inside: Vec<u8> = (0..len)
                    .map(|i| LOW + (i as u8 * 7) % (0x7f - LOW))
                    .collect();
                assert_eq!(first_byte_outside::<LOW>(&inside, 0), None);
            }
        }
        check::<0x20>(&[0x00, 0x09, 0x0d, 0x1f, 0x7f, 0x80, 0xc3, 0xff]);
        check::<0x21>(&[0x00, 0x09, 0x0d, 0x20, 0x7f, 0x80, 0xc3, 0xff]);
    }

    #[test]
    fn earliest_error_wins() {
        let limits = Limits {
            max_control_line: 4,
            ..Limits::default()
        };
        // Stray \r before the limit is reached.
        assert_eq!(
            check(b"PUB a\rbcdefgh", true, &limits).err(),
            Some(ProtocolError::StrayCarriageReturn)
        );
        // Limit reached before the control byte.
        assert_eq!(
            check(b"PUB abcdefg\x01", true, &limits).err(),
            Some(ProtocolError::ControlLineTooLong)
        );
        assert_eq!(
            check(b"PUB a\xffb 1", true, &limits).err(),
            Some(ProtocolError::InvalidUtf8)
        );
    }
}

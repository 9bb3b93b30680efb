//! Protocol errors and the exact `-ERR` lines nats-server sends.
//!
//! Every text here was checked against nats-server v2.15.1 (reference §4.1). Clients match
//! some of them byte for byte (nats.go extracts the quoted subject of a subscription
//! violation), so they are reproduced exactly, including Go's `%q` quoting of subjects.

use std::fmt;

/// Why a byte stream was refused. After any of these the connection must close.
///
/// Each variant either mirrors a nats-server failure (same error line, or the same silent
/// close) or is a place where natsguard is stricter than the server and fails closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The op name is not one this direction may send (`XYZ`, a leading space, an empty
    /// line, `PUB` without a separator, `MSG` from a client...).
    UnknownOperation,
    /// A PUB/HPUB/MSG/HMSG payload was not followed by exactly `\r\n`.
    BadPayloadTerminator,
    /// The control-line argument is longer than the configured limit.
    ControlLineTooLong,
    /// A PUB/HPUB announced more bytes than the server's `max_payload`.
    PayloadTooLarge { size: u32, max: u32 },
    /// Stricter than nats-server: a `\r` that is not immediately before the line's `\n`
    /// (nats-server then drops an unrelated byte, reference §1.3).
    StrayCarriageReturn,
    /// Stricter than nats-server: a control byte (< 0x20 other than tab, or 0x7f) in a line.
    ControlByte,
    /// Stricter than nats-server: an argument that is not valid UTF-8.
    InvalidUtf8,
    /// Stricter than nats-server: PING/PONG/+OK followed by anything but the line end.
    TrailingJunk,
    /// The op has too few or too many arguments (nats-server closes silently).
    WrongArgumentCount,
    /// A size is not 1 to 9 ASCII digits (nats-server closes silently).
    InvalidSize,
    /// HPUB/HMSG header size larger than the total size (nats-server closes silently).
    HeaderSizeExceedsTotal,
    /// CONNECT or INFO without an argument; nats-server would read on past the line end.
    MissingJson,
    /// CONNECT/INFO JSON that nats-server would not decode, or that natsguard refuses
    /// (duplicate keys); nats-server closes silently.
    InvalidJson(JsonProblem),
    /// A client sent `-ERR`; nats-server logs it and closes silently.
    ErrFromClient,
}

/// What is wrong with a CONNECT or INFO JSON document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonProblem {
    /// Not JSON, truncated, or followed by something other than whitespace.
    Syntax,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// Two keys equal under Go's case folding (Go would let the last one win).
    DuplicateKey,
    /// A known field with a value of the wrong type (e.g. `"verbose":"no"`).
    WrongType(&'static str),
}

impl ProtocolError {
    /// The exact line nats-server sends before closing in the same situation, or `None`
    /// where it closes silently.
    pub fn server_error_line(&self) -> Option<&'static [u8]> {
        match self {
            Self::UnknownOperation
            | Self::BadPayloadTerminator
            | Self::StrayCarriageReturn
            | Self::ControlByte
            | Self::InvalidUtf8
            | Self::TrailingJunk => Some(UNKNOWN_PROTOCOL_OPERATION),
            Self::ControlLineTooLong => Some(MAX_CONTROL_LINE_EXCEEDED),
            Self::PayloadTooLarge { .. } => Some(MAX_PAYLOAD_VIOLATION),
            Self::WrongArgumentCount
            | Self::InvalidSize
            | Self::HeaderSizeExceedsTotal
            | Self::MissingJson
            | Self::InvalidJson(_)
            | Self::ErrFromClient => None,
        }
    }

    /// A short, stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownOperation => "unknown_operation",
            Self::BadPayloadTerminator => "bad_payload_terminator",
            Self::ControlLineTooLong => "control_line_too_long",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::StrayCarriageReturn => "stray_carriage_return",
            Self::ControlByte => "control_byte",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::TrailingJunk => "trailing_junk",
            Self::WrongArgumentCount => "wrong_argument_count",
            Self::InvalidSize => "invalid_size",
            Self::HeaderSizeExceedsTotal => "header_size_exceeds_total",
            Self::MissingJson => "missing_json",
            Self::InvalidJson(JsonProblem::Syntax) => "json_syntax",
            Self::InvalidJson(JsonProblem::NotAnObject) => "json_not_an_object",
            Self::InvalidJson(JsonProblem::DuplicateKey) => "json_duplicate_key",
            Self::InvalidJson(JsonProblem::WrongType(_)) => "json_wrong_type",
            Self::ErrFromClient => "err_from_client",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PayloadTooLarge { size, max } => {
                write!(f, "{}: {size} > {max}", self.reason())
            }
            Self::InvalidJson(JsonProblem::WrongType(field)) => {
                write!(f, "{}: {field}", self.reason())
            }
            _ => f.write_str(self.reason()),
        }
    }
}

impl std::error::Error for ProtocolError {}

pub const UNKNOWN_PROTOCOL_OPERATION: &[u8] = b"-ERR 'Unknown Protocol Operation'\r\n";
/// Lower case, as the server really sends it (the protocol docs say otherwise, §4.3).
pub const MAX_CONTROL_LINE_EXCEEDED: &[u8] = b"-ERR 'maximum control line exceeded'\r\n";
pub const MAX_PAYLOAD_VIOLATION: &[u8] = b"-ERR 'Maximum Payload Violation'\r\n";
pub const AUTHORIZATION_VIOLATION: &[u8] = b"-ERR 'Authorization Violation'\r\n";
pub const AUTHENTICATION_TIMEOUT: &[u8] = b"-ERR 'Authentication Timeout'\r\n";
pub const USER_AUTHENTICATION_EXPIRED: &[u8] = b"-ERR 'User Authentication Expired'\r\n";
pub const ACCOUNT_AUTHENTICATION_EXPIRED: &[u8] = b"-ERR 'Account Authentication Expired'\r\n";
pub const USER_AUTHENTICATION_REVOKED: &[u8] = b"-ERR 'User Authentication Revoked'\r\n";
pub const INVALID_CLIENT_PROTOCOL: &[u8] = b"-ERR 'invalid client protocol'\r\n";
pub const NO_RESPONDERS_REQUIRES_HEADERS: &[u8] =
    b"-ERR 'no responders requires headers support'\r\n";
pub const STALE_CONNECTION: &[u8] = b"-ERR 'Stale Connection'\r\n";
pub const INVALID_SUBJECT: &[u8] = b"-ERR 'Invalid Subject'\r\n";
pub const INVALID_PUBLISH_SUBJECT: &[u8] = b"-ERR 'Invalid Publish Subject'\r\n";
pub const MAX_SUBSCRIPTIONS_EXCEEDED: &[u8] = b"-ERR 'maximum subscriptions exceeded'\r\n";
pub const MAX_CONNECTIONS_EXCEEDED: &[u8] = b"-ERR 'maximum connections exceeded'\r\n";
pub const SECURE_CONNECTION_TLS_REQUIRED: &[u8] = b"-ERR 'Secure Connection - TLS Required'\r\n";

/// `-ERR 'Permissions Violation for Publish to "<subject>"'\r\n`
pub fn publish_violation(subject: &[u8]) -> Vec<u8> {
    let mut text = b"Permissions Violation for Publish to ".to_vec();
    go_quote(subject, &mut text);
    err_line(&text)
}

/// `-ERR 'Permissions Violation for Publish with Reply of "<reply>"'\r\n`
pub fn publish_reply_violation(reply: &[u8]) -> Vec<u8> {
    let mut text = b"Permissions Violation for Publish with Reply of ".to_vec();
    go_quote(reply, &mut text);
    err_line(&text)
}

/// `-ERR 'Permissions Violation for Subscription to "<subject>"[ using queue "<queue>"]'\r\n`
pub fn subscription_violation(subject: &[u8], queue: Option<&[u8]>) -> Vec<u8> {
    let mut text = b"Permissions Violation for Subscription to ".to_vec();
    go_quote(subject, &mut text);
    if let Some(queue) = queue {
        text.extend_from_slice(b" using queue ");
        go_quote(queue, &mut text);
    }
    err_line(&text)
}

/// What nats-server sends for each subscription a configuration reload no longer allows
/// (server/client.go, processSubsOnConfigReload):
/// `-ERR 'Permissions Violation for Subscription to "<subject>"[ using queue "<queue>"] (sid "<sid>")'\r\n`
pub fn reload_subscription_violation(subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) -> Vec<u8> {
    let mut line = subscription_violation(subject, queue);
    // Before the closing `'\r\n`.
    let tail = line.split_off(line.len() - 3);
    line.extend_from_slice(b" (sid ");
    go_quote(sid, &mut line);
    line.push(b')');
    line.extend_from_slice(&tail);
    line
}

/// `-ERR '<text>'\r\n`: nats-server wraps every error text in single quotes.
pub fn err_line(text: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(text.len() + 9);
    line.extend_from_slice(b"-ERR '");
    line.extend_from_slice(text);
    line.extend_from_slice(b"'\r\n");
    line
}

/// Appends `bytes` quoted like Go's `%q` verb (`strconv.Quote`): printable UTF-8 is kept,
/// `"` and `\` are escaped, C escapes for `\a\b\f\n\r\t\v`, `\xNN` for other control and
/// invalid bytes, `\uNNNN`/`\UNNNNNNNN` for non-printable characters.
///
/// Go decides "printable" from Unicode tables; this covers controls, separators, format
/// characters and private use, and treats unassigned code points as printable.
pub fn go_quote(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut rest = bytes;
    while !rest.is_empty() {
        let (valid, invalid) = match std::str::from_utf8(rest) {
            Ok(text) => (text, &[][..]),
            Err(e) => {
                let (valid, tail) = rest.split_at(e.valid_up_to());
                let bad = e.error_len().unwrap_or(tail.len());
                // SAFETY-free: from_utf8 guarantees `valid` is UTF-8.
                (std::str::from_utf8(valid).unwrap_or_default(), &tail[..bad])
            }
        };
        for c in valid.chars() {
            quote_char(c, out);
        }
        for byte in invalid {
            push_hex_escape(b'x', u32::from(*byte), 2, out);
        }
        rest = &rest[valid.len() + invalid.len()..];
    }
    out.push(b'"');
}

fn quote_char(c: char, out: &mut Vec<u8>) {
    let escape = match c {
        '"' => Some(b'"'),
        '\\' => Some(b'\\'),
        '\u{07}' => Some(b'a'),
        '\u{08}' => Some(b'b'),
        '\u{0c}' => Some(b'f'),
        '\n' => Some(b'n'),
        '\r' => Some(b'r'),
        '\t' => Some(b't'),
        '\u{0b}' => Some(b'v'),
        _ => None,
    };
    if let Some(letter) = escape {
        out.extend_from_slice(&[b'\\', letter]);
    } else if is_go_printable(c) {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    } else if (c as u32) < 0x80 {
        push_hex_escape(b'x', c as u32, 2, out);
    } else if (c as u32) < 0x10000 {
        push_hex_escape(b'u', c as u32, 4, out);
    } else {
        push_hex_escape(b'U', c as u32, 8, out);
    }
}

fn push_hex_escape(letter: u8, value: u32, digits: u32, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'\\');
    out.push(letter);
    for shift in (0..digits).rev() {
        out.push(HEX[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and ASCII space.
fn is_go_printable(c: char) -> bool {
    let code = c as u32;
    if code < 0x80 {
        return (0x20..0x7f).contains(&code);
    }
    !matches!(code,
        0x80..=0xa0            // C1 controls, no-break space (Zs)
        | 0xad                 // soft hyphen (Cf)
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2 | 0x180e
        | 0x1680               // ogham space mark (Zs)
        | 0x2000..=0x200f      // spaces and zero-width format characters
        | 0x2028..=0x202f      // line/paragraph separators, bidi controls, narrow nbsp
        | 0x205f..=0x206f      // medium math space, invisible operators, bidi isolates
        | 0x3000               // ideographic space
        | 0xd800..=0xf8ff      // surrogates (unreachable for char) and private use
        | 0xfeff | 0xfff9..=0xfffb
        | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3
        | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f
        | 0xf0000..=0x10ffff) // private use planes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        go_quote(bytes, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        assert_eq!(quoted(b"foo.bar"), r#""foo.bar""#);
        assert_eq!(quoted(b"foo\x0cbar"), r#""foo\fbar""#);
        assert_eq!(quoted(b"\xff\xfe"), r#""\xff\xfe""#);
        assert_eq!(quoted(b"a\"b"), r#""a\"b""#);
        assert_eq!(quoted(b"x\x00y"), r#""x\x00y""#);
        assert_eq!(quoted(b"a\\b\r\n\t\x0b\x07\x08"), r#""a\\b\r\n\t\v\a\b""#);
        assert_eq!(quoted(b"\x7f\x1b"), r#""\x7f\x1b""#);
        assert_eq!(quoted("héllo.日本".as_bytes()), "\"héllo.日本\"");
        assert_eq!(quoted("a\u{a0}b\u{200b}".as_bytes()), r#""a\u00a0b\u200b""#);
        assert_eq!(quoted("\u{f0000}".as_bytes()), r#""\U000f0000""#);
        assert_eq!(quoted("ab\u{e9}".as_bytes()[..3].as_ref()), r#""ab\xc3""#);
    }

    #[test]
    fn violation_lines_are_exact() {
        assert_eq!(
            publish_violation(b"foo.bar"),
            b"-ERR 'Permissions Violation for Publish to \"foo.bar\"'\r\n"
        );
        assert_eq!(
            publish_reply_violation(b"_R_.x"),
            b"-ERR 'Permissions Violation for Publish with Reply of \"_R_.x\"'\r\n"
        );
        assert_eq!(
            subscription_violation(b"a.>", None),
            b"-ERR 'Permissions Violation for Subscription to \"a.>\"'\r\n"
        );
        assert_eq!(
            subscription_violation(b"a.*", Some(b"workers")),
            b"-ERR 'Permissions Violation for Subscription to \"a.*\" using queue \"workers\"'\r\n"
        );
        assert_eq!(
            publish_violation(b"foo\x0cbar"),
            b"-ERR 'Permissions Violation for Publish to \"foo\\fbar\"'\r\n"
        );
        // The reload wording, verified against nats-server 2.15.1 (shared reference, §I3).
        assert_eq!(
            reload_subscription_violation(b"b.>", None, b"2"),
            b"-ERR 'Permissions Violation for Subscription to \"b.>\" (sid \"2\")'\r\n"
        );
        assert_eq!(
            reload_subscription_violation(b"w.*", Some(b"workers"), b"3"),
            b"-ERR 'Permissions Violation for Subscription to \"w.*\" using queue \"workers\" (sid \"3\")'\r\n"
        );
    }

    #[test]
    fn server_error_lines() {
        use ProtocolError::*;
        assert_eq!(
            UnknownOperation.server_error_line(),
            Some(&b"-ERR 'Unknown Protocol Operation'\r\n"[..])
        );
        assert_eq!(
            ControlLineTooLong.server_error_line(),
            Some(&b"-ERR 'maximum control line exceeded'\r\n"[..])
        );
        assert_eq!(
            PayloadTooLarge { size: 2, max: 1 }.server_error_line(),
            Some(&b"-ERR 'Maximum Payload Violation'\r\n"[..])
        );
        for silent in [
            WrongArgumentCount,
            InvalidSize,
            HeaderSizeExceedsTotal,
            MissingJson,
            InvalidJson(JsonProblem::Syntax),
            ErrFromClient,
        ] {
            assert_eq!(silent.server_error_line(), None, "{silent}");
        }
        assert_eq!(
            PayloadTooLarge { size: 2, max: 1 }.to_string(),
            "payload_too_large: 2 > 1"
        );
    }
}

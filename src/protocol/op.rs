//! NATS operations: their fields (borrowed from the control line), how their arguments are
//! read (as nats-server reads them), and their canonical encoding.

use super::error::ProtocolError;

/// (Public only to appear in the sealed [`super::Direction`] trait; not re-exported.)
/// The op names nats-server's parser recognises on client connections, plus the
/// server-to-client ones. Matched case-insensitively, like nats-server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpName {
    Connect,
    Pub,
    HPub,
    Sub,
    Unsub,
    Ping,
    Pong,
    Info,
    Msg,
    HMsg,
    Ok,
    Err,
}

/// What may follow the op name before its argument.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterName {
    /// At least one space or tab (PUB, SUB, MSG, -ERR...).
    Separator,
    /// Optional spaces/tabs; any other byte starts the argument (CONNECT, INFO).
    OptionalSeparator,
    /// Only the line end: natsguard refuses the tail nats-server would ignore (PING...).
    LineEnd,
}

impl OpName {
    pub(crate) fn text(self) -> &'static [u8] {
        match self {
            Self::Connect => b"CONNECT",
            Self::Pub => b"PUB",
            Self::HPub => b"HPUB",
            Self::Sub => b"SUB",
            Self::Unsub => b"UNSUB",
            Self::Ping => b"PING",
            Self::Pong => b"PONG",
            Self::Info => b"INFO",
            Self::Msg => b"MSG",
            Self::HMsg => b"HMSG",
            Self::Ok => b"+OK",
            Self::Err => b"-ERR",
        }
    }

    pub(crate) fn after_name(self) -> AfterName {
        match self {
            Self::Connect | Self::Info => AfterName::OptionalSeparator,
            Self::Ping | Self::Pong | Self::Ok => AfterName::LineEnd,
            _ => AfterName::Separator,
        }
    }
}

/// A client-to-server operation. Fields borrow from the control line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// `CONNECT <json>`: parse the JSON with [`super::Connect::parse`].
    Connect {
        json: &'a str,
    },
    /// `PUB <subject> [reply] <#bytes>`
    Pub {
        subject: &'a str,
        reply: Option<&'a str>,
        payload_len: u32,
    },
    /// `HPUB <subject> [reply] <#header bytes> <#total bytes>`
    HPub {
        subject: &'a str,
        reply: Option<&'a str>,
        header_len: u32,
        total_len: u32,
    },
    /// `SUB <subject> [queue] <sid>`
    Sub {
        subject: &'a str,
        queue: Option<&'a str>,
        sid: &'a str,
    },
    /// `UNSUB <sid> [max_msgs]`; `None` means "now", as nats-server treats an absent or
    /// unparsable max.
    Unsub {
        sid: &'a str,
        max_msgs: Option<u32>,
    },
    Ping,
    Pong,
}

/// A server-to-client operation. Fields borrow from the control line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerOp<'a> {
    /// `INFO <json>`: parse the JSON with [`super::Info::parse`].
    Info {
        json: &'a str,
    },
    /// `MSG <subject> <sid> [reply] <#bytes>`
    Msg {
        subject: &'a str,
        sid: &'a str,
        reply: Option<&'a str>,
        payload_len: u32,
    },
    /// `HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>`
    HMsg {
        subject: &'a str,
        sid: &'a str,
        reply: Option<&'a str>,
        header_len: u32,
        total_len: u32,
    },
    /// `+OK`
    Ok,
    /// `-ERR <text>`; `text` is the raw argument, normally `'...'`.
    Err {
        text: &'a str,
    },
    Ping,
    Pong,
}

/// Where canonical encodings are written: a buffer, or a byte counter used to decide
/// whether a received line was already canonical without writing it anywhere.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts the bytes an encoding would take.
#[derive(Default)]
pub(crate) struct ByteCount(pub(crate) usize);

impl Sink for ByteCount {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Compares an encoding with bytes received, without writing it anywhere.
pub(crate) struct SameAs<'r> {
    expected: &'r [u8],
    equal: bool,
}

impl<'r> SameAs<'r> {
    pub(crate) fn new(expected: &'r [u8]) -> Self {
        Self {
            expected,
            equal: true,
        }
    }

    /// Whether everything put so far is exactly the expected bytes, all of them.
    pub(crate) fn matched(&self) -> bool {
        self.equal && self.expected.is_empty()
    }
}

impl Sink for SameAs<'_> {
    fn put(&mut self, bytes: &[u8]) {
        match self.expected.strip_prefix(bytes) {
            Some(rest) if self.equal => self.expected = rest,
            _ => self.equal = false,
        }
    }
}

/// Behaviour shared by the ops of both directions.
pub trait Operation {
    /// Bytes that follow the control line before the payload's `\r\n` (PUB `#bytes`,
    /// HPUB `#total`...), or `None` for ops without a payload.
    fn payload_len(&self) -> Option<u32>;

    /// Writes the canonical encoding of the control line, `\r\n` included.
    fn encode<S: Sink>(&self, out: &mut S);

    /// Appends the canonical encoding to `out`.
    fn write_canonical(&self, out: &mut Vec<u8>) {
        self.encode(out);
    }

    /// Length of the canonical encoding.
    fn canonical_len(&self) -> usize {
        let mut count = ByteCount::default();
        self.encode(&mut count);
        count.0
    }

    /// Whether `line` (`\n` included) is exactly the canonical encoding.
    fn is_encoded_as(&self, line: &[u8]) -> bool {
        let mut same = SameAs::new(line);
        self.encode(&mut same);
        same.matched()
    }
}

impl Operation for ClientOp<'_> {
    fn payload_len(&self) -> Option<u32> {
        match self {
            Self::Pub { payload_len, .. } => Some(*payload_len),
            Self::HPub { total_len, .. } => Some(*total_len),
            _ => None,
        }
    }

    fn encode<S: Sink>(&self, out: &mut S) {
        match *self {
            Self::Connect { json } => {
                out.put(b"CONNECT ");
                out.put(json.as_bytes());
            }
            Self::Pub {
                subject,
                reply,
                payload_len,
            } => {
                out.put(b"PUB");
                put_fields(out, &[Some(subject), reply]);
                put_size(out, payload_len);
            }
            Self::HPub {
                subject,
                reply,
                header_len,
                total_len,
            } => {
                out.put(b"HPUB");
                put_fields(out, &[Some(subject), reply]);
                put_size(out, header_len);
                put_size(out, total_len);
            }
            Self::Sub {
                subject,
                queue,
                sid,
            } => {
                out.put(b"SUB");
                put_fields(out, &[Some(subject), queue, Some(sid)]);
            }
            Self::Unsub { sid, max_msgs } => {
                out.put(b"UNSUB");
                put_fields(out, &[Some(sid)]);
                if let Some(max) = max_msgs {
                    put_size(out, max);
                }
            }
            Self::Ping => out.put(b"PING"),
            Self::Pong => out.put(b"PONG"),
        }
        out.put(b"\r\n");
    }
}

impl Operation for ServerOp<'_> {
    fn payload_len(&self) -> Option<u32> {
        match self {
            Self::Msg { payload_len, .. } => Some(*payload_len),
            Self::HMsg { total_len, .. } => Some(*total_len),
            _ => None,
        }
    }

    fn encode<S: Sink>(&self, out: &mut S) {
        match *self {
            // nats-server writes a space before the CRLF of INFO (server/util.go).
            Self::Info { json } => {
                out.put(b"INFO ");
                out.put(json.as_bytes());
                out.put(b" ");
            }
            Self::Msg {
                subject,
                sid,
                reply,
                payload_len,
            } => {
                out.put(b"MSG");
                put_fields(out, &[Some(subject), Some(sid), reply]);
                put_size(out, payload_len);
            }
            Self::HMsg {
                subject,
                sid,
                reply,
                header_len,
                total_len,
            } => {
                out.put(b"HMSG");
                put_fields(out, &[Some(subject), Some(sid), reply]);
                put_size(out, header_len);
                put_size(out, total_len);
            }
            Self::Ok => out.put(b"+OK"),
            Self::Err { text } => {
                out.put(b"-ERR ");
                out.put(text.as_bytes());
            }
            Self::Ping => out.put(b"PING"),
            Self::Pong => out.put(b"PONG"),
        }
        out.put(b"\r\n");
    }
}

fn put_fields<S: Sink>(out: &mut S, fields: &[Option<&str>]) {
    for field in fields.iter().flatten() {
        out.put(b" ");
        out.put(field.as_bytes());
    }
}

fn put_size<S: Sink>(out: &mut S, size: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut rest = size;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.put(b" ");
    out.put(&digits[start..]);
}

/// The arguments of a control line, split like nats-server: runs of spaces and tabs
/// separate (the other separators nats-server knows for SUB/UNSUB, `\r` and `\n`, never
/// reach here: a mid-line `\r` is refused and `\n` ends the line).
struct Args<'a, const N: usize> {
    items: [&'a str; N],
    count: usize,
}

impl<'a, const N: usize> Args<'a, N> {
    /// Splits `arg`; more than `N` arguments is always a wrong count.
    fn split(arg: &'a str) -> Result<Self, ProtocolError> {
        let mut args = Self {
            items: [""; N],
            count: 0,
        };
        // Without tabs (the usual case) `split(' ')` finds separators with memchr.
        if memchr::memchr(b'\t', arg.as_bytes()).is_none() {
            arg.split(' ').try_for_each(|token| args.push(token))?;
        } else {
            arg.split([' ', '\t'])
                .try_for_each(|token| args.push(token))?;
        }
        Ok(args)
    }

    /// Adds a token; empty ones are what runs of separators leave between them.
    fn push(&mut self, token: &'a str) -> Result<(), ProtocolError> {
        if token.is_empty() {
            return Ok(());
        }
        if self.count == N {
            return Err(ProtocolError::WrongArgumentCount);
        }
        self.items[self.count] = token;
        self.count += 1;
        Ok(())
    }
}

/// nats-server's parseSize: 1 to 9 ASCII digits, leading zeros allowed.
fn parse_size(token: &str) -> Result<u32, ProtocolError> {
    let digits = token.as_bytes();
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::InvalidSize);
    }
    Ok(digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

fn header_sizes(header: &str, total: &str) -> Result<(u32, u32), ProtocolError> {
    let header_len = parse_size(header)?;
    let total_len = parse_size(total)?;
    if header_len > total_len {
        return Err(ProtocolError::HeaderSizeExceedsTotal);
    }
    Ok((header_len, total_len))
}

/// The JSON argument of CONNECT/INFO: trailing separators are JSON whitespace; an empty
/// argument is refused because nats-server would keep reading past the line end.
fn json_arg(arg: &str) -> Result<&str, ProtocolError> {
    let json = arg.trim_end_matches([' ', '\t']);
    if json.is_empty() {
        return Err(ProtocolError::MissingJson);
    }
    Ok(json)
}

impl<'a> ClientOp<'a> {
    /// Builds the op from its name and argument (already checked for control bytes, UTF-8
    /// and length). Ops a client may not send are refused.
    pub(crate) fn from_parts(name: OpName, arg: &'a str) -> Result<Self, ProtocolError> {
        Ok(match name {
            OpName::Connect => Self::Connect {
                json: json_arg(arg)?,
            },
            OpName::Pub => {
                let args = Args::<3>::split(arg)?;
                match args.count {
                    2 => Self::Pub {
                        subject: args.items[0],
                        reply: None,
                        payload_len: parse_size(args.items[1])?,
                    },
                    3 => Self::Pub {
                        subject: args.items[0],
                        reply: Some(args.items[1]),
                        payload_len: parse_size(args.items[2])?,
                    },
                    _ => return Err(ProtocolError::WrongArgumentCount),
                }
            }
            OpName::HPub => {
                let args = Args::<4>::split(arg)?;
                let (subject, reply, sizes) = match args.count {
                    3 => (args.items[0], None, &args.items[1..3]),
                    4 => (args.items[0], Some(args.items[1]), &args.items[2..4]),
                    _ => return Err(ProtocolError::WrongArgumentCount),
                };
                let (header_len, total_len) = header_sizes(sizes[0], sizes[1])?;
                Self::HPub {
                    subject,
                    reply,
                    header_len,
                    total_len,
                }
            }
            OpName::Sub => {
                let args = Args::<3>::split(arg)?;
                match args.count {
                    2 => Self::Sub {
                        subject: args.items[0],
                        queue: None,
                        sid: args.items[1],
                    },
                    3 => Self::Sub {
                        subject: args.items[0],
                        queue: Some(args.items[1]),
                        sid: args.items[2],
                    },
                    _ => return Err(ProtocolError::WrongArgumentCount),
                }
            }
            OpName::Unsub => {
                let args = Args::<2>::split(arg)?;
                match args.count {
                    1 => Self::Unsub {
                        sid: args.items[0],
                        max_msgs: None,
                    },
                    // nats-server treats an unparsable max as no max: unsubscribe now.
                    2 => Self::Unsub {
                        sid: args.items[0],
                        max_msgs: parse_size(args.items[1]).ok(),
                    },
                    _ => return Err(ProtocolError::WrongArgumentCount),
                }
            }
            OpName::Ping => Self::Ping,
            OpName::Pong => Self::Pong,
            OpName::Err => return Err(ProtocolError::ErrFromClient),
            OpName::Info | OpName::Msg | OpName::HMsg | OpName::Ok => {
                return Err(ProtocolError::UnknownOperation)
            }
        })
    }
}

impl<'a> ServerOp<'a> {
    /// Builds the op from its name and argument. Ops a server does not send are refused.
    pub(crate) fn from_parts(name: OpName, arg: &'a str) -> Result<Self, ProtocolError> {
        Ok(match name {
            OpName::Info => Self::Info {
                json: json_arg(arg)?,
            },
            OpName::Msg => {
                let args = Args::<4>::split(arg)?;
                let (reply, size) = match args.count {
                    3 => (None, args.items[2]),
                    4 => (Some(args.items[2]), args.items[3]),
                    _ => return Err(ProtocolError::WrongArgumentCount),
                };
                Self::Msg {
                    subject: args.items[0],
                    sid: args.items[1],
                    reply,
                    payload_len: parse_size(size)?,
                }
            }
            OpName::HMsg => {
                let args = Args::<5>::split(arg)?;
                let (reply, sizes) = match args.count {
                    4 => (None, &args.items[2..4]),
                    5 => (Some(args.items[2]), &args.items[3..5]),
                    _ => return Err(ProtocolError::WrongArgumentCount),
                };
                let (header_len, total_len) = header_sizes(sizes[0], sizes[1])?;
                Self::HMsg {
                    subject: args.items[0],
                    sid: args.items[1],
                    reply,
                    header_len,
                    total_len,
                }
            }
            OpName::Ok => Self::Ok,
            OpName::Err => Self::Err {
                text: arg.trim_end_matches([' ', '\t']),
            },
            OpName::Ping => Self::Ping,
            OpName::Pong => Self::Pong,
            OpName::Connect | OpName::Pub | OpName::HPub | OpName::Sub | OpName::Unsub => {
                return Err(ProtocolError::UnknownOperation)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical<O: Operation>(op: &O) -> Vec<u8> {
        let mut out = Vec::new();
        op.write_canonical(&mut out);
        assert_eq!(out.len(), op.canonical_len());
        out
    }

    #[test]
    fn sizes_follow_parse_size() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("000000002"), Ok(2));
        assert_eq!(parse_size("999999999"), Ok(999_999_999));
        for bad in ["", "0000000002", "-1", "+2", "1a", " 1", "١"] {
            assert_eq!(parse_size(bad), Err(ProtocolError::InvalidSize), "{bad:?}");
        }
    }

    #[test]
    fn client_ops_encode_canonically() {
        let cases: [(ClientOp, &[u8]); 9] = [
            (ClientOp::Connect { json: "{}" }, b"CONNECT {}\r\n"),
            (
                ClientOp::Pub {
                    subject: "a",
                    reply: None,
                    payload_len: 0,
                },
                b"PUB a 0\r\n",
            ),
            (
                ClientOp::Pub {
                    subject: "a",
                    reply: Some("r"),
                    payload_len: 12,
                },
                b"PUB a r 12\r\n",
            ),
            (
                ClientOp::HPub {
                    subject: "a",
                    reply: Some("r"),
                    header_len: 4,
                    total_len: 10,
                },
                b"HPUB a r 4 10\r\n",
            ),
            (
                ClientOp::Sub {
                    subject: "a.>",
                    queue: Some("q"),
                    sid: "1",
                },
                b"SUB a.> q 1\r\n",
            ),
            (
                ClientOp::Sub {
                    subject: "a",
                    queue: None,
                    sid: "x",
                },
                b"SUB a x\r\n",
            ),
            (
                ClientOp::Unsub {
                    sid: "1",
                    max_msgs: Some(5),
                },
                b"UNSUB 1 5\r\n",
            ),
            (
                ClientOp::Unsub {
                    sid: "1",
                    max_msgs: None,
                },
                b"UNSUB 1\r\n",
            ),
            (ClientOp::Ping, b"PING\r\n"),
        ];
        for (op, expected) in cases {
            assert_eq!(canonical(&op), expected);
        }
    }

    #[test]
    fn server_ops_encode_canonically() {
        let cases: [(ServerOp, &[u8]); 6] = [
            (ServerOp::Info { json: "{}" }, b"INFO {} \r\n"),
            (
                ServerOp::Msg {
                    subject: "a",
                    sid: "1",
                    reply: None,
                    payload_len: 3,
                },
                b"MSG a 1 3\r\n",
            ),
            (
                ServerOp::HMsg {
                    subject: "a",
                    sid: "1",
                    reply: Some("r"),
                    header_len: 2,
                    total_len: 3,
                },
                b"HMSG a 1 r 2 3\r\n",
            ),
            (ServerOp::Ok, b"+OK\r\n"),
            (
                ServerOp::Err {
                    text: "'Stale Connection'",
                },
                b"-ERR 'Stale Connection'\r\n",
            ),
            (ServerOp::Pong, b"PONG\r\n"),
        ];
        for (op, expected) in cases {
            assert_eq!(canonical(&op), expected);
        }
    }

    #[test]
    fn argument_counts() {
        use ProtocolError::WrongArgumentCount as Wrong;
        assert_eq!(ClientOp::from_parts(OpName::Pub, "a"), Err(Wrong));
        assert_eq!(ClientOp::from_parts(OpName::Pub, "a b c 2"), Err(Wrong));
        assert_eq!(ClientOp::from_parts(OpName::HPub, "a 1"), Err(Wrong));
        assert_eq!(ClientOp::from_parts(OpName::HPub, "a b c 1 2"), Err(Wrong));
        assert_eq!(ClientOp::from_parts(OpName::Sub, "a"), Err(Wrong));
        assert_eq!(ClientOp::from_parts(OpName::Sub, "a b c d"), Err(Wrong));
        assert_eq!(ClientOp::from_parts(OpName::Unsub, "1 2 3"), Err(Wrong));
        assert_eq!(ServerOp::from_parts(OpName::Msg, "a 1"), Err(Wrong));
        assert_eq!(
            ServerOp::from_parts(OpName::HMsg, "a 1 r 2 3 4"),
            Err(Wrong)
        );
    }

    #[test]
    fn unsub_with_unparsable_max_means_now() {
        assert_eq!(
            ClientOp::from_parts(OpName::Unsub, "2 abc"),
            Ok(ClientOp::Unsub {
                sid: "2",
                max_msgs: None
            })
        );
        assert_eq!(
            ClientOp::from_parts(OpName::Unsub, "2 007"),
            Ok(ClientOp::Unsub {
                sid: "2",
                max_msgs: Some(7)
            })
        );
    }

    #[test]
    fn header_size_must_not_exceed_total() {
        assert_eq!(
            ClientOp::from_parts(OpName::HPub, "foo 5 3"),
            Err(ProtocolError::HeaderSizeExceedsTotal)
        );
        assert_eq!(
            ServerOp::from_parts(OpName::HMsg, "foo 1 5 3"),
            Err(ProtocolError::HeaderSizeExceedsTotal)
        );
    }

    #[test]
    fn ops_from_the_wrong_direction_are_refused() {
        assert_eq!(
            ClientOp::from_parts(OpName::Msg, "a 1 2"),
            Err(ProtocolError::UnknownOperation)
        );
        assert_eq!(
            ClientOp::from_parts(OpName::HMsg, "a 1 2 3"),
            Err(ProtocolError::UnknownOperation)
        );
        assert_eq!(
            ClientOp::from_parts(OpName::Info, "{}"),
            Err(ProtocolError::UnknownOperation)
        );
        assert_eq!(
            ClientOp::from_parts(OpName::Err, "'x'"),
            Err(ProtocolError::ErrFromClient)
        );
        assert_eq!(
            ServerOp::from_parts(OpName::Pub, "a 1"),
            Err(ProtocolError::UnknownOperation)
        );
    }
}

//! Differential test against a real nats-server (v2.15.1 from `.venv`).
//!
//! Each case is a client byte stream, odd but legal or illegal. It is sent as is to
//! nats-server, and natsguard's `ClientParser` reads it. Then:
//! - if natsguard accepts it, the stream natsguard would forward (every control line
//!   re-encoded canonically, payloads as read) must make nats-server do exactly what the
//!   raw stream did: same deliveries to an observer subscribed to `>`, same messages and
//!   errors on the connection itself, same close. And what natsguard read as PUB/HPUB must
//!   be what the observer received. So natsguard never reads a frame differently;
//! - if natsguard refuses it (fails closed), what it read before refusing must be a prefix
//!   of what nats-server did, and where nats-server closed too, natsguard's error line is
//!   the one nats-server sent (or none for a silent close).
//!
//! The expected verdict of each case is in the table, so a change of behaviour shows up as
//! a named case.

mod support;

use natsguard::protocol::{ClientItem, ClientOp, ClientParser, Connect, Limits, Operation};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// What natsguard must make of a case.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Verdict {
    /// Read, and read exactly as nats-server reads it.
    Accept,
    /// Refused with this `ProtocolError::reason()`, as nats-server refuses it: where
    /// nats-server closes, natsguard's error line is the one it sends (or none).
    Refuse(&'static str),
    /// Refused with this reason where nats-server accepts the bytes or reads them in a way a
    /// proxy cannot share; natsguard fails closed.
    Stricter(&'static str),
}
use Verdict::{Accept, Refuse, Stricter};

/// The CONNECT sent before each case, unless the case brings its own.
const CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n";

struct Case {
    name: &'static str,
    /// Whether the case starts with its own CONNECT.
    own_connect: bool,
    bytes: Vec<u8>,
    verdict: Verdict,
}

fn case(name: &'static str, bytes: impl AsRef<[u8]>, verdict: Verdict) -> Case {
    Case {
        name,
        own_connect: false,
        bytes: bytes.as_ref().to_vec(),
        verdict,
    }
}

fn connect_case(name: &'static str, bytes: impl AsRef<[u8]>, verdict: Verdict) -> Case {
    Case {
        name,
        own_connect: true,
        bytes: bytes.as_ref().to_vec(),
        verdict,
    }
}

fn cases() -> Vec<Case> {
    let long_subject = |len: usize| "s".repeat(len);
    vec![
        // Canonical and lenient forms nats-server accepts: natsguard reads them identically.
        case("pub canonical", "PUB d.pub 2\r\nhi\r\n", Accept),
        case("pub lower case", "pub d.lower 2\r\nhi\r\n", Accept),
        case("pub mixed case", "pUb d.mixed 2\r\nhi\r\n", Accept),
        case("pub tabs", "PUB\td.tabs\t2\r\nhi\r\n", Accept),
        case("pub repeated spaces", "PUB   d.spaces    2\r\nhi\r\n", Accept),
        case("pub trailing space", "PUB d.trail 2 \r\nhi\r\n", Accept),
        case("pub trailing tab", "PUB d.trailtab 2\t\r\nhi\r\n", Accept),
        case("pub bare LF", "PUB d.lf 2\nhi\r\n", Accept),
        case("pub leading zeros", "PUB d.zeros 000000002\r\nhi\r\n", Accept),
        case("pub reply", "PUB d.reply r.x 2\r\nhi\r\n", Accept),
        case("pub reply mixed separators", "PUB \t d.mixsep \t r.y \t 2 \t\r\nhi\r\n", Accept),
        case("pub zero payload", "PUB d.empty 0\r\n\r\n", Accept),
        case("pub payload with CRLF", "PUB d.crlf 6\r\na\r\nb\r\n\r\n", Accept),
        case("pub binary payload", b"PUB d.bin 4\r\n\x00\xff\r\x01\r\n", Accept),
        case("pub wildcard subject", "PUB d.* 1\r\nx\r\n", Accept),
        case("pub non-ascii subject", "PUB d.héllo.日本 1\r\nx\r\n", Accept),
        case("pub two in a row", "PUB d.a 1\r\nx\r\npub d.b 1\ny\r\n", Accept),
        case("pub max payload", [b"PUB d.max 1048576\r\n".as_ref(), &vec![b'x'; 1 << 20], b"\r\n"].concat(), Accept),
        case("pub control line at limit", format!("PUB {} 1\r\nx\r\n", long_subject(4094)), Accept),
        case("hpub canonical", "HPUB d.h 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", Accept),
        case("hpub lower case with reply", "hpub d.h2 r.h 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", Accept),
        case("hpub header size zero", "HPUB d.h0 0 2\r\nhi\r\n", Accept),
        case("hpub header not NATS/1.0", "HPUB d.h3 3 5\r\nabcde\r\n", Accept),
        case("hpub header equals total", "HPUB d.h4 4 4\r\nab\r\n\r\n", Accept),
        case("hpub leading zeros", "HPUB d.h5 0012 00014\r\nNATS/1.0\r\n\r\nhi\r\n", Accept),
        case("hpub status line forged", "HPUB d.h6 18 18\r\nNATS/1.0 503 x\r\n\r\n\r\n", Accept),
        case("sub lower case bare LF", "sub d.s1 1\nPUB d.s1 1\r\nx\r\n", Accept),
        case("sub tabs and queue", "SUB\t \td.s2 \t grp \t 7 \t\r\nPUB d.s2 1\r\nx\r\n", Accept),
        case("sub non-numeric sid", "SUB d.s3 abc\r\nPUB d.s3 1\r\nx\r\n", Accept),
        case("sub duplicate sid ignored", "SUB d.s4a 1\r\nSUB d.s4b 1\r\nPUB d.s4b 1\r\nx\r\nPUB d.s4a 1\r\ny\r\n", Accept),
        case("sub invalid subject", "SUB d..s5 1\r\nPUB d.s5 1\r\nx\r\n", Accept),
        case("unsub unparsable max", "SUB d.u1 1\r\nUNSUB 1 abc\r\nPUB d.u1 1\r\nx\r\n", Accept),
        case("unsub max leading zeros", "SUB d.u2 1\r\nUNSUB 1 002\r\nPUB d.u2 1\r\na\r\nPUB d.u2 1\r\nb\r\nPUB d.u2 1\r\nc\r\n", Accept),
        case("unsub max zero", "SUB d.u3 1\r\nUNSUB 1 0\r\nPUB d.u3 1\r\nx\r\n", Accept),
        case("unsub lower case tabs", "SUB d.u4 9\r\nunsub\t9\nPUB d.u4 1\r\nx\r\n", Accept),
        case("unsub unknown sid", "UNSUB 99\r\nPUB d.u5 1\r\nx\r\n", Accept),
        case("ping lower case", "ping\r\nPUB d.p1 1\r\nx\r\n", Accept),
        case("ping bare LF", "PING\nPUB d.p2 1\r\nx\r\n", Accept),
        case("pong", "pong\r\nPONG\nPUB d.p3 1\r\nx\r\n", Accept),
        connect_case("connect without space", "CONNECT{\"verbose\":false,\"pedantic\":false}\r\nPUB d.c1 1\r\nx\r\n", Accept),
        connect_case("connect lower case tabs", "connect\t {\"verbose\":false} \t\r\nPUB d.c2 1\r\nx\r\n", Accept),
        connect_case("connect upper-case keys", "CONNECT {\"VERBOSE\":false,\"Pedantic\":false}\r\nPUB d.c3 1\r\nx\r\n", Accept),
        connect_case("connect escapes", "CONNECT {\"verbose\":false,\"name\":\"\\u0061pp\"}\r\nPUB d.c4 1\r\nx\r\n", Accept),
        connect_case("connect bare LF", "CONNECT {\"verbose\":false}\nPUB d.c5 1\r\nx\r\n", Accept),
        connect_case("hpub without headers", "CONNECT {\"verbose\":false}\r\nHPUB d.c6 0 1\r\nx\r\n", Accept),
        connect_case("connect unknown keys kept", "CONNECT {\"verbose\":false,\"zzz\":[1,{\"a\":2}]}\r\nPUB d.c7 1\r\nx\r\n", Accept),
        // Forms nats-server accepts but reads in a way a proxy cannot safely share: refused.
        case("stray CR shortens size", [b"PUB d.r1 bar\r 55\n".as_ref(), &[b'y'; 50], b"\r\n"].concat(), Stricter("stray_carriage_return")),
        case("stray CR in sub", "SUB d.r2\rbar 77\n", Stricter("stray_carriage_return")),
        case("stray CR before size tail", "PUB d.r3 2\rX\n", Stricter("stray_carriage_return")),
        case("double CR", "PUB d.r4 2\r\r\nhi\r\n", Stricter("stray_carriage_return")),
        case("form feed in subject", b"SUB d.r5\x0cbar 1\r\n", Stricter("control_byte")),
        case("NUL in subject", b"PUB d.r6\x00bar 1\r\nx\r\n", Stricter("control_byte")),
        case("DEL in subject", b"PUB d.r7\x7f 1\r\nx\r\n", Stricter("control_byte")),
        case("invalid UTF-8 subject", b"PUB d.r8\xff 1\r\nx\r\n", Stricter("invalid_utf8")),
        case("ping with tail", "PINGXYZ\r\nPUB d.r9 1\r\nx\r\n", Stricter("trailing_junk")),
        case("ping with args", "PING foo bar\r\n", Stricter("trailing_junk")),
        case("ping hiding a pub", "PING PUB d.r10 2\r\n", Stricter("trailing_junk")),
        case("pong with tail", "PONGabc\r\n", Stricter("trailing_junk")),
        case("ping trailing space", "PING \r\n", Stricter("trailing_junk")),
        case("info from client", "INFO {}\r\nPUB d.r11 1\r\nx\r\n", Stricter("unknown_operation")),
        case("+OK from client", "+OK\r\nPUB d.r12 1\r\nx\r\n", Stricter("unknown_operation")),
        case("hmsg from client", "HMSG d.r13 1 0 0\r\n\r\n", Stricter("unknown_operation")),
        connect_case("connect LF before json", "CONNECT\n{\"verbose\":false}\r\nPUB d.r14 1\r\nx\r\n", Stricter("missing_json")),
        connect_case("connect duplicate keys", "CONNECT {\"verbose\":true,\"verbose\":false}\r\nPUB d.r15 1\r\nx\r\n", Stricter("json_duplicate_key")),
        connect_case("connect case-variant keys", "CONNECT {\"verbose\":true,\"VERBOSE\":false}\r\nPUB d.r16 1\r\nx\r\n", Stricter("json_duplicate_key")),
        // Refused by both, the same way.
        case("leading space", " PUB d.e1 1\r\nx\r\n", Refuse("unknown_operation")),
        case("empty line CRLF", "\r\nPING\r\n", Refuse("unknown_operation")),
        case("empty line LF", "\nPING\r\n", Refuse("unknown_operation")),
        case("unknown op", "XYZ\r\n", Refuse("unknown_operation")),
        case("pub without separator", "PUBd.e2 2\r\nhi\r\n", Refuse("unknown_operation")),
        case("unsub without argument", "UNSUB\r\n", Refuse("unknown_operation")),
        case("msg from client", "MSG d.e3 1 1\r\nx\r\n", Refuse("unknown_operation")),
        case("payload without terminator", "PUB d.e4 2\r\nhiPING\r\n", Refuse("bad_payload_terminator")),
        case("payload LF terminator", "PUB d.e5 2\r\nhi\nPING\r\n", Refuse("bad_payload_terminator")),
        case("payload too long", "PUB d.e6 2\r\nhix\r\n", Refuse("bad_payload_terminator")),
        case("pub too many args", "PUB a b c 2\r\n", Refuse("wrong_argument_count")),
        case("pub too few args", "PUB d.e7\r\n", Refuse("wrong_argument_count")),
        case("sub too few args", "SUB d.e8\r\n", Refuse("wrong_argument_count")),
        case("sub too many args", "SUB a b c d\r\n", Refuse("wrong_argument_count")),
        case("unsub empty argument", "UNSUB \r\n", Refuse("wrong_argument_count")),
        case("hpub too few args", "HPUB d.e9 2\r\nhi\r\n", Refuse("wrong_argument_count")),
        case("size negative", "PUB d.e10 -1\r\n", Refuse("invalid_size")),
        case("size with plus", "PUB d.e11 +2\r\nhi\r\n", Refuse("invalid_size")),
        case("size ten digits", "PUB d.e12 0000000002\r\nhi\r\n", Refuse("invalid_size")),
        case("size with junk", "PUB d.e13 2x\r\nhi\r\n", Refuse("invalid_size")),
        case("hpub header size junk", "HPUB d.e14 x 3\r\nabc\r\n", Refuse("invalid_size")),
        case("hpub header larger than total", "HPUB d.e15 5 3\r\nabc\r\n", Refuse("header_size_exceeds_total")),
        case("max payload exceeded", "PUB d.e16 1048577\r\n", Refuse("payload_too_large")),
        case("hpub total exceeds max payload", "HPUB d.e17 2 1048577\r\n", Refuse("payload_too_large")),
        case("control line over limit", format!("PUB {} 1\r\nx\r\n", long_subject(4095)), Refuse("control_line_too_long")),
        case("endless control line", format!("SUB {}", long_subject(6000)), Refuse("control_line_too_long")),
        case("err from client", "-ERR 'boom'\r\n", Refuse("err_from_client")),
        connect_case("connect CR before json", "CONNECT\r\n{\"verbose\":false}\r\n", Refuse("missing_json")),
        connect_case("connect wrong type", "CONNECT {\"verbose\":\"no\"}\r\nPUB d.e18 1\r\nx\r\n", Refuse("json_wrong_type")),
        connect_case("connect trailing garbage", "CONNECT {\"verbose\":false} x\r\nPUB d.e19 1\r\nx\r\n", Refuse("json_syntax")),
        connect_case("connect truncated json", "CONNECT {\"verbose\":false\r\nPUB d.e20 1\r\nx\r\n", Refuse("json_syntax")),
    ]
}

// ---------------------------------------------------------------------------------------
// nats-server and raw connections

/// A message delivered to a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Delivery {
    subject: String,
    /// Only for messages on the case's own connection (the observer's sid is fixed).
    sid: Option<String>,
    reply: Option<String>,
    header: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// What nats-server did with a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Outcome {
    observed: Vec<Delivery>,
    own: Vec<Delivery>,
    errors: Vec<String>,
    closed: bool,
}

/// A raw client connection. The server's side is read by a small reader of its own (not
/// natsguard's parser): nats-server echoes subjects natsguard would refuse, e.g. with `\r`.
struct Conn {
    stream: TcpStream,
    /// Received bytes not yet consumed.
    inbox: Vec<u8>,
}

enum Event {
    Delivery(Delivery),
    Error(String),
    Info,
    Pong,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut conn = Conn {
            stream,
            inbox: Vec::new(),
        };
        let (_, got_info, _) =
            conn.read_until(Duration::from_secs(5), |e| matches!(e, Event::Info));
        assert!(got_info, "no INFO");
        conn
    }

    /// The next complete event in the inbox, if any. nats-server writes single spaces and
    /// CRLF; only the subject and reply can hold odd bytes (never `\n` or a space).
    fn next_event(&mut self) -> Option<Event> {
        let newline = self.inbox.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&self.inbox[..newline])
            .trim_end_matches('\r')
            .to_owned();
        let fields: Vec<&str> = line.split(' ').collect();
        let (event, consumed) = match fields[0] {
            "MSG" | "HMSG" => {
                let headers = fields[0] == "HMSG";
                let sizes = if headers { 2 } else { 1 };
                let (names, numbers) = fields[1..].split_at(fields.len() - 1 - sizes);
                let numbers: Vec<usize> =
                    numbers.iter().map(|n| n.parse().expect("size")).collect();
                let total = *numbers.last().expect("size");
                let start = newline + 1;
                if self.inbox.len() < start + total + 2 {
                    return None;
                }
                let body = &self.inbox[start..start + total];
                let header_len = if headers { numbers[0] } else { 0 };
                let delivery = Delivery {
                    subject: names[0].to_owned(),
                    sid: Some(names[1].to_owned()),
                    reply: names.get(2).map(|r| (*r).to_owned()),
                    header: headers.then(|| body[..header_len].to_vec()),
                    payload: body[header_len..].to_vec(),
                };
                (Event::Delivery(delivery), start + total + 2)
            }
            "-ERR" => (Event::Error(line["-ERR ".len()..].to_owned()), newline + 1),
            "INFO" => (Event::Info, newline + 1),
            "PONG" => (Event::Pong, newline + 1),
            _ => (Event::Info, newline + 1), // PING, +OK: nothing to record
        };
        self.inbox.drain(..consumed);
        Some(event)
    }

    /// Reads events until `stop` returns true (→ `.1`), EOF (→ `.2`) or the deadline.
    fn read_until(
        &mut self,
        timeout: Duration,
        stop: impl Fn(&Event) -> bool,
    ) -> (Vec<Event>, bool, bool) {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(event) = self.next_event() {
                let done = stop(&event);
                events.push(event);
                if done {
                    return (events, true, false);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return (events, false, false);
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .expect("timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return (events, false, true),
                Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return (events, false, false)
                }
                Err(_) => return (events, false, true),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // The server may close while we write; what it did is what we read next.
        let _ = self.stream.write_all(bytes);
    }
}

struct Harness {
    server: support::NatsServer,
    observer: Conn,
}

impl Harness {
    fn new() -> Harness {
        let server = support::NatsServer::start(None);
        let mut observer = Conn::open(server.port);
        observer.send(CONNECT);
        observer.send(b"SUB > 1\r\nPING\r\n");
        let (_, ponged, _) =
            observer.read_until(Duration::from_secs(5), |e| matches!(e, Event::Pong));
        assert!(ponged, "observer not ready");
        Harness { server, observer }
    }

    /// Sends `stream` on a fresh connection followed by a PING, and reports what the
    /// server did.
    fn run(&mut self, stream: &[u8]) -> Outcome {
        let mut conn = Conn::open(self.server.port);
        conn.send(stream);
        conn.send(b"PING\r\n");
        // nats-server either answers the PING or closes; the bound only matters on a loaded
        // machine, where a short one would read a slow answer as no answer.
        let (events, _, closed) =
            conn.read_until(Duration::from_secs(5), |e| matches!(e, Event::Pong));
        let _ = conn.stream.shutdown(Shutdown::Both);
        let mut outcome = Outcome {
            closed,
            ..Outcome::default()
        };
        for event in events {
            match event {
                Event::Delivery(delivery) => outcome.own.push(delivery),
                Event::Error(text) => outcome.errors.push(text),
                Event::Pong | Event::Info => {}
            }
        }
        // Everything the connection published is queued to the observer before this PONG.
        self.observer.send(b"PING\r\n");
        let (events, ponged, _) = self
            .observer
            .read_until(Duration::from_secs(5), |e| matches!(e, Event::Pong));
        assert!(ponged, "observer lost");
        for event in events {
            if let Event::Delivery(delivery) = event {
                outcome.observed.push(Delivery {
                    sid: None,
                    ..delivery
                });
            }
        }
        outcome
    }
}

// ---------------------------------------------------------------------------------------
// natsguard's reading

struct Reading {
    /// What natsguard would forward: canonical control lines and the payloads as read.
    forwarded: Vec<u8>,
    /// The PUB/HPUB frames as the observer should receive them.
    published: Vec<Delivery>,
    refusal: Option<natsguard::protocol::ProtocolError>,
}

fn read_with_natsguard(stream: &[u8]) -> Reading {
    let mut parser = ClientParser::new(Limits::default());
    let mut reading = Reading {
        forwarded: Vec::new(),
        published: Vec::new(),
        refusal: None,
    };
    let mut pending: Option<(Delivery, usize)> = None;
    let mut items = parser.feed(stream);
    while let Some(item) = items.next() {
        match item {
            ClientItem::ControlLine(line) => {
                if let ClientOp::Connect { json } = line.op {
                    // The engine parses CONNECT before forwarding it.
                    if let Err(error) = Connect::parse(json) {
                        reading.refusal = Some(error);
                        break;
                    }
                }
                line.op.write_canonical(&mut reading.forwarded);
                let (subject, reply, header_len) = match line.op {
                    ClientOp::Pub { subject, reply, .. } => (subject, reply, None),
                    // nats-server delivers a header size of 0 as a plain MSG.
                    ClientOp::HPub {
                        subject,
                        reply,
                        header_len,
                        ..
                    } => (
                        subject,
                        reply,
                        Some(header_len as usize).filter(|&len| len > 0),
                    ),
                    _ => continue,
                };
                pending = Some((
                    Delivery {
                        subject: subject.to_owned(),
                        sid: None,
                        reply: reply.map(str::to_owned),
                        header: header_len.map(|_| Vec::new()),
                        payload: Vec::new(),
                    },
                    header_len.unwrap_or(0),
                ));
            }
            ClientItem::Payload(piece) => {
                reading
                    .forwarded
                    .extend_from_slice(&stream[piece.span.clone()]);
                let (delivery, header_left) = pending.as_mut().expect("payload after PUB");
                let data = &stream[piece.data.clone()];
                let in_header = (*header_left).min(data.len());
                if let Some(header) = delivery.header.as_mut() {
                    header.extend_from_slice(&data[..in_header]);
                }
                *header_left -= in_header;
                delivery.payload.extend_from_slice(&data[in_header..]);
                if piece.complete {
                    reading
                        .published
                        .extend(pending.take().map(|(delivery, _)| delivery));
                }
            }
            ClientItem::Partial { span } => reading.forwarded.extend_from_slice(&stream[span]),
            ClientItem::Error { error, .. } => reading.refusal = Some(error),
        }
    }
    reading
}

fn error_text(line: &[u8]) -> String {
    let line = std::str::from_utf8(line).expect("ascii");
    line.trim_start_matches("-ERR ").trim_end().to_owned()
}

#[test]
fn natsguard_never_reads_a_frame_differently_from_nats_server() {
    let mut harness = Harness::new();
    let cases = cases();
    assert!(cases.len() >= 60, "keep the corpus broad");
    let mut failures = Vec::new();
    for case in &cases {
        let stream = if case.own_connect {
            case.bytes.clone()
        } else {
            [CONNECT, &case.bytes].concat()
        };
        let raw = harness.run(&stream);
        let reading = read_with_natsguard(&stream);
        let replayed = harness.run(&reading.forwarded);
        let verdict = match (reading.refusal, case.verdict) {
            (None, _) => Accept,
            (Some(error), Stricter(_)) => Stricter(error.reason()),
            (Some(error), _) => Refuse(error.reason()),
        };
        let mut problems = Vec::new();
        if verdict != case.verdict {
            problems.push(format!("verdict {verdict:?}, expected {:?}", case.verdict));
        }
        match reading.refusal {
            None => {
                // Every accepted case publishes: a harness that observes nothing proves nothing.
                if !raw.closed && raw.observed.is_empty() {
                    problems.push("nothing delivered".to_owned());
                }
                if replayed != raw {
                    problems.push(format!(
                        "canonical stream did\n    {replayed:?}\n  raw stream did\n    {raw:?}"
                    ));
                }
                if !raw.closed && reading.published != raw.observed {
                    problems.push(format!(
                        "natsguard read {:?}\n  observer got {:?}",
                        reading.published, raw.observed
                    ));
                }
            }
            Some(error) => {
                let prefix_ok = raw.observed.starts_with(&replayed.observed)
                    && raw.own.starts_with(&replayed.own)
                    && raw.observed.starts_with(&reading.published);
                if !prefix_ok {
                    problems.push(format!(
                        "before refusing, natsguard read {replayed:?}; raw did {raw:?}"
                    ));
                }
                if raw.closed && matches!(case.verdict, Refuse(_)) {
                    let expected = raw.errors.last().cloned();
                    let ours = error.server_error_line().map(error_text);
                    if ours != expected {
                        problems.push(format!(
                            "error line {ours:?}, nats-server sent {expected:?}"
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

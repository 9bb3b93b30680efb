//! Parser tests: every op, field combination and error, fed whole and split.

use super::*;

/// An owned view of one item, with spans made absolute over the whole stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Line {
        op: String,
        start: usize,
        end: usize,
        canonical: bool,
    },
    Data(Vec<u8>),
    Error(ProtocolError),
}

/// Reads the chunks item by item, and again taking whole frames first wherever possible (as the
/// engine does): both readings must be the same.
fn run<D: Direction>(limits: Limits, chunks: &[&[u8]]) -> Vec<Seen> {
    let by_items = read::<D>(limits, chunks, false);
    assert_eq!(
        read::<D>(limits, chunks, true),
        by_items,
        "whole frames read differently"
    );
    by_items
}

fn read<D: Direction>(limits: Limits, chunks: &[&[u8]], whole_frames: bool) -> Vec<Seen> {
    let mut parser = Parser::<D>::new(limits);
    let mut seen = Vec::new();
    let mut offset = 0;
    for chunk in chunks {
        let failed_before = parser.has_failed();
        let mut items = parser.feed(chunk);
        let mut covered = 0;
        loop {
            while let Some(frame) = whole_frames.then(|| items.whole_frame()).flatten() {
                assert_eq!(
                    frame.span.start, covered,
                    "frames must cover the chunk in order"
                );
                covered = frame.span.end;
                seen.push(Seen::Line {
                    op: format!("{:?}", frame.op),
                    start: offset + frame.span.start,
                    end: offset + frame.payload.start,
                    canonical: true,
                });
                assert_eq!(frame.payload.end + 2, frame.span.end);
                seen.push(Seen::Data(chunk[frame.payload].to_vec()));
            }
            let Some(item) = items.next() else { break };
            let span = item.span();
            assert_eq!(span.start, covered, "items must cover the chunk in order");
            covered = span.end;
            match item {
                Item::ControlLine(line) => seen.push(Seen::Line {
                    op: format!("{:?}", line.op),
                    start: offset + span.start - line.carried,
                    end: offset + span.end,
                    canonical: line.canonical,
                }),
                Item::Payload(piece) => {
                    assert!(piece.data.start == span.start && piece.data.end <= span.end);
                    match seen.last_mut() {
                        Some(Seen::Data(data)) => data.extend_from_slice(&chunk[piece.data]),
                        _ => seen.push(Seen::Data(chunk[piece.data].to_vec())),
                    }
                }
                Item::Partial { .. } => {}
                Item::Error { error, .. } => seen.push(Seen::Error(error)),
            }
        }
        if !failed_before {
            assert_eq!(covered, chunk.len(), "items must cover the chunk");
        }
        offset += chunk.len();
    }
    seen
}

fn client(input: &[u8]) -> Vec<Seen> {
    run::<ClientToServer>(Limits::default(), &[input])
}

fn server(input: &[u8]) -> Vec<Seen> {
    run::<ServerToClient>(Limits::default(), &[input])
}

/// The ops read from `input` as debug strings, and the canonical flag of each.
fn client_ops(input: &[u8]) -> Vec<(String, bool)> {
    client(input)
        .into_iter()
        .filter_map(|seen| match seen {
            Seen::Line { op, canonical, .. } => Some((op, canonical)),
            Seen::Data(_) => None,
            Seen::Error(e) => panic!("unexpected error {e} for {input:?}"),
        })
        .collect()
}

fn client_error(input: &[u8]) -> ProtocolError {
    match client(input).pop() {
        Some(Seen::Error(error)) => error,
        other => panic!(
            "expected an error for {:?}, got {other:?}",
            String::from_utf8_lossy(input)
        ),
    }
}

fn server_error(input: &[u8]) -> ProtocolError {
    match server(input).pop() {
        Some(Seen::Error(error)) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn op<O: std::fmt::Debug>(op: O) -> String {
    format!("{op:?}")
}

#[test]
fn canonical_client_ops() {
    let input = b"CONNECT {\"verbose\":false}\r\nPUB a 2\r\nhi\r\nPUB a r 0\r\n\r\n\
HPUB a 2 3\r\nh:x\r\nHPUB a r 0 0\r\n\r\nSUB a 1\r\nSUB a q 2\r\nUNSUB 1\r\nUNSUB 2 10\r\nPING\r\nPONG\r\n";
    let ops = client_ops(input);
    let expected = [
        op(ClientOp::Connect {
            json: "{\"verbose\":false}",
        }),
        op(ClientOp::Pub {
            subject: "a",
            reply: None,
            payload_len: 2,
        }),
        op(ClientOp::Pub {
            subject: "a",
            reply: Some("r"),
            payload_len: 0,
        }),
        op(ClientOp::HPub {
            subject: "a",
            reply: None,
            header_len: 2,
            total_len: 3,
        }),
        op(ClientOp::HPub {
            subject: "a",
            reply: Some("r"),
            header_len: 0,
            total_len: 0,
        }),
        op(ClientOp::Sub {
            subject: "a",
            queue: None,
            sid: "1",
        }),
        op(ClientOp::Sub {
            subject: "a",
            queue: Some("q"),
            sid: "2",
        }),
        op(ClientOp::Unsub {
            sid: "1",
            max_msgs: None,
        }),
        op(ClientOp::Unsub {
            sid: "2",
            max_msgs: Some(10),
        }),
        op(ClientOp::Ping),
        op(ClientOp::Pong),
    ];
    assert_eq!(ops, expected.map(|op| (op, true)).to_vec());
    assert_eq!(client(b"PUB a 2\r\nhi\r\n")[1], Seen::Data(b"hi".to_vec()));
}

#[test]
fn canonical_server_ops() {
    let input = b"INFO {\"max_payload\":1} \r\nMSG a 1 2\r\nhi\r\nMSG a 1 r 0\r\n\r\n\
HMSG a 1 2 3\r\nh:x\r\nHMSG a 1 r 0 0\r\n\r\n+OK\r\n-ERR 'Stale Connection'\r\nPING\r\nPONG\r\n";
    let lines: Vec<_> = server(input)
        .into_iter()
        .filter_map(|seen| match seen {
            Seen::Line { op, canonical, .. } => Some((op, canonical)),
            Seen::Data(_) => None,
            Seen::Error(e) => panic!("{e}"),
        })
        .collect();
    let expected = [
        op(ServerOp::Info {
            json: "{\"max_payload\":1}",
        }),
        op(ServerOp::Msg {
            subject: "a",
            sid: "1",
            reply: None,
            payload_len: 2,
        }),
        op(ServerOp::Msg {
            subject: "a",
            sid: "1",
            reply: Some("r"),
            payload_len: 0,
        }),
        op(ServerOp::HMsg {
            subject: "a",
            sid: "1",
            reply: None,
            header_len: 2,
            total_len: 3,
        }),
        op(ServerOp::HMsg {
            subject: "a",
            sid: "1",
            reply: Some("r"),
            header_len: 0,
            total_len: 0,
        }),
        op(ServerOp::Ok),
        op(ServerOp::Err {
            text: "'Stale Connection'",
        }),
        op(ServerOp::Ping),
        op(ServerOp::Pong),
    ];
    assert_eq!(lines, expected.map(|op| (op, true)).to_vec());
}

#[test]
fn lenient_forms_are_read_like_nats_server_and_marked_non_canonical() {
    let pub_foo = |len| {
        op(ClientOp::Pub {
            subject: "foo.x",
            reply: None,
            payload_len: len,
        })
    };
    let cases: &[(&[u8], String)] = &[
        (b"pub foo.x 2\r\nhi\r\n", pub_foo(2)),
        (b"PUB foo.x 2\nhi\r\n", pub_foo(2)),
        (b"PUB\tfoo.x\t\t2 \r\nhi\r\n", pub_foo(2)),
        (b"PUB  foo.x   2\r\nhi\r\n", pub_foo(2)),
        (b"PUB foo.x 000000002\r\nhi\r\n", pub_foo(2)),
        (b"PUB foo.x 2\t\r\nhi\r\n", pub_foo(2)),
        (
            b"SUB\t \tfoo.x \t 1 \t\r\n",
            op(ClientOp::Sub {
                subject: "foo.x",
                queue: None,
                sid: "1",
            }),
        ),
        (
            b"sub foo.x 1\n",
            op(ClientOp::Sub {
                subject: "foo.x",
                queue: None,
                sid: "1",
            }),
        ),
        (
            b"UNSUB 2 abc\r\n",
            op(ClientOp::Unsub {
                sid: "2",
                max_msgs: None,
            }),
        ),
        (
            b"UNSUB 2 007\r\n",
            op(ClientOp::Unsub {
                sid: "2",
                max_msgs: Some(7),
            }),
        ),
        (b"ping\r\n", op(ClientOp::Ping)),
        (b"PING\n", op(ClientOp::Ping)),
        (b"pong\n", op(ClientOp::Pong)),
        (b"CONNECT{}\r\n", op(ClientOp::Connect { json: "{}" })),
        (b"connect \t {} \r\n", op(ClientOp::Connect { json: "{}" })),
        (
            b"hpub a 1 2\r\nab\r\n",
            op(ClientOp::HPub {
                subject: "a",
                reply: None,
                header_len: 1,
                total_len: 2,
            }),
        ),
    ];
    for (input, expected) in cases {
        let ops = client_ops(input);
        assert_eq!(
            ops,
            vec![(expected.clone(), false)],
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Non-ASCII subjects are accepted (nats-server delivers them) and stay canonical.
    assert_eq!(
        client_ops("SUB héllo.日本 1\r\n".as_bytes()),
        vec![(
            op(ClientOp::Sub {
                subject: "héllo.日本",
                queue: None,
                sid: "1"
            }),
            true
        )]
    );
}

#[test]
fn canonical_rewrite_is_read_back_identically() {
    let lenient: &[&[u8]] = &[
        b"pub foo.x  r 0002\n",
        b"hPub\tfoo r\t01 2  \r\n",
        b"sub foo  q\t1\n",
        b"unsub 1 abc\n",
        b"Connect{\"a\":1}  \n",
    ];
    for input in lenient {
        let mut parser = ClientParser::new(Limits::default());
        let mut items = parser.feed(input);
        let Some(Item::ControlLine(line)) = items.next() else {
            panic!("{input:?}")
        };
        let mut canonical = Vec::new();
        line.op.write_canonical(&mut canonical);
        let mut again = ClientParser::new(Limits::default());
        let mut items = again.feed(&canonical);
        let Some(Item::ControlLine(reread)) = items.next() else {
            panic!("{canonical:?}")
        };
        assert_eq!(reread.op, line.op);
        assert!(
            reread.canonical,
            "{:?}",
            String::from_utf8_lossy(&canonical)
        );
    }
}

#[test]
fn refused_forms() {
    use ProtocolError::*;
    let cases: &[(&[u8], ProtocolError)] = &[
        // nats-server: Unknown Protocol Operation.
        (b" PUB a 1\r\nx\r\n", UnknownOperation),
        (b"\r\n", UnknownOperation),
        (b"\n", UnknownOperation),
        (b"XYZ\r\n", UnknownOperation),
        (b"PUBfoo.x 2\r\nhi\r\n", UnknownOperation),
        (b"UNSUB\r\n", UnknownOperation),
        (b"MSG a 1 2\r\nhi\r\n", UnknownOperation),
        (b"HMSG a 1 0 2\r\nhi\r\n", UnknownOperation),
        (b"INFO {}\r\n", UnknownOperation),
        (b"+OK\r\n", UnknownOperation),
        (b"PUB a 2\r\nhiPING\r\n", BadPayloadTerminator),
        (b"PUB a 2\r\nhi\nPING\r\n", BadPayloadTerminator),
        (b"PUB a 2\r\nhix\r\n", BadPayloadTerminator),
        // nats-server accepts these in a way only it can read: refused.
        (b"PUB foo.x bar\r 55\n", StrayCarriageReturn),
        (b"SUB foo.x\rbar 77\n", StrayCarriageReturn),
        (b"PUB foo.x 2\rX\n", StrayCarriageReturn),
        (b"SUB foo\x0cbar 1\r\n", ControlByte),
        (b"PUB foo\x00bar 0\r\n\r\n", ControlByte),
        (b"SUB foo\x7f 1\r\n", ControlByte),
        (b"SUB foo\xff 1\r\n", InvalidUtf8),
        (b"PINGXYZ\r\n", TrailingJunk),
        (b"PING foo bar\r\n", TrailingJunk),
        (b"PING PUB foo 2\r\n", TrailingJunk),
        (b"PONGabc\r\n", TrailingJunk),
        (b"CONNECT\r\n", MissingJson),
        (b"CONNECT\n{}\r\n", MissingJson),
        (b"CONNECT   \r\n", MissingJson),
        // nats-server closes silently.
        (b"PUB a b c 2\r\n", WrongArgumentCount),
        (b"PUB a\r\n", WrongArgumentCount),
        (b"SUB foo\r\n", WrongArgumentCount),
        (b"SUB a b c d\r\n", WrongArgumentCount),
        (b"UNSUB \r\n", WrongArgumentCount),
        (b"HPUB a 1\r\n", WrongArgumentCount),
        (b"PUB a -1\r\n", InvalidSize),
        (b"PUB a +2\r\n", InvalidSize),
        (b"PUB a 0000000002\r\n", InvalidSize),
        (b"HPUB foo 5 3\r\n", HeaderSizeExceedsTotal),
        (b"-ERR 'x'\r\n", ErrFromClient),
    ];
    for (input, expected) in cases {
        assert_eq!(
            client_error(input),
            *expected,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn server_direction_errors() {
    use ProtocolError::*;
    assert_eq!(server_error(b"PUB a 1\r\n"), UnknownOperation);
    assert_eq!(server_error(b"MSG a 1\r\n"), WrongArgumentCount);
    assert_eq!(server_error(b"HMSG a 1 3 2\r\n"), HeaderSizeExceedsTotal);
    assert_eq!(server_error(b"MSG a 1 2\r\nabc"), BadPayloadTerminator);
    assert_eq!(server_error(b"INFO \r\n"), MissingJson);
    // MSG sizes are not held to max_payload.
    assert!(!server(b"MSG a 1 999999999\r\n")
        .iter()
        .any(|seen| matches!(seen, Seen::Error(_))));
}

#[test]
fn limits() {
    let limits = Limits {
        max_control_line: 10,
        max_connect_line: 20,
        max_payload: 5,
    };
    let run_client = |input: &[u8]| run::<ClientToServer>(limits, &[input]);
    // Argument of exactly 10 bytes passes; 11 fails.
    assert!(matches!(
        run_client(b"SUB abcdef 123\r\n")[0],
        Seen::Line { .. }
    ));
    assert_eq!(
        run_client(b"SUB abcdef 1234\r\n"),
        vec![Seen::Error(ProtocolError::ControlLineTooLong)]
    );
    // CONNECT has its own limit.
    assert!(matches!(
        run_client(b"CONNECT {\"name\":\"abcdefghi\"}\r\n")[0],
        Seen::Line { .. }
    ));
    assert_eq!(
        run_client(b"CONNECT {\"name\":\"abcdefghij\"}\r\n"),
        vec![Seen::Error(ProtocolError::ControlLineTooLong)]
    );
    // An endless line is cut off without waiting for its end.
    let endless = run::<ClientToServer>(limits, &[b"SUB abc", b"defgh", b"ijklmnop"]);
    assert_eq!(
        endless,
        vec![Seen::Error(ProtocolError::ControlLineTooLong)]
    );
    // max_payload is checked on the control line, headers included.
    assert!(matches!(
        run_client(b"PUB a 5\r\n12345\r\n")[0],
        Seen::Line { .. }
    ));
    assert_eq!(
        run_client(b"PUB a 6\r\n"),
        vec![Seen::Error(ProtocolError::PayloadTooLarge {
            size: 6,
            max: 5
        })]
    );
    assert_eq!(
        run_client(b"HPUB a 2 6\r\n"),
        vec![Seen::Error(ProtocolError::PayloadTooLarge {
            size: 6,
            max: 5
        })]
    );
}

#[test]
fn max_payload_can_change_at_runtime() {
    let mut parser = ClientParser::new(Limits::default());
    parser.set_max_payload(3);
    let mut items = parser.feed(b"PUB a 4\r\n");
    assert!(matches!(
        items.next(),
        Some(Item::Error {
            error: ProtocolError::PayloadTooLarge { size: 4, max: 3 },
            ..
        })
    ));
    assert!(items.next().is_none());
    assert!(parser.has_failed());
}

#[test]
fn nothing_after_an_error() {
    let mut parser = ClientParser::new(Limits::default());
    let mut items = parser.feed(b"XYZ\r\nPING\r\n");
    assert!(matches!(items.next(), Some(Item::Error { span, .. }) if span == (0..11)));
    assert!(items.next().is_none());
    assert!(parser.feed(b"PING\r\n").next().is_none());
}

#[test]
fn split_lines_and_payloads() {
    let chunks: &[&[u8]] = &[b"PU", b"B foo.x 5\r", b"\nhe", b"llo\r", b"\nSUB a 1\r\n"];
    let seen = run::<ClientToServer>(Limits::default(), chunks);
    assert_eq!(
        seen,
        vec![
            Seen::Line {
                op: op(ClientOp::Pub {
                    subject: "foo.x",
                    reply: None,
                    payload_len: 5
                }),
                start: 0,
                end: 13,
                canonical: true
            },
            Seen::Data(b"hello".to_vec()),
            Seen::Line {
                op: op(ClientOp::Sub {
                    subject: "a",
                    queue: None,
                    sid: "1"
                }),
                start: 20,
                end: 29,
                canonical: true
            },
        ]
    );
    // A `\r` split from the rest of its line is still refused.
    let split_cr = run::<ClientToServer>(Limits::default(), &[b"SUB fo", b"o.x\rbar 7\n"]);
    assert_eq!(
        split_cr,
        vec![Seen::Error(ProtocolError::StrayCarriageReturn)]
    );
    // A terminator split across chunks, and a bad second byte.
    let bad = run::<ClientToServer>(Limits::default(), &[b"PUB a 1\r\nx\r", b"X"]);
    assert_eq!(
        bad.last(),
        Some(&Seen::Error(ProtocolError::BadPayloadTerminator))
    );
}

#[test]
fn carried_line_reports_its_held_bytes() {
    let mut parser = ClientParser::new(Limits::default());
    let mut items = parser.feed(b"SUB foo");
    assert_eq!(items.next(), Some(Item::Partial { span: 0..7 }));
    assert!(items.next().is_none());
    assert!(!parser.at_op_boundary());
    let mut items = parser.feed(b" 1\r\nPING\r\n");
    let Some(Item::ControlLine(line)) = items.next() else {
        panic!()
    };
    assert_eq!((line.span, line.carried), (0..4, 7));
    assert_eq!(
        line.op,
        ClientOp::Sub {
            subject: "foo",
            queue: None,
            sid: "1"
        }
    );
    assert!(matches!(
        items.next(),
        Some(Item::ControlLine(ControlLine {
            op: ClientOp::Ping,
            ..
        }))
    ));
    assert!(items.next().is_none());
    assert!(parser.at_op_boundary());
}

#[test]
fn large_payload_is_streamed_not_held() {
    let mut parser = ClientParser::new(Limits {
        max_payload: 64 << 20,
        ..Limits::default()
    });
    let mut items = parser.feed(b"PUB big 67108864\r\n");
    assert!(matches!(items.next(), Some(Item::ControlLine(_))));
    let block = vec![b'x'; 1 << 20];
    for _ in 0..64 {
        let mut items = parser.feed(&block);
        let Some(Item::Payload(piece)) = items.next() else {
            panic!()
        };
        assert_eq!(piece.data.len(), block.len());
        assert!(!piece.complete);
    }
    let mut items = parser.feed(b"\r\nPING\r\n");
    assert_eq!(
        items.next(),
        Some(Item::Payload(PayloadPiece {
            span: 0..2,
            data: 0..0,
            complete: true
        }))
    );
    assert!(matches!(items.next(), Some(Item::ControlLine(_))));
}

#[test]
fn every_split_of_a_mixed_stream_reads_the_same() {
    let stream: &[u8] = b"CONNECT {\"verbose\":false}\r\nsub foo.* q 1\nPUB foo.x r 3\r\nabc\r\n\
HPUB foo.y 2 4\r\nh:ab\r\nPING\r\nUNSUB 1 5\r\npong\n";
    let whole = client(stream);
    for i in 0..=stream.len() {
        for j in i..=stream.len() {
            let split = run::<ClientToServer>(
                Limits::default(),
                &[&stream[..i], &stream[i..j], &stream[j..]],
            );
            assert_eq!(split, whole, "split at {i},{j}");
        }
    }
}

#[test]
fn every_split_of_an_invalid_stream_fails_the_same() {
    let streams: &[&[u8]] = &[
        b"PUB a 1\r\nx\r\nSUB a\rb 1\r\n",
        b"PUB a 1\r\nxy\r\n",
        b"SUB \xe6\x97\xa5 1\r\nSUB a\xe6\x97 1\r\n",
        b"PING\r\nPINGX\r\n",
        b"SUB aaaaaaaaaaaaaaaaaaaa\r1\r\n",
    ];
    let limits = Limits {
        max_control_line: 12,
        ..Limits::default()
    };
    for stream in streams {
        let whole = run::<ClientToServer>(limits, &[stream]);
        assert!(matches!(whole.last(), Some(Seen::Error(_))), "{whole:?}");
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let split =
                    run::<ClientToServer>(limits, &[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(
                    split,
                    whole,
                    "{:?} split at {i},{j}",
                    String::from_utf8_lossy(stream)
                );
            }
        }
    }
}

#[test]
fn free_text_arguments_with_tabs_can_be_canonical() {
    // Found by fuzzing: JSON may hold tabs; the canonical encoding keeps them.
    assert_eq!(
        client_ops(b"CONNECT {\"a\":\t1}\r\n"),
        vec![(
            op(ClientOp::Connect {
                json: "{\"a\":\t1}"
            }),
            true
        )]
    );
    assert_eq!(
        client_ops(b"CONNECT {\"a\":\t1}\t\r\n"),
        vec![(
            op(ClientOp::Connect {
                json: "{\"a\":\t1}"
            }),
            false
        )]
    );
    let crash = b"CONNECT {\"verbo\tPUB UB \n\r\tPooB\x01.,\"user\":\"ae,\"u\nPING\r\n~";
    let seen = client(crash);
    assert!(matches!(
        &seen[0],
        Seen::Line {
            canonical: false,
            ..
        }
    ));
    assert_eq!(
        seen.last(),
        Some(&Seen::Error(ProtocolError::UnknownOperation))
    );
}

#[test]
fn same_length_is_not_canonical() {
    // Found by fuzzing: as long as the encoding (`INFO 1 r 5 \r\n`) but not equal to it.
    let seen = server(b"INFO  1 r 5\r\n");
    assert!(
        matches!(
            &seen[0],
            Seen::Line {
                canonical: false,
                ..
            }
        ),
        "{seen:?}"
    );
}

#[test]
fn info_at_the_limit_reads_back_after_canonicalisation() {
    // Found by fuzzing: the canonical `INFO <json> \r\n` adds a space to the argument.
    let limits = Limits {
        max_control_line: 7,
        ..Limits::default()
    };
    for line in [
        &b"INFO {\"a\":1}\r\n"[..],
        b"INFO {\"a\":1} \r\n",
        b"INFO {\"a\":1}  \r\n",
    ] {
        assert!(matches!(
            run::<ServerToClient>(limits, &[line])[0],
            Seen::Line { .. }
        ));
    }
    assert_eq!(
        run::<ServerToClient>(limits, &[b"INFO {\"ab\":1}\r\n"]),
        vec![Seen::Error(ProtocolError::ControlLineTooLong)]
    );
}

#[test]
fn utf8_error_is_positioned_where_it_becomes_certain() {
    // Found by fuzzing: `\xd1` at the limit's position is only invalid once `+` follows, so
    // the limit must win whether or not the line is split just before `+`.
    let stream = b"+OK\r\n-ERR CSINFFO\xd9\x84\xdd\x8cerver\":\"x\",\"am_p52,\"heerver_id\":\"0\",\"maruSSSSSSSSINFO\xd1+\xdd\x8cINFOn\",onnect\xd1ion'\r\nPONG\r\n";
    let limits = Limits {
        max_control_line: 64,
        max_connect_line: 256,
        max_payload: 512,
    };
    let whole = run::<ServerToClient>(limits, &[stream]);
    for i in 0..=stream.len() {
        let split = run::<ServerToClient>(limits, &[&stream[..i], &stream[i..]]);
        assert_eq!(split, whole, "split at {i}");
    }
}

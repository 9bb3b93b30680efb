//! The streaming parser: one per direction, fed chunk by chunk.

use super::error::ProtocolError;
use super::fast;
use super::line;
use super::op::{ClientOp, Operation, ServerOp};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::Range;

/// nats-server's default `max_control_line`.
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;
/// Default limit for CONNECT arguments, which may carry large JWTs.
pub const DEFAULT_MAX_CONNECT_LINE: usize = 64 * 1024;
/// nats-server's default `max_payload` (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;

/// Size limits, measured like nats-server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest control-line argument (bytes after the op name and its separators, without
    /// the line end) for every op but CONNECT. For a [`ServerParser`] use a larger value
    /// than the server's own limit: a MSG line adds the sid to what the publisher sent.
    pub max_control_line: usize,
    /// Longest CONNECT argument.
    pub max_connect_line: usize,
    /// Largest PUB `#bytes` / HPUB `#total` a client may announce (from INFO `max_payload`).
    /// Not applied to MSG/HMSG: the server delivers what other publishers were allowed.
    pub max_payload: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            max_connect_line: DEFAULT_MAX_CONNECT_LINE,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Which way the bytes flow: decides the ops accepted and whether `max_payload` applies.
pub trait Direction {
    type Op<'a>: Operation + Copy + Debug + PartialEq;
    /// Whether a payload larger than [`Limits::max_payload`] is refused.
    const CHECKS_MAX_PAYLOAD: bool;
    #[doc(hidden)]
    fn build_op(name: super::op::OpName, arg: &str) -> Result<Self::Op<'_>, ProtocolError>;
    /// The data-path frames of this direction when their line is whole and canonical.
    #[doc(hidden)]
    fn fast_line(line: &[u8], max_arg: usize) -> Option<(Self::Op<'_>, usize)>;
}

/// Client to server: CONNECT, PUB, HPUB, SUB, UNSUB, PING, PONG.
#[derive(Debug)]
pub enum ClientToServer {}
/// Server to client: INFO, MSG, HMSG, +OK, -ERR, PING, PONG.
#[derive(Debug)]
pub enum ServerToClient {}

impl Direction for ClientToServer {
    type Op<'a> = ClientOp<'a>;
    const CHECKS_MAX_PAYLOAD: bool = true;
    fn build_op(name: super::op::OpName, arg: &str) -> Result<ClientOp<'_>, ProtocolError> {
        ClientOp::from_parts(name, arg)
    }
    #[inline]
    fn fast_line(line: &[u8], max_arg: usize) -> Option<(ClientOp<'_>, usize)> {
        fast::client_line(line, max_arg)
    }
}

impl Direction for ServerToClient {
    type Op<'a> = ServerOp<'a>;
    const CHECKS_MAX_PAYLOAD: bool = false;
    fn build_op(name: super::op::OpName, arg: &str) -> Result<ServerOp<'_>, ProtocolError> {
        ServerOp::from_parts(name, arg)
    }
    #[inline]
    fn fast_line(line: &[u8], max_arg: usize) -> Option<(ServerOp<'_>, usize)> {
        fast::server_line(line, max_arg)
    }
}

pub type ClientParser = Parser<ClientToServer>;
pub type ServerParser = Parser<ServerToClient>;

/// One piece of a chunk. The spans of the items of one chunk cover it exactly, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item<O> {
    /// A complete control line.
    ControlLine(ControlLine<O>),
    /// Bytes of the payload announced by the preceding PUB/HPUB/MSG/HMSG.
    Payload(PayloadPiece),
    /// The chunk ends inside a control line; the parser now holds these bytes.
    Partial { span: Range<usize> },
    /// The stream is invalid from `span.start` on; the connection must close. Nothing
    /// follows.
    Error {
        error: ProtocolError,
        span: Range<usize>,
    },
}

/// A complete control line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlLine<O> {
    /// The op. Its fields borrow from the chunk, or from the parser's holding buffer when
    /// part of the line arrived in earlier chunks (`carried > 0`).
    pub op: O,
    /// The line's bytes in this chunk, `\n` included.
    pub span: Range<usize>,
    /// How many bytes of the line arrived in earlier chunks (and were already reported as
    /// [`Item::Partial`]).
    pub carried: usize,
    /// The raw line is exactly its canonical encoding, so it can be forwarded untouched.
    pub canonical: bool,
}

/// A piece of a payload, possibly with (part of) its `\r\n` terminator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadPiece {
    /// The piece in this chunk: payload bytes, then any terminator bytes.
    pub span: Range<usize>,
    /// The payload bytes only (a prefix of `span`, possibly empty).
    pub data: Range<usize>,
    /// This piece ends the payload, and its `\r\n` was valid.
    pub complete: bool,
}

impl<O> Item<O> {
    /// The bytes of this item in the chunk.
    pub fn span(&self) -> Range<usize> {
        match self {
            Self::ControlLine(line) => line.span.clone(),
            Self::Payload(piece) => piece.span.clone(),
            Self::Partial { span } | Self::Error { span, .. } => span.clone(),
        }
    }
}

pub type ClientItem<'a> = Item<ClientOp<'a>>;
pub type ServerItem<'a> = Item<ServerOp<'a>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between ops or inside a control line (whose start is held).
    Line,
    /// Inside a payload: `data_left` payload bytes, then the rest of `\r\n`.
    Payload {
        data_left: u32,
        terminator_seen: u8,
    },
    /// A payload terminator was wrong; the error is reported at the next item.
    BadTerminator,
    Failed,
}

/// A streaming NATS parser for one direction of one connection.
///
/// Memory: the holding buffer for an unfinished control line, bounded by the limits.
/// Payloads are never buffered.
#[derive(Debug)]
pub struct Parser<D> {
    limits: Limits,
    /// The start of an unfinished control line; after a held line was completed and
    /// reported, the whole line until the next call.
    held: Vec<u8>,
    held_reported: bool,
    state: State,
    direction: PhantomData<fn() -> D>,
}

impl<D: Direction> Parser<D> {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            held: Vec::new(),
            held_reported: false,
            state: State::Line,
            direction: PhantomData,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Applies a new `max_payload` (e.g. from an async INFO) to the following control lines.
    pub fn set_max_payload(&mut self, max_payload: u32) {
        self.limits.max_payload = max_payload;
    }

    /// Applies a new `max_connect_line` (a new configuration) to the following control lines.
    pub fn set_max_connect_line(&mut self, max_connect_line: usize) {
        self.limits.max_connect_line = max_connect_line;
    }

    /// Bytes of an unfinished control line held until its end arrives (bounded by the
    /// limits: about `max(max_control_line, max_connect_line)` plus a few dozen bytes).
    pub fn held_bytes(&self) -> usize {
        if self.held_reported {
            0
        } else {
            self.held.len()
        }
    }

    /// Whether an error was reported; the parser then yields nothing more.
    pub fn has_failed(&self) -> bool {
        matches!(self.state, State::Failed | State::BadTerminator)
    }

    /// Whether the stream is between ops (no unfinished line or payload): a clean place to
    /// inject a frame.
    pub fn at_op_boundary(&self) -> bool {
        self.state == State::Line && (self.held.is_empty() || self.held_reported)
    }

    /// Starts parsing the next chunk. Drain the returned [`Items`] completely before the
    /// next call: items not taken are bytes the parser never saw.
    pub fn feed<'p, 'c>(&'p mut self, chunk: &'c [u8]) -> Items<'p, 'c, D> {
        Items {
            parser: self,
            chunk,
            pos: 0,
        }
    }
}

/// The items of one chunk: a lending iterator (each item may borrow from the parser).
pub struct Items<'p, 'c, D> {
    parser: &'p mut Parser<D>,
    chunk: &'c [u8],
    pos: usize,
}

/// A data-path frame read whole from one chunk by [`Items::whole_frame`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WholeFrame<O> {
    /// The op (PUB/HPUB or MSG/HMSG); its control line was canonical.
    pub op: O,
    /// The whole frame: control line, payload and its `\r\n`.
    pub span: Range<usize>,
    /// The payload bytes (headers first for HPUB/HMSG).
    pub payload: Range<usize>,
}

impl<'c, D: Direction> Items<'_, 'c, D> {
    /// The next frame, when it is a PUB/HPUB (client) or MSG/HMSG (server) whose canonical
    /// control line, payload and terminator are all in this chunk: the data path's common case,
    /// read in one step. `None` leaves the position unchanged; [`Self::next`] then reads
    /// whatever comes (any other op, a frame split across chunks, an error) item by item.
    #[inline]
    pub fn whole_frame(&mut self) -> Option<WholeFrame<D::Op<'c>>> {
        let parser = &mut *self.parser;
        if parser.state != State::Line || (!parser.held.is_empty() && !parser.held_reported) {
            return None;
        }
        let chunk: &'c [u8] = self.chunk;
        let start = self.pos;
        let (op, line_len) = D::fast_line(&chunk[start..], parser.limits.max_control_line)?;
        let payload_len = op.payload_len()?;
        if D::CHECKS_MAX_PAYLOAD && payload_len > parser.limits.max_payload {
            return None;
        }
        let payload_start = start + line_len;
        let payload_end = payload_start.checked_add(payload_len as usize)?;
        if chunk.get(payload_end..payload_end + 2) != Some(b"\r\n") {
            return None;
        }
        if parser.held_reported {
            parser.held.clear();
            parser.held_reported = false;
        }
        self.pos = payload_end + 2;
        Some(WholeFrame {
            op,
            span: start..self.pos,
            payload: payload_start..payload_end,
        })
    }
}

impl<D: Direction> Items<'_, '_, D> {
    /// Whether everything taken so far ends between ops (see [`Parser::at_op_boundary`]): bytes
    /// inserted here cannot split a frame.
    pub fn at_op_boundary(&self) -> bool {
        self.parser.at_op_boundary()
    }

    #[allow(clippy::should_implement_trait)] // a lending iterator cannot implement Iterator
    pub fn next(&mut self) -> Option<Item<D::Op<'_>>> {
        let parser = &mut *self.parser;
        if parser.held_reported {
            parser.held.clear();
            parser.held_reported = false;
        }
        let start = self.pos;
        let end = self.chunk.len();
        match parser.state {
            State::Failed => None,
            State::BadTerminator => Some(self.fail(ProtocolError::BadPayloadTerminator, start)),
            _ if start == end => None,
            State::Payload {
                data_left,
                terminator_seen,
            } => Some(self.payload_piece(data_left, terminator_seen)),
            State::Line => Some(self.control_line()),
        }
    }

    fn fail<'x>(&mut self, error: ProtocolError, start: usize) -> Item<D::Op<'x>> {
        self.parser.state = State::Failed;
        self.pos = self.chunk.len();
        Item::Error {
            error,
            span: start..self.chunk.len(),
        }
    }

    fn payload_piece<'x>(&mut self, data_left: u32, terminator_seen: u8) -> Item<D::Op<'x>> {
        let start = self.pos;
        let take = (data_left as usize).min(self.chunk.len() - start);
        let data = start..start + take;
        let mut pos = data.end;
        let data_left = data_left - take as u32;
        let mut terminator_seen = terminator_seen;
        let mut bad_terminator = false;
        if data_left == 0 {
            while terminator_seen < 2 && pos < self.chunk.len() {
                if self.chunk[pos] != b"\r\n"[usize::from(terminator_seen)] {
                    bad_terminator = true;
                    break;
                }
                pos += 1;
                terminator_seen += 1;
            }
        }
        if bad_terminator && pos == start {
            return self.fail(ProtocolError::BadPayloadTerminator, start);
        }
        self.pos = pos;
        self.parser.state = if bad_terminator {
            State::BadTerminator
        } else if terminator_seen == 2 {
            State::Line
        } else {
            State::Payload {
                data_left,
                terminator_seen,
            }
        };
        Item::Payload(PayloadPiece {
            span: start..pos,
            data,
            complete: !bad_terminator && terminator_seen == 2,
        })
    }

    fn control_line(&mut self) -> Item<D::Op<'_>> {
        let chunk = self.chunk;
        let start = self.pos;
        let rest = &chunk[start..];
        let carried = self.parser.held.len();
        if carried == 0 {
            let Parser { limits, state, .. } = &mut *self.parser;
            if let Some((op, len)) = D::fast_line(rest, limits.max_control_line) {
                let line = ControlLine {
                    op,
                    span: start..start + len,
                    carried: 0,
                    canonical: true,
                };
                return accept_line::<D>(line, limits, state, &mut self.pos, chunk.len());
            }
        }
        let max_held = line::max_held_line(&self.parser.limits);
        let Some(newline) = memchr::memchr(b'\n', rest) else {
            return self.partial_line(max_held);
        };
        let line_end = start + newline + 1;
        if carried + newline > max_held {
            // Certainly too long, but report the earliest error, as for an unfinished line.
            return self.partial_line(max_held);
        }
        let Parser {
            limits,
            held,
            held_reported,
            state,
            ..
        } = &mut *self.parser;
        let raw: &[u8] = if carried == 0 {
            &rest[..=newline]
        } else {
            held.extend_from_slice(&rest[..=newline]);
            *held_reported = true;
            held
        };
        match parse_line::<D>(raw, limits) {
            Ok((op, canonical)) => {
                let line = ControlLine {
                    op,
                    span: start..line_end,
                    carried,
                    canonical,
                };
                accept_line::<D>(line, limits, state, &mut self.pos, chunk.len())
            }
            Err(error) => {
                *state = State::Failed;
                self.pos = chunk.len();
                Item::Error {
                    error,
                    span: start..chunk.len(),
                }
            }
        }
    }

    /// The rest of the chunk (or of the allowed length) continues the held line.
    fn partial_line<'x>(&mut self, max_held: usize) -> Item<D::Op<'x>> {
        let start = self.pos;
        let rest = &self.chunk[start..];
        let parser = &mut *self.parser;
        let room = max_held.saturating_sub(parser.held.len());
        let fits = rest.len() <= room;
        parser.held.extend_from_slice(&rest[..rest.len().min(room)]);
        match line::check(&parser.held, false, &parser.limits) {
            Err(error) => self.fail(error, start),
            // Unreachable by the bound's construction; fail closed all the same.
            Ok(_) if !fits => self.fail(ProtocolError::ControlLineTooLong, start),
            Ok(_) => {
                self.pos = self.chunk.len();
                Item::Partial {
                    span: start..self.chunk.len(),
                }
            }
        }
    }
}

/// A complete control line: its payload (if any) comes next, unless it is over the limit.
fn accept_line<'a, D: Direction>(
    line: ControlLine<D::Op<'a>>,
    limits: &Limits,
    state: &mut State,
    pos: &mut usize,
    chunk_len: usize,
) -> Item<D::Op<'a>> {
    if let Some(len) = line.op.payload_len() {
        if D::CHECKS_MAX_PAYLOAD && len > limits.max_payload {
            *state = State::Failed;
            let span = line.span.start..chunk_len;
            *pos = chunk_len;
            return Item::Error {
                error: ProtocolError::PayloadTooLarge {
                    size: len,
                    max: limits.max_payload,
                },
                span,
            };
        }
        *state = State::Payload {
            data_left: len,
            terminator_seen: 0,
        };
    }
    *pos = line.span.end;
    Item::ControlLine(line)
}

/// Parses a finished line (`\n` included): the op and whether the raw bytes were already
/// canonical.
pub(super) fn parse_line<'a, D: Direction>(
    line: &'a [u8],
    limits: &Limits,
) -> Result<(D::Op<'a>, bool), ProtocolError> {
    let raw = &line[..line.len() - 1];
    let head = line::check(raw, true, limits)?.ok_or(ProtocolError::UnknownOperation)?;
    let arg = std::str::from_utf8(&raw[head.arg]).map_err(|_| ProtocolError::InvalidUtf8)?;
    let op = D::build_op(head.name, arg)?;
    let canonical = op.is_encoded_as(line);
    Ok((op, canonical))
}

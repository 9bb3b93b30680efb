//! Streaming NATS framing for both directions of a connection.
//!
//! # Model
//!
//! A [`Parser`] per direction ([`ClientParser`] for client → server, [`ServerParser`] for
//! server → client) is fed one chunk at a time. [`Parser::feed`] returns [`Items`], a
//! lending iterator; the spans of the items cover the chunk exactly, in order:
//!
//! - [`Item::ControlLine`]: a complete control line with its parsed op ([`ClientOp`] /
//!   [`ServerOp`], fields borrowed), its span in this chunk, how many of its bytes were
//!   carried over from earlier chunks (then the fields borrow from the parser's holding
//!   buffer), and whether its raw bytes are already canonical;
//! - [`Item::Payload`]: payload bytes of the preceding PUB/HPUB/MSG/HMSG and its `\r\n`,
//!   streamed as they arrive, never accumulated;
//! - [`Item::Partial`]: the chunk ends inside a control line (the parser holds those bytes,
//!   at most about the configured limit);
//! - [`Item::Error`]: the stream is invalid; the connection must close, sending
//!   [`ProtocolError::server_error_line`] first if it is `Some`. Nothing follows.
//!
//! ```
//! use natsguard::protocol::{ClientOp, ClientParser, Item, Limits};
//!
//! let mut parser = ClientParser::new(Limits::default());
//! for chunk in [&b"PUB foo 5\r\nhel"[..], b"lo\r\nsub bar 1\r\n"] {
//!     let mut items = parser.feed(chunk);
//!     while let Some(item) = items.next() {
//!         match item {
//!             Item::ControlLine(line) => match line.op {
//!                 ClientOp::Pub { subject, payload_len, .. } => {
//!                     assert_eq!((subject, payload_len), ("foo", 5));
//!                     assert!(line.canonical);
//!                 }
//!                 // Lower case: nats-server accepts it; forward the canonical form instead.
//!                 ClientOp::Sub { subject, .. } => {
//!                     assert_eq!(subject, "bar");
//!                     assert!(!line.canonical);
//!                 }
//!                 _ => unreachable!(),
//!             },
//!             Item::Payload(piece) => assert!(piece.data.len() <= 5),
//!             Item::Partial { .. } => {}
//!             Item::Error { error, .. } => panic!("{error}"),
//!         }
//!     }
//! }
//! ```
//!
//! # Canonical forwarding
//!
//! A line whose `canonical` flag is set (upper-case op, single spaces, plain decimal sizes,
//! CRLF) can be forwarded as is. Any other line nats-server would accept must be replaced by
//! [`Operation::write_canonical`] of its op, so the server can only read it one way. Forms
//! whose reading is ambiguous (a `\r` before the line end, control bytes, PING with a tail,
//! invalid UTF-8) are refused. `docs/protocol.md` lists every leniency and its handling.
//!
//! # What belongs to the caller
//!
//! Connection state is not tracked here: whether CONNECT came first, whether HPUB is allowed
//! (`headers:true`), verbose `+OK`, pedantic subject checks, permissions. CONNECT and INFO
//! JSON are parsed on demand with [`Connect::parse`] and [`Info::parse`].

mod error;
mod fast;
pub mod headers;
mod json;
mod line;
mod op;
mod parser;

pub use error::{
    err_line, go_quote, publish_reply_violation, publish_violation, reload_subscription_violation,
    subscription_violation, JsonProblem, ProtocolError, ACCOUNT_AUTHENTICATION_EXPIRED,
    AUTHENTICATION_TIMEOUT, AUTHORIZATION_VIOLATION, INVALID_CLIENT_PROTOCOL,
    INVALID_PUBLISH_SUBJECT, INVALID_SUBJECT, MAX_CONNECTIONS_EXCEEDED, MAX_CONTROL_LINE_EXCEEDED,
    MAX_PAYLOAD_VIOLATION, MAX_SUBSCRIPTIONS_EXCEEDED, NO_RESPONDERS_REQUIRES_HEADERS,
    SECURE_CONNECTION_TLS_REQUIRED, STALE_CONNECTION, UNKNOWN_PROTOCOL_OPERATION,
    USER_AUTHENTICATION_EXPIRED, USER_AUTHENTICATION_REVOKED,
};
pub use json::{Connect, Info, JsonObject, CREDENTIAL_FIELDS};
pub use op::{ClientOp, Operation, ServerOp, Sink};
pub use parser::{
    ClientItem, ClientParser, ClientToServer, ControlLine, Direction, Item, Items, Limits, Parser,
    PayloadPiece, ServerItem, ServerParser, ServerToClient, WholeFrame, DEFAULT_MAX_CONNECT_LINE,
    DEFAULT_MAX_CONTROL_LINE, DEFAULT_MAX_PAYLOAD,
};

#[cfg(test)]
mod tests;

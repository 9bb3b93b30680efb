//! The per-connection state machine between Envoy and nats-server.
//!
//! Input: a chunk of client→server or server→client bytes and the time; output: what to
//! forward in its place ([`Forward`]), whether to close, and a [`Report`] of counters and audit
//! lines. It owns no Envoy types, so every behaviour is tested on the host; the proxy-wasm glue
//! only moves bytes and applies the verdicts.
//!
//! Replies toward the client can only travel inside server→client chunks (Envoy gives a network
//! filter no way to write to the client from the client-data callback). A denied frame is
//! therefore replaced upstream by `PING`, and the server's matching `PONG` is turned into the
//! `-ERR` nats-server would have sent: the error lands exactly where the server's own reply
//! would have been, after the replies to earlier frames and before those to later ones.

mod audit;
mod output;

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use crate::identity::{AuthOutcome, Authenticator, Identity, ProxySigner, TokenField};
use crate::policy::{ConnectionPermissions, Policy, SubscribeDecision, UpstreamCredentials};
use crate::protocol::{
    publish_violation, subscription_violation, ClientOp, ClientParser, Connect, ControlLine, Info,
    Item, Limits, Operation, ProtocolError, ServerOp, ServerParser, WholeFrame,
    AUTHORIZATION_VIOLATION, USER_AUTHENTICATION_EXPIRED,
};

pub use audit::{AuditEvent, EventKind};
pub use output::Forward;
use output::Rewrite;

/// How long a connection may wait for a provider's first remote JWKS before it is refused.
pub const AWAIT_KEYS_TIMEOUT: Duration = Duration::from_secs(5);
/// Client bytes kept while a connection waits for keys (CONNECT is followed by PING, then the
/// client waits; more than this is not a real client).
pub const MAX_HELD_BYTES: usize = 64 * 1024;
/// Longest server control line natsguard reads: a MSG line carries the publisher's subject and
/// reply (each up to the server's limit) plus the sid, and INFO can list many cluster URLs.
pub const MAX_SERVER_CONTROL_LINE: usize = 64 * 1024;
/// After a token expired, how long to wait for server bytes to carry the `-ERR` before closing
/// without it.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(2);

/// What every connection of a plugin shares: the compiled policy, the authenticator (its
/// remote key sets change at run time) and the trusted-proxy key.
pub struct Gate {
    pub policy: Policy,
    pub authenticator: std::cell::RefCell<Authenticator>,
    pub proxy_signer: Option<ProxySigner>,
}

/// When the connection must close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Close once the bytes forwarded in this callback were written (the close must be
    /// requested from a later callback: a close requested in the same callback loses them).
    AfterWrite,
    /// Close now; nothing more is owed to the client.
    Now,
}

/// The engine's answer for one chunk.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub forward: Forward,
    pub close: Option<Close>,
}

/// Per-frame counters since the last [`Connection::take_report`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub publish_allowed: u64,
    pub publish_denied: u64,
    pub subscribe_allowed: u64,
    pub subscribe_denied: u64,
    pub deliveries_filtered: u64,
}

impl Counters {
    fn plus(&self, other: &Counters) -> Counters {
        Counters {
            publish_allowed: self.publish_allowed + other.publish_allowed,
            publish_denied: self.publish_denied + other.publish_denied,
            subscribe_allowed: self.subscribe_allowed + other.subscribe_allowed,
            subscribe_denied: self.subscribe_denied + other.subscribe_denied,
            deliveries_filtered: self.deliveries_filtered + other.deliveries_filtered,
        }
    }
}

/// What happened since the last [`Connection::take_report`], for metrics and the audit log.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub counters: Counters,
    pub events: Vec<AuditEvent>,
}

/// Who owns the answer to a PING forwarded upstream.
#[derive(Debug, PartialEq, Eq)]
enum PongOwner {
    /// The client's own PING: its PONG passes.
    Client,
    /// A denied frame: its PONG becomes this `-ERR` line.
    Error(Vec<u8>),
    /// A fatal condition: the PONG becomes this line (if any), then the connection closes.
    ErrorThenClose(Option<Vec<u8>>),
}

#[derive(Debug)]
struct Subscription {
    queue: Option<Box<str>>,
    delivered: u32,
    max: Option<u32>,
}

#[derive(Debug)]
enum State {
    /// Nothing but CONNECT is acceptable yet.
    AwaitingConnect,
    /// CONNECT is waiting for a provider's first remote key set.
    AwaitingKeys {
        connect: Box<Connect>,
        since: Duration,
        held: Vec<u8>,
    },
    /// Authenticated: frames are checked against the permissions.
    Established(Box<Session>),
    /// The token expired: the next server bytes carry `User Authentication Expired`.
    Expired { since: Duration },
    /// The connection is being closed: nothing more is forwarded either way.
    Closing,
}

#[derive(Debug)]
struct Session {
    identity: Identity,
    permissions: ConnectionPermissions,
    valid_until: Option<u64>,
    headers: bool,
    /// Live subscriptions by sid, for the delivery filter's queue-group check (kept only when
    /// the permissions have a subscribe deny entry, i.e. when the filter can arm).
    subscriptions: BTreeMap<Box<str>, Subscription>,
}

/// Whether the payload of the frame being streamed is forwarded.
#[derive(Debug, PartialEq, Eq)]
enum PayloadFate {
    Forward,
    Drop,
    /// An HPUB whose header block is still arriving: its line and headers are held.
    Inspect(Box<HeldHeaders>),
}

#[derive(Debug, PartialEq, Eq)]
struct HeldHeaders {
    /// The canonical HPUB line, then the header bytes received so far.
    held: Vec<u8>,
    line_len: usize,
    remaining: usize,
    subject: Box<str>,
}

/// Largest HPUB header block natsguard holds to read `Nats-Trace-Dest` when the block is split
/// across reads (real header blocks are a few hundred bytes).
pub const MAX_HELD_HEADERS: usize = 64 * 1024;

/// One NATS connection through the filter.
pub struct Connection {
    gate: Rc<Gate>,
    state: State,
    client: ClientParser,
    server: ServerParser,
    client_payload: PayloadFate,
    server_payload: PayloadFate,
    pongs: VecDeque<PongOwner>,
    peer_uri_san: Option<String>,
    nonce: Option<String>,
    report: Report,
    totals: Counters,
}

impl Connection {
    pub fn new(gate: Rc<Gate>) -> Connection {
        let limits = Limits {
            max_connect_line: gate.policy.limits().max_connect_line as usize,
            ..Limits::default()
        };
        Connection {
            gate,
            state: State::AwaitingConnect,
            client: ClientParser::new(limits),
            server: ServerParser::new(Limits {
                max_control_line: MAX_SERVER_CONTROL_LINE,
                ..limits
            }),
            client_payload: PayloadFate::Forward,
            server_payload: PayloadFate::Forward,
            pongs: VecDeque::new(),
            peer_uri_san: None,
            nonce: None,
            report: Report::default(),
            totals: Counters::default(),
        }
    }

    /// The first URI SAN of the client's certificate (Envoy knows it once the TLS handshake
    /// finished, i.e. by the client's first bytes).
    pub fn set_peer_uri_san(&mut self, uri_san: Option<String>) {
        self.peer_uri_san = uri_san;
    }

    /// The authenticated identity, once CONNECT was accepted.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.state {
            State::Established(session) => Some(&session.identity),
            _ => None,
        }
    }

    pub fn is_awaiting_keys(&self) -> bool {
        matches!(self.state, State::AwaitingKeys { .. })
    }

    /// Counters and audit events since the last call.
    pub fn take_report(&mut self) -> Report {
        let report = std::mem::take(&mut self.report);
        self.totals = self.totals.plus(&report.counters);
        report
    }

    /// The audit event for the connection's end, with its totals (including counters not yet
    /// taken, which stay in the report for the metrics).
    pub fn connection_end(&self) -> AuditEvent {
        let totals = self.totals.plus(&self.report.counters);
        AuditEvent::connection_end(self.identity(), &totals)
    }

    /// Client → server bytes. `now` is the wall-clock time since the Unix epoch.
    pub fn client_data(&mut self, chunk: &[u8], now: Duration) -> Verdict {
        self.expire_if_due(now);
        match &mut self.state {
            State::Closing => {
                return Verdict {
                    forward: Forward::Replace(Vec::new()),
                    close: None,
                }
            }
            State::Expired { .. } => {
                // Provoke server bytes to carry the -ERR; the client's frames are not executed.
                self.state = State::Closing;
                self.pongs.push_back(PongOwner::ErrorThenClose(Some(
                    USER_AUTHENTICATION_EXPIRED.to_vec(),
                )));
                return Verdict {
                    forward: Forward::Replace(b"PING\r\n".to_vec()),
                    close: None,
                };
            }
            State::AwaitingKeys { held, .. } => {
                if held.len() + chunk.len() > MAX_HELD_BYTES {
                    let mut out = Vec::new();
                    self.refuse(&mut out, "held_bytes_exceeded", None);
                    return Verdict {
                        forward: Forward::Replace(out),
                        close: None,
                    };
                }
                held.extend_from_slice(chunk);
                return Verdict {
                    forward: Forward::Hold,
                    close: None,
                };
            }
            State::AwaitingConnect | State::Established(_) => {}
        }
        // The parser is moved out while its items borrow it, so the handlers can use `self`.
        let placeholder = ClientParser::new(*self.client.limits());
        let mut parser = std::mem::replace(&mut self.client, placeholder);
        let verdict = self.process_client(&mut parser, chunk, now);
        self.client = parser;
        verdict
    }

    /// Retries a connection that waits for keys (after a JWKS update, or on a tick). `None`
    /// while it must keep waiting; otherwise the bytes to send upstream in place of
    /// everything held.
    pub fn resume(&mut self, now: Duration) -> Option<Verdict> {
        let State::AwaitingKeys {
            connect,
            since,
            held,
        } = std::mem::replace(&mut self.state, State::AwaitingConnect)
        else {
            return None;
        };
        let mut out = Vec::new();
        match self.authenticate(*connect, now, &mut out) {
            Decision::Waiting(connect) if now.saturating_sub(since) < AWAIT_KEYS_TIMEOUT => {
                self.state = State::AwaitingKeys {
                    connect,
                    since,
                    held,
                };
                None
            }
            Decision::Waiting(_) => {
                self.refuse(&mut out, "jwks_unavailable", None);
                Some(Verdict {
                    forward: Forward::Replace(out),
                    close: None,
                })
            }
            Decision::Refused => Some(Verdict {
                forward: Forward::Replace(out),
                close: None,
            }),
            Decision::Accepted => {
                let rest = self.client_data(&held, now);
                match rest.forward {
                    Forward::Unchanged => out.extend_from_slice(&held),
                    Forward::Prefix(len) => out.extend_from_slice(&held[..len]),
                    Forward::Replace(bytes) => out.extend_from_slice(&bytes),
                    Forward::Hold => {}
                }
                Some(Verdict {
                    forward: Forward::Replace(out),
                    close: rest.close,
                })
            }
        }
    }

    /// Periodic check: token expiry. Returns a close to apply now.
    pub fn tick(&mut self, now: Duration) -> Option<Close> {
        self.expire_if_due(now);
        match self.state {
            State::Expired { since } if now.saturating_sub(since) >= EXPIRY_GRACE => {
                self.state = State::Closing;
                Some(Close::Now)
            }
            _ => None,
        }
    }

    fn expire_if_due(&mut self, now: Duration) {
        if let State::Established(session) = &self.state {
            if session
                .valid_until
                .is_some_and(|until| now.as_secs() >= until)
            {
                self.report
                    .events
                    .push(AuditEvent::expired(&session.identity));
                self.state = State::Expired { since: now };
            }
        }
    }

    fn process_client(
        &mut self,
        parser: &mut ClientParser,
        chunk: &[u8],
        now: Duration,
    ) -> Verdict {
        let mut out = Rewrite::new(chunk);
        let mut items = parser.feed(chunk);
        loop {
            if matches!(self.state, State::Established(_)) {
                while let Some(frame) = items.whole_frame() {
                    self.client_whole_frame(frame, chunk, now, &mut out);
                    if matches!(self.state, State::Closing) {
                        return Verdict {
                            forward: out.finish(),
                            close: None,
                        };
                    }
                }
            }
            let Some(item) = items.next() else { break };
            match item {
                Item::Partial { span } => out.drop(span),
                Item::Payload(piece) => match &mut self.client_payload {
                    PayloadFate::Forward => out.keep(piece.span),
                    PayloadFate::Drop => out.drop(piece.span),
                    PayloadFate::Inspect(headers) => {
                        out.drop(piece.span.clone());
                        let take = headers.remaining.min(piece.data.len());
                        let header_part = piece.span.start..piece.span.start + take;
                        headers.held.extend_from_slice(&chunk[header_part.clone()]);
                        headers.remaining -= take;
                        if headers.remaining == 0 {
                            self.release_held_headers(now, &mut out);
                            if self.client_payload == PayloadFate::Forward {
                                out.keep(header_part.end..piece.span.end);
                            }
                        }
                    }
                },
                Item::Error { error, span } => {
                    out.drop(span);
                    self.fail_protocol(&error, &mut out);
                }
                Item::ControlLine(line) => {
                    self.client_payload = PayloadFate::Forward;
                    let forward_line = |out: &mut Rewrite| forward_control_line(out, &line);
                    match (&mut self.state, line.op) {
                        (State::AwaitingConnect, ClientOp::Connect { json }) => {
                            out.drop(line.span.clone());
                            let connect = match Connect::parse(json) {
                                Ok(connect) => connect,
                                Err(error) => {
                                    self.fail_protocol(&error, &mut out);
                                    break;
                                }
                            };
                            let mut forwarded = Vec::new();
                            let decision = self.authenticate(connect, now, &mut forwarded);
                            out.insert(&forwarded);
                            if let Decision::Waiting(connect) = decision {
                                let held = chunk[line.span.end..].to_vec();
                                self.state = State::AwaitingKeys {
                                    connect,
                                    since: now,
                                    held,
                                };
                                return Verdict {
                                    forward: Forward::Hold,
                                    close: None,
                                };
                            }
                        }
                        (State::AwaitingConnect, _) => {
                            out.drop(line.span.clone());
                            let mut refusal = Vec::new();
                            self.refuse(&mut refusal, "connect_required", None);
                            out.insert(&refusal);
                        }
                        (State::Established(_), ClientOp::Connect { .. }) => {
                            out.drop(line.span.clone());
                            let mut refusal = Vec::new();
                            self.refuse(&mut refusal, "second_connect", None);
                            out.insert(&refusal);
                        }
                        (State::Established(_), ClientOp::Pub { subject, .. }) => {
                            match self.publish_allowed(subject, None, now) {
                                Ok(()) => forward_line(&mut out),
                                Err(denied) => {
                                    out.drop(line.span.clone());
                                    self.deny_publish(&denied, &mut out);
                                }
                            }
                        }
                        (
                            State::Established(session),
                            ClientOp::HPub {
                                subject,
                                header_len,
                                ..
                            },
                        ) => {
                            let headers_start = line.span.end;
                            let headers_end = headers_start + header_len as usize;
                            if !session.headers {
                                // nats-server closes silently on HPUB without headers:true.
                                out.drop(line.span.clone());
                                self.fail_protocol(&ProtocolError::WrongArgumentCount, &mut out);
                            } else if headers_end <= chunk.len() {
                                let headers = &chunk[headers_start..headers_end];
                                match self.publish_allowed(subject, Some(headers), now) {
                                    Ok(()) => forward_line(&mut out),
                                    Err(denied) => {
                                        out.drop(line.span.clone());
                                        self.deny_publish(&denied, &mut out);
                                    }
                                }
                            } else if header_len as usize > MAX_HELD_HEADERS {
                                out.drop(line.span.clone());
                                self.fail_protocol(&ProtocolError::UnknownOperation, &mut out);
                            } else {
                                // The decision needs the header block (a Nats-Trace-Dest header is
                                // a publish too): hold the line until the block is complete.
                                out.drop(line.span.clone());
                                let mut held = Vec::with_capacity(
                                    line.op.canonical_len() + header_len as usize,
                                );
                                line.op.write_canonical(&mut held);
                                self.client_payload = PayloadFate::Inspect(Box::new(HeldHeaders {
                                    line_len: held.len(),
                                    held,
                                    remaining: header_len as usize,
                                    subject: subject.into(),
                                }));
                            }
                        }
                        (
                            State::Established(session),
                            ClientOp::Sub {
                                subject,
                                queue,
                                sid,
                            },
                        ) => {
                            let queue_bytes = queue.map(str::as_bytes);
                            match session
                                .permissions
                                .check_subscribe(subject.as_bytes(), queue_bytes)
                            {
                                SubscribeDecision::Allowed => {
                                    self.report.counters.subscribe_allowed += 1;
                                    // nats-server ignores a SUB that reuses a live sid.
                                    // Subscriptions are tracked for the delivery filter only.
                                    if session.permissions.may_filter_deliveries() {
                                        session.subscriptions.entry(sid.into()).or_insert(
                                            Subscription {
                                                queue: queue.map(Into::into),
                                                delivered: 0,
                                                max: None,
                                            },
                                        );
                                    }
                                    forward_line(&mut out);
                                }
                                SubscribeDecision::Denied => {
                                    self.report.counters.subscribe_denied += 1;
                                    let rules = session.permissions.matched_rules();
                                    self.report.events.push(AuditEvent::denied(
                                        "SUB",
                                        subject,
                                        queue,
                                        &session.identity,
                                        rules,
                                    ));
                                    out.drop(line.span.clone());
                                    out.insert(b"PING\r\n");
                                    self.pongs
                                        .push_back(PongOwner::Error(subscription_violation(
                                            subject.as_bytes(),
                                            queue_bytes,
                                        )));
                                }
                            }
                        }
                        (State::Established(session), ClientOp::Unsub { sid, max_msgs }) => {
                            // nats-server unsubscribes now unless the max is above what was delivered.
                            if let Some(subscription) = session.subscriptions.get_mut(sid) {
                                match max_msgs {
                                    Some(max) if max > subscription.delivered => {
                                        subscription.max = Some(max)
                                    }
                                    _ => {
                                        session.subscriptions.remove(sid);
                                    }
                                }
                            }
                            forward_line(&mut out);
                        }
                        (State::Established(_), ClientOp::Ping) => {
                            self.pongs.push_back(PongOwner::Client);
                            forward_line(&mut out);
                        }
                        (State::Established(_), ClientOp::Pong) => forward_line(&mut out),
                        (
                            State::AwaitingKeys { .. } | State::Expired { .. } | State::Closing,
                            _,
                        ) => {
                            out.drop(line.span.clone());
                        }
                    }
                }
            }
            if matches!(self.state, State::Closing) {
                // Nothing after a fatal frame is forwarded.
                break;
            }
        }
        Verdict {
            forward: out.finish(),
            close: None,
        }
    }

    /// Decides a CONNECT: authenticates, resolves the permissions, and writes what goes
    /// upstream in its place (the CONNECT without the client's credentials, or a PING that will
    /// carry the refusal).
    fn authenticate(
        &mut self,
        mut connect: Connect,
        now: Duration,
        forwarded: &mut Vec<u8>,
    ) -> Decision {
        let gate = Rc::clone(&self.gate);
        let outcome = {
            let authenticator = gate.authenticator.borrow();
            let token = authenticator
                .token_fields()
                .iter()
                .find_map(|field| token_of(&connect, *field));
            authenticator.authenticate(self.peer_uri_san.as_deref(), token, now.as_secs())
        };
        let identity = match outcome {
            AuthOutcome::Authenticated(identity) => *identity,
            AuthOutcome::AwaitingKeys { .. } => return Decision::Waiting(Box::new(connect)),
            AuthOutcome::Rejected(rejection) => {
                self.refuse(forwarded, rejection.reason(), None);
                return Decision::Refused;
            }
        };
        let Ok(permissions) = gate.policy.resolve(&identity) else {
            self.refuse(forwarded, "no_matching_rule", Some(&identity));
            return Decision::Refused;
        };
        connect.remove_credentials();
        match gate.policy.upstream() {
            Some(UpstreamCredentials::UserPassword { user, pass }) => {
                connect.set("user", user.as_str());
                connect.set("pass", pass.as_str());
            }
            Some(UpstreamCredentials::Token(token)) => connect.set("auth_token", token.as_str()),
            None => {}
        }
        if let (Some(signer), Some(nonce)) = (&gate.proxy_signer, &self.nonce) {
            connect.set("proxy_sig", signer.sign_nonce(nonce));
        }
        connect.write_line(forwarded);
        self.report.events.push(AuditEvent::connection_start(
            &identity,
            permissions.matched_rules(),
        ));
        self.state = State::Established(Box::new(Session {
            valid_until: identity.valid_until(),
            headers: connect.headers() == Some(true),
            identity,
            permissions,
            subscriptions: BTreeMap::new(),
        }));
        Decision::Accepted
    }

    /// Answers a denied publish like nats-server: the frame is dropped (its payload too) and
    /// a PING goes upstream whose PONG becomes `Permissions Violation for Publish to "<subject>"`.
    fn deny_publish(&mut self, denied_subject: &str, out: &mut Rewrite) {
        self.report.counters.publish_denied += 1;
        if let State::Established(session) = &self.state {
            let rules = session.permissions.matched_rules();
            self.report.events.push(AuditEvent::denied(
                "PUB",
                denied_subject,
                None,
                &session.identity,
                rules,
            ));
        }
        self.client_payload = PayloadFate::Drop;
        out.insert(b"PING\r\n");
        self.pongs.push_back(PongOwner::Error(publish_violation(
            denied_subject.as_bytes(),
        )));
    }

    /// A PUB/HPUB read whole (line, payload, terminator) on an established connection: forwarded
    /// as it is, or answered like nats-server.
    fn client_whole_frame(
        &mut self,
        frame: WholeFrame<ClientOp>,
        chunk: &[u8],
        now: Duration,
        out: &mut Rewrite,
    ) {
        let (subject, headers) = match frame.op {
            ClientOp::Pub { subject, .. } => (subject, None),
            ClientOp::HPub {
                subject,
                header_len,
                ..
            } => {
                if !self.session_has_headers() {
                    // nats-server closes silently on HPUB without headers:true.
                    out.drop(frame.span);
                    self.fail_protocol(&ProtocolError::WrongArgumentCount, out);
                    return;
                }
                let headers_end = frame.payload.start + header_len as usize;
                (subject, Some(&chunk[frame.payload.start..headers_end]))
            }
            // `whole_frame` reads only frames with a payload.
            _ => {
                out.drop(frame.span);
                self.fail_protocol(&ProtocolError::UnknownOperation, out);
                return;
            }
        };
        match self.publish_allowed(subject, headers, now) {
            Ok(()) => out.keep(frame.span),
            Err(denied) => {
                out.drop(frame.span);
                self.deny_publish(&denied, out);
                // The payload went with the frame.
                self.client_payload = PayloadFate::Forward;
            }
        }
    }

    fn session_has_headers(&self) -> bool {
        matches!(&self.state, State::Established(session) if session.headers)
    }

    /// nats-server's publish checks for a PUB (`headers: None`) or an HPUB whose header block is
    /// at hand; counts an allowed publish. `Err` carries the subject the violation names.
    fn publish_allowed(
        &mut self,
        subject: &str,
        headers: Option<&[u8]>,
        now: Duration,
    ) -> Result<(), String> {
        let State::Established(session) = &mut self.state else {
            return Err(subject.to_string());
        };
        let verdict = match headers {
            None if session.permissions.check_publish(subject.as_bytes(), now) => Ok(()),
            None => Err(subject.to_string()),
            Some(headers) => publish_verdict(session, subject, &trace_destinations(headers), now),
        };
        if verdict.is_ok() {
            self.report.counters.publish_allowed += 1;
        }
        verdict
    }

    /// The header block of a held HPUB is complete: decide, then forward the held bytes or
    /// answer the denial. Sets the fate of the rest of the payload.
    fn release_held_headers(&mut self, now: Duration, out: &mut Rewrite) {
        let PayloadFate::Inspect(headers) =
            std::mem::replace(&mut self.client_payload, PayloadFate::Forward)
        else {
            return;
        };
        if !matches!(self.state, State::Established(_)) {
            self.client_payload = PayloadFate::Drop;
            return;
        }
        let header_block = &headers.held[headers.line_len..];
        match self.publish_allowed(&headers.subject, Some(header_block), now) {
            Ok(()) => out.insert(&headers.held),
            Err(denied) => self.deny_publish(&denied, out),
        }
    }

    /// A fatal client-side protocol error: forward what came before, then a PING whose PONG
    /// becomes the server's own error line (or nothing, where nats-server closes silently).
    fn fail_protocol(&mut self, error: &ProtocolError, out: &mut Rewrite) {
        self.report
            .events
            .push(AuditEvent::protocol_error(error.reason(), self.identity()));
        self.state = State::Closing;
        out.insert(b"PING\r\n");
        self.pongs.push_back(PongOwner::ErrorThenClose(
            error.server_error_line().map(<[u8]>::to_vec),
        ));
    }

    /// Refuses the connection with `Authorization Violation`: a PING goes upstream in place
    /// of the refused frames and its PONG becomes the error, then the connection closes.
    fn refuse(
        &mut self,
        upstream: &mut Vec<u8>,
        reason: &'static str,
        identity: Option<&Identity>,
    ) {
        let identity = identity.or(self.identity());
        self.report.events.push(match identity {
            Some(identity) => AuditEvent::refused(reason, identity),
            None => AuditEvent::auth_failure(reason, self.peer_uri_san.as_deref()),
        });
        self.state = State::Closing;
        upstream.extend_from_slice(b"PING\r\n");
        self.pongs.push_back(PongOwner::ErrorThenClose(Some(
            AUTHORIZATION_VIOLATION.to_vec(),
        )));
    }

    /// Server → client bytes.
    pub fn server_data(&mut self, chunk: &[u8], now: Duration) -> Verdict {
        self.expire_if_due(now);
        match self.state {
            State::Expired { .. } => {
                self.state = State::Closing;
                return Verdict {
                    forward: Forward::Replace(USER_AUTHENTICATION_EXPIRED.to_vec()),
                    close: Some(Close::AfterWrite),
                };
            }
            State::Closing if self.pongs.is_empty() => {
                return Verdict {
                    forward: Forward::Replace(Vec::new()),
                    close: Some(Close::Now),
                };
            }
            _ => {}
        }
        // The parser is moved out while its items borrow it, so the handlers can use `self`.
        let placeholder = ServerParser::new(*self.server.limits());
        let mut parser = std::mem::replace(&mut self.server, placeholder);
        let verdict = self.process_server(&mut parser, chunk, now);
        self.server = parser;
        verdict
    }

    fn process_server(
        &mut self,
        parser: &mut ServerParser,
        chunk: &[u8],
        now: Duration,
    ) -> Verdict {
        let mut out = Rewrite::new(chunk);
        let mut items = parser.feed(chunk);
        loop {
            while let Some(frame) = items.whole_frame() {
                if self.delivers(&frame.op, now) {
                    out.keep(frame.span);
                } else {
                    out.drop(frame.span);
                }
            }
            let Some(item) = items.next() else { break };
            match item {
                Item::Partial { span } => out.drop(span),
                Item::Payload(piece) => match self.server_payload {
                    PayloadFate::Drop => out.drop(piece.span),
                    // Server payloads are never held for inspection.
                    PayloadFate::Forward | PayloadFate::Inspect(_) => out.keep(piece.span),
                },
                Item::Error { error, span } => {
                    // The server's stream is not NATS as natsguard reads it: fail closed.
                    self.report
                        .events
                        .push(AuditEvent::protocol_error(error.reason(), self.identity()));
                    out.drop(span);
                    self.state = State::Closing;
                    return Verdict {
                        forward: out.finish(),
                        close: Some(Close::AfterWrite),
                    };
                }
                Item::ControlLine(line) => {
                    self.server_payload = PayloadFate::Forward;
                    match line.op {
                        ServerOp::Info { json } => {
                            if let Err(reason) = self.server_info(json, &line, &mut out) {
                                self.report
                                    .events
                                    .push(AuditEvent::protocol_error(reason, None));
                                self.state = State::Closing;
                                return Verdict {
                                    forward: Forward::Replace(Vec::new()),
                                    close: Some(Close::Now),
                                };
                            }
                        }
                        ServerOp::Msg { .. } | ServerOp::HMsg { .. } => {
                            if self.delivers(&line.op, now) {
                                forward_control_line(&mut out, &line);
                            } else {
                                self.server_payload = PayloadFate::Drop;
                                out.drop(line.span.clone());
                            }
                        }
                        ServerOp::Pong => match self.pongs.pop_front() {
                            None | Some(PongOwner::Client) => forward_control_line(&mut out, &line),
                            Some(PongOwner::Error(error)) => {
                                out.drop(line.span.clone());
                                out.insert(&error);
                            }
                            Some(PongOwner::ErrorThenClose(error)) => {
                                out.drop(line.span.clone());
                                if let Some(error) = error {
                                    out.insert(&error);
                                }
                                self.state = State::Closing;
                                return Verdict {
                                    forward: out.finish(),
                                    close: Some(Close::AfterWrite),
                                };
                            }
                        },
                        ServerOp::Ping | ServerOp::Ok | ServerOp::Err { .. } => {
                            forward_control_line(&mut out, &line)
                        }
                    }
                }
            }
        }
        Verdict {
            forward: out.finish(),
            close: None,
        }
    }

    /// INFO: learn `max_payload` and the nonce, refuse a server that wants TLS (the filter
    /// could not read the protocol), and rewrite what the client must not see or must know.
    fn server_info(
        &mut self,
        json: &str,
        line: &ControlLine<ServerOp>,
        out: &mut Rewrite,
    ) -> Result<(), &'static str> {
        let mut info = Info::parse(json).map_err(|_| "server_info_invalid")?;
        if info.tls_required() == Some(true) {
            return Err("server_requires_tls");
        }
        if let Some(max_payload) = info.max_payload() {
            self.client.set_max_payload(max_payload);
        }
        if let Some(nonce) = info.nonce() {
            self.nonce = Some(nonce.to_string());
        }
        let mut changed = false;
        let wants_token = !self.gate.authenticator.borrow().token_fields().is_empty();
        if wants_token && info.auth_required() != Some(true) {
            info.set_auth_required(true);
            changed = true;
        }
        let fields = info.fields();
        if self.gate.policy.strip_connect_urls()
            && (fields.contains("connect_urls") || fields.contains("ws_connect_urls"))
        {
            info.remove_connect_urls();
            changed = true;
        }
        if changed {
            out.drop(line.span.clone());
            let mut rewritten = Vec::with_capacity(json.len() + 32);
            info.write_line(&mut rewritten);
            out.insert(&rewritten);
        } else {
            forward_control_line(out, line);
        }
        Ok(())
    }

    /// Whether a MSG/HMSG reaches the client; counts the ones filtered out. Other ops are not
    /// deliveries: never forwarded from here.
    fn delivers(&mut self, op: &ServerOp, now: Duration) -> bool {
        let (ServerOp::Msg {
            subject,
            sid,
            reply,
            ..
        }
        | ServerOp::HMsg {
            subject,
            sid,
            reply,
            ..
        }) = *op
        else {
            return false;
        };
        let delivered = self.deliver(subject, sid, reply, now);
        if !delivered {
            self.report.counters.deliveries_filtered += 1;
        }
        delivered
    }

    /// Whether a MSG/HMSG reaches the client: nats-server's deny-on-delivery filter, the
    /// subscription's UNSUB max, and allow_responses bookkeeping of its reply subject.
    fn deliver(&mut self, subject: &str, sid: &str, reply: Option<&str>, now: Duration) -> bool {
        // Only an established session has subscriptions; a closing connection gets nothing
        // more (its delivery filter must not lapse while its last replies are in flight).
        let State::Established(session) = &mut self.state else {
            return false;
        };
        if session.permissions.may_filter_deliveries() {
            let mut subscription = session.subscriptions.get_mut(sid);
            let queue = subscription.as_deref().and_then(|s| s.queue.as_deref());
            let deliver = session
                .permissions
                .should_deliver(subject.as_bytes(), queue.map(str::as_bytes));
            if !deliver {
                return false;
            }
            let used_up = subscription.as_mut().is_some_and(|subscription| {
                subscription.delivered = subscription.delivered.saturating_add(1);
                subscription
                    .max
                    .is_some_and(|max| subscription.delivered >= max)
            });
            if used_up {
                session.subscriptions.remove(sid);
            }
        }
        if let Some(reply) = reply {
            session
                .permissions
                .record_delivered_reply(reply.as_bytes(), now);
        }
        true
    }
}

/// Forwards a control line as received when it is canonical and whole in this chunk; otherwise
/// its canonical encoding, so the server can only read it one way.
fn forward_control_line<O: Operation>(out: &mut Rewrite, line: &ControlLine<O>) {
    if line.carried == 0 && line.canonical {
        out.keep(line.span.clone());
    } else {
        out.drop(line.span.clone());
        let mut canonical = Vec::with_capacity(line.op.canonical_len());
        line.op.write_canonical(&mut canonical);
        out.insert(&canonical);
    }
}

/// nats-server's publish checks in its order: the message-trace destination it reads from a
/// `Nats-Trace-Dest` header is a publish of its own (server/msgtrace.go), then the subject; then
/// the destinations only natsguard checks. `Err` carries the subject the violation names, so a
/// frame nats-server would refuse too gets its error word for word.
fn publish_verdict(
    session: &mut Session,
    subject: &str,
    traces: &TraceDestinations,
    now: Duration,
) -> Result<(), String> {
    let server_order = traces
        .read_by_server
        .iter()
        .map(String::as_str)
        .chain([subject])
        .chain(traces.others.iter().map(String::as_str));
    for destination in server_order {
        if !session
            .permissions
            .check_publish(destination.as_bytes(), now)
        {
            return Err(destination.to_string());
        }
    }
    Ok(())
}

/// The `Nats-Trace-Dest` values of an HPUB header block.
#[derive(Default)]
struct TraceDestinations {
    /// The one nats-server reads: the first with exactly that key, in a block that starts with
    /// `NATS/1.0\r\n`.
    read_by_server: Option<String>,
    /// Every other occurrence, in any letter case, after any first line: natsguard is stricter,
    /// so no spelling of the header escapes the check.
    others: Vec<String>,
}

fn trace_destinations(headers: &[u8]) -> TraceDestinations {
    const KEY: &[u8] = b"Nats-Trace-Dest";
    let mut traces = TraceDestinations::default();
    let server_reads_traces = headers.starts_with(b"NATS/1.0\r\n");
    for line in headers.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let key = line[..colon].trim_ascii();
        if !key.eq_ignore_ascii_case(KEY) {
            continue;
        }
        let value = String::from_utf8_lossy(line[colon + 1..].trim_ascii()).into_owned();
        if server_reads_traces && key == KEY && traces.read_by_server.is_none() {
            traces.read_by_server = Some(value);
        } else {
            traces.others.push(value);
        }
    }
    traces
}

enum Decision {
    Accepted,
    Refused,
    Waiting(Box<Connect>),
}

fn token_of(connect: &Connect, field: TokenField) -> Option<&str> {
    match field {
        TokenField::AuthToken => connect.auth_token(),
        TokenField::Pass => connect.pass(),
        TokenField::User => connect.user(),
        TokenField::Jwt => connect.jwt(),
    }
}

#[cfg(test)]
mod tests;

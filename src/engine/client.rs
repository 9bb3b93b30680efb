//! Client → server frames on an established connection: PUB and HPUB (with the message-trace
//! destinations nats-server reads from headers), SUB, UNSUB, PING, and protocol errors.

use std::time::Duration;

use super::audit::Subscription;
use super::handshake::Decision;
use super::observe::{self, DecisionKind};
use super::output::Rewrite;
use super::{
    forward_control_line, AuditEvent, Connection, Forward, HeldHeaders, PayloadFate, PongOwner,
    State, Verdict, MAX_HELD_HEADERS,
};
use crate::policy::{ConnectionPermissions, SubscribeDecision};
use crate::protocol::{
    publish_violation, subscription_violation, ClientOp, ClientParser, Connect, ControlLine, Item,
    Operation, PayloadPiece, ProtocolError, WholeFrame,
};

impl Connection {
    pub(super) fn process_client(
        &mut self,
        parser: &mut ClientParser,
        chunk: &[u8],
        now: Duration,
    ) -> Verdict {
        let mut out = Rewrite::new(chunk);
        let mut items = parser.feed(chunk);
        loop {
            if matches!(self.state, State::Established(_)) {
                if !self.pending.unsubscribe.is_empty() && items.at_op_boundary() {
                    self.send_pending_unsubscribes(&mut out);
                }
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
                Item::Payload(piece) => self.client_payload_piece(piece, chunk, now, &mut out),
                Item::Error { error, span } => {
                    out.drop(span);
                    self.fail_protocol(&error, &mut out);
                }
                Item::ControlLine(line) => {
                    self.client_payload = PayloadFate::Forward;
                    if let Some(verdict) = self.client_control_line(&line, chunk, now, &mut out) {
                        return verdict;
                    }
                }
            }
            if matches!(self.state, State::Closing) {
                // Nothing after a fatal frame is forwarded.
                break;
            }
        }
        if matches!(self.state, State::Established(_))
            && !self.pending.unsubscribe.is_empty()
            && items.at_op_boundary()
        {
            self.send_pending_unsubscribes(&mut out);
        }
        Verdict {
            forward: out.finish(),
            close: None,
        }
    }

    fn client_payload_piece(
        &mut self,
        piece: PayloadPiece,
        chunk: &[u8],
        now: Duration,
        out: &mut Rewrite,
    ) {
        match &mut self.client_payload {
            PayloadFate::Forward => out.keep(piece.span),
            PayloadFate::Drop => out.drop(piece.span),
            PayloadFate::Inspect(headers) => {
                out.drop(piece.span.clone());
                let take = headers.remaining.min(piece.data.len());
                let header_part = piece.span.start..piece.span.start + take;
                headers.held.extend_from_slice(&chunk[header_part.clone()]);
                headers.remaining -= take;
                if headers.remaining == 0 {
                    self.release_held_headers(now, out);
                    if self.client_payload == PayloadFate::Forward {
                        out.keep(header_part.end..piece.span.end);
                    }
                }
            }
        }
    }

    /// One client control line. `Some` when the chunk's verdict is decided here (a CONNECT
    /// that must wait for keys holds the rest of the chunk).
    fn client_control_line(
        &mut self,
        line: &ControlLine<ClientOp>,
        chunk: &[u8],
        now: Duration,
        out: &mut Rewrite,
    ) -> Option<Verdict> {
        match (&mut self.state, line.op) {
            (State::AwaitingConnect, ClientOp::Connect { json }) => {
                return self.client_connect(json, line, chunk, now, out);
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
            (
                State::Established(_),
                ClientOp::Pub {
                    subject,
                    payload_len,
                    ..
                },
            ) => match self.publish_allowed(subject, None, payload_len, now) {
                Ok(()) => forward_control_line(out, line),
                Err(denied) => {
                    out.drop(line.span.clone());
                    self.deny_publish(&denied, now, out);
                }
            },
            (
                State::Established(_),
                ClientOp::HPub {
                    subject,
                    header_len,
                    total_len,
                    ..
                },
            ) => {
                let lengths = (header_len as usize, total_len);
                self.client_hpub(line, subject, lengths, chunk, now, out)
            }
            (
                State::Established(_),
                ClientOp::Sub {
                    subject,
                    queue,
                    sid,
                },
            ) => self.client_sub(line, subject, queue, sid, out),
            (State::Established(session), ClientOp::Unsub { sid, max_msgs }) => {
                if self.gate.policy.audit_subscriptions() {
                    let ended = session.subscriptions.get(sid);
                    let subscription = Subscription {
                        sid,
                        subject: ended.map(|ended| &*ended.subject),
                        queue: ended.and_then(|ended| ended.queue.as_deref()),
                    };
                    self.report.events.push(AuditEvent::unsubscribe(
                        subscription,
                        max_msgs,
                        &session.identity,
                        session.permissions.matched_rules(),
                        self.gate.policy.version(),
                    ));
                }
                session.subscriptions.unsubscribe(sid, max_msgs);
                if let Some(observer) = session.observer.as_deref_mut() {
                    if !session.subscriptions.contains(sid) {
                        observer.forget_subscription(sid);
                    }
                }
                forward_control_line(out, line);
            }
            (State::Established(_), ClientOp::Ping) => {
                self.pongs.push_back(PongOwner::Client);
                forward_control_line(out, line);
            }
            (State::Established(_), ClientOp::Pong) => forward_control_line(out, line),
            (State::AwaitingKeys { .. } | State::MustClose { .. } | State::Closing, _) => {
                out.drop(line.span.clone());
            }
        }
        None
    }

    /// The first CONNECT: authenticated, forwarded in its place (or a refusal), or held with the
    /// rest of the chunk until a provider's first key set arrives.
    fn client_connect(
        &mut self,
        json: &str,
        line: &ControlLine<ClientOp>,
        chunk: &[u8],
        now: Duration,
        out: &mut Rewrite,
    ) -> Option<Verdict> {
        out.drop(line.span.clone());
        let connect = match Connect::parse(json) {
            Ok(connect) => connect,
            Err(error) => {
                self.fail_protocol(&error, out);
                return None;
            }
        };
        let mut forwarded = Vec::new();
        let decision = self.authenticate(connect, now, false, &mut forwarded);
        out.insert(&forwarded);
        let Decision::Waiting(connect) = decision else {
            return None;
        };
        let held = chunk[line.span.end..].to_vec();
        self.state = State::AwaitingKeys {
            connect,
            since: now,
            held,
        };
        Some(Verdict {
            forward: Forward::Hold,
            close: None,
        })
    }

    /// `lengths`: the header block's and the whole payload's.
    fn client_hpub(
        &mut self,
        line: &ControlLine<ClientOp>,
        subject: &str,
        (header_len, payload_len): (usize, u32),
        chunk: &[u8],
        now: Duration,
        out: &mut Rewrite,
    ) {
        let headers_start = line.span.end;
        let headers_end = headers_start + header_len;
        if !self.session_has_headers() {
            // nats-server closes silently on HPUB without headers:true.
            out.drop(line.span.clone());
            self.fail_protocol(&ProtocolError::WrongArgumentCount, out);
        } else if headers_end <= chunk.len() {
            let headers = &chunk[headers_start..headers_end];
            match self.publish_allowed(subject, Some(headers), payload_len, now) {
                Ok(()) => forward_control_line(out, line),
                Err(denied) => {
                    out.drop(line.span.clone());
                    self.deny_publish(&denied, now, out);
                }
            }
        } else if header_len > MAX_HELD_HEADERS {
            out.drop(line.span.clone());
            self.fail_protocol(&ProtocolError::UnknownOperation, out);
        } else {
            // The decision needs the header block (a Nats-Trace-Dest header is a publish too):
            // hold the line until the block is complete.
            out.drop(line.span.clone());
            let mut held = Vec::with_capacity(line.op.canonical_len() + header_len);
            line.op.write_canonical(&mut held);
            self.client_payload = PayloadFate::Inspect(Box::new(HeldHeaders {
                line_len: held.len(),
                held,
                remaining: header_len,
                subject: subject.into(),
                payload_len,
            }));
        }
    }

    fn client_sub(
        &mut self,
        line: &ControlLine<ClientOp>,
        subject: &str,
        queue: Option<&str>,
        sid: &str,
        out: &mut Rewrite,
    ) {
        let State::Established(session) = &mut self.state else {
            return;
        };
        let queue_bytes = queue.map(str::as_bytes);
        let decision = session
            .permissions
            .check_subscribe(subject.as_bytes(), queue_bytes);
        let allowed = decision == SubscribeDecision::Allowed;
        let observed = self.observe(
            DecisionKind::Subscribe,
            subject,
            queue,
            allowed,
            |permissions| {
                permissions.check_subscribe(subject.as_bytes(), queue_bytes)
                    == SubscribeDecision::Allowed
            },
            |permissions| permissions.explain_subscribe(subject.as_bytes(), queue_bytes),
        );
        let State::Established(session) = &mut self.state else {
            return;
        };
        if self.gate.policy.audit_subscriptions() {
            let ruling = session
                .permissions
                .explain_subscribe(subject.as_bytes(), queue_bytes);
            let subscription = Subscription {
                sid,
                subject: Some(subject),
                queue,
            };
            self.report.events.push(AuditEvent::subscribe(
                subscription,
                &session.identity,
                session.permissions.matched_rules(),
                &observe::settled(ruling, allowed),
                self.gate.policy.version(),
            ));
        }
        match decision {
            SubscribeDecision::Allowed => {
                self.report.counters.subscribe_allowed += 1;
                if let (Some(observer), false) = (
                    session.observer.as_deref_mut(),
                    session.subscriptions.contains(sid),
                ) {
                    observer.note_subscription(sid, observed == Some(true));
                }
                session.subscriptions.subscribe(sid, subject, queue);
                forward_control_line(out, line);
            }
            SubscribeDecision::Denied => {
                self.report.counters.subscribe_denied += 1;
                let rules = session.permissions.matched_rules();
                let ruling = session
                    .permissions
                    .explain_subscribe(subject.as_bytes(), queue_bytes);
                self.report.events.push(AuditEvent::denied(
                    "SUB",
                    subject,
                    queue,
                    &session.identity,
                    rules,
                    &ruling,
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

    /// The UNSUBs of subscriptions a newer configuration revoked, then a PING whose PONG tells
    /// when nats-server removed them (deliveries for them are dropped until then). Called only
    /// at a frame boundary of the client's stream.
    fn send_pending_unsubscribes(&mut self, out: &mut Rewrite) {
        let State::Established(session) = &self.state else {
            return;
        };
        let sids = std::mem::take(&mut self.pending.unsubscribe);
        for sid in &sids {
            out.insert(b"UNSUB ");
            out.insert(sid.as_bytes());
            out.insert(b"\r\n");
        }
        out.insert(b"PING\r\n");
        let oks = if session.verbose {
            sids.len() as u32
        } else {
            0
        };
        self.pongs.push_back(PongOwner::Unsubscribed { sids, oks });
    }

    /// Answers a denied publish like nats-server: the frame is dropped (its payload too) and
    /// a PING goes upstream whose PONG becomes `Permissions Violation for Publish to "<subject>"`.
    pub(super) fn deny_publish(&mut self, denied_subject: &str, now: Duration, out: &mut Rewrite) {
        self.report.counters.publish_denied += 1;
        if let State::Established(session) = &self.state {
            let rules = session.permissions.matched_rules();
            let ruling = observe::settled(
                session
                    .permissions
                    .explain_publish(denied_subject.as_bytes(), now),
                false,
            );
            self.report.events.push(AuditEvent::denied(
                "PUB",
                denied_subject,
                None,
                &session.identity,
                rules,
                &ruling,
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
    pub(super) fn client_whole_frame(
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
        let payload_len = frame.payload.len() as u32;
        match self.publish_allowed(subject, headers, payload_len, now) {
            Ok(()) => out.keep(frame.span),
            Err(denied) => {
                out.drop(frame.span);
                self.deny_publish(&denied, now, out);
                // The payload went with the frame.
                self.client_payload = PayloadFate::Forward;
            }
        }
    }

    pub(super) fn session_has_headers(&self) -> bool {
        matches!(&self.state, State::Established(session) if session.headers)
    }

    /// nats-server's publish checks for a PUB (`headers: None`) or an HPUB whose header block is
    /// at hand; counts an allowed publish, and the payload bytes of either. `Err` carries the
    /// subject the violation names.
    pub(super) fn publish_allowed(
        &mut self,
        subject: &str,
        headers: Option<&[u8]>,
        payload_len: u32,
        now: Duration,
    ) -> Result<(), String> {
        let State::Established(session) = &mut self.state else {
            return Err(subject.to_string());
        };
        let traces = headers.map(trace_destinations);
        let verdict = publish_verdict(&mut session.permissions, subject, traces.as_ref(), now);
        if session.observer.is_some() {
            let observed_refused = std::cell::RefCell::new(None);
            self.observe(
                DecisionKind::Publish,
                subject,
                None,
                verdict.is_ok(),
                |permissions| {
                    let observed = publish_verdict(permissions, subject, traces.as_ref(), now);
                    *observed_refused.borrow_mut() = observed.err();
                    observed_refused.borrow().is_none()
                },
                |permissions| {
                    // The destination one side refused (a trace destination, or the subject).
                    let refused = verdict.clone().err().or(observed_refused.borrow().clone());
                    let destination = refused.as_deref().unwrap_or(subject);
                    permissions.explain_publish(destination.as_bytes(), now)
                },
            );
        }
        let counters = &mut self.report.counters;
        if verdict.is_ok() {
            counters.publish_allowed += 1;
            counters.publish_bytes_allowed += u64::from(payload_len);
        } else {
            counters.publish_bytes_denied += u64::from(payload_len);
        }
        verdict
    }

    /// The header block of a held HPUB is complete: decide, then forward the held bytes or
    /// answer the denial. Sets the fate of the rest of the payload.
    pub(super) fn release_held_headers(&mut self, now: Duration, out: &mut Rewrite) {
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
        match self.publish_allowed(
            &headers.subject,
            Some(header_block),
            headers.payload_len,
            now,
        ) {
            Ok(()) => out.insert(&headers.held),
            Err(denied) => self.deny_publish(&denied, now, out),
        }
    }

    /// A fatal client-side protocol error: forward what came before, then a PING whose PONG
    /// becomes the server's own error line (or nothing, where nats-server closes silently).
    pub(super) fn fail_protocol(&mut self, error: &ProtocolError, out: &mut Rewrite) {
        self.report
            .events
            .push(AuditEvent::protocol_error(error.reason(), self.identity()));
        self.state = State::Closing;
        out.insert(b"PING\r\n");
        self.pongs.push_back(PongOwner::ErrorThenClose(
            error.server_error_line().map(<[u8]>::to_vec),
        ));
    }
}

/// nats-server's publish checks in its order: the message-trace destination it reads from a
/// `Nats-Trace-Dest` header is a publish of its own (server/msgtrace.go), then the subject; then
/// the destinations only natsguard checks. `Err` carries the subject the violation names, so a
/// frame nats-server would refuse too gets its error word for word.
fn publish_verdict(
    permissions: &mut ConnectionPermissions,
    subject: &str,
    traces: Option<&TraceDestinations>,
    now: Duration,
) -> Result<(), String> {
    let Some(traces) = traces else {
        return match permissions.check_publish(subject.as_bytes(), now) {
            true => Ok(()),
            false => Err(subject.to_string()),
        };
    };
    let server_order = traces
        .read_by_server
        .iter()
        .map(String::as_str)
        .chain([subject])
        .chain(traces.others.iter().map(String::as_str));
    for destination in server_order {
        if !permissions.check_publish(destination.as_bytes(), now) {
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

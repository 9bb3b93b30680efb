//! Client → server frames on an established connection: PUB and HPUB (with the message-trace
//! destinations nats-server reads from headers), SUB, UNSUB, PING, and protocol errors.

use std::time::Duration;

use super::audit::Subscription;
use super::handshake::Decision;
use super::observe::{self, DecisionKind};
use super::output::Rewrite;
use super::provenance::{Done, Edit, Publish};
use super::{
    forward_control_line, AuditEvent, Connection, Forward, HeldFrame, PayloadFate, PongOwner,
    State, Verdict, MAX_HELD_HEADERS,
};
use crate::policy::{ConnectionPermissions, SubscribeDecision};
use crate::protocol::headers;
use crate::protocol::{
    publish_violation, subscription_violation, ClientOp, ClientParser, Connect, ControlLine, Item,
    Operation, PayloadPiece, ProtocolError, WholeFrame,
};

/// At most this many reserved-header removals of one connection get an audit line (the first
/// ones); all of them are counted.
const MAX_REPORTED_REMOVALS: u32 = 32;

/// What becomes of a publish once decided.
enum Outcome {
    /// Its bytes go as they came (a control line that was not canonical in canonical form).
    Keep,
    /// These bytes replace its control line and header block; the payload follows unchanged.
    Replace(Vec<u8>),
    /// Its payload is needed too (a signature covers it): hold it, then decide again.
    HoldPayload,
    /// It is dropped; its answer is on its way (a denial's `-ERR`, or a close).
    Dropped,
}

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
        // The piece's bytes from `at` on are still to place.
        let mut at = piece.span.start;
        loop {
            let frame = match &mut self.client_payload {
                PayloadFate::Forward => return out.keep(at..piece.span.end),
                PayloadFate::Drop => return out.drop(at..piece.span.end),
                PayloadFate::Inspect(frame) => frame,
            };
            let take = frame.remaining.min(piece.data.end - at);
            frame.held.extend_from_slice(&chunk[at..at + take]);
            frame.remaining -= take;
            out.drop(at..at + take);
            at += take;
            if frame.remaining > 0 {
                return;
            }
            self.release_held_frame(now, out);
            if matches!(self.state, State::Closing) {
                return;
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
                    reply,
                    payload_len,
                },
            ) => {
                let publish = Publish {
                    subject,
                    reply,
                    headers: None,
                    // An empty payload is at hand already.
                    payload: (payload_len == 0).then_some(&[][..]),
                    payload_len,
                };
                match self.decide_publish(&publish, false, now, out) {
                    Outcome::Keep => forward_control_line(out, line),
                    Outcome::Replace(head) => {
                        out.drop(line.span.clone());
                        out.insert(&head);
                    }
                    Outcome::HoldPayload => {
                        out.drop(line.span.clone());
                        self.hold(line.op, subject, reply, None, payload_len as usize, true);
                    }
                    Outcome::Dropped => out.drop(line.span.clone()),
                }
            }
            (
                State::Established(_),
                ClientOp::HPub {
                    subject,
                    reply,
                    header_len,
                    total_len,
                },
            ) => {
                let headers_end = line.span.end + header_len as usize;
                if !self.session_has_headers() {
                    // nats-server closes silently on HPUB without headers:true.
                    out.drop(line.span.clone());
                    self.fail_protocol(&ProtocolError::WrongArgumentCount, out);
                } else if headers_end > chunk.len() && header_len as usize > MAX_HELD_HEADERS {
                    out.drop(line.span.clone());
                    self.fail_protocol(&ProtocolError::UnknownOperation, out);
                } else {
                    // The decision needs the header block (a Nats-Trace-Dest header is a publish
                    // too; reserved headers are removed): hold the line until it is complete.
                    out.drop(line.span.clone());
                    let header_len = Some(header_len as usize);
                    self.hold(
                        line.op,
                        subject,
                        reply,
                        header_len,
                        total_len as usize,
                        false,
                    );
                }
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

    /// Holds a PUB/HPUB whose decision needs more of its bytes: its header block, or (`permitted`
    /// already) its whole payload.
    fn hold(
        &mut self,
        op: ClientOp,
        subject: &str,
        reply: Option<&str>,
        header_len: Option<usize>,
        total_len: usize,
        permitted: bool,
    ) {
        let mut held = Vec::with_capacity(op.canonical_len() + header_len.unwrap_or(total_len));
        op.write_canonical(&mut held);
        self.client_payload = PayloadFate::Inspect(Box::new(HeldFrame {
            line_len: held.len(),
            held,
            header_len,
            total_len,
            remaining: header_len.unwrap_or(total_len),
            subject: subject.into(),
            reply: reply.map(Into::into),
            permitted,
        }));
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
        self.answer_publish_violation(denied_subject, out);
    }

    /// A publish the permissions allow that provenance refuses (`reason`): answered like a
    /// denied one.
    fn refuse_publish(&mut self, subject: &str, reason: &'static str, out: &mut Rewrite) {
        if let State::Established(session) = &self.state {
            self.report.events.push(AuditEvent::publish_refused(
                subject,
                reason,
                &session.identity,
            ));
        }
        self.answer_publish_violation(subject, out);
    }

    fn answer_publish_violation(&mut self, subject: &str, out: &mut Rewrite) {
        self.report.counters.publish_denied += 1;
        self.client_payload = PayloadFate::Drop;
        out.insert(b"PING\r\n");
        self.pongs
            .push_back(PongOwner::Error(publish_violation(subject.as_bytes())));
    }

    /// Decides a publish read far enough: the permissions (unless `permitted` already), then
    /// what provenance makes of it. Counts it, and answers it when it is dropped.
    fn decide_publish(
        &mut self,
        publish: &Publish,
        permitted: bool,
        now: Duration,
        out: &mut Rewrite,
    ) -> Outcome {
        if !permitted {
            if let Err(denied) = self.publish_allowed(publish.subject, publish.headers, now) {
                self.report.counters.publish_bytes_denied += publish.size();
                self.deny_publish(&denied, now, out);
                return Outcome::Dropped;
            }
        }
        let (edit, done) = self.provenance_edit(publish, now);
        let counters = &mut self.report.counters;
        match edit {
            Edit::Keep => {
                counters.publish_allowed += 1;
                counters.publish_bytes_allowed += publish.size();
                Outcome::Keep
            }
            Edit::Replace(head) => {
                counters.publish_allowed += 1;
                counters.publish_bytes_allowed += publish.size();
                self.report_provenance(publish.subject, done);
                Outcome::Replace(head)
            }
            Edit::NeedsPayload => Outcome::HoldPayload,
            Edit::Refuse(reason) => {
                counters.publish_bytes_denied += publish.size();
                self.refuse_publish(publish.subject, reason, out);
                Outcome::Dropped
            }
            Edit::TooLarge { size, max } => {
                self.fail_protocol(&ProtocolError::PayloadTooLarge { size, max }, out);
                Outcome::Dropped
            }
        }
    }

    /// Counts what provenance did to a publish; audits the first removals of reserved headers.
    fn report_provenance(&mut self, subject: &str, done: Done) {
        let counters = &mut self.report.counters;
        counters.provenance_stamped += u64::from(done.stamped);
        counters.reserved_headers_removed += done.removed.len() as u64;
        let State::Established(session) = &mut self.state else {
            return;
        };
        if done.removed.is_empty() || session.removals_reported >= MAX_REPORTED_REMOVALS {
            return;
        }
        session.removals_reported += 1;
        self.report
            .events
            .push(AuditEvent::reserved_headers_removed(
                subject,
                &done.removed,
                &session.identity,
            ));
    }

    /// A PUB/HPUB read whole (line, payload, terminator) on an established connection: forwarded
    /// as it is (or rewritten by provenance), or answered like nats-server.
    pub(super) fn client_whole_frame(
        &mut self,
        frame: WholeFrame<ClientOp>,
        chunk: &[u8],
        now: Duration,
        out: &mut Rewrite,
    ) {
        let (subject, reply, header_len) = match frame.op {
            ClientOp::Pub { subject, reply, .. } => (subject, reply, None),
            ClientOp::HPub {
                subject,
                reply,
                header_len,
                ..
            } => {
                if !self.session_has_headers() {
                    // nats-server closes silently on HPUB without headers:true.
                    out.drop(frame.span);
                    self.fail_protocol(&ProtocolError::WrongArgumentCount, out);
                    return;
                }
                (subject, reply, Some(header_len as usize))
            }
            // `whole_frame` reads only frames with a payload.
            _ => {
                out.drop(frame.span);
                self.fail_protocol(&ProtocolError::UnknownOperation, out);
                return;
            }
        };
        let payload_start = frame.payload.start + header_len.unwrap_or(0);
        let payload = &chunk[payload_start..frame.payload.end];
        let publish = Publish {
            subject,
            reply,
            headers: header_len.map(|_| &chunk[frame.payload.start..payload_start]),
            payload: Some(payload),
            payload_len: payload.len() as u32,
        };
        match self.decide_publish(&publish, false, now, out) {
            Outcome::Keep => out.keep(frame.span),
            Outcome::Replace(head) => {
                out.drop(frame.span.start..payload_start);
                out.insert(&head);
                out.keep(payload_start..frame.span.end);
            }
            // The payload was at hand; this does not happen, and the frame is refused if it did.
            Outcome::HoldPayload => {
                out.drop(frame.span);
                self.fail_protocol(&ProtocolError::UnknownOperation, out);
            }
            Outcome::Dropped => {
                out.drop(frame.span);
                // The payload went with the frame.
                self.client_payload = PayloadFate::Forward;
            }
        }
    }

    pub(super) fn session_has_headers(&self) -> bool {
        matches!(&self.state, State::Established(session) if session.headers)
    }

    /// nats-server's publish checks for a PUB (`headers: None`) or an HPUB whose header block is
    /// at hand. `Err` carries the subject the violation names.
    pub(super) fn publish_allowed(
        &mut self,
        subject: &str,
        headers: Option<&[u8]>,
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
        verdict
    }

    /// A held PUB/HPUB has the bytes its decision needs: decide, then forward what is held (or
    /// its rewrite), hold on for the payload, or answer the denial. Sets the fate of the rest
    /// of the payload.
    pub(super) fn release_held_frame(&mut self, now: Duration, out: &mut Rewrite) {
        let PayloadFate::Inspect(mut frame) =
            std::mem::replace(&mut self.client_payload, PayloadFate::Forward)
        else {
            return;
        };
        if !matches!(self.state, State::Established(_)) {
            self.client_payload = PayloadFate::Drop;
            return;
        }
        let header_len = frame.header_len.unwrap_or(0);
        let payload_start = frame.line_len + header_len;
        let payload_len = frame.total_len - header_len;
        let outcome = {
            let payload = &frame.held[payload_start.min(frame.held.len())..];
            let publish = Publish {
                subject: &frame.subject,
                reply: frame.reply.as_deref(),
                headers: frame
                    .header_len
                    .map(|_| &frame.held[frame.line_len..payload_start]),
                payload: (payload.len() == payload_len).then_some(payload),
                payload_len: payload_len as u32,
            };
            self.decide_publish(&publish, frame.permitted, now, out)
        };
        match outcome {
            Outcome::Keep => out.insert(&frame.held),
            Outcome::Replace(head) => {
                out.insert(&head);
                out.insert(&frame.held[payload_start..]);
            }
            Outcome::HoldPayload => {
                frame.permitted = true;
                frame.remaining = payload_start + payload_len - frame.held.len();
                self.client_payload = PayloadFate::Inspect(frame);
            }
            Outcome::Dropped => {}
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

fn trace_destinations(block: &[u8]) -> TraceDestinations {
    const KEY: &[u8] = b"Nats-Trace-Dest";
    let mut traces = TraceDestinations::default();
    let server_reads_traces = block.starts_with(b"NATS/1.0\r\n");
    for line in headers::lines(block) {
        let Some(key) = line.name.filter(|key| key.eq_ignore_ascii_case(KEY)) else {
            continue;
        };
        let value = String::from_utf8_lossy(line.value).into_owned();
        if server_reads_traces && key == KEY && traces.read_by_server.is_none() {
            traces.read_by_server = Some(value);
        } else {
            traces.others.push(value);
        }
    }
    traces
}

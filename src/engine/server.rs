//! Server → client frames: deliveries (nats-server's delivery-time deny filter, UNSUB max,
//! allow_responses bookkeeping), PONGs that carry natsguard's answers, INFO.

use std::time::Duration;

use super::observe::DecisionKind;
use super::output::Rewrite;
use super::{
    forward_control_line, AuditEvent, Close, Connection, Forward, Gate, PayloadFate, PongOwner,
    Session, State, Verdict,
};
use crate::protocol::{Item, Operation, ServerOp, ServerParser};

impl Connection {
    pub(super) fn process_server(
        &mut self,
        parser: &mut ServerParser,
        chunk: &[u8],
        now: Duration,
    ) -> Verdict {
        let mut out = Rewrite::new(chunk);
        let mut items = parser.feed(chunk);
        loop {
            if !self.pending.to_client.is_empty() && items.at_op_boundary() {
                out.insert(&std::mem::take(&mut self.pending.to_client));
            }
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
                            Some(PongOwner::Unsubscribed { sids, oks }) => {
                                // natsguard's PING after its UNSUBs: nats-server removed them.
                                out.drop(line.span.clone());
                                let theirs = std::mem::take(&mut self.held_oks).saturating_sub(oks);
                                for _ in 0..theirs {
                                    out.insert(b"+OK\r\n");
                                }
                                if let State::Established(session) = &mut self.state {
                                    session.subscriptions.unsubscribed(&sids);
                                }
                            }
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
                        ServerOp::Ok if self.awaits_unsubscribe_oks() => {
                            // Maybe the answer to natsguard's UNSUB: held until its PONG says.
                            out.drop(line.span.clone());
                            self.held_oks += 1;
                        }
                        ServerOp::Err { .. } if self.held_oks > 0 => {
                            // An error answers a frame sent before natsguard's UNSUBs, so every
                            // +OK held so far was the client's.
                            out.drop(line.span.clone());
                            for _ in 0..std::mem::take(&mut self.held_oks) {
                                out.insert(b"+OK\r\n");
                            }
                            forward_control_line(&mut out, &line);
                        }
                        ServerOp::Ping | ServerOp::Ok | ServerOp::Err { .. } => {
                            forward_control_line(&mut out, &line)
                        }
                    }
                }
            }
        }
        if !self.pending.to_client.is_empty() && items.at_op_boundary() {
            out.insert(&std::mem::take(&mut self.pending.to_client));
        }
        Verdict {
            forward: out.finish(),
            close: None,
        }
    }

    /// Whether the next answers due are natsguard's own UNSUBs' `+OK`s (verbose connections):
    /// nats-server answers frames in order, so they are the last `+OK`s before its PONG.
    fn awaits_unsubscribe_oks(&self) -> bool {
        matches!(self.pongs.front(), Some(PongOwner::Unsubscribed { oks, .. }) if *oks > 0)
    }

    /// Whether a MSG/HMSG reaches the client; counts both kinds and their bytes. Other ops are not
    /// deliveries: never forwarded from here.
    pub(super) fn delivers(&mut self, op: &ServerOp, now: Duration) -> bool {
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
        let bytes = u64::from(op.payload_len().unwrap_or_default());
        let counters = &mut self.report.counters;
        if delivered {
            counters.deliveries_allowed += 1;
            counters.delivery_bytes_allowed += bytes;
        } else {
            counters.deliveries_filtered += 1;
            counters.delivery_bytes_filtered += bytes;
        }
        delivered
    }

    /// Whether a MSG/HMSG reaches the client: not on a revoked subscription, nats-server's
    /// deny-on-delivery filter, the subscription's UNSUB max, and allow_responses bookkeeping
    /// of its reply subject.
    pub(super) fn deliver(
        &mut self,
        subject: &str,
        sid: &str,
        reply: Option<&str>,
        now: Duration,
    ) -> bool {
        // Only an established session has subscriptions; a closing connection gets nothing
        // more (its delivery filter must not lapse while its last replies are in flight).
        let State::Established(session) = &mut self.state else {
            return false;
        };
        if session.subscriptions.is_revoked(sid) {
            return false;
        }
        // nats-server counted this delivery toward the sid's UNSUB max when it sent it.
        session.subscriptions.count_delivery(sid);
        let filters = session.permissions.may_filter_deliveries();
        let observed = session
            .observer
            .as_deref()
            .is_some_and(|observer| observer.reads_deliveries_of(sid));
        if !(filters || observed) {
            if let Some(reply) = reply {
                record_reply(session, &self.gate, subject, reply, now);
            }
            return true;
        }
        let queue = session.subscriptions.queue_of(sid);
        let deliver = !filters
            || session
                .permissions
                .should_deliver(subject.as_bytes(), queue.map(str::as_bytes));
        if observed {
            // The observer's reading needs `self`: the queue name is copied for it.
            let queue: Option<Box<str>> = queue.map(Into::into);
            let queue = queue.as_deref();
            let queue_bytes = queue.map(str::as_bytes);
            self.observe(
                DecisionKind::Deliver,
                subject,
                queue,
                deliver,
                |permissions| {
                    let delivers = permissions.should_deliver(subject.as_bytes(), queue_bytes);
                    if let (true, Some(reply)) = (delivers, reply) {
                        permissions.record_delivered_reply(reply.as_bytes(), now);
                    }
                    delivers
                },
                |permissions| permissions.explain_delivery(subject.as_bytes(), queue_bytes),
            );
        }
        let State::Established(session) = &mut self.state else {
            return false;
        };
        if !deliver {
            return false;
        }
        if let Some(reply) = reply {
            record_reply(session, &self.gate, subject, reply, now);
        }
        true
    }
}

/// allow_responses bookkeeping of a delivered message's reply subject; a response to a message
/// on a subject provenance stamps is stamped too.
fn record_reply(session: &mut Session, gate: &Gate, subject: &str, reply: &str, now: Duration) {
    let permissions = &mut session.permissions;
    permissions.record_delivered_reply(reply.as_bytes(), now);
    if let (Some(provenance), Some(stamping)) =
        (gate.policy.provenance(), session.stamping.as_deref_mut())
    {
        if stamping.selects(provenance, subject.as_bytes()) {
            permissions.note_reply_answers_selected(reply.as_bytes());
        }
    }
}

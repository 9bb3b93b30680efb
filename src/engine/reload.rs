//! A newer configuration for an open connection: what nats-server does to its live clients on a
//! configuration reload (server/reload.go `reloadAuthorization`, server/client.go
//! `processSubsOnConfigReload`), done when Envoy delivers a new configuration of the plugin.
//!
//! - The identity is checked again (trust domains, token verified against the new providers and
//!   keys). Refused, or matched by no rule under `default_action: deny`: `Authorization
//!   Violation`, then close.
//! - The permissions are resolved again; the decision cache, the delivery filter and the
//!   allow_responses grants start afresh (nats-server's `setPermissions` builds a new reply table
//!   too: a grant is never carried into permissions that did not give it).
//! - Every open subscription is checked again; each one no longer allowed is removed: its
//!   deliveries stop now, `UNSUB <sid>` goes to nats-server, and the client gets nats-server's
//!   reload `-ERR` with the sid. The subscriptions still allowed re-arm the delivery filter, as
//!   nats-server's `canSubscribe` does for them.
//!
//! - Provenance (the headers stamped, their names, the signing key, the reserved headers) is the
//!   new configuration's from the next publish on; in a dry run nothing is stamped.
//!
//! Decisions change at once; what must be said waits for a frame boundary in each direction
//! (see [`super::Pending`]).

use std::rc::Rc;
use std::time::Duration;

use super::observe::{DecisionKind, Observer};
use super::provenance::Stamping;
use super::telemetry::{Decision, MetricLabels};
use super::{AuditEvent, Connection, Gate, State, AWAIT_KEYS_TIMEOUT};
use crate::identity::{AuthOutcome, Identity};
use crate::policy::{Mode, SubscribeDecision};
use crate::protocol::{reload_subscription_violation, AUTHORIZATION_VIOLATION};

impl Connection {
    /// Decides this connection by a newer configuration of its plugin from now on. A
    /// connection still in its handshake simply continues under it (a held CONNECT is decided
    /// by it when the keys arrive).
    pub fn adopt(&mut self, gate: Rc<Gate>, now: Duration) {
        self.client
            .set_max_connect_line(gate.policy.limits().max_connect_line as usize);
        self.gate = gate;
        if !matches!(self.state, State::Established(_)) {
            return;
        }
        self.report.counters.reevaluated += 1;
        match self.gate.policy.mode() {
            Mode::Enforce => {
                if !self.enforce_again(now) {
                    return;
                }
            }
            Mode::DryRun => self.release(now),
        }
        self.read_again(now);
    }

    /// The new configuration enforces: identity, permissions and subscriptions are decided
    /// again. `false` when it refuses the connection.
    fn enforce_again(&mut self, now: Duration) -> bool {
        let Some(identity) = self.verify_identity_again(now) else {
            return false;
        };
        let State::Established(session) = &mut self.state else {
            return false;
        };
        let version = self.gate.policy.version();
        let Ok(permissions) = self.gate.policy.resolve(&identity) else {
            self.revoke("no_matching_rule", now);
            return false;
        };
        session.valid_until = identity.valid_until();
        session.stamping = Stamping::of(&self.gate, &identity);
        session.identity = identity;
        session.permissions = permissions;
        let labels = MetricLabels::of(Some(&session.identity), session.permissions.matched_rules());
        let revoked: Vec<Box<str>> = session
            .subscriptions
            .iter()
            .filter(|(_, subscription)| {
                session.permissions.check_subscribe(
                    subscription.subject.as_bytes(),
                    subscription.queue.as_deref().map(str::as_bytes),
                ) == SubscribeDecision::Denied
            })
            .map(|(sid, _)| sid.into())
            .collect();
        for sid in revoked {
            let Some(subscription) = session.subscriptions.revoke(&sid) else {
                continue;
            };
            let queue = subscription.queue.as_deref();
            self.pending.to_client.extend(reload_subscription_violation(
                subscription.subject.as_bytes(),
                queue.map(str::as_bytes),
                sid.as_bytes(),
            ));
            self.report.events.push(AuditEvent::subscription_revoked(
                &subscription.subject,
                queue,
                &sid,
                &session.identity,
                session.permissions.matched_rules(),
                version,
            ));
            self.report.counters.subscriptions_revoked += 1;
            self.pending.unsubscribe.push(sid);
        }
        self.relabel(labels);
        true
    }

    /// The new configuration is a dry run: nothing is enforced on the connection from now on
    /// (it keeps its upstream credentials; a pending key wait ends).
    fn release(&mut self, now: Duration) {
        let State::Established(session) = &mut self.state else {
            return;
        };
        let outcome = {
            let authenticator = self.gate.authenticator.borrow();
            let token = session.token.as_ref().map(|token| &*token.value);
            authenticator.authenticate(self.peer_uri_san.as_deref(), token, now.as_secs())
        };
        if let AuthOutcome::Authenticated(identity) = outcome {
            session.identity = *identity;
        }
        session.valid_until = None;
        session.verify_again_by = None;
        session.permissions = self.gate.policy.unrestricted_permissions();
        session.stamping = None;
        let labels = MetricLabels::of(Some(&session.identity), &[]);
        self.relabel(labels);
    }

    /// The second reading under the new configuration (its shadow policy, or the dry run's
    /// policy): what it says of the connection and of each open subscription, compared with
    /// what is applied now (both allow them: they are open).
    fn read_again(&mut self, now: Duration) {
        let State::Established(session) = &mut self.state else {
            return;
        };
        let token = session.token.as_ref().map(|token| token.value.clone());
        session.observer = None;
        let uri_san = self.peer_uri_san.clone();
        let Some(mut second) = Observer::of(&self.gate, uri_san.as_deref(), token.as_deref(), now)
        else {
            return;
        };
        if let Some(refusal) = second.refusal {
            let identity = self.identity().cloned();
            self.compare_connect(&mut second.observer, true, refusal, identity.as_ref());
        }
        let State::Established(session) = &mut self.state else {
            return;
        };
        session.observer = Some(second.observer);
        // (sid, subject, queue) of each open subscription.
        type Open = (Box<str>, Box<str>, Option<Box<str>>);
        let open: Vec<Open> = session
            .subscriptions
            .iter()
            .filter(|(sid, _)| !session.subscriptions.is_revoked(sid))
            .map(|(sid, subscription)| {
                let queue = subscription.queue.clone();
                (sid.into(), subscription.subject.clone(), queue)
            })
            .collect();
        for (sid, subject, queue) in open {
            let queue_bytes = queue.as_deref().map(str::as_bytes);
            let accepted = self.observe(
                DecisionKind::Subscribe,
                &subject,
                queue.as_deref(),
                true,
                |permissions| {
                    permissions.check_subscribe(subject.as_bytes(), queue_bytes)
                        == SubscribeDecision::Allowed
                },
                |permissions| permissions.explain_subscribe(subject.as_bytes(), queue_bytes),
            );
            if let (State::Established(session), Some(accepted)) = (&mut self.state, accepted) {
                if let Some(observer) = session.observer.as_deref_mut() {
                    observer.note_subscription(&sid, accepted);
                }
            }
        }
    }

    /// The connection's SPIFFE ID and token, verified by the current configuration. `None`
    /// when it refuses them (the connection is then being revoked). While the key set of the
    /// token's provider is not fetched yet, the identity proven at CONNECT stands, and the token
    /// is verified again on every tick until [`AWAIT_KEYS_TIMEOUT`].
    fn verify_identity_again(&mut self, now: Duration) -> Option<Identity> {
        let State::Established(session) = &mut self.state else {
            return None;
        };
        let outcome = {
            let authenticator = self.gate.authenticator.borrow();
            // A token counts only if the configuration still reads it from that field.
            let token = session
                .token
                .as_ref()
                .filter(|token| authenticator.token_fields().contains(&token.field))
                .map(|token| &*token.value);
            authenticator.authenticate(self.peer_uri_san.as_deref(), token, now.as_secs())
        };
        match outcome {
            AuthOutcome::Authenticated(identity) => {
                session.verify_again_by = None;
                Some(*identity)
            }
            AuthOutcome::AwaitingKeys { .. } => {
                if session
                    .verify_again_by
                    .is_some_and(|deadline| now >= deadline)
                {
                    self.revoke("jwks_unavailable", now);
                    return None;
                }
                session
                    .verify_again_by
                    .get_or_insert(now + AWAIT_KEYS_TIMEOUT);
                Some(session.identity.clone())
            }
            AuthOutcome::Rejected(rejection) => {
                self.revoke(rejection.reason(), now);
                None
            }
        }
    }

    /// On a tick: a token that waited for its provider's keys under a newer configuration is
    /// verified again.
    pub(super) fn verify_again_if_due(&mut self, now: Duration) {
        let waiting =
            matches!(&self.state, State::Established(session) if session.verify_again_by.is_some());
        if waiting {
            if let Some(identity) = self.verify_identity_again(now) {
                if let State::Established(session) = &mut self.state {
                    session.valid_until = identity.valid_until();
                    session.stamping = Stamping::of(&self.gate, &identity);
                    session.identity = identity;
                }
            }
        }
    }

    /// The current configuration no longer accepts the connection: `Authorization Violation`
    /// with the next server bytes, then close (nats-server does the same on a reload). Nothing
    /// more is delivered or forwarded from now on.
    fn revoke(&mut self, reason: &'static str, now: Duration) {
        if let State::Established(session) = &self.state {
            self.report.events.push(AuditEvent::connection_revoked(
                reason,
                &session.identity,
                self.gate.policy.version(),
            ));
        }
        self.report.counters.revoked += 1;
        self.count_connect(Decision::Revoked, reason);
        self.pending = Default::default();
        self.state = State::MustClose {
            since: now,
            error: AUTHORIZATION_VIOLATION,
        };
    }
}

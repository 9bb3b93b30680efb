//! The handshake: nats-server's INFO on its way to the client, the client's CONNECT
//! (authentication, permissions, the CONNECT forwarded in its place), connections waiting for a
//! provider's first key set, and refusals.

use std::rc::Rc;
use std::time::Duration;

use super::observe::{admit, compare, Admission, Context, DecisionKind, Observer};
use super::output::Rewrite;
use super::provenance;
use super::subscriptions::Subscriptions;
use super::telemetry::{self, MetricLabels};
use super::{
    forward_control_line, AuditEvent, Connection, Forward, Gate, PongOwner, PresentedToken,
    Session, State, Verdict, AWAIT_KEYS_TIMEOUT,
};
use crate::identity::{Identity, TokenField};
use crate::policy::{ConnectionPermissions, Mode, Ruling, UpstreamCredentials};
use crate::protocol::{Connect, ControlLine, Info, ServerOp, AUTHORIZATION_VIOLATION};

impl Connection {
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
        let keys_timed_out = now.saturating_sub(since) >= AWAIT_KEYS_TIMEOUT;
        match self.authenticate(*connect, now, keys_timed_out, &mut out) {
            Decision::Waiting(connect) => {
                self.state = State::AwaitingKeys {
                    connect,
                    since,
                    held,
                };
                None
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

    /// Decides a CONNECT: authenticates, resolves the permissions, and writes what goes
    /// upstream in its place (the CONNECT without the client's credentials, or a PING that will
    /// carry the refusal). `keys_timed_out`: the token's provider had no key set in time, which
    /// refuses the connection. In a dry run nothing is refused and the CONNECT goes as it came;
    /// a second reading (shadow policy, or the dry run's policy) is compared with the decision.
    pub(super) fn authenticate(
        &mut self,
        connect: Connect,
        now: Duration,
        keys_timed_out: bool,
        forwarded: &mut Vec<u8>,
    ) -> Decision {
        let gate = Rc::clone(&self.gate);
        let token = gate
            .authenticator
            .borrow()
            .token_fields()
            .iter()
            .find_map(|field| {
                token_of(&connect, *field).map(|value| PresentedToken {
                    field: *field,
                    value: value.into(),
                })
            });
        let token_value = token.as_ref().map(|token| &*token.value);
        let uri_san = self.peer_uri_san.clone();
        let admission = admit(
            &gate.policy,
            &gate.authenticator.borrow(),
            uri_san.as_deref(),
            token_value,
            now,
        );
        let admitted = match admission {
            Admission::Accepted {
                identity,
                permissions,
            } => Ok((identity, permissions)),
            Admission::Refused { reason, identity } => Err((reason, identity)),
            Admission::Waiting if keys_timed_out => Err(("jwks_unavailable", None)),
            Admission::Waiting => return Decision::Waiting(Box::new(connect)),
        };
        if gate.policy.mode() == Mode::DryRun {
            // Nothing is applied: the policy's decision is only the second reading.
            let (identity, observer) = match admitted {
                Ok((identity, permissions)) => (*identity, Observer::new(Some(permissions))),
                Err((reason, identity)) => {
                    let mut observer = Observer::new(None);
                    self.compare_connect(&mut observer, true, reason, identity.as_deref());
                    (
                        identity.map(|identity| *identity).unwrap_or_default(),
                        observer,
                    )
                }
            };
            let permissions = gate.policy.unrestricted_permissions();
            self.establish(
                &gate,
                connect,
                identity,
                permissions,
                token,
                Some(observer),
                forwarded,
            );
            return Decision::Accepted;
        }
        let second = Observer::of(&gate, uri_san.as_deref(), token_value, now);
        match admitted {
            Ok((identity, permissions)) => {
                let observer = second.map(|mut second| {
                    if let Some(refusal) = second.refusal {
                        self.compare_connect(&mut second.observer, true, refusal, Some(&identity));
                    }
                    second.observer
                });
                self.establish(
                    &gate,
                    connect,
                    *identity,
                    permissions,
                    token,
                    observer,
                    forwarded,
                );
                Decision::Accepted
            }
            Err((reason, identity)) => {
                if let Some(mut second) = second.filter(|second| second.refusal.is_none()) {
                    self.compare_connect(&mut second.observer, false, reason, identity.as_deref());
                }
                self.refuse(forwarded, reason, identity.as_deref());
                Decision::Refused
            }
        }
    }

    /// The connection is accepted under `permissions`: its CONNECT goes upstream (signed as a
    /// trusted proxy), and its frames are decided from now on.
    #[allow(clippy::too_many_arguments)]
    fn establish(
        &mut self,
        gate: &Gate,
        mut connect: Connect,
        identity: Identity,
        permissions: ConnectionPermissions,
        token: Option<PresentedToken>,
        observer: Option<Box<Observer>>,
        forwarded: &mut Vec<u8>,
    ) {
        // A dry run forwards the CONNECT as the client sent it (no proxy signature either):
        // nats-server authenticates the client as before natsguard was there.
        if gate.policy.mode() == Mode::Enforce {
            connect.remove_credentials();
            match gate.policy.upstream() {
                Some(UpstreamCredentials::UserPassword { user, pass }) => {
                    connect.set("user", user.as_str());
                    connect.set("pass", pass.as_str());
                }
                Some(UpstreamCredentials::Token(token)) => {
                    connect.set("auth_token", token.as_str())
                }
                None => {}
            }
            if let (Some(signer), Some(nonce)) = (&gate.proxy_signer, &self.nonce) {
                connect.set("proxy_sig", signer.sign_nonce(nonce));
            }
        }
        connect.write_line(forwarded);
        self.relabel(MetricLabels::of(
            Some(&identity),
            permissions.matched_rules(),
        ));
        self.count_connect(telemetry::Decision::Allowed, "");
        self.report.events.push(AuditEvent::connection_start(
            &identity,
            permissions.matched_rules(),
            gate.policy.version(),
            gate.policy.mode(),
            gate.policy.shadow().is_some(),
            gate.policy.provenance(),
        ));
        let stamping = provenance::Stamping::of(gate, &identity);
        self.state = State::Established(Box::new(Session {
            valid_until: identity.valid_until(),
            headers: connect.headers() == Some(true),
            // nats-server's default when the key is absent.
            verbose: connect.verbose() != Some(false),
            // Only a token that was verified is worth keeping.
            token: token.filter(|_| identity.jwt.is_some()),
            identity,
            permissions,
            verify_again_by: None,
            subscriptions: Subscriptions::default(),
            observer,
            stamping,
            removals_reported: 0,
        }));
    }

    /// The connection's admission under both readings, when they differ.
    pub(super) fn compare_connect(
        &mut self,
        observer: &mut Observer,
        applied: bool,
        reason: &'static str,
        identity: Option<&Identity>,
    ) {
        let ruling = |allowed: bool, text: &str| Ruling {
            allowed,
            entry: None,
            reason: text.to_owned(),
            nats_server_allows: None,
        };
        let (applied_ruling, observed_ruling) = if applied {
            let applied_text = if self.gate.policy.mode() == Mode::DryRun {
                "dry run: nothing is enforced"
            } else {
                "accepted"
            };
            (ruling(true, applied_text), ruling(false, reason))
        } else {
            (ruling(false, reason), ruling(true, "accepted"))
        };
        let context = Context {
            identity,
            peer_uri_san: self.peer_uri_san.as_deref(),
            mode: self.gate.policy.mode(),
            policy_version: self.gate.policy.version(),
        };
        compare(
            &mut observer.reported,
            DecisionKind::Connect,
            "",
            None,
            applied,
            !applied,
            || (applied_ruling, observed_ruling),
            &context,
            &mut self.report,
        );
    }

    /// Refuses the connection with `Authorization Violation`: a PING goes upstream in place
    /// of the refused frames and its PONG becomes the error, then the connection closes.
    pub(super) fn refuse(
        &mut self,
        upstream: &mut Vec<u8>,
        reason: &'static str,
        identity: Option<&Identity>,
    ) {
        if !matches!(self.state, State::Established(_)) {
            // An established connection keeps the labels it was counted under.
            self.labels = MetricLabels::of(identity, &[]);
        }
        self.count_connect(telemetry::Decision::Denied, reason);
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

    /// INFO: learn `max_payload` and the nonce, refuse a server that wants TLS (the filter
    /// could not read the protocol), and rewrite what the client must not see or must know.
    pub(super) fn server_info(
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
}

pub(super) enum Decision {
    Accepted,
    Refused,
    Waiting(Box<Connect>),
}

pub(super) fn token_of(connect: &Connect, field: TokenField) -> Option<&str> {
    match field {
        TokenField::AuthToken => connect.auth_token(),
        TokenField::Pass => connect.pass(),
        TokenField::User => connect.user(),
        TokenField::Jwt => connect.jwt(),
    }
}

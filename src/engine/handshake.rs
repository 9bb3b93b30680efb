//! The handshake: nats-server's INFO on its way to the client, the client's CONNECT
//! (authentication, permissions, the CONNECT forwarded in its place), connections waiting for a
//! provider's first key set, and refusals.

use std::rc::Rc;
use std::time::Duration;

use super::output::Rewrite;
use super::subscriptions::Subscriptions;
use super::{
    forward_control_line, AuditEvent, Connection, Forward, PongOwner, PresentedToken, Session,
    State, Verdict, AWAIT_KEYS_TIMEOUT,
};
use crate::identity::{AuthOutcome, Identity, TokenField};
use crate::policy::UpstreamCredentials;
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

    /// Decides a CONNECT: authenticates, resolves the permissions, and writes what goes
    /// upstream in its place (the CONNECT without the client's credentials, or a PING that will
    /// carry the refusal).
    pub(super) fn authenticate(
        &mut self,
        mut connect: Connect,
        now: Duration,
        forwarded: &mut Vec<u8>,
    ) -> Decision {
        let gate = Rc::clone(&self.gate);
        let (outcome, token) = {
            let authenticator = gate.authenticator.borrow();
            let token = authenticator.token_fields().iter().find_map(|field| {
                token_of(&connect, *field).map(|value| PresentedToken {
                    field: *field,
                    value: value.into(),
                })
            });
            let value = token.as_ref().map(|token| &*token.value);
            let outcome =
                authenticator.authenticate(self.peer_uri_san.as_deref(), value, now.as_secs());
            (outcome, token)
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
            gate.policy.version(),
        ));
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
        }));
        Decision::Accepted
    }

    /// Refuses the connection with `Authorization Violation`: a PING goes upstream in place
    /// of the refused frames and its PONG becomes the error, then the connection closes.
    pub(super) fn refuse(
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

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
mod client;
mod handshake;
mod observe;
mod output;
pub mod provenance;
mod reload;
mod server;
mod subscriptions;
pub mod telemetry;

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use crate::identity::{Authenticator, ConfigIssue, Identity, NkeySigner, TokenField};
use crate::policy::{ConnectionPermissions, Policy};
use crate::protocol::{
    ClientParser, Connect, ControlLine, Limits, Operation, ServerParser,
    USER_AUTHENTICATION_EXPIRED,
};
use subscriptions::Subscriptions;

pub use audit::{AuditEvent, EventKind};
pub use observe::DecisionKind;
pub use output::Forward;
use output::Rewrite;
use telemetry::MetricLabels;

/// How long a connection may wait for a provider's first remote JWKS before it is refused.
pub const AWAIT_KEYS_TIMEOUT: Duration = Duration::from_secs(5);
/// Client bytes kept while a connection waits for keys (CONNECT is followed by PING, then the
/// client waits; more than this is not a real client).
pub const MAX_HELD_BYTES: usize = 64 * 1024;
/// Longest server control line natsguard reads: a MSG line carries the publisher's subject and
/// reply (each up to the server's limit) plus the sid, and INFO can list many cluster URLs.
pub const MAX_SERVER_CONTROL_LINE: usize = 64 * 1024;
/// After a token expired or a policy update revoked the connection, how long to wait for server
/// bytes to carry the `-ERR` before closing without it.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(2);

/// What every connection of one configuration of a plugin shares: the compiled policy, the
/// authenticator (its remote key sets change at run time) and the trusted-proxy key. A newer
/// configuration is a new `Gate`, which open connections adopt ([`Connection::adopt`]).
pub struct Gate {
    pub policy: Policy,
    pub authenticator: std::cell::RefCell<Authenticator>,
    /// The shadow policy's, when its identity configuration is its own.
    pub shadow_authenticator: Option<std::cell::RefCell<Authenticator>>,
    pub proxy_signer: Option<NkeySigner>,
    /// The `provenance.sign` key.
    pub provenance_signer: Option<NkeySigner>,
}

impl Gate {
    /// Loads a configuration exactly as the filter does: the policy, then its nkey seeds
    /// (`trusted_proxy`, `provenance.sign`). `seed_env` reads a `seed_env`'s variable: `Ok(None)`
    /// leaves the seed unchecked and the gate without that signer (the `natsguard` command,
    /// outside Envoy). Returns the gate and the warnings to report; an error is one line with
    /// the JSON path.
    pub fn load(
        json: &str,
        seed_env: &dyn Fn(&str) -> Result<Option<String>, String>,
    ) -> Result<(Gate, Vec<crate::policy::Warning>), String> {
        let loaded = crate::policy::load(json).map_err(|error| error.to_string())?;
        let policy = &loaded.policy;
        let proxy_signer = signer(policy.trusted_proxy(), "trusted_proxy", seed_env)?;
        let provenance_seed = policy.provenance().and_then(|provenance| provenance.sign());
        let provenance_signer = signer(provenance_seed, "provenance.sign", seed_env)?;
        let gate = Gate::new(loaded.policy, proxy_signer, provenance_signer)
            .map_err(|issue| format!("identity.{}: {}", issue.path, issue.reason))?;
        Ok((gate, loaded.warnings))
    }

    /// A compiled policy with its authenticators (its remote key sets start empty) and signers.
    pub fn new(
        policy: Policy,
        proxy_signer: Option<NkeySigner>,
        provenance_signer: Option<NkeySigner>,
    ) -> Result<Gate, ConfigIssue> {
        let authenticator = Authenticator::new(policy.identity_config())?;
        let shadow_authenticator = match policy.shadow() {
            Some(shadow) if shadow.identity_config() != policy.identity_config() => Some(
                std::cell::RefCell::new(Authenticator::new(shadow.identity_config())?),
            ),
            _ => None,
        };
        Ok(Gate {
            policy,
            authenticator: std::cell::RefCell::new(authenticator),
            shadow_authenticator,
            proxy_signer,
            provenance_signer,
        })
    }

    /// Every authenticator of the gate: the remote key sets to fetch are theirs.
    pub fn authenticators(&self) -> impl Iterator<Item = &std::cell::RefCell<Authenticator>> {
        std::iter::once(&self.authenticator).chain(&self.shadow_authenticator)
    }

    /// The authenticator of the shadow policy (its own, or the enforced one's).
    fn shadow_authenticator(&self) -> &std::cell::RefCell<Authenticator> {
        self.shadow_authenticator
            .as_ref()
            .unwrap_or(&self.authenticator)
    }
}

/// The signer of a seed at `path` (`trusted_proxy`, `provenance.sign`).
fn signer(
    seed: Option<&crate::policy::NkeySeed>,
    path: &str,
    seed_env: &dyn Fn(&str) -> Result<Option<String>, String>,
) -> Result<Option<NkeySigner>, String> {
    use crate::policy::NkeySeed;
    let (seed, at) = match seed {
        None => return Ok(None),
        Some(NkeySeed::Seed(seed)) => (seed.clone(), "seed"),
        Some(NkeySeed::Env(name)) => {
            match seed_env(name).map_err(|reason| format!("{path}.seed_env: {reason}"))? {
                None => return Ok(None),
                Some(seed) => (seed, "seed_env"),
            }
        }
    };
    NkeySigner::from_seed(seed.trim())
        .map(Some)
        .map_err(|error| format!("{path}.{at}: {}", error.reason()))
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
    /// Payload bytes (headers included) of the allowed and of the denied publishes.
    pub publish_bytes_allowed: u64,
    pub publish_bytes_denied: u64,
    pub subscribe_allowed: u64,
    pub subscribe_denied: u64,
    pub deliveries_allowed: u64,
    pub deliveries_filtered: u64,
    /// Payload bytes (headers included) of the deliveries passed and of those filtered out.
    pub delivery_bytes_allowed: u64,
    pub delivery_bytes_filtered: u64,
    /// Times the connection was re-evaluated under a newer configuration.
    pub reevaluated: u64,
    /// Subscriptions a newer configuration no longer allowed.
    pub subscriptions_revoked: u64,
    /// The connection was refused by a newer configuration.
    pub revoked: u64,
    /// Decisions the second reading (shadow policy, or the policy in a dry run) would have
    /// denied where the applied one allowed, by [`DecisionKind`].
    pub shadow_would_deny: [u64; 4],
    /// And would have allowed where the applied one denied.
    pub shadow_would_allow: [u64; 4],
    /// Publishes natsguard stamped with the publisher's identity.
    pub provenance_stamped: u64,
    /// Reserved headers removed from client publishes.
    pub reserved_headers_removed: u64,
}

impl Counters {
    fn plus(&self, other: &Counters) -> Counters {
        Counters {
            publish_allowed: self.publish_allowed + other.publish_allowed,
            publish_denied: self.publish_denied + other.publish_denied,
            publish_bytes_allowed: self.publish_bytes_allowed + other.publish_bytes_allowed,
            publish_bytes_denied: self.publish_bytes_denied + other.publish_bytes_denied,
            subscribe_allowed: self.subscribe_allowed + other.subscribe_allowed,
            subscribe_denied: self.subscribe_denied + other.subscribe_denied,
            deliveries_allowed: self.deliveries_allowed + other.deliveries_allowed,
            deliveries_filtered: self.deliveries_filtered + other.deliveries_filtered,
            delivery_bytes_allowed: self.delivery_bytes_allowed + other.delivery_bytes_allowed,
            delivery_bytes_filtered: self.delivery_bytes_filtered + other.delivery_bytes_filtered,
            reevaluated: self.reevaluated + other.reevaluated,
            subscriptions_revoked: self.subscriptions_revoked + other.subscriptions_revoked,
            revoked: self.revoked + other.revoked,
            shadow_would_deny: std::array::from_fn(|kind| {
                self.shadow_would_deny[kind] + other.shadow_would_deny[kind]
            }),
            shadow_would_allow: std::array::from_fn(|kind| {
                self.shadow_would_allow[kind] + other.shadow_would_allow[kind]
            }),
            provenance_stamped: self.provenance_stamped + other.provenance_stamped,
            reserved_headers_removed: self.reserved_headers_removed
                + other.reserved_headers_removed,
        }
    }
}

/// What happened since the last [`Connection::take_report`], for metrics and the audit log.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub counters: Counters,
    pub events: Vec<AuditEvent>,
    /// The labelled metrics ([`telemetry`]).
    pub labelled: Labelled,
}

/// What the labelled metrics of a report count: the connection decisions, and under which
/// names the frame counters count from now on.
#[derive(Debug, Default, PartialEq)]
pub struct Labelled {
    /// The stat names of the frame counters ([`telemetry::FRAME_SLOTS`]), when they changed
    /// (the connection was accepted, or adopted a newer configuration): the counters of this
    /// report and of later ones count under them.
    pub frame_stat_names: Option<Box<telemetry::FrameStatNames>>,
    /// One stat name per connection decision: each counts one.
    pub connect_stat_names: Vec<String>,
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
    /// natsguard's own PING after the UNSUBs of revoked subscriptions: its PONG (swallowed)
    /// confirms nats-server removed them. `oks`: the `+OK`s nats-server sends a verbose client
    /// for those UNSUBs, also natsguard's to swallow.
    Unsubscribed { sids: Vec<Box<str>>, oks: u32 },
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
    /// The token expired, or a newer configuration refused the connection: the next server bytes
    /// carry `error` (client bytes are replaced by a PING to provoke some), then it closes.
    MustClose {
        since: Duration,
        error: &'static [u8],
    },
    /// The connection is being closed: nothing more is forwarded either way.
    Closing,
}

#[derive(Debug)]
struct Session {
    identity: Identity,
    permissions: ConnectionPermissions,
    valid_until: Option<u64>,
    headers: bool,
    /// CONNECT `verbose` (nats-server's default when absent: true): the server answers `+OK`.
    verbose: bool,
    /// The token that authenticated the connection, kept (never logged) to verify it again
    /// under a newer configuration.
    token: Option<PresentedToken>,
    /// A newer configuration's key set for the token's provider was not fetched yet: verify the
    /// token again until then (the connection is refused at this deadline).
    verify_again_by: Option<Duration>,
    subscriptions: Subscriptions,
    /// The second reading of the connection's decisions (shadow policy, dry run).
    observer: Option<Box<observe::Observer>>,
    /// What the connection's stamped messages get (an enforced `provenance` configuration).
    stamping: Option<Box<provenance::Stamping>>,
    /// Reserved-header removals reported in audit lines so far (all are counted).
    removals_reported: u32,
}

struct PresentedToken {
    field: TokenField,
    value: Box<str>,
}

impl std::fmt::Debug for PresentedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PresentedToken {{ field: {:?}, value: <redacted> }}",
            self.field
        )
    }
}

/// What a newer configuration left to say: it travels at the next frame boundary of each
/// direction (Envoy lets a network filter write only into the chunks it is handed).
#[derive(Debug, Default)]
struct Pending {
    /// Sids of revoked subscriptions to UNSUB at nats-server.
    unsubscribe: Vec<Box<str>>,
    /// nats-server's reload `-ERR` lines for the client.
    to_client: Vec<u8>,
}

/// Whether the payload of the frame being streamed is forwarded.
#[derive(Debug, PartialEq, Eq)]
enum PayloadFate {
    Forward,
    Drop,
    /// A PUB or HPUB held until the bytes its decision needs arrived: the header block (a
    /// `Nats-Trace-Dest` header is a publish too, reserved headers are removed), or the whole
    /// payload (a provenance signature covers it).
    Inspect(Box<HeldFrame>),
}

#[derive(Debug, PartialEq, Eq)]
struct HeldFrame {
    /// The canonical PUB/HPUB line, then the payload bytes (headers first) received so far.
    held: Vec<u8>,
    line_len: usize,
    /// The header block's length; `None` for a PUB.
    header_len: Option<usize>,
    /// The payload's length, header block included.
    total_len: usize,
    /// Bytes still to hold before the frame is decided again.
    remaining: usize,
    subject: Box<str>,
    reply: Option<Box<str>>,
    /// The permissions allowed it already (only the payload was missing).
    permitted: bool,
}

/// Largest HPUB header block natsguard holds to read it when the block is split across reads
/// (real header blocks are a few hundred bytes).
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
    /// `+OK`s held back while natsguard's UNSUBs are answered (only on verbose connections).
    held_oks: u32,
    pending: Pending,
    peer_uri_san: Option<String>,
    nonce: Option<String>,
    report: Report,
    totals: Counters,
    /// What the labelled metrics say about the connection.
    labels: MetricLabels,
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
            held_oks: 0,
            pending: Pending::default(),
            peer_uri_san: None,
            nonce: None,
            report: Report::default(),
            totals: Counters::default(),
            labels: MetricLabels::default(),
        }
    }

    /// The connection's labels from now on: its frame counters count under their names.
    fn relabel(&mut self, labels: MetricLabels) {
        self.labels = labels;
        let names = self.labels.frame_stat_names(self.gate.policy.dimensions());
        self.report.labelled.frame_stat_names = Some(Box::new(names));
    }

    /// Counts a connection decision under the connection's labels.
    fn count_connect(&mut self, decision: telemetry::Decision, reason: &str) {
        let name = self.labels.stat_name(
            self.gate.policy.dimensions(),
            telemetry::Family::Connect,
            decision,
            reason,
        );
        self.report.labelled.connect_stat_names.push(name);
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

    /// The version of the configuration deciding this connection.
    pub fn policy_version(&self) -> &str {
        self.gate.policy.version()
    }

    /// The second reading of a frame decision, compared with `applied` (see [`observe`]):
    /// `observe` makes it with the second reading's permissions, `explain` explains a decision
    /// with either side's (only when they differ). The second reading's decision, `None`
    /// without one.
    fn observe(
        &mut self,
        kind: DecisionKind,
        subject: &str,
        queue: Option<&str>,
        applied: bool,
        observe: impl FnOnce(&mut ConnectionPermissions) -> bool,
        explain: impl Fn(&ConnectionPermissions) -> crate::policy::Ruling,
    ) -> Option<bool> {
        let State::Established(session) = &mut self.state else {
            return None;
        };
        let Session {
            permissions,
            observer,
            identity,
            ..
        } = &mut **session;
        let observe::Observer {
            permissions: Some(observed_permissions),
            reported,
            ..
        } = observer.as_deref_mut()?
        else {
            return None;
        };
        let observed = observe(observed_permissions);
        let mode = self.gate.policy.mode();
        let context = observe::Context {
            identity: Some(identity),
            peer_uri_san: self.peer_uri_san.as_deref(),
            mode,
            policy_version: self.gate.policy.version(),
        };
        let explain_both = || {
            let applied_ruling = match mode {
                crate::policy::Mode::DryRun => observe::dry_run_ruling(),
                crate::policy::Mode::Enforce => observe::settled(explain(permissions), applied),
            };
            let observed_ruling = observe::settled(explain(observed_permissions), observed);
            (applied_ruling, observed_ruling)
        };
        observe::compare(
            reported,
            kind,
            subject,
            queue,
            applied,
            observed,
            explain_both,
            &context,
            &mut self.report,
        );
        Some(observed)
    }

    /// Whether the connection was created under, or adopted, this configuration.
    pub fn is_decided_by(&self, gate: &Rc<Gate>) -> bool {
        Rc::ptr_eq(&self.gate, gate)
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
            State::MustClose { error, .. } => {
                // Provoke server bytes to carry the -ERR; the client's frames are not executed.
                let error = error.to_vec();
                self.state = State::Closing;
                self.pongs.push_back(PongOwner::ErrorThenClose(Some(error)));
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

    /// Periodic check: token expiry, a token still to verify under a newer configuration.
    /// Returns a close to apply now.
    pub fn tick(&mut self, now: Duration) -> Option<Close> {
        self.expire_if_due(now);
        self.verify_again_if_due(now);
        match self.state {
            State::MustClose { since, .. } if now.saturating_sub(since) >= EXPIRY_GRACE => {
                self.state = State::Closing;
                Some(Close::Now)
            }
            _ => None,
        }
    }

    fn expire_if_due(&mut self, now: Duration) {
        let State::Established(session) = &mut self.state else {
            return;
        };
        if session
            .valid_until
            .is_none_or(|until| now.as_secs() < until)
        {
            return;
        }
        if self.gate.policy.mode() == crate::policy::Mode::DryRun {
            // Reported as the refusal it would be; the connection stays.
            session.valid_until = None;
            let identity = session.identity.clone();
            if let Some(mut observer) = session.observer.take() {
                self.compare_connect(&mut observer, true, "jwt_expired", Some(&identity));
                if let State::Established(session) = &mut self.state {
                    session.observer = Some(observer);
                }
            }
            return;
        }
        self.report
            .events
            .push(AuditEvent::expired(&session.identity));
        self.state = State::MustClose {
            since: now,
            error: USER_AUTHENTICATION_EXPIRED,
        };
    }

    /// Server → client bytes.
    pub fn server_data(&mut self, chunk: &[u8], now: Duration) -> Verdict {
        self.expire_if_due(now);
        match self.state {
            State::MustClose { error, .. } => {
                self.state = State::Closing;
                return Verdict {
                    forward: Forward::Replace(error.to_vec()),
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

#[cfg(test)]
mod tests;

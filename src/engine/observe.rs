//! Shadow policies and dry runs: a second reading of every decision — connection admitted,
//! PUB/HPUB (and its trace destinations), SUB, delivery through the filter — reported where it
//! differs from the one applied, never applied itself. With a `shadow` policy the enforced policy
//! decides and the shadow is read beside it; in `mode: dry_run` nothing is enforced (the
//! connection is unrestricted, its CONNECT forwarded as sent) and the policy itself is read.
//!
//! The second reading is the same code with a second [`ConnectionPermissions`]: a connection
//! without a shadow and not in a dry run has no observer, and costs one branch per decision.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use super::{AuditEvent, Counters, Gate, Report};
use crate::identity::{AuthOutcome, Authenticator, Identity};
use crate::policy::{ConnectionPermissions, Mode, Policy, Ruling};

/// The kinds of decisions compared (and counted: `natsguard.shadow.would_deny.<kind>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DecisionKind {
    Connect,
    Publish,
    Subscribe,
    Deliver,
}

impl DecisionKind {
    pub const ALL: [DecisionKind; 4] = [
        DecisionKind::Connect,
        DecisionKind::Publish,
        DecisionKind::Subscribe,
        DecisionKind::Deliver,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DecisionKind::Connect => "connect",
            DecisionKind::Publish => "publish",
            DecisionKind::Subscribe => "subscribe",
            DecisionKind::Deliver => "deliver",
        }
    }

    fn op(self) -> &'static str {
        match self {
            DecisionKind::Connect => "CONNECT",
            DecisionKind::Publish => "PUB",
            DecisionKind::Subscribe => "SUB",
            DecisionKind::Deliver => "MSG",
        }
    }
}

/// What one policy says about a connection's identity.
pub(super) enum Admission {
    Accepted {
        identity: Box<Identity>,
        permissions: ConnectionPermissions,
    },
    /// The token's provider has no key set yet.
    Waiting,
    Refused {
        reason: &'static str,
        identity: Option<Box<Identity>>,
    },
}

/// Authenticates with `authenticator`, then finds the permissions under `policy`.
pub(super) fn admit(
    policy: &Policy,
    authenticator: &Authenticator,
    uri_san: Option<&str>,
    token: Option<&str>,
    now: Duration,
) -> Admission {
    match authenticator.authenticate(uri_san, token, now.as_secs()) {
        AuthOutcome::Authenticated(identity) => match policy.resolve(&*identity) {
            Ok(permissions) => Admission::Accepted {
                identity,
                permissions,
            },
            Err(_) => Admission::Refused {
                reason: "no_matching_rule",
                identity: Some(identity),
            },
        },
        AuthOutcome::AwaitingKeys { .. } => Admission::Waiting,
        AuthOutcome::Rejected(rejection) => Admission::Refused {
            reason: rejection.reason(),
            identity: None,
        },
    }
}

/// At most this many differences of one connection get an audit line (the first of each kind
/// and subject); all of them are counted.
const MAX_REPORTED_DIFFERENCES: usize = 32;

/// The second reading of one connection's decisions.
#[derive(Debug)]
pub(super) struct Observer {
    /// `None` when it refused the connection: its frames are not compared then (the
    /// connection's difference says it all).
    pub(super) permissions: Option<ConnectionPermissions>,
    pub(super) reported: BTreeSet<(DecisionKind, Box<str>)>,
    /// Sids of open subscriptions this reading refuses: their deliveries are not compared (the
    /// SUB's difference was reported; under this reading they would not exist).
    pub(super) refused_sids: HashSet<Box<str>>,
}

/// The second reading of a connection's admission.
pub(super) struct SecondReading {
    pub(super) observer: Box<Observer>,
    /// Why it refuses the connection, when it does.
    pub(super) refusal: Option<&'static str>,
}

impl Observer {
    pub(super) fn new(permissions: Option<ConnectionPermissions>) -> Box<Observer> {
        Box::new(Observer {
            permissions,
            reported: BTreeSet::new(),
            refused_sids: HashSet::new(),
        })
    }

    /// The second reading of a connection of `gate`: the shadow policy's (with its own
    /// authenticator, when its identity configuration differs), or in a dry run the policy's
    /// own. `None` without a shadow, and while the shadow's token provider has no key set yet
    /// (the enforced decision does not wait for the shadow's keys).
    pub(super) fn of(
        gate: &Gate,
        uri_san: Option<&str>,
        token: Option<&str>,
        now: Duration,
    ) -> Option<SecondReading> {
        let (policy, authenticator) = match (gate.policy.mode(), gate.policy.shadow()) {
            (Mode::DryRun, _) => (&gate.policy, &gate.authenticator),
            (Mode::Enforce, Some(shadow)) => (shadow, gate.shadow_authenticator()),
            (Mode::Enforce, None) => return None,
        };
        let (permissions, refusal) =
            match admit(policy, &authenticator.borrow(), uri_san, token, now) {
                Admission::Accepted { permissions, .. } => (Some(permissions), None),
                Admission::Refused { reason, .. } => (None, Some(reason)),
                Admission::Waiting => return None,
            };
        Some(SecondReading {
            observer: Observer::new(permissions),
            refusal,
        })
    }

    /// A new subscription on `sid`, and whether this reading accepts it.
    pub(super) fn note_subscription(&mut self, sid: &str, accepted: bool) {
        if accepted {
            self.forget_subscription(sid);
        } else {
            self.refused_sids.insert(sid.into());
        }
    }

    /// The subscription on `sid` ended.
    pub(super) fn forget_subscription(&mut self, sid: &str) {
        self.refused_sids.remove(sid);
    }

    /// Whether deliveries on `sid` are compared.
    pub(super) fn reads_deliveries_of(&self, sid: &str) -> bool {
        self.permissions.is_some() && !self.refused_sids.contains(sid)
    }
}

/// Compares a decision with the second reading's; counts a difference and reports the first of
/// its kind and subject in `reported`. `explain` gives both sides' rulings, only asked for when
/// they differ (explanations cost more than decisions).
#[allow(clippy::too_many_arguments)]
pub(super) fn compare(
    reported: &mut BTreeSet<(DecisionKind, Box<str>)>,
    kind: DecisionKind,
    subject: &str,
    queue: Option<&str>,
    applied: bool,
    observed: bool,
    explain: impl FnOnce() -> (Ruling, Ruling),
    context: &Context,
    report: &mut Report,
) {
    if applied == observed {
        return;
    }
    report.counters.count_difference(kind, observed);
    let key = (kind, subject.into());
    if reported.len() >= MAX_REPORTED_DIFFERENCES || reported.contains(&key) {
        return;
    }
    reported.insert(key);
    let (applied, observed) = explain();
    report.events.push(AuditEvent::shadow_diff(
        kind.op(),
        subject,
        queue,
        &applied,
        &observed,
        context,
    ));
}

/// What a difference's audit line says about the connection.
pub(crate) struct Context<'a> {
    pub(crate) identity: Option<&'a Identity>,
    pub(crate) peer_uri_san: Option<&'a str>,
    pub(crate) mode: Mode,
    pub(crate) policy_version: &'a str,
}

impl Counters {
    fn count_difference(&mut self, kind: DecisionKind, observed_allows: bool) {
        let counts = if observed_allows {
            &mut self.shadow_would_allow
        } else {
            &mut self.shadow_would_deny
        };
        counts[kind as usize] += 1;
    }
}

/// A ruling settled by the decision it explains (an explanation made after a stateful
/// decision — an allow_responses grant used up — may no longer see what decided).
pub(super) fn settled(mut ruling: Ruling, allowed: bool) -> Ruling {
    if ruling.allowed != allowed {
        ruling.allowed = allowed;
        ruling.entry = None;
        ruling.reason =
            "allow_responses: the reply subject of a message delivered to this connection".into();
    }
    ruling
}

/// What a dry run applies: everything passes.
pub(super) fn dry_run_ruling() -> Ruling {
    Ruling {
        allowed: true,
        entry: None,
        reason: "dry run: nothing is enforced".into(),
        nats_server_allows: None,
    }
}

//! natsguard's audit events: one JSON object per line, never a token or a payload.

use serde_json::{json, Map, Value};

use crate::identity::Identity;
use crate::policy::{Mode, Provenance, Ruling};

use super::observe::{Context, DecisionKind};
use super::Counters;

/// What an audit event is about; it also decides the metric it counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// CONNECT accepted.
    ConnectionStart,
    /// The identity could not be established (no or invalid SPIFFE ID or token…).
    AuthFailure,
    /// The identity was established but the policy refuses the connection.
    Refused,
    /// A frame was denied (PUB, SUB).
    Deny,
    /// Reserved headers were removed from a client's publish.
    ReservedHeadersRemoved,
    /// The client (or server) broke the protocol; the connection closes.
    ProtocolError,
    /// The connection's token expired; the connection closes.
    Expired,
    /// A newer configuration no longer allows one of the connection's subscriptions.
    SubscriptionRevoked,
    /// A newer configuration no longer accepts the connection; it closes.
    ConnectionRevoked,
    /// The second reading (shadow policy, or the policy in a dry run) decided otherwise.
    ShadowDiff,
    /// A SUB, allowed or not (`audit.subscriptions`).
    Subscribe,
    /// An UNSUB (`audit.subscriptions`).
    Unsubscribe,
    /// The connection closed.
    ConnectionEnd,
}

/// One audit line and the facts metrics need.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub kind: EventKind,
    /// A stable snake_case reason (empty for connection start/end).
    pub reason: &'static str,
    /// The JSON object logged as is.
    pub json: String,
}

impl AuditEvent {
    fn new(kind: EventKind, reason: &'static str, mut fields: Map<String, Value>) -> AuditEvent {
        let name = match kind {
            EventKind::ConnectionStart => "connection_start",
            EventKind::AuthFailure | EventKind::Refused => "auth_failure",
            EventKind::Deny => "deny",
            EventKind::ReservedHeadersRemoved => "reserved_headers_removed",
            EventKind::ProtocolError => "protocol_error",
            EventKind::Expired => "expired",
            EventKind::SubscriptionRevoked => "subscription_revoked",
            EventKind::ConnectionRevoked => "connection_revoked",
            EventKind::ShadowDiff => "shadow_diff",
            EventKind::Subscribe => "subscribe",
            EventKind::Unsubscribe => "unsubscribe",
            EventKind::ConnectionEnd => "connection_end",
        };
        let mut object = Map::new();
        object.insert("natsguard".into(), name.into());
        if !reason.is_empty() {
            object.insert("reason".into(), reason.into());
        }
        object.append(&mut fields);
        AuditEvent {
            kind,
            reason,
            json: Value::Object(object).to_string(),
        }
    }

    pub(crate) fn connection_start(
        identity: &Identity,
        rules: &[String],
        policy_version: &str,
        mode: Mode,
        shadow: bool,
        provenance: Option<&Provenance>,
    ) -> AuditEvent {
        let mut fields = identity_fields(Some(identity), rules);
        fields.insert("policy_version".into(), policy_version.into());
        fields.insert("mode".into(), mode_name(mode).into());
        fields.insert("shadow".into(), shadow.into());
        fields.insert("provenance".into(), provenance_fields(provenance, mode));
        AuditEvent::new(EventKind::ConnectionStart, "", fields)
    }

    /// Reserved headers (as the client spelled them) removed from a publish to `subject`.
    pub(crate) fn reserved_headers_removed(
        subject: &str,
        headers: &[String],
        identity: &Identity,
    ) -> AuditEvent {
        let mut fields = Map::new();
        fields.insert("op".into(), "PUB".into());
        fields.insert("subject".into(), subject.into());
        fields.insert("headers".into(), headers.into());
        fields.append(&mut identity_fields(Some(identity), &[]));
        AuditEvent::new(EventKind::ReservedHeadersRemoved, "reserved_header", fields)
    }

    /// A publish the permissions allow that provenance refuses: a reserved header under
    /// `reserved_header_action: refuse`, a header block natsguard cannot read with certainty,
    /// a stamped subject the connection cannot carry headers on.
    pub(crate) fn publish_refused(
        subject: &str,
        reason: &'static str,
        identity: &Identity,
    ) -> AuditEvent {
        let mut fields = Map::new();
        fields.insert("op".into(), "PUB".into());
        fields.insert("subject".into(), subject.into());
        fields.append(&mut identity_fields(Some(identity), &[]));
        AuditEvent::new(EventKind::Deny, reason, fields)
    }

    /// The second reading decided otherwise: both decisions and what decided each.
    pub(crate) fn shadow_diff(
        op: &'static str,
        subject: &str,
        queue: Option<&str>,
        applied: &Ruling,
        observed: &Ruling,
        context: &Context,
    ) -> AuditEvent {
        let mut fields = Map::new();
        fields.insert("op".into(), op.into());
        if !subject.is_empty() {
            fields.insert("subject".into(), subject.into());
        }
        if let Some(queue) = queue {
            fields.insert("queue".into(), queue.into());
        }
        fields.insert("enforced".into(), ruling_fields(applied).into());
        fields.insert("shadow".into(), ruling_fields(observed).into());
        fields.insert("mode".into(), mode_name(context.mode).into());
        match context.identity {
            Some(identity) => fields.append(&mut identity_fields(Some(identity), &[])),
            None => {
                fields.insert("spiffe_id".into(), context.peer_uri_san.into());
            }
        }
        fields.insert("policy_version".into(), context.policy_version.into());
        let reason = if observed.allowed {
            "would_allow"
        } else {
            "would_deny"
        };
        AuditEvent::new(EventKind::ShadowDiff, reason, fields)
    }

    /// A newer configuration no longer allows a subscription: it was removed (nats-server's
    /// reload does the same).
    pub(crate) fn subscription_revoked(
        subject: &str,
        queue: Option<&str>,
        sid: &str,
        identity: &Identity,
        rules: &[String],
        policy_version: &str,
    ) -> AuditEvent {
        let mut fields = Map::new();
        fields.insert("op".into(), "SUB".into());
        fields.insert("subject".into(), subject.into());
        if let Some(queue) = queue {
            fields.insert("queue".into(), queue.into());
        }
        fields.insert("sid".into(), sid.into());
        fields.append(&mut identity_fields(Some(identity), rules));
        fields.insert("policy_version".into(), policy_version.into());
        AuditEvent::new(
            EventKind::SubscriptionRevoked,
            "subscription_revoked",
            fields,
        )
    }

    /// A newer configuration no longer accepts the connection: it is closed.
    pub(crate) fn connection_revoked(
        reason: &'static str,
        identity: &Identity,
        policy_version: &str,
    ) -> AuditEvent {
        let mut fields = identity_fields(Some(identity), &[]);
        fields.insert("policy_version".into(), policy_version.into());
        AuditEvent::new(EventKind::ConnectionRevoked, reason, fields)
    }

    pub(crate) fn auth_failure(reason: &'static str, peer_uri_san: Option<&str>) -> AuditEvent {
        let mut fields = Map::new();
        fields.insert("spiffe_id".into(), peer_uri_san.into());
        AuditEvent::new(EventKind::AuthFailure, reason, fields)
    }

    pub(crate) fn refused(reason: &'static str, identity: &Identity) -> AuditEvent {
        AuditEvent::new(
            EventKind::Refused,
            reason,
            identity_fields(Some(identity), &[]),
        )
    }

    pub(crate) fn denied(
        op: &'static str,
        subject: &str,
        queue: Option<&str>,
        identity: &Identity,
        rules: &[String],
        ruling: &Ruling,
    ) -> AuditEvent {
        let mut fields = Map::new();
        fields.insert("op".into(), op.into());
        fields.insert("subject".into(), subject.into());
        if let Some(queue) = queue {
            fields.insert("queue".into(), queue.into());
        }
        if let Some(rule) = ruling.rule() {
            fields.insert("rule".into(), rule.into());
        }
        fields.insert("entry".into(), ruling.reason.as_str().into());
        if let Some(note) = &ruling.nats_server_allows {
            fields.insert("nats_server".into(), note.as_str().into());
        }
        fields.append(&mut identity_fields(Some(identity), rules));
        let reason = if op == "PUB" {
            "publish_denied"
        } else {
            "subscribe_denied"
        };
        AuditEvent::new(EventKind::Deny, reason, fields)
    }

    /// A SUB and what decided it (`audit.subscriptions`).
    pub(crate) fn subscribe(
        subscription: Subscription,
        identity: &Identity,
        rules: &[String],
        ruling: &Ruling,
        policy_version: &str,
    ) -> AuditEvent {
        let mut fields = subscription_fields("SUB", subscription);
        fields.append(&mut ruling_fields(ruling));
        fields.append(&mut identity_fields(Some(identity), rules));
        fields.insert("policy_version".into(), policy_version.into());
        AuditEvent::new(EventKind::Subscribe, "", fields)
    }

    /// An UNSUB (`audit.subscriptions`), always forwarded: `subscription` is the one it ends
    /// (subject and queue unknown when the sid has none), `max` its `max_msgs`.
    pub(crate) fn unsubscribe(
        subscription: Subscription,
        max: Option<u32>,
        identity: &Identity,
        rules: &[String],
        policy_version: &str,
    ) -> AuditEvent {
        let mut fields = subscription_fields("UNSUB", subscription);
        if let Some(max) = max {
            fields.insert("max".into(), max.into());
        }
        fields.insert("decision".into(), "allow".into());
        fields.append(&mut identity_fields(Some(identity), rules));
        fields.insert("policy_version".into(), policy_version.into());
        AuditEvent::new(EventKind::Unsubscribe, "", fields)
    }

    pub(crate) fn protocol_error(reason: &'static str, identity: Option<&Identity>) -> AuditEvent {
        AuditEvent::new(
            EventKind::ProtocolError,
            reason,
            identity_fields(identity, &[]),
        )
    }

    pub(crate) fn expired(identity: &Identity) -> AuditEvent {
        AuditEvent::new(
            EventKind::Expired,
            "jwt_expired",
            identity_fields(Some(identity), &[]),
        )
    }

    pub(crate) fn connection_end(identity: Option<&Identity>, totals: &Counters) -> AuditEvent {
        let mut fields = identity_fields(identity, &[]);
        fields.insert(
            "counts".into(),
            json!({
                "publish_allowed": totals.publish_allowed,
                "publish_denied": totals.publish_denied,
                "subscribe_allowed": totals.subscribe_allowed,
                "subscribe_denied": totals.subscribe_denied,
                "deliveries_filtered": totals.deliveries_filtered,
                "subscriptions_revoked": totals.subscriptions_revoked,
                "shadow_would_deny": difference_counts(&totals.shadow_would_deny),
                "shadow_would_allow": difference_counts(&totals.shadow_would_allow),
                "provenance_stamped": totals.provenance_stamped,
                "reserved_headers_removed": totals.reserved_headers_removed,
            }),
        );
        AuditEvent::new(EventKind::ConnectionEnd, "", fields)
    }
}

/// What a subscription audit line names: the sid, and the subject and queue when known.
pub(crate) struct Subscription<'a> {
    pub(crate) sid: &'a str,
    pub(crate) subject: Option<&'a str>,
    pub(crate) queue: Option<&'a str>,
}

fn subscription_fields(op: &str, subscription: Subscription) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("op".into(), op.into());
    fields.insert("subject".into(), subscription.subject.into());
    if let Some(queue) = subscription.queue {
        fields.insert("queue".into(), queue.into());
    }
    fields.insert("sid".into(), subscription.sid.into());
    fields
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::DryRun => "dry_run",
    }
}

/// What the connection-start line says of provenance: off (`null`), or the subjects stamped,
/// the header and whether messages are signed; a dry run stamps nothing.
fn provenance_fields(provenance: Option<&Provenance>, mode: Mode) -> Value {
    match (provenance, mode) {
        (Some(provenance), Mode::Enforce) => json!({
            "subjects": provenance.subjects(),
            "header": provenance.names().spiffe,
            "signed": provenance.sign().is_some(),
        }),
        _ => Value::Null,
    }
}

fn ruling_fields(ruling: &Ruling) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert(
        "decision".into(),
        if ruling.allowed { "allow" } else { "deny" }.into(),
    );
    if let Some(rule) = ruling.rule() {
        fields.insert("rule".into(), rule.into());
    }
    fields.insert("entry".into(), ruling.reason.as_str().into());
    fields
}

fn difference_counts(counts: &[u64; 4]) -> Value {
    DecisionKind::ALL
        .iter()
        .map(|kind| (kind.name().to_owned(), Value::from(counts[*kind as usize])))
        .collect::<Map<String, Value>>()
        .into()
}

fn identity_fields(identity: Option<&Identity>, rules: &[String]) -> Map<String, Value> {
    let mut fields = Map::new();
    let spiffe = identity.and_then(|identity| identity.spiffe.as_ref());
    let jwt = identity.and_then(|identity| identity.jwt.as_ref());
    fields.insert("principal".into(), spiffe.map(|s| s.principal()).into());
    fields.insert(
        "namespace".into(),
        spiffe.and_then(|s| s.namespace.clone()).into(),
    );
    fields.insert(
        "service_account".into(),
        spiffe.and_then(|s| s.service_account.clone()).into(),
    );
    fields.insert("jwt_iss".into(), jwt.map(|j| j.issuer.clone()).into());
    fields.insert("jwt_sub".into(), jwt.map(|j| j.subject.clone()).into());
    if !rules.is_empty() {
        fields.insert("rules".into(), rules.into());
    }
    fields
}

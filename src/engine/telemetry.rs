//! natsguard's labelled metrics, the way Istio labels its own: the dimensions are written into
//! the stat name as `<tag>=.=<value>;.;`, and Envoy's `stats_config.stats_tags` (one regex per
//! tag, [`stats_tag_regex`], which is also what Istio's `extraStatTags` generates) take them out
//! again as tags, so `/stats/prometheus` shows
//! `natsguard_publish_total{decision="denied",namespace="billing",service_account="publisher",rule="billing publishers"}`.
//!
//! Which labels a decision gets is decided here, from the connection's identity and the rules it
//! matched, once per connection (at CONNECT, and again when a newer configuration is adopted):
//! the glue defines the stat names of a connection once and then only adds the per-chunk counts
//! ([`frame_counts`]) to their ids. Values are bounded by the configuration and the mesh's
//! identities: never a subject or a token's subject.

use crate::identity::Identity;
use crate::policy::Dimension;

use super::Counters;

/// What a labelled counter counts: the metric `natsguard_<name>` in Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Connections decided at CONNECT (or revoked by a newer configuration).
    Connect,
    /// PUB/HPUB frames (one message each).
    Publish,
    /// Their payload bytes (headers included).
    PublishBytes,
    Subscribe,
    /// MSG/HMSG frames from nats-server to the client.
    Deliver,
    /// Their payload bytes (headers included).
    DeliverBytes,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Connect,
        Family::Publish,
        Family::PublishBytes,
        Family::Subscribe,
        Family::Deliver,
        Family::DeliverBytes,
    ];

    /// The last part of the stat name (`natsguard.<tags>connect_total`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Connect => "connect_total",
            Family::Publish => "publish_total",
            Family::PublishBytes => "publish_bytes_total",
            Family::Subscribe => "subscribe_total",
            Family::Deliver => "deliver_total",
            Family::DeliverBytes => "deliver_bytes_total",
        }
    }
}

/// The `decision` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused (a delivery: filtered out).
    Denied,
    /// Allowed once, then refused by a newer configuration.
    Revoked,
}

impl Decision {
    fn name(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Revoked => "revoked",
        }
    }
}

/// The labelled frame counters of a connection: what [`frame_counts`] counts, by index.
pub const FRAME_SLOTS: [(Family, Decision); 11] = [
    (Family::Publish, Decision::Allowed),
    (Family::Publish, Decision::Denied),
    (Family::PublishBytes, Decision::Allowed),
    (Family::PublishBytes, Decision::Denied),
    (Family::Subscribe, Decision::Allowed),
    (Family::Subscribe, Decision::Denied),
    (Family::Subscribe, Decision::Revoked),
    (Family::Deliver, Decision::Allowed),
    (Family::Deliver, Decision::Denied),
    (Family::DeliverBytes, Decision::Allowed),
    (Family::DeliverBytes, Decision::Denied),
];

/// The counts of [`FRAME_SLOTS`] in `counters` (a chunk's, as the glue counts them).
pub fn frame_counts(counters: &Counters) -> [u64; FRAME_SLOTS.len()] {
    [
        counters.publish_allowed,
        counters.publish_denied,
        counters.publish_bytes_allowed,
        counters.publish_bytes_denied,
        counters.subscribe_allowed,
        counters.subscribe_denied,
        counters.subscriptions_revoked,
        counters.deliveries_allowed,
        counters.deliveries_filtered,
        counters.delivery_bytes_allowed,
        counters.delivery_bytes_filtered,
    ]
}

/// The stat names of a connection's labelled frame counters, by [`FRAME_SLOTS`] index.
pub type FrameStatNames = [String; FRAME_SLOTS.len()];

/// The label value of a namespace or service account the connection has none of.
pub const UNKNOWN: &str = "unknown";

/// What a connection's labelled metrics say about it, its values already escaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricLabels {
    namespace: String,
    service_account: String,
    /// The matched rules' names, each escaped, joined by `,` (empty: none matched).
    rules: String,
}

impl Default for MetricLabels {
    fn default() -> MetricLabels {
        MetricLabels {
            namespace: UNKNOWN.into(),
            service_account: UNKNOWN.into(),
            rules: String::new(),
        }
    }
}

impl MetricLabels {
    /// The labels of a connection with this identity (if known) and these matched rules.
    pub fn of(identity: Option<&Identity>, rules: &[String]) -> MetricLabels {
        let spiffe = identity.and_then(|identity| identity.spiffe.as_ref());
        let part = |value: Option<&String>| escape(value.map_or(UNKNOWN, String::as_str));
        MetricLabels {
            namespace: part(spiffe.and_then(|spiffe| spiffe.namespace.as_ref())),
            service_account: part(spiffe.and_then(|spiffe| spiffe.service_account.as_ref())),
            rules: rules
                .iter()
                .map(|rule| escape(rule))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The stat name of `family`/`decision` with the `dimensions` that are on (in
    /// [`Dimension::ALL`] order); `reason` only where there is one.
    pub fn stat_name(
        &self,
        dimensions: &[Dimension],
        family: Family,
        decision: Decision,
        reason: &str,
    ) -> String {
        let mut name = String::from("natsguard.");
        for dimension in dimensions {
            let value = match dimension {
                Dimension::Decision => decision.name(),
                Dimension::Reason if reason.is_empty() => continue,
                Dimension::Reason => reason,
                Dimension::Namespace => &self.namespace,
                Dimension::ServiceAccount => &self.service_account,
                Dimension::Rule => &self.rules,
            };
            name.push_str(dimension.tag());
            name.push_str("=.=");
            name.push_str(value);
            name.push_str(";.;");
        }
        name.push_str(family.name());
        name
    }

    /// The stat names of the labelled frame counters.
    pub fn frame_stat_names(&self, dimensions: &[Dimension]) -> FrameStatNames {
        FRAME_SLOTS.map(|(family, decision)| self.stat_name(dimensions, family, decision, ""))
    }
}

/// The Envoy `stats_tags` regex of a dimension's tag (Istio's `extraStatTags` form): the first
/// group is cut from the name, the second is the value.
pub fn stats_tag_regex(dimension: Dimension) -> String {
    format!(r"({}=\.=(.*?);\.;)", dimension.tag())
}

/// Bytes a label value carries percent-encoded (`%` and two upper-case hex digits): `%` itself;
/// `;` and `=`, which delimit tags; `.`, which Envoy splits stat names at and which other tag
/// regexes (Istio's `cache.`, `component.`, ...) look for; `,`, which separates rule names; `"`
/// and `\`, which the Prometheus text format escapes; and control characters.
fn is_escaped(byte: u8) -> bool {
    matches!(byte, b'%' | b';' | b'=' | b'.' | b',' | b'"' | b'\\') || byte < 0x20 || byte == 0x7f
}

/// A label value as natsguard writes it into a stat name: [`unescape`] gives the value back.
pub fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for (index, character) in value.char_indices() {
        let byte = value.as_bytes()[index];
        if character.is_ascii() && is_escaped(byte) {
            escaped.push_str(&format!("%{byte:02X}"));
        } else {
            escaped.push(character);
        }
    }
    escaped
}

/// The value [`escape`] wrote (a Prometheus label value of natsguard's; for `rule`, split at
/// `,` first: each part is one rule's name). `None` if it is not one.
pub fn unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut value = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = escaped.get(at + 1..at + 3)?;
            value.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            value.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SpiffeId;

    fn identity(uri: &str) -> Identity {
        Identity {
            spiffe: Some(SpiffeId::parse(uri).expect("a SPIFFE ID")),
            ..Identity::default()
        }
    }

    #[test]
    fn a_stat_name_carries_the_dimensions_in_istio_form() {
        let labels = MetricLabels::of(
            Some(&identity("spiffe://cluster.local/ns/billing/sa/publisher")),
            &["billing publishers".into()],
        );
        assert_eq!(
            labels.stat_name(&Dimension::ALL, Family::Publish, Decision::Denied, ""),
            "natsguard.decision=.=denied;.;namespace=.=billing;.;service_account=.=publisher;.;rule=.=billing publishers;.;publish_total"
        );
        assert_eq!(
            labels.stat_name(
                &[Dimension::Decision, Dimension::Reason],
                Family::Connect,
                Decision::Revoked,
                "no_matching_rule"
            ),
            "natsguard.decision=.=revoked;.;reason=.=no_matching_rule;.;connect_total"
        );
        assert_eq!(
            labels.stat_name(&[], Family::DeliverBytes, Decision::Allowed, ""),
            "natsguard.deliver_bytes_total"
        );
    }

    #[test]
    fn without_a_spiffe_id_namespace_and_service_account_are_unknown() {
        let labels = MetricLabels::of(None, &[]);
        assert_eq!(labels, MetricLabels::default());
        assert_eq!(
            labels.stat_name(&Dimension::ALL, Family::Connect, Decision::Denied, "spiffe_missing"),
            "natsguard.decision=.=denied;.;reason=.=spiffe_missing;.;namespace=.=unknown;.;service_account=.=unknown;.;rule=.=;.;connect_total"
        );
    }

    #[test]
    fn rule_names_are_escaped_so_that_they_round_trip() {
        let names = [
            "billing.publishers",
            "a;.;namespace=.=evil",
            "100% \"quoted\" \\ back",
            "comma, dot. tab\tend",
            "ünïcode — fine",
        ];
        let labels = MetricLabels::of(None, &names.map(String::from));
        let name = labels.stat_name(&[Dimension::Rule], Family::Subscribe, Decision::Allowed, "");
        let regex_value = name
            .strip_prefix("natsguard.rule=.=")
            .and_then(|rest| rest.split_once(";.;"))
            .map(|(value, rest)| {
                assert_eq!(rest, "subscribe_total");
                value
            })
            .expect("one tag");
        assert!(!regex_value.contains(['.', ';', '=', '"', '\\', '\t']));
        let decoded: Vec<String> = regex_value
            .split(',')
            .map(|part| unescape(part).expect("escaped"))
            .collect();
        assert_eq!(decoded, names);
        assert_eq!(escape("ünïcode — fine"), "ünïcode — fine");
    }

    #[test]
    fn unescape_refuses_what_escape_cannot_write() {
        assert_eq!(unescape("%2"), None);
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("%FF"), None, "not UTF-8");
        assert_eq!(unescape("plain"), Some("plain".into()));
    }

    #[test]
    fn the_tag_regex_is_istios() {
        assert_eq!(
            stats_tag_regex(Dimension::ServiceAccount),
            r"(service_account=\.=(.*?);\.;)"
        );
    }
}

//! The labelled metrics a connection reports (stat names once per label change, the chunk's
//! counts) and the subscription audit lines of `audit.subscriptions`.

use super::*;
use crate::engine::telemetry::{frame_counts, FrameStatNames, FRAME_SLOTS};

const SUBSCRIBER: &str = "spiffe://cluster.local/ns/billing/sa/subscriber";

fn policy(rule: &str, extra: &str) -> Rc<Gate> {
    gate(&format!(
        r#"{{
          "identity": {{ "spiffe": {{ "required": true, "trust_domains": ["cluster.local"] }} }},
          "default_action": "deny",
          "rules": [{{ "name": "{rule}", "from": {{ "namespaces": ["billing"] }},
                      "permissions": {{ "publish": {{ "allow": ["billing.>"], "deny": ["billing.admin.>"] }},
                                        "subscribe": {{ "allow": ["billing.> workers", "billing.>"], "deny": ["billing.secret"] }} }} }}]
          {extra}
        }}"#
    ))
}

/// The index of a frame counter in [`FRAME_SLOTS`].
fn slot(name: &str) -> usize {
    FRAME_SLOTS
        .iter()
        .position(|(family, decision)| format!("{}/{decision:?}", family.name()) == name)
        .unwrap_or_else(|| panic!("no slot {name}"))
}

fn frame_names(report: &Report) -> &FrameStatNames {
    report
        .labelled
        .frame_stat_names
        .as_deref()
        .expect("frame stat names")
}

#[test]
fn a_connection_is_labelled_once_and_then_only_counts() {
    let mut connection = Connection::new(policy("billing", ""));
    connection.set_peer_uri_san(Some(PUBLISHER.into()));
    connection.server_data(INFO, NOW);
    connection.client_data(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n", NOW);
    let report = connection.take_report();
    assert_eq!(
        report.labelled.connect_stat_names,
        ["natsguard.decision=.=allowed;.;namespace=.=billing;.;service_account=.=publisher;.;rule=.=billing;.;connect_total"]
    );
    assert_eq!(
        frame_names(&report)[slot("publish_total/Denied")],
        "natsguard.decision=.=denied;.;namespace=.=billing;.;service_account=.=publisher;.;rule=.=billing;.;publish_total"
    );

    client(
        &mut connection,
        b"PUB billing.a 5\r\nhello\r\nHPUB billing.b 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPUB billing.admin.x 3\r\nabc\r\n",
    );
    let report = connection.take_report();
    assert_eq!(report.labelled, Labelled::default(), "named once");
    let counts = frame_counts(&report.counters);
    assert_eq!(counts[slot("publish_total/Allowed")], 2);
    assert_eq!(counts[slot("publish_bytes_total/Allowed")], 5 + 14);
    assert_eq!(counts[slot("publish_total/Denied")], 1);
    assert_eq!(counts[slot("publish_bytes_total/Denied")], 3);

    client(&mut connection, b"SUB billing.> 1\r\n");
    server(&mut connection, b"PONG\r\n");
    server(
        &mut connection,
        b"MSG billing.a 1 5\r\nhello\r\nMSG billing.secret 1 2\r\nno\r\n",
    );
    let counts = frame_counts(&connection.take_report().counters);
    assert_eq!(counts[slot("subscribe_total/Allowed")], 1);
    assert_eq!(counts[slot("deliver_total/Allowed")], 1);
    assert_eq!(counts[slot("deliver_bytes_total/Allowed")], 5);
    assert_eq!(counts[slot("deliver_total/Denied")], 1);
    assert_eq!(counts[slot("deliver_bytes_total/Denied")], 2);
}

#[test]
fn a_refusal_is_counted_with_its_reason_and_the_identity_known_so_far() {
    let mut connection = Connection::new(policy("billing", ""));
    connection.set_peer_uri_san(Some("spiffe://cluster.local/ns/guest/sa/visitor".into()));
    connection.server_data(INFO, NOW);
    connection.client_data(b"CONNECT {\"verbose\":false}\r\n", NOW);
    let report = connection.take_report();
    assert_eq!(
        report.labelled.connect_stat_names,
        ["natsguard.decision=.=denied;.;reason=.=no_matching_rule;.;namespace=.=guest;.;service_account=.=visitor;.;rule=.=;.;connect_total"]
    );
    assert_eq!(report.labelled.frame_stat_names, None);

    let mut connection = Connection::new(policy("billing", ""));
    connection.set_peer_uri_san(None);
    connection.server_data(INFO, NOW);
    connection.client_data(b"CONNECT {\"verbose\":false}\r\n", NOW);
    assert_eq!(
        connection.take_report().labelled.connect_stat_names,
        ["natsguard.decision=.=denied;.;reason=.=spiffe_missing;.;namespace=.=unknown;.;service_account=.=unknown;.;rule=.=;.;connect_total"]
    );
}

#[test]
fn telemetry_dimensions_choose_the_labels_and_a_newer_configuration_relabels() {
    let mut connection = connected(
        policy(
            "old",
            r#", "telemetry": { "dimensions": ["rule", "decision"] }"#,
        ),
        Some(SUBSCRIBER),
    );
    let report = connection.take_report();
    assert_eq!(
        frame_names(&report)[slot("subscribe_total/Allowed")],
        "natsguard.decision=.=allowed;.;rule=.=old;.;subscribe_total"
    );
    connection.adopt(policy("new.rule", ""), NOW);
    let report = connection.take_report();
    assert_eq!(
        frame_names(&report)[slot("subscribe_total/Allowed")],
        "natsguard.decision=.=allowed;.;namespace=.=billing;.;service_account=.=subscriber;.;rule=.=new%2Erule;.;subscribe_total"
    );
    // Refused by the next one: counted as revoked, with its reason.
    connection.adopt(
        gate(r#"{ "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } }, "rules": [] }"#),
        NOW,
    );
    assert_eq!(
        connection.take_report().labelled.connect_stat_names,
        ["natsguard.decision=.=revoked;.;reason=.=no_matching_rule;.;namespace=.=billing;.;service_account=.=subscriber;.;rule=.=new%2Erule;.;connect_total"]
    );
}

fn subscription_lines(report: &Report) -> Vec<serde_json::Value> {
    report
        .events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::Subscribe | EventKind::Unsubscribe))
        .map(|event| serde_json::from_str(&event.json).expect("JSON"))
        .collect()
}

#[test]
fn subscriptions_are_audited_only_when_asked() {
    let mut connection = connected(policy("billing", ""), Some(SUBSCRIBER));
    client(&mut connection, b"SUB billing.a 1\r\nUNSUB 1\r\n");
    assert_eq!(
        subscription_lines(&connection.take_report()),
        Vec::<serde_json::Value>::new()
    );

    let mut connection = connected(
        policy("billing", r#", "audit": { "subscriptions": true }"#),
        Some(SUBSCRIBER),
    );
    connection.take_report();
    client(
        &mut connection,
        b"SUB billing.a workers 1\r\nSUB billing.secret 2\r\nUNSUB 1 10\r\nUNSUB 9\r\n",
    );
    server(&mut connection, b"PONG\r\n");
    let lines = subscription_lines(&connection.take_report());
    let field = |line: &serde_json::Value, name: &str| line[name].clone();
    let summary: Vec<_> = lines
        .iter()
        .map(|line| {
            (
                field(line, "natsguard"),
                field(line, "op"),
                field(line, "subject"),
                field(line, "queue"),
                field(line, "sid"),
                field(line, "decision"),
                field(line, "rule"),
                field(line, "max"),
            )
        })
        .collect();
    use serde_json::{json, Value};
    assert_eq!(
        summary,
        [
            (
                json!("subscribe"),
                json!("SUB"),
                json!("billing.a"),
                json!("workers"),
                json!("1"),
                json!("allow"),
                json!("billing"),
                Value::Null
            ),
            (
                json!("subscribe"),
                json!("SUB"),
                json!("billing.secret"),
                Value::Null,
                json!("2"),
                json!("deny"),
                json!("billing"),
                Value::Null
            ),
            (
                json!("unsubscribe"),
                json!("UNSUB"),
                json!("billing.a"),
                json!("workers"),
                json!("1"),
                json!("allow"),
                Value::Null,
                json!(10)
            ),
            (
                json!("unsubscribe"),
                json!("UNSUB"),
                Value::Null,
                Value::Null,
                json!("9"),
                json!("allow"),
                Value::Null,
                Value::Null
            ),
        ]
    );
    for line in &lines {
        assert_eq!(line["service_account"], "subscriber", "{line}");
        assert!(line["policy_version"].is_string(), "{line}");
    }
}

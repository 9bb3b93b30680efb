//! Host tests of the connection engine: every verdict is checked on the bytes it produces.

use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::policy;
use crate::protocol::AUTHORIZATION_VIOLATION;

const NOW: Duration = Duration::from_secs(1_800_000_000);
const PUBLISHER: &str = "spiffe://cluster.local/ns/billing/sa/publisher";
const INFO: &[u8] =
    b"INFO {\"server_id\":\"S\",\"headers\":true,\"max_payload\":1048576,\"proto\":1} \r\n";

fn gate(policy_json: &str) -> Rc<Gate> {
    let loaded = policy::load(policy_json).expect("valid policy");
    Rc::new(Gate::new(loaded.policy, None, None).expect("identity configuration"))
}

fn billing_policy() -> Rc<Gate> {
    gate(
        r#"{
          "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
          "default_action": "deny",
          "rules": [{
            "name": "billing",
            "from": { "namespaces": ["billing"] },
            "permissions": {
              "publish": { "allow": ["billing.>", "_INBOX.>"], "deny": ["billing.admin.>"] },
              "subscribe": { "allow": ["billing.>", "_INBOX.>", "jobs.* workers"], "deny": ["billing.secret"] },
              "allow_responses": { "max": 1, "expires": "1m" }
            }
          }]
        }"#,
    )
}

/// A connection through which INFO already passed and the given CONNECT was accepted.
fn connected(gate: Rc<Gate>, spiffe_id: Option<&str>) -> Connection {
    let mut connection = Connection::new(gate);
    connection.set_peer_uri_san(spiffe_id.map(String::from));
    assert_eq!(
        connection.server_data(INFO, NOW).forward,
        Forward::Unchanged
    );
    let verdict = connection.client_data(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n", NOW);
    assert_eq!(
        verdict.forward,
        Forward::Replace(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n".to_vec())
    );
    connection
}

fn forwarded(verdict: &Verdict, chunk: &[u8]) -> Vec<u8> {
    match &verdict.forward {
        Forward::Unchanged => chunk.to_vec(),
        Forward::Prefix(len) => chunk[..*len].to_vec(),
        Forward::Replace(bytes) => bytes.clone(),
        Forward::Hold => Vec::new(),
    }
}

fn client(connection: &mut Connection, chunk: &[u8]) -> Vec<u8> {
    let verdict = connection.client_data(chunk, NOW);
    forwarded(&verdict, chunk)
}

fn server(connection: &mut Connection, chunk: &[u8]) -> (Vec<u8>, Option<Close>) {
    let verdict = connection.server_data(chunk, NOW);
    (forwarded(&verdict, chunk), verdict.close)
}

#[test]
fn allowed_frames_pass_untouched() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    let frames = b"SUB billing.> 1\r\nPUB billing.invoice 5\r\nhello\r\nPING\r\n";
    assert_eq!(
        connection.client_data(frames, NOW).forward,
        Forward::Unchanged
    );
    let replies = b"MSG billing.invoice 1 5\r\nhello\r\nPONG\r\n";
    assert_eq!(
        connection.server_data(replies, NOW).forward,
        Forward::Unchanged
    );
    let report = connection.take_report();
    assert_eq!(
        (
            report.counters.publish_allowed,
            report.counters.subscribe_allowed
        ),
        (1, 1)
    );
}

#[test]
fn client_credentials_never_reach_the_server() {
    let mut connection = Connection::new(billing_policy());
    connection.set_peer_uri_san(Some(PUBLISHER.into()));
    server(&mut connection, INFO);
    let upstream = client(
        &mut connection,
        b"CONNECT {\"user\":\"u\",\"pass\":\"secret\",\"auth_token\":\"t\",\"name\":\"app\"}\r\n",
    );
    assert_eq!(upstream, b"CONNECT {\"name\":\"app\"}\r\n");
}

#[test]
fn a_denied_publish_becomes_its_error_in_order_and_the_connection_stays_open() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    let upstream = client(
        &mut connection,
        b"PUB billing.admin.x 5\r\nhello\r\nPUB billing.ok 2\r\nhi\r\nPING\r\n",
    );
    assert_eq!(upstream, b"PING\r\nPUB billing.ok 2\r\nhi\r\nPING\r\n");
    let (downstream, close) = server(&mut connection, b"PONG\r\nPONG\r\n");
    assert_eq!(
        downstream,
        b"-ERR 'Permissions Violation for Publish to \"billing.admin.x\"'\r\nPONG\r\n"
    );
    assert_eq!(close, None);
    let report = connection.take_report();
    assert_eq!(report.counters.publish_denied, 1);
    assert!(report
        .events
        .iter()
        .any(|e| e.kind == EventKind::Deny && e.json.contains("billing.admin.x")));
}

#[test]
fn a_denied_payload_is_dropped_across_chunks() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"PUB secret 10\r\n01234"),
        b"PING\r\n"
    );
    assert_eq!(
        client(&mut connection, b"56789\r\nPUB billing.a 1\r\nx\r\n"),
        b"PUB billing.a 1\r\nx\r\n"
    );
}

#[test]
fn a_denied_queue_subscription_uses_the_queue_wording() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"SUB jobs.a other 7\r\n"),
        b"PING\r\n"
    );
    let (downstream, _) = server(&mut connection, b"PONG\r\n");
    assert_eq!(
        downstream,
        b"-ERR 'Permissions Violation for Subscription to \"jobs.a\" using queue \"other\"'\r\n"
    );
}

fn subscribe_policy(subscribe: &str) -> Rc<Gate> {
    gate(&format!(
        r#"{{
          "identity": {{ "spiffe": {{ "required": true, "trust_domains": ["cluster.local"] }} }},
          "rules": [{{ "name": "subscribers", "permissions": {{ "subscribe": {subscribe} }} }}]
        }}"#
    ))
}

/// Issue 12: a `*` queue entry restricts queue subscribers of `>` to its queue, as nats-server
/// reads it, whatever the plain allows say.
#[test]
fn a_wildcard_queue_entry_restricts_queue_subscribers_of_a_full_wildcard() {
    for (subscribe, frame, sid) in [
        (r#"{"allow": ["* q2", "a.a", ">"]}"#, "SUB > q1 2\r\n", "2"),
        (r#"["c", "* q2", ">"]"#, "SUB > q1 6\r\n", "6"),
    ] {
        let mut connection = connected(subscribe_policy(subscribe), Some(PUBLISHER));
        assert_eq!(
            client(&mut connection, frame.as_bytes()),
            b"PING\r\n",
            "{subscribe}"
        );
        let (downstream, _) = server(&mut connection, b"PONG\r\n");
        assert_eq!(
            downstream,
            b"-ERR 'Permissions Violation for Subscription to \">\" using queue \"q1\"'\r\n",
            "{subscribe} sid {sid}"
        );
        let plain = format!("SUB > {sid}\r\n");
        assert_eq!(client(&mut connection, plain.as_bytes()), plain.as_bytes());
    }
}

/// A SUB that nats-server would allow and only natsguard refuses arms the delivery filter as it
/// arms nats-server's: a message on a denied subject delivered on another sid (a JetStream pull
/// answers on the inbox sid with the stream subject) is dropped.
#[test]
fn a_sub_refused_only_by_natsguard_arms_the_delivery_filter() {
    let mut connection = connected(
        subscribe_policy(r#"{"allow": ["orders.*", "_INBOX.>"], "deny": ["orders.secret"]}"#),
        Some(PUBLISHER),
    );
    assert_eq!(
        client(&mut connection, b"SUB _INBOX.a 1\r\n"),
        b"SUB _INBOX.a 1\r\n"
    );
    assert_eq!(client(&mut connection, b"SUB orders.> 2\r\n"), b"PING\r\n");
    let (downstream, _) = server(
        &mut connection,
        b"PONG\r\nMSG orders.secret 1 $JS.ACK.S.C.1.1.1.1.0 1\r\ns\r\nMSG orders.open 1 1\r\no\r\n",
    );
    assert_eq!(
        downstream,
        b"-ERR 'Permissions Violation for Subscription to \"orders.>\"'\r\nMSG orders.open 1 1\r\no\r\n"
    );
}

#[test]
fn deliveries_of_denied_subjects_are_filtered_for_overlapping_wildcards() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    client(&mut connection, b"SUB billing.* 1\r\n");
    let (downstream, _) = server(
        &mut connection,
        b"MSG billing.secret 1 3\r\nabc\r\nMSG billing.open 1 2\r\nok\r\n",
    );
    assert_eq!(downstream, b"MSG billing.open 1 2\r\nok\r\n");
    // Split inside the filtered payload.
    let (first, _) = server(&mut connection, b"MSG billing.secret 1 4\r\nab");
    let (second, _) = server(&mut connection, b"cd\r\nPING\r\n");
    assert_eq!((first, second), (Vec::new(), b"PING\r\n".to_vec()));
    assert_eq!(connection.take_report().counters.deliveries_filtered, 2);
}

#[test]
fn deliveries_may_exceed_the_client_control_line_limit() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    client(&mut connection, b"SUB billing.> 1\r\n");
    let subject = format!("billing.{}", "x".repeat(4088));
    let line = format!("MSG {subject} 1 _INBOX.{} 1\r\nm\r\n", "r".repeat(100));
    assert_eq!(
        connection.server_data(line.as_bytes(), NOW).forward,
        Forward::Unchanged
    );
}

#[test]
fn a_closing_connection_gets_no_more_deliveries() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    client(&mut connection, b"SUB billing.* 1\r\n");
    client(&mut connection, b"PUB billing.a 1\r\nxy\r\n");
    let (downstream, close) = server(
        &mut connection,
        b"MSG billing.secret 1 1\r\ns\r\nMSG billing.open 1 1\r\no\r\nPONG\r\n",
    );
    assert_eq!(downstream, b"-ERR 'Unknown Protocol Operation'\r\n");
    assert_eq!(close, Some(Close::AfterWrite));
}

#[test]
fn reply_subjects_of_delivered_messages_become_publishable_once() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    client(&mut connection, b"SUB billing.rpc 1\r\n");
    server(&mut connection, b"MSG billing.rpc 1 reply.abc 1\r\nq\r\n");
    assert_eq!(
        client(&mut connection, b"PUB reply.abc 1\r\nr\r\n"),
        b"PUB reply.abc 1\r\nr\r\n"
    );
    assert_eq!(
        client(&mut connection, b"PUB reply.abc 1\r\nr\r\n"),
        b"PING\r\n"
    );
}

#[test]
fn frames_before_connect_are_refused_with_authorization_violation() {
    let mut connection = Connection::new(billing_policy());
    connection.set_peer_uri_san(Some(PUBLISHER.into()));
    server(&mut connection, INFO);
    assert_eq!(
        client(&mut connection, b"PUB billing.x 1\r\nx\r\nCONNECT {}\r\n"),
        b"PING\r\n"
    );
    let (downstream, close) = server(&mut connection, b"PONG\r\n");
    assert_eq!(
        (downstream, close),
        (AUTHORIZATION_VIOLATION.to_vec(), Some(Close::AfterWrite))
    );
    assert_eq!(client(&mut connection, b"PUB billing.x 1\r\nx\r\n"), b"");
}

#[test]
fn identities_that_fail_authentication_are_refused() {
    for (spiffe_id, reason) in [
        (None, "spiffe_missing"),
        (
            Some("spiffe://other.example/ns/billing/sa/publisher"),
            "spiffe_trust_domain",
        ),
        (
            Some("spiffe://cluster.local/ns/guest/sa/visitor"),
            "no_matching_rule",
        ),
        (Some("not a uri"), "spiffe_invalid"),
    ] {
        let mut connection = Connection::new(billing_policy());
        connection.set_peer_uri_san(spiffe_id.map(String::from));
        server(&mut connection, INFO);
        assert_eq!(
            client(&mut connection, b"CONNECT {}\r\nPING\r\n"),
            b"PING\r\n",
            "{reason}"
        );
        let (downstream, close) = server(&mut connection, b"PONG\r\n");
        assert_eq!(
            (downstream, close),
            (AUTHORIZATION_VIOLATION.to_vec(), Some(Close::AfterWrite)),
            "{reason}"
        );
        let report = connection.take_report();
        assert_eq!(report.events.len(), 1, "{reason}");
        assert_eq!(report.events[0].reason, reason);
    }
}

#[test]
fn a_second_connect_closes_the_connection() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"PING\r\nCONNECT {\"user\":\"x\"}\r\n"),
        b"PING\r\nPING\r\n"
    );
    let (downstream, close) = server(&mut connection, b"PONG\r\nPONG\r\n");
    assert_eq!(
        downstream,
        [&b"PONG\r\n"[..], AUTHORIZATION_VIOLATION].concat()
    );
    assert_eq!(close, Some(Close::AfterWrite));
}

#[test]
fn protocol_errors_get_the_servers_error_after_earlier_replies() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"PING\r\nPUB billing.a 2\r\nhiX\r\n"),
        b"PING\r\nPUB billing.a 2\r\nhiPING\r\n"
    );
    // The valid prefix reached the server, whose PONG comes first; ours then carries the error.
    let (downstream, close) = server(&mut connection, b"PONG\r\nPONG\r\n");
    assert_eq!(downstream, b"PONG\r\n-ERR 'Unknown Protocol Operation'\r\n");
    assert_eq!(close, Some(Close::AfterWrite));
}

#[test]
fn lenient_control_lines_are_forwarded_in_canonical_form() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"pub\tbilling.a  000000002\nhi\r\n"),
        b"PUB billing.a 2\r\nhi\r\n"
    );
}

#[test]
fn a_control_line_split_anywhere_reaches_the_server_whole() {
    let stream =
        b"SUB billing.> 1\r\nPUB billing.admin.x 3\r\nabc\r\nPUB billing.y 3\r\nxyz\r\nPING\r\n";
    let reference = {
        let mut connection = connected(billing_policy(), Some(PUBLISHER));
        client(&mut connection, stream)
    };
    assert_eq!(
        reference,
        b"SUB billing.> 1\r\nPING\r\nPUB billing.y 3\r\nxyz\r\nPING\r\n"
    );
    for first in 0..stream.len() {
        for second in first..stream.len() {
            let mut connection = connected(billing_policy(), Some(PUBLISHER));
            let mut upstream = client(&mut connection, &stream[..first]);
            upstream.extend(client(&mut connection, &stream[first..second]));
            upstream.extend(client(&mut connection, &stream[second..]));
            assert_eq!(upstream, reference, "split at {first}, {second}");
        }
    }
}

#[test]
fn server_info_asks_for_a_token_and_hides_cluster_urls() {
    let gate = gate(
        r#"{
          "identity": {
            "spiffe": { "required": false, "trust_domains": ["cluster.local"] },
            "jwt": { "required": true, "providers": [{ "name": "idp", "issuer": "https://idp.example", "audiences": ["nats"],
              "remote_jwks": { "cluster": "idp", "authority": "idp.example", "path": "/jwks" } }] }
          },
          "default_action": "allow",
          "rules": []
        }"#,
    );
    let mut connection = Connection::new(gate);
    let (downstream, _) = server(&mut connection, b"INFO {\"server_id\":\"S\",\"connect_urls\":[\"10.0.0.1:4222\"],\"max_payload\":1024} \r\n");
    assert_eq!(
        downstream,
        b"INFO {\"server_id\":\"S\",\"max_payload\":1024,\"auth_required\":true} \r\n"
    );
    assert_eq!(client(&mut connection, b"CONNECT {}\r\n"), b"PING\r\n");
    assert_eq!(connection.take_report().events[0].reason, "jwt_missing");
}

#[test]
fn a_server_that_requires_tls_is_refused() {
    let mut connection = Connection::new(billing_policy());
    let verdict = connection.server_data(b"INFO {\"tls_required\":true} \r\n", NOW);
    assert_eq!(
        verdict,
        Verdict {
            forward: Forward::Replace(Vec::new()),
            close: Some(Close::Now)
        }
    );
    assert_eq!(
        connection.take_report().events[0].reason,
        "server_requires_tls"
    );
}

#[test]
fn a_denied_hpub_names_what_nats_server_names_then_what_only_natsguard_checks() {
    // (header name, subject, the subject the error names): nats-server reads only the exact
    // `Nats-Trace-Dest`, before the subject; natsguard checks other spellings after it.
    for (key, subject, named) in [
        ("Nats-Trace-Dest", "secret.x", "secret.t"),
        ("nats-trace-dest", "secret.x", "secret.x"),
        ("nats-trace-dest", "billing.a", "secret.t"),
    ] {
        let mut connection = connected(billing_policy(), Some(PUBLISHER));
        let headers = format!("NATS/1.0\r\n{key}: secret.t\r\n\r\n");
        let frame = format!(
            "HPUB {subject} {} {}\r\n{headers}hi\r\n",
            headers.len(),
            headers.len() + 2
        );
        assert_eq!(client(&mut connection, frame.as_bytes()), b"PING\r\n");
        let (downstream, _) = server(&mut connection, b"PONG\r\n");
        assert_eq!(
            String::from_utf8_lossy(&downstream),
            format!("-ERR 'Permissions Violation for Publish to \"{named}\"'\r\n"),
            "{key} on {subject}"
        );
    }
}

#[test]
fn the_end_of_a_connection_counts_everything_and_leaves_pending_counters_for_metrics() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    client(&mut connection, b"PUB billing.a 1\r\nx\r\n");
    connection.take_report();
    client(
        &mut connection,
        b"PUB billing.b 1\r\nx\r\nPUB secret 1\r\nx\r\n",
    );
    let end = connection.connection_end();
    assert!(
        end.json
            .contains("\"publish_allowed\":2,\"publish_denied\":1"),
        "{}",
        end.json
    );
    let pending = connection.take_report().counters;
    assert_eq!((pending.publish_allowed, pending.publish_denied), (1, 1));
}

mod observe;
mod provenance;
mod reload;
mod telemetry;

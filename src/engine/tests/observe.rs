//! Shadow policies and dry runs: the traffic is what the applied decision makes it, byte for
//! byte; every difference of the second reading is counted by kind, and its first occurrence
//! of each subject gets a `shadow_diff` line naming both decisions and what decided each.

use super::*;
use serde_json::Value;

const SUBSCRIBER: &str = "spiffe://cluster.local/ns/billing/sa/subscriber";
const STRANGER: &str = "spiffe://cluster.local/ns/web/sa/frontend";

const BILLING_RULE: &str = r#"{
    "name": "billing",
    "from": { "namespaces": ["billing"] },
    "permissions": {
      "publish": { "allow": ["billing.>", "_INBOX.>"], "deny": ["billing.admin.>"] },
      "subscribe": { "allow": ["billing.>", "_INBOX.>", "jobs.* workers"], "deny": ["billing.secret"] }
    }
  }"#;

/// The billing rule enforced, with `extra` (`"shadow": …` or `"mode": …`) beside it.
fn billing_with(extra: &str) -> Rc<Gate> {
    gate(&format!(
        r#"{{
          "identity": {{ "spiffe": {{ "required": true, "trust_domains": ["cluster.local"] }} }},
          "default_action": "deny",
          "rules": [{BILLING_RULE}],
          {extra}
        }}"#
    ))
}

/// A shadow that narrows billing: no publishing to `billing.refunds.>`, no subscribing to
/// `billing.audit.>` — and lets the web namespace in with `web.>`.
fn narrowing_shadow() -> Rc<Gate> {
    billing_with(
        r#""shadow": { "rules": [
          { "name": "billing v2", "from": { "namespaces": ["billing"] },
            "permissions": {
              "publish": { "allow": ["billing.>", "_INBOX.>"], "deny": ["billing.admin.>", "billing.refunds.>"] },
              "subscribe": { "allow": ["billing.>", "_INBOX.>", "jobs.* workers"], "deny": ["billing.secret", "billing.audit.>"] } } },
          { "name": "web", "from": { "namespaces": ["web"] },
            "permissions": { "publish": ["web.>"], "subscribe": ["web.>"] } }
        ] }"#,
    )
}

fn differences(connection: &mut Connection) -> (Counters, Vec<Value>) {
    let report = connection.take_report();
    let lines = report
        .events
        .iter()
        .filter(|event| event.kind == EventKind::ShadowDiff)
        .map(|event| serde_json::from_str(&event.json).expect("audit lines are JSON"))
        .collect();
    (report.counters, lines)
}

fn kind(kind: DecisionKind) -> usize {
    kind as usize
}

#[test]
fn without_a_shadow_nothing_is_observed() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    client(
        &mut connection,
        b"PUB billing.admin.x 1\r\nx\r\nSUB billing.secret 1\r\n",
    );
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny, [0; 4]);
    assert_eq!(counters.shadow_would_allow, [0; 4]);
    assert!(lines.is_empty());
}

#[test]
fn a_publish_only_the_shadow_denies_passes_and_is_reported_with_both_rulings() {
    let mut connection = connected(narrowing_shadow(), Some(PUBLISHER));
    let frame = b"PUB billing.refunds.42 2\r\nhi\r\n";
    assert_eq!(client(&mut connection, frame), frame);
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.publish_allowed, 1);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Publish)], 1);
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["natsguard"], "shadow_diff");
    assert_eq!(line["reason"], "would_deny");
    assert_eq!(line["op"], "PUB");
    assert_eq!(line["subject"], "billing.refunds.42");
    assert_eq!(line["mode"], "enforce");
    assert_eq!(line["principal"], "cluster.local/ns/billing/sa/publisher");
    assert_eq!(line["enforced"]["decision"], "allow");
    assert_eq!(line["enforced"]["rule"], "billing");
    assert_eq!(line["enforced"]["entry"], "allow billing.>");
    assert_eq!(line["shadow"]["decision"], "deny");
    assert_eq!(line["shadow"]["rule"], "billing v2");
    assert_eq!(line["shadow"]["entry"], "deny billing.refunds.>");
}

#[test]
fn a_publish_only_the_shadow_allows_is_denied_as_before_and_reported() {
    let gate = billing_with(
        r#""shadow": { "rules": [{ "name": "admins", "from": { "namespaces": ["billing"] },
            "permissions": { "publish": [">"], "subscribe": [">"] } }] }"#,
    );
    let mut connection = connected(gate, Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"PUB billing.admin.x 1\r\nx\r\n"),
        b"PING\r\n"
    );
    assert_eq!(
        server(&mut connection, b"PONG\r\n").0,
        b"-ERR 'Permissions Violation for Publish to \"billing.admin.x\"'\r\n"
    );
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.shadow_would_allow[kind(DecisionKind::Publish)], 1);
    assert_eq!(lines[0]["reason"], "would_allow");
    assert_eq!(lines[0]["enforced"]["entry"], "deny billing.admin.>");
    assert_eq!(lines[0]["shadow"]["entry"], "allow >");
}

#[test]
fn a_trace_destination_only_the_shadow_denies_is_reported_by_its_subject() {
    let mut connection = connected(narrowing_shadow(), Some(PUBLISHER));
    let headers = "NATS/1.0\r\nNats-Trace-Dest: billing.refunds.trace\r\n\r\n";
    let frame = format!(
        "HPUB billing.invoice {} {}\r\n{headers}hi\r\n",
        headers.len(),
        headers.len() + 2
    );
    assert_eq!(client(&mut connection, frame.as_bytes()), frame.as_bytes());
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Publish)], 1);
    assert_eq!(lines[0]["subject"], "billing.invoice");
    assert_eq!(lines[0]["shadow"]["entry"], "deny billing.refunds.>");
}

#[test]
fn a_subscription_only_the_shadow_denies_is_made_and_its_deliveries_are_not_compared() {
    let mut connection = connected(narrowing_shadow(), Some(SUBSCRIBER));
    let sub = b"SUB billing.audit.log 7\r\n";
    assert_eq!(client(&mut connection, sub), sub);
    let msg = b"MSG billing.audit.log 7 1\r\nx\r\n";
    assert_eq!(server(&mut connection, msg).0, msg);
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.subscribe_allowed, 1);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Subscribe)], 1);
    // Under the shadow the subscription would not exist: its message is not a difference.
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Deliver)], 0);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["op"], "SUB");
    assert_eq!(lines[0]["shadow"]["entry"], "deny billing.audit.>");
}

#[test]
fn a_delivery_only_the_shadow_filters_is_delivered_and_reported() {
    let mut connection = connected(narrowing_shadow(), Some(SUBSCRIBER));
    client(&mut connection, b"SUB billing.> 1\r\n");
    let msg = b"MSG billing.audit.log 1 1\r\nx\r\nMSG billing.audit.log 1 1\r\nx\r\n";
    assert_eq!(server(&mut connection, msg).0, msg);
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Deliver)], 2);
    assert_eq!(lines.len(), 1, "one line per kind and subject");
    assert_eq!(lines[0]["op"], "MSG");
    assert_eq!(lines[0]["subject"], "billing.audit.log");
    assert_eq!(lines[0]["shadow"]["entry"], "deny billing.audit.>");
}

#[test]
fn a_connection_refused_only_by_the_shadow_is_accepted_and_reported() {
    let gate = billing_with(r#""shadow": { "rules": [] }"#);
    let mut connection = connected(gate, Some(PUBLISHER));
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Connect)], 1);
    assert_eq!(lines[0]["op"], "CONNECT");
    assert_eq!(lines[0]["enforced"]["decision"], "allow");
    assert_eq!(lines[0]["shadow"]["entry"], "no_matching_rule");
    // Its frames are not compared: under the shadow the connection would not exist.
    client(&mut connection, b"PUB billing.a 1\r\nx\r\n");
    let (counters, _) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny, [0; 4]);
}

#[test]
fn a_connection_only_the_shadow_accepts_is_refused_and_reported() {
    let mut connection = Connection::new(narrowing_shadow());
    connection.set_peer_uri_san(Some(STRANGER.into()));
    server(&mut connection, INFO);
    assert_eq!(client(&mut connection, b"CONNECT {}\r\n"), b"PING\r\n");
    assert_eq!(
        server(&mut connection, b"PONG\r\n").0,
        AUTHORIZATION_VIOLATION
    );
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.shadow_would_allow[kind(DecisionKind::Connect)], 1);
    assert_eq!(lines[0]["principal"], "cluster.local/ns/web/sa/frontend");
    assert_eq!(lines[0]["enforced"]["entry"], "no_matching_rule");
}

#[test]
fn repeated_differences_are_all_counted_and_reported_once_per_subject_up_to_a_bound() {
    let mut connection = connected(narrowing_shadow(), Some(PUBLISHER));
    let mut frames = Vec::new();
    for n in 0..100 {
        for _ in 0..3 {
            frames.extend_from_slice(format!("PUB billing.refunds.{n} 1\r\nx\r\n").as_bytes());
        }
    }
    assert_eq!(client(&mut connection, &frames), frames);
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Publish)], 300);
    assert_eq!(lines.len(), 32);
}

#[test]
fn the_connection_lines_say_the_mode_and_the_shadow() {
    let mut connection = connected(narrowing_shadow(), Some(PUBLISHER));
    let report = connection.take_report();
    let start: Value = serde_json::from_str(&report.events[0].json).unwrap();
    assert_eq!(
        (start["mode"].as_str(), start["shadow"].as_bool()),
        (Some("enforce"), Some(true))
    );
    client(&mut connection, b"PUB billing.refunds.1 1\r\nx\r\n");
    let end: Value = serde_json::from_str(&connection.connection_end().json).unwrap();
    assert_eq!(end["counts"]["shadow_would_deny"]["publish"], 1);
}

/// A dry run: whatever the policy would deny reaches the server as the client sent it.
#[test]
fn a_dry_run_forwards_everything_and_reports_what_it_would_deny() {
    let mut connection = Connection::new(billing_with(r#""mode": "dry_run""#));
    connection.set_peer_uri_san(Some(PUBLISHER.into()));
    server(&mut connection, INFO);
    // The client's own credentials go on: nats-server authenticates it as it did before.
    let connect = b"CONNECT {\"user\":\"u\",\"pass\":\"p\",\"headers\":true}\r\n";
    assert_eq!(client(&mut connection, connect), connect);
    let start: Value = serde_json::from_str(&connection.take_report().events[0].json).unwrap();
    assert_eq!(start["mode"], "dry_run");
    let frames = b"PUB billing.admin.x 1\r\nx\r\nSUB billing.secret 1\r\nSUB billing.> 2\r\nSUB secret.* 3\r\nPUB billing.ok 1\r\nx\r\n";
    assert_eq!(client(&mut connection, frames), frames);
    let msgs = b"MSG billing.secret 2 1\r\nx\r\nMSG billing.secret 1 1\r\nx\r\n";
    assert_eq!(server(&mut connection, msgs).0, msgs);
    let (counters, lines) = differences(&mut connection);
    assert_eq!((counters.publish_denied, counters.subscribe_denied), (0, 0));
    assert_eq!(counters.deliveries_filtered, 0);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Publish)], 1);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Subscribe)], 2);
    // sid 2 (billing.>) armed the filter: its billing.secret would be dropped; sid 1 would not
    // exist.
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Deliver)], 1);
    assert_eq!(counters.shadow_would_allow, [0; 4]);
    let publish = &lines[0];
    assert_eq!(publish["mode"], "dry_run");
    assert_eq!(publish["enforced"]["entry"], "dry run: nothing is enforced");
    assert_eq!(publish["shadow"]["entry"], "deny billing.admin.>");
    assert_eq!(lines[2]["shadow"]["entry"], "no allow entry matches");
}

#[test]
fn a_dry_run_accepts_a_connection_the_policy_would_refuse() {
    let mut connection = Connection::new(billing_with(r#""mode": "dry_run""#));
    connection.set_peer_uri_san(Some(STRANGER.into()));
    server(&mut connection, INFO);
    assert_eq!(
        client(&mut connection, b"CONNECT {}\r\n"),
        b"CONNECT {}\r\n"
    );
    let frames = b"PUB anything 1\r\nx\r\n";
    assert_eq!(client(&mut connection, frames), frames);
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Connect)], 1);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Publish)], 0);
    assert_eq!(lines[0]["shadow"]["entry"], "no_matching_rule");
}

#[test]
fn a_configuration_with_a_shadow_reads_the_open_subscriptions_again() {
    let mut connection = connected(billing_policy(), Some(SUBSCRIBER));
    client(
        &mut connection,
        b"SUB billing.audit.log 1\r\nSUB billing.> 2\r\n",
    );
    connection.take_report();
    connection.adopt(narrowing_shadow(), NOW);
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.subscriptions_revoked, 0);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Subscribe)], 1);
    assert_eq!(lines[0]["subject"], "billing.audit.log");
    // sid 1 would not exist under the shadow; sid 2 armed the shadow's delivery filter.
    let msgs = b"MSG billing.audit.x 1 1\r\nx\r\nMSG billing.audit.x 2 1\r\nx\r\n";
    assert_eq!(server(&mut connection, msgs).0, msgs);
    let (counters, _) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Deliver)], 1);
}

#[test]
fn a_dry_run_configuration_releases_an_open_connection() {
    let mut connection = connected(billing_policy(), Some(PUBLISHER));
    client(&mut connection, b"SUB billing.> 1\r\n");
    connection.adopt(billing_with(r#""mode": "dry_run""#), NOW);
    let frames = b"PUB billing.admin.x 1\r\nx\r\n";
    assert_eq!(client(&mut connection, frames), frames);
    let msg = b"MSG billing.secret 1 1\r\nx\r\n";
    assert_eq!(server(&mut connection, msg).0, msg);
    let (counters, _) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Publish)], 1);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Deliver)], 1);
    // And back to enforcing: denied again from the next frame on.
    connection.adopt(billing_policy(), NOW);
    assert_eq!(client(&mut connection, frames), b"PING\r\n");
}

/// An EdDSA token for `alice`, expiring at `exp`, and the public key that verifies it.
fn signed_token(exp: u64) -> (String, String) {
    use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
    let key = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
    let b64 = |bytes: &[u8]| Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap();
    let header = b64(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let payload = b64(format!(
        r#"{{"iss":"https://idp.example","sub":"alice","aud":"nats","exp":{exp}}}"#
    )
    .as_bytes());
    let input = format!("{header}.{payload}");
    let signature = key.sk.sign(input.as_bytes(), None);
    (
        format!("{input}.{}", b64(signature.as_ref())),
        b64(key.pk.as_ref()),
    )
}

fn dry_run_with_provider(keys: &str) -> Rc<Gate> {
    gate(&format!(
        r#"{{ "mode": "dry_run",
             "identity": {{ "jwt": {{ "required": true, "token_fields": ["auth_token"], "providers": [{{
               "name": "idp", "issuer": "https://idp.example", "audiences": ["nats"], "algorithms": ["EdDSA"],
               {keys} }}] }} }},
             "default_action": "allow" }}"#
    ))
}

#[test]
fn a_dry_run_keeps_a_connection_whose_token_expires_and_reports_it() {
    let (token, x) = signed_token(NOW.as_secs() + 1);
    let keys =
        format!(r#""jwks": {{ "keys": [{{ "kty": "OKP", "crv": "Ed25519", "x": "{x}" }}] }}"#);
    let mut connection = Connection::new(dry_run_with_provider(&keys));
    server(&mut connection, INFO);
    let connect = format!("CONNECT {{\"auth_token\":\"{token}\"}}\r\n");
    assert_eq!(
        client(&mut connection, connect.as_bytes()),
        connect.as_bytes()
    );
    let later = NOW + Duration::from_secs(120); // past the clock skew allowance too
    assert_eq!(connection.tick(later), None);
    let ping = b"PING\r\n";
    assert_eq!(forwarded(&connection.client_data(ping, later), ping), ping);
    let (counters, lines) = differences(&mut connection);
    assert_eq!(
        counters.shadow_would_deny[kind(DecisionKind::Connect)],
        1,
        "{lines:?}"
    );
    assert_eq!(lines[0]["shadow"]["entry"], "jwt_expired");
    assert_eq!(lines[0]["jwt_sub"], "alice");
}

#[test]
fn a_dry_run_waits_for_keys_like_enforcement_then_lets_the_connection_in() {
    let (token, _) = signed_token(NOW.as_secs() + 600);
    let keys = r#""remote_jwks": { "cluster": "idp", "authority": "idp", "path": "/jwks" }"#;
    let mut connection = Connection::new(dry_run_with_provider(keys));
    server(&mut connection, INFO);
    let connect = format!("CONNECT {{\"auth_token\":\"{token}\"}}\r\nPING\r\n");
    assert_eq!(
        connection.client_data(connect.as_bytes(), NOW).forward,
        Forward::Hold
    );
    assert_eq!(connection.resume(NOW + Duration::from_secs(1)), None);
    let verdict = connection
        .resume(NOW + AWAIT_KEYS_TIMEOUT)
        .expect("decided at the timeout");
    assert_eq!(verdict.forward, Forward::Replace(connect.into_bytes()));
    let (counters, lines) = differences(&mut connection);
    assert_eq!(counters.shadow_would_deny[kind(DecisionKind::Connect)], 1);
    assert_eq!(lines[0]["shadow"]["entry"], "jwks_unavailable");
}

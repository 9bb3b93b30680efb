//! A newer configuration applied to open connections, as nats-server applies a reload: every
//! verdict checked on the bytes each side receives.

use super::*;
use crate::protocol::{Item, Operation};
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};

const SUBSCRIBER: &str = "spiffe://cluster.local/ns/billing/sa/subscriber";

fn billing(publish: &str, subscribe: &str) -> Rc<Gate> {
    gate(&format!(
        r#"{{
          "identity": {{ "spiffe": {{ "required": true, "trust_domains": ["cluster.local"] }} }},
          "default_action": "deny",
          "rules": [{{ "name": "billing", "from": {{ "namespaces": ["billing"] }},
                      "permissions": {{ "publish": {publish}, "subscribe": {subscribe} }} }}]
        }}"#
    ))
}

fn wide() -> Rc<Gate> {
    billing(
        r#"["billing.>", "_INBOX.>"]"#,
        r#"["billing.>", "jobs.> workers", "jobs.>"]"#,
    )
}

#[test]
fn a_revoked_publish_is_denied_from_the_next_frame_on() {
    let mut connection = connected(wide(), Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"PUB billing.a 1\r\nx\r\n"),
        b"PUB billing.a 1\r\nx\r\n"
    );
    connection.adopt(billing(r#"["_INBOX.>"]"#, r#"["billing.>"]"#), NOW);
    assert_eq!(
        client(&mut connection, b"PUB billing.a 1\r\nx\r\n"),
        b"PING\r\n"
    );
    assert_eq!(
        server(&mut connection, b"PONG\r\n").0,
        b"-ERR 'Permissions Violation for Publish to \"billing.a\"'\r\n"
    );
    let report = connection.take_report();
    assert_eq!(report.counters.reevaluated, 1);
    assert_eq!(report.counters.subscriptions_revoked, 0);
}

#[test]
fn a_granted_publish_passes_from_the_next_frame_on() {
    let mut connection = connected(billing(r#"["_INBOX.>"]"#, "[]"), Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"PUB billing.a 1\r\nx\r\n"),
        b"PING\r\n"
    );
    server(&mut connection, b"PONG\r\n");
    connection.adopt(wide(), NOW);
    assert_eq!(
        client(&mut connection, b"PUB billing.a 1\r\nx\r\n"),
        b"PUB billing.a 1\r\nx\r\n"
    );
}

/// nats-server's reload: the subscription is removed, the client gets the `-ERR` with the sid,
/// the connection stays. Here deliveries stop at once, the `-ERR` goes with the next server
/// bytes, and the UNSUB (then a PING whose PONG natsguard swallows) with the next client bytes.
#[test]
fn a_revoked_subscription_is_removed_and_reported_with_its_sid() {
    let mut connection = connected(wide(), Some(SUBSCRIBER));
    client(
        &mut connection,
        b"SUB billing.> 1\r\nSUB jobs.x workers 2\r\nSUB billing.keep 3\r\n",
    );
    connection.adopt(billing("[]", r#"["billing.keep", "jobs.> other"]"#), NOW);
    let report = connection.take_report();
    assert_eq!(report.counters.subscriptions_revoked, 2);
    let revoked: Vec<_> = report
        .events
        .iter()
        .filter(|event| event.kind == EventKind::SubscriptionRevoked)
        .map(|event| serde_json::from_str::<serde_json::Value>(&event.json).unwrap())
        .collect();
    assert_eq!(revoked.len(), 2);
    assert_eq!(revoked[0]["sid"], "1");
    assert_eq!(revoked[0]["subject"], "billing.>");
    assert_eq!(revoked[1]["queue"], "workers");
    assert_eq!(revoked[1]["rules"], serde_json::json!(["billing"]));
    assert!(revoked[1]["policy_version"]
        .as_str()
        .is_some_and(|v| v.len() == 12));

    // A delivery on a revoked sid is dropped; the -ERRs come first, in sid order.
    let (downstream, _) = server(
        &mut connection,
        b"MSG billing.a 1 1\r\na\r\nMSG billing.keep 3 1\r\nk\r\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&downstream),
        "-ERR 'Permissions Violation for Subscription to \"billing.>\" (sid \"1\")'\r\n\
         -ERR 'Permissions Violation for Subscription to \"jobs.x\" using queue \"workers\" (sid \"2\")'\r\n\
         MSG billing.keep 3 1\r\nk\r\n"
    );
    assert_eq!(
        client(&mut connection, b"PING\r\n"),
        b"UNSUB 1\r\nUNSUB 2\r\nPING\r\nPING\r\n"
    );
    // Until nats-server confirmed the UNSUB, its deliveries in flight are dropped.
    let (downstream, _) = server(
        &mut connection,
        b"MSG billing.b 1 1\r\nb\r\nPONG\r\nPONG\r\n",
    );
    assert_eq!(downstream, b"PONG\r\n");
    // The sid may be used again.
    assert_eq!(
        client(&mut connection, b"SUB billing.keep 1\r\n"),
        b"SUB billing.keep 1\r\n"
    );
    assert_eq!(
        server(&mut connection, b"MSG billing.keep 1 1\r\nk\r\n").0,
        b"MSG billing.keep 1 1\r\nk\r\n"
    );
}

#[test]
fn subscriptions_still_allowed_rearm_the_delivery_filter() {
    let mut connection = connected(wide(), Some(SUBSCRIBER));
    client(&mut connection, b"SUB billing.* 1\r\n");
    assert_eq!(
        server(&mut connection, b"MSG billing.secret 1 1\r\ns\r\n").0,
        b"MSG billing.secret 1 1\r\ns\r\n"
    );
    connection.adopt(
        billing(
            "[]",
            r#"{"allow": ["billing.>"], "deny": ["billing.secret"]}"#,
        ),
        NOW,
    );
    assert_eq!(connection.take_report().counters.subscriptions_revoked, 0);
    let (downstream, _) = server(
        &mut connection,
        b"MSG billing.secret 1 1\r\ns\r\nMSG billing.open 1 1\r\no\r\n",
    );
    assert_eq!(downstream, b"MSG billing.open 1 1\r\no\r\n");
}

#[test]
fn an_identity_no_longer_accepted_is_refused_and_closed() {
    for (what, policy) in [
        (
            "no rule matches",
            r#"{ "identity": { "spiffe": { "trust_domains": ["cluster.local"] } }, "rules": [] }"#,
        ),
        (
            "trust domain removed",
            r#"{ "identity": { "spiffe": { "trust_domains": ["other.example"] } }, "default_action": "allow" }"#,
        ),
    ] {
        let mut connection = connected(wide(), Some(PUBLISHER));
        client(&mut connection, b"SUB billing.> 1\r\n");
        connection.take_report();
        connection.adopt(gate(policy), NOW);
        let report = connection.take_report();
        assert_eq!(report.counters.revoked, 1, "{what}");
        assert_eq!(
            report.events[0].kind,
            EventKind::ConnectionRevoked,
            "{what}"
        );
        // Nothing is delivered any more; the next server bytes become the error, then close.
        assert_eq!(
            server(&mut connection, b"MSG billing.a 1 1\r\na\r\n"),
            (AUTHORIZATION_VIOLATION.to_vec(), Some(Close::AfterWrite)),
            "{what}"
        );
    }
}

#[test]
fn a_revoked_idle_connection_is_closed_after_the_grace_period() {
    let mut connection = connected(wide(), Some(PUBLISHER));
    connection.adopt(
        gate(r#"{ "identity": { "spiffe": { "trust_domains": ["cluster.local"] } } }"#),
        NOW,
    );
    // Client bytes are not executed: a PING provokes server bytes to carry the error.
    assert_eq!(
        client(&mut connection, b"PUB billing.a 1\r\nx\r\n"),
        b"PING\r\n"
    );
    assert_eq!(
        server(&mut connection, b"PONG\r\n"),
        (AUTHORIZATION_VIOLATION.to_vec(), Some(Close::AfterWrite))
    );
    let mut idle = connected(wide(), Some(PUBLISHER));
    idle.adopt(
        gate(r#"{ "identity": { "spiffe": { "trust_domains": ["cluster.local"] } } }"#),
        NOW,
    );
    assert_eq!(idle.tick(NOW + Duration::from_secs(1)), None);
    assert_eq!(idle.tick(NOW + EXPIRY_GRACE), Some(Close::Now));
}

/// What natsguard inserts must never split a frame: the UNSUB waits for the end of a payload
/// in flight, the -ERR for the end of a delivery in flight.
#[test]
fn what_an_update_sends_waits_for_a_frame_boundary() {
    let mut connection = connected(wide(), Some(SUBSCRIBER));
    client(&mut connection, b"SUB billing.> 1\r\n");
    assert_eq!(
        client(&mut connection, b"PUB billing.a 10\r\n01234"),
        b"PUB billing.a 10\r\n01234"
    );
    assert_eq!(
        server(&mut connection, b"MSG billing.b 1 4\r\nab").0,
        b"MSG billing.b 1 4\r\nab"
    );
    connection.adopt(billing(r#"["billing.>"]"#, r#"["jobs.>"]"#), NOW);
    assert_eq!(client(&mut connection, b"567"), b"567");
    assert_eq!(
        client(&mut connection, b"89\r\nPUB billing.c 1\r\nc\r\n"),
        b"89\r\nUNSUB 1\r\nPING\r\nPUB billing.c 1\r\nc\r\n"
    );
    // The rest of the delivery in flight passes (it started before the update); the -ERR
    // follows it.
    let (downstream, _) = server(&mut connection, b"cd\r\nPONG\r\n");
    assert_eq!(
        String::from_utf8_lossy(&downstream),
        "cd\r\n-ERR 'Permissions Violation for Subscription to \"billing.>\" (sid \"1\")'\r\n"
    );
}

/// A verbose client gets a +OK for each of its frames; the +OK nats-server sends for
/// natsguard's UNSUB is swallowed with the PONG that follows it.
#[test]
fn a_verbose_client_gets_no_ok_for_natsguards_unsubscribe() {
    let mut connection = Connection::new(wide());
    connection.set_peer_uri_san(Some(SUBSCRIBER.into()));
    server(&mut connection, INFO);
    client(
        &mut connection,
        b"CONNECT {\"verbose\":true}\r\nSUB billing.> 1\r\nSUB billing.a 2\r\n",
    );
    assert_eq!(
        server(&mut connection, b"+OK\r\n+OK\r\n").0,
        b"+OK\r\n+OK\r\n"
    );
    connection.adopt(billing("[]", r#"["billing.a"]"#), NOW);
    assert_eq!(
        client(&mut connection, b"SUB billing.a 3\r\n"),
        b"UNSUB 1\r\nPING\r\nSUB billing.a 3\r\n"
    );
    let (downstream, _) = server(
        &mut connection,
        b"+OK\r\nMSG billing.a 2 1\r\na\r\nPONG\r\n+OK\r\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&downstream),
        "-ERR 'Permissions Violation for Subscription to \"billing.>\" (sid \"1\")'\r\n\
         MSG billing.a 2 1\r\na\r\n+OK\r\n"
    );
    // A +OK held while natsguard's UNSUB is answered is the client's when an error comes first.
    let mut connection = Connection::new(wide());
    connection.set_peer_uri_san(Some(SUBSCRIBER.into()));
    server(&mut connection, INFO);
    client(&mut connection, b"CONNECT {}\r\nSUB billing.> 1\r\n");
    server(&mut connection, b"+OK\r\n+OK\r\n");
    connection.adopt(billing("[]", r#"["billing.a"]"#), NOW);
    client(&mut connection, b"PING\r\n");
    let (downstream, _) = server(
        &mut connection,
        b"+OK\r\n-ERR 'Invalid Subject'\r\n+OK\r\nPONG\r\nPONG\r\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&downstream),
        "-ERR 'Permissions Violation for Subscription to \"billing.>\" (sid \"1\")'\r\n\
         +OK\r\n-ERR 'Invalid Subject'\r\nPONG\r\n"
    );
}

#[test]
fn allow_responses_grants_do_not_survive_an_update() {
    let with_responses = gate(
        r#"{ "identity": { "spiffe": { "trust_domains": ["cluster.local"] } },
             "rules": [{ "name": "rpc", "permissions": { "subscribe": ["billing.rpc"], "allow_responses": true } }] }"#,
    );
    let mut connection = connected(Rc::clone(&with_responses), Some(PUBLISHER));
    client(&mut connection, b"SUB billing.rpc 1\r\n");
    server(
        &mut connection,
        b"MSG billing.rpc 1 reply.1 1\r\nq\r\nMSG billing.rpc 1 reply.2 1\r\nq\r\n",
    );
    assert_eq!(
        client(&mut connection, b"PUB reply.1 1\r\na\r\n"),
        b"PUB reply.1 1\r\na\r\n"
    );
    // nats-server's setPermissions builds a new reply table on a reload.
    connection.adopt(
        gate(
            r#"{ "identity": { "spiffe": { "trust_domains": ["cluster.local"] } },
                 "rules": [{ "name": "rpc v2", "permissions": { "subscribe": ["billing.rpc"], "allow_responses": true } }] }"#,
        ),
        NOW,
    );
    assert_eq!(
        client(&mut connection, b"PUB reply.2 1\r\na\r\n"),
        b"PING\r\n"
    );
}

/// An identity whose token no longer verifies under the new providers or keys is refused; one
/// that still verifies keeps its connection; the token is verified with the new keys.
#[test]
fn the_token_presented_at_connect_is_verified_again() {
    let key =
        |seed: u8| ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
    let b64 = |bytes: &[u8]| Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap();
    let token = {
        let header = b64(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let payload = b64(format!(
            r#"{{"iss":"https://idp.example","sub":"alice","aud":"nats","exp":{}}}"#,
            NOW.as_secs() + 600
        )
        .as_bytes());
        let input = format!("{header}.{payload}");
        let signature = key(1).sk.sign(input.as_bytes(), None);
        format!("{input}.{}", b64(signature.as_ref()))
    };
    let policy = |seed: u8, audience: &str| {
        let x = b64(key(seed).pk.as_ref());
        gate(&format!(
            r#"{{ "identity": {{ "jwt": {{ "required": true, "token_fields": ["auth_token"], "providers": [{{
                   "name": "idp", "issuer": "https://idp.example", "audiences": ["{audience}"], "algorithms": ["EdDSA"],
                   "jwks": {{ "keys": [{{ "kty": "OKP", "crv": "Ed25519", "x": "{x}" }}] }} }}] }} }},
                 "default_action": "allow" }}"#
        ))
    };
    let connect = |gate: Rc<Gate>| {
        let mut connection = Connection::new(gate);
        server(&mut connection, INFO);
        let frame = format!("CONNECT {{\"verbose\":false,\"auth_token\":\"{token}\"}}\r\n");
        assert_eq!(
            client(&mut connection, frame.as_bytes()),
            b"CONNECT {\"verbose\":false}\r\n"
        );
        connection.take_report();
        connection
    };
    let mut connection = connect(policy(1, "nats"));
    connection.adopt(policy(1, "nats"), NOW);
    assert_eq!(
        connection.take_report().counters.revoked,
        0,
        "the same key still verifies"
    );
    for (what, gate) in [
        ("key rotated away", policy(2, "nats")),
        ("audience changed", policy(1, "other")),
    ] {
        let mut connection = connect(policy(1, "nats"));
        connection.adopt(gate, NOW);
        let report = connection.take_report();
        assert_eq!(report.counters.revoked, 1, "{what}");
        assert!(
            report.events[0].reason.starts_with("jwt_"),
            "{what}: {}",
            report.events[0].reason
        );
    }
}

/// Offsets in a stream where one frame ends and the next begins (0 included).
fn frame_boundaries<D: crate::protocol::Direction>(stream: &[u8]) -> Vec<usize> {
    let mut parser = crate::protocol::Parser::<D>::new(Limits {
        max_control_line: MAX_SERVER_CONTROL_LINE,
        ..Limits::default()
    });
    let mut items = parser.feed(stream);
    let mut boundaries = vec![0];
    while let Some(item) = items.next() {
        match item {
            Item::ControlLine(line) if line.op.payload_len().is_none() => {
                boundaries.push(line.span.end)
            }
            Item::Payload(piece) if piece.complete => boundaries.push(piece.span.end),
            Item::Error { .. } => panic!("not a valid stream: {}", String::from_utf8_lossy(stream)),
            _ => {}
        }
    }
    boundaries
}

/// `output` is `reference` with `inserted` put in at one of its frame boundaries.
fn inserted_between_frames(
    output: &[u8],
    reference: &[u8],
    inserted: &[u8],
    boundaries: &[usize],
) -> bool {
    boundaries.iter().any(|&at| {
        output.len() == reference.len() + inserted.len()
            && output[..at] == reference[..at]
            && &output[at..at + inserted.len()] == inserted
            && output[at + inserted.len()..] == reference[at..]
    })
}

/// An update at any split point of either stream: the client's frames reach nats-server intact,
/// the UNSUB and its PING between two of them; the server's frames reach the client intact,
/// the reload -ERR between two of them.
#[test]
fn an_update_at_any_split_point_inserts_only_between_frames() {
    let revoking = || billing(r#"["billing.>"]"#, r#"["billing.keep"]"#);
    let upstream: &[u8] = b"PUB billing.a 5\r\nhe\r\nl\r\nSUB billing.keep 2\r\nHPUB billing.h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\nPUB billing.b 0\r\n\r\n";
    let downstream: &[u8] = b"MSG billing.keep 2 2\r\nkk\r\nPING\r\nHMSG billing.keep 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\nMSG billing.keep 2 r.1 0\r\n\r\n";
    let setup = || {
        let mut connection = connected(wide(), Some(SUBSCRIBER));
        client(&mut connection, b"SUB billing.> 1\r\n");
        connection
    };
    let client_reference = client(&mut setup(), upstream);
    let server_reference = server(&mut setup(), downstream).0;
    assert_eq!(client_reference, upstream);
    assert_eq!(server_reference, downstream);
    let client_boundaries = frame_boundaries::<crate::protocol::ClientToServer>(upstream);
    let server_boundaries = frame_boundaries::<crate::protocol::ServerToClient>(downstream);
    let unsubscribe = b"UNSUB 1\r\nPING\r\n";
    let error = b"-ERR 'Permissions Violation for Subscription to \"billing.>\" (sid \"1\")'\r\n";
    for split in 0..=upstream.len() {
        let mut connection = setup();
        let mut output = client(&mut connection, &upstream[..split]);
        connection.adopt(revoking(), NOW);
        output.extend(client(&mut connection, &upstream[split..]));
        output.extend(client(&mut connection, b"PING\r\n"));
        let reference = [upstream, b"PING\r\n"].concat();
        let boundaries: Vec<usize> = client_boundaries
            .iter()
            .copied()
            .chain([upstream.len() + 6])
            .collect();
        assert!(
            inserted_between_frames(&output, &reference, unsubscribe, &boundaries),
            "client split at {split}: {}",
            String::from_utf8_lossy(&output)
        );
    }
    for split in 0..=downstream.len() {
        let mut connection = setup();
        let mut output = server(&mut connection, &downstream[..split]).0;
        connection.adopt(revoking(), NOW);
        output.extend(server(&mut connection, &downstream[split..]).0);
        output.extend(server(&mut connection, b"PING\r\n").0);
        let reference = [downstream, b"PING\r\n"].concat();
        let boundaries: Vec<usize> = server_boundaries
            .iter()
            .copied()
            .chain([downstream.len() + 6])
            .collect();
        assert!(
            inserted_between_frames(&output, &reference, error, &boundaries),
            "server split at {split}: {}",
            String::from_utf8_lossy(&output)
        );
    }
}

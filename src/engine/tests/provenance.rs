//! Provenance: stamped publishes, reserved headers removed in every spelling a reader accepts,
//! the limits, signatures, a dry run, a new configuration, and every split point of the stream.

use std::rc::Rc;

use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};

use super::*;
use crate::engine::provenance::{verify, VerifyError};
use crate::identity::PublicNkey;
use crate::policy::ProvenanceNames;

/// A user nkey seed and its public key (nats-server's server/auth_callout_test.go).
const SEED: &str = "SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU";
const PUBLIC_KEY: &str = "UBO2MQV67TQTVIRV3XFTEZOACM4WLOCMCDMAWN5QVN5PI2N6JHTVDRON";
const STAMP: &str = "Nats-Publisher: spiffe://cluster.local/ns/billing/sa/publisher\r\n";

/// Everything allowed; `extra` adds top-level keys (`provenance`, `reserved_headers`...).
fn policy(extra: &str) -> Rc<Gate> {
    let json = format!(
        r#"{{
          "identity": {{ "spiffe": {{ "required": true, "trust_domains": ["cluster.local"] }} }},
          "default_action": "allow",
          "rules": [{{ "name": "billing", "permissions": {{
            "publish": {{ "allow": [">"], "deny": ["secret.>"] }},
            "allow_responses": true }} }}]
          {extra}
        }}"#
    );
    let (gate, _) = Gate::load(&json, &|_| Ok(None)).expect("valid policy");
    Rc::new(gate)
}

fn stamping() -> Rc<Gate> {
    policy(r#", "provenance": { "subjects": ["orders.>", "audit"] }"#)
}

fn signing() -> Rc<Gate> {
    policy(&format!(
        r#", "provenance": {{ "subjects": ["orders.>"], "sign": {{ "seed": "{SEED}" }} }}"#
    ))
}

fn hpub(subject: &str, headers: &str, payload: &str) -> String {
    format!(
        "HPUB {subject} {} {}\r\n{headers}{payload}\r\n",
        headers.len(),
        headers.len() + payload.len()
    )
}

#[test]
fn a_pub_on_a_selected_subject_becomes_an_hpub_with_the_identity() {
    let mut connection = connected(stamping(), Some(PUBLISHER));
    let upstream = client(
        &mut connection,
        b"PUB orders.created reply.1 5\r\nhello\r\n",
    );
    let headers = format!("NATS/1.0\r\n{STAMP}\r\n");
    assert_eq!(
        String::from_utf8_lossy(&upstream),
        format!(
            "HPUB orders.created reply.1 {} {}\r\n{headers}hello\r\n",
            headers.len(),
            headers.len() + 5
        )
    );
    let report = connection.take_report();
    assert_eq!(
        (
            report.counters.provenance_stamped,
            report.counters.publish_allowed
        ),
        (1, 1)
    );
}

#[test]
fn an_hpub_on_a_selected_subject_gets_the_identity_after_its_version_line() {
    let mut connection = connected(stamping(), Some(PUBLISHER));
    let frame = hpub("audit", "NATS/1.0\r\nX-Trace: abc\r\n\r\n", "{}");
    let upstream = client(&mut connection, frame.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&upstream),
        hpub(
            "audit",
            &format!("NATS/1.0\r\n{STAMP}X-Trace: abc\r\n\r\n"),
            "{}"
        )
    );
}

#[test]
fn an_hpub_without_header_bytes_is_stamped_like_a_pub() {
    let mut connection = connected(stamping(), Some(PUBLISHER));
    let upstream = client(&mut connection, b"HPUB audit 0 2\r\nhi\r\n");
    assert_eq!(
        String::from_utf8_lossy(&upstream),
        hpub("audit", &format!("NATS/1.0\r\n{STAMP}\r\n"), "hi")
    );
}

#[test]
fn frames_on_other_subjects_are_not_copied() {
    let mut connection = connected(stamping(), Some(PUBLISHER));
    let frames = [
        "PUB billing.x 2\r\nhi\r\n".to_owned(),
        hpub("billing.y", "NATS/1.0\r\nX-Trace: abc\r\n\r\n", "hi"),
    ]
    .concat();
    assert_eq!(
        connection.client_data(frames.as_bytes(), NOW).forward,
        Forward::Unchanged
    );
    assert_eq!(connection.take_report().counters.provenance_stamped, 0);
}

/// nats-server 2.15.1 delivers a client's `Nats-Request-Info` unchanged in every spelling; the
/// provenance names are reserved as soon as `provenance` is configured.
#[test]
fn reserved_headers_are_removed_in_every_spelling_a_reader_accepts() {
    for spoof in [
        "Nats-Request-Info: {\"acc\":\"ADMIN\",\"user\":\"root\"}\r\n",
        "nats-request-info: {\"acc\":\"ADMIN\"}\r\n",
        "NATS-REQUEST-INFO: {\"acc\":\"ADMIN\"}\r\n",
        "Nats-Request-Info:{}\r\n",
        "Nats-Request-Info :\t{}\r\n",
        " Nats-Request-Info: {}\r\n",
        "Nats-Request-Info:\r\n {\"acc\":\"ADMIN\"}\r\n",
        "Nats-Publisher: spiffe://cluster.local/ns/admin/sa/root\r\n",
        "nats-publisher-subject: https://idp/root\r\n",
        "NATS-PUBLISHER-SIG: v1;key=X;ts=1;sig=Y\r\n",
        "Nat\u{17f}-Publi\u{17f}her: root\r\n",
        "Nats-Request-Info: a\r\nNats-Request-Info: b\r\n",
    ] {
        let mut connection = connected(stamping(), Some(PUBLISHER));
        let frame = hpub(
            "svc.x",
            &format!("NATS/1.0\r\nA: 1\r\n{spoof}B: 2\r\n\r\n"),
            "q",
        );
        let upstream = client(&mut connection, frame.as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&upstream),
            hpub("svc.x", "NATS/1.0\r\nA: 1\r\nB: 2\r\n\r\n", "q"),
            "{spoof:?}"
        );
        let report = connection.take_report();
        assert!(report.counters.reserved_headers_removed >= 1, "{spoof:?}");
        let audit = report
            .events
            .iter()
            .find(|event| event.kind == EventKind::ReservedHeadersRemoved)
            .expect("audited");
        assert!(
            audit.json.contains("\"subject\":\"svc.x\""),
            "{}",
            audit.json
        );
    }
}

#[test]
fn a_spoofed_identity_on_a_selected_subject_is_replaced_by_the_real_one() {
    let mut connection = connected(stamping(), Some(PUBLISHER));
    let frame = hpub(
        "orders.x",
        "NATS/1.0\r\nnats-publisher: spiffe://cluster.local/ns/admin/sa/root\r\n\r\n",
        "q",
    );
    let upstream = client(&mut connection, frame.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&upstream),
        hpub("orders.x", &format!("NATS/1.0\r\n{STAMP}\r\n"), "q")
    );
}

#[test]
fn reserved_headers_can_refuse_the_publish_instead() {
    let gate = policy(r#", "reserved_header_action": "refuse""#);
    let mut connection = connected(gate, Some(PUBLISHER));
    let frame = hpub("svc.x", "NATS/1.0\r\nNats-Request-Info: {}\r\n\r\n", "q");
    assert_eq!(client(&mut connection, frame.as_bytes()), b"PING\r\n");
    let (downstream, close) = server(&mut connection, b"PONG\r\n");
    assert_eq!(
        downstream,
        b"-ERR 'Permissions Violation for Publish to \"svc.x\"'\r\n"
    );
    assert_eq!(close, None);
    let report = connection.take_report();
    assert_eq!(report.counters.publish_denied, 1);
    assert_eq!(report.counters.publish_allowed, 0);
    assert_eq!(
        report.events.last().expect("event").reason,
        "reserved_header"
    );
}

#[test]
fn reserved_headers_can_be_given_up_and_extended() {
    let gate = policy(r#", "reserved_headers": ["X-Tenant"]"#);
    let mut connection = connected(gate, Some(PUBLISHER));
    let frame = hpub(
        "svc.x",
        "NATS/1.0\r\nNats-Request-Info: {}\r\nx-tenant: t1\r\n\r\n",
        "q",
    );
    assert_eq!(
        String::from_utf8_lossy(&client(&mut connection, frame.as_bytes())),
        hpub("svc.x", "NATS/1.0\r\nNats-Request-Info: {}\r\n\r\n", "q")
    );
}

#[test]
fn a_reserved_name_in_a_block_natsguard_cannot_read_with_certainty_is_refused() {
    for block in [
        "NATS/1.0\r\nA: 1\nNats-Request-Info: {}\r\n\r\n",
        "NATS/1.0 1 Nats-Request-Info: {}\r\nA: 1\r\n\r\n",
        "NATS/1.0\r\nNats-Request-Info: {}\r\n",
    ] {
        let mut connection = connected(stamping(), Some(PUBLISHER));
        let frame = hpub("svc.x", block, "q");
        assert_eq!(
            client(&mut connection, frame.as_bytes()),
            b"PING\r\n",
            "{block:?}"
        );
        assert_eq!(
            connection
                .take_report()
                .events
                .last()
                .expect("event")
                .reason,
            "header_block_uncertain"
        );
    }
    // Not plain, but without a reserved name: no reader finds one; forwarded as it is.
    let mut connection = connected(stamping(), Some(PUBLISHER));
    let frame = hpub("svc.x", "NATS/1.0\r\nA: 1\nB: 2\r\n\r\n", "q");
    assert_eq!(
        connection.client_data(frame.as_bytes(), NOW).forward,
        Forward::Unchanged
    );
    // On a selected subject the block must be plain: natsguard adds a header to it.
    let frame = hpub("audit", "NATS/1.0\r\nA: 1\nB: 2\r\n\r\n", "q");
    assert_eq!(client(&mut connection, frame.as_bytes()), b"PING\r\n");
}

/// The stamped message counts against `max_payload` with its header block, as nats-server
/// counts it: over the limit, nats-server's own answer and a close; nothing is forwarded.
#[test]
fn a_stamped_message_over_max_payload_gets_the_servers_error_and_nothing_is_forwarded() {
    let stamped_overhead = "NATS/1.0\r\n\r\n".len() + STAMP.len();
    let max_payload = 100;
    let info =
        format!("INFO {{\"server_id\":\"S\",\"headers\":true,\"max_payload\":{max_payload}}} \r\n");
    for (payload_len, over) in [
        (max_payload - stamped_overhead, false),
        (max_payload - stamped_overhead + 1, true),
    ] {
        let mut connection = Connection::new(stamping());
        connection.set_peer_uri_san(Some(PUBLISHER.into()));
        server(&mut connection, info.as_bytes());
        client(
            &mut connection,
            b"CONNECT {\"verbose\":false,\"headers\":true}\r\n",
        );
        let payload = "x".repeat(payload_len);
        let frame = format!("PING\r\nPUB orders.x {payload_len}\r\n{payload}\r\n");
        let upstream = client(&mut connection, frame.as_bytes());
        if !over {
            let line = format!("PING\r\nHPUB orders.x {stamped_overhead} {max_payload}\r\n");
            assert!(upstream.starts_with(line.as_bytes()));
            continue;
        }
        assert_eq!(upstream, b"PING\r\nPING\r\n");
        let (downstream, close) = server(&mut connection, b"PONG\r\nPONG\r\n");
        assert_eq!(downstream, b"PONG\r\n-ERR 'Maximum Payload Violation'\r\n");
        assert_eq!(close, Some(Close::AfterWrite));
    }
}

#[test]
fn a_client_without_headers_cannot_publish_on_a_selected_subject() {
    let mut connection = Connection::new(stamping());
    connection.set_peer_uri_san(Some(PUBLISHER.into()));
    server(&mut connection, INFO);
    client(&mut connection, b"CONNECT {\"verbose\":false}\r\n");
    assert_eq!(
        client(&mut connection, b"PUB billing.x 1\r\nx\r\n"),
        b"PUB billing.x 1\r\nx\r\n"
    );
    assert_eq!(
        client(&mut connection, b"PUB orders.x 1\r\nx\r\n"),
        b"PING\r\n"
    );
    let (downstream, _) = server(&mut connection, b"PONG\r\n");
    assert_eq!(
        downstream,
        b"-ERR 'Permissions Violation for Publish to \"orders.x\"'\r\n"
    );
    let report = connection.take_report();
    assert_eq!(
        report.events.last().expect("event").reason,
        "provenance_needs_headers"
    );
}

#[test]
fn a_denied_publish_is_denied_before_anything_is_stamped() {
    let gate = policy(r#", "provenance": { "subjects": [">"] }"#);
    let mut connection = connected(gate, Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"PUB secret.x 1\r\nx\r\n"),
        b"PING\r\n"
    );
    let report = connection.take_report();
    assert_eq!(report.counters.provenance_stamped, 0);
    assert_eq!(report.counters.publish_denied, 1);
}

fn headers_of(frame: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let text = String::from_utf8_lossy(frame);
    let line_end = text.find("\r\n").expect("a line") + 2;
    let sizes: Vec<usize> = text[..line_end - 2]
        .split(' ')
        .rev()
        .take(2)
        .map(|size| size.parse().expect("size"))
        .collect();
    let (total, header_len) = (sizes[0], sizes[1]);
    let block = &frame[line_end..line_end + header_len];
    let pairs = crate::engine::provenance::header_pairs(block)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    (
        pairs,
        frame[line_end + header_len..line_end + total].to_vec(),
    )
}

#[test]
fn a_signed_stamp_verifies_with_the_public_key_and_nothing_else() {
    let mut connection = connected(signing(), Some(PUBLISHER));
    let upstream = client(&mut connection, b"PUB orders.x 5\r\nhello\r\n");
    let (pairs, payload) = headers_of(&upstream);
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (&**n, &**v)).collect();
    assert_eq!(payload, b"hello");
    let names = ProvenanceNames::derived_from("Nats-Publisher");
    let trusted = [PublicNkey::parse(PUBLIC_KEY).expect("public key")];
    let verified = verify("orders.x", &pairs, &payload, &names, &trusted).expect("verifies");
    assert_eq!(verified.key, PUBLIC_KEY);
    assert_eq!(verified.timestamp_ms, NOW.as_millis() as u64);
    assert_eq!(verified.spiffe.as_deref(), Some(PUBLISHER));
    assert_eq!(verified.jwt, None);
    assert_eq!(
        verify("orders.y", &pairs, &payload, &names, &trusted),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify("orders.x", &pairs, b"hellO", &names, &trusted),
        Err(VerifyError::BadSignature)
    );
    let mut forged = pairs.clone();
    forged[0].1 = "spiffe://cluster.local/ns/admin/sa/root";
    assert_eq!(
        verify("orders.x", &forged, &payload, &names, &trusted),
        Err(VerifyError::BadSignature)
    );
    let other =
        PublicNkey::parse("ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA").expect("key");
    assert_eq!(
        verify("orders.x", &pairs, &payload, &names, &[other]),
        Err(VerifyError::UntrustedKey(PUBLIC_KEY.into()))
    );
    assert_eq!(
        verify("orders.x", &pairs[..1], &payload, &names, &trusted),
        Err(VerifyError::Unsigned)
    );
}

#[test]
fn a_signed_frame_split_inside_its_payload_is_held_until_the_payload_is_whole() {
    let reference = {
        let mut connection = connected(signing(), Some(PUBLISHER));
        client(&mut connection, b"PUB orders.x 10\r\n0123456789\r\n")
    };
    let mut connection = connected(signing(), Some(PUBLISHER));
    assert_eq!(client(&mut connection, b"PUB orders.x 10\r\n0123"), b"");
    assert_eq!(client(&mut connection, b"4567"), b"");
    assert_eq!(client(&mut connection, b"89\r\n"), reference);
}

/// A JWT-authenticated connection gets `Nats-Publisher-Subject: <iss>/<sub>`; one with a `sub`
/// a header cannot carry as it is has its stamped publishes refused.
#[test]
fn a_token_identity_is_stamped_as_its_request_principal() {
    let key = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([1; 32]));
    let b64 = |bytes: &[u8]| Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap();
    let token = |sub: &str| {
        let header = b64(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let claims = serde_json::json!({ "iss": "https://idp.example", "sub": sub, "aud": "nats" });
        let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
        let signature = key.sk.sign(input.as_bytes(), None);
        format!("{input}.{}", b64(signature.as_ref()))
    };
    let x = b64(key.pk.as_ref());
    let json = format!(
        r#"{{ "identity": {{
               "spiffe": {{ "required": false, "trust_domains": ["cluster.local"] }},
               "jwt": {{ "required": true, "token_fields": ["auth_token"], "providers": [{{
                 "name": "idp", "issuer": "https://idp.example", "audiences": ["nats"], "algorithms": ["EdDSA"],
                 "jwks": {{ "keys": [{{ "kty": "OKP", "crv": "Ed25519", "x": "{x}" }}] }} }}] }} }},
             "default_action": "allow", "provenance": {{ "subjects": [">"] }} }}"#
    );
    let gate = Rc::new(Gate::load(&json, &|_| Ok(None)).expect("valid").0);
    let alice = "NATS/1.0\r\nNats-Publisher-Subject: https://idp.example/alice\r\n\r\n";
    for (sub, expected) in [
        ("alice", Some(hpub("a", alice, "hey"))),
        ("alice\r\nNats-Publisher: root", None),
    ] {
        let mut connection = Connection::new(Rc::clone(&gate));
        server(&mut connection, INFO);
        let connect = format!(
            "CONNECT {{\"verbose\":false,\"headers\":true,\"auth_token\":\"{}\"}}\r\n",
            token(sub)
        );
        client(&mut connection, connect.as_bytes());
        let upstream = client(&mut connection, b"PUB a 3\r\nhey\r\n");
        match expected {
            Some(frame) => assert_eq!(String::from_utf8_lossy(&upstream), frame),
            None => {
                assert_eq!(upstream, b"PING\r\n");
                assert_eq!(
                    connection
                        .take_report()
                        .events
                        .last()
                        .expect("event")
                        .reason,
                    "provenance_unrepresentable"
                );
            }
        }
    }
}

#[test]
fn a_dry_run_changes_no_message() {
    let gate = policy(
        r#", "mode": "dry_run", "provenance": { "subjects": [">"] }, "reserved_header_action": "refuse""#,
    );
    let mut connection = Connection::new(gate);
    connection.set_peer_uri_san(Some(PUBLISHER.into()));
    server(&mut connection, INFO);
    client(
        &mut connection,
        b"CONNECT {\"verbose\":false,\"headers\":true}\r\n",
    );
    let frames = [
        "PUB orders.x 1\r\nx\r\n".to_owned(),
        hpub("svc", "NATS/1.0\r\nNats-Request-Info: {}\r\n\r\n", "q"),
    ]
    .concat();
    assert_eq!(
        connection.client_data(frames.as_bytes(), NOW).forward,
        Forward::Unchanged
    );
    let report = connection.take_report();
    assert!(
        report.events[0].json.contains("\"provenance\":null"),
        "{}",
        report.events[0].json
    );
    assert_eq!(report.counters.reserved_headers_removed, 0);
}

#[test]
fn the_connection_start_line_reports_provenance() {
    let mut connection = Connection::new(signing());
    connection.set_peer_uri_san(Some(PUBLISHER.into()));
    server(&mut connection, INFO);
    client(
        &mut connection,
        b"CONNECT {\"verbose\":false,\"headers\":true}\r\n",
    );
    let report = connection.take_report();
    assert!(
        report.events[0].json.contains(
            r#""provenance":{"subjects":["orders.>"],"header":"Nats-Publisher","signed":true}"#
        ),
        "{}",
        report.events[0].json
    );
}

#[test]
fn a_new_configuration_stamps_from_the_next_frame_on() {
    let mut connection = connected(policy(""), Some(PUBLISHER));
    assert_eq!(
        client(&mut connection, b"PUB orders.x 1\r\nx\r\n"),
        b"PUB orders.x 1\r\nx\r\n"
    );
    connection.adopt(stamping(), NOW);
    assert!(client(&mut connection, b"PUB orders.x 1\r\nx\r\n").starts_with(b"HPUB orders.x "));
    connection.adopt(
        policy(r#", "provenance": { "subjects": ["other"], "header": "X-Who" }"#),
        NOW,
    );
    assert_eq!(
        client(&mut connection, b"PUB orders.x 1\r\nx\r\n"),
        b"PUB orders.x 1\r\nx\r\n"
    );
    let frame = hpub(
        "orders.x",
        "NATS/1.0\r\nNats-Publisher: a\r\nx-who: b\r\n\r\n",
        "q",
    );
    assert_eq!(
        String::from_utf8_lossy(&client(&mut connection, frame.as_bytes())),
        hpub("orders.x", "NATS/1.0\r\nNats-Publisher: a\r\n\r\n", "q"),
        "the new names are reserved, the old ones no longer"
    );
}

/// A response to a message delivered on a selected subject, allowed by allow_responses, is
/// stamped too: the requester learns who answered.
#[test]
fn a_response_allowed_by_allow_responses_to_a_stamped_request_is_stamped() {
    let gate = gate(
        r#"{
          "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
          "rules": [{ "name": "service", "permissions": {
            "subscribe": { "allow": ["orders.>", "billing.>"] },
            "allow_responses": true } }],
          "provenance": { "subjects": ["orders.>"] }
        }"#,
    );
    let mut connection = connected(gate, Some(PUBLISHER));
    client(&mut connection, b"SUB orders.> 1\r\nSUB billing.> 2\r\n");
    server(
        &mut connection,
        b"MSG orders.get 1 _INBOX.a 1\r\nq\r\nMSG billing.get 2 _INBOX.b 1\r\nq\r\n",
    );
    assert!(client(&mut connection, b"PUB _INBOX.a 1\r\nr\r\n").starts_with(b"HPUB _INBOX.a "));
    assert_eq!(
        client(&mut connection, b"PUB _INBOX.b 1\r\nr\r\n"),
        b"PUB _INBOX.b 1\r\nr\r\n"
    );
}

/// Every split of a stream of stamped, cleaned and untouched publishes (control lines, header
/// blocks and payloads cut anywhere) reaches nats-server as the same bytes, signed or not.
#[test]
fn stamping_at_every_split_point_reaches_the_server_as_the_same_bytes() {
    let stream = [
        "PUB orders.a 3\r\nabc\r\n".to_owned(),
        hpub(
            "svc",
            "NATS/1.0\r\nnats-request-info: {}\r\nA: 1\r\n\r\n",
            "xy",
        ),
        hpub("orders.b", "NATS/1.0\r\nNats-Publisher: root\r\n\r\n", "z"),
        "pub  orders.c 2\r\nhi\r\n".to_owned(),
        "PUB billing.d 1\r\nd\r\nPING\r\n".to_owned(),
    ]
    .concat();
    let stream = stream.as_bytes();
    // Every pair of split points unsigned; signed (slower to compute), every split point with
    // a second one up to 16 bytes later.
    type GateFn = fn() -> Rc<Gate>;
    let cases: [(GateFn, usize); 2] = [(stamping, usize::MAX), (signing, 16)];
    for (gate, gap) in cases {
        let reference = {
            let mut connection = connected(gate(), Some(PUBLISHER));
            client(&mut connection, stream)
        };
        let text = String::from_utf8_lossy(&reference);
        assert_eq!(
            text.matches("Nats-Publisher: spiffe://").count(),
            3,
            "{text}"
        );
        assert!(!text.contains("request-info"), "{text}");
        for first in 0..stream.len() {
            for second in first..first.saturating_add(gap).min(stream.len()) {
                let mut connection = connected(gate(), Some(PUBLISHER));
                let mut upstream = client(&mut connection, &stream[..first]);
                upstream.extend(client(&mut connection, &stream[first..second]));
                upstream.extend(client(&mut connection, &stream[second..]));
                assert_eq!(upstream, reference, "split at {first}, {second}");
            }
        }
    }
}

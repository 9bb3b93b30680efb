//! JWT attacks against the running filter: every forged, stale, misdirected or malformed token is
//! refused with nats-server's `-ERR 'Authorization Violation'`, counted under its reason, logged
//! with it, and nothing of the connection reaches nats-server but the filter's own PING. Then
//! template injection: claim values that look like subject syntax never widen permissions.
//!
//! `NATSGUARD_STRESS_SECONDS` adds random single-character corruptions of a valid token for that
//! long (the quick form tries a fixed number).

mod adversarial;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use adversarial::{
    b64, eddsa_token, fuzz_seed, natsguard_counters, stress_seconds, unix_now as now,
    wait_for_counter, Observer, Rng,
};
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use support::{JwksServer, Mesh, NatsServer, RawClient};

const ISSUER: &str = "https://idp.test";
const OTHER_ISSUER: &str = "https://other.test";

/// nats-server traces every protocol line it receives: the log shows what reached it.
const TRACING_SERVER: &str = "trace: true\ndebug: true\n";

struct Keys {
    ed: ed25519_compact::KeyPair,
    other_ed: ed25519_compact::KeyPair,
    rsa: RS256KeyPair,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            ed: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32])),
            other_ed: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([9; 32])),
            rsa: RS256KeyPair::generate(2048).expect("rsa key"),
        }
    }

    fn jwks(&self) -> String {
        let rsa = self.rsa.public_key().to_components();
        json!({ "keys": [
            { "kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": b64(self.ed.pk.as_ref()) },
            { "kty": "RSA", "kid": "rsa1", "n": b64(&rsa.n), "e": b64(&rsa.e) }
        ]})
        .to_string()
    }
}

fn header(kid: &str) -> Value {
    json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid })
}

fn payload(tid: Value) -> Value {
    let now = now();
    json!({ "iss": ISSUER, "sub": "alice", "aud": "nats", "iat": now - 5, "nbf": now - 5,
            "exp": now + 600, "tid": tid, "role": "writer" })
}

fn with(mut value: Value, key: &str, new: Value) -> Value {
    value[key] = new;
    value
}

fn policy(keys: &Keys) -> String {
    let other_jwks = json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "kid": "ed-other",
        "x": b64(keys.other_ed.pk.as_ref()) }] });
    json!({
        "identity": {
            "spiffe": { "required": true, "trust_domains": ["cluster.local"] },
            "jwt": {
                "required": true,
                "token_fields": ["auth_token"],
                "providers": [
                    {
                        "name": "test-idp", "issuer": ISSUER, "audiences": ["nats"],
                        "remote_jwks": { "cluster": "idp", "authority": "idp.test", "path": "/jwks", "refresh_seconds": 600 },
                        "algorithms": ["EdDSA", "RS256"], "clock_skew_seconds": 5
                    },
                    {
                        "name": "other-idp", "issuer": OTHER_ISSUER, "audiences": ["other"],
                        "jwks": other_jwks, "algorithms": ["EdDSA"], "clock_skew_seconds": 5
                    }
                ]
            }
        },
        "default_action": "deny",
        "rules": [{
            "name": "tenant writers",
            "from": { "claims": { "role": ["writer"] } },
            "permissions": {
                "publish": {
                    "allow": ["tenants.{{jwt.claim.tid}}.>", "ops.>"],
                    "deny": ["ops.{{jwt.claim.tid}}.admin"]
                },
                "subscribe": { "allow": ["_INBOX.>"] }
            }
        }]
    })
    .to_string()
}

/// CONNECT with `field: token`, then frames that must never run; returns the replies.
fn attack(port: u16, field: &str, token: &str) -> (String, bool) {
    let mut client = RawClient::connect(port);
    client.read_line();
    let connect = json!({ "verbose": false, "pedantic": false, "headers": true, field: token });
    client.send(
        format!("CONNECT {connect}\r\nPUB attack.x 2\r\nhi\r\nSUB attack.> 1\r\nPING\r\n")
            .as_bytes(),
    );
    let (bytes, closed) = client.read_until(Duration::from_secs(8), |_| false);
    (String::from_utf8_lossy(&bytes).into_owned(), closed)
}

fn mesh_with_idp(keys: &Keys) -> (Mesh, JwksServer) {
    let jwks = JwksServer::start(200, &keys.jwks());
    let mesh = Mesh::start_with(
        &policy(keys),
        NatsServer::start(Some(TRACING_SERVER)),
        jwks.port,
    );
    wait_for_counter(&mesh, "jwks_refresh_ok", 1);
    (mesh, jwks)
}

#[test]
fn forged_stale_and_misdirected_tokens_are_refused_and_never_reach_nats_server() {
    let keys = Keys::new();
    let (mesh, _jwks) = mesh_with_idp(&keys);
    let observer = Observer::start(mesh.nats.port);
    let valid = eddsa_token(&keys.ed, &header("ed1"), &payload(json!("acme")));
    let now = now();
    let [h, p, s]: [&str; 3] = valid
        .split('.')
        .collect::<Vec<_>>()
        .try_into()
        .expect("three parts");
    let rsa_pem = keys.rsa.public_key().to_pem().expect("pem");
    let rsa_der = keys.rsa.public_key().to_der().expect("der");
    let hs256 = |secret: &[u8]| {
        let claims = Claims::with_custom_claims(
            json!({ "tid": "acme", "role": "writer" }),
            Duration::from_secs(600).into(),
        )
        .with_issuer(ISSUER)
        .with_subject("alice")
        .with_audience("nats");
        HS256Key::from_bytes(secret)
            .with_key_id("rsa1")
            .authenticate(claims)
            .expect("hs256")
    };
    let tampered_payload = b64(with(payload(json!("acme")), "tid", json!("victim"))
        .to_string()
        .as_bytes());
    let tampered_header = b64(with(header("ed1"), "x5u", json!("https://evil.test/k"))
        .to_string()
        .as_bytes());
    let mut attacks: Vec<(&str, String, &str, &str)> = vec![
        (
            "alg none",
            format!("{}.{p}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            "auth_token",
            "jwt_alg_none",
        ),
        (
            "alg None with the valid signature",
            format!("{}.{p}.{s}", b64(br#"{"alg":"None","kid":"ed1"}"#)),
            "auth_token",
            "jwt_alg_none",
        ),
        (
            "HS256 keyed with the RSA public key (PEM)",
            hs256(rsa_pem.as_bytes()),
            "auth_token",
            "jwt_alg_not_allowed",
        ),
        (
            "HS256 keyed with the RSA public key (DER)",
            hs256(&rsa_der),
            "auth_token",
            "jwt_alg_not_allowed",
        ),
        (
            "unknown kid",
            eddsa_token(&keys.ed, &header("ed2"), &payload(json!("acme"))),
            "auth_token",
            "jwt_unknown_kid",
        ),
        (
            "tampered payload",
            format!("{h}.{tampered_payload}.{s}"),
            "auth_token",
            "jwt_bad_signature",
        ),
        (
            "tampered header",
            format!("{tampered_header}.{p}.{s}"),
            "auth_token",
            "jwt_bad_signature",
        ),
        (
            "signature of another token",
            format!(
                "{h}.{p}.{}",
                eddsa_token(&keys.ed, &header("ed1"), &payload(json!("other")))
                    .rsplit('.')
                    .next()
                    .expect("sig")
            ),
            "auth_token",
            "jwt_bad_signature",
        ),
        (
            "signed by an unknown key",
            eddsa_token(&keys.other_ed, &header("ed1"), &payload(json!("acme"))),
            "auth_token",
            "jwt_bad_signature",
        ),
        (
            "expired",
            eddsa_token(
                &keys.ed,
                &header("ed1"),
                &with(payload(json!("acme")), "exp", json!(now - 60)),
            ),
            "auth_token",
            "jwt_expired",
        ),
        (
            "not yet valid",
            eddsa_token(
                &keys.ed,
                &header("ed1"),
                &with(payload(json!("acme")), "nbf", json!(now + 600)),
            ),
            "auth_token",
            "jwt_not_yet_valid",
        ),
        (
            "issued in the future",
            eddsa_token(
                &keys.ed,
                &header("ed1"),
                &with(payload(json!("acme")), "iat", json!(now + 600)),
            ),
            "auth_token",
            "jwt_issued_in_future",
        ),
        (
            "wrong iss",
            eddsa_token(
                &keys.ed,
                &header("ed1"),
                &with(payload(json!("acme")), "iss", json!("https://evil.test")),
            ),
            "auth_token",
            "jwt_unknown_provider",
        ),
        (
            "iss differing in case",
            eddsa_token(
                &keys.ed,
                &header("ed1"),
                &with(payload(json!("acme")), "iss", json!("https://IDP.test")),
            ),
            "auth_token",
            "jwt_unknown_provider",
        ),
        (
            "wrong aud",
            eddsa_token(
                &keys.ed,
                &header("ed1"),
                &with(payload(json!("acme")), "aud", json!("other")),
            ),
            "auth_token",
            "jwt_audience",
        ),
        (
            "no aud",
            eddsa_token(&keys.ed, &header("ed1"), &{
                let mut p = payload(json!("acme"));
                p.as_object_mut().expect("object").remove("aud");
                p
            }),
            "auth_token",
            "jwt_audience",
        ),
        (
            "another provider's issuer, this provider's key",
            eddsa_token(
                &keys.ed,
                &header("ed1"),
                &with(
                    with(payload(json!("acme")), "iss", json!(OTHER_ISSUER)),
                    "aud",
                    json!("other"),
                ),
            ),
            "auth_token",
            "jwt_unknown_kid",
        ),
        (
            "another provider's token, this provider's audience",
            eddsa_token(
                &keys.other_ed,
                &header("ed-other"),
                &with(payload(json!("acme")), "iss", json!(OTHER_ISSUER)),
            ),
            "auth_token",
            "jwt_audience",
        ),
        (
            "oversized token",
            eddsa_token(
                &keys.ed,
                &header("ed1"),
                &with(payload(json!("acme")), "pad", json!("x".repeat(20_000))),
            ),
            "auth_token",
            "jwt_too_large",
        ),
        (
            "garbage base64",
            "eyJ!!!.@@@.###".to_string(),
            "auth_token",
            "jwt_malformed",
        ),
        (
            "two parts",
            format!("{h}.{p}"),
            "auth_token",
            "jwt_malformed",
        ),
        (
            "padded base64",
            format!("{h}==.{p}.{s}"),
            "auth_token",
            "jwt_malformed",
        ),
        (
            "header not JSON",
            format!("{}.{p}.{s}", b64(b"not json")),
            "auth_token",
            "jwt_malformed",
        ),
        (
            "crit extension",
            eddsa_token(
                &keys.ed,
                &with(header("ed1"), "crit", json!(["exp"])),
                &payload(json!("acme")),
            ),
            "auth_token",
            "jwt_crit",
        ),
        (
            "valid token in the unconfigured pass field",
            valid.clone(),
            "pass",
            "jwt_missing",
        ),
        (
            "valid token in the unconfigured jwt field",
            valid.clone(),
            "jwt",
            "jwt_missing",
        ),
    ];
    for kid in [
        "../../../../etc/passwd",
        "ed1' OR '1'='1",
        "ed1\"; DROP TABLE keys; --",
        "ed1\u{0}",
        "*",
        "ed1/../ed1",
        "%65d1",
        "ED1",
        " ed1",
    ] {
        attacks.push((
            "kid injection",
            eddsa_token(&keys.ed, &header(kid), &payload(json!("acme"))),
            "auth_token",
            "jwt_unknown_kid",
        ));
    }

    let port = mesh.port_of("publisher");
    let (accepted, closed) = attack(port, "auth_token", &valid);
    assert!(
        !closed && accepted.contains("PONG"),
        "the valid token is accepted: {accepted:?}"
    );
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, token, field, reason) in &attacks {
        let (replies, closed) = attack(port, field, token);
        assert_eq!(
            (replies.as_str(), closed),
            ("-ERR 'Authorization Violation'\r\n", true),
            "{name}"
        );
        *expected.entry(reason).or_default() += 1;
        wait_for_counter(
            &mesh,
            &format!("connections_denied.{reason}"),
            expected[reason],
        );
    }
    let counters = natsguard_counters(&mesh.stats());
    for (reason, count) in &expected {
        assert_eq!(
            counters.get(&format!("connections_denied.{reason}")),
            Some(count),
            "{reason}: {counters:?}"
        );
    }
    let audit = mesh.wait_for_audit("every refusal", |lines| {
        lines
            .iter()
            .filter(|l| l["natsguard"] == "auth_failure")
            .count()
            >= attacks.len()
    });
    for (reason, count) in &expected {
        let logged = audit
            .iter()
            .filter(|l| l["natsguard"] == "auth_failure" && l["reason"] == *reason)
            .count();
        assert_eq!(logged as u64, *count, "audit lines for {reason}");
    }

    observer.sync();
    let seen = observer.take();
    assert!(
        seen.iter().all(|m| !m.subject.starts_with("attack")),
        "{seen:?}"
    );
    let server_log = mesh.nats.log();
    assert!(
        server_log.contains("<<- [PING]"),
        "nats-server traces what it receives:\n{server_log}"
    );
    for forbidden in ["attack.", "auth_token", &s[..20], "\"pass\"", "\"jwt\""] {
        assert!(
            !server_log.contains(forbidden),
            "{forbidden:?} reached nats-server:\n{server_log}"
        );
    }
    eprintln!("JWT attacks: {} refused with their reasons", attacks.len());
}

/// Single-character corruptions of a valid token (never the last character of a part, whose
/// low bits base64url may ignore): each must be refused.
#[test]
fn corrupted_tokens_are_refused() {
    let keys = Keys::new();
    let (mesh, _jwks) = mesh_with_idp(&keys);
    let valid = eddsa_token(&keys.ed, &header("ed1"), &payload(json!("acme")));
    let seed = fuzz_seed(31337);
    let mut rng = Rng::new(seed);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
    let port = mesh.port_of("publisher");
    let started = Instant::now();
    let mut tried = 0;
    loop {
        let done = match stress_seconds() {
            Some(seconds) => started.elapsed() >= Duration::from_secs(seconds),
            None => tried >= 40,
        };
        if done {
            break;
        }
        let mut bytes = valid.clone().into_bytes();
        let at = rng.below(bytes.len() - 1);
        if bytes[at + 1] == b'.' || bytes[at] == b'.' {
            continue;
        }
        let replacement = *rng.pick(alphabet);
        if replacement == bytes[at] {
            continue;
        }
        bytes[at] = replacement;
        let token = String::from_utf8(bytes).expect("ascii");
        let (replies, closed) = attack(port, "auth_token", &token);
        assert_eq!(
            (replies.as_str(), closed),
            ("-ERR 'Authorization Violation'\r\n", true),
            "{token} (seed {seed})"
        );
        tried += 1;
    }
    let counters = natsguard_counters(&mesh.stats());
    assert_eq!(
        counters.get("connections_accepted").copied().unwrap_or(0),
        0,
        "{counters:?}"
    );
    eprintln!("JWT corruptions: {tried} refused, seed {seed}");
}

/// Is `value` a single literal subject token (what a template may expand to)?
fn resolvable(value: &Value) -> Option<&str> {
    let text = value.as_str()?;
    (!text.is_empty()
        && !text
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control()))
    .then_some(text)
}

#[test]
fn claim_values_never_widen_templated_permissions() {
    let keys = Keys::new();
    let (mesh, _jwks) = mesh_with_idp(&keys);
    let observer = Observer::start(mesh.nats.port);
    let port = mesh.port_of("publisher");
    let tids = [
        json!("acme"),
        json!("."),
        json!("*"),
        json!(">"),
        json!("a.b"),
        json!("victim.>"),
        json!("a b"),
        json!(""),
        json!(" "),
        json!("\t"),
        json!("ü"),
        json!("a\u{0}b"),
        json!("x\r\nPUB victim.x 1"),
        json!("{{jwt.claim.role}}"),
        json!(42),
        json!(["victim"]),
        json!(null),
        json!({ "a": 1 }),
    ];
    let probes = [
        "tenants.victim.x",
        "tenants.a.b",
        "tenants.a.b.x",
        "tenants.acme.x",
        "tenants.ü.x",
        "tenants.a",
        "ops.victim.admin",
        "ops.acme.admin",
        "ops.ü.admin",
        "ops.free",
        "tenants.{{jwt.claim.role}}.x",
    ];
    let mut checked = 0;
    for tid in &tids {
        let token = eddsa_token(&keys.ed, &header("ed1"), &payload(tid.clone()));
        let mut client = RawClient::connect(port);
        client.read_line();
        let mut frames = format!(
            "CONNECT {}\r\n",
            json!({ "verbose": false, "auth_token": token })
        );
        for (index, probe) in probes.iter().enumerate() {
            frames.push_str(&format!("PUB {probe} 1\r\n{}\r\n", index % 10));
        }
        frames.push_str("PING\r\n");
        client.send(frames.as_bytes());
        let (replies, closed) =
            client.read_until(Duration::from_secs(8), |b| b.ends_with(b"PONG\r\n"));
        assert!(!closed, "tid {tid}: {}", String::from_utf8_lossy(&replies));
        observer.sync();
        let delivered: Vec<String> = observer.take().into_iter().map(|m| m.subject).collect();
        let literal = resolvable(tid);
        let expected: Vec<String> = probes
            .iter()
            .filter(|probe| {
                let tokens: Vec<&str> = probe.split('.').collect();
                match (tokens[0], literal) {
                    ("tenants", Some(tid)) => tokens.len() >= 3 && tokens[1] == tid,
                    ("tenants", None) => false,
                    // The deny template: the claim's token, or any token when unresolvable.
                    ("ops", Some(tid)) => {
                        !(tokens.len() == 3 && tokens[1] == tid && tokens[2] == "admin")
                    }
                    ("ops", None) => !(tokens.len() == 3 && tokens[2] == "admin"),
                    _ => false,
                }
            })
            .map(|probe| probe.to_string())
            .collect();
        assert_eq!(delivered, expected, "tid {tid}");
        checked += probes.len();
    }
    eprintln!(
        "template injection: {} claim values, {checked} publishes checked",
        tids.len()
    );
}

/// Frames that arrive while a connection waits for the first key set are held, then checked
/// like any other once the keys come: split at every point of the stream.
#[test]
fn frames_held_while_the_first_keys_load_are_checked_like_any_other() {
    let keys = Keys::new();
    let jwks = JwksServer::start(503, "unavailable");
    let mesh = Mesh::start_with(&policy(&keys), NatsServer::start(None), jwks.port);
    wait_for_counter(&mesh, "jwks_refresh_failed", 1);
    let observer = Observer::start(mesh.nats.port);
    let token = eddsa_token(&keys.ed, &header("ed1"), &payload(json!("acme")));
    let connect = format!(
        "CONNECT {}\r\n",
        json!({ "verbose": false, "headers": true, "auth_token": token })
    );
    let mut stream = connect.into_bytes();
    let frames_start = stream.len();
    stream.extend_from_slice(
        b"PUB ops.a 2\r\nhi\r\nPUB deny.x 2\r\nno\r\nHPUB ops.h 37 39\r\nNATS/1.0\r\nNats-Trace-Dest: deny.t\r\n\r\nhi\r\nPING\r\n",
    );
    let splits: Vec<usize> = (frames_start - 20..stream.len()).collect();
    let port = mesh.port_of("publisher");
    let all_sent = std::sync::Barrier::new(splits.len() + 1);
    let replies: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = splits
            .iter()
            .map(|&split| {
                let (stream, all_sent) = (&stream, &all_sent);
                scope.spawn(move || {
                    let mut client = RawClient::connect(port);
                    client.read_line();
                    client.send(&stream[..split]);
                    std::thread::sleep(Duration::from_millis(30));
                    client.send(&stream[split..]);
                    all_sent.wait();
                    let (bytes, _) =
                        client.read_until(Duration::from_secs(10), |b| b.ends_with(b"PONG\r\n"));
                    String::from_utf8_lossy(&bytes).into_owned()
                })
            })
            .collect();
        all_sent.wait();
        jwks.set(200, &keys.jwks());
        clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect()
    });
    for (split, reply) in splits.iter().zip(&replies) {
        assert_eq!(
            reply,
            "-ERR 'Permissions Violation for Publish to \"deny.x\"'\r\n-ERR 'Permissions Violation for Publish to \"deny.t\"'\r\nPONG\r\n",
            "split at {split}"
        );
    }
    observer.sync();
    let subjects: Vec<String> = observer.take().into_iter().map(|m| m.subject).collect();
    assert_eq!(subjects, vec!["ops.a".to_string(); splits.len()]);
}

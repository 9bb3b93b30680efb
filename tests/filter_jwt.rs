//! OIDC identities through the filter: tokens minted in the test, keys served by a local HTTP
//! server that natsguard fetches as its `remote_jwks` through an Envoy cluster.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{json, Map, Value};
use support::{JwksServer, Mesh, NatsServer, RawClient};

const ISSUER: &str = "https://idp.test";

fn policy(clock_skew_seconds: u64) -> String {
    json!({
        "identity": {
            "spiffe": { "required": true, "trust_domains": ["cluster.local"] },
            "jwt": {
                "required": true,
                "providers": [{
                    "name": "test-idp",
                    "issuer": ISSUER,
                    "audiences": ["nats"],
                    "remote_jwks": { "cluster": "idp", "authority": "idp.test", "path": "/jwks", "refresh_seconds": 600 },
                    "algorithms": ["ES256"],
                    "clock_skew_seconds": clock_skew_seconds
                }]
            }
        },
        "default_action": "deny",
        "rules": [{
            "name": "tenant writers",
            "from": { "claims": { "scp": ["orders.write"] }, "request_principals": ["https://idp.test/*"] },
            "permissions": {
                "publish": { "allow": ["tenants.{{jwt.claim.tid}}.>"] },
                "subscribe": { "allow": ["_INBOX.>"] }
            }
        }]
    })
    .to_string()
}

struct Idp {
    key: ES256KeyPair,
}

impl Idp {
    fn new() -> Idp {
        Idp {
            key: ES256KeyPair::generate().with_key_id("k1"),
        }
    }

    fn jwks(&self) -> String {
        let point = self.key.public_key().public_key().to_bytes_uncompressed();
        let (x, y) = point[1..].split_at(32);
        let b64 = |bytes: &[u8]| Base64UrlSafeNoPadding::encode_to_string(bytes).expect("base64");
        json!({ "keys": [{ "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "x": b64(x), "y": b64(y) }] }).to_string()
    }

    fn token(&self, tenant: &str, valid_for: Duration) -> String {
        let custom: Map<String, Value> = [
            ("tid".to_string(), json!(tenant)),
            ("scp".to_string(), json!("orders.write orders.read")),
        ]
        .into_iter()
        .collect();
        let claims = Claims::with_custom_claims(custom, valid_for.into())
            .with_issuer(ISSUER)
            .with_subject(format!("user-of-{tenant}"))
            .with_audience("nats");
        self.key.sign(claims).expect("sign")
    }
}

fn wait_for_stat(mesh: &Mesh, name: &str, at_least: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mesh
        .stats()
        .get(&format!("wasmcustom.natsguard.{name}"))
        .copied()
        .unwrap_or(0)
        < at_least
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never reached {at_least}: {:?}",
            mesh.stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects with `token` in CONNECT `auth_token`, runs `frames`, returns the replies.
fn session(port: u16, token: &str, frames: &[u8], pongs: usize) -> (String, bool) {
    let mut client = RawClient::connect(port);
    let info = client.read_line();
    assert!(
        String::from_utf8_lossy(&info).contains("\"auth_required\":true"),
        "INFO asks for credentials"
    );
    client.send(format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"auth_token\":\"{token}\"}}\r\nPING\r\n").as_bytes());
    client.send(frames);
    let enough = |b: &[u8]| b.windows(6).filter(|w| *w == b"PONG\r\n").count() >= pongs;
    let (bytes, closed) = client.read_until(Duration::from_secs(8), enough);
    (String::from_utf8_lossy(&bytes).into_owned(), closed)
}

#[test]
fn claims_and_templates_decide_what_a_token_holder_may_publish() {
    let idp = Idp::new();
    let jwks = JwksServer::start(200, &idp.jwks());
    let mesh = Mesh::start_with(&policy(60), NatsServer::start(None), jwks.port);
    wait_for_stat(&mesh, "jwks_refresh_ok", 1);

    let token = idp.token("acme", Duration::from_secs(600));
    let (replies, closed) = session(
        mesh.port_of("publisher"),
        &token,
        b"PUB tenants.acme.orders 2\r\nok\r\nPUB tenants.globex.orders 2\r\nno\r\nPING\r\n",
        2,
    );
    assert!(!closed);
    assert_eq!(
        replies,
        "PONG\r\n-ERR 'Permissions Violation for Publish to \"tenants.globex.orders\"'\r\nPONG\r\n"
    );

    let lines = mesh.wait_for_audit("the token holder", |lines| {
        lines.iter().any(|l| l["natsguard"] == "connection_start")
    });
    let start = lines
        .iter()
        .find(|l| l["natsguard"] == "connection_start")
        .expect("start");
    assert_eq!(start["jwt_iss"], ISSUER);
    assert_eq!(start["jwt_sub"], "user-of-acme");
    assert_eq!(start["principal"], "cluster.local/ns/billing/sa/publisher");
    assert!(
        !mesh.envoy_log().contains(&token),
        "the token is never logged"
    );
}

#[test]
fn envoys_vms_share_one_jwks_fetch() {
    let idp = Idp::new();
    let jwks = JwksServer::start(200, &idp.jwks());
    let mesh = Mesh::start_with(&policy(60), NatsServer::start(None), jwks.port);
    wait_for_stat(&mesh, "jwks_refresh_ok", 1);
    // Every VM (main thread, each worker) ticks; by now each would have fetched on its own.
    std::thread::sleep(Duration::from_millis(500));
    let requests = jwks.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(requests, 1, "one fetch for all VMs");
    let token = idp.token("acme", Duration::from_secs(600));
    let (replies, _) = session(mesh.port_of("publisher"), &token, b"", 1);
    assert_eq!(replies, "PONG\r\n", "the worker VM uses the shared keys");
}

#[test]
fn invalid_tokens_are_refused_with_their_reason() {
    let idp = Idp::new();
    let jwks = JwksServer::start(200, &idp.jwks());
    let mesh = Mesh::start_with(&policy(60), NatsServer::start(None), jwks.port);
    wait_for_stat(&mesh, "jwks_refresh_ok", 1);

    let stranger = Idp::new().token("acme", Duration::from_secs(600));
    let (replies, closed) = session(mesh.port_of("publisher"), &stranger, b"", 1);
    assert_eq!(
        (replies.as_str(), closed),
        ("-ERR 'Authorization Violation'\r\n", true)
    );
    wait_for_stat(&mesh, "jwt_failures.jwt_bad_signature", 1);
    wait_for_stat(&mesh, "connections_denied.jwt_bad_signature", 1);
}

#[test]
fn connections_wait_for_the_first_key_set_instead_of_failing() {
    let idp = Idp::new();
    let jwks = JwksServer::start(503, "unavailable");
    let mesh = Mesh::start_with(&policy(60), NatsServer::start(None), jwks.port);
    wait_for_stat(&mesh, "jwks_refresh_failed", 1);

    let token = idp.token("acme", Duration::from_secs(600));
    let client = std::thread::spawn({
        let port = mesh.port_of("publisher");
        move || session(port, &token, b"PUB tenants.acme.x 1\r\nx\r\nPING\r\n", 2)
    });
    std::thread::sleep(Duration::from_millis(500));
    jwks.set(200, &idp.jwks());
    let (replies, closed) = client.join().expect("client");
    assert_eq!((replies.as_str(), closed), ("PONG\r\nPONG\r\n", false));
}

#[test]
fn an_expired_token_ends_the_connection_with_nats_servers_error() {
    let idp = Idp::new();
    let jwks = JwksServer::start(200, &idp.jwks());
    let mesh = Mesh::start_with(&policy(0), NatsServer::start(None), jwks.port);
    wait_for_stat(&mesh, "jwks_refresh_ok", 1);

    let expires_in = 2 - SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_millis() as u64
        / 1000;
    let token = idp.token("acme", Duration::from_secs(expires_in.max(2)));
    let mut client = RawClient::connect(mesh.port_of("publisher"));
    client.read_line();
    client.send(
        format!("CONNECT {{\"verbose\":false,\"auth_token\":\"{token}\"}}\r\nPING\r\n").as_bytes(),
    );
    let (first, _) = client.read_until(Duration::from_secs(5), |b| b.ends_with(b"PONG\r\n"));
    assert_eq!(String::from_utf8_lossy(&first), "PONG\r\n");
    std::thread::sleep(Duration::from_millis(3200));
    client.send(b"PING\r\n");
    let (rest, closed) = client.read_until(Duration::from_secs(5), |_| false);
    // nats-server pings a new client shortly after its handshake; that PING may come first.
    let rest = String::from_utf8_lossy(&rest).replace("PING\r\n", "");
    assert_eq!(rest, "-ERR 'User Authentication Expired'\r\n");
    assert!(closed);
}

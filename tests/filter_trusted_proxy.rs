//! natsguard cannot be bypassed: as a trusted proxy of nats-server (`proxies.trusted`) it signs
//! every CONNECT it forwards, so users marked `proxy_required` are only accepted through it.

mod support;

use std::time::Duration;

use natsguard::identity::NkeySigner;
use serde_json::json;
use support::{contains, Mesh, NatsServer, RawClient};

/// A server-type nkey seed (test fixture).
const PROXY_SEED: &str = "SNACUKRKFIVCUKRKFIVCUKRKFIVCUKRKFIVCUKRKFIVCUKRKFIVCUKW2PA";

fn connect_and_ping(port: u16, connect: &str) -> String {
    let mut client = RawClient::connect(port);
    client.read_line();
    client.send(format!("CONNECT {connect}\r\nPING\r\n").as_bytes());
    let (bytes, _) = client.read_until(Duration::from_secs(5), |b| contains(b, b"\r\n"));
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn proxy_required_users_are_accepted_through_natsguard_and_refused_directly() {
    let public_key = NkeySigner::from_seed(PROXY_SEED)
        .expect("seed")
        .public_key();
    let nats = NatsServer::start(Some(&format!(
        "proxies {{ trusted: [ {{ key: \"{public_key}\" }} ] }}\n\
         authorization {{ users: [ {{ user: app, password: pw, proxy_required: true }} ] }}\n"
    )));
    let policy = json!({
        "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
        "default_action": "allow",
        "rules": [],
        "upstream": { "user": "app", "pass": "pw" },
        "trusted_proxy": { "seed": PROXY_SEED }
    });
    let mesh = Mesh::start_with_server(&policy.to_string(), nats);

    let through_natsguard = connect_and_ping(mesh.port_of("publisher"), r#"{"verbose":false}"#);
    assert_eq!(through_natsguard, "PONG\r\n");
    let direct = connect_and_ping(
        mesh.nats.port,
        r#"{"verbose":false,"user":"app","pass":"pw"}"#,
    );
    assert_eq!(direct, "-ERR 'Authorization Violation'\r\n");
}

//! natsguard in a real Envoy in front of a real nats-server: what clients see is what
//! nats-server itself would show them, denied frames never reach the server, and every decision
//! is counted and logged.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::{contains, Mesh, NatsServer, RawClient};

/// The demo identities of envoy/identities.txt with nats-server-style permissions.
const POLICY: &str = r#"{
  "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
  "default_action": "deny",
  "rules": [
    {
      "name": "billing publishers",
      "from": { "principals": ["cluster.local/ns/billing/sa/publisher"] },
      "permissions": {
        "publish": { "allow": ["billing.>", "_INBOX.>"], "deny": ["billing.admin.>"] },
        "subscribe": { "allow": ["_INBOX.>", "billing.events.* workers", "billing.>"], "deny": ["billing.secret"] }
      }
    },
    {
      "name": "billing subscribers",
      "from": { "principals": ["cluster.local/ns/billing/sa/subscriber"] },
      "permissions": {
        "publish": { "deny": [">"] },
        "subscribe": { "allow": ["billing.>"], "deny": ["billing.admin.>"] }
      }
    }
  ]
}"#;

/// The same permissions for the publisher, as a nats-server user: the oracle.
const ORACLE_CONFIG: &str = r#"
authorization {
  users: [
    { user: publisher, password: pw, permissions: {
        publish: { allow: ["billing.>", "_INBOX.>"], deny: ["billing.admin.>"] },
        subscribe: { allow: ["_INBOX.>", "billing.events.* workers", "billing.>"], deny: ["billing.secret"] } } }
  ]
}
"#;

const SCRIPT: &[u8] =
    b"SUB billing.events.x workers 1\r\nSUB billing.events.x other 2\r\nSUB secret 3\r\n\
PUB billing.admin.x 5\r\nhello\r\nSUB billing.> 4\r\nPUB billing.ok 2\r\nhi\r\nPING\r\n\
HPUB billing.admin.h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nUNSUB 4\r\n\
HPUB billing.t 39 41\r\nNATS/1.0\r\nNats-Trace-Dest: secret.x\r\n\r\nhi\r\nPING\r\n";

/// Runs SCRIPT after a CONNECT (with `credentials`) and returns every line the client received
/// after the handshake, INFO lines excluded (they carry per-connection ids).
fn session(port: u16, verbose: bool, credentials: &str) -> String {
    let mut client = RawClient::connect(port);
    client.read_line();
    client.send(format!("CONNECT {{\"verbose\":{verbose},\"pedantic\":false,\"headers\":true,\"protocol\":1{credentials}}}\r\nPING\r\n").as_bytes());
    client.send(SCRIPT);
    let three_pongs = |b: &[u8]| b.windows(6).filter(|w| *w == b"PONG\r\n").count() >= 3;
    let (bytes, closed) = client.read_until(Duration::from_secs(5), three_pongs);
    assert!(
        !closed,
        "the connection stays open:\n{}",
        String::from_utf8_lossy(&bytes)
    );
    let text = String::from_utf8_lossy(&bytes).into_owned();
    text.split_inclusive('\n')
        .filter(|line| !line.starts_with("INFO "))
        .collect()
}

#[test]
fn clients_see_exactly_what_nats_server_would_send_them() {
    let mesh = Mesh::start(POLICY);
    let oracle = NatsServer::start(Some(ORACLE_CONFIG));
    for verbose in [false, true] {
        let expected = session(
            oracle.port,
            verbose,
            ",\"user\":\"publisher\",\"pass\":\"pw\"",
        );
        let through_natsguard = session(mesh.port_of("publisher"), verbose, "");
        assert!(
            expected.contains("Permissions Violation for Publish to \"billing.admin.x\""),
            "{expected}"
        );
        assert!(expected.contains("Permissions Violation for Subscription to \"billing.events.x\" using queue \"other\""), "{expected}");
        assert!(
            expected.contains("Permissions Violation for Publish to \"secret.x\""),
            "trace destination: {expected}"
        );
        assert_eq!(through_natsguard, expected, "verbose={verbose}");
    }
}

#[test]
fn denied_frames_never_reach_nats_server() {
    let mesh = Mesh::start(POLICY);
    let mut observer = RawClient::connect(mesh.nats.port);
    observer.read_line();
    observer.send(b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB > 1\r\nPING\r\n");
    observer.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n"));

    session(mesh.port_of("publisher"), false, "");
    observer.send(b"PING\r\n");
    let (seen, _) = observer.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n"));
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("MSG billing.ok 1 2\r\nhi\r\n"), "{seen}");
    assert!(
        !seen.contains("billing.admin"),
        "a denied publish reached nats-server: {seen}"
    );
}

#[test]
fn every_decision_is_counted_and_logged() {
    let mesh = Mesh::start(POLICY);
    session(mesh.port_of("publisher"), false, "");
    let lines = mesh.wait_for_audit("the denials", |lines| {
        lines
            .iter()
            .filter(|line| line["natsguard"] == "deny")
            .count()
            >= 4
    });
    let denied_publish = lines
        .iter()
        .find(|line| line["op"] == "PUB" && line["subject"] == "billing.admin.x")
        .expect("PUB denial");
    assert_eq!(
        denied_publish["principal"],
        "cluster.local/ns/billing/sa/publisher"
    );
    assert_eq!(
        denied_publish["rules"],
        serde_json::json!(["billing publishers"])
    );
    let stats = mesh.stats();
    let natsguard_stats: Vec<_> = stats
        .iter()
        .filter(|(name, _)| name.contains("natsguard"))
        .collect();
    let stat = |name: &str| {
        stats
            .get(&format!("wasmcustom.natsguard.{name}"))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(stat("publish_denied"), 3, "{natsguard_stats:?}");
    assert_eq!(stat("publish_allowed"), 1);
    assert_eq!(stat("subscribe_denied"), 2);
    assert_eq!(stat("subscribe_allowed"), 2);
    assert_eq!(stat("connections_accepted"), 1);
}

/// Reads INFO, sends CONNECT + PING, returns what came back and whether the connection closed.
fn connect_and_read(port: u16, first_frames: &[u8]) -> (Vec<u8>, bool) {
    let mut client = RawClient::connect(port);
    client.read_line();
    client.send(first_frames);
    client.read_until(Duration::from_secs(5), |_| false)
}

#[test]
fn connections_without_an_allowed_identity_are_refused_like_nats_server_does() {
    let mesh = Mesh::start(POLICY);
    for (identity, reason) in [
        ("denied", "no_matching_rule"),
        ("stranger", "spiffe_trust_domain"),
        ("nosan", "spiffe_missing"),
    ] {
        let (bytes, closed) = connect_and_read(
            mesh.port_of(identity),
            b"CONNECT {\"verbose\":false}\r\nPING\r\n",
        );
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "-ERR 'Authorization Violation'\r\n",
            "{identity}"
        );
        assert!(closed, "{identity}: the connection is closed");
        let stats = mesh.stats();
        assert_eq!(
            stats.get(&format!("wasmcustom.natsguard.connections_denied.{reason}")),
            Some(&1),
            "{identity}: {stats:?}"
        );
    }
}

#[test]
fn frames_before_connect_are_refused_and_never_executed() {
    let mesh = Mesh::start(POLICY);
    let mut observer = RawClient::connect(mesh.nats.port);
    observer.read_line();
    observer.send(b"CONNECT {\"verbose\":false}\r\nSUB > 1\r\nPING\r\n");
    observer.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n"));

    let (bytes, closed) = connect_and_read(
        mesh.port_of("publisher"),
        b"PUB billing.ok 2\r\nhi\r\nCONNECT {}\r\nPING\r\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        "-ERR 'Authorization Violation'\r\n"
    );
    assert!(closed);
    observer.send(b"PING\r\n");
    let (seen, _) = observer.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n"));
    assert_eq!(String::from_utf8_lossy(&seen), "PONG\r\n");
}

#[test]
fn a_second_connect_closes_the_connection() {
    let mesh = Mesh::start(POLICY);
    let (bytes, closed) = connect_and_read(
        mesh.port_of("publisher"),
        b"CONNECT {\"verbose\":false}\r\nPING\r\nCONNECT {\"user\":\"other\"}\r\nPING\r\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        "PONG\r\n-ERR 'Authorization Violation'\r\n"
    );
    assert!(closed);
}

#[test]
fn protocol_errors_end_with_the_servers_error() {
    let mesh = Mesh::start(POLICY);
    for (frames, expected) in [
        (
            &b"CONNECT {}\r\nPING\r\nPUB billing.a 2\r\nhiX\r\n"[..],
            "PONG\r\n-ERR 'Unknown Protocol Operation'\r\n",
        ),
        (
            b"CONNECT {}\r\nPING\r\nPUB billing.a bar\r 55\n",
            "PONG\r\n-ERR 'Unknown Protocol Operation'\r\n",
        ),
        (
            b"CONNECT {}\r\nPING\r\nPUB billing.a 2000000\r\n",
            "PONG\r\n-ERR 'Maximum Payload Violation'\r\n",
        ),
    ] {
        let (bytes, closed) = connect_and_read(mesh.port_of("publisher"), frames);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.ends_with(expected),
            "{:?}: {text:?}",
            String::from_utf8_lossy(frames)
        );
        assert!(closed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_nats_reports_permission_errors_and_keeps_working() {
    let mesh = Mesh::start(POLICY);
    let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let publisher = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors_tx.send(error.to_string());
                }
            }
        })
        .connect(mesh.url_of("publisher"))
        .await
        .expect("connect");
    let subscriber = async_nats::connect(mesh.url_of("subscriber"))
        .await
        .expect("connect");
    let mut messages = subscriber.subscribe("billing.>").await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    tokio::task::block_in_place(|| mesh.nats.wait_for_subscription("billing.>"));

    publisher
        .publish("billing.admin.reset", "x".into())
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");
    let error = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .expect("error in time")
        .expect("error");
    assert!(
        error
            .to_lowercase()
            .contains("permissions violation for publish to \"billing.admin.reset\""),
        "{error}"
    );

    publisher
        .publish("billing.invoice", "ok".into())
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");
    let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(message.subject.as_str(), "billing.invoice");
    assert_eq!(
        publisher.connection_state(),
        async_nats::connection::State::Connected
    );
}

#[test]
fn the_access_log_shows_identity_and_decision() {
    let mesh = Mesh::start(POLICY);
    session(mesh.port_of("publisher"), false, "");
    connect_and_read(mesh.port_of("denied"), b"CONNECT {}\r\nPING\r\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let wanted = [
        "identity=principal=cluster.local/ns/billing/sa/publisher namespace=billing service_account=publisher decision=allow",
        "decision=deny:no_matching_rule",
    ];
    while !wanted.iter().all(|w| mesh.access_log().contains(w)) {
        assert!(
            std::time::Instant::now() < deadline,
            "access log:\n{}",
            mesh.access_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

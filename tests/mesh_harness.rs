//! The foundation: a NATS client going through the mesh harness (client sidecar → mTLS →
//! server sidecar with natsguard → nats-server) sees exactly what it sees connected directly,
//! and natsguard learns each client's SPIFFE ID from its certificate.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::{contains, Mesh, RawClient};

/// Every authenticated mesh identity may do everything.
const ALLOW_ALL: &str = r#"{
  "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
  "default_action": "allow",
  "rules": []
}"#;

/// The server's reply to a scripted session, with the per-connection INFO lines removed
/// (they carry the client id); everything else must be byte-identical.
fn scripted_session(port: u16) -> Vec<u8> {
    let mut client = RawClient::connect(port);
    let info = client.read_line();
    assert!(
        info.starts_with(b"INFO {"),
        "first line is INFO: {:?}",
        String::from_utf8_lossy(&info)
    );
    client.send(b"CONNECT {\"verbose\":true,\"pedantic\":false,\"headers\":true,\"protocol\":1,\"name\":\"raw\"}\r\nPING\r\n");
    client.send(b"SUB harness.> 1\r\nSUB harness.q q1 2\r\nPUB harness.a 5\r\nhello\r\n");
    client.send(b"HPUB harness.q reply.x 22 27\r\nNATS/1.0\r\nX-Key: v\r\n\r\nworld\r\nUNSUB 2\r\nPUB harness.q 0\r\n\r\nPING\r\n");
    let two_pongs = |b: &[u8]| b.windows(6).filter(|w| *w == b"PONG\r\n").count() >= 2;
    let (bytes, closed) = client.read_until(Duration::from_secs(5), two_pongs);
    assert!(!closed, "connection stays open");
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b"INFO "))
        .flatten()
        .copied()
        .collect()
}

#[test]
fn raw_protocol_bytes_are_identical_through_the_mesh() {
    let mesh = Mesh::start(ALLOW_ALL);
    let direct = scripted_session(mesh.nats.port);
    let through_mesh = scripted_session(mesh.port_of("publisher"));
    assert!(
        contains(&direct, b"MSG harness.a 1 5\r\nhello\r\n"),
        "{}",
        String::from_utf8_lossy(&direct)
    );
    assert!(
        contains(&direct, b"HMSG harness.q 1 reply.x 22 27\r\n"),
        "{}",
        String::from_utf8_lossy(&direct)
    );
    assert_eq!(
        String::from_utf8_lossy(&through_mesh),
        String::from_utf8_lossy(&direct)
    );
}

#[test]
fn info_through_the_mesh_is_the_servers_info() {
    let mesh = Mesh::start(ALLOW_ALL);
    let info_of = |port| {
        let line = RawClient::connect(port).read_line();
        let json = line.strip_prefix(b"INFO ").expect("INFO");
        let mut info: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(json).expect("INFO JSON");
        for per_connection in ["client_id", "client_ip"] {
            info.remove(per_connection);
        }
        info
    };
    assert_eq!(info_of(mesh.port_of("subscriber")), info_of(mesh.nats.port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_nats_round_trips_through_the_mesh_as_directly() {
    let mesh = Mesh::start(ALLOW_ALL);
    // Subjects differ per round, so a previous round's closing connection cannot stand in.
    for (round, url) in [mesh.nats.url(), mesh.url_of("subscriber")]
        .into_iter()
        .enumerate()
    {
        let subject = |name: &str| format!("round{round}.{name}");
        let subscriber = async_nats::connect(&url).await.expect("connect subscriber");
        let publisher = async_nats::connect(mesh.url_of("publisher"))
            .await
            .expect("connect publisher");
        assert_eq!(
            subscriber.server_info().server_id,
            publisher.server_info().server_id
        );

        let mut messages = subscriber
            .subscribe(subject("orders.>"))
            .await
            .expect("subscribe");
        let mut responder = subscriber
            .subscribe(subject("service.echo"))
            .await
            .expect("subscribe");
        subscriber.flush().await.expect("flush");
        tokio::task::block_in_place(|| {
            mesh.nats.wait_for_subscription(&subject("orders.>"));
            mesh.nats.wait_for_subscription(&subject("service.echo"));
        });

        let mut headers = async_nats::HeaderMap::new();
        headers.insert("X-Trace", "abc");
        publisher
            .publish(subject("orders.new"), "payload".into())
            .await
            .expect("publish");
        publisher
            .publish_with_headers(subject("orders.headers"), headers, "with headers".into())
            .await
            .expect("hpub");
        publisher.flush().await.expect("flush");

        let first = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("message")
            .expect("open");
        assert_eq!(
            (first.subject.as_str(), &first.payload[..]),
            (subject("orders.new").as_str(), &b"payload"[..])
        );
        let second = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("message")
            .expect("open");
        assert_eq!(
            second
                .headers
                .as_ref()
                .and_then(|h| h.get("X-Trace"))
                .map(|v| v.as_str()),
            Some("abc")
        );

        let echo = tokio::spawn(async move {
            let request = responder.next().await.expect("request");
            let reply = request.reply.expect("reply subject");
            subscriber
                .publish(reply, request.payload)
                .await
                .expect("reply");
            subscriber.flush().await.expect("flush");
        });
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            publisher.request(subject("service.echo"), "ping".into()),
        )
        .await
        .expect("in time")
        .expect("response");
        assert_eq!(&response.payload[..], b"ping");
        echo.await.expect("responder");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natsguard_sees_the_spiffe_id_of_each_client_certificate() {
    let mesh = Mesh::start(ALLOW_ALL);
    let mut clients = Vec::new();
    for identity in ["publisher", "subscriber"] {
        let client = async_nats::connect(mesh.url_of(identity))
            .await
            .expect("connect");
        client.flush().await.expect("flush");
        clients.push(client);
    }
    let seen = |lines: &[serde_json::Value], service_account: &str| {
        lines.iter().any(|line| {
            line["natsguard"] == "connection_start"
                && line["principal"] == format!("cluster.local/ns/billing/sa/{service_account}")
                && line["namespace"] == "billing"
                && line["service_account"] == service_account
        })
    };
    mesh.wait_for_audit("both identities", |lines| {
        seen(lines, "publisher") && seen(lines, "subscriber")
    });
}

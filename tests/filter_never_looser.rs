//! Where natsguard reads a permission more strictly than nats-server, the decision that denies
//! more wins, through real Envoy, compared with a nats-server user holding the same permissions:
//! - a queue entry restricts queue subscribers the way nats-server matches it (`* q2` covers the
//!   literal `>`), whatever the plain allows say;
//! - a SUB only natsguard refuses arms the delivery filter as nats-server arms it, so a
//!   JetStream pull answered on the inbox sid does not deliver a subscribe-denied subject.

mod support;

use std::time::Duration;

use support::{Mesh, NatsServer, RawClient};

const QUEUE_POLICY: &str = r#"{
  "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
  "rules": [
    { "name": "object form", "from": { "principals": ["cluster.local/ns/billing/sa/publisher"] },
      "permissions": { "subscribe": { "allow": ["* q2", "a.a", ">"] } } },
    { "name": "list form", "from": { "principals": ["cluster.local/ns/billing/sa/subscriber"] },
      "permissions": { "subscribe": ["c", "* q2", ">"] } }
  ]
}"#;

const QUEUE_ORACLE: &str = r#"
authorization { users: [
  { user: object, password: pw, permissions: { subscribe: { allow: ["* q2", "a.a", ">"] } } },
  { user: list, password: pw, permissions: { subscribe: ["c", "* q2", ">"] } }
] }
"#;

/// Sends CONNECT, `frames` and a PING; returns what came back before that PONG, without the
/// lines that differ per connection or server (INFO, the server's own PING).
fn session(port: u16, credentials: &str, frames: &str, settle: Duration) -> String {
    let has_pong = |b: &[u8]| support::contains(b, b"PONG\r\n");
    let mut client = RawClient::connect(port);
    client.read_line();
    client.send(format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1{credentials}}}\r\nPING\r\n").as_bytes());
    let (handshake, _) = client.read_until(Duration::from_secs(5), has_pong);
    assert!(
        has_pong(&handshake),
        "{}",
        String::from_utf8_lossy(&handshake)
    );
    client.send(frames.as_bytes());
    std::thread::sleep(settle);
    client.send(b"PING\r\n");
    let (bytes, closed) = client.read_until(Duration::from_secs(5), has_pong);
    assert!(!closed, "the connection stays open");
    String::from_utf8_lossy(&bytes)
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("INFO ") && *line != "PING\r\n")
        .collect()
}

#[test]
fn a_wildcard_queue_entry_restricts_queue_subscribers_like_nats_server() {
    let mesh = Mesh::start(QUEUE_POLICY);
    let oracle = NatsServer::start(Some(QUEUE_ORACLE));
    for (identity, user, frames, denied_sids) in [
        (
            "publisher",
            "object",
            "SUB > q1 2\r\nSUB > q2 3\r\nSUB > 4\r\nSUB x q1 5\r\nSUB a.a q1 6\r\n",
            ["2", "5"].as_slice(),
        ),
        (
            "subscriber",
            "list",
            "SUB > q1 6\r\nSUB > 7\r\nSUB c q1 8\r\n",
            &["6", "8"],
        ),
    ] {
        let credentials = format!(",\"user\":\"{user}\",\"pass\":\"pw\"");
        let expected = session(oracle.port, &credentials, frames, Duration::ZERO);
        let through_natsguard = session(mesh.port_of(identity), "", frames, Duration::ZERO);
        assert!(
            expected.contains(
                "-ERR 'Permissions Violation for Subscription to \">\" using queue \"q1\"'\r\n"
            ),
            "{user}: {expected}"
        );
        assert_eq!(
            expected.matches("Permissions Violation").count(),
            denied_sids.len(),
            "{user}: {expected}"
        );
        assert_eq!(through_natsguard, expected, "{identity} as {user}");
    }
}

const PULL_PERMISSIONS: &str = r#"{
  "publish": { "allow": ["$JS.API.CONSUMER.MSG.NEXT.ORDERS.*"] },
  "subscribe": { "allow": ["orders.*", "_INBOX.>"], "deny": ["orders.secret"] }
}"#;

/// A stream `ORDERS` on `orders.>` holding `orders.secret` then `orders.open`, and one pull
/// consumer per name (a pull leaves its messages pending, so each session gets its own).
async fn orders_stream(url: &str, consumers: &[&str]) {
    let client = async_nats::ConnectOptions::with_user_and_password("admin".into(), "pw".into())
        .connect(url)
        .await
        .expect("connect as admin");
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    for subject in ["orders.secret", "orders.open"] {
        let ack = jetstream
            .publish(subject, "m".into())
            .await
            .expect("publish");
        ack.await.expect("stored");
    }
    for name in consumers {
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some((*name).into()),
                ..Default::default()
            })
            .await
            .expect("create consumer");
    }
}

fn jetstream_server(users: &str) -> (NatsServer, tempfile::TempDir) {
    let store = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "jetstream {{ store_dir: \"{}\" }}\nauthorization {{ users: [ {{ user: admin, password: pw }}, {users} ] }}\n",
        store.path().display()
    );
    (NatsServer::start(Some(&config)), store)
}

/// A pull with `SUB orders.>` before it (nats-server allows it and arms its delivery filter;
/// natsguard refuses it and must arm its own) and one without (nothing armed).
fn pull_frames(consumer: &str, with_wildcard_sub: bool) -> String {
    let request = r#"{"batch":2,"no_wait":true}"#;
    let wildcard = if with_wildcard_sub {
        "SUB orders.> 2\r\n"
    } else {
        ""
    };
    format!(
        "SUB _INBOX.pull 1\r\n{wildcard}PUB $JS.API.CONSUMER.MSG.NEXT.ORDERS.{consumer} _INBOX.pull {}\r\n{request}\r\n",
        request.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_only_natsguard_refuses_still_filters_deliveries_like_nats_server() {
    let (oracle, _oracle_store) = jetstream_server(&format!(
        "{{ user: puller, password: pw, permissions: {PULL_PERMISSIONS} }}"
    ));
    // natsguard authenticates to its nats-server with upstream credentials.
    let (upstream, _upstream_store) = jetstream_server("{ user: natsguard, password: pw }");
    let policy = format!(
        r#"{{
          "identity": {{ "spiffe": {{ "required": true, "trust_domains": ["cluster.local"] }} }},
          "rules": [{{ "name": "puller", "from": {{ "principals": ["cluster.local/ns/billing/sa/publisher"] }},
                      "permissions": {PULL_PERMISSIONS} }}],
          "upstream": {{ "user": "natsguard", "pass": "pw" }}
        }}"#
    );
    orders_stream(&oracle.url(), &["plain", "armed"]).await;
    orders_stream(&upstream.url(), &["plain", "armed"]).await;
    let mesh = Mesh::start_with_server(&policy, upstream);
    let settle = Duration::from_millis(500);
    let (oracle_plain, natsguard_plain, oracle_armed, natsguard_armed) =
        tokio::task::block_in_place(|| {
            let oracle_credentials = ",\"user\":\"puller\",\"pass\":\"pw\"";
            (
                session(
                    oracle.port,
                    oracle_credentials,
                    &pull_frames("plain", false),
                    settle,
                ),
                session(
                    mesh.port_of("publisher"),
                    "",
                    &pull_frames("plain", false),
                    settle,
                ),
                session(
                    oracle.port,
                    oracle_credentials,
                    &pull_frames("armed", true),
                    settle,
                ),
                session(
                    mesh.port_of("publisher"),
                    "",
                    &pull_frames("armed", true),
                    settle,
                ),
            )
        });
    // Nothing armed: the pull delivers both messages on the inbox sid, on both sides.
    for (side, text) in [
        ("nats-server", &oracle_plain),
        ("natsguard", &natsguard_plain),
    ] {
        assert!(
            text.contains("MSG orders.secret 1 $JS.ACK.ORDERS.plain."),
            "{side}: {text}"
        );
        assert!(
            text.contains("MSG orders.open 1 $JS.ACK.ORDERS.plain."),
            "{side}: {text}"
        );
    }
    // Armed: nats-server drops orders.secret; so does natsguard, which refused the SUB itself.
    for (side, text) in [
        ("nats-server", &oracle_armed),
        ("natsguard", &natsguard_armed),
    ] {
        assert!(
            !text.contains("MSG orders.secret"),
            "{side} delivered the denied subject: {text}"
        );
        assert!(
            text.contains("MSG orders.open 1 $JS.ACK.ORDERS.armed."),
            "{side}: {text}"
        );
    }
    assert!(
        natsguard_armed
            .starts_with("-ERR 'Permissions Violation for Subscription to \"orders.>\"'\r\n"),
        "{natsguard_armed}"
    );
    assert!(
        !oracle_armed.contains("Permissions Violation"),
        "{oracle_armed}"
    );
}

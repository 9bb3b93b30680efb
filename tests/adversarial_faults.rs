//! Faults around the filter: an invalid configuration (fail closed), nats-server restarted
//! mid-stream, the remote JWKS endpoint down, slow, garbage or rotating, Envoy restarted with a
//! changed policy, clients vanishing mid-frame, and a 64 MB message through a filtered
//! subscriber.

mod adversarial;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use adversarial::{
    admitted, jwks, jwt_policy, natsguard_counters, token, wait_for_counter, Observer, Relay,
    ServerFrames,
};
use support::{contains, JwksServer, Mesh, NatsServer, RawClient};

const POLICY: &str = r#"{
  "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
  "default_action": "deny",
  "rules": [
    { "name": "publisher", "from": { "principals": ["cluster.local/ns/billing/sa/publisher"] },
      "permissions": { "publish": { "allow": ["ok.>"] }, "subscribe": { "allow": ["_INBOX.>"] } } },
    { "name": "subscriber", "from": { "principals": ["cluster.local/ns/billing/sa/subscriber"] },
      "permissions": { "publish": { "deny": [">"] },
                       "subscribe": { "allow": ["feed.>"], "deny": ["feed.secret.>"] } } }
  ]
}"#;

/// nats-server traces every protocol line it receives: its log shows what reached it.
const TRACING_SERVER: &str = "trace: true\ndebug: true\n";

/// A nats-server for `Mesh` whose port is replaced by `port`: the mesh then talks to whatever
/// listens there (a server the test restarts, or a relay), while this one only idles.
fn stand_in(port: u16) -> NatsServer {
    let mut server = NatsServer::start(None);
    server.port = port;
    server
}

/// Reads INFO, sends CONNECT + `frames` + PING, returns the replies up to the PONG (or close).
fn session(port: u16, frames: &[u8]) -> (String, bool) {
    let mut client = RawClient::connect(port);
    client.read_line();
    client.send(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n");
    client.send(frames);
    client.send(b"PING\r\n");
    let (bytes, closed) = client.read_until(Duration::from_secs(8), |b| b.ends_with(b"PONG\r\n"));
    (String::from_utf8_lossy(&bytes).into_owned(), closed)
}

fn subjects(observer: &Observer) -> Vec<String> {
    observer.sync();
    observer.take().into_iter().map(|m| m.subject).collect()
}

#[test]
fn an_invalid_configuration_refuses_traffic_and_nothing_reaches_nats_server() {
    let server = NatsServer::start(Some(TRACING_SERVER));
    let invalid = [
        ("not JSON", "{".to_string()),
        (
            "unknown field",
            POLICY.replacen("\"default_action\"", "\"bogus\": 1, \"default_action\"", 1),
        ),
        ("invalid subject", POLICY.replace("ok.>", "ok..>")),
        (
            "unknown template",
            POLICY.replace("ok.>", "ok.{{jwt.nope}}.>"),
        ),
    ];
    for (what, policy) in &invalid {
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Mesh::start_with_server(policy, stand_in(server.port))
        }));
        match started {
            // Envoy refuses the listener's filter chain and does not start.
            Err(panic) => {
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(message.contains("natsguard"), "{what}: {message}");
            }
            // Or it starts and the listener refuses every connection.
            Ok(mesh) => {
                let mut client =
                    TcpStream::connect(("127.0.0.1", mesh.port_of("publisher"))).expect("connect");
                client
                    .set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let _ = client.write_all(b"CONNECT {}\r\nPUB ok.x 2\r\nhi\r\nPING\r\n");
                let mut reply = Vec::new();
                let _ = client.read_to_end(&mut reply);
                assert!(
                    reply.is_empty(),
                    "{what}: {}",
                    String::from_utf8_lossy(&reply)
                );
            }
        }
    }
    // Only the harness's readiness probe ever connected, and it sends nothing.
    let log = server.log();
    assert!(!log.contains("<<- ["), "bytes reached nats-server:\n{log}");
    assert!(
        log.matches("Client connection created").count() <= 1,
        "a connection reached nats-server:\n{log}"
    );
    eprintln!(
        "fail closed: {} invalid configurations refused",
        invalid.len()
    );
}

#[test]
fn clients_reconnect_through_the_filter_after_nats_server_restarts() {
    let first = NatsServer::start(None);
    let relay = Relay::start(first.port, None);
    let mesh = Mesh::start_with_server(POLICY, stand_in(relay.port));
    let observer = Observer::start(first.port);

    // A publisher streaming when the server goes away.
    let mut client = RawClient::connect(mesh.port_of("publisher"));
    client.read_line();
    client.send(b"CONNECT {\"verbose\":false}\r\nPUB ok.before 1\r\nx\r\nPING\r\n");
    client.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n"));
    assert_eq!(subjects(&observer), ["ok.before"]);
    drop(observer);
    let streaming = std::thread::spawn(move || {
        let mut sent = 0;
        while client
            .stream
            .write_all(b"PUB ok.stream 3\r\nabc\r\n")
            .is_ok()
            && sent < 100_000
        {
            sent += 1;
        }
        let (_, closed) = client.read_until(Duration::from_secs(10), |_| false);
        closed
    });
    std::thread::sleep(Duration::from_millis(200));
    drop(first);
    let second = NatsServer::start(None);
    relay.set_upstream(second.port);
    assert!(
        streaming.join().expect("streaming client"),
        "the client sees its connection close"
    );

    let observer = Observer::start(second.port);
    let (replies, closed) = session(
        mesh.port_of("publisher"),
        b"PUB ok.after 1\r\nx\r\nPUB denied.after 1\r\nx\r\n",
    );
    assert!(!closed, "{replies}");
    assert_eq!(
        replies,
        "-ERR 'Permissions Violation for Publish to \"denied.after\"'\r\nPONG\r\n"
    );
    assert_eq!(subjects(&observer), ["ok.after"]);
    let counters = natsguard_counters(&mesh.stats());
    assert_eq!(
        counters.get("connections_accepted"),
        Some(&2),
        "{counters:?}"
    );
}

#[test]
fn cached_keys_survive_jwks_outages_and_rotations_are_picked_up() {
    let (k1, k2, forged) = (("k1", 1), ("k2", 2), ("k1", 66));
    let endpoint = JwksServer::start(200, &jwks(&[k1]));
    let relay = Relay::start(endpoint.port, None);
    let mesh = Mesh::start_with(&jwt_policy(), NatsServer::start(None), relay.port);
    wait_for_counter(&mesh, "jwks_refresh_ok", 1);
    let (t1, t2, t_forged) = (
        token(k1.0, k1.1),
        token(k2.0, k2.1),
        token(forged.0, forged.1),
    );
    let never_valid = token("k3", 3);
    let port = mesh.port_of("publisher");
    let check = |phase: &str, expect_k1: bool, expect_k2: bool| {
        assert_eq!(admitted(port, &t1), expect_k1, "{phase}: k1");
        assert_eq!(admitted(port, &t2), expect_k2, "{phase}: k2");
        assert!(!admitted(port, &t_forged), "{phase}: forged k1");
        assert!(!admitted(port, &never_valid), "{phase}: k3");
    };
    check("first key set", true, false);
    let failures = |mesh: &Mesh| {
        natsguard_counters(&mesh.stats())
            .get("jwks_refresh_failed")
            .copied()
            .unwrap_or(0)
    };
    // Down: nothing listens behind the idp cluster.
    relay.set_upstream(support::free_ports(1)[0]);
    let before = failures(&mesh);
    wait_for_counter(&mesh, "jwks_refresh_failed", before + 1);
    check("endpoint down", true, false);
    // Garbage: keys k1 and k2 are served, but not as a JWKS.
    relay.set_upstream(endpoint.port);
    endpoint.set(200, &format!("<html>{}</html>", jwks(&[k1, k2])));
    wait_for_counter(&mesh, "jwks_refresh_failed", failures(&mesh) + 1);
    check("garbage", true, false);
    // Slow: the answer comes after natsguard's 5 s fetch timeout.
    endpoint.set(200, &jwks(&[k1, k2]));
    relay.set_delay(Duration::from_secs(7));
    wait_for_counter(&mesh, "jwks_refresh_failed", failures(&mesh) + 1);
    check("slow", true, false);
    // Back, with a new key: picked up at a following refresh (the refresh counter is shared by
    // every VM of the plugin, so the test waits for the key itself).
    relay.set_delay(Duration::ZERO);
    let eventually = |phase: &str, token: &str, wanted: bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while admitted(port, token) != wanted {
            assert!(Instant::now() < deadline, "{phase}: never became {wanted}");
            assert!(!admitted(port, &t_forged), "{phase}: forged k1");
            assert!(!admitted(port, &never_valid), "{phase}: k3");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    eventually("k2 added", &t2, true);
    check("k2 added", true, true);
    // Rotation: k1 withdrawn.
    endpoint.set(200, &jwks(&[k2]));
    eventually("k1 withdrawn", &t1, false);
    check("k1 withdrawn", false, true);
}

#[test]
fn a_restarted_envoy_applies_the_changed_policy_to_new_connections() {
    let server = NatsServer::start(None);
    let observer = Observer::start(server.port);
    let first = Mesh::start_with_server(POLICY, stand_in(server.port));
    let mut old = RawClient::connect(first.port_of("publisher"));
    old.read_line();
    old.send(b"CONNECT {}\r\nPING\r\n");
    old.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n"));
    let (replies, _) = session(
        first.port_of("publisher"),
        b"PUB ok.v1 1\r\nx\r\nPUB v2.x 1\r\nx\r\n",
    );
    assert!(
        replies.contains("Permissions Violation for Publish to \"v2.x\""),
        "{replies}"
    );
    assert_eq!(subjects(&observer), ["ok.v1"]);

    // The harness runs Envoy with --disable-hot-restart: the change is a restart.
    drop(first);
    let (_, closed) = old.read_until(Duration::from_secs(5), |_| false);
    assert!(closed, "connections of the old Envoy end with it");
    let changed = POLICY.replace("[\"ok.>\"]", "[\"v2.>\"]");
    let second = Mesh::start_with_server(&changed, stand_in(server.port));
    let (replies, _) = session(
        second.port_of("publisher"),
        b"PUB ok.v1 1\r\nx\r\nPUB v2.x 1\r\nx\r\n",
    );
    assert_eq!(
        replies,
        "-ERR 'Permissions Violation for Publish to \"ok.v1\"'\r\nPONG\r\n"
    );
    assert_eq!(subjects(&observer), ["v2.x"]);
}

#[test]
fn clients_vanishing_mid_frame_leave_nothing_behind() {
    let mesh = Mesh::start(POLICY);
    let observer = Observer::start(mesh.nats.port);
    let port = mesh.port_of("publisher");
    let cuts: [&[u8]; 6] = [
        b"CONNECT {\"verbose\":fal",
        b"CONNECT {}\r\nPUB ok.cut",
        b"CONNECT {}\r\nPUB ok.cut 10\r\nhalf",
        b"CONNECT {\"headers\":true}\r\nHPUB ok.cut 22 24\r\nNATS/1.0\r\nX: ",
        b"CONNECT {\"headers\":true}\r\nHPUB ok.cut 12 14\r\nNATS/1.0\r\n\r\nh",
        b"CONNECT {}\r\nPUB ok.cut 2\r\nhi\r",
    ];
    for cut in cuts {
        let mut client = RawClient::connect(port);
        client.read_line();
        client.send(cut);
        std::thread::sleep(Duration::from_millis(50));
        drop(client);
    }
    let (replies, closed) = session(port, b"PUB ok.whole 1\r\nx\r\n");
    assert_eq!((replies.as_str(), closed), ("PONG\r\n", false));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(subjects(&observer), ["ok.whole"]);
    // Every connection closed as far as Envoy is concerned.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = mesh.stats();
        let active: u64 = stats
            .iter()
            .filter(|(name, _)| {
                name.starts_with("listener.")
                    && !name.starts_with("listener.admin.")
                    && name.ends_with("downstream_cx_active")
            })
            .map(|(_, value)| value)
            .sum();
        if active == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{active} connections still open");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_64_mb_message_reaches_a_filtered_subscriber_intact() {
    const SIZE: usize = 64 * 1024 * 1024;
    let server = NatsServer::start(Some("max_payload: 67108864\nmax_pending: 536870912\n"));
    let mesh = Mesh::start_with_server(POLICY, server);
    let mut subscriber = RawClient::connect(mesh.port_of("subscriber"));
    subscriber.read_line();
    subscriber.send(b"CONNECT {\"verbose\":false}\r\nSUB feed.> 1\r\nPING\r\n");
    subscriber.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n"));

    let mut publisher = TcpStream::connect(("127.0.0.1", mesh.nats.port)).expect("publisher");
    publisher
        .write_all(b"CONNECT {\"verbose\":false}\r\n")
        .expect("connect");
    let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    for subject in ["feed.secret.big", "feed.big"] {
        publisher
            .write_all(format!("PUB {subject} {SIZE}\r\n").as_bytes())
            .expect("line");
        publisher.write_all(&payload).expect("payload");
        publisher.write_all(b"\r\n").expect("end");
    }
    publisher
        .write_all(b"PUB feed.after 1\r\nx\r\n")
        .expect("after");

    let mut frames = ServerFrames::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = Instant::now();
    while frames.messages.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "got {:?}",
            frames
                .messages
                .iter()
                .map(|m| &m.subject)
                .collect::<Vec<_>>()
        );
        let (bytes, closed) = subscriber.read_until(Duration::from_millis(50), |_| false);
        assert!(!closed, "the subscriber's connection stays open");
        frames.feed(&bytes);
    }
    let subjects: Vec<&str> = frames.messages.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["feed.big", "feed.after"]);
    assert!(
        frames.messages[0].data == payload,
        "the 64 MB payload arrives intact"
    );
    let counters = natsguard_counters(&mesh.stats());
    assert_eq!(
        counters.get("deliveries_filtered"),
        Some(&1),
        "{counters:?}"
    );
    eprintln!(
        "64 MB: denied copy filtered, allowed copy intact in {:?}",
        started.elapsed()
    );
}

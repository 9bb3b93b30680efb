//! A policy change reaches connections that are already open, the way nats-server's own
//! configuration reload reaches its clients (server/reload.go, server/client.go
//! `processSubsOnConfigReload`). natsguard's configuration is delivered by ECDS as Istio
//! delivers it (a new version of the ECDS file, see `Mesh::update_policy`); the oracle is a
//! nats-server whose user gets the same permissions, changed by rewriting its configuration and
//! SIGHUP. Clients see the same bytes from both.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{Mesh, MeshOptions, NatsServer, Session};

const PUBLISHER: &str = "cluster.local/ns/billing/sa/publisher";

fn policy(permissions: &str) -> String {
    format!(
        r#"{{
          "identity": {{ "spiffe": {{ "required": true, "trust_domains": ["cluster.local"] }} }},
          "default_action": "deny",
          "rules": [{{ "name": "publisher", "from": {{ "principals": ["{PUBLISHER}"] }}, "permissions": {permissions} }}]
        }}"#
    )
}

fn oracle_config(permissions: &str, password: &str) -> String {
    format!(
        "authorization {{ users: [ {{ user: feeder, password: pw }}, {{ user: publisher, password: {password}, permissions: {permissions} }} ] }}\n"
    )
}

/// Before: plain, queue and wildcard subscriptions allowed, `orders.>` publishable.
const BEFORE: &str = r#"{
  "publish": { "allow": ["orders.>", "events.>"] },
  "subscribe": { "allow": ["orders.>", "jobs.* workers", "jobs.>", "events.*", "audit.>"] }
}"#;

/// After: `orders.>` revoked both ways, the `workers` queue group no longer allowed, a deny
/// entry that arms the delivery filter for `events.*`, `audit.>` granted for publishing.
const AFTER: &str = r#"{
  "publish": { "allow": ["events.>", "audit.>"] },
  "subscribe": { "allow": ["audit.>", "events.*", "jobs.> other"], "deny": ["events.secret"] }
}"#;

/// nats-server sends its reload `-ERR`s in the order of a Go map: compare them as a set.
fn normalised(mut lines: Vec<String>) -> Vec<String> {
    let is_reload_error = |line: &String| line.contains("(sid \"");
    let mut start = 0;
    while start < lines.len() {
        let run = lines[start..]
            .iter()
            .take_while(|line| is_reload_error(line))
            .count();
        lines[start..start + run].sort();
        start += run.max(1);
    }
    lines
}

/// What the publisher's client sees: subscriptions and a publish before the change, then, after
/// it, deliveries a feeder published (on revoked, filtered and still allowed subjects), a
/// revoked and a granted publish.
fn transcript(
    port: u16,
    credentials: &str,
    feeder: impl Fn(&str),
    change: impl FnOnce(),
) -> Vec<String> {
    let mut session = Session::open(port, credentials);
    let mut lines = session.exchange(
        "SUB orders.> 1\r\nSUB jobs.x workers 2\r\nSUB events.* 3\r\nSUB audit.log 4\r\nPUB orders.a 1\r\na\r\n",
    );
    change();
    feeder("PUB events.secret 1\r\ns\r\nPUB events.open 1\r\no\r\nPUB orders.x 1\r\nx\r\nPUB jobs.x 1\r\nj\r\nPUB audit.log 1\r\nl\r\n");
    lines.push("--- changed".into());
    lines.extend(session.exchange("PUB orders.b 1\r\nb\r\nPUB audit.log 1\r\nm\r\n"));
    normalised(lines)
}

/// A feeder with every permission, publishing on `port` (PING-PONG: nats-server delivered it).
fn feed(port: u16, credentials: &str) -> impl Fn(&str) {
    let session = std::cell::RefCell::new(Session::open(port, credentials));
    move |frames| {
        session.borrow_mut().exchange(frames);
    }
}

#[test]
fn open_connections_see_a_policy_change_as_nats_server_clients_see_a_reload() {
    let oracle = NatsServer::start(Some(&oracle_config(BEFORE, "pw")));
    let expected = transcript(
        oracle.port,
        ",\"user\":\"publisher\",\"pass\":\"pw\"",
        feed(oracle.port, ",\"user\":\"feeder\",\"pass\":\"pw\""),
        || oracle.reload(&oracle_config(AFTER, "pw")),
    );
    let mesh = Mesh::start(&policy(BEFORE));
    let through_natsguard = transcript(
        mesh.port_of("publisher"),
        "",
        feed(mesh.nats.port, ""),
        || mesh.update_policy(&policy(AFTER)).expect("update applied"),
    );
    let wanted = [
        "-ERR 'Permissions Violation for Subscription to \"orders.>\" (sid \"1\")'",
        "-ERR 'Permissions Violation for Subscription to \"jobs.x\" using queue \"workers\" (sid \"2\")'",
        "MSG events.open 3 1",
        "MSG audit.log 4 1",
        "-ERR 'Permissions Violation for Publish to \"orders.b\"'",
    ];
    for line in wanted {
        assert!(
            expected.iter().any(|l| l == line),
            "nats-server: {line} not in {expected:#?}"
        );
    }
    assert!(!expected
        .iter()
        .any(|l| l.contains("events.secret") || l.contains("MSG orders.x")));
    assert_eq!(through_natsguard, expected);

    let stat = |name: &str| {
        mesh.stats()
            .get(&format!("wasmcustom.natsguard.{name}"))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(stat("policy_updates"), 1);
    assert_eq!(stat("subscriptions_revoked"), 2);
    assert!(stat("connections_reevaluated") >= 1);
    let audit = mesh.wait_for_audit("the revoked subscriptions", |lines| {
        lines
            .iter()
            .filter(|line| line["natsguard"] == "subscription_revoked")
            .count()
            == 2
    });
    let revoked = audit
        .iter()
        .find(|line| line["natsguard"] == "subscription_revoked" && line["sid"] == "2")
        .expect("sid 2");
    assert_eq!(revoked["queue"], "workers");
    assert_eq!(revoked["principal"], PUBLISHER);
    assert_eq!(
        revoked["policy_version"],
        natsguard::policy::policy_version(&policy(AFTER))
    );
}

#[test]
fn a_connection_no_longer_allowed_is_refused_like_a_user_nats_server_no_longer_accepts() {
    // nats-server: the user's password changed (it no longer authenticates); natsguard: no rule
    // matches the identity any more.
    let oracle = NatsServer::start(Some(&oracle_config(BEFORE, "pw")));
    let mesh = Mesh::start(&policy(BEFORE));
    let mut expected = Session::open(oracle.port, ",\"user\":\"publisher\",\"pass\":\"pw\"");
    let mut through_natsguard = Session::open(mesh.port_of("publisher"), "");
    oracle.reload(&oracle_config(BEFORE, "changed"));
    mesh.update_policy(
        &policy(BEFORE).replace(PUBLISHER, "cluster.local/ns/billing/sa/someone-else"),
    )
    .expect("update applied");
    let expected = expected.exchange_until_closed("PUB orders.a 1\r\na\r\n");
    let through_natsguard = through_natsguard.exchange_until_closed("PUB orders.a 1\r\na\r\n");
    assert_eq!(
        expected,
        (vec!["-ERR 'Authorization Violation'".to_string()], true)
    );
    assert_eq!(through_natsguard, expected);
    let audit = mesh.wait_for_audit("the revoked connection", |lines| {
        lines
            .iter()
            .any(|line| line["natsguard"] == "connection_revoked")
    });
    let revoked = audit
        .iter()
        .find(|line| line["natsguard"] == "connection_revoked")
        .expect("connection_revoked");
    assert_eq!(revoked["reason"], "no_matching_rule");
    assert_eq!(
        mesh.stats().get("wasmcustom.natsguard.connections_revoked"),
        Some(&1)
    );
}

/// async-nats sees the same as against nats-server: the error callback names the revoked
/// subscription, the connection stays up, and only allowed deliveries arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_nats_sees_a_revoked_subscription_as_against_nats_server() {
    async fn observe(
        url: String,
        credentials: Option<(&str, &str)>,
        feeder: String,
        change: impl FnOnce(),
    ) -> (Vec<String>, Vec<String>) {
        let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
        let mut options = async_nats::ConnectOptions::new().event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors_tx.send(error.to_string().to_lowercase());
                }
            }
        });
        if let Some((user, pass)) = credentials {
            options = options.user_and_password(user.into(), pass.into());
        }
        let client = options.connect(url).await.expect("connect");
        let mut orders = client.subscribe("orders.>").await.expect("subscribe");
        let mut events = client.subscribe("events.*").await.expect("subscribe");
        client.flush().await.expect("flush");
        tokio::task::block_in_place(change);
        let feeder = match credentials {
            Some(_) => {
                async_nats::ConnectOptions::with_user_and_password("feeder".into(), "pw".into())
            }
            None => async_nats::ConnectOptions::new(),
        }
        .connect(feeder)
        .await
        .expect("connect the feeder");
        for subject in ["orders.x", "events.secret", "events.open"] {
            feeder.publish(subject, "m".into()).await.expect("publish");
        }
        feeder.flush().await.expect("flush");
        let mut received = Vec::new();
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(3), events.next()).await
        {
            received.push(message.subject.to_string());
        }
        let orders_message = tokio::time::timeout(Duration::from_millis(500), orders.next()).await;
        if let Ok(Some(message)) = orders_message {
            received.push(message.subject.to_string());
        }
        let mut seen_errors = Vec::new();
        while let Ok(Some(error)) =
            tokio::time::timeout(Duration::from_millis(500), errors.recv()).await
        {
            seen_errors.push(error);
        }
        assert_eq!(
            client.connection_state(),
            async_nats::connection::State::Connected
        );
        (seen_errors, received)
    }
    let oracle = NatsServer::start(Some(&oracle_config(BEFORE, "pw")));
    let expected = observe(
        oracle.url(),
        Some(("publisher", "pw")),
        oracle.url(),
        || oracle.reload(&oracle_config(AFTER, "pw")),
    )
    .await;
    let mesh = Mesh::start(&policy(BEFORE));
    let through_natsguard = observe(mesh.url_of("publisher"), None, mesh.nats.url(), || {
        mesh.update_policy(&policy(AFTER)).expect("update applied")
    })
    .await;
    assert_eq!(
        expected.1,
        ["events.open"],
        "nats-server delivered {:?}",
        expected.1
    );
    assert!(
        expected
            .0
            .iter()
            .any(|error| error.contains("orders.>") && error.contains("sid")),
        "{:?}",
        expected.0
    );
    assert_eq!(through_natsguard, expected);
}

/// A rollback: the first configuration delivered again while connections created under it are
/// open. Envoy reuses its root context without calling it on the worker threads; natsguard still
/// applies it, to open and new connections.
#[test]
fn a_rollback_reaches_open_and_new_connections() {
    let mesh = Mesh::start_with_options(
        &policy(BEFORE),
        NatsServer::start(None),
        MeshOptions {
            workers: 2,
            ..MeshOptions::default()
        },
    );
    let mut sessions: Vec<Session> = (0..4)
        .map(|_| Session::open(mesh.port_of("publisher"), ""))
        .collect();
    let denied = "-ERR 'Permissions Violation for Publish to \"orders.a\"'".to_string();
    let publish = |session: &mut Session| session.exchange("PUB orders.a 1\r\na\r\n");
    for (step, policy_json, allowed) in [
        ("update", policy(AFTER), false),
        ("rollback", policy(BEFORE), true),
        ("update again", policy(AFTER), false),
    ] {
        mesh.update_policy(&policy_json).expect("update applied");
        // The rollback is noticed on the next tick of the worker VMs.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let outcomes: Vec<bool> = sessions
                .iter_mut()
                .map(|session| publish(session).is_empty())
                .collect();
            if outcomes.iter().all(|&ok| ok == allowed) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: allowed per connection {outcomes:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut new = Session::open(mesh.port_of("publisher"), "");
        let expected = if allowed {
            vec![]
        } else {
            vec![denied.clone()]
        };
        assert_eq!(publish(&mut new), expected, "{step}: a new connection");
        sessions.push(new);
    }
}

/// Publishing and subscribing on subjects both configurations allow goes on through 100
/// updates, and every message arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_is_lost_through_100_policy_updates() {
    const UPDATES: usize = 100;
    let steady = r#"{ "publish": ["events.>"], "subscribe": ["events.>"] }"#;
    // The same permissions for the publisher, and a rule for another identity that comes and
    // goes: a new configuration each time.
    let configurations = [
        policy(steady),
        policy(steady).replace(
            "\"rules\": [",
            "\"rules\": [{ \"name\": \"visitor\", \"from\": { \"namespaces\": [\"guest\"] }, \"permissions\": {} },",
        ),
    ];
    let mesh = std::sync::Arc::new(Mesh::start(&configurations[0]));
    let subscriber = async_nats::connect(mesh.url_of("publisher"))
        .await
        .expect("connect");
    let mut messages = subscriber
        .subscribe("events.stream")
        .await
        .expect("subscribe");
    subscriber.flush().await.expect("flush");
    let publisher = async_nats::connect(mesh.url_of("publisher"))
        .await
        .expect("connect");
    let updater = {
        let mesh = std::sync::Arc::clone(&mesh);
        let configurations = configurations.clone();
        tokio::task::spawn_blocking(move || {
            for update in 1..=UPDATES {
                mesh.update_policy(&configurations[update % 2])
                    .expect("update applied");
            }
        })
    };
    let mut sent = 0u64;
    while !updater.is_finished() {
        for _ in 0..20 {
            publisher
                .publish("events.stream", sent.to_string().into())
                .await
                .expect("publish");
            sent += 1;
        }
        publisher.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    updater.await.expect("updates");
    publisher.flush().await.expect("flush");
    for expected in 0..sent {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap_or_else(|_| panic!("message {expected} of {sent} did not arrive"))
            .expect("message");
        assert_eq!(
            String::from_utf8_lossy(&message.payload),
            expected.to_string()
        );
    }
    let stats = mesh.stats();
    assert_eq!(
        stats.get("wasmcustom.natsguard.policy_updates"),
        Some(&(UPDATES as u64))
    );
    eprintln!("{sent} messages through {UPDATES} policy updates, none lost");
}

#[test]
fn connections_on_every_worker_are_updated() {
    let mesh = Mesh::start_with_options(
        &policy(BEFORE),
        NatsServer::start(None),
        MeshOptions {
            workers: 2,
            ..MeshOptions::default()
        },
    );
    let mut sessions: Vec<Session> = (0..16)
        .map(|_| Session::open(mesh.port_of("publisher"), ""))
        .collect();
    let stats = mesh.stats();
    let active = |worker: usize| {
        stats
            .iter()
            .filter(|(name, _)| {
                name.contains(&format!(
                    "{}.worker_{worker}.downstream_cx_active",
                    mesh.inbound_port
                ))
            })
            .map(|(_, value)| *value)
            .sum::<u64>()
    };
    assert!(
        active(0) > 0 && active(1) > 0,
        "connections on both workers: {} and {}",
        active(0),
        active(1)
    );
    mesh.update_policy(&policy(AFTER)).expect("update applied");
    for (index, session) in sessions.iter_mut().enumerate() {
        assert_eq!(
            session.exchange("PUB orders.a 1\r\na\r\n"),
            ["-ERR 'Permissions Violation for Publish to \"orders.a\"'"],
            "connection {index}"
        );
    }
}

#[test]
fn an_invalid_update_changes_nothing() {
    let mesh = Mesh::start(&policy(BEFORE));
    let mut open = Session::open(mesh.port_of("publisher"), "");
    assert_eq!(open.exchange("SUB orders.> 1\r\n"), Vec::<String>::new());
    let invalid = policy(AFTER).replace("\"events.>\", \"audit.>\"", "\"events..>\"");
    let rejected = mesh
        .update_policy(&invalid)
        .expect_err("natsguard refuses it");
    assert!(
        rejected.0.contains("natsguard: configuration rejected: rules[0].permissions.publish.allow[0]: invalid subject \"events..>\""),
        "the log names the path and the reason:\n{}",
        rejected.0
    );
    let stats = mesh.stats();
    assert_eq!(
        stats.get("extension_config_discovery.network_filter.natsguard.update_rejected"),
        Some(&1)
    );
    assert_eq!(stats.get("wasmcustom.natsguard.policy_updates"), None);
    // The open connection keeps its permissions and its subscription; a new one gets the same.
    assert_eq!(
        open.exchange("PUB orders.a 1\r\na\r\n"),
        ["MSG orders.a 1 1", "a"]
    );
    let mut new = Session::open(mesh.port_of("publisher"), "");
    assert_eq!(
        new.exchange("PUB orders.b 1\r\nb\r\n"),
        Vec::<String>::new()
    );
    assert_eq!(open.exchange(""), ["MSG orders.b 1 1", "b"]);
}

/// Older configurations must not pile up: after many updates with connections open (each
/// re-evaluated every time), Envoy's heap and the VMs' memory stay within 10% of their level
/// after the first update. `make test`: 40 updates, 20 connections; `make stress`
/// (`NATSGUARD_STRESS_SECONDS` set): 1,000 updates, 100 connections.
#[test]
fn memory_stays_flat_through_many_policy_updates() {
    let stress = std::env::var_os("NATSGUARD_STRESS_SECONDS").is_some();
    let (updates, connections) = if stress { (1_000, 100) } else { (40, 20) };
    // Each update a configuration never seen before (a new root context in every VM).
    let configuration = |revision: usize| {
        policy(
            r#"{ "publish": ["events.>"], "subscribe": { "allow": ["events.>"], "deny": ["events.secret"] } }"#,
        )
        .replace("\"name\": \"publisher\"", &format!("\"name\": \"publisher r{revision}\""))
    };
    let mesh = Mesh::start_with_options(
        &configuration(0),
        NatsServer::start(None),
        MeshOptions {
            workers: 2,
            ..MeshOptions::default()
        },
    );
    let mut sessions: Vec<Session> = (0..connections)
        .map(|index| {
            let mut session = Session::open(mesh.port_of("publisher"), "");
            let subscriptions: String = (1..=5)
                .map(|sid| format!("SUB events.{index}.{sid}.* {sid}\r\n"))
                .collect();
            assert_eq!(session.exchange(&subscriptions), Vec::<String>::new());
            session
        })
        .collect();
    let vm_memory = |mesh: &Mesh| {
        mesh.stats()
            .get("wasmcustom.natsguard.vm_memory_bytes")
            .copied()
            .unwrap_or(0)
    };
    let measure = |mesh: &Mesh| {
        // The gauge is reported on a tick.
        std::thread::sleep(Duration::from_millis(200));
        (
            mesh.envoy_heap_bytes().expect("heap"),
            vm_memory(mesh),
            mesh.envoy_rss_bytes().expect("rss"),
        )
    };
    mesh.update_policy(&configuration(1))
        .expect("update applied");
    let (heap_first, vm_first, rss_first) = measure(&mesh);
    let started = Instant::now();
    for revision in 2..=updates {
        mesh.update_policy(&configuration(revision))
            .expect("update applied");
    }
    let elapsed = started.elapsed();
    let (heap_last, vm_last, rss_last) = measure(&mesh);
    for (index, session) in sessions.iter_mut().enumerate() {
        let frame = format!("PUB events.{index}.1.x 1\r\nm\r\n");
        assert_eq!(
            session.exchange(&frame),
            [format!("MSG events.{index}.1.x 1 1"), "m".to_string()],
            "connection {index} after {updates} updates"
        );
    }
    let reevaluated = mesh
        .stats()
        .get("wasmcustom.natsguard.connections_reevaluated")
        .copied()
        .unwrap_or(0);
    eprintln!(
        "{updates} updates with {connections} connections open ({reevaluated} re-evaluations) in {elapsed:?}: \
         Envoy heap {heap_first} -> {heap_last} bytes, natsguard VM memory {vm_first} -> {vm_last} bytes, \
         Envoy RSS {rss_first} -> {rss_last} bytes"
    );
    assert_eq!(reevaluated, (updates * connections) as u64);
    assert!(
        heap_last as f64 <= heap_first as f64 * 1.10,
        "Envoy's heap grew from {heap_first} to {heap_last} bytes"
    );
    assert!(
        vm_last as f64 <= vm_first as f64 * 1.10,
        "natsguard's VM memory grew from {vm_first} to {vm_last} bytes"
    );
}

//! A NATS cluster behind the mesh (tests/support/cluster.rs): three nats-servers with routes and
//! JetStream, each behind its own Envoy (two workers) running natsguard with the same policy.
//! Every node and worker decides the same; deliveries crossing routes are filtered by the
//! receiving client's natsguard; INFO updates on cluster changes reach clients without
//! `connect_urls`; requests cross nodes under `allow_responses`. Through a killed node, a rolling
//! restart in lame duck mode and a restarted Envoy, clients (nats-py, async-nats) follow through
//! their sidecars with the same identity and permissions, and no acknowledged JetStream message
//! of an R3 stream is lost. A rotated remote JWKS reaches every node within its refresh period,
//! fetched once per Envoy.
//!
//! Quick form in `make test`; with `NATSGUARD_STRESS_SECONDS=N` (`make stress`) the rolling
//! restart goes on for N seconds.

mod adversarial;
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adversarial::{
    admitted, jwks, jwt_policy, natsguard_counters, stress_seconds, token, wait_for_counter,
    Observer,
};
use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{Event, ServerError};
use futures_util::StreamExt;
use support::cluster::{wait_for, Cluster, LAME_DUCK_DURATION, NODES};
use support::{
    bounded_command, contains, repo_root, venv_binary, JwksServer, MeshOptions, RawClient,
};
use tokio::io::AsyncBufReadExt;

const POLICY: &str = r#"{
  "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
  "default_action": "deny",
  "rules": [
    { "name": "publisher", "from": { "principals": ["cluster.local/ns/billing/sa/publisher"] },
      "permissions": { "publish": { "allow": ["billing.>", "$JS.API.>"], "deny": ["billing.admin.>"] },
                       "subscribe": { "allow": ["_INBOX.>"] } } },
    { "name": "subscriber", "from": { "principals": ["cluster.local/ns/billing/sa/subscriber"] },
      "permissions": { "publish": { "allow": ["$JS.API.>"] },
                       "subscribe": { "allow": ["billing.>", "_INBOX.>"], "deny": ["billing.secret.>"] },
                       "allow_responses": { "max": 1, "expires": "1m" } } }
  ]
}"#;

/// The R3 stream the fault tests publish to.
const STREAM: &str = "ORDERS";

/// Envoy workers per node: production sidecars run several.
const WORKERS: usize = 2;

/// The harness's waits poll and sleep: off the async workers' threads.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// CONNECT, `frames`, PING on a fresh connection to `port`: what came back up to the PONG (or
/// the close), without the server's own PINGs, and whether the connection closed.
fn session(port: u16, frames: &str) -> (String, bool) {
    let mut client = RawClient::connect(port);
    client.read_line();
    client.send(
        format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\n{frames}PING\r\n").as_bytes(),
    );
    let (bytes, closed) = client.read_until(Duration::from_secs(10), |b| contains(b, b"PONG\r\n"));
    (
        String::from_utf8_lossy(&bytes).replace("PING\r\n", ""),
        closed,
    )
}

fn counter(cluster: &Cluster, node: usize, name: &str) -> u64 {
    natsguard_counters(&cluster.nodes[node].stats())
        .get(name)
        .copied()
        .unwrap_or(0)
}

#[test]
fn every_node_and_worker_decides_the_same_and_refuses_untrusted_identities() {
    let cluster = Cluster::start(POLICY, MeshOptions::with_workers(WORKERS));
    let violation = |what: &str, subject: &str| {
        format!("-ERR 'Permissions Violation for {what} to \"{subject}\"'\r\n")
    };
    let refused = "-ERR 'Authorization Violation'\r\n".to_string();
    let cases = [
        (
            "publisher",
            "PUB billing.events.a 2\r\nok\r\nPUB billing.admin.reset 2\r\nno\r\nSUB billing.> 1\r\nSUB _INBOX.x 2\r\n",
            format!("{}{}PONG\r\n", violation("Publish", "billing.admin.reset"), violation("Subscription", "billing.>")),
            false,
        ),
        (
            "subscriber",
            "SUB billing.> 1\r\nSUB billing.secret.> 2\r\nPUB billing.x 1\r\nx\r\n",
            format!("{}{}PONG\r\n", violation("Subscription", "billing.secret.>"), violation("Publish", "billing.x")),
            false,
        ),
        ("denied", "", refused.clone(), true),
        ("stranger", "", refused.clone(), true),
        ("nosan", "", refused, true),
    ];
    // Four connections per identity and node: 20 per Envoy, spread over its two workers.
    for node in 0..NODES {
        for (identity, frames, expected, closes) in &cases {
            for _ in 0..4 {
                let (replies, closed) = session(cluster.nodes[node].port_of(identity), frames);
                assert_eq!(
                    (replies.as_str(), closed),
                    (expected.as_str(), *closes),
                    "n{node}, {identity}"
                );
            }
        }
        for reason in ["no_matching_rule", "spiffe_trust_domain", "spiffe_missing"] {
            let refusals = counter(&cluster, node, &format!("connections_denied.{reason}"));
            assert_eq!(refusals, 4, "n{node}: {reason}");
        }
        let per_worker = cluster.nodes[node].assert_every_worker_took_connections();
        eprintln!("cluster: n{node}'s Envoy took connections per worker {per_worker:?}");
    }
}

/// Waits until node `node` learned a subscription to `subject` over a route (`/routez?subs=1`).
fn wait_for_route_interest(cluster: &Cluster, node: usize, subject: &str) {
    wait_for(
        &format!("n{node} to learn {subject} over a route"),
        Duration::from_secs(10),
        || {
            cluster
                .monitor(node, "/routez?subs=1")
                .and_then(|routez| routez["routes"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .any(|route| {
                    route["subscriptions_list"]
                        .as_array()
                        .is_some_and(|subs| subs.iter().any(|sub| sub == subject))
                })
        },
    );
}

#[test]
fn deliveries_crossing_routes_are_filtered_by_the_receiving_clients_natsguard() {
    let cluster = Cluster::start(POLICY, MeshOptions::with_workers(WORKERS));
    let mut subscriber = RawClient::connect(cluster.nodes[1].port_of("subscriber"));
    subscriber.read_line();
    subscriber.send(b"CONNECT {\"verbose\":false}\r\nSUB billing.> 1\r\nPING\r\n");
    let (ready, _) = subscriber.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n"));
    assert!(contains(&ready, b"PONG\r\n"));
    // Directly on n1, without natsguard: what n1 delivers to a subscriber of everything.
    let observer = Observer::start(cluster.nodes[1].nats.port);
    wait_for_route_interest(&cluster, 0, "billing.>");

    let published = [
        "billing.secret.a",
        "billing.orders.a",
        "billing.secret.b.c",
        "billing.done",
    ];
    let frames: String = published
        .iter()
        .map(|subject| format!("PUB {subject} 1\r\nx\r\n"))
        .collect();
    let (replies, closed) = session(cluster.nodes[0].port_of("publisher"), &frames);
    assert_eq!((replies.as_str(), closed), ("PONG\r\n", false));

    let (bytes, _) = subscriber.read_until(Duration::from_secs(10), |b| {
        contains(b, b"MSG billing.done ")
    });
    let delivered: Vec<String> = String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| line.strip_prefix("MSG "))
        .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(delivered, ["billing.orders.a", "billing.done"]);
    observer.sync();
    let routed: Vec<String> = observer.take().into_iter().map(|m| m.subject).collect();
    assert_eq!(
        routed, published,
        "n1 received every message over the route"
    );
    assert_eq!(
        counter(&cluster, 1, "deliveries_filtered"),
        2,
        "the receiver's natsguard filtered"
    );
    assert_eq!(
        counter(&cluster, 0, "deliveries_filtered"),
        0,
        "the sender's natsguard did not"
    );
}

/// The INFO lines in `bytes`, as JSON.
fn info_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|line| line.strip_prefix("INFO "))
        .map(|json| serde_json::from_str(json).expect("INFO JSON"))
        .collect()
}

/// Whether `bytes` hold a whole INFO line.
fn has_info_line(bytes: &[u8]) -> bool {
    bytes
        .windows(5)
        .position(|w| w == b"INFO ")
        .is_some_and(|at| contains(&bytes[at..], b"\r\n"))
}

/// The next INFO `client` receives (a cluster update), within 10 s.
fn next_info(client: &mut RawClient) -> serde_json::Value {
    let (bytes, closed) = client.read_until(Duration::from_secs(10), has_info_line);
    assert!(!closed, "{}", String::from_utf8_lossy(&bytes));
    info_lines(&bytes).remove(0)
}

fn keys(info: &serde_json::Value) -> BTreeSet<String> {
    info.as_object()
        .expect("INFO object")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn cluster_info_updates_reach_clients_without_connect_urls() {
    let mut cluster = Cluster::start(POLICY, MeshOptions::with_workers(WORKERS));
    // The same client twice, through n0's natsguard and directly on n0's nats-server.
    let connect = |port: u16| {
        let mut client = RawClient::connect(port);
        let first = info_lines(&client.read_line()).remove(0);
        client.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n");
        // PONG, then the INFO that confirms the CONNECT.
        let (bytes, _) = client.read_until(Duration::from_secs(5), |b| {
            contains(b, b"\"connect_info\":true") && b.ends_with(b"\r\n")
        });
        assert!(
            contains(&bytes, b"PONG\r\n"),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        (client, first)
    };
    let (mut guarded, guarded_first) = connect(cluster.nodes[0].port_of("publisher"));
    let (mut direct, direct_first) = connect(cluster.nodes[0].nats.port);
    assert_eq!(
        direct_first["connect_urls"].as_array().map(Vec::len),
        Some(3)
    );
    assert!(
        guarded_first.get("connect_urls").is_none(),
        "{guarded_first}"
    );

    // What changes, how many client URLs nats-server then advertises, how.
    type Change = (&'static str, usize, fn(&mut Cluster));
    let cluster_changes: [Change; 2] = [
        ("n2 killed", 2, |cluster| cluster.kill_server(2)),
        ("n2 back", 3, |cluster| cluster.restart_server(2)),
    ];
    for (change, urls, apply) in cluster_changes {
        apply(&mut cluster);
        let (update, passed) = (next_info(&mut direct), next_info(&mut guarded));
        assert_eq!(
            update["connect_urls"].as_array().map(Vec::len),
            Some(urls),
            "{change}: {update}"
        );
        assert!(passed.get("connect_urls").is_none(), "{change}: {passed}");
        let mut expected_keys = keys(&update);
        expected_keys.remove("connect_urls");
        assert_eq!(
            keys(&passed),
            expected_keys,
            "{change}: the update otherwise as sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cross_nodes_and_each_may_be_answered_once() {
    let cluster = blocking(|| Cluster::start(POLICY, MeshOptions::with_workers(WORKERS)));
    let mut responder = RawClient::connect(cluster.nodes[0].port_of("subscriber"));
    responder.read_line();
    responder.send(b"CONNECT {\"verbose\":false}\r\nSUB billing.rpc 1\r\nPING\r\n");
    blocking(|| responder.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n")));
    for node in [1, 2] {
        blocking(|| wait_for_route_interest(&cluster, node, "billing.rpc"));
        let requester = async_nats::connect(cluster.nodes[node].url_of("publisher"))
            .await
            .expect("connect");
        let request =
            tokio::spawn(async move { requester.request("billing.rpc", "ping".into()).await });
        let (bytes, _) = blocking(|| {
            responder.read_until(Duration::from_secs(10), |b| contains(b, b"\r\nping\r\n"))
        });
        let text = String::from_utf8_lossy(&bytes);
        let reply = text
            .lines()
            .find_map(|line| line.strip_prefix("MSG billing.rpc 1 "))
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("no request with a reply subject: {text}"))
            .to_string();
        responder.send(
            format!("PUB {reply} 4\r\npong\r\nPUB {reply} 5\r\nagain\r\nPUB _INBOX.forged 1\r\nx\r\nPING\r\n")
                .as_bytes(),
        );
        let (bytes, closed) =
            blocking(|| responder.read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n")));
        assert_eq!(
            (
                String::from_utf8_lossy(&bytes).replace("PING\r\n", ""),
                closed
            ),
            (
                format!(
                    "-ERR 'Permissions Violation for Publish to \"{reply}\"'\r\n\
                     -ERR 'Permissions Violation for Publish to \"_INBOX.forged\"'\r\nPONG\r\n"
                ),
                false
            ),
            "one response per request from n{node}, none unasked"
        );
        let response = request.await.expect("task").expect("answered");
        assert_eq!(response.payload, "pong");
    }
}

// ---------------------------------------------------------------------------------------------
// Faults: clients follow through their sidecars and no acknowledged message is lost.

async fn create_stream(cluster: &Cluster) {
    let client = async_nats::connect(cluster.urls_of("publisher"))
        .await
        .expect("connect");
    jetstream::new(client)
        .create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["billing.orders.>".into()],
            num_replicas: NODES,
            ..Default::default()
        })
        .await
        .expect("create the R3 stream");
}

/// Waits until every running replica of the stream holds at least `acked` messages; returns what
/// each holds.
fn stored_after(cluster: &Cluster, nodes: &[usize], acked: u64) -> Vec<u64> {
    wait_for(
        &format!("every replica to hold the {acked} acknowledged messages"),
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|&node| cluster.stored_messages(node, STREAM).unwrap_or(0) >= acked)
        },
    );
    nodes
        .iter()
        .map(|&node| cluster.stored_messages(node, STREAM).unwrap_or(0))
        .collect()
}

/// One JSON line of the nats-py session, within 60 s.
async fn next_event(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("nats-py reports in time")
        .expect("read nats-py")
        .expect("nats-py ended early");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_follows_a_killed_node_and_no_acknowledged_message_is_lost() {
    let mut cluster = blocking(|| Cluster::start(POLICY, MeshOptions::with_workers(WORKERS)));
    create_stream(&cluster).await;
    let total = 200;
    let mut command = tokio::process::Command::from(bounded_command(
        venv_binary("python"),
        Duration::from_secs(180),
    ));
    command
        .arg(repo_root().join("tests/clients/nats_py_jetstream_failover.py"))
        .args(["billing.orders.py", &total.to_string()])
        .args(cluster.urls_of("publisher"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("run nats-py");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = next_event(&mut lines).await;
    let killed = cluster.node_of_port(first["connected"].as_u64().expect("connected") as u16);
    while next_event(&mut lines).await["acked"] != total / 2 - 1 {}
    let fault = Instant::now();
    blocking(|| cluster.kill_server(killed));

    let mut failed_over = None;
    let mut acked = total / 2;
    let mut after_fault = Vec::new();
    let retries = loop {
        let event = next_event(&mut lines).await;
        if event.get("acked").is_some() {
            failed_over.get_or_insert(fault.elapsed());
            acked += 1;
            continue;
        }
        if let Some(count) = event["retries"].as_u64() {
            break count;
        }
        after_fault.push(event);
    };
    // nats-py calls its reconnected callback from its reconnect task after a PING/PONG on the
    // new connection, while publishes already flow on it: on a loaded machine the callback can
    // report after the last ack. Everything nats-py printed until it exited counts.
    while let Ok(Some(line)) = lines.next_line().await {
        after_fault.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}")));
    }
    let status = child.wait().await.expect("nats-py exit");
    assert!(status.success(), "nats-py: {status}");
    let reconnected_to = after_fault
        .iter()
        .rev()
        .find_map(|event| event["reconnected"].as_u64())
        .map(|port| cluster.node_of_port(port as u16))
        .unwrap_or_else(|| {
            panic!("nats-py did not report a reconnect; it reported {after_fault:?}")
        });
    assert_ne!(reconnected_to, killed, "through another node's sidecar");
    assert_eq!(acked, total);

    let survivors: Vec<usize> = (0..NODES).filter(|&n| n != killed).collect();
    let stored = blocking(|| stored_after(&cluster, &survivors, total));
    blocking(|| cluster.restart_server(killed));
    let rejoined = blocking(|| stored_after(&cluster, &[killed], total));
    eprintln!(
        "cluster: nats-py on n{killed}, killed after {} acks; next ack through n{reconnected_to} {:?} \
         after the kill ({retries} publishes retried); acknowledged {acked}, stored {stored:?} on \
         n{survivors:?}, {rejoined:?} on n{killed} after its restart",
        total / 2,
        failed_over.expect("an ack after the kill"),
    );
    assert!(
        stored.iter().chain(&rejoined).all(|&count| count == total),
        "acknowledged {acked}, stored {stored:?} + {rejoined:?}"
    );
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `nats-server --signal ldm`, then the node restarted once it exited.
    LameDuckRestart(usize),
    /// The node's Envoy (both its sidecars' listeners) restarted.
    EnvoyRestart(usize),
}

impl Fault {
    fn node(self) -> usize {
        match self {
            Fault::LameDuckRestart(node) | Fault::EnvoyRestart(node) => node,
        }
    }
}

type Events = Arc<Mutex<Vec<(Instant, Event)>>>;

/// An async-nats client of the cluster: all three sidecars in its server list, starting at one.
struct Member {
    identity: &'static str,
    client: async_nats::Client,
    events: Events,
}

impl Member {
    async fn connect(cluster: &Cluster, identity: &'static str, first_node: usize) -> Member {
        let mut urls = cluster.urls_of(identity);
        urls.rotate_left(first_node);
        let events = Events::default();
        let recorder = Arc::clone(&events);
        let client = async_nats::ConnectOptions::new()
            .retain_servers_order()
            .event_callback(move |event| {
                let recorder = Arc::clone(&recorder);
                async move { recorder.lock().expect("lock").push((Instant::now(), event)) }
            })
            .connect(urls)
            .await
            .expect("connect");
        Member {
            identity,
            client,
            events,
        }
    }

    /// The node whose nats-server the client is connected to (its INFO's `server_name`).
    fn node(&self) -> usize {
        let name = self.client.server_info().server_name;
        name.trim_start_matches('n')
            .parse()
            .expect("server name n<i>")
    }

    /// What happened to the connection after `since`, with the seconds since then.
    fn events_since(&self, since: Instant) -> Vec<(f64, String)> {
        let events = self.events.lock().expect("lock");
        events
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(at, event)| ((*at - since).as_secs_f64(), event.to_string()))
            .collect()
    }

    fn saw_since(&self, since: Instant, what: impl Fn(&Event) -> bool) -> bool {
        let events = self.events.lock().expect("lock");
        events.iter().any(|(at, event)| *at >= since && what(event))
    }

    /// When the client lost its connection after `since`, and when it was connected again.
    fn reconnected_since(&self, since: Instant) -> Option<(Instant, Instant)> {
        let events = self.events.lock().expect("lock");
        let lost = events
            .iter()
            .position(|(at, event)| *at >= since && *event == Event::Disconnected)?;
        events[lost..]
            .iter()
            .find(|(_, event)| *event == Event::Connected)
            .map(|(at, _)| (events[lost].0, *at))
    }

    /// Its identity's permissions still hold: a publish it may not make gets nats-server's error
    /// and the connection stays.
    async fn check_permissions(&self) {
        let denied = if self.identity == "publisher" {
            "billing.admin.reset"
        } else {
            "billing.x"
        };
        let since = Instant::now();
        self.client
            .publish(denied, "no".into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
        let wanted = format!("permissions violation for publish to \"{denied}\"");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.saw_since(since, |event| {
            matches!(event, Event::ServerError(ServerError::Other(error)) if error.to_lowercase().contains(&wanted))
        }) {
            assert!(Instant::now() < deadline, "{}: no permissions violation for {denied}", self.identity);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Publishes `billing.orders.<prefix>.<n>` until told to stop, each message with a `Nats-Msg-Id`
/// and again until acknowledged (the stream drops a duplicate); the acknowledged ids.
async fn publish_until_stopped(
    client: async_nats::Client,
    prefix: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    retries: Arc<AtomicU64>,
) {
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_secs(2));
    let mut index = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{prefix}-{index}");
        loop {
            let publish = context.send_publish(
                format!("billing.orders.{prefix}.{index}"),
                jetstream::message::PublishMessage::build()
                    .payload(id.clone().into())
                    .message_id(&id),
            );
            match async { publish.await?.await }.await {
                Ok(_) => break,
                Err(_) => {
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        acked.lock().expect("lock").push(id);
        index += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A durable pull consumer of the stream filtered on `filter`, fetching and acknowledging until
/// told to stop; the payloads (message ids) it received.
async fn consume_until_stopped(
    client: async_nats::Client,
    durable: String,
    filter: String,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<BTreeSet<String>>>,
) {
    let context = jetstream::new(client);
    while !stop.load(Ordering::Relaxed) {
        let consumer: Result<PullConsumer, async_nats::Error> = async {
            context
                .get_stream(STREAM)
                .await?
                .get_or_create_consumer(
                    &durable,
                    jetstream::consumer::pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: filter.clone(),
                        // A batch lost in flight (its fetch expired during a fail-over) comes
                        // again after this, not after the default 30 s.
                        ack_wait: Duration::from_secs(2),
                        ..Default::default()
                    },
                )
                .await
                .map_err(Into::into)
        }
        .await;
        let Ok(consumer) = consumer else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut batch) = consumer
                .fetch()
                .max_messages(100)
                .expires(Duration::from_millis(500))
                .messages()
                .await
            else {
                break;
            };
            while let Some(Ok(message)) = batch.next().await {
                received
                    .lock()
                    .expect("lock")
                    .insert(String::from_utf8_lossy(&message.payload).into_owned());
                // A lost ack only means a redelivery.
                let _ = message.ack().await;
            }
        }
    }
}

/// What one fault did: clients moved, how long until all were connected again, acknowledged vs
/// stored messages once the node was back.
struct FaultReport {
    fault: Fault,
    moved: usize,
    /// From the fault to the last of them connected again.
    fail_over: Duration,
    /// The longest time one of them was without a connection.
    longest_gap: Duration,
    acked: u64,
    stored: Vec<u64>,
}

/// A publisher and a consumer starting at each node run while the faults happen one after the
/// other (each ends with the node back in the cluster); then the publishers stop and every
/// acknowledged message must be stored on every replica and consumed.
async fn faults_lose_no_acknowledged_message(
    cluster: &mut Cluster,
    faults: impl IntoIterator<Item = Fault>,
) -> Vec<FaultReport> {
    create_stream(cluster).await;
    let mut members = Vec::new();
    for node in 0..NODES {
        members.push(Member::connect(cluster, "publisher", node).await);
        members.push(Member::connect(cluster, "subscriber", node).await);
    }
    let (stop_publishing, stop_consuming) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let retries = Arc::new(AtomicU64::new(0));
    let ledgers: Vec<Arc<Mutex<Vec<String>>>> = (0..NODES).map(|_| Arc::default()).collect();
    let received: Vec<Arc<Mutex<BTreeSet<String>>>> = (0..NODES).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    let mut consumers = Vec::new();
    for node in 0..NODES {
        let (publisher, subscriber) = (&members[2 * node], &members[2 * node + 1]);
        tasks.push(tokio::spawn(publish_until_stopped(
            publisher.client.clone(),
            format!("p{node}"),
            Arc::clone(&stop_publishing),
            Arc::clone(&ledgers[node]),
            Arc::clone(&retries),
        )));
        consumers.push(tokio::spawn(consume_until_stopped(
            subscriber.client.clone(),
            format!("reader-{node}"),
            format!("billing.orders.p{node}.>"),
            Arc::clone(&stop_consuming),
            Arc::clone(&received[node]),
        )));
    }
    let acked = || {
        ledgers
            .iter()
            .map(|l| l.lock().expect("lock").len() as u64)
            .sum::<u64>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledgers.iter().any(|l| l.lock().expect("lock").len() < 20) {
        assert!(Instant::now() < deadline, "publishers started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut reports = Vec::new();
    for fault in faults {
        let node = fault.node();
        let moving: Vec<&Member> = members.iter().filter(|m| m.node() == node).collect();
        let started = Instant::now();
        match fault {
            Fault::LameDuckRestart(node) => cluster.enter_lame_duck_mode(node),
            Fault::EnvoyRestart(node) => blocking(|| cluster.nodes[node].restart_envoy()),
        }
        // By the end of the lame duck duration every client was closed; then each may need a
        // few reconnect attempts (async-nats backs off between them).
        let deadline = started + LAME_DUCK_DURATION + Duration::from_secs(30);
        let (fail_over, longest_gap) = loop {
            let reconnected: Vec<Option<(Instant, Instant)>> = moving
                .iter()
                .map(|m| m.reconnected_since(started))
                .collect();
            if let Some(times) = reconnected.iter().copied().collect::<Option<Vec<_>>>() {
                let last = times.iter().map(|(_, back)| *back - started).max();
                let gap = times.iter().map(|(lost, back)| *back - *lost).max();
                break (last.unwrap_or_default(), gap.unwrap_or_default());
            }
            if Instant::now() >= deadline {
                let events: Vec<String> = moving
                    .iter()
                    .map(|m| format!("{}: {:?}", m.identity, m.events_since(started)))
                    .collect();
                panic!("{fault:?}: clients did not fail over: {reconnected:?}; events {events:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Fault::LameDuckRestart(node) = fault {
            for member in &moving {
                assert!(
                    member.saw_since(started, |e| *e == Event::LameDuckMode),
                    "{}: the INFO ldm reached it",
                    member.identity
                );
                assert_ne!(
                    member.node(),
                    node,
                    "{}: moved to another node",
                    member.identity
                );
            }
            blocking(|| {
                cluster.wait_for_exit(node, Duration::from_secs(40));
                cluster.restart_server(node);
            });
        }
        for member in &members {
            member.check_permissions().await;
        }
        let acked_now = acked();
        let stored = blocking(|| stored_after(cluster, &[0, 1, 2], acked_now));
        reports.push(FaultReport {
            fault,
            moved: moving.len(),
            fail_over,
            longest_gap,
            acked: acked_now,
            stored,
        });
    }

    stop_publishing.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("publisher");
    }
    let total = acked();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..NODES).any(|node| {
        let received = received[node].lock().expect("lock");
        ledgers[node]
            .lock()
            .expect("lock")
            .iter()
            .any(|id| !received.contains(id))
    }) {
        assert!(
            Instant::now() < deadline,
            "consumers did not receive every acknowledged message"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_consuming.store(true, Ordering::Relaxed);
    for consumer in consumers {
        consumer.await.expect("consumer");
    }
    let stored = blocking(|| stored_after(cluster, &[0, 1, 2], total));
    eprintln!(
        "cluster: after the faults {total} acknowledged ({} publishes retried), stored {stored:?}, \
         every one consumed",
        retries.load(Ordering::Relaxed)
    );
    assert!(
        stored.iter().all(|&count| count == total),
        "acknowledged {total}, stored {stored:?}"
    );
    for report in &reports {
        eprintln!(
            "cluster: {:?}: {} clients failed over in {:?} (each without a connection for at most \
             {:?}); acknowledged {} so far, stored {:?}",
            report.fault,
            report.moved,
            report.fail_over,
            report.longest_gap,
            report.acked,
            report.stored
        );
    }
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_in_lame_duck_mode_keeps_clients_permissions_and_messages() {
    let mut cluster = blocking(|| Cluster::start(POLICY, MeshOptions::with_workers(WORKERS)));
    let rounds = stress_seconds().map(Duration::from_secs);
    let started = Instant::now();
    // One round of the StatefulSet's order (n2, n1, n0); the long form repeats it.
    let faults = (0..)
        .take_while(|round| match rounds {
            Some(budget) => *round == 0 || started.elapsed() < budget,
            None => *round == 0,
        })
        .flat_map(|_| [2, 1, 0].map(Fault::LameDuckRestart));
    let reports = faults_lose_no_acknowledged_message(&mut cluster, faults).await;
    assert!(
        reports.iter().all(|report| report.moved > 0),
        "every node had clients to move"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_envoy_sends_its_clients_to_the_other_nodes_and_takes_new_ones() {
    let mut cluster = blocking(|| Cluster::start(POLICY, MeshOptions::with_workers(WORKERS)));
    let reports = faults_lose_no_acknowledged_message(&mut cluster, [Fault::EnvoyRestart(1)]).await;
    assert_eq!(reports[0].moved, 2);
    // The restarted sidecar takes new clients, with natsguard's policy.
    let (replies, closed) = session(
        cluster.nodes[1].port_of("publisher"),
        "PUB billing.admin.x 1\r\nx\r\n",
    );
    assert_eq!(
        (replies.as_str(), closed),
        (
            "-ERR 'Permissions Violation for Publish to \"billing.admin.x\"'\r\nPONG\r\n",
            false
        )
    );
}

// ---------------------------------------------------------------------------------------------
// A remote JWKS rotated: every node's Envoy fetches it on its own.

/// Requests Envoy sent to the `idp` cluster (the JWKS fetches of all its VMs).
fn jwks_fetches(cluster: &Cluster, node: usize) -> u64 {
    cluster.nodes[node]
        .stats()
        .get("cluster.idp.upstream_rq_total")
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_rotated_jwks_reaches_every_node_within_its_refresh_period_fetched_once_per_envoy() {
    const REFRESH: Duration = Duration::from_secs(10); // jwt_policy's refresh_seconds
    let (k1, k2) = (("k1", 1), ("k2", 2));
    let endpoint = JwksServer::start(200, &jwks(&[k1]));
    let started = Instant::now();
    let cluster = Cluster::start(
        &jwt_policy(),
        MeshOptions {
            idp_port: endpoint.port,
            ..MeshOptions::with_workers(WORKERS)
        },
    );
    let (old, new) = (token(k1.0, k1.1), token(k2.0, k2.1));
    let port = |node: usize| cluster.nodes[node].port_of("publisher");
    // Once per Envoy and refresh period, whatever its VMs (main thread and two workers).
    let check_fetches = |when: &str| {
        let periods = started.elapsed().as_secs() / REFRESH.as_secs() + 1;
        let fetches: Vec<u64> = (0..NODES)
            .map(|node| jwks_fetches(&cluster, node))
            .collect();
        eprintln!(
            "cluster: {when}: JWKS fetches per Envoy {fetches:?} in {:?} ({} at the endpoint)",
            started.elapsed(),
            endpoint.requests.load(Ordering::Relaxed)
        );
        for (node, &count) in fetches.iter().enumerate() {
            assert!(
                (1..=periods).contains(&count),
                "n{node}: {count} fetches in {periods} periods"
            );
            assert_eq!(counter(&cluster, node, "jwks_refresh_ok"), count, "n{node}");
        }
        assert_eq!(
            endpoint.requests.load(Ordering::Relaxed) as u64,
            fetches.iter().sum::<u64>()
        );
    };
    for node in 0..NODES {
        wait_for_counter(&cluster.nodes[node], "jwks_refresh_ok", 1);
        wait_for(
            &format!("n{node}'s workers on the first key set"),
            Duration::from_secs(5),
            || (0..8).all(|_| admitted(port(node), &old) && !admitted(port(node), &new)),
        );
        cluster.nodes[node].assert_every_worker_took_connections();
    }
    check_fetches("first key set");

    endpoint.set(200, &jwks(&[k2]));
    let rotated = Instant::now();
    let mut honoured: [Option<Duration>; NODES] = [None; NODES];
    while honoured.iter().any(Option::is_none) {
        assert!(
            rotated.elapsed() < REFRESH + Duration::from_secs(5),
            "rotation honoured: {honoured:?}"
        );
        for (node, when) in honoured.iter_mut().enumerate() {
            if when.is_none() && !admitted(port(node), &old) {
                *when = Some(rotated.elapsed());
            }
        }
    }
    for node in 0..NODES {
        // Every VM adopts the new document on its next tick.
        wait_for(
            &format!("n{node}'s workers on the rotated key set"),
            Duration::from_secs(5),
            || (0..8).all(|_| !admitted(port(node), &old) && admitted(port(node), &new)),
        );
    }
    eprintln!(
        "cluster: the rotated JWKS was honoured after {honoured:?} (refresh period {REFRESH:?})"
    );
    check_fetches("rotated key set");
    for (node, after) in honoured.iter().enumerate() {
        let after = after.expect("honoured");
        assert!(
            after <= REFRESH + Duration::from_secs(1),
            "n{node}: {after:?}"
        );
    }
}

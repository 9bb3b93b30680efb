//! The filter's own cost on the wire: one Envoy (`--concurrency 1`) with four plaintext listeners
//! to one nats-server — tcp_proxy alone; the pass-through module (benches/passthrough: every chunk
//! copied into the VM and scanned, the floor of any NATS-aware filter); natsguard allow-all;
//! natsguard restricted (deny entries, allow_responses, a subscribe deny entry) — each with a
//! raw-protocol publisher and subscriber through the same listener, so every message crosses the
//! filter twice. Rounds are interleaved across listeners and payloads (the machine is shared:
//! what changes during a run changes all four alike); Envoy's CPU per message is the run time of
//! its threads from schedstat. It also times CONNECT with RS256 tokens never seen and seen before,
//! and a storm of clients reconnecting at once.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::support::{free_ports, repo_root, start_envoy, NatsServer, Process};
use super::{connect, cpu_time, median, throughput, Idp, Result, Target, ISSUER};

/// Interleaved rounds; each figure is their median.
pub const ROUNDS: usize = 7;
/// How long each round publishes on each listener.
const RUN_FOR: Duration = Duration::from_secs(1);
/// Sequential connections per listener and round of the CONNECT figures (7 rounds: 280 each).
const CONNECTS_PER_ROUND: usize = 40;
/// Clients in the reconnect storm.
pub const STORM_CLIENTS: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Listener {
    TcpProxy,
    PassThrough,
    AllowAll,
    Restricted,
}

pub const LISTENERS: [Listener; 4] = [
    Listener::TcpProxy,
    Listener::PassThrough,
    Listener::AllowAll,
    Listener::Restricted,
];

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::TcpProxy => "tcp_proxy",
            Listener::PassThrough => "pass-through module",
            Listener::AllowAll => "natsguard allow-all",
            Listener::Restricted => "natsguard restricted",
        }
    }

    fn index(self) -> usize {
        LISTENERS
            .iter()
            .position(|listener| *listener == self)
            .expect("a listener")
    }
}

/// The running Envoy and nats-server; both stop when it is dropped.
pub struct WireBench {
    ports: [u16; 4],
    envoy: Process,
    nats: NatsServer,
    _dir: tempfile::TempDir,
}

fn wasm_filter(vm_id: &str, module: &str, configuration: &str) -> Value {
    json!({
        "name": "envoy.filters.network.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": vm_id,
                "root_id": vm_id,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": repo_root().join(module) } }
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                }
            }
        }
    })
}

/// natsguard's identity on these listeners: plaintext, so the client's RS256 JWT in CONNECT.
fn identity(jwks: &Value) -> Value {
    json!({ "jwt": { "required": true, "providers": [{
        "name": "bench-idp", "issuer": ISSUER, "audiences": ["nats"], "jwks": jwks, "algorithms": ["RS256"]
    }] } })
}

fn allow_all(jwks: &Value) -> String {
    json!({ "identity": identity(jwks), "default_action": "deny", "rules": [{ "name": "everyone" }] })
        .to_string()
}

fn restricted(jwks: &Value) -> String {
    json!({
        "identity": identity(jwks),
        "default_action": "deny",
        "rules": [{
            "name": "bench clients",
            "permissions": {
                "publish": { "allow": ["bench.>", "_INBOX.>"], "deny": ["bench.admin.>"] },
                "subscribe": { "allow": ["bench.>", "_INBOX.>"], "deny": ["bench.secret.>"] },
                "allow_responses": { "max": 1, "expires": "5s" }
            }
        }]
    })
    .to_string()
}

impl WireBench {
    pub fn start(jwks: &Value) -> WireBench {
        let nats = NatsServer::start(None);
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(5);
        let admin_port = ports[0];
        let listener_ports: [u16; 4] = ports[1..].try_into().expect("four ports");
        let module = "target/wasm32-wasip1/release/natsguard.wasm";
        let listeners: Vec<Value> = LISTENERS
            .iter()
            .zip(listener_ports)
            .map(|(listener, port)| {
                let mut filters = match listener {
                    Listener::TcpProxy => vec![],
                    Listener::PassThrough => vec![wasm_filter(
                        "passthrough",
                        "target/wasm32-wasip1/release/natsguard_passthrough.wasm",
                        "",
                    )],
                    Listener::AllowAll => vec![wasm_filter("allow_all", module, &allow_all(jwks))],
                    Listener::Restricted => {
                        vec![wasm_filter("restricted", module, &restricted(jwks))]
                    }
                };
                filters.push(json!({
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": listener.name(),
                        "cluster": "nats"
                    }
                }));
                json!({
                    "name": listener.name(),
                    "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                    "filter_chains": [{ "filters": filters }]
                })
            })
            .collect();
        let config = json!({
            "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin_port } } },
            "static_resources": {
                "listeners": listeners,
                "clusters": [{
                    "name": "nats",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    // Envoy's default allows 1,024 upstream connections: the storm needs more.
                    "circuit_breakers": { "thresholds": [{ "max_connections": 100000 }] },
                    "load_assignment": { "cluster_name": "nats", "endpoints": [{ "lb_endpoints": [{
                        "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": nats.port } } }
                    }] }] }
                }]
            }
        });
        // JSON is YAML: Envoy reads it as its usual configuration file.
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config.to_string()).expect("write envoy.yaml");
        let envoy = start_envoy(dir.path(), &config_path, 1, admin_port);
        WireBench {
            ports: listener_ports,
            envoy,
            nats,
            _dir: dir,
        }
    }

    fn target<'a>(&self, listener: Listener, token: &'a str) -> Target<'a> {
        Target {
            port: self.ports[listener.index()],
            token: Some(token),
            prefix: "bench",
            envoy_pid: Some(self.envoy.child.id()),
        }
    }
}

/// One payload size: Envoy CPU per message (ns) and messages per second, per listener, each
/// round's figure.
pub struct PerMessage {
    pub payload: usize,
    pub cpu_ns: [Vec<f64>; 4],
    pub per_second: [Vec<f64>; 4],
}

impl PerMessage {
    pub fn cpu_median(&self, listener: Listener) -> f64 {
        median(self.cpu_ns[listener.index()].clone())
    }

    pub fn cpu_range(&self, listener: Listener) -> (f64, f64) {
        let runs = &self.cpu_ns[listener.index()];
        let low = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let high = runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    }

    pub fn rate_median(&self, listener: Listener) -> f64 {
        median(self.per_second[listener.index()].clone())
    }
}

pub async fn per_message(
    bench: &WireBench,
    token: &str,
    payloads: &[usize],
) -> Result<Vec<PerMessage>> {
    let mut results: Vec<PerMessage> = payloads
        .iter()
        .map(|&payload| PerMessage {
            payload,
            cpu_ns: Default::default(),
            per_second: Default::default(),
        })
        .collect();
    // Warm-up: V8 tiers both modules up.
    for listener in LISTENERS {
        throughput(&bench.target(listener, token), 128, 1, RUN_FOR / 2).await?;
    }
    for round in 0..ROUNDS {
        for result in &mut results {
            // A different listener goes first each round.
            for offset in 0..LISTENERS.len() {
                let listener = LISTENERS[(round + offset) % LISTENERS.len()];
                let run =
                    throughput(&bench.target(listener, token), result.payload, 1, RUN_FOR).await?;
                let cpu = run.cpu_per_message_us().ok_or("no Envoy CPU figure")?;
                result.cpu_ns[listener.index()].push(cpu * 1e3);
                result.per_second[listener.index()].push(run.per_second());
            }
        }
        eprintln!("loadgen:   wire round {} of {ROUNDS}", round + 1);
    }
    for result in &results {
        eprintln!(
            "loadgen:   wire {:>6} B: {}",
            result.payload,
            LISTENERS
                .map(|l| format!("{} {:.0} ns", l.name(), result.cpu_median(l)))
                .join(", ")
        );
    }
    Ok(results)
}

/// CONNECT through the listeners, medians of sequential connections (TCP, INFO, CONNECT with
/// the token, PING/PONG), and the storm.
pub struct ConnectCost {
    /// tcp_proxy: the same exchange without a filter (nats-server ignores the token).
    pub tcp_proxy: Sequential,
    /// The pass-through module: what any wasm filter costs a connection.
    pub pass_through: Sequential,
    /// natsguard allow-all, each token new to the VM.
    pub fresh: Sequential,
    /// natsguard allow-all, the same tokens again (clients reconnecting).
    pub repeated: Sequential,
    /// `STORM_CLIENTS` clients connecting at once, each with a token the VM never saw (every
    /// connection verifies a signature: what any reconnect cost before verified tokens were
    /// remembered), and the same clients reconnecting at once after nats-server restarted.
    pub storm_fresh: Duration,
    pub storm_repeated: Duration,
}

/// The median connection time, and Envoy's CPU per connection.
/// One kind of connection's samples, gathered over the rounds.
#[derive(Default)]
struct Connects {
    times: Vec<Duration>,
    cpu: Duration,
}

impl Connects {
    /// Connects once per token, one at a time, each closed before the next.
    async fn run(
        &mut self,
        bench: &WireBench,
        listener: Listener,
        tokens: &[String],
    ) -> Result<()> {
        let port = bench.ports[listener.index()];
        let pid = bench.envoy.child.id();
        let cpu_before = cpu_time(pid)?;
        for token in tokens {
            let started = Instant::now();
            let connection = connect(port, Some(token)).await?;
            self.times.push(started.elapsed());
            drop(connection);
        }
        self.cpu += cpu_time(pid)? - cpu_before;
        Ok(())
    }

    fn summary(mut self) -> Sequential {
        self.times.sort();
        Sequential {
            p50: self.times[self.times.len() / 2],
            cpu: self.cpu / self.times.len() as u32,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Sequential {
    pub p50: Duration,
    /// Envoy's CPU per connection (all its threads).
    pub cpu: Duration,
}

/// Connects a client per token at once; the time until all are connected, and the clients.
async fn all_at_once(port: u16, tokens: &[String]) -> Result<(Duration, Vec<TcpStream>)> {
    let started = Instant::now();
    let connecting: Vec<_> = tokens
        .iter()
        .cloned()
        .map(|token| tokio::spawn(async move { connect(port, Some(&token)).await }))
        .collect();
    let mut connections = Vec::with_capacity(connecting.len());
    for task in connecting {
        connections.push(task.await.map_err(|e| e.to_string())??);
    }
    Ok((started.elapsed(), connections))
}

pub async fn connect_cost(bench: &mut WireBench, idp: &Idp) -> Result<ConnectCost> {
    // Users of their own: no token here was verified by this Envoy before.
    let tokens = (10_000..10_000 + ROUNDS * CONNECTS_PER_ROUND)
        .map(|user| idp.token(user))
        .collect::<Result<Vec<_>>>()?;
    let storm_tokens = (20_000..20_000 + STORM_CLIENTS)
        .map(|user| idp.token(user))
        .collect::<Result<Vec<_>>>()?;
    let port = |listener: Listener| bench.ports[listener.index()];
    let [mut tcp_proxy, mut pass_through, mut fresh, mut repeated] =
        std::array::from_fn(|_| Connects::default());
    // Interleaved like the per-message rounds (a different listener first each round), so that
    // the machine's load moves every figure alike; a round's tokens come back right after their
    // first use.
    for (round, batch) in tokens.chunks(CONNECTS_PER_ROUND).enumerate() {
        for step in 0..3 {
            match (round + step) % 3 {
                0 => tcp_proxy.run(bench, Listener::TcpProxy, batch).await?,
                1 => {
                    pass_through
                        .run(bench, Listener::PassThrough, batch)
                        .await?
                }
                _ => {
                    fresh.run(bench, Listener::AllowAll, batch).await?;
                    repeated.run(bench, Listener::AllowAll, batch).await?;
                }
            }
        }
    }
    let [tcp_proxy, pass_through, fresh, repeated] =
        [tcp_proxy, pass_through, fresh, repeated].map(Connects::summary);
    let (storm_fresh, clients) = all_at_once(port(Listener::AllowAll), &storm_tokens).await?;
    // The reconnect storm: nats-server restarts under its clients, and all come back at once.
    tokio::task::block_in_place(|| bench.nats.restart());
    drop(clients);
    let (storm_repeated, _) = all_at_once(port(Listener::AllowAll), &storm_tokens).await?;
    eprintln!(
        "loadgen:   wire CONNECT p50/CPU: tcp_proxy {tcp_proxy:?}, pass-through {pass_through:?}, fresh token {fresh:?}, \
         repeated token {repeated:?}; storm of {STORM_CLIENTS}: fresh {storm_fresh:?}, \
         reconnecting {storm_repeated:?}"
    );
    Ok(ConnectCost {
        tcp_proxy,
        pass_through,
        fresh,
        repeated,
        storm_fresh,
        storm_repeated,
    })
}

/// What this part of the run measured: per message always, CONNECT with `--only connect`.
pub struct Wire {
    pub per_message: Vec<PerMessage>,
    pub connect: Option<ConnectCost>,
}

type Judged = (String, Option<(String, bool)>);

/// The targets this setup answers, each with its figure and whether it is met (`None` where the
/// run did not measure it).
pub fn targets(wire: Option<&Wire>) -> Vec<Judged> {
    let at = |payload: usize| {
        wire.and_then(|wire| wire.per_message.iter().find(|m| m.payload == payload))
    };
    let mut targets = Vec::new();
    for payload in [1024, 65536] {
        let figure = at(payload).map(|m| {
            let (floor, filter) = (
                m.cpu_median(Listener::PassThrough),
                m.cpu_median(Listener::AllowAll),
            );
            let r = filter / floor;
            (
                format!("{r:.3}× ({filter:.0} vs {floor:.0} ns/msg)"),
                r <= 1.05,
            )
        });
        targets.push((
            format!("No per-byte cost, {payload} B: natsguard allow-all ≤ 1.05× the pass-through module (one Envoy, plaintext)"),
            figure,
        ));
    }
    for payload in [16, 128] {
        for (listener, limit) in [(Listener::AllowAll, 20.0), (Listener::Restricted, 30.0)] {
            let figure = at(payload).map(|m| {
                let (floor, filter) = (m.cpu_median(Listener::PassThrough), m.cpu_median(listener));
                let added = filter - floor;
                (
                    format!("{added:+.0} ns ({filter:.0} vs {floor:.0} ns/msg)"),
                    added <= limit,
                )
            });
            targets.push((
                format!(
                    "Per frame, {payload} B: {} ≤ pass-through + {limit:.0} ns per message",
                    listener.name()
                ),
                figure,
            ));
        }
    }
    let connect = wire.and_then(|wire| wire.connect.as_ref());
    type Figure = fn(&ConnectCost) -> Sequential;
    let limits: [(&str, Figure, f64); 2] = [
        (
            "an RS256 token never seen: adds ≤ 0.5 ms",
            |c| c.fresh,
            500.0,
        ),
        (
            "an RS256 token already verified: adds ≤ 50 µs",
            |c| c.repeated,
            50.0,
        ),
    ];
    for (name, run, limit_us) in limits {
        targets.push((
            format!("CONNECT with {name} (p50, natsguard vs tcp_proxy)"),
            connect.map(|c| {
                let (with, base) = (run(c), c.tcp_proxy);
                let us = (with.p50.as_secs_f64() - base.p50.as_secs_f64()) * 1e6;
                (
                    format!(
                        "{us:+.0} µs ({:?} vs {:?}; Envoy CPU {:?} vs {:?} per connection)",
                        with.p50, base.p50, with.cpu, base.cpu
                    ),
                    us <= limit_us,
                )
            }),
        ));
    }
    targets.push((
        format!("Reconnect storm ({STORM_CLIENTS} clients back at once after a nats-server restart) ≥ 3× faster than verifying every token"),
        connect.map(|c| {
            let r = c.storm_fresh.as_secs_f64() / c.storm_repeated.as_secs_f64();
            (
                format!("{r:.1}× ({:?} vs {:?})", c.storm_repeated, c.storm_fresh),
                r >= 3.0,
            )
        }),
    ));
    targets
}

/// The section of the report: every payload and listener, medians with their ranges.
pub fn section(w: &mut String, wire: Option<&Wire>) {
    use std::fmt::Write as _;
    let _ = writeln!(
        w,
        "\n## The filter on the wire: one Envoy, plaintext, four listeners\n"
    );
    let Some(wire) = wire else {
        let _ = writeln!(w, "Not measured in this run.");
        return;
    };
    let _ = writeln!(w, "One Envoy (`--concurrency 1`) with four plaintext listeners to one nats-server: tcp_proxy; the pass-through module (benches/passthrough: copies every chunk into the VM and scans it, then forwards it: the floor of any filter that reads NATS); natsguard allow-all; natsguard restricted (publish and subscribe deny entries, allow_responses). Client authenticated by an RS256 JWT in CONNECT. One publisher and one subscriber through the same listener: each message crosses the filter twice. Envoy CPU per message from every thread's schedstat; {ROUNDS} rounds of {:.0} s per listener and payload, interleaved (a different listener first each round); median [min–max].\n", RUN_FOR.as_secs_f64());
    let _ = writeln!(
        w,
        "| Payload | {} |\n|---:|---:|---:|---:|---:|",
        LISTENERS.map(Listener::name).join(" | ")
    );
    for m in &wire.per_message {
        let floor = m.cpu_median(Listener::PassThrough);
        let cells = LISTENERS.map(|listener| {
            let (low, high) = m.cpu_range(listener);
            let median = m.cpu_median(listener);
            let versus = match listener {
                Listener::AllowAll | Listener::Restricted => format!(" ({:+.0})", median - floor),
                _ => String::new(),
            };
            format!(
                "{median:.0} ns{versus} [{low:.0}–{high:.0}], {:.0} msgs/s",
                m.rate_median(listener)
            )
        });
        let _ = writeln!(w, "| {} B | {} |", m.payload, cells.join(" | "));
    }
    let _ = writeln!(
        w,
        "\n(ns) after a natsguard figure: added to the pass-through module's median."
    );
    if let Some(c) = &wire.connect {
        let _ = writeln!(w, "\nCONNECT, {} sequential connections each in {ROUNDS} interleaved rounds (TCP, INFO, CONNECT with an RS256 JWT, PING/PONG), p50 and Envoy CPU per connection:\n\n| Listener | p50 | Envoy CPU |\n|---|---:|---:|", ROUNDS * CONNECTS_PER_ROUND);
        for (name, run) in [
            ("tcp_proxy", c.tcp_proxy),
            ("pass-through module", c.pass_through),
            ("natsguard, tokens it never saw", c.fresh),
            (
                "natsguard, the same tokens again (clients reconnecting)",
                c.repeated,
            ),
        ] {
            let _ = writeln!(w, "| {name} | {:?} | {:?} |", run.p50, run.cpu);
        }
        let _ = writeln!(w, "\n{STORM_CLIENTS} clients connecting at once through natsguard with new tokens: {:?}; the same clients reconnecting at once after nats-server restarted under them: {:?}.", c.storm_fresh, c.storm_repeated);
    }
}

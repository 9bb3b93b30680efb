//! A three-node NATS cluster behind the mesh, the way a StatefulSet runs it with a sidecar per
//! pod: three nats-servers with JetStream, routed to each other directly on loopback (the route
//! port kept out of the sidecars), each behind a mesh of its own (its own Envoy, `--concurrency`
//! workers, natsguard with the same policy). A client lists its identity's sidecar port on every
//! node. Nodes and Envoys can be killed, put in lame duck mode and restarted on the same ports
//! and JetStream store; everything stops when the cluster is dropped.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    free_ports, http_get, read_log, repo_root, venv_binary, wait_for_port, Mesh, MeshOptions,
    NatsServer, Process, START_TIMEOUT,
};

pub const NODES: usize = 3;

/// How long a node may take to rejoin: routes up, JetStream caught up (`/healthz`).
pub const REJOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// nats-server's `lame_duck_duration` on every node (its minimum): by then a node in lame duck
/// mode has closed every client.
pub const LAME_DUCK_DURATION: Duration = Duration::from_secs(30);

/// One cluster at a time per test binary: three nats-servers with JetStream and three Envoys are
/// most of a two-core CI machine, and two of them side by side turned fail-over times into noise.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Where one node's nats-server listens; kept across restarts, as a pod keeps its ports.
#[derive(Clone, Debug)]
struct NodePorts {
    client: u16,
    monitor: u16,
    route: u16,
}

pub struct Cluster {
    /// Node `i`'s mesh; its `nats` is node `i`'s nats-server (`server_name` `n<i>`).
    pub nodes: Vec<Mesh>,
    ports: Vec<NodePorts>,
    /// The nodes' JetStream stores, which outlive their nats-servers.
    store: tempfile::TempDir,
    /// Held until everything above has stopped (fields drop in order).
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// The cluster with `options` for every node's mesh (workers, the `idp` endpoint); returns
    /// once routes are up, JetStream has a meta leader and every Envoy is ready.
    pub fn start(policy_json: &str, options: MeshOptions) -> Cluster {
        // A test that failed while holding it poisoned nothing another cluster needs.
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ports: Vec<NodePorts> = free_ports(3 * NODES)
            .chunks(3)
            .map(|p| NodePorts {
                client: p[0],
                monitor: p[1],
                route: p[2],
            })
            .collect();
        let store = tempfile::tempdir().expect("tempdir");
        let servers: Vec<NatsServer> = (0..NODES)
            .map(|node| start_node_server(node, &ports, store.path()))
            .collect();
        // The Envoys start in parallel: most of their start is compiling the module per VM.
        let nodes = std::thread::scope(|scope| {
            let starting: Vec<_> = servers
                .into_iter()
                .map(|server| {
                    let options = options.clone();
                    scope.spawn(move || Mesh::start_with_options(policy_json, server, options))
                })
                .collect();
            starting
                .into_iter()
                .map(|mesh| mesh.join().expect("mesh start"))
                .collect()
        });
        let cluster = Cluster {
            nodes,
            ports,
            store,
            _turn: turn,
        };
        for node in 0..NODES {
            cluster.wait_until_rejoined(node);
        }
        cluster
    }

    /// `identity`'s client-side sidecar URL on every node: a client's server list.
    pub fn urls_of(&self, identity: &str) -> Vec<String> {
        self.nodes
            .iter()
            .map(|mesh| mesh.url_of(identity))
            .collect()
    }

    /// The node whose sidecar listens on `port` (any identity's), from a client's connected URL.
    pub fn node_of_port(&self, port: u16) -> usize {
        super::identities()
            .iter()
            .find_map(|identity| {
                (0..NODES).find(|&node| self.nodes[node].port_of(&identity.name) == port)
            })
            .unwrap_or_else(|| panic!("no sidecar of the cluster listens on {port}"))
    }

    /// `nats-server --signal ldm=<pid>`: the node stops accepting clients, hands its JetStream
    /// leaderships over, tells its clients (INFO `ldm`), closes them one by one, then exits.
    pub fn enter_lame_duck_mode(&self, node: usize) {
        let pid = self.nodes[node].nats.process.child.id();
        let status = Command::new(venv_binary("nats-server"))
            .arg("--signal")
            .arg(format!("ldm={pid}"))
            .status()
            .expect("run nats-server --signal");
        assert!(status.success(), "nats-server --signal ldm={pid}");
    }

    /// Waits until node `node`'s nats-server has exited (after lame duck mode).
    pub fn wait_for_exit(&mut self, node: usize, limit: Duration) {
        let child = &mut self.nodes[node].nats.process.child;
        let deadline = Instant::now() + limit;
        while child.try_wait().expect("try_wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "n{node} still running {limit:?} after lame duck mode"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to node `node`'s nats-server (a crashed pod).
    pub fn kill_server(&mut self, node: usize) {
        let child = &mut self.nodes[node].nats.process.child;
        child.kill().expect("kill nats-server");
        child.wait().expect("reap nats-server");
    }

    /// Starts node `node`'s nats-server again, on its ports and JetStream store, and waits until
    /// it rejoined the cluster.
    pub fn restart_server(&mut self, node: usize) {
        self.nodes[node].nats = start_node_server(node, &self.ports, self.store.path());
        self.wait_until_rejoined(node);
    }

    /// Node `node`'s monitoring endpoint `path` as JSON (None while it does not answer 200).
    pub fn monitor(&self, node: usize, path: &str) -> Option<serde_json::Value> {
        let body = http_get(self.ports[node].monitor, path).ok()?;
        serde_json::from_str(&body).ok()
    }

    /// Routes to every other node (`/routez`) and `/healthz` ok (JetStream current).
    pub fn wait_until_rejoined(&self, node: usize) {
        let others: BTreeSet<String> = (0..NODES)
            .filter(|&n| n != node)
            .map(|n| format!("n{n}"))
            .collect();
        wait_for(&format!("n{node} to rejoin"), REJOIN_TIMEOUT, || {
            let routed: BTreeSet<String> = self
                .monitor(node, "/routez")
                .and_then(|routez| routez["routes"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|route| route["remote_name"].as_str().map(str::to_string))
                .collect();
            routed.is_superset(&others) && self.monitor(node, "/healthz").is_some()
        });
    }

    /// The messages node `node`'s replica of `stream` holds (`/jsz`), None if it has none.
    pub fn stored_messages(&self, node: usize, stream: &str) -> Option<u64> {
        let jsz = self.monitor(node, "/jsz?streams=true")?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|account| {
                account["stream_detail"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|detail| detail["name"] == stream)
            .and_then(|detail| detail["state"]["messages"].as_u64())
    }

    pub fn server_log(&self, node: usize) -> String {
        self.nodes[node].nats.log()
    }
}

/// nats-server for node `node` of the cluster: everything in its configuration file, as in a
/// pod's nats.conf (the harness's `NatsServer::start` picks its ports itself).
fn start_node_server(node: usize, ports: &[NodePorts], store: &Path) -> NatsServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("nats-server.log");
    let own = &ports[node];
    let routes: Vec<String> = ports
        .iter()
        .enumerate()
        .filter(|(other, _)| *other != node)
        .map(|(_, p)| format!("\"nats-route://127.0.0.1:{}\"", p.route))
        .collect();
    // Lame duck: clients start moving after 1 s instead of 10; 30 s is nats-server's minimum
    // duration, over which it closes the clients (one a second at most, so a few take seconds).
    let config = format!(
        "server_name: n{node}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nlog_file: \"{}\"\n\
         lame_duck_grace_period: 1s\nlame_duck_duration: {}s\n\
         jetstream {{ store_dir: \"{}\" }}\n\
         cluster {{ name: natsguard, listen: 127.0.0.1:{}, routes: [{}] }}\n",
        own.client,
        own.monitor,
        log.display(),
        LAME_DUCK_DURATION.as_secs(),
        store.join(format!("n{node}")).display(),
        own.route,
        routes.join(", ")
    );
    let config_path = dir.path().join("nats-server.conf");
    std::fs::write(&config_path, config).expect("write nats-server.conf");
    let mut child = Command::new(venv_binary("nats-server"))
        .arg("-c")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nats-server");
    wait_for_port(own.client, &mut child, "nats-server", &log);
    NatsServer {
        port: own.client,
        monitor_port: own.monitor,
        dir,
        process: Process {
            child,
            name: "nats-server",
        },
    }
}

/// Polls `done` until it holds; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

// Meshes of several workers and restarted sidecars: the cluster's, and the adversarial tests'.

impl MeshOptions {
    /// The usual mesh with `workers` Envoy workers (one Wasm VM each, plus the main thread's),
    /// as production sidecars run.
    pub fn with_workers(workers: usize) -> MeshOptions {
        MeshOptions {
            workers,
            ..MeshOptions::default()
        }
    }
}

impl Mesh {
    /// Asserts that every Envoy worker took some of the natsguard listener's connections (the
    /// kernel spreads them over the workers' sockets); returns the count per worker.
    pub fn assert_every_worker_took_connections(&self) -> Vec<u64> {
        let per_worker = self.connections_per_worker();
        assert!(
            per_worker.iter().all(|&connections| connections > 0),
            "connections per worker {per_worker:?}"
        );
        per_worker
    }

    /// Connections the natsguard listener (inbound) accepted on each of Envoy's workers, from
    /// `listener.<address>.worker_<n>.downstream_cx_total`.
    pub fn connections_per_worker(&self) -> Vec<u64> {
        let stats = self.stats();
        (0..self.workers)
            .map(|worker| {
                let name = format!(
                    "listener.127.0.0.1_{}.worker_{worker}.downstream_cx_total",
                    self.inbound_port
                );
                stats.get(&name).copied().unwrap_or(0)
            })
            .collect()
    }

    /// Kills this mesh's Envoy and runs the same command line again (same configuration, ports,
    /// ECDS file, workers), as a sidecar container restarts in its pod; returns once it is ready.
    /// Its counters start from zero.
    pub fn restart_envoy(&mut self) {
        let command_line = command_line_of(self.envoy.child.id());
        self.envoy.child.kill().expect("kill envoy");
        self.envoy.child.wait().expect("reap envoy");
        let stdout = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("envoy.stdout"))
            .expect("envoy.stdout");
        let log = self.dir.path().join("envoy.log");
        let mut child = Command::new(&command_line[0])
            .args(&command_line[1..])
            .current_dir(repo_root())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("respawn envoy");
        wait_for_port(self.admin_port, &mut child, "envoy", &log);
        self.envoy = Process {
            child,
            name: "envoy",
        };
        let admin_port = self.admin_port;
        wait_for("the restarted Envoy to be ready", START_TIMEOUT, || {
            http_get(admin_port, "/ready").is_ok_and(|body| body.trim() == "LIVE")
        });
        assert!(
            self.envoy.child.try_wait().expect("try_wait").is_none(),
            "envoy exited after its restart:\n{}",
            read_log(&log)
        );
    }
}

/// A process's argument vector (`/proc/<pid>/cmdline`).
fn command_line_of(pid: u32) -> Vec<OsString> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).expect("read /proc/<pid>/cmdline");
    // Each argument ends with a NUL.
    let arguments = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    arguments
        .split(|&b| b == 0)
        .map(|arg| OsString::from_vec(arg.to_vec()))
        .collect()
}

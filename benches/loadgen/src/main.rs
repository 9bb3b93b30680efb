//! natsguard's load generator and benchmark driver (`make bench` runs it through scripts/bench.sh).
//!
//! In one run it starts, one after the other, the eight setups of the benchmark on loopback ports
//! (with the test harness of tests/support, so the benchmark runs the committed envoy/mesh.yaml):
//!   1. client → nats-server;
//!   2. client → Envoy mesh harness (mTLS hops, tcp_proxy, no natsguard) → nats-server;
//!   3. as 2 with natsguard and an allow-all policy;
//!   4. as 3 with a 1,000-rule policy with templates, client authenticated by an RS256 JWT;
//!   5. as 4 with a shadow policy beside it (the same 1,000 rules with one more deny entry each
//!      for the benchmark client's rules): every decision made twice, what a rollout costs;
//!   6. as 3 with `audit.subscriptions` (an audit line for every SUB and UNSUB);
//!   7. as 3 with provenance on every benchmark subject: each message stamped with the
//!      publisher's SPIFFE ID (a PUB becomes an HPUB);
//!   8. as 7, signed (Ed25519 over the subject, identity, time and payload SHA-256);
//!
//! and then the filter on the wire (wire.rs): one Envoy, four plaintext listeners (tcp_proxy, a
//! pass-through module, natsguard allow-all and restricted) measured in interleaved rounds.
//!
//! It measures publish throughput with a counting subscriber, Envoy's CPU time per message (from
//! each thread's /proc/<pid>/task/<tid>/schedstat), request/reply latency at a fixed rate, the CONNECT rate and Envoy's memory
//! per idle connection, runs `nats bench` (the nats CLI's benchmark, the figure NATS users quote)
//! on the same setups, and writes the Markdown report.
//!
//! A package of its own (benches/loadgen) so that its build skips natsguard's dev-dependencies;
//! `scripts/bench.sh` builds it with `cargo build --locked -p natsguard-loadgen --profile loadgen`
//! (no LTO) and runs `target/loadgen/loadgen`, passing its own arguments on.
//!
//! Usage: target/loadgen/loadgen [--out FILE] [--seconds 1.5] [--payloads 16,128,1024,65536]
//!            [--setups 1,2,3,4,5,6,7,8]
//!            [--only throughput,latency,connect,memory,nats-bench,live-policy,subscriptions,wire]
//! Without --out, a full run writes BENCHMARKS.md; a partial run (any of the last three options)
//! writes target/bench-partial.md, where whatever it did not measure is marked as such. The
//! options are described in [`USAGE`] (`--help`).

#[path = "../../../tests/support/mod.rs"]
mod support;
mod wire;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{json, Map, Value};
use support::{bounded_command, tool_binary, Mesh, NatsServer, Process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "\
usage: scripts/bench.sh [OPTIONS]   (or target/loadgen/loadgen [OPTIONS] from the repository root)
  --out FILE            the report (default: BENCHMARKS.md, or target/bench-partial.md for a
                        partial run, i.e. with --payloads, --setups or --only)
  --seconds N           how long each throughput run publishes (default 1.5)
  --payloads LIST       throughput payload sizes in bytes, e.g. 128,1024 (default 16,128,1024,65536;
                        nats bench runs those of 128 and 1024 in the list)
  --setups LIST         setups to run, e.g. 2,3 (default 1,2,3,4,5,6,7: 1 direct, 2 Envoy
                        tcp_proxy, 3 natsguard allow-all, 4 natsguard 1,000 rules + JWT, 5 as 4 +
                        shadow, 6 as 3 + audit.subscriptions, 7 as 3 + provenance stamping; and on
                        request 8, as 7 + signature: slow, e.g. --setups 3,8 --payloads 128
                        --only throughput)
  --only LIST           measurements, e.g. throughput,latency (default all: throughput,latency,
                        connect,memory,nats-bench,live-policy,subscriptions,wire; wire is the
                        one-Envoy plaintext setup: tcp_proxy, pass-through module, natsguard
                        allow-all and restricted, interleaved, with its CONNECT figures)
  --help                this text";

const PAYLOADS: [usize; 4] = [16, 128, 1024, 65536];
/// The largest payload nats-server accepts by default (`max_payload`).
const MAX_PAYLOAD: usize = 1 << 20;
const SETUPS: [usize; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
/// The setups of a full run: not row 8, whose signed messages (≈10,000 a second) make its runs,
/// the drain of the in-flight window and `nats bench` take longer than the rest of the run.
const DEFAULT_SETUPS: [usize; 7] = [1, 2, 3, 4, 5, 6, 7];
const PUBLISHERS: [usize; 2] = [1, 16];
/// Bytes a publisher may have sent beyond what the subscriber received: keeps nats-server from
/// cutting the subscriber off as a slow consumer, without limiting the rate.
/// Runs per throughput figure; the report shows the median.
const ROUNDS: usize = 3;
const IN_FLIGHT_BYTES: usize = 8 << 20;
const LATENCY_RATE_PER_SECOND: u64 = 1000;
const LATENCY_REQUESTS: usize = 5000;
const CONNECTS: usize = 200;
/// Subscription churn: SUB + UNSUB pairs per batch (a PING ends it), and batches per run.
const CHURN_BATCH: usize = 100;
const CHURN_BATCHES: usize = 300;
/// Policy updates timed from the rename of the ECDS file to enforcement on an open connection.
const POLICY_UPDATES: usize = 100;
const IDLE_CONNECTIONS: usize = 300;
const ISSUER: &str = "https://idp.bench";
const TENANT: &str = "acme";
/// Everything from this heading on in the report is written by hand and kept by reruns.
const ANALYSIS_HEADING: &str = "## Where the time goes";
const PUBLISHER_PRINCIPAL: &str = "cluster.local/ns/billing/sa/publisher";

// ---------------------------------------------------------------------------------------------
// NATS on the wire: just enough client for the benchmark.

/// Counts MSG/HMSG frames in the server's byte stream, skipping payloads by their size.
#[derive(Default)]
struct MsgReader {
    line: Vec<u8>,
    /// Payload bytes (with their CRLF) still to skip.
    skip: usize,
    complete: u64,
    error: Option<String>,
}

impl MsgReader {
    /// Feeds bytes; `on_header` sees each MSG/HMSG control line. Returns messages completed.
    fn feed(&mut self, mut data: &[u8], mut on_header: impl FnMut(&[u8])) -> u64 {
        let before = self.complete;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    self.complete += 1;
                }
                continue;
            }
            let Some(end) = memchr::memchr(b'\n', data) else {
                self.line.extend_from_slice(data);
                break;
            };
            self.line.extend_from_slice(&data[..=end]);
            data = &data[end + 1..];
            let line = std::mem::take(&mut self.line);
            if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
                on_header(&line);
                let size = line
                    .split(|b| b.is_ascii_whitespace())
                    .rfind(|token| !token.is_empty())
                    .and_then(|token| std::str::from_utf8(token).ok()?.parse::<usize>().ok());
                match size {
                    Some(size) => self.skip = size + 2,
                    None => self.error = Some(String::from_utf8_lossy(&line).into_owned()),
                }
            } else if line.starts_with(b"-ERR") {
                self.error = Some(String::from_utf8_lossy(&line).trim().to_string());
            }
            self.line = line;
            self.line.clear();
        }
        self.complete - before
    }
}

/// A connected, authenticated NATS client (INFO read, CONNECT answered by PONG).
async fn connect(port: u16, token: Option<&str>) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect to {port}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    read_until(&mut stream, b"\r\n").await?;
    let auth = token.map_or(String::new(), |t| format!(",\"auth_token\":\"{t}\""));
    // Headers on, as every client library sets them (rows 6 and 7 forward HPUBs).
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true{auth}}}\r\nPING\r\n"
    );
    stream
        .write_all(connect.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let answer = read_until(&mut stream, b"PONG\r\n").await?;
    if answer.starts_with(b"-ERR") {
        return Err(format!(
            "CONNECT refused: {}",
            String::from_utf8_lossy(&answer).trim()
        ));
    }
    Ok(stream)
}

/// Reads until the bytes received end with `end` (the control exchange of the handshake) or
/// an `-ERR` line arrives.
async fn read_until(stream: &mut TcpStream, end: &[u8]) -> Result<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Duration::from_secs(10);
    while !received.ends_with(end) {
        if received.starts_with(b"-ERR") && received.ends_with(b"\r\n") {
            return Ok(received);
        }
        let n = tokio::time::timeout(deadline, stream.read(&mut buf))
            .await
            .map_err(|_| {
                format!(
                    "no {:?} within {deadline:?} (received {:?})",
                    String::from_utf8_lossy(end),
                    String::from_utf8_lossy(&received)
                )
            })?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed during handshake after {:?}",
                String::from_utf8_lossy(&received)
            ));
        }
        received.extend_from_slice(&buf[..n]);
    }
    Ok(received)
}

/// Subscribes and waits for the server to have registered it (PING/PONG round trip).
async fn subscribe(stream: &mut TcpStream, subject: &str) -> Result<()> {
    stream
        .write_all(format!("SUB {subject} 1\r\nPING\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let answer = read_until(stream, b"PONG\r\n").await?;
    if answer.starts_with(b"-ERR") {
        return Err(format!(
            "SUB {subject}: {}",
            String::from_utf8_lossy(&answer).trim()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The setups.

enum Running {
    Direct(NatsServer),
    Mesh(Mesh),
}

struct Setup {
    name: &'static str,
    /// Subjects start with this (the JWT row's policy grants its tenant's subjects).
    prefix: String,
    token: Option<String>,
    /// Whether natsguard is in the path (checked against Envoy's stats after the run).
    filtered: bool,
    /// Whether the live-policy measurement runs here (its policy versions replace the setup's).
    probes_live_policy: bool,
    running: Running,
}

/// Where a throughput run sends its messages, and whose CPU it counts.
struct Target<'a> {
    port: u16,
    token: Option<&'a str>,
    /// Subjects start with this (a policy may grant only some subjects).
    prefix: &'a str,
    envoy_pid: Option<u32>,
}

impl Setup {
    fn target(&self) -> Target<'_> {
        Target {
            port: self.port(),
            token: self.token.as_deref(),
            prefix: &self.prefix,
            envoy_pid: self.envoy_pid(),
        }
    }

    fn port(&self) -> u16 {
        match &self.running {
            Running::Direct(nats) => nats.port,
            Running::Mesh(mesh) => mesh.port_of("publisher"),
        }
    }

    fn envoy_pid(&self) -> Option<u32> {
        match &self.running {
            Running::Direct(_) => None,
            Running::Mesh(mesh) => Some(mesh.envoy_pid()),
        }
    }

    fn nats(&self) -> &NatsServer {
        match &self.running {
            Running::Direct(nats) => nats,
            Running::Mesh(mesh) => &mesh.nats,
        }
    }
}

fn allow_all_policy() -> String {
    json!({
        "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
        "default_action": "deny",
        "rules": [{ "name": "everyone", "from": { "principals": ["*"] } }]
    })
    .to_string()
}

/// Row 6's configuration: row 3's, with an audit line for every SUB and UNSUB.
fn allow_all_policy_with_subscription_audit() -> String {
    let mut config: Value = serde_json::from_str(&allow_all_policy()).expect("row 3's policy");
    config["audit"] = json!({ "subscriptions": true });
    config.to_string()
}

/// A user nkey seed (nats-server's server/auth_callout_test.go) that signs row 8's stamps.
const PROVENANCE_SEED: &str = "SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU";

/// Rows 7 and 8: row 3's policy, every benchmark subject stamped (and signed).
fn provenance_policy(signed: bool) -> String {
    let mut config: Value = serde_json::from_str(&allow_all_policy()).expect("row 3's policy");
    config["provenance"] = json!({ "subjects": ["bench.>"] });
    if signed {
        config["provenance"]["sign"] = json!({ "seed": PROVENANCE_SEED });
    }
    config.to_string()
}

/// 1,000 rules in the shape of a multi-team deployment: per-team SPIFFE and claim rules with
/// templates; the benchmark client's rules are the last ones.
fn realistic_policy(jwks: &Value) -> String {
    let mut rules: Vec<Value> = (0..998)
        .map(|team| {
            let from = if team % 2 == 0 {
                json!({ "namespaces": [format!("team-{team}")] })
            } else {
                json!({ "claims": { "groups": [format!("team-{team}")] }, "request_principals": [format!("{ISSUER}/*")] })
            };
            json!({
                "name": format!("team {team}"),
                "from": from,
                "permissions": {
                    "publish": {
                        "allow": [format!("svc.team-{team}.>"), format!("tenants.{{{{jwt.claim.tid}}}}.team-{team}.>"), "events.{{spiffe.namespace}}.*"],
                        "deny": [format!("svc.team-{team}.admin.>")]
                    },
                    "subscribe": {
                        "allow": ["_INBOX.>", format!("svc.team-{team}.events.*"), format!("svc.team-{team}.jobs.* workers")]
                    },
                    "allow_responses": { "max": 1, "expires": "5s" }
                }
            })
        })
        .collect();
    rules.push(json!({
        "name": "billing publisher",
        "from": { "principals": [PUBLISHER_PRINCIPAL] },
        "permissions": {
            "publish": { "allow": ["bench.>", "_INBOX.>"], "deny": ["bench.admin.>"] },
            "subscribe": { "allow": ["bench.>", "_INBOX.>"] }
        }
    }));
    rules.push(json!({
        "name": "tenant benchmark",
        "from": { "claims": { "scp": ["bench"] }, "request_principals": [format!("{ISSUER}/*")] },
        "permissions": {
            "publish": { "allow": ["tenants.{{jwt.claim.tid}}.>", "_INBOX.>"], "deny": ["tenants.{{jwt.claim.tid}}.admin.>"] },
            "subscribe": { "allow": ["tenants.{{jwt.claim.tid}}.>", "_INBOX.>"] }
        }
    }));
    json!({
        "identity": {
            "spiffe": { "required": true, "trust_domains": ["cluster.local"] },
            "jwt": {
                "required": false,
                "providers": [{
                    "name": "bench-idp", "issuer": ISSUER, "audiences": ["nats"],
                    "jwks": jwks, "algorithms": ["RS256"]
                }]
            }
        },
        "default_action": "deny",
        "rules": rules
    })
    .to_string()
}

/// Row 5's configuration: row 4's, with a shadow of the same rules in which the benchmark
/// client's rules deny one more subject it never uses (the two readings agree on every frame:
/// what is measured is the second reading, not the reporting of differences).
fn realistic_policy_with_shadow(jwks: &Value) -> String {
    let mut config: Value = serde_json::from_str(&realistic_policy(jwks)).expect("row 4's policy");
    let mut rules = config["rules"].clone();
    for rule in rules
        .as_array_mut()
        .expect("rules")
        .iter_mut()
        .rev()
        .take(2)
    {
        if let Some(deny) = rule["permissions"]["publish"]["deny"].as_array_mut() {
            deny.push(json!("bench.never.>"));
        }
    }
    config["shadow"] = json!({ "rules": rules });
    config.to_string()
}

struct Idp {
    key: RS256KeyPair,
}

impl Idp {
    fn new() -> Result<Idp> {
        Ok(Idp {
            key: RS256KeyPair::generate(2048)
                .map_err(|e| e.to_string())?
                .with_key_id("bench"),
        })
    }

    fn jwks(&self) -> Result<Value> {
        let components = self.key.public_key().to_components();
        let b64 = |bytes: &[u8]| Base64UrlSafeNoPadding::encode_to_string(bytes);
        Ok(json!({ "keys": [{
            "kty": "RSA", "kid": "bench", "use": "sig", "alg": "RS256",
            "n": b64(&components.n).map_err(|e| e.to_string())?,
            "e": b64(&components.e).map_err(|e| e.to_string())?
        }] }))
    }

    /// A token for user `user` (distinct tokens: no verification can be reused).
    fn token(&self, user: usize) -> Result<String> {
        let custom: Map<String, Value> = [
            ("tid".to_string(), json!(TENANT)),
            ("scp".to_string(), json!("bench orders.read")),
            ("groups".to_string(), json!(["team-1", "team-3"])),
        ]
        .into_iter()
        .collect();
        let claims =
            Claims::with_custom_claims(custom, jwt_simple::prelude::Duration::from_hours(1))
                .with_issuer(ISSUER)
                .with_subject(format!("user-{user}"))
                .with_audience("nats");
        self.key.sign(claims).map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// CPU time of a process, all its threads, in nanoseconds: the sum of each thread's
/// `/proc/<pid>/task/<tid>/schedstat` run time (/proc/<pid>/stat counts 10 ms ticks, too coarse
/// for a run of a million small messages).
fn cpu_time(pid: u32) -> Result<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let mut total = 0u64;
    for task in tasks {
        let path = task.map_err(|e| e.to_string())?.path().join("schedstat");
        // A thread that ended since the listing took its time with it.
        let Ok(schedstat) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .ok_or_else(|| format!("unreadable {}", path.display()))?;
    }
    Ok(Duration::from_nanos(total))
}

/// The median of repeated runs' figures (the cores are shared: single runs vary).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Throughput {
    payload: usize,
    publishers: usize,
    per_second: f64,
    cpu_per_message_us: Option<f64>,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        self.per_second
    }
    fn megabytes_per_second(&self) -> f64 {
        self.per_second * self.payload as f64 / 1e6
    }
    fn cpu_per_message_us(&self) -> Option<f64> {
        self.cpu_per_message_us
    }

    /// The median of each figure over repeated runs.
    fn median(runs: &[Throughput]) -> Throughput {
        Throughput {
            payload: runs[0].payload,
            publishers: runs[0].publishers,
            per_second: median(runs.iter().map(|run| run.per_second).collect()),
            cpu_per_message_us: runs
                .iter()
                .map(|run| run.cpu_per_message_us)
                .collect::<Option<Vec<f64>>>()
                .map(median),
        }
    }
}

async fn throughput(
    target: &Target<'_>,
    payload: usize,
    publishers: usize,
    run_for: Duration,
) -> Result<Throughput> {
    let subject = format!("{}.data", target.prefix);
    let mut subscriber = connect(target.port, target.token).await?;
    subscribe(&mut subscriber, &subject).await?;
    let received = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let (mut sub_read, _sub_write) = subscriber.into_split();
    let counting = {
        let (received, failed) = (Arc::clone(&received), Arc::clone(&failed));
        tokio::spawn(async move {
            let mut reader = MsgReader::default();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match sub_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let done = reader.feed(&buf[..n], |_| {});
                        received.fetch_add(done, Ordering::Relaxed);
                        if let Some(error) = reader.error.take() {
                            *failed.lock().expect("lock") = Some(error);
                        }
                    }
                }
            }
        })
    };

    let mut connections = Vec::new();
    for _ in 0..publishers {
        connections.push(connect(target.port, target.token).await?);
    }
    let frame = [
        format!("PUB {subject} {payload}\r\n").into_bytes(),
        vec![b'x'; payload],
        b"\r\n".to_vec(),
    ]
    .concat();
    let per_batch = (65536 / frame.len()).max(1);
    let batch = frame.repeat(per_batch);
    let window = (IN_FLIGHT_BYTES / frame.len()).max(2 * per_batch * publishers) as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let cpu_before = target.envoy_pid.map(cpu_time).transpose()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut connection in connections {
        let (batch, sent, received, stop) = (
            batch.clone(),
            Arc::clone(&sent),
            Arc::clone(&received),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if sent.load(Ordering::Relaxed) > received.load(Ordering::Relaxed) + window {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                if connection.write_all(&batch).await.is_err() {
                    return Err("publisher connection failed".to_string());
                }
                sent.fetch_add(per_batch as u64, Ordering::Relaxed);
            }
            Ok(connection)
        }));
    }
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut open = Vec::new();
    for task in tasks {
        open.push(task.await.map_err(|e| e.to_string())??);
    }
    let total = sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < total {
        if let Some(error) = failed.lock().expect("lock").take() {
            return Err(format!("subscriber got {error}"));
        }
        if Instant::now() > deadline || counting.is_finished() {
            return Err(format!(
                "subscriber received {} of {total} messages",
                received.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    let cpu_after = target.envoy_pid.map(cpu_time).transpose()?;
    counting.abort();
    drop(open);
    Ok(Throughput {
        payload,
        publishers,
        per_second: total as f64 / elapsed.as_secs_f64(),
        cpu_per_message_us: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| (after - before).as_secs_f64() * 1e6 / total as f64),
    })
}

// ---------------------------------------------------------------------------------------------
// nats bench: the nats CLI's benchmark (nats.go underneath), the figure NATS users quote.

/// The payloads `nats bench` runs (those of them in `--payloads`).
const NATS_BENCH_PAYLOADS: [usize; 2] = [128, 1024];
const NATS_BENCH_MESSAGES: usize = 500_000;
/// A `nats bench` process that takes longer has stalled (e.g. its subscriber was cut off).
const NATS_BENCH_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq)]
enum NatsBenchTest {
    /// `nats bench pub` alone: the publisher's rate (without a subscriber, nats-server drops them).
    Publish,
    /// `nats bench sub` and `nats bench pub` on one subject: the subscriber's rate.
    PubSub,
}

const NATS_BENCH_TESTS: [NatsBenchTest; 2] = [NatsBenchTest::Publish, NatsBenchTest::PubSub];

impl NatsBenchTest {
    fn name(self) -> &'static str {
        match self {
            NatsBenchTest::Publish => "publish",
            NatsBenchTest::PubSub => "pub/sub",
        }
    }
}

struct NatsBench {
    payload: usize,
    test: NatsBenchTest,
    per_second: f64,
}

/// `nats bench <args>` against the setup, its per-client figures written to `csv` and its console
/// to `log`.
fn nats_bench_command(
    setup: &Setup,
    args: &[&str],
    csv: &std::path::Path,
    log: &std::path::Path,
) -> Result<std::process::Command> {
    let console = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut command = bounded_command(tool_binary("nats"), NATS_BENCH_LIMIT);
    command
        .args(["--no-context", "--server"])
        .arg(format!("nats://127.0.0.1:{}", setup.port()));
    if let Some(token) = &setup.token {
        command.args(["--token", token]);
    }
    command
        .arg("bench")
        .args(args)
        .args(["--no-progress", "--csv"])
        .arg(csv)
        .stderr(console.try_clone().map_err(|e| e.to_string())?)
        .stdout(console);
    Ok(command)
}

/// The rate in a `nats bench --csv` file: a `#` header naming the columns, one row per client.
fn nats_bench_rate(csv: &std::path::Path) -> Result<f64> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = header
        .iter()
        .position(|name| *name == "MsgsPerSec")
        .ok_or(format!("no MsgsPerSec column in {}", csv.display()))?;
    lines
        .filter_map(|row| row.split(',').nth(column)?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
        .ok_or(format!("no figures in {}", csv.display()))
}

fn nats_bench(setup: &Setup, payload: usize, test: NatsBenchTest) -> Result<NatsBench> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = |name: &str| dir.path().join(name);
    let subject = format!("{}.natsbench", setup.prefix);
    let (messages, size) = (NATS_BENCH_MESSAGES.to_string(), format!("{payload}B"));
    let counts = ["--msgs", &messages, "--size", &size];
    let console = |log: &str| std::fs::read_to_string(file(log)).unwrap_or_default();
    let subscriber = match test {
        NatsBenchTest::Publish => None,
        NatsBenchTest::PubSub => {
            let mut command = nats_bench_command(
                setup,
                &[&["sub", subject.as_str()][..], &counts].concat(),
                &file("sub.csv"),
                &file("sub.log"),
            )?;
            let child = command
                .spawn()
                .map_err(|e| format!("nats bench sub: {e}"))?;
            let subscriber = Process {
                child,
                name: "nats bench sub",
            };
            setup.nats().wait_for_subscription(&subject);
            Some(subscriber)
        }
    };
    let status = nats_bench_command(
        setup,
        &[&["pub", subject.as_str()][..], &counts].concat(),
        &file("pub.csv"),
        &file("pub.log"),
    )?
    .status()
    .map_err(|e| format!("nats bench pub: {e}"))?;
    if !status.success() {
        return Err(format!("nats bench pub: {status}\n{}", console("pub.log")));
    }
    let csv = match subscriber {
        None => file("pub.csv"),
        Some(mut subscriber) => {
            let status = subscriber.child.wait().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("nats bench sub: {status}\n{}", console("sub.log")));
            }
            file("sub.csv")
        }
    };
    Ok(NatsBench {
        payload,
        test,
        per_second: nats_bench_rate(&csv)?,
    })
}

struct Latency {
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

/// Request/reply round trips at a fixed rate, one in flight: a responder connection answers
/// every request on `<prefix>.req` with a 16-byte reply.
async fn latency(setup: &Setup) -> Result<Latency> {
    let request_subject = format!("{}.req", setup.prefix);
    let mut responder = connect(setup.port(), setup.token.as_deref()).await?;
    subscribe(&mut responder, &request_subject).await?;
    let (mut responder_read, mut responder_write) = responder.into_split();
    let responding = tokio::spawn(async move {
        let mut reader = MsgReader::default();
        let mut buf = vec![0u8; 65536];
        let mut replies = Vec::new();
        while let Ok(n) = responder_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            reader.feed(&buf[..n], |header| {
                let tokens: Vec<&[u8]> = header.split(|b| b.is_ascii_whitespace()).collect();
                if let Some(reply) = tokens.get(3).filter(|_| tokens.len() >= 5) {
                    replies.extend_from_slice(b"PUB ");
                    replies.extend_from_slice(reply);
                    replies.extend_from_slice(b" 16\r\n0123456789abcdef\r\n");
                }
            });
            if !replies.is_empty() {
                if responder_write.write_all(&replies).await.is_err() {
                    break;
                }
                replies.clear();
            }
        }
    });

    let mut requester = connect(setup.port(), setup.token.as_deref()).await?;
    subscribe(&mut requester, "_INBOX.bench.*").await?;
    let (mut read, mut write) = requester.into_split();
    let mut reader = MsgReader::default();
    let warmup = 500;
    let interval = Duration::from_micros(1_000_000 / LATENCY_RATE_PER_SECOND);
    let mut samples = Vec::with_capacity(LATENCY_REQUESTS);
    let mut next = tokio::time::Instant::now();
    for i in 0..warmup + LATENCY_REQUESTS {
        tokio::time::sleep_until(next).await;
        next += interval;
        let sent = Instant::now();
        round_trip(&mut write, &mut read, &mut reader, &request_subject, i).await?;
        if i >= warmup {
            samples.push(sent.elapsed());
        }
    }
    responding.abort();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok(Latency {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    })
}

async fn round_trip(
    write: &mut OwnedWriteHalf,
    read: &mut OwnedReadHalf,
    reader: &mut MsgReader,
    subject: &str,
    i: usize,
) -> Result<()> {
    let request = format!("PUB {subject} _INBOX.bench.{i} 16\r\n0123456789abcdef\r\n");
    write
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf))
            .await
            .map_err(|_| format!("no reply to request {i}"))?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("requester connection closed".into());
        }
        if reader.feed(&buf[..n], |_| {}) > 0 {
            return Ok(());
        }
        if let Some(error) = reader.error.take() {
            return Err(error);
        }
    }
}

struct ConnectRate {
    mean: Duration,
    p50: Duration,
}

/// Sequential connections: TCP (and through the mesh, the mTLS hop), INFO, CONNECT, PING/PONG.
async fn connect_rate(port: u16, tokens: Option<&[String]>) -> Result<ConnectRate> {
    let mut samples = Vec::with_capacity(CONNECTS);
    for i in 0..CONNECTS {
        let token = tokens.map(|tokens| tokens[i % tokens.len()].as_str());
        let started = Instant::now();
        let connection = connect(port, token).await?;
        samples.push(started.elapsed());
        drop(connection);
    }
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    samples.sort();
    Ok(ConnectRate {
        mean,
        p50: samples[samples.len() / 2],
    })
}

/// SUB + UNSUB pairs on one connection, in batches each ended by a PING (its PONG: the batch
/// went through): the rate and Envoy's CPU per pair, medians of [`ROUNDS`] runs.
struct Churn {
    per_second: f64,
    cpu_per_pair_us: Option<f64>,
}

async fn subscription_churn(setup: &Setup) -> Result<Churn> {
    let mut rates = Vec::with_capacity(ROUNDS);
    let mut cpus = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let mut stream = connect(setup.port(), setup.token.as_deref()).await?;
        let cpu_before = setup.envoy_pid().map(cpu_time).transpose()?;
        let started = Instant::now();
        for batch in 0..CHURN_BATCHES {
            let mut frames = String::with_capacity(CHURN_BATCH * 64);
            for pair in 0..CHURN_BATCH {
                let sid = batch * CHURN_BATCH + pair + 1;
                let _ = write!(
                    frames,
                    "SUB {}.churn.{pair} {sid}\r\nUNSUB {sid}\r\n",
                    setup.prefix
                );
            }
            frames.push_str("PING\r\n");
            stream
                .write_all(frames.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let answer = read_until(&mut stream, b"PONG\r\n").await?;
            if answer.starts_with(b"-ERR") {
                return Err(format!(
                    "{}: subscription churn: {}",
                    setup.name,
                    String::from_utf8_lossy(&answer).trim()
                ));
            }
        }
        let elapsed = started.elapsed();
        let cpu_after = setup.envoy_pid().map(cpu_time).transpose()?;
        let pairs = (CHURN_BATCH * CHURN_BATCHES) as f64;
        rates.push(pairs / elapsed.as_secs_f64());
        if let Some((before, after)) = cpu_before.zip(cpu_after) {
            cpus.push((after - before).as_secs_f64() * 1e6 / pairs);
        }
    }
    Ok(Churn {
        per_second: median(rates),
        cpu_per_pair_us: (!cpus.is_empty()).then(|| median(cpus)),
    })
}

struct IdleMemory {
    rss_per_connection: f64,
    heap_per_connection: f64,
}

async fn idle_memory(setup: &Setup) -> Result<Option<IdleMemory>> {
    let Running::Mesh(mesh) = &setup.running else {
        return Ok(None);
    };
    let settle = Duration::from_millis(500);
    let open_idle = || async {
        let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
        for _ in 0..IDLE_CONNECTIONS {
            idle.push(connect(setup.port(), setup.token.as_deref()).await?);
        }
        tokio::time::sleep(settle).await;
        Ok::<_, String>(idle)
    };
    // A first round grows the allocators' pools (and the wasm VM's linear memory) to what this
    // many connections need; the measured round then shows what a connection keeps.
    drop(open_idle().await?);
    tokio::time::sleep(settle).await;
    let (rss_before, heap_before) = (mesh.envoy_rss_bytes()?, mesh.envoy_heap_bytes()?);
    let idle = open_idle().await?;
    let (rss_after, heap_after) = (mesh.envoy_rss_bytes()?, mesh.envoy_heap_bytes()?);
    drop(idle);
    tokio::time::sleep(settle).await;
    let per = |before: u64, after: u64| (after as f64 - before as f64) / IDLE_CONNECTIONS as f64;
    Ok(Some(IdleMemory {
        rss_per_connection: per(rss_before, rss_after),
        heap_per_connection: per(heap_before, heap_after),
    }))
}

/// Row 2 must be the mesh minus natsguard: the client-side mTLS hop was used, and natsguard saw
/// connections exactly in the rows that have it.
fn check_path(setup: &Setup) -> Result<()> {
    let Running::Mesh(mesh) = &setup.running else {
        return Ok(());
    };
    let stats = mesh.stats();
    let handshakes = stats
        .get("cluster.mesh_as_publisher.ssl.handshake")
        .copied()
        .unwrap_or(0);
    let filtered = stats
        .get("wasmcustom.natsguard.connections_accepted")
        .is_some_and(|accepted| *accepted > 0);
    if handshakes == 0 || filtered != setup.filtered {
        return Err(format!(
            "{}: {handshakes} mTLS handshakes, natsguard {}",
            setup.name,
            if filtered { "present" } else { "absent" }
        ));
    }
    Ok(())
}

/// From the rename of natsguard's ECDS file (a new policy version) to the first frame of an open
/// connection decided by it.
struct LivePolicy {
    /// A configuration Envoy had not seen (a new root context configures it in every VM).
    new: Percentiles,
    /// The connection's original configuration delivered again (a rollback): Envoy reuses its
    /// root context without a callback, natsguard applies it on its next tick.
    reinstated: Percentiles,
}

struct Percentiles {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Percentiles {
    fn of(mut delays: Vec<Duration>) -> Percentiles {
        delays.sort();
        let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Times `POLICY_UPDATES` policy updates on the natsguard setup with the allow-all policy: an
/// open connection publishes a probe subject (each PUB followed by a PING) while every other
/// version of the policy denies it; the delay ends with the first answer of the new version.
async fn live_policy(setup: &Setup) -> Result<Option<LivePolicy>> {
    let Running::Mesh(mesh) = &setup.running else {
        return Ok(None);
    };
    let base: Value = serde_json::from_str(&allow_all_policy()).map_err(|e| e.to_string())?;
    let mut denying = base.clone();
    denying["rules"][0]["permissions"] = json!({ "publish": { "deny": ["bench.live.probe"] } });
    let versions = [base.to_string(), denying.to_string()];
    let updates = |mesh: &Mesh| {
        mesh.stats()
            .get("extension_config_discovery.network_filter.natsguard.update_success")
            .copied()
            .unwrap_or(0)
    };
    let mut client = connect(setup.port(), setup.token.as_deref()).await?;
    let (mut new, mut reinstated) = (Vec::new(), Vec::new());
    for update in 1..=POLICY_UPDATES {
        let denies = update % 2 == 1;
        let applied_before = updates(mesh);
        let started = Instant::now();
        support::write_policy(&mesh.ecds_file(), &versions[update % 2]);
        loop {
            client
                .write_all(b"PUB bench.live.probe 0\r\n\r\nPING\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let answer = read_until(&mut client, b"PONG\r\n")
                .await
                .map_err(|e| format!("policy update {update}: {e}"))?;
            if memchr::memmem::find(&answer, b"-ERR").is_some() == denies {
                // The denying version gets a new root context every time (nothing holds the
                // previous one); the allowing one is the connection's own, kept alive by it.
                if denies { &mut new } else { &mut reinstated }.push(started.elapsed());
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!("policy update {update} not enforced after 10 s"));
            }
        }
        // The next update starts once Envoy took this one everywhere.
        while updates(mesh) <= applied_before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Some(LivePolicy {
        new: Percentiles::of(new),
        reinstated: Percentiles::of(reinstated),
    }))
}

/// What one setup measured; `None` where the run did not measure it (`--only`), and the idle
/// memory also for setup 1 (no Envoy).
struct Results {
    throughput: Vec<Throughput>,
    nats_bench: Vec<NatsBench>,
    latency: Option<Latency>,
    connect: Option<ConnectRate>,
    connect_jwt: Option<ConnectRate>,
    memory: Option<IdleMemory>,
    live_policy: Option<LivePolicy>,
    subscriptions: Option<Churn>,
}

async fn measure(setup: &Setup, options: &Options, jwt_tokens: &[String]) -> Result<Results> {
    eprintln!("loadgen: {}", setup.name);
    // Warm-up: V8 tiers the module up, Envoy and nats-server allocate their buffers.
    throughput(&setup.target(), 128, 1, Duration::from_millis(500)).await?;
    let mut results = Vec::new();
    if options.measures(Measurement::Throughput) {
        for &payload in &options.payloads {
            for publishers in PUBLISHERS {
                let mut runs = Vec::with_capacity(ROUNDS);
                for _ in 0..ROUNDS {
                    runs.push(
                        throughput(&setup.target(), payload, publishers, options.run_for).await?,
                    );
                }
                let run = Throughput::median(&runs);
                eprintln!(
                    "loadgen:   {payload:>6} B x{publishers:<2}: {:>10.0} msgs/s {:>8.1} MB/s, Envoy CPU {} µs/msg",
                    run.per_second(),
                    run.megabytes_per_second(),
                    run.cpu_per_message_us().map_or("-".into(), |c| format!("{c:.3}"))
                );
                results.push(run);
            }
        }
    }
    let latency = if options.measures(Measurement::Latency) {
        let latency = latency(setup).await?;
        eprintln!(
            "loadgen:   request/reply p50 {:?} p99 {:?} p99.9 {:?}",
            latency.p50, latency.p99, latency.p999
        );
        Some(latency)
    } else {
        None
    };
    let (connect, connect_jwt) = if options.measures(Measurement::Connect) {
        let connect = connect_rate(setup.port(), None).await?;
        let connect_jwt = match setup.token {
            Some(_) => Some(connect_rate(setup.port(), Some(jwt_tokens)).await?),
            None => None,
        };
        (Some(connect), connect_jwt)
    } else {
        (None, None)
    };
    let memory = if options.measures(Measurement::Memory) {
        idle_memory(setup).await?
    } else {
        None
    };
    let mut nats_bench_results = Vec::new();
    if options.measures(Measurement::NatsBench) {
        for payload in NATS_BENCH_PAYLOADS
            .into_iter()
            .filter(|p| options.payloads.contains(p))
        {
            for test in NATS_BENCH_TESTS {
                let runs = (0..ROUNDS)
                    .map(|_| tokio::task::block_in_place(|| nats_bench(setup, payload, test)))
                    .collect::<Result<Vec<_>>>()?;
                let per_second = median(runs.iter().map(|run| run.per_second).collect());
                eprintln!(
                    "loadgen:   nats bench {:<7} {payload:>6} B: {per_second:>10.0} msgs/s",
                    test.name()
                );
                nats_bench_results.push(NatsBench {
                    payload,
                    test,
                    per_second,
                });
            }
        }
    }
    let subscriptions = if options.measures(Measurement::Subscriptions) {
        let churn = subscription_churn(setup).await?;
        eprintln!(
            "loadgen:   SUB+UNSUB: {:>10.0} pairs/s, Envoy CPU {} µs/pair",
            churn.per_second,
            churn
                .cpu_per_pair_us
                .map_or("-".into(), |c| format!("{c:.2}"))
        );
        Some(churn)
    } else {
        None
    };
    // The allow-all setup only: its policy versions are the probe's.
    let live_policy = if options.measures(Measurement::LivePolicy) && setup.probes_live_policy {
        let live = live_policy(setup).await?;
        if let Some(live) = &live {
            for (kind, p) in [("new", &live.new), ("reinstated", &live.reinstated)] {
                eprintln!(
                    "loadgen:   policy update ({kind}) to enforcement p50 {:?} p99 {:?} max {:?}",
                    p.p50, p.p99, p.max
                );
            }
        }
        live
    } else {
        None
    };
    check_path(setup)?;
    Ok(Results {
        throughput: results,
        nats_bench: nats_bench_results,
        latency,
        connect,
        connect_jwt,
        memory,
        live_policy,
        subscriptions,
    })
}

// ---------------------------------------------------------------------------------------------
// The run and its report.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Measurement {
    Throughput,
    Latency,
    Connect,
    Memory,
    NatsBench,
    LivePolicy,
    Wire,
    Subscriptions,
}

const MEASUREMENTS: [Measurement; 8] = [
    Measurement::Throughput,
    Measurement::Latency,
    Measurement::Connect,
    Measurement::Memory,
    Measurement::NatsBench,
    Measurement::LivePolicy,
    Measurement::Wire,
    Measurement::Subscriptions,
];

impl Measurement {
    fn name(self) -> &'static str {
        match self {
            Measurement::Throughput => "throughput",
            Measurement::Latency => "latency",
            Measurement::Connect => "connect",
            Measurement::Memory => "memory",
            Measurement::NatsBench => "nats-bench",
            Measurement::LivePolicy => "live-policy",
            Measurement::Wire => "wire",
            Measurement::Subscriptions => "subscriptions",
        }
    }
}

struct Options {
    out: String,
    run_for: Duration,
    /// Throughput payload sizes, ascending.
    payloads: Vec<usize>,
    /// Setup numbers (1 to 6), ascending.
    setups: Vec<usize>,
    measurements: Vec<Measurement>,
    /// The subset options given (none for a full run).
    subset: Vec<String>,
    /// All arguments, for a partial run's report.
    args: Vec<String>,
}

impl Options {
    fn measures(&self, measurement: Measurement) -> bool {
        self.measurements.contains(&measurement)
    }

    fn partial(&self) -> bool {
        !self.subset.is_empty()
    }
}

/// A comma-separated list, sorted, without duplicates; every item through `parse`.
fn list<T: Ord>(
    option: &str,
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
    expected: &str,
) -> Result<Vec<T>> {
    let mut items = value
        .split(',')
        .map(|item| {
            parse(item.trim()).ok_or(format!("{option}: {item:?} is not {expected}\n{USAGE}"))
        })
        .collect::<Result<Vec<T>>>()?;
    items.sort();
    items.dedup();
    Ok(items)
}

fn options() -> Result<Options> {
    let mut out = None;
    let mut options = Options {
        out: String::new(),
        run_for: Duration::from_millis(1500),
        payloads: PAYLOADS.to_vec(),
        setups: DEFAULT_SETUPS.to_vec(),
        measurements: MEASUREMENTS.to_vec(),
        subset: Vec::new(),
        args: std::env::args().skip(1).collect(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--out" => out = Some(value()?),
            "--seconds" => {
                let seconds: f64 = value()?
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or("--seconds: a positive number")?;
                options.run_for = Duration::from_secs_f64(seconds);
            }
            "--payloads" => {
                let value = value()?;
                options.payloads = list(
                    &arg,
                    &value,
                    |item| item.parse().ok().filter(|n| (1..=MAX_PAYLOAD).contains(n)),
                    "a payload size from 1 to 1048576 bytes",
                )?;
                options.subset.push(format!("{arg} {value}"));
            }
            "--setups" => {
                let value = value()?;
                options.setups = list(
                    &arg,
                    &value,
                    |item| item.parse().ok().filter(|n| SETUPS.contains(n)),
                    "a setup number (1 to 8)",
                )?;
                options.subset.push(format!("{arg} {value}"));
            }
            "--only" => {
                let value = value()?;
                options.measurements = list(
                    &arg,
                    &value,
                    |item| MEASUREMENTS.into_iter().find(|m| m.name() == item),
                    "one of throughput, latency, connect, memory, nats-bench, live-policy, subscriptions",
                )?;
                options.subset.push(format!("{arg} {value}"));
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg}\n{USAGE}")),
        }
    }
    // A partial run never replaces the full report unless told to.
    options.out = out.unwrap_or_else(|| {
        let default = if options.partial() {
            "target/bench-partial.md"
        } else {
            "BENCHMARKS.md"
        };
        support::repo_root().join(default).display().to_string()
    });
    Ok(options)
}

fn main() {
    if let Err(error) = run() {
        eprintln!("loadgen: {error}");
        std::process::exit(1);
    }
}

type StartSetup = fn(&Value, &str) -> Setup;

fn run() -> Result<()> {
    let options = options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let idp = Idp::new()?;
    let jwks = idp.jwks()?;
    let tokens = (0..CONNECTS)
        .map(|user| idp.token(user))
        .collect::<Result<Vec<_>>>()?;

    let setups: [StartSetup; 8] = [
        |_, _| Setup {
            name: "1. client → nats-server",
            filtered: false,
            probes_live_policy: false,
            prefix: "bench".into(),
            token: None,
            running: Running::Direct(NatsServer::start(None)),
        },
        |_, _| Setup {
            name: "2. Envoy mTLS + tcp_proxy",
            filtered: false,
            probes_live_policy: false,
            prefix: "bench".into(),
            token: None,
            running: Running::Mesh(Mesh::start_without_filter(NatsServer::start(None))),
        },
        |_, _| Setup {
            name: "3. + natsguard, allow-all",
            filtered: true,
            probes_live_policy: true,
            prefix: "bench".into(),
            token: None,
            running: Running::Mesh(Mesh::start(&allow_all_policy())),
        },
        |jwks, token| Setup {
            name: "4. + natsguard, 1,000 rules, JWT",
            filtered: true,
            probes_live_policy: false,
            prefix: format!("tenants.{TENANT}.bench"),
            token: Some(token.to_string()),
            running: Running::Mesh(Mesh::start(&realistic_policy(jwks))),
        },
        |jwks, token| Setup {
            name: "5. as 4 + shadow policy",
            filtered: true,
            probes_live_policy: false,
            prefix: format!("tenants.{TENANT}.bench"),
            token: Some(token.to_string()),
            running: Running::Mesh(Mesh::start(&realistic_policy_with_shadow(jwks))),
        },
        |_, _| Setup {
            name: "6. as 3 + audit.subscriptions",
            filtered: true,
            probes_live_policy: false,
            prefix: "bench".into(),
            token: None,
            running: Running::Mesh(Mesh::start(&allow_all_policy_with_subscription_audit())),
        },
        |_, _| Setup {
            name: "7. as 3 + provenance",
            filtered: true,
            probes_live_policy: false,
            prefix: "bench".into(),
            token: None,
            running: Running::Mesh(Mesh::start(&provenance_policy(false))),
        },
        |_, _| Setup {
            name: "8. as 7, signed",
            filtered: true,
            probes_live_policy: false,
            prefix: "bench".into(),
            token: None,
            running: Running::Mesh(Mesh::start(&provenance_policy(true))),
        },
    ];
    // Indexed by setup (row 1 at 0); `None` for a setup this run skipped (`--setups`).
    let mut rows: Vec<Option<Row>> = Vec::new();
    for (index, start) in setups.into_iter().enumerate() {
        if !options.setups.contains(&(index + 1)) {
            rows.push(None);
            continue;
        }
        let setup = start(&jwks, &tokens[0]);
        let results = runtime.block_on(measure(&setup, &options, &tokens))?;
        rows.push(Some((setup.name, results)));
    }
    let wire = if options.measures(Measurement::Wire) {
        eprintln!("loadgen: the filter on the wire (one Envoy, four plaintext listeners)");
        let mut bench = wire::WireBench::start(&jwks);
        let token = idp.token(CONNECTS)?;
        let per_message = runtime.block_on(wire::per_message(&bench, &token, &options.payloads))?;
        let connect = Some(runtime.block_on(wire::connect_cost(&mut bench, &idp))?);
        Some(wire::Wire {
            per_message,
            connect,
        })
    } else {
        None
    };
    let mut report = report(&rows, wire.as_ref(), started.elapsed(), &options);
    // The hand-written analysis at the end of the file survives a rerun.
    if let Ok(previous) = std::fs::read_to_string(&options.out) {
        if let Some(at) = previous.find(ANALYSIS_HEADING) {
            report.push('\n');
            report.push_str(&previous[at..]);
        }
    }
    if let Some(parent) = std::path::Path::new(&options.out).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
    }
    std::fs::write(&options.out, report).map_err(|e| format!("{}: {e}", options.out))?;
    eprintln!(
        "loadgen: wrote {} in {:.0?}",
        options.out,
        started.elapsed()
    );
    Ok(())
}

/// A row against its base row: the same traffic, with and without one option (row 5: a shadow
/// policy over row 4; row 6: audit.subscriptions over row 3). `rows`: the base row's number,
/// the row's, and what the row adds.
fn option_cost(
    w: &mut String,
    without: Option<&Results>,
    with: Option<&Results>,
    (base, row, option): (usize, usize, &str),
) {
    let (Some(without), Some(with)) = (without, with) else {
        let _ = writeln!(
            w,
            "Not measured in this run (rows {base} and {row} both needed)."
        );
        return;
    };
    let _ = writeln!(
        w,
        "| Figure | row {base} | row {row} ({option}) | row {row} / row {base} |\n|---|---:|---:|---:|"
    );
    for t4 in &without.throughput {
        let Some(t5) = with
            .throughput
            .iter()
            .find(|t| t.payload == t4.payload && t.publishers == t4.publishers)
        else {
            continue;
        };
        let label = format!("{} B, {} publisher(s)", t4.payload, t4.publishers);
        let _ = writeln!(
            w,
            "| msgs/s, {label} | {:.0} | {:.0} | {} |",
            t4.per_second(),
            t5.per_second(),
            ratio(t5.per_second(), t4.per_second())
        );
        if let (Some(c4), Some(c5)) = (t4.cpu_per_message_us(), t5.cpu_per_message_us()) {
            let _ = writeln!(
                w,
                "| Envoy CPU µs/msg, {label} | {c4:.2} | {c5:.2} | {} |",
                ratio(c5, c4)
            );
        }
    }
    if let (Some(l4), Some(l5)) = (&without.latency, &with.latency) {
        let _ = writeln!(
            w,
            "| request/reply p99 | {} | {} | {:+.0} µs |",
            us(l4.p99),
            us(l5.p99),
            (l5.p99.as_secs_f64() - l4.p99.as_secs_f64()) * 1e6
        );
    }
    if let (Some(c4), Some(c5)) = (&without.connect_jwt, &with.connect_jwt) {
        let _ = writeln!(
            w,
            "| CONNECT with JWT, p50 | {} | {} | {:+.2} ms |",
            ms(c4.p50),
            ms(c5.p50),
            (c5.p50.as_secs_f64() - c4.p50.as_secs_f64()) * 1e3
        );
    }
    if let (Some(m4), Some(m5)) = (&without.memory, &with.memory) {
        let _ = writeln!(
            w,
            "| heap / idle connection | {:.1} KB | {:.1} KB | {:+.1} KB |",
            m4.heap_per_connection / 1024.0,
            m5.heap_per_connection / 1024.0,
            (m5.heap_per_connection - m4.heap_per_connection) / 1024.0
        );
    }
    if let (Some(s4), Some(s5)) = (&without.subscriptions, &with.subscriptions) {
        let _ = writeln!(
            w,
            "| SUB+UNSUB pairs/s | {:.0} | {:.0} | {} |",
            s4.per_second,
            s5.per_second,
            ratio(s5.per_second, s4.per_second)
        );
        if let (Some(c4), Some(c5)) = (s4.cpu_per_pair_us, s5.cpu_per_pair_us) {
            let _ = writeln!(
                w,
                "| Envoy CPU µs per SUB+UNSUB | {c4:.2} | {c5:.2} | {} |",
                ratio(c5, c4)
            );
        }
    }
}

/// A measured setup: its name in the report and its results.
type Row = (&'static str, Results);

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text).trim().to_string()
        })
        .unwrap_or_else(|| "?".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|name| name.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".into(), |kb| format!("{:.1} GiB", kb as f64 / 1048576.0));
    format!(
        "{cpu}, {} cores, {memory} RAM, Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        command_output("uname", &["-r"])
    )
}

fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}×", value / base)
    } else {
        "-".into()
    }
}

/// A rate's "× row 1" and "× row 2" cells for the row at `index` (row 1 has no "× row 2").
fn rate_ratios(
    index: usize,
    rate: f64,
    direct: Option<f64>,
    proxy: Option<f64>,
) -> (String, String) {
    let to = |base: Option<f64>| base.map_or("-".into(), |b| ratio(rate, b));
    (to(direct), if index == 0 { "-".into() } else { to(proxy) })
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "met"
    } else {
        "**not met**"
    }
}

/// The report. Rows are indexed by setup (row 1 at 0), `None` where the run skipped the setup;
/// every figure and target whose inputs a partial run did not measure says so (a full run
/// measures everything).
fn report(
    rows: &[Option<Row>],
    wire: Option<&wire::Wire>,
    took: Duration,
    options: &Options,
) -> String {
    let root = support::repo_root();
    let venv = |name: &str| root.join(".venv/bin").join(name).display().to_string();
    let envoy_version = command_output(&venv("envoy"), &["--version"]);
    let envoy_version = envoy_version.split_whitespace().last().unwrap_or("?");
    let wasm = root.join("target/wasm32-wasip1/release/natsguard.wasm");
    let wasm_size = std::fs::metadata(&wasm).map_or(0, |m| m.len());
    let commit = command_output(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    let row = |index: usize| rows.get(index).and_then(Option::as_ref).map(|(_, r)| r);
    let measured = rows.iter().flatten();
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# natsguard benchmarks\n");
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M"]);
    if options.partial() {
        let list = |items: Vec<String>| items.join(", ");
        let _ = writeln!(w, "Written by `scripts/bench.sh {}`, {date} UTC, in {:.0} s: a **partial run** (setups {}; payloads {}; {}). Targets whose inputs were not measured say so; ratios to a setup that was not measured show `-`. The full report is BENCHMARKS.md (`make bench`).\n",
            options.args.join(" "),
            took.as_secs_f64(),
            list(options.setups.iter().map(usize::to_string).collect()),
            list(options.payloads.iter().map(|p| format!("{p} B")).collect()),
            list(options.measurements.iter().map(|m| m.name().to_string()).collect()));
    } else {
        let _ = writeln!(w, "Written by `make bench` (scripts/bench.sh: `cargo build --locked -p natsguard-loadgen --profile loadgen`, then `target/loadgen/loadgen`), {date} UTC, in {:.0} s. Do not edit by hand: rerun `make bench`.\n", took.as_secs_f64());
    }
    let _ = writeln!(w, "- Machine: {}", machine());
    let _ = writeln!(w, "- Envoy {envoy_version} (`--concurrency 1`, the test harness's settings), {}, natsguard {commit} ({wasm_size} bytes of wasm, V8)", command_output(&venv("nats-server"), &["--version"]));
    let _ = writeln!(w, "- Load generator: benches/loadgen/src/main.rs (raw NATS protocol on tokio, 2 worker threads), on the same cores as Envoy and nats-server.");
    let _ = writeln!(w, "- Setups, one at a time, all on loopback: 1. client → nats-server; 2. client → Envoy outbound listener → mTLS with the client's SPIFFE certificate → Envoy inbound listener (TLS termination, tcp_proxy) → nats-server, i.e. envoy/mesh.yaml without the wasm filter; 3. the same with natsguard and an allow-all rule; 4. the same with a 1,000-rule policy (templates, claim and namespace rules, allow_responses) and the client authenticated by an RS256 JWT in CONNECT (inline JWKS); 5. as 4 with a `shadow` policy (the same 1,000 rules, the client's with one more deny entry it never meets: every decision is made twice and the readings agree); 6. as 3 with `audit.subscriptions: true` (an audit line for every SUB and UNSUB); 7. as 3 with `provenance` on every benchmark subject (each message stamped with the publisher's SPIFFE ID: its PUB forwarded as an HPUB); 8. as 7 with `provenance.sign` (each message also signed). After each mesh setup the run checks Envoy's stats: the client-side mTLS handshakes happened, and natsguard counted connections in rows 3 to 8 only.");
    let _ = writeln!(w, "- Throughput: median of {ROUNDS} runs; publishers send for {:.1} s (`--seconds`), with at most {} MB in flight beyond what one subscriber (through the same path) has received; rate = messages received / time until the last arrived. Envoy CPU = the run time of every Envoy thread (`/proc/<pid>/task/*/schedstat`, nanoseconds) over the same interval, divided by the messages (each crosses Envoy twice: publisher → server, server → subscriber, each through both sidecars).", options.run_for.as_secs_f64(), IN_FLIGHT_BYTES >> 20);
    let _ = writeln!(w, "- Latency: {LATENCY_REQUESTS} request/reply round trips (16 B) at {LATENCY_RATE_PER_SECOND}/s, one in flight, after 500 warm-up requests; requester and responder both through the setup.");
    let _ = writeln!(w, "- CONNECT: {CONNECTS} sequential connections (TCP, through the mesh the mTLS handshake, INFO, CONNECT, PING/PONG); with JWT each connection presents a distinct token.");
    let _ = writeln!(w, "- Live policy: {POLICY_UPDATES} updates of natsguard's configuration on row 3 (a new version of its ECDS file renamed over the one Envoy watches, as `scripts/set-policy.sh` does; every other version denies a probe subject), each timed from the rename to the first answer of the new version on a connection that was open throughout (it publishes the probe, each PUB followed by a PING, in a loop).");
    let _ = writeln!(w, "- Idle memory: {IDLE_CONNECTIONS} connections opened and closed once (the allocators and the wasm memory grow to that size), then opened again and left idle; Envoy's RSS and tcmalloc heap (`/memory` allocated) before/after, per connection. The wasm VM's linear memory is not in the tcmalloc heap: the RSS delta includes it.\n");

    let throughput_at = |index: usize, payload: usize, publishers: usize| {
        row(index).and_then(|r| {
            r.throughput
                .iter()
                .find(|t| t.payload == payload && t.publishers == publishers)
        })
    };
    // Targets: all of them, each with its figure or "not measured".
    let target = |w: &mut String, name: String, figure: Option<(String, bool)>| {
        let _ = match figure {
            Some((figure, pass)) => writeln!(w, "| {name} | {figure} | {} |", verdict(pass)),
            None => writeln!(w, "| {name} | not measured | |"),
        };
    };
    let _ = writeln!(w, "## Targets\n\n| Target | Measured | |\n|---|---|---|");
    for publishers in PUBLISHERS {
        let base = throughput_at(1, 128, publishers);
        for (index, limit) in [(2, 1.15), (3, 1.25)] {
            let figure = base
                .and_then(Throughput::cpu_per_message_us)
                .zip(throughput_at(index, 128, publishers).and_then(Throughput::cpu_per_message_us))
                .map(|(bc, tc)| {
                    let r = tc / bc;
                    (format!("{r:.2}× ({tc:.2} vs {bc:.2} µs)"), r <= limit)
                });
            target(
                w,
                format!(
                    "Envoy CPU/msg, 128 B, {publishers} publisher(s): row {} ≤ {limit}× row 2",
                    index + 1
                ),
                figure,
            );
        }
        for (index, floor) in [(2, 0.90), (3, 0.85)] {
            let figure = base
                .zip(throughput_at(index, 128, publishers))
                .map(|(b, t)| {
                    let r = t.per_second() / b.per_second();
                    (
                        format!(
                            "{:.0}% ({:.0} vs {:.0} msgs/s)",
                            r * 100.0,
                            t.per_second(),
                            b.per_second()
                        ),
                        r >= floor,
                    )
                });
            target(
                w,
                format!(
                    "Throughput, 128 B, {publishers} publisher(s): row {} ≥ {:.0}% of row 2",
                    index + 1,
                    floor * 100.0
                ),
                figure,
            );
        }
    }
    let latency_of = |index: usize| row(index).and_then(|r| r.latency.as_ref());
    let figure = latency_of(1).zip(latency_of(2)).map(|(l2, l3)| {
        let added = l3.p99.as_secs_f64() * 1e6 - l2.p99.as_secs_f64() * 1e6;
        (
            format!("{added:+.0} µs ({} vs {})", us(l3.p99), us(l2.p99)),
            added <= 50.0,
        )
    });
    target(
        w,
        "p99 request/reply: row 3 within 50 µs of row 2".into(),
        figure,
    );
    let figure = row(3)
        .and_then(|r4| r4.connect.as_ref().zip(r4.connect_jwt.as_ref()))
        .map(|(plain, jwt)| {
            let added = (jwt.mean.as_secs_f64() - plain.mean.as_secs_f64()) * 1e3;
            // Judged on the median: single scheduling stalls on the shared cores move the mean.
            let added_p50 = (jwt.p50.as_secs_f64() - plain.p50.as_secs_f64()) * 1e3;
            (
                format!(
                    "p50 {added_p50:+.2} ms ({} vs {}), mean {added:+.2} ms",
                    ms(jwt.p50),
                    ms(plain.p50)
                ),
                added_p50 <= 1.0,
            )
        });
    target(
        w,
        "CONNECT with RS256 JWT adds ≤ 1 ms (row 4, with vs without token; p50, mean)".into(),
        figure,
    );
    let memory_of = |index: usize| row(index).and_then(|r| r.memory.as_ref());
    let figure = memory_of(1).zip(memory_of(2)).map(|(m2, m3)| {
        let heap = m3.heap_per_connection - m2.heap_per_connection;
        let rss = m3.rss_per_connection - m2.rss_per_connection;
        (
            format!("heap {:+.1} KB, RSS {:+.1} KB", heap / 1024.0, rss / 1024.0),
            heap.max(rss) <= 4096.0,
        )
    });
    target(
        w,
        "Filter state ≤ 4 KB per idle connection (row 3 − row 2)".into(),
        figure,
    );
    for (name, figure) in wire::targets(wire) {
        target(w, name, figure);
    }

    let not_measured = |w: &mut String| {
        let _ = writeln!(w, "Not measured in this run.");
    };
    let _ = writeln!(w, "\n## Publish throughput and Envoy CPU per message\n");
    let mut payloads: Vec<usize> = measured
        .clone()
        .flat_map(|(_, r)| r.throughput.iter().map(|t| t.payload))
        .collect();
    payloads.sort();
    payloads.dedup();
    if payloads.is_empty() {
        not_measured(w);
    } else {
        let _ = writeln!(w, "| Payload | Publishers | Setup | msgs/s | MB/s | × row 1 | × row 2 | Envoy CPU µs/msg | CPU × row 2 |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    }
    for payload in payloads {
        for publishers in PUBLISHERS {
            let direct = throughput_at(0, payload, publishers);
            let proxy = throughput_at(1, payload, publishers);
            for (index, entry) in rows.iter().enumerate() {
                let (Some((name, _)), Some(t)) = (entry, throughput_at(index, payload, publishers))
                else {
                    continue;
                };
                let cpu = t.cpu_per_message_us();
                let base_cpu = proxy.and_then(Throughput::cpu_per_message_us);
                let (to_direct, to_proxy) = rate_ratios(
                    index,
                    t.per_second(),
                    direct.map(Throughput::per_second),
                    proxy.map(Throughput::per_second),
                );
                let _ = writeln!(
                    w,
                    "| {payload} B | {publishers} | {name} | {:.0} | {:.1} | {to_direct} | {to_proxy} | {} | {} |",
                    t.per_second(),
                    t.megabytes_per_second(),
                    cpu.map_or("-".into(), |c| format!("{c:.2}")),
                    cpu.zip(base_cpu).map_or("-".into(), |(c, b)| ratio(c, b))
                );
            }
        }
    }

    wire::section(w, wire);

    let _ = writeln!(
        w,
        "\n## nats bench (the nats CLI), beside the load generator\n"
    );
    let nats_bench_at = |index: usize, payload: usize, test: NatsBenchTest| {
        row(index).and_then(|r| {
            r.nats_bench
                .iter()
                .find(|b| b.payload == payload && b.test == test)
        })
    };
    if measured.clone().any(|(_, r)| !r.nats_bench.is_empty()) {
        let nats = tool_binary("nats").display().to_string();
        let _ = writeln!(w, "`nats bench` of the nats CLI {} (scripts/ensure-tools.sh; nats.go underneath), the figure NATS users quote, on the same setups in the same run: one client, {NATS_BENCH_MESSAGES} messages per run, median of {ROUNDS} runs. publish: `nats bench pub` alone, the publisher's rate (no subscriber: nats-server drops the messages). pub/sub: `nats bench sub` and `nats bench pub` on one subject, the subscriber's rate from its first message to its last. Beside it the load generator's rate for the same payload and 1 publisher (table above; its publisher never gets more than {} MB ahead of its subscriber).\n", command_output(&nats, &["--version"]), IN_FLIGHT_BYTES >> 20);
        let _ = writeln!(w, "| Payload | Test | Setup | msgs/s | MB/s | × row 1 | × row 2 | loadgen msgs/s | nats bench ÷ loadgen |\n|---:|---|---|---:|---:|---:|---:|---:|---:|");
    } else {
        not_measured(w);
    }
    for payload in NATS_BENCH_PAYLOADS {
        for test in NATS_BENCH_TESTS {
            let direct = nats_bench_at(0, payload, test);
            let proxy = nats_bench_at(1, payload, test);
            for (index, entry) in rows.iter().enumerate() {
                let (Some((name, _)), Some(b)) = (entry, nats_bench_at(index, payload, test))
                else {
                    continue;
                };
                let loadgen = match test {
                    NatsBenchTest::PubSub => throughput_at(index, payload, 1),
                    NatsBenchTest::Publish => None,
                };
                let (to_direct, to_proxy) = rate_ratios(
                    index,
                    b.per_second,
                    direct.map(|d| d.per_second),
                    proxy.map(|p| p.per_second),
                );
                let _ = writeln!(
                    w,
                    "| {payload} B | {} | {name} | {:.0} | {:.1} | {to_direct} | {to_proxy} | {} | {} |",
                    test.name(),
                    b.per_second,
                    b.per_second * payload as f64 / 1e6,
                    loadgen.map_or("-".into(), |l| format!("{:.0}", l.per_second())),
                    loadgen.map_or("-".into(), |l| ratio(b.per_second, l.per_second()))
                );
            }
        }
    }

    let _ = writeln!(
        w,
        "\n## Request/reply latency ({LATENCY_RATE_PER_SECOND} requests/s)\n"
    );
    if measured.clone().any(|(_, r)| r.latency.is_some()) {
        let _ = writeln!(
            w,
            "| Setup | p50 | p99 | p99.9 | p99 × row 1 | p99 − row 2 |\n|---|---:|---:|---:|---:|---:|"
        );
    } else {
        not_measured(w);
    }
    for (index, entry) in rows.iter().enumerate() {
        let Some((
            name,
            Results {
                latency: Some(l), ..
            },
        )) = entry
        else {
            continue;
        };
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} | {} | {} |",
            us(l.p50),
            us(l.p99),
            us(l.p999),
            latency_of(0).map_or("-".into(), |l1| ratio(
                l.p99.as_secs_f64(),
                l1.p99.as_secs_f64()
            )),
            match latency_of(1) {
                Some(l2) if index >= 1 => format!(
                    "{:+.0} µs",
                    (l.p99.as_secs_f64() - l2.p99.as_secs_f64()) * 1e6
                ),
                _ => "-".into(),
            }
        );
    }

    let _ = writeln!(w, "\n## CONNECT rate ({CONNECTS} sequential connections)\n");
    if measured.clone().any(|(_, r)| r.connect.is_some()) {
        let _ = writeln!(w, "| Setup | Client | mean | p50 | connections/s | mean − row 2 |\n|---|---|---:|---:|---:|---:|");
    } else {
        not_measured(w);
    }
    let base = row(1).and_then(|r| r.connect.as_ref());
    for (index, entry) in rows.iter().enumerate() {
        let Some((name, r)) = entry else { continue };
        let Some(connect) = &r.connect else { continue };
        let mut lines = vec![("SPIFFE only", connect)];
        if let Some(jwt) = &r.connect_jwt {
            lines.push(("SPIFFE + RS256 JWT", jwt));
        }
        for (client, c) in lines {
            let _ = writeln!(
                w,
                "| {name} | {client} | {} | {} | {:.0} | {} |",
                ms(c.mean),
                ms(c.p50),
                1.0 / c.mean.as_secs_f64(),
                match base {
                    Some(b) if index >= 1 => format!(
                        "{:+.2} ms",
                        (c.mean.as_secs_f64() - b.mean.as_secs_f64()) * 1e3
                    ),
                    _ => "-".into(),
                }
            );
        }
    }

    let _ = writeln!(
        w,
        "\n## Policy update to enforcement on an open connection ({POLICY_UPDATES} updates)\n"
    );
    if measured.clone().any(|(_, r)| r.live_policy.is_some()) {
        let _ = writeln!(
            w,
            "| Setup | update | p50 | p99 | max |\n|---|---|---:|---:|---:|"
        );
    } else {
        not_measured(w);
    }
    for (name, r) in measured.clone() {
        let Some(live) = &r.live_policy else { continue };
        for (kind, p) in [
            (
                "a configuration Envoy creates a root context for",
                &live.new,
            ),
            (
                "the connection's own configuration again (rollback; on the next tick)",
                &live.reinstated,
            ),
        ] {
            let _ = writeln!(
                w,
                "| {name} | {kind} | {} | {} | {} |",
                ms(p.p50),
                ms(p.p99),
                ms(p.max)
            );
        }
    }

    let _ = writeln!(w, "\n## What a shadow policy costs (row 5 against row 4)\n");
    option_cost(w, row(3), row(4), (4, 5, "shadow"));

    let _ = writeln!(
        w,
        "\n## What audit.subscriptions costs (row 6 against row 3)\n"
    );
    let _ = writeln!(w, "Row 6 writes two audit lines (Envoy's `wasm` logger, info level, to Envoy's log file) per SUB+UNSUB pair; PUB and MSG frames are not audited, so their figures should not move. Subscription churn: {CHURN_BATCHES} batches of {CHURN_BATCH} `SUB <subject> <sid>` + `UNSUB <sid>` pairs, each batch ended by a PING and its PONG, on one connection; the median of {ROUNDS} runs.\n");
    option_cost(w, row(2), row(5), (3, 6, "audit.subscriptions"));

    let _ = writeln!(
        w,
        "\n## Subscription churn (SUB + UNSUB pairs on one connection)\n"
    );
    if measured.clone().any(|(_, r)| r.subscriptions.is_some()) {
        let _ = writeln!(
            w,
            "| Setup | pairs/s | Envoy CPU µs / pair |\n|---|---:|---:|"
        );
    } else {
        not_measured(w);
    }
    for (name, r) in measured.clone() {
        let Some(c) = &r.subscriptions else { continue };
        let _ = writeln!(
            w,
            "| {name} | {:.0} | {} |",
            c.per_second,
            c.cpu_per_pair_us.map_or("-".into(), |c| format!("{c:.2}"))
        );
    }

    let _ = writeln!(
        w,
        "\n## What provenance costs (rows 7 and 8 against row 3)\n\nEvery message stamped (row 7), and signed (row 8); ratios against row 3 in the same run.\n"
    );
    option_cost(w, row(2), row(6), (3, 7, "stamped"));
    let _ = writeln!(w);
    option_cost(w, row(2), row(7), (3, 8, "signed"));

    let _ = writeln!(
        w,
        "\n## Envoy memory per idle connection ({IDLE_CONNECTIONS} connections)\n"
    );
    if measured.clone().any(|(_, r)| r.memory.is_some()) {
        let _ = writeln!(w, "| Setup | RSS / connection | heap / connection | RSS − row 2 | heap − row 2 |\n|---|---:|---:|---:|---:|");
    } else {
        not_measured(w);
    }
    let base = memory_of(1);
    for (name, r) in measured {
        let Some(m) = &r.memory else { continue };
        let _ = writeln!(
            w,
            "| {name} | {:.1} KB | {:.1} KB | {} | {} |",
            m.rss_per_connection / 1024.0,
            m.heap_per_connection / 1024.0,
            base.map_or("-".into(), |b| format!(
                "{:+.1} KB",
                (m.rss_per_connection - b.rss_per_connection) / 1024.0
            )),
            base.map_or("-".into(), |b| format!(
                "{:+.1} KB",
                (m.heap_per_connection - b.heap_per_connection) / 1024.0
            ))
        );
    }
    out
}

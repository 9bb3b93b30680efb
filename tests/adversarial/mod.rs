//! Shared pieces of the adversarial tests: a seeded RNG, the quick/stress knobs, an observer
//! subscribed to `>` directly on nats-server, a parser for what the server sends, and a TCP relay
//! that re-chunks, delays or redirects a server's bytes.
#![allow(dead_code)] // each adversarial test binary uses a different part

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// splitmix64: tiny, seedable, reproducible across platforms.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// `NATSGUARD_STRESS_SECONDS` set: the long form (`make stress`), otherwise the quick form of
/// `make test`.
pub fn stress_seconds() -> Option<u64> {
    std::env::var("NATSGUARD_STRESS_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
}

/// `NATSGUARD_FUZZ_SEED` reproduces a run; the quick form uses a fixed seed, the stress form a
/// fresh one (printed).
pub fn fuzz_seed(quick_default: u64) -> u64 {
    if let Some(seed) = std::env::var("NATSGUARD_FUZZ_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        return seed;
    }
    if stress_seconds().is_some() {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(quick_default)
    } else {
        quick_default
    }
}

/// Where failing inputs are saved: target/adversarial-repro/.
pub fn repro_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/adversarial-repro");
    std::fs::create_dir_all(&dir).expect("create target/adversarial-repro");
    dir
}

/// Bytes as a Rust byte-string literal body, for reproducers.
pub fn escaped(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

/// A message as a subscriber received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub subject: String,
    pub reply: Option<String>,
    /// Header block and payload together (HMSG), or the payload (MSG).
    pub data: Vec<u8>,
    pub has_headers: bool,
}

/// Incremental reader of server → client frames. Anything else than INFO, MSG, HMSG, PING, PONG,
/// +OK and -ERR is a test failure (the filter must never emit it).
#[derive(Default)]
pub struct ServerFrames {
    buffer: Vec<u8>,
    pub messages: Vec<Delivered>,
    pub errors: Vec<String>,
    pub pings: usize,
    pub pongs: usize,
}

impl ServerFrames {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        while let Some(used) = self.parse_one() {
            self.buffer.drain(..used);
        }
    }

    fn parse_one(&mut self) -> Option<usize> {
        // Control lines are short: searching a bounded prefix keeps 64 MB payloads linear.
        let head = &self.buffer[..self.buffer.len().min(8192)];
        let line_end = head.windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
        let after_line = line_end + 2;
        let args: Vec<&str> = line.split(' ').filter(|a| !a.is_empty()).collect();
        match args.first().copied() {
            Some("PING") => self.pings += 1,
            Some("PONG") => self.pongs += 1,
            Some("+OK") | Some("INFO") => {}
            Some("-ERR") => self.errors.push(line.clone()),
            Some("MSG") | Some("HMSG") => {
                let headers = args[0] == "HMSG";
                let sizes = if headers { 2 } else { 1 };
                let total: usize = args
                    .last()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad size in {line:?}"));
                let reply = (args.len() == 4 + sizes).then(|| args[3].to_string());
                let end = after_line + total;
                if self.buffer.len() < end + 2 {
                    return None;
                }
                assert_eq!(
                    &self.buffer[end..end + 2],
                    b"\r\n",
                    "framing after {line:?}"
                );
                self.messages.push(Delivered {
                    subject: args[1].to_string(),
                    reply,
                    data: self.buffer[after_line..end].to_vec(),
                    has_headers: headers,
                });
                return Some(end + 2);
            }
            _ => panic!("unexpected line from the server side: {line:?}"),
        }
        Some(after_line)
    }
}

/// A raw client directly on nats-server subscribed to `>`: sees every message published.
/// A thread reads continuously (answering PINGs) so a busy run never makes it a slow consumer.
pub struct Observer {
    stream: TcpStream,
    frames: Arc<Mutex<ServerFrames>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Observer {
    pub fn start(nats_port: u16) -> Observer {
        let mut stream = TcpStream::connect(("127.0.0.1", nats_port)).expect("observer connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        stream
            .write_all(b"CONNECT {\"verbose\":false,\"headers\":true,\"name\":\"observer\"}\r\nSUB > 1\r\n")
            .expect("observer subscribe");
        let frames = Arc::new(Mutex::new(ServerFrames::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (frames, stop) = (Arc::clone(&frames), Arc::clone(&stop));
            let mut stream = stream.try_clone().expect("clone");
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut answered = 0;
                while !stop.load(Ordering::Relaxed) {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let mut frames = frames.lock().expect("lock");
                            frames.feed(&buf[..n]);
                            while answered < frames.pings {
                                let _ = stream.write_all(b"PONG\r\n");
                                answered += 1;
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        let observer = Observer {
            stream,
            frames,
            stop,
            reader: Some(reader),
        };
        observer.sync();
        observer
    }

    /// PING/PONG round trip: everything nats-server routed to the observer before is read.
    pub fn sync(&self) {
        let target = self.frames.lock().expect("lock").pongs + 1;
        (&self.stream)
            .write_all(b"PING\r\n")
            .expect("observer ping");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.frames.lock().expect("lock").pongs < target {
            assert!(Instant::now() < deadline, "observer PONG in time");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every message seen so far (and forgets them).
    pub fn take(&self) -> Vec<Delivered> {
        std::mem::take(&mut self.frames.lock().expect("lock").messages)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A loopback TCP relay in front of an upstream port that tests can move (a restarted server) and
/// slow down (a slow endpoint). With a chunking seed, server → client bytes are cut at random
/// points with short pauses, so the filter sees server frames in many chunkings. Stops (and drops
/// every connection) when dropped.
pub struct Relay {
    pub port: u16,
    upstream: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(upstream: u16, chunking_seed: Option<u64>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(AtomicU16::new(upstream));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let acceptor = {
            let (stop, upstream, delay_ms) = (
                Arc::clone(&stop),
                Arc::clone(&upstream),
                Arc::clone(&delay_ms),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(chunking_seed.unwrap_or(0));
                while !stop.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    let Ok(server) =
                        TcpStream::connect(("127.0.0.1", upstream.load(Ordering::Relaxed)))
                    else {
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    for stream in [&client, &server] {
                        let _ = stream.set_nodelay(true);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
                    }
                    let (c2, s2) = (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    );
                    let (stop_up, stop_down) = (Arc::clone(&stop), Arc::clone(&stop));
                    std::thread::spawn(move || pump(c2, s2, None, stop_up));
                    let chunker = chunking_seed.map(|_| Rng::new(rng.next_u64()));
                    let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        pump(server, client, chunker, stop_down)
                    });
                }
            })
        };
        Relay {
            port,
            upstream,
            delay_ms,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// New connections go to `port` (existing ones keep theirs).
    pub fn set_upstream(&self, port: u16) {
        self.upstream.store(port, Ordering::Relaxed);
    }

    /// New connections get the upstream's answer only after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, mut chunker: Option<Rng>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let sent = match chunker.as_mut() {
                    None => to.write_all(&buf[..n]),
                    Some(rng) => write_chunked(&mut to, &buf[..n], rng),
                };
                if sent.is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// Writes `bytes` in random pieces, sometimes pausing so the peer reads them separately.
pub fn write_chunked(to: &mut TcpStream, bytes: &[u8], rng: &mut Rng) -> std::io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let piece = match rng.below(4) {
            0 => 1 + rng.below(3),
            1 => 1 + rng.below(64),
            _ => 1 + rng.below(rest.len()),
        }
        .min(rest.len());
        to.write_all(&rest[..piece])?;
        rest = &rest[piece..];
        if rng.chance(30) {
            std::thread::sleep(Duration::from_micros(200 + rng.below(800) as u64));
        }
    }
    Ok(())
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// natsguard's counters from Envoy's stats (`wasmcustom.natsguard.` removed).
pub fn natsguard_counters(stats: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    stats
        .iter()
        .filter_map(|(name, value)| {
            Some((
                name.strip_prefix("wasmcustom.natsguard.")?.to_string(),
                *value,
            ))
        })
        .collect()
}

pub fn b64(bytes: &[u8]) -> String {
    use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
    Base64UrlSafeNoPadding::encode_to_string(bytes).expect("base64")
}

/// A JWT with any header and payload, signed by `key` (EdDSA).
pub fn eddsa_token(
    key: &ed25519_compact::KeyPair,
    header: &serde_json::Value,
    payload: &serde_json::Value,
) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let signature = key.sk.sign(input.as_bytes(), None);
    format!("{input}.{}", b64(signature.as_ref()))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Waits until natsguard's counter `name` reaches `at_least`.
pub fn wait_for_counter(mesh: &crate::support::Mesh, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while natsguard_counters(&mesh.stats())
        .get(name)
        .copied()
        .unwrap_or(0)
        < at_least
    {
        assert!(
            Instant::now() < deadline,
            "{name} never reached {at_least}: {:?}",
            natsguard_counters(&mesh.stats())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A policy whose identities need a token from provider `idp` (EdDSA keys served as a remote
/// JWKS through the `idp` cluster, refreshed every 10 s, natsguard's minimum).
pub fn jwt_policy() -> String {
    serde_json::json!({
        "identity": {
            "spiffe": { "required": true, "trust_domains": ["cluster.local"] },
            "jwt": { "required": true, "token_fields": ["auth_token"], "providers": [{
                "name": "idp", "issuer": "https://idp.test", "audiences": ["nats"],
                "remote_jwks": { "cluster": "idp", "authority": "idp.test", "path": "/jwks", "refresh_seconds": 10 },
                "algorithms": ["EdDSA"], "clock_skew_seconds": 5
            }]}
        },
        "default_action": "deny",
        "rules": [{ "name": "writers", "from": { "request_principals": ["https://idp.test/*"] },
                    "permissions": { "publish": { "allow": ["ok.>"] } } }]
    })
    .to_string()
}

pub fn signing_key(seed: u8) -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]))
}

/// A JWKS of the Ed25519 keys `(kid, seed)`.
pub fn jwks(keys: &[(&str, u8)]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(kid, seed)| serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(signing_key(*seed).pk.as_ref()) }))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// A token of [`jwt_policy`]'s provider, signed by the key `seed` under `kid`.
pub fn token(kid: &str, seed: u8) -> String {
    let now = unix_now();
    eddsa_token(
        &signing_key(seed),
        &serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid }),
        &serde_json::json!({ "iss": "https://idp.test", "sub": "alice", "aud": "nats", "iat": now - 5, "exp": now + 600 }),
    )
}

/// Whether a connection to the sidecar port `port` with `token` is let in.
pub fn admitted(port: u16, token: &str) -> bool {
    use crate::support::{contains, RawClient};
    let mut client = RawClient::connect(port);
    client.read_line();
    client.send(
        format!(
            "CONNECT {}\r\nPING\r\n",
            serde_json::json!({ "auth_token": token })
        )
        .as_bytes(),
    );
    let (bytes, _) = client.read_until(Duration::from_secs(8), |b| {
        contains(b, b"PONG\r\n") || contains(b, b"-ERR")
    });
    contains(&bytes, b"PONG\r\n")
}

//! The connection engine per frame, as the filter runs it: 16 KB chunks of PUB frames (client →
//! server) and MSG frames (server → client) through an established [`Connection`], with the
//! allow-all policy of `make bench` row 3 and a restricted policy with a deny entry and
//! allow_responses (row 4's shape; the decision cache answers), and the restricted policy read a
//! second time: beside a shadow that agrees on every frame (row 5's shape), and as a dry run;
//! and the allow-all policy with provenance (`provenance` rows 6 and 7 of `make bench`): on
//! other subjects than the stream's (the zero-copy path), stamping every frame, and stamping and
//! signing every frame.
//! The budget per frame is what the filter may add to Envoy's CPU per message (see
//! BENCHMARKS.md).
//!
//! cargo bench --bench engine            (or add `-- --quick` for a short run)

use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use natsguard::engine::{Connection, Forward, Gate};
use serde_json::json;

const NOW: Duration = Duration::from_secs(1_800_000_000);
const SPIFFE_ID: &str = "spiffe://cluster.local/ns/billing/sa/publisher";
/// What Envoy's TLS socket typically hands the filter per read under load.
const CHUNK: usize = 16 * 1024;
const PAYLOAD_SIZES: [usize; 2] = [16, 128];

fn gate(rules: serde_json::Value) -> Rc<Gate> {
    gate_with(rules, json!({}))
}

/// A gate of `rules` with the top-level keys of `extra` (`mode`, `shadow`, `provenance`), loaded
/// as the filter loads it (the `provenance.sign` key included).
fn gate_with(rules: serde_json::Value, extra: serde_json::Value) -> Rc<Gate> {
    let mut config = json!({
        "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
        "default_action": "deny",
        "rules": rules
    });
    for (key, value) in extra.as_object().expect("an object") {
        config[key] = value.clone();
    }
    let (gate, _) = Gate::load(&config.to_string(), &|_| Ok(None)).expect("valid benchmark policy");
    Rc::new(gate)
}

fn everyone() -> serde_json::Value {
    json!([{ "name": "everyone", "from": { "principals": ["*"] } }])
}

fn allow_all() -> Rc<Gate> {
    gate(everyone())
}

/// A user nkey seed (nats-server's server/auth_callout_test.go).
const SIGNING_SEED: &str = "SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU";

fn provenance_elsewhere() -> Rc<Gate> {
    gate_with(
        everyone(),
        json!({ "provenance": { "subjects": ["audit.>"] } }),
    )
}

fn provenance_stamped() -> Rc<Gate> {
    gate_with(
        everyone(),
        json!({ "provenance": { "subjects": ["bench.>"] } }),
    )
}

fn provenance_signed() -> Rc<Gate> {
    gate_with(
        everyone(),
        json!({ "provenance": { "subjects": ["bench.>"], "sign": { "seed": SIGNING_SEED } } }),
    )
}

fn restricted_rules(extra_deny: &str) -> serde_json::Value {
    json!([{
        "name": "publisher",
        "from": { "principals": ["cluster.local/ns/billing/sa/publisher"] },
        "permissions": {
            "publish": { "allow": ["bench.>", "_INBOX.>"], "deny": ["bench.admin.>", extra_deny] },
            "subscribe": { "allow": ["bench.>", "_INBOX.>"], "deny": ["bench.secret.*"] },
            "allow_responses": { "max": 1, "expires": "5s" }
        }
    }])
}

fn restricted() -> Rc<Gate> {
    gate(restricted_rules("bench.admin.>"))
}

fn restricted_with_shadow() -> Rc<Gate> {
    let shadow = json!({ "rules": restricted_rules("bench.never.>") });
    gate_with(
        restricted_rules("bench.admin.>"),
        json!({ "shadow": shadow }),
    )
}

fn restricted_dry_run() -> Rc<Gate> {
    gate_with(
        restricted_rules("bench.admin.>"),
        json!({ "mode": "dry_run" }),
    )
}

/// A connection that passed INFO and CONNECT and subscribed with sid 1 (a wildcard SUB, which
/// arms the delivery filter under the restricted policy).
fn established(gate: Rc<Gate>) -> Connection {
    let mut connection = Connection::new(gate);
    connection.set_peer_uri_san(Some(SPIFFE_ID.into()));
    let info = b"INFO {\"server_id\":\"S\",\"headers\":true,\"max_payload\":1048576} \r\n";
    assert_eq!(
        connection.server_data(info, NOW).forward,
        Forward::Unchanged
    );
    let connect = b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB bench.* 1\r\n";
    assert!(matches!(
        connection.client_data(connect, NOW).forward,
        Forward::Replace(_)
    ));
    connection
}

/// `CHUNK`-sized pieces of a stream of `line + payload + CRLF` frames (pieces end anywhere, as
/// TCP reads do), and the number of frames.
fn chunks(line: &str, payload_size: usize) -> (Vec<Vec<u8>>, u64) {
    let frame_len = line.len() + payload_size + 2;
    let frames = (64 * CHUNK / frame_len).max(16);
    let mut stream = Vec::with_capacity(frames * frame_len);
    for _ in 0..frames {
        stream.extend_from_slice(line.as_bytes());
        stream.extend(std::iter::repeat_n(b'x', payload_size));
        stream.extend_from_slice(b"\r\n");
    }
    (
        stream.chunks(CHUNK).map(<[u8]>::to_vec).collect(),
        frames as u64,
    )
}

type PolicyFn = fn() -> Rc<Gate>;

fn per_frame(c: &mut Criterion) {
    let policies: [(&str, PolicyFn); 7] = [
        ("allow-all", allow_all),
        ("restricted", restricted),
        ("restricted+shadow", restricted_with_shadow),
        ("restricted dry run", restricted_dry_run),
        ("allow-all+provenance elsewhere", provenance_elsewhere),
        ("allow-all+provenance", provenance_stamped),
        ("allow-all+provenance signed", provenance_signed),
    ];
    for (direction, line) in [
        ("client PUB", "PUB bench.orders {}\r\n"),
        ("server MSG", "MSG bench.orders 1 {}\r\n"),
    ] {
        let mut group = c.benchmark_group(format!("engine {direction}"));
        for payload_size in PAYLOAD_SIZES {
            let (chunks, frames) =
                chunks(&line.replace("{}", &payload_size.to_string()), payload_size);
            group.throughput(Throughput::Elements(frames));
            for (name, policy) in policies {
                let mut connection = established(policy());
                group.bench_function(BenchmarkId::new(name, payload_size), |b| {
                    b.iter(|| {
                        for chunk in &chunks {
                            let verdict = if direction == "client PUB" {
                                connection.client_data(chunk, NOW)
                            } else {
                                connection.server_data(chunk, NOW)
                            };
                            black_box(verdict);
                        }
                        black_box(connection.take_report());
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, per_frame);
criterion_main!(benches);

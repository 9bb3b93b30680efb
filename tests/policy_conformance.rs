//! Conformance of the policy engine against nats-server as the oracle.
//!
//! Generated permission blocks (seeded; `NATSGUARD_CONFORMANCE_SEED=<u64>` picks another seed)
//! become users of one real nats-server (`authorization { users: [...] }`). Each user runs a
//! generated sequence of SUBs (with and without queue), PUBs, deliveries from an unrestricted
//! feeder (with and without reply subjects, so wildcard SUBs meet deny entries and
//! allow_responses grants) and replies. The test records what nats-server allowed, denied
//! (its -ERR text) and delivered, replays the same sequence on natsguard's engine, and requires
//! the same outcome, except for natsguard's documented deliberate differences (it is stricter,
//! never looser), which are asserted as such.
//!
//! Two assertions, reported separately: **never looser** (whatever natsguard allows or delivers,
//! nats-server allows or delivers), and **identical** except for the listed differences.
//! `make test` compares a few thousand decisions; the stress form (`make stress`, or
//! `NATSGUARD_CONFORMANCE_DECISIONS=<n>`) keeps generating users, a fresh nats-server per batch,
//! until at least `n` decisions were compared.

mod support;

use std::time::Instant;

use serde_json::{json, Value};
use support::conformance::{
    generate_block, generate_ops, permissions, run_user, Client, Difference, Op, Outcome, Rng,
    UserRun,
};

const DEFAULT_SEED: u64 = 0x6e61_7473_6775_6172;
/// Generated users per nats-server (one batch); `make test` runs one batch.
const USERS_PER_BATCH: usize = 200;
const PASSWORD: &str = "pw";

#[derive(Clone, Debug)]
struct Scenario {
    block: Value,
    ops: Vec<Op>,
}

fn generate_scenario(rng: &mut Rng) -> Scenario {
    let block = generate_block(rng);
    let ops = generate_ops(rng);
    Scenario { block, ops }
}

/// Hand-written scenarios that exercise each deliberate difference (and the classics).
fn fixed_scenarios() -> Vec<Scenario> {
    let sub = |sid, subject: &str, queue: Option<&str>| Op::Sub {
        sid,
        subject: subject.into(),
        queue: queue.map(Into::into),
    };
    let publish = |subject: &str| Op::Pub {
        subject: subject.into(),
    };
    let feed = |subject: &str, reply: Option<&str>| Op::Feed {
        subject: subject.into(),
        reply: reply.map(Into::into),
    };
    let reply = |reply: &str| Op::Reply {
        reply: reply.into(),
    };
    vec![
        // Difference 1: a pattern `*` does not match a literal `>` token.
        Scenario {
            block: json!({ "publish": ["foo.*"], "subscribe": ["foo.*", "*"] }),
            ops: vec![
                sub(1, "foo.>", None),
                sub(2, ">", None),
                sub(3, "foo.*", None),
                publish("foo.>"),
                publish("foo.*"),
                publish("foo.x"),
            ],
        },
        // Difference 2: a publish deny entry wins over an allow_responses grant.
        Scenario {
            block: json!({ "publish": { "deny": ["secret.>"] }, "subscribe": ["in.>"], "allow_responses": true }),
            ops: vec![
                sub(1, "in.x", None),
                feed("in.x", Some("secret.reply")),
                reply("secret.reply"),
                feed("in.x", Some("open.reply")),
                reply("open.reply"),
                reply("open.reply"),
            ],
        },
        // Reserved publish subjects and reply prefixes.
        Scenario {
            block: json!({}),
            ops: ["_GR_.x", "_GR_.", "_GR_", "$NRG.x", "$NRG.", "$NRG"]
                .iter()
                .map(|subject| publish(subject))
                .chain(
                    [
                        "_R_.x",
                        "_R_.",
                        "$JS.ACK.s",
                        "$JS.ACK.",
                        "$JS.ACK",
                        "_GR_.x",
                        "_GR_.",
                        "$GNR.x",
                        "ok",
                    ]
                    .iter()
                    .map(|reply| Op::PubWithReply {
                        subject: "plain".into(),
                        reply: (*reply).into(),
                    }),
                )
                .collect(),
        },
        // The queue-entry override and queue denies (reference §3.3).
        Scenario {
            block: json!({ "subscribe": {
                "allow": ["foo.*", "q.>", "qq v1", "qw v1.*", "both", "both v1"],
                "deny": ["foo.secret", "q.deny v2", "q.hidden"]
            }}),
            ops: vec![
                sub(1, "qq", None),
                sub(2, "qq", Some("v1")),
                sub(3, "qq", Some("v2")),
                sub(4, "qw", Some("v1.x")),
                sub(5, "qw", Some("v1")),
                sub(6, "both", None),
                sub(7, "both", Some("v1")),
                sub(8, "both", Some("v2")),
                sub(9, "q.deny", Some("v2")),
                sub(10, "q.deny", Some("v3")),
                sub(11, "q.hidden", None),
                sub(12, "foo.bar", Some("_sys_")),
                sub(13, "foo..x", None),
            ],
        },
        // A queue entry restricts queue subscribers under nats-server's matching: `* q2` matches
        // the literal `>` (both rows were allowed by natsguard before; nats-server refuses them).
        Scenario {
            block: json!({ "subscribe": { "allow": ["* q2", "a.a", ">"] } }),
            ops: vec![
                sub(1, "a.a", None),
                sub(2, ">", Some("q1")),
                sub(3, ">", Some("q2")),
                sub(4, "x", Some("q1")),
                sub(5, "*", Some("v.x")),
            ],
        },
        Scenario {
            block: json!({ "subscribe": ["c", "* q2", ">"] }),
            ops: vec![
                sub(6, ">", Some("q1")),
                sub(7, ">", None),
                sub(8, "c", Some("q1")),
            ],
        },
        // Delivery filter with queue deny entries.
        Scenario {
            block: json!({ "subscribe": { "allow": [">"], "deny": ["foo.secret", "q.deny v2"] } }),
            ops: vec![
                sub(1, "foo.*", None),
                sub(2, "q.*", Some("v2")),
                feed("foo.secret", None),
                feed("foo.public", None),
                feed("q.deny", None),
                feed("q.other", None),
            ],
        },
    ]
}

/// Runs `scenarios` as users of one fresh nats-server.
fn run_batch(scenarios: &[Scenario], first_index: usize, outcome: &mut Outcome) {
    let mut users = vec![json!({ "user": "feeder", "password": PASSWORD })];
    for (offset, scenario) in scenarios.iter().enumerate() {
        users.push(json!({ "user": format!("u{}", first_index + offset), "password": PASSWORD, "permissions": scenario.block }));
    }
    let server = support::NatsServer::start(Some(&format!(
        "authorization {{ users: {} }}\n",
        Value::Array(users)
    )));
    let started = Instant::now();
    let mut feeder = Client::connect(server.port, "feeder", PASSWORD);
    for (offset, scenario) in scenarios.iter().enumerate() {
        let index = first_index + offset;
        let name = format!("u{index}");
        let mut user = Client::connect(server.port, &name, PASSWORD);
        let run = UserRun {
            index,
            name: &name,
            block: &scenario.block,
            ops: &scenario.ops,
        };
        let engine = permissions(&scenario.block);
        run_user(&run, engine, &mut user, &mut feeder, started, outcome);
    }
}

#[test]
fn engine_decides_like_nats_server() {
    let seed = std::env::var("NATSGUARD_CONFORMANCE_SEED")
        .ok()
        .map(|text| {
            text.parse::<u64>()
                .expect("NATSGUARD_CONFORMANCE_SEED must be a u64")
        })
        .unwrap_or(DEFAULT_SEED);
    let target = std::env::var("NATSGUARD_CONFORMANCE_DECISIONS")
        .ok()
        .map(|text| {
            text.parse::<usize>()
                .expect("NATSGUARD_CONFORMANCE_DECISIONS must be a number")
        })
        .unwrap_or(0);
    let mut rng = Rng::new(seed);
    let fixed = fixed_scenarios();
    let fixed_count = fixed.len();
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let mut batch = fixed;
    let mut users = 0;
    loop {
        batch.extend((0..USERS_PER_BATCH).map(|_| generate_scenario(&mut rng)));
        run_batch(&batch, users, &mut outcome);
        users += batch.len();
        batch.clear();
        if outcome.compared >= target || !outcome.looser.is_empty() {
            break;
        }
    }
    eprintln!(
        "seed {seed}: {users} users, {}, in {:?}",
        outcome.summary(),
        started.elapsed()
    );
    outcome.assert_conformant(&format!("seed {seed}"));
    assert!(
        outcome.compared >= 2_000.max(target),
        "only {} decisions compared",
        outcome.compared
    );
    // The fixed scenarios show each deliberate difference (natsguard stricter).
    for (index, difference) in [
        (0, Difference::StarDoesNotMatchGreaterThan),
        (1, Difference::DenyWinsOverResponseGrant),
    ] {
        assert!(
            index < fixed_count && outcome.differences.contains(&(index, difference)),
            "{difference:?} not observed"
        );
    }
}

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

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use natsguard::identity::Identity;
use natsguard::policy::{self, is_reserved_reply, ConnectionPermissions, SubscribeDecision};
use serde_json::{json, Value};

const DEFAULT_SEED: u64 = 0x6e61_7473_6775_6172;
/// Generated users per nats-server (one batch); `make test` runs one batch.
const USERS_PER_BATCH: usize = 200;
const PASSWORD: &str = "pw";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// splitmix64: small, seedable, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn literal(&mut self, min_tokens: usize) -> String {
        let count = min_tokens + self.below(4 - min_tokens);
        (0..count)
            .map(|_| self.pick(&["a", "b", "c"]))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn pattern(&mut self) -> String {
        let count = 1 + self.below(3);
        let mut tokens: Vec<&str> = Vec::new();
        for index in 0..count {
            let last = index + 1 == count;
            tokens.push(match self.below(100) {
                0..=24 => "*",
                25..=39 if last => ">",
                _ => self.pick(&["a", "b", "c"]),
            });
        }
        tokens.join(".")
    }
}

#[derive(Clone, Debug)]
enum Op {
    Sub {
        sid: usize,
        subject: String,
        queue: Option<String>,
    },
    Pub {
        subject: String,
    },
    Feed {
        subject: String,
        reply: Option<String>,
    },
    Reply {
        reply: String,
    },
    PubWithReply {
        subject: String,
        reply: String,
    },
}

#[derive(Clone, Debug)]
struct Scenario {
    block: Value,
    ops: Vec<Op>,
}

fn generate_entries(rng: &mut Rng, max: usize, queues: bool) -> Vec<String> {
    (0..rng.below(max + 1))
        .map(|_| {
            let subject = rng.pattern();
            if queues && rng.chance(25) {
                format!("{subject} {}", rng.pick(&["q1", "v.*", "q2"]))
            } else {
                subject
            }
        })
        .collect()
}

/// Subscribe permissions where queue entries with wildcard subjects meet plain allows that cover
/// them (`* q2` beside `>`): the class where a strict reading of a restricting entry would be
/// looser than nats-server's.
fn generate_queue_restrictions(rng: &mut Rng) -> Value {
    let mut allow: Vec<String> = (0..1 + rng.below(2))
        .map(|_| {
            let subject = match rng.below(4) {
                0 => "*".to_owned(),
                1 => format!("{}.*", rng.pick(&["a", "b"])),
                _ => rng.pattern(),
            };
            format!("{subject} {}", rng.pick(&["q1", "q2", "v.*", "v.>"]))
        })
        .collect();
    for _ in 0..1 + rng.below(2) {
        allow.push(match rng.below(3) {
            0 => ">".to_owned(),
            _ => rng.pattern(),
        });
    }
    let deny = generate_entries(rng, 1, true);
    if rng.chance(30) {
        json!(allow)
    } else {
        json!({ "allow": allow, "deny": deny })
    }
}

fn generate_block(rng: &mut Rng) -> Value {
    let mut block = serde_json::Map::new();
    if rng.chance(75) {
        let allow = generate_entries(rng, 3, false);
        let deny = generate_entries(rng, 2, false);
        let publish = if rng.chance(20) && !allow.is_empty() {
            json!(allow)
        } else {
            json!({ "allow": allow, "deny": deny })
        };
        block.insert("publish".into(), publish);
    }
    if rng.chance(35) {
        block.insert("subscribe".into(), generate_queue_restrictions(rng));
    } else if rng.chance(60) {
        let allow = generate_entries(rng, 3, true);
        let deny = generate_entries(rng, 2, true);
        block.insert("subscribe".into(), json!({ "allow": allow, "deny": deny }));
    }
    match rng.below(100) {
        0..=14 => {
            block.insert("allow_responses".into(), json!(true));
        }
        15..=34 => {
            block.insert(
                "allow_responses".into(),
                json!({ "max": 2, "expires": "1m" }),
            );
        }
        _ => {}
    }
    Value::Object(block)
}

fn generate_scenario(rng: &mut Rng) -> Scenario {
    let block = generate_block(rng);
    let mut ops = Vec::new();
    let mut used_queues = BTreeSet::new();
    let mut replies: Vec<String> = Vec::new();
    for round in 0..3 {
        for sid in 0..2 {
            let subject = match rng.below(100) {
                0..=9 => ">".to_owned(),
                10..=14 => "*".to_owned(),
                15..=64 => rng.pattern(),
                _ => rng.literal(1),
            };
            // One subscription per queue group and connection: two members of one group on one
            // connection would make nats-server's choice between them random.
            let queue = rng
                .chance(45)
                .then(|| {
                    rng.pick(&["q1", "q2", "q3", "v.x", "v.y", "v", "_sys_"])
                        .to_owned()
                })
                .filter(|queue| used_queues.insert(queue.clone()));
            ops.push(Op::Sub {
                sid: round * 2 + sid + 1,
                subject,
                queue,
            });
        }
        for _ in 0..2 {
            let subject = if rng.chance(70) {
                rng.literal(1)
            } else {
                rng.pattern()
            };
            ops.push(Op::Pub { subject });
        }
        for feed in 0..3 {
            let reply = rng.chance(60).then(|| {
                if rng.chance(50) {
                    format!("{}.r{round}{feed}", rng.literal(1))
                } else {
                    format!("_INBOX.r{round}{feed}")
                }
            });
            if let Some(reply) = &reply {
                replies.push(reply.clone());
            }
            ops.push(Op::Feed {
                subject: rng.literal(1),
                reply,
            });
        }
        for _ in 0..2 {
            if !replies.is_empty() {
                let reply = replies[rng.below(replies.len())].clone();
                ops.push(Op::Reply { reply });
            }
        }
    }
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

/// The documented deliberate differences (docs/policy.md); natsguard is the stricter side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Difference {
    StarDoesNotMatchGreaterThan,
    DenyWinsOverResponseGrant,
}

fn has_full_wildcard_token(subject: &str) -> bool {
    subject.split('.').any(|token| token == ">")
}

fn publish_deny_matches(block: &Value, subject: &str) -> bool {
    let deny = block.pointer("/publish/deny").cloned().unwrap_or(json!([]));
    let mut deny_only = permissions(&json!({ "publish": { "deny": deny } }));
    !deny_only.check_publish(subject.as_bytes(), Duration::ZERO)
}

fn permissions(block: &Value) -> ConnectionPermissions {
    let config = json!({
        "identity": { "spiffe": { "trust_domains": ["cluster.local"] } },
        "rules": [{ "name": "user", "permissions": block }]
    });
    let loaded =
        policy::load(&config.to_string()).unwrap_or_else(|error| panic!("{block}: {error}"));
    loaded.policy.resolve(&Identity::default()).unwrap()
}

/// nats-server subject routing for a literal subject (the test's own, independent matcher).
fn routes_to(pattern: &str, subject: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let subject: Vec<&str> = subject.split('.').collect();
    for (index, token) in pattern.iter().enumerate() {
        match *token {
            ">" => return subject.len() > index,
            "*" if index < subject.len() => {}
            literal if subject.get(index) == Some(&literal) => {}
            _ => return false,
        }
    }
    pattern.len() == subject.len()
}

// ---------------------------------------------------------------------------------------
// nats-server process and raw protocol client

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Error(String),
    Message {
        sid: usize,
        subject: String,
        reply: Option<String>,
    },
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16, user: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nats-server");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut client = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let info = client.line();
        assert!(info.starts_with("INFO "), "{info}");
        let connect = json!({ "verbose": false, "pedantic": false, "echo": false, "user": user, "pass": PASSWORD, "protocol": 1 });
        let events = client.round_trip(&format!("CONNECT {connect}\r\n"));
        assert!(events.is_empty(), "{user}: {events:?}");
        client
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("read from nats-server");
        assert!(
            line.ends_with("\r\n"),
            "connection closed or partial line: {line:?}"
        );
        line.truncate(line.len() - 2);
        line
    }

    /// Sends `ops` then PING; returns everything the server sent before the PONG.
    fn round_trip(&mut self, ops: &str) -> Vec<Event> {
        self.writer
            .write_all(format!("{ops}PING\r\n").as_bytes())
            .unwrap();
        let mut events = Vec::new();
        loop {
            let line = self.line();
            if line == "PONG" {
                return events;
            } else if line == "PING" {
                self.writer.write_all(b"PONG\r\n").unwrap();
            } else if let Some(text) = line.strip_prefix("-ERR ") {
                events.push(Event::Error(text.trim_matches('\'').to_owned()));
            } else if let Some(args) = line.strip_prefix("MSG ") {
                let fields: Vec<&str> = args.split(' ').collect();
                let size: usize = fields.last().unwrap().parse().unwrap();
                let mut payload = vec![0; size + 2];
                self.reader.read_exact(&mut payload).unwrap();
                let reply = (fields.len() == 4).then(|| fields[2].to_owned());
                events.push(Event::Message {
                    sid: fields[1].parse().unwrap(),
                    subject: fields[0].to_owned(),
                    reply,
                });
            } else if !line.starts_with("INFO ") && line != "+OK" {
                panic!("unexpected line from nats-server: {line:?}");
            }
        }
    }
}

fn violation(events: &[Event]) -> Option<String> {
    events.iter().find_map(|event| match event {
        Event::Error(text) if text.starts_with("Permissions Violation") => Some(text.clone()),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Outcome {
    compared: usize,
    /// natsguard allowed or delivered what nats-server did not: never acceptable.
    looser: Vec<String>,
    /// natsguard was stricter where no documented difference explains it.
    mismatches: Vec<String>,
    differences: BTreeSet<(usize, Difference)>,
}

fn run_user(
    index: usize,
    scenario: &Scenario,
    user: &mut Client,
    feeder: &mut Client,
    start: Instant,
    outcome: &mut Outcome,
) {
    let mut engine = permissions(&scenario.block);
    let mut engine_subs: Vec<(usize, String, Option<String>)> = Vec::new();
    let record = |outcome: &mut Outcome,
                  op: &Op,
                  server: bool,
                  engine: bool,
                  difference: Option<Difference>| {
        outcome.compared += 1;
        let report = format!(
            "user u{index} block {} op {op:?}: nats-server allowed={server}, natsguard allowed={engine}",
            scenario.block
        );
        match (server, engine, difference) {
            (true, true, _) | (false, false, _) => {}
            (false, true, _) => outcome.looser.push(report),
            (true, false, Some(difference)) => {
                outcome.differences.insert((index, difference));
            }
            (true, false, None) => outcome.mismatches.push(report),
        }
    };
    for op in &scenario.ops {
        let now = start.elapsed();
        match op {
            Op::Sub {
                sid,
                subject,
                queue,
            } => {
                let line = match queue {
                    Some(queue) => format!("SUB {subject} {queue} {sid}\r\n"),
                    None => format!("SUB {subject} {sid}\r\n"),
                };
                let events = user.round_trip(&line);
                let server = violation(&events).is_none();
                let engine_allowed = engine
                    .check_subscribe(subject.as_bytes(), queue.as_deref().map(str::as_bytes))
                    == SubscribeDecision::Allowed;
                if let Some(text) = violation(&events) {
                    let expected = match queue {
                        Some(queue) => format!("Permissions Violation for Subscription to \"{subject}\" using queue \"{queue}\""),
                        None => format!("Permissions Violation for Subscription to \"{subject}\""),
                    };
                    assert_eq!(text, expected);
                }
                let difference = has_full_wildcard_token(subject)
                    .then_some(Difference::StarDoesNotMatchGreaterThan);
                record(outcome, op, server, engine_allowed, difference);
                if server && !engine_allowed {
                    // Keep both sides' subscription sets equal for later deliveries.
                    user.round_trip(&format!("UNSUB {sid}\r\n"));
                }
                let invalid = events
                    .iter()
                    .any(|event| matches!(event, Event::Error(text) if text == "Invalid Subject"));
                if server && engine_allowed && !invalid {
                    engine_subs.push((*sid, subject.clone(), queue.clone()));
                }
            }
            Op::Pub { subject } | Op::Reply { reply: subject } => {
                let events = user.round_trip(&format!("PUB {subject} 0\r\n\r\n"));
                if let Some(text) = violation(&events) {
                    assert_eq!(
                        text,
                        format!("Permissions Violation for Publish to \"{subject}\"")
                    );
                }
                let server = violation(&events).is_none();
                let engine_allowed = engine.check_publish(subject.as_bytes(), now);
                let difference = match op {
                    Op::Reply { .. } if publish_deny_matches(&scenario.block, subject) => {
                        Some(Difference::DenyWinsOverResponseGrant)
                    }
                    _ if has_full_wildcard_token(subject) => {
                        Some(Difference::StarDoesNotMatchGreaterThan)
                    }
                    _ => None,
                };
                record(outcome, op, server, engine_allowed, difference);
            }
            Op::PubWithReply { subject, reply } => {
                let events = user.round_trip(&format!("PUB {subject} {reply} 0\r\n\r\n"));
                let server = violation(&events).is_none();
                if let Some(text) = violation(&events) {
                    assert_eq!(
                        text,
                        format!("Permissions Violation for Publish with Reply of \"{reply}\"")
                    );
                }
                let engine_allowed = engine.check_publish(subject.as_bytes(), now)
                    && !is_reserved_reply(reply.as_bytes());
                record(outcome, op, server, engine_allowed, None);
            }
            Op::Feed { subject, reply } => {
                let line = match reply {
                    Some(reply) => format!("PUB {subject} {reply} 0\r\n\r\n"),
                    None => format!("PUB {subject} 0\r\n\r\n"),
                };
                assert!(feeder.round_trip(&line).is_empty());
                let delivered: BTreeSet<Event> = user.round_trip("").into_iter().collect();
                let mut expected = BTreeSet::new();
                for (sid, pattern, queue) in &engine_subs {
                    if routes_to(pattern, subject)
                        && engine
                            .should_deliver(subject.as_bytes(), queue.as_deref().map(str::as_bytes))
                    {
                        expected.insert(Event::Message {
                            sid: *sid,
                            subject: subject.clone(),
                            reply: reply.clone(),
                        });
                        if let Some(reply) = reply {
                            engine.record_delivered_reply(reply.as_bytes(), now);
                        }
                    }
                }
                outcome.compared += 1;
                let report = |side: &str, extra: Vec<&Event>| {
                    format!(
                        "user u{index} block {} op {op:?}: only {side} delivered {extra:?}",
                        scenario.block
                    )
                };
                let only_natsguard: Vec<&Event> = expected.difference(&delivered).collect();
                if !only_natsguard.is_empty() {
                    outcome.looser.push(report("natsguard", only_natsguard));
                }
                let only_server: Vec<&Event> = delivered.difference(&expected).collect();
                if !only_server.is_empty() {
                    outcome.mismatches.push(report("nats-server", only_server));
                }
            }
        }
    }
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
    let mut feeder = Client::connect(server.port, "feeder");
    for (offset, scenario) in scenarios.iter().enumerate() {
        let index = first_index + offset;
        let mut user = Client::connect(server.port, &format!("u{index}"));
        run_user(index, scenario, &mut user, &mut feeder, started, outcome);
    }
}

fn listed(reports: &[String]) -> String {
    reports
        .iter()
        .take(20)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
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
    let mut rng = Rng(seed);
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
        "seed {seed}: {users} users, {} decisions compared, {} looser, {} unexplained stricter, {} deliberate differences, in {:?}",
        outcome.compared,
        outcome.looser.len(),
        outcome.mismatches.len(),
        outcome.differences.len(),
        started.elapsed()
    );
    assert!(
        outcome.looser.is_empty(),
        "seed {seed}: natsguard is looser than nats-server:\n{}",
        listed(&outcome.looser)
    );
    assert!(
        outcome.mismatches.is_empty(),
        "seed {seed}: natsguard differs from nats-server:\n{}",
        listed(&outcome.mismatches)
    );
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

//! The policy conformance harness: natsguard's engine against a real nats-server as the
//! oracle. A user connection of nats-server runs a sequence of SUBs (with and without queue),
//! PUBs, deliveries from an unrestricted feeder (with and without reply subjects, so wildcard
//! SUBs meet deny entries and allow_responses grants) and replies; the same sequence runs on
//! natsguard's `ConnectionPermissions`; allowed, denied (the -ERR text) and delivered are
//! compared, natsguard's documented deliberate differences (it is stricter) set apart.
//! Used by tests/policy_conformance.rs (generated permission blocks) and
//! tests/import_command.rs (imported nats-server configurations).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use natsguard::identity::Identity;
use natsguard::policy::{self, is_reserved_reply, ConnectionPermissions, SubscribeDecision};
use serde_json::{json, Value};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The subjects and queue groups generated operations are made of.
#[derive(Clone, Debug)]
pub struct Vocabulary {
    /// Literal subject tokens.
    pub tokens: Vec<String>,
    /// Permission entries to draw subjects from (instantiated or kept as patterns), so that
    /// operations meet the entries of a real configuration; empty: tokens only.
    pub patterns: Vec<String>,
    /// Queue groups of queue subscriptions.
    pub queues: Vec<String>,
}

impl Default for Vocabulary {
    fn default() -> Self {
        let strings = |items: &[&str]| items.iter().map(|item| (*item).to_owned()).collect();
        Vocabulary {
            tokens: strings(&["a", "b", "c"]),
            patterns: Vec::new(),
            queues: strings(&["q1", "q2", "q3", "v.x", "v.y", "v", "_sys_"]),
        }
    }
}

/// splitmix64: small, seedable, reproducible; subjects from a [`Vocabulary`].
pub struct Rng {
    state: u64,
    vocabulary: Vocabulary,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng::with_vocabulary(seed, Vocabulary::default())
    }

    pub fn with_vocabulary(seed: u64, vocabulary: Vocabulary) -> Rng {
        Rng {
            state: seed,
            vocabulary,
        }
    }

    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn token(&mut self) -> String {
        let index = self.below(self.vocabulary.tokens.len());
        self.vocabulary.tokens[index].clone()
    }

    fn queue(&mut self) -> String {
        let index = self.below(self.vocabulary.queues.len());
        self.vocabulary.queues[index].clone()
    }

    /// One of the vocabulary's patterns, split into tokens (never drawn when it has none).
    fn vocabulary_pattern(&mut self) -> Option<Vec<String>> {
        if self.vocabulary.patterns.is_empty() || !self.chance(50) {
            return None;
        }
        let index = self.below(self.vocabulary.patterns.len());
        let pattern = self.vocabulary.patterns[index].clone();
        Some(pattern.split('.').map(str::to_owned).collect())
    }

    pub fn literal(&mut self, min_tokens: usize) -> String {
        if let Some(pattern) = self.vocabulary_pattern() {
            let mut tokens = Vec::new();
            for token in pattern {
                match token.as_str() {
                    "*" => tokens.push(self.token()),
                    ">" => {
                        for _ in 0..1 + self.below(2) {
                            tokens.push(self.token());
                        }
                    }
                    _ => tokens.push(token),
                }
            }
            return tokens.join(".");
        }
        let count = min_tokens + self.below(4 - min_tokens);
        (0..count)
            .map(|_| self.token())
            .collect::<Vec<_>>()
            .join(".")
    }

    pub fn pattern(&mut self) -> String {
        if let Some(pattern) = self.vocabulary_pattern() {
            let last = pattern.len() - 1;
            return pattern
                .into_iter()
                .enumerate()
                .map(|(index, token)| match self.below(100) {
                    0..=59 => token,
                    60..=79 => "*".to_owned(),
                    80..=89 if index == last => ">".to_owned(),
                    _ => self.token(),
                })
                .collect::<Vec<_>>()
                .join(".");
        }
        let count = 1 + self.below(3);
        let mut tokens: Vec<String> = Vec::new();
        for index in 0..count {
            let last = index + 1 == count;
            tokens.push(match self.below(100) {
                0..=24 => "*".to_owned(),
                25..=39 if last => ">".to_owned(),
                _ => self.token(),
            });
        }
        tokens.join(".")
    }
}

#[derive(Clone, Debug)]
pub enum Op {
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

/// One connection's operations: three rounds of two SUBs (some with a queue group), two PUBs,
/// three deliveries from the feeder (some with a reply subject) and up to two replies.
pub fn generate_ops(rng: &mut Rng) -> Vec<Op> {
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
                .then(|| rng.queue())
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
    ops
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

/// A permissions block (natsguard's JSON, nats-server's meaning): publish and subscribe
/// allow/deny lists of patterns, queue entries, allow_responses.
pub fn generate_block(rng: &mut Rng) -> Value {
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

/// The documented deliberate differences (docs/policy.md); natsguard is the stricter side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Difference {
    StarDoesNotMatchGreaterThan,
    DenyWinsOverResponseGrant,
}

pub fn has_full_wildcard_token(subject: &str) -> bool {
    subject.split('.').any(|token| token == ">")
}

pub fn publish_deny_matches(block: &Value, subject: &str) -> bool {
    let deny = block.pointer("/publish/deny").cloned().unwrap_or(json!([]));
    let mut deny_only = permissions(&json!({ "publish": { "deny": deny } }));
    !deny_only.check_publish(subject.as_bytes(), Duration::ZERO)
}

/// The engine for one permissions block (a rule that every connection matches).
pub fn permissions(block: &Value) -> ConnectionPermissions {
    let config = json!({
        "identity": { "spiffe": { "trust_domains": ["cluster.local"] } },
        "rules": [{ "name": "user", "permissions": block }]
    });
    let loaded =
        policy::load(&config.to_string()).unwrap_or_else(|error| panic!("{block}: {error}"));
    loaded.policy.resolve(&Identity::default()).unwrap()
}

/// nats-server subject routing for a literal subject (the test's own, independent matcher).
pub fn routes_to(pattern: &str, subject: &str) -> bool {
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
// Raw protocol client

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    Error(String),
    Message {
        sid: usize,
        subject: String,
        reply: Option<String>,
    },
}

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(port: u16, user: &str, password: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nats-server");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut client = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let info = client.line();
        assert!(info.starts_with("INFO "), "{info}");
        let connect = json!({ "verbose": false, "pedantic": false, "echo": false, "user": user, "pass": password, "protocol": 1 });
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
    pub fn round_trip(&mut self, ops: &str) -> Vec<Event> {
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

pub fn violation(events: &[Event]) -> Option<String> {
    events.iter().find_map(|event| match event {
        Event::Error(text) if text.starts_with("Permissions Violation") => Some(text.clone()),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------

#[derive(Default)]
pub struct Outcome {
    pub compared: usize,
    /// natsguard allowed or delivered what nats-server did not: never acceptable.
    pub looser: Vec<String>,
    /// natsguard was stricter where no documented difference explains it.
    pub mismatches: Vec<String>,
    pub differences: BTreeSet<(usize, Difference)>,
}

impl Outcome {
    /// The counts, for a test's summary line.
    pub fn summary(&self) -> String {
        format!(
            "{} decisions compared, {} looser, {} unexplained stricter, {} deliberate differences",
            self.compared,
            self.looser.len(),
            self.mismatches.len(),
            self.differences.len()
        )
    }

    /// Never looser than nats-server, and identical except the documented differences.
    pub fn assert_conformant(&self, context: &str) {
        assert!(
            self.looser.is_empty(),
            "{context}: natsguard is looser than nats-server:\n{}",
            listed(&self.looser)
        );
        assert!(
            self.mismatches.is_empty(),
            "{context}: natsguard differs from nats-server:\n{}",
            listed(&self.mismatches)
        );
    }
}

/// One nats-server user under test.
pub struct UserRun<'a> {
    /// Its number in the run (the key of [`Outcome::differences`]).
    pub index: usize,
    pub name: &'a str,
    /// Its natsguard permissions block (`rules[].permissions`), for the documented differences.
    pub block: &'a Value,
    pub ops: &'a [Op],
}

/// Runs `run.ops` on nats-server as `user` (deliveries published by `feeder`) and on
/// natsguard's `engine`, and records the comparison.
pub fn run_user(
    run: &UserRun,
    mut engine: ConnectionPermissions,
    user: &mut Client,
    feeder: &mut Client,
    start: Instant,
    outcome: &mut Outcome,
) {
    let UserRun {
        index,
        name,
        block,
        ops,
    } = *run;
    let mut engine_subs: Vec<(usize, String, Option<String>)> = Vec::new();
    let record = |outcome: &mut Outcome,
                  op: &Op,
                  server: bool,
                  engine: bool,
                  difference: Option<Difference>| {
        outcome.compared += 1;
        let report = format!(
            "user {name} block {} op {op:?}: nats-server allowed={server}, natsguard allowed={engine}",
            block
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
    for op in ops {
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
                    Op::Reply { .. } if publish_deny_matches(block, subject) => {
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
                        "user {name} block {} op {op:?}: only {side} delivered {extra:?}",
                        block
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

fn listed(reports: &[String]) -> String {
    reports
        .iter()
        .take(20)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

//! Rolling a policy out in front of a live deployment, through real Envoy and nats-server: a
//! dry run forwards everything the policy would deny and counts it; a shadow policy changes no
//! byte of the traffic and reports each difference with its audit line and counter; promoting
//! the shadow by ECDS then enforces it on the open connections.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{Mesh, MeshOptions, NatsServer, Session};

const BILLING_RULES: &str = r#"[
  { "name": "billing publishers",
    "from": { "principals": ["cluster.local/ns/billing/sa/publisher"] },
    "permissions": { "publish": { "allow": ["billing.>"], "deny": ["billing.admin.>"] },
                     "subscribe": { "allow": ["_INBOX.>"] } } },
  { "name": "billing subscribers",
    "from": { "principals": ["cluster.local/ns/billing/sa/subscriber"] },
    "permissions": { "publish": { "deny": [">"] },
                     "subscribe": { "allow": ["billing.>"], "deny": ["billing.secret"] } } }
]"#;

fn policy(extra: &str, rules: &str) -> String {
    format!(
        r#"{{ "identity": {{ "spiffe": {{ "required": true, "trust_domains": ["cluster.local"] }} }},
             "default_action": "deny", {extra} "rules": {rules} }}"#
    )
}

/// natsguard's counters whose names start with `natsguard.<prefix>`, without that prefix.
fn counters(mesh: &Mesh, prefix: &str) -> BTreeMap<String, u64> {
    let full = format!("wasmcustom.natsguard.{prefix}");
    mesh.stats()
        .into_iter()
        .filter_map(|(name, value)| Some((name.strip_prefix(&full)?.to_owned(), value)))
        .collect()
}

/// Waits until natsguard's counters under `prefix` are `expected` (stats are flushed
/// asynchronously).
fn wait_for_counters(mesh: &Mesh, prefix: &str, expected: &[(&str, u64)]) {
    let expected: BTreeMap<String, u64> = expected
        .iter()
        .map(|(name, value)| (name.to_string(), *value))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = counters(mesh, prefix);
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "natsguard.{prefix}*: {found:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn shadow_diffs(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines
        .iter()
        .filter(|line| line["natsguard"] == "shadow_diff")
        .collect()
}

#[test]
fn a_dry_run_forwards_what_the_policy_would_deny_and_counts_it() {
    let dry_run = policy(r#""mode": "dry_run","#, BILLING_RULES);
    let mesh = Mesh::start_with_options(
        &dry_run,
        NatsServer::start(None),
        MeshOptions {
            workers: 2,
            ..MeshOptions::default()
        },
    );
    let mut subscriber = Session::open(mesh.port_of("subscriber"), "");
    assert_eq!(
        subscriber.exchange("SUB billing.> 1\r\nSUB orders.> 2\r\n"),
        Vec::<String>::new()
    );
    let mut publisher = Session::open(mesh.port_of("publisher"), "");
    // Two denied by the policy (billing.admin.x, orders.new), forwarded by the dry run: no -ERR,
    // and nats-server delivers them (billing.secret only the subscriber's filter would drop).
    assert_eq!(
        publisher.exchange(
            "PUB billing.admin.x 1\r\na\r\nPUB billing.secret 1\r\ns\r\nPUB orders.new 1\r\no\r\n"
        ),
        Vec::<String>::new()
    );
    let delivered = subscriber.exchange("");
    assert_eq!(
        delivered,
        [
            "MSG billing.admin.x 1 1",
            "a",
            "MSG billing.secret 1 1",
            "s",
            "MSG orders.new 2 1",
            "o"
        ]
    );
    // A connection no rule matches is let in too.
    let mut visitor = Session::open(mesh.port_of("denied"), "");
    assert_eq!(
        visitor.exchange("PUB anything 1\r\nx\r\n"),
        Vec::<String>::new()
    );
    wait_for_counters(
        &mesh,
        "shadow.would_deny.",
        &[
            ("connect", 1),
            ("publish", 2),
            ("subscribe", 1),
            ("deliver", 1),
        ],
    );
    assert_eq!(counters(&mesh, "publish_denied"), BTreeMap::new());
    assert_eq!(counters(&mesh, "subscribe_denied"), BTreeMap::new());
    assert_eq!(counters(&mesh, "deliveries_filtered"), BTreeMap::new());
    let lines = mesh.wait_for_audit("the dry run's differences", |lines| {
        shadow_diffs(lines).len() >= 5
    });
    let publish = shadow_diffs(&lines)
        .into_iter()
        .find(|line| line["subject"] == "billing.admin.x")
        .expect("the would-deny line of billing.admin.x");
    assert_eq!(publish["reason"], "would_deny");
    assert_eq!(publish["mode"], "dry_run");
    assert_eq!(
        publish["principal"],
        "cluster.local/ns/billing/sa/publisher"
    );
    assert_eq!(publish["enforced"]["entry"], "dry run: nothing is enforced");
    assert_eq!(publish["shadow"]["rule"], "billing publishers");
    assert_eq!(publish["shadow"]["entry"], "deny billing.admin.>");
    let start = lines
        .iter()
        .find(|line| line["natsguard"] == "connection_start")
        .unwrap();
    assert_eq!(start["mode"], "dry_run");
    // The load warning, once per Envoy (not once per VM).
    let warnings = mesh
        .envoy_log()
        .matches("natsguard: mode: dry_run: the policy is evaluated and reported")
        .count();
    assert_eq!(warnings, 1, "{}", mesh.envoy_log());
}

#[test]
fn a_shadow_difference_is_reported_and_changes_no_byte_then_the_promoted_shadow_is_enforced() {
    let enforced = policy("", BILLING_RULES);
    let narrower = BILLING_RULES
        .replace(
            r#""deny": ["billing.admin.>"]"#,
            r#""deny": ["billing.admin.>", "billing.refunds.>"]"#,
        )
        .replace(
            r#""deny": ["billing.secret"]"#,
            r#""deny": ["billing.secret", "billing.audit.>"]"#,
        );
    let with_shadow = policy(
        &format!(r#""shadow": {{ "rules": {narrower} }},"#),
        BILLING_RULES,
    );
    let mesh = Mesh::start(&enforced);
    let mut subscriber = Session::open(mesh.port_of("subscriber"), "");
    assert_eq!(
        subscriber.exchange("SUB billing.audit.log 1\r\n"),
        Vec::<String>::new()
    );
    mesh.update_policy(&with_shadow)
        .expect("the shadow configuration is applied");
    // The open subscription is read again under the shadow: it would be revoked, it is not.
    wait_for_counters(&mesh, "shadow.would_deny.", &[("subscribe", 1)]);
    let mut publisher = Session::open(mesh.port_of("publisher"), "");
    let transcript = publisher.exchange("PUB billing.refunds.1 1\r\nr\r\nPUB billing.admin.x 1\r\na\r\nPUB billing.audit.log 1\r\nl\r\n");
    // Exactly what the enforced policy alone gives.
    assert_eq!(
        transcript,
        [r#"-ERR 'Permissions Violation for Publish to "billing.admin.x"'"#]
    );
    assert_eq!(subscriber.exchange(""), ["MSG billing.audit.log 1 1", "l"]);
    wait_for_counters(
        &mesh,
        "shadow.would_deny.",
        &[("subscribe", 1), ("publish", 1)],
    );
    let lines = mesh.wait_for_audit("the shadow's publish difference", |lines| {
        shadow_diffs(lines).iter().any(|line| line["op"] == "PUB")
    });
    let publish = shadow_diffs(&lines)
        .into_iter()
        .find(|line| line["op"] == "PUB")
        .unwrap()
        .clone();
    assert_eq!(publish["subject"], "billing.refunds.1");
    assert_eq!(publish["mode"], "enforce");
    assert_eq!(publish["enforced"]["decision"], "allow");
    assert_eq!(publish["enforced"]["entry"], "allow billing.>");
    assert_eq!(publish["shadow"]["decision"], "deny");
    assert_eq!(publish["shadow"]["entry"], "deny billing.refunds.>");
    let subscribe = shadow_diffs(&lines)
        .into_iter()
        .find(|line| line["op"] == "SUB")
        .unwrap()
        .clone();
    assert_eq!(subscribe["subject"], "billing.audit.log");
    assert_eq!(subscribe["shadow"]["entry"], "deny billing.audit.>");
    // Promoted: the open subscription is revoked as nats-server's reload revokes it.
    mesh.update_policy(&policy("", &narrower))
        .expect("the promoted policy is applied");
    let revoked = subscriber.exchange("");
    assert_eq!(
        revoked,
        [r#"-ERR 'Permissions Violation for Subscription to "billing.audit.log" (sid "1")'"#]
    );
    assert_eq!(
        publisher.exchange("PUB billing.refunds.2 1\r\nr\r\n"),
        [r#"-ERR 'Permissions Violation for Publish to "billing.refunds.2"'"#]
    );
}

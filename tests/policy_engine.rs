//! Table-driven tests of the policy engine: subject matching, SUB/PUB checks, the delivery
//! filter, allow_responses, rule matching, templates (and injection attempts) and every
//! configuration error with its exact JSON path.

use std::time::Duration;

use natsguard::identity::{Identity, SpiffeId, VerifiedJwt};
use natsguard::policy::{
    self, is_reserved_reply, ConnectionPermissions, DefaultAction, NkeySeed, SubscribeDecision,
    UpstreamCredentials, MAX_TRACKED_REPLIES,
};
use serde_json::{json, Value};

/// A valid server nkey seed (all-zero-ish test key, never used outside tests).
const TEST_SEED: &str = "SNAAAAICAMCAKBQHBAEQUCYMBUHA6EARCIJRIFIWC4MBSGQ3DQOR4H2D5U";

/// Loads a configuration, adding a minimal `identity` section when it has none.
fn load(mut config: Value) -> Result<policy::LoadedPolicy, policy::ConfigError> {
    if let Some(object) = config.as_object_mut() {
        object
            .entry("identity")
            .or_insert_with(|| json!({ "spiffe": { "trust_domains": ["cluster.local"] } }));
    }
    policy::load(&config.to_string())
}

fn permissions(block: Value) -> ConnectionPermissions {
    let config = json!({ "rules": [{ "name": "only", "permissions": block }] });
    let loaded = load(config).unwrap();
    loaded.policy.resolve(&Identity::default()).unwrap()
}

fn spiffe(trust_domain: &str, namespace: &str, service_account: &str) -> SpiffeId {
    SpiffeId {
        trust_domain: trust_domain.to_owned(),
        path: format!("/ns/{namespace}/sa/{service_account}"),
        namespace: Some(namespace.to_owned()),
        service_account: Some(service_account.to_owned()),
    }
}

fn jwt(issuer: &str, subject: &str, claims: Value) -> VerifiedJwt {
    VerifiedJwt {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        audiences: vec!["nats".to_owned()],
        expires_at: None,
        not_before: None,
        clock_skew_seconds: 0,
        provider: "idp".to_owned(),
        claims: claims.as_object().cloned().unwrap_or_default(),
    }
}

fn identity(spiffe_id: Option<SpiffeId>, token: Option<VerifiedJwt>) -> Identity {
    Identity {
        spiffe: spiffe_id,
        jwt: token,
    }
}

fn sub(perms: &mut ConnectionPermissions, subject: &str, queue: Option<&str>) -> bool {
    perms.check_subscribe(subject.as_bytes(), queue.map(str::as_bytes))
        == SubscribeDecision::Allowed
}

fn at(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[test]
fn subscribe_checks_follow_nats_server_queue_semantics() {
    // The permission block of the reference's §3.3 example (verified against nats-server).
    let block = json!({ "subscribe": {
        "allow": ["foo.*", "q.>", "qq v1", "qw v1.*", "both", "both v1"],
        "deny": ["foo.secret", "q.deny v2", "q.hidden"],
    }});
    let cases: &[(&str, Option<&str>, bool)] = &[
        ("qq", None, false),
        ("qq", Some("v1"), true),
        ("qq", Some("v2"), false),
        ("qw", Some("v1.x"), true),
        ("qw", Some("v1"), false),
        ("both", None, true),
        ("both", Some("v1"), true),
        ("both", Some("v2"), false),
        ("foo.bar", Some("anything"), true),
        ("q.deny", Some("v2"), false),
        ("q.deny", Some("v3"), true),
        ("q.deny", None, true),
        ("q.hidden", None, false),
        ("foo.secret", None, false),
        ("foo.*", None, true),
        ("foo..x", None, false),
        ("foo.bar", Some("_sys_"), false),
        ("foo.bar", Some("_SYS_"), true),
        ("nope", None, false),
    ];
    for (subject, queue, expected) in cases {
        let mut perms = permissions(block.clone());
        assert_eq!(
            sub(&mut perms, subject, *queue),
            *expected,
            "SUB {subject} {queue:?}"
        );
    }
}

#[test]
fn wildcard_subscriptions_use_the_literal_token_rule_strictly() {
    let cases: &[(&[&str], &str, bool)] = &[
        (&["foo.*"], "foo.bar", true),
        (&["foo.*"], "foo.*", true),
        // nats-server allows these two (a pattern `*` consumes a literal `>`); natsguard does not.
        (&["foo.*"], "foo.>", false),
        (&["*"], ">", false),
        (&["foo.>"], "foo.*", true),
        (&["foo.>"], "foo.>", true),
        (&["foo.bar"], "foo.*", false),
        (&["gt.*"], "gt.*.x", false),
        (&["gt.*"], "gt", false),
        (&["gt.*"], "*", false),
        (&[">"], ">", true),
        (&["a.*.c"], "a.*.c", true),
        (&["a.*.c"], "a.>", false),
    ];
    for (allow, subject, expected) in cases {
        let mut perms = permissions(json!({ "subscribe": { "allow": allow } }));
        assert_eq!(
            sub(&mut perms, subject, None),
            *expected,
            "allow {allow:?} SUB {subject}"
        );
    }
}

/// Where natsguard's strict reading of `*` against a `>` token and nats-server's reading differ,
/// the one that denies more decides: a queue entry restricts under nats-server's (wider)
/// matching, a grant needs both readings. Rows marked (issue 12) were allowed before the fix
/// and are refused by nats-server 2.15.1.
#[test]
fn a_restricting_queue_entry_is_matched_the_way_nats_server_matches_it() {
    let cases: &[(Value, &str, Option<&str>, bool)] = &[
        // (issue 12) `* q2` matches the literal `>` for nats-server: queue subscribers of `>`
        // are limited to q2, whatever the plain `>` allows.
        (
            json!({ "allow": ["* q2", "a.a", ">"] }),
            ">",
            Some("q1"),
            false,
        ),
        (json!(["c", "* q2", ">"]), ">", Some("q1"), false),
        // Both readings allow this one: nats-server through `* q2`, the strict one through `>`.
        (
            json!({ "allow": ["* q2", "a.a", ">"] }),
            ">",
            Some("q2"),
            true,
        ),
        (json!({ "allow": ["* q2", "a.a", ">"] }), ">", None, true),
        (
            json!({ "allow": ["* q2", "a.a", ">"] }),
            "x",
            Some("q2"),
            true,
        ),
        (
            json!({ "allow": ["* q2", "a.a", ">"] }),
            "x",
            Some("q1"),
            false,
        ),
        (
            json!({ "allow": ["foo.* q2", "foo.>"] }),
            "foo.>",
            Some("q1"),
            false,
        ),
        (
            json!({ "allow": ["foo.* q2", "foo.>"] }),
            "foo.>",
            Some("q2"),
            true,
        ),
        (
            json!({ "allow": ["foo.* q2", "foo.>"] }),
            "foo.>",
            None,
            true,
        ),
        (
            json!({ "allow": ["foo.* q2", "foo.>"] }),
            "foo.*",
            Some("q2"),
            true,
        ),
        (
            json!({ "allow": ["foo.* q2", "foo.>"] }),
            "foo.*",
            Some("q1"),
            false,
        ),
        (
            json!({ "allow": ["a.*.c q2", "a.>"] }),
            "a.>",
            Some("q1"),
            true,
        ),
        (
            json!({ "allow": ["a.*.c q2", "a.>"] }),
            "a.>.c",
            Some("q1"),
            false,
        ),
        // A grant still needs the strict reading: `* q2` does not grant `>` to q2.
        (json!({ "allow": ["* q2"] }), ">", Some("q2"), false),
        (json!({ "allow": ["* q2", ">"] }), "*", Some("q2"), true),
    ];
    for (allow, subject, queue, expected) in cases {
        let mut perms = permissions(json!({ "subscribe": allow }));
        assert_eq!(
            sub(&mut perms, subject, *queue),
            *expected,
            "allow {allow} SUB {subject} {queue:?}"
        );
    }
}

/// nats-server arms its delivery filter on every SUB its reading allows. A SUB that only
/// natsguard refuses (`*` against `>`) must arm natsguard's filter too, or the connection's
/// other deliveries (a JetStream pull on an inbox sid) would pass where nats-server drops them.
#[test]
fn a_sub_only_natsguard_refuses_still_arms_the_delivery_filter() {
    let mut perms = permissions(
        json!({ "subscribe": { "allow": ["foo.*", "_INBOX.>"], "deny": ["foo.secret"] } }),
    );
    assert!(sub(&mut perms, "_INBOX.x", None));
    assert!(!perms.delivery_filter_armed());
    assert!(!sub(&mut perms, "foo.>", None), "natsguard refuses foo.>");
    assert!(
        perms.delivery_filter_armed(),
        "nats-server allowed foo.> and armed its filter"
    );
    assert!(!perms.should_deliver(b"foo.secret", None));
    // A SUB that nats-server refuses too arms nothing.
    let mut perms =
        permissions(json!({ "subscribe": { "allow": ["bar.*"], "deny": ["foo.secret"] } }));
    assert!(!sub(&mut perms, "foo.*", None));
    assert!(!perms.delivery_filter_armed());
}

#[test]
fn deny_entries_block_literal_overlaps_and_filter_deliveries() {
    let mut perms = permissions(json!({ "subscribe": { "deny": ["foo.secret", "secret.>"] } }));
    assert!(!sub(&mut perms, "secret.>", None));
    assert!(!sub(&mut perms, "secret.x", None));
    assert!(sub(&mut perms, "foo.bar", None));
    assert!(
        !perms.delivery_filter_armed(),
        "a literal SUB never arms the filter"
    );
    assert!(
        perms.should_deliver(b"foo.secret", None),
        "unarmed: nothing filtered"
    );
    assert!(sub(&mut perms, "other.*", None));
    assert!(
        !perms.delivery_filter_armed(),
        "other.* cannot overlap a deny entry"
    );
    assert!(sub(&mut perms, "foo.*", None));
    assert!(perms.delivery_filter_armed());
    assert!(!perms.should_deliver(b"foo.secret", None));
    assert!(perms.should_deliver(b"foo.public", None));
    // Every delivery is checked against the deny list, on any subscription.
    assert!(!perms.should_deliver(b"secret.orders", None));
    assert!(
        !perms.should_deliver(b"secret.orders", None),
        "cached decision"
    );
    // Deny with a `*` still matches a literal `>` (matching more is the safe side).
    let mut perms = permissions(json!({ "subscribe": { "deny": ["foo.*"] } }));
    assert!(!sub(&mut perms, "foo.>", None));
}

#[test]
fn queue_deny_entries_filter_only_their_queue() {
    let mut perms = permissions(json!({ "subscribe": { "deny": ["q.deny v2", "q.w v.*"] } }));
    assert!(sub(&mut perms, "q.*", Some("v2")));
    assert!(perms.delivery_filter_armed());
    assert!(!perms.should_deliver(b"q.deny", Some(b"v2")));
    assert!(perms.should_deliver(b"q.deny", Some(b"v3")));
    assert!(perms.should_deliver(b"q.deny", None));
    assert!(!perms.should_deliver(b"q.w", Some(b"v.1")));
    assert!(perms.should_deliver(b"q.w", Some(b"v")));
    // An exact queue SUB that overlaps a deny entry arms the filter too.
    let mut perms = permissions(json!({ "subscribe": { "deny": ["x.y v2"] } }));
    assert!(sub(&mut perms, "x.y", Some("g")));
    assert!(perms.delivery_filter_armed());
}

#[test]
fn publish_checks() {
    let block =
        json!({ "publish": { "allow": ["foo.*", "bar.>", "_GR_.x"], "deny": ["bar.secret"] } });
    let cases: &[(&[u8], bool)] = &[
        (b"foo.x", true),
        (b"foo.*", true),
        // nats-server allows publishing the literal subject `foo.>` under allow `foo.*`.
        (b"foo.>", false),
        (b"bar.*", true),
        (b"bar.a.b", true),
        (b"bar.secret", false),
        (b"foo..x", false),
        (b"", false),
        (b"foo", false),
        (b"foo.\xff\xfe", true),
        (b"_GR_.x", false),
    ];
    for (subject, expected) in cases {
        let mut perms = permissions(block.clone());
        let first = perms.check_publish(subject, at(0));
        let cached = perms.check_publish(subject, at(0));
        assert_eq!(
            (first, cached),
            (*expected, *expected),
            "PUB {:?}",
            String::from_utf8_lossy(subject)
        );
    }
    let mut unrestricted = permissions(json!({}));
    assert!(unrestricted.check_publish(b"anything.at.all", at(0)));
    assert!(
        !unrestricted.check_publish(b"_GR_.abc.def", at(0)),
        "gateway replies are reserved"
    );
    assert!(
        !unrestricted.check_publish(b"$NRG.x", at(0)),
        "Raft subjects are reserved"
    );
    assert!(unrestricted.check_publish(b"_GR_", at(0)));
    assert!(unrestricted.check_publish(b"_GR_.", at(0)));
    assert!(!unrestricted.check_publish(b"$NRG.", at(0)));
}

#[test]
fn reserved_reply_prefixes() {
    for (reply, reserved) in [
        ("_R_.x", true),
        ("_R_.", true),
        ("$JS.ACK.S.C.1", true),
        ("$JS.ACK.", false),
        ("$JS.ACK", false),
        ("_GR_.x", true),
        ("_GR_.", false),
        ("$GNR.x", false),
        ("_INBOX.x", false),
    ] {
        assert_eq!(is_reserved_reply(reply.as_bytes()), reserved, "{reply}");
    }
}

#[test]
fn allow_responses_grants_replies_max_times_until_expiry() {
    // `true`: nats-server defaults, max 1 and 2 minutes; no publish allow list → empty list.
    let mut perms = permissions(json!({ "allow_responses": true }));
    assert!(!perms.check_publish(b"somewhere", at(0)));
    perms.record_delivered_reply(b"rep.1", at(0));
    assert!(perms.check_publish(b"rep.1", at(10)));
    assert!(!perms.check_publish(b"rep.1", at(20)), "max 1");
    perms.record_delivered_reply(b"rep.2", at(0));
    assert!(
        !perms.check_publish(b"rep.2", at(120_001)),
        "expired after 2 minutes"
    );
    // Explicit limits.
    let mut perms = permissions(json!({ "allow_responses": { "max": 2, "expires": "5s" } }));
    perms.record_delivered_reply(b"rep.1", at(0));
    assert!(perms.check_publish(b"rep.1", at(1)));
    assert!(perms.check_publish(b"rep.1", at(2)));
    assert!(!perms.check_publish(b"rep.1", at(3)));
    perms.record_delivered_reply(b"rep.3", at(0));
    assert!(perms.check_publish(b"rep.3", at(5_000)));
    assert!(!perms.check_publish(b"rep.3", at(5_001)));
    // Negative: unlimited.
    let mut perms = permissions(json!({ "allow_responses": { "max": -1, "expires": "-1s" } }));
    perms.record_delivered_reply(b"rep", at(0));
    for step in 0..100 {
        assert!(perms.check_publish(b"rep", at(step * 3_600_000)));
    }
    // Explicit allows still work and are not tracked; responses never grant subscribe.
    let mut perms = permissions(json!({
        "publish": ["explicit.>"], "subscribe": ["in.>"], "allow_responses": true
    }));
    assert!(perms.check_publish(b"explicit.x", at(0)));
    perms.record_delivered_reply(b"rep.x", at(0));
    assert!(!sub(&mut perms, "rep.x", None));
    assert!(perms.check_publish(b"rep.x", at(0)));
}

#[test]
fn allow_responses_redelivery_consumes_like_nats_server_and_deny_wins() {
    let mut perms = permissions(json!({ "allow_responses": { "max": 2 } }));
    perms.record_delivered_reply(b"rep", at(0));
    // A second delivery of the same live reply uses one response (nats-server's full check).
    perms.record_delivered_reply(b"rep", at(1));
    assert!(perms.check_publish(b"rep", at(2)));
    assert!(!perms.check_publish(b"rep", at(3)));
    // Deny wins over a grant (nats-server lets the grant through: a deliberate difference).
    let mut perms =
        permissions(json!({ "publish": { "deny": ["secret.>"] }, "allow_responses": true }));
    perms.record_delivered_reply(b"secret.reply", at(0));
    assert!(!perms.check_publish(b"secret.reply", at(1)));
}

#[test]
fn allow_responses_table_is_bounded_and_fails_closed() {
    let mut perms = permissions(json!({ "allow_responses": { "max": 5, "expires": "1s" } }));
    for index in 0..MAX_TRACKED_REPLIES {
        perms.record_delivered_reply(format!("r.{index}").as_bytes(), at(0));
    }
    perms.record_delivered_reply(b"r.overflow", at(10));
    assert!(
        !perms.check_publish(b"r.overflow", at(11)),
        "full table: not recorded"
    );
    assert!(perms.check_publish(b"r.0", at(12)));
    // Once the old grants expire they are pruned and new replies are recorded again.
    perms.record_delivered_reply(b"r.late", at(1_500));
    assert!(perms.check_publish(b"r.late", at(1_501)));
}

#[test]
fn rule_matching_istio_style() {
    let config = json!({
        "rules": [
            { "name": "billing-exact", "from": { "principals": ["cluster.local/ns/billing/sa/api"] },
              "permissions": { "publish": ["exact"] } },
            { "name": "billing-prefix", "from": { "principals": ["cluster.local/ns/billing/*"] },
              "permissions": { "publish": ["prefix"] } },
            { "name": "suffix", "from": { "principals": ["*/sa/worker"] },
              "permissions": { "publish": ["suffix"] } },
            { "name": "any-spiffe", "from": { "principals": ["*"] },
              "permissions": { "publish": ["any"] } },
            { "name": "ns", "from": { "namespaces": ["ops", "infra"] },
              "permissions": { "publish": ["ns"] } },
            { "name": "idp", "from": { "request_principals": ["https://idp.example.com/*"] },
              "permissions": { "publish": ["idp"] } },
            { "name": "scoped", "from": { "claims": { "scp": ["billing.publish"], "realm.roles": ["admin", "root"] } },
              "permissions": { "publish": ["scoped"] } },
            { "name": "and", "from": { "namespaces": ["billing"], "request_principals": ["*"] },
              "permissions": { "publish": ["and"] } }
        ]
    });
    let policy = load(config).unwrap().policy;
    let token = |claims: Value| jwt("https://idp.example.com", "alice", claims);
    let cases: Vec<(Identity, &[&str])> = vec![
        (
            identity(Some(spiffe("cluster.local", "billing", "api")), None),
            &["billing-exact", "billing-prefix", "any-spiffe"],
        ),
        (
            identity(Some(spiffe("cluster.local", "ops", "worker")), None),
            &["suffix", "any-spiffe", "ns"],
        ),
        (
            identity(Some(spiffe("other.domain", "billing", "api")), None),
            &["any-spiffe"],
        ),
        (identity(None, Some(token(json!({})))), &["idp"]),
        (
            identity(None, Some(jwt("https://evil.example.com", "x", json!({})))),
            &[],
        ),
        (
            identity(
                None,
                Some(token(
                    json!({ "scp": "read billing.publish", "realm": { "roles": ["user", "admin"] } }),
                )),
            ),
            &["idp", "scoped"],
        ),
        (
            identity(
                None,
                Some(token(
                    json!({ "scp": "read billing.publish.more", "realm": { "roles": ["admin"] } }),
                )),
            ),
            &["idp"],
        ),
        (
            identity(
                None,
                Some(token(
                    json!({ "scp": ["billing.publish"], "realm": { "roles": "root" } }),
                )),
            ),
            &["idp", "scoped"],
        ),
        (
            identity(
                None,
                Some(token(
                    json!({ "scp": "billing.publish", "realm": { "roles": 1 } }),
                )),
            ),
            &["idp"],
        ),
        (
            identity(
                Some(spiffe("cluster.local", "billing", "db")),
                Some(token(json!({}))),
            ),
            &["billing-prefix", "any-spiffe", "idp", "and"],
        ),
        (identity(None, None), &[]),
    ];
    for (who, expected) in cases {
        match policy.resolve(&who) {
            Ok(perms) => assert_eq!(perms.matched_rules(), expected, "{who:?}"),
            Err(_) => assert!(expected.is_empty(), "{who:?} matched nothing"),
        }
    }
}

#[test]
fn matched_rules_are_united_and_deny_wins() {
    let config = json!({
        "rules": [
            { "name": "a", "permissions": { "publish": { "allow": ["a.>"], "deny": ["b.secret"] }, "subscribe": ["in.a"] } },
            { "name": "b", "permissions": { "publish": { "allow": ["b.>"], "deny": ["a.secret"] }, "subscribe": ["in.b v1"] } }
        ]
    });
    let policy = load(config).unwrap().policy;
    let mut perms = policy.resolve(&Identity::default()).unwrap();
    assert_eq!(perms.matched_rules(), ["a", "b"]);
    assert!(perms.check_publish(b"a.x", at(0)));
    assert!(perms.check_publish(b"b.x", at(0)));
    assert!(!perms.check_publish(b"a.secret", at(0)));
    assert!(!perms.check_publish(b"b.secret", at(0)));
    assert!(!perms.check_publish(b"c", at(0)));
    assert!(sub(&mut perms, "in.a", None));
    assert!(sub(&mut perms, "in.b", Some("v1")));
    assert!(!sub(&mut perms, "in.b", None));
    // A rule that leaves a direction unrestricted makes the union unrestricted.
    let config = json!({ "rules": [
        { "name": "narrow", "permissions": { "publish": ["x"] } },
        { "name": "open", "permissions": { "subscribe": ["y"] } }
    ]});
    let loaded = load(config).unwrap();
    let warned: Vec<String> = loaded.warnings.iter().map(|w| w.path.clone()).collect();
    assert_eq!(
        warned,
        [
            "rules[0].permissions.subscribe",
            "rules[1].permissions.publish"
        ]
    );
    let mut perms = loaded.policy.resolve(&Identity::default()).unwrap();
    assert!(perms.check_publish(b"anything", at(0)));
}

#[test]
fn default_action() {
    let deny = load(json!({"rules": [{"name": "r", "from": {"namespaces": ["x"]}}]})).unwrap();
    assert_eq!(deny.policy.default_action(), DefaultAction::Deny);
    assert!(deny.policy.resolve(&Identity::default()).is_err());
    let allow = load(json!({"default_action": "allow"})).unwrap();
    assert!(allow
        .warnings
        .iter()
        .any(|warning| warning.path == "default_action"));
    let mut perms = allow.policy.resolve(&Identity::default()).unwrap();
    assert!(perms.matched_rules().is_empty());
    assert!(perms.check_publish(b"any", at(0)));
    assert!(sub(&mut perms, ">", None));
}

fn templated(claims: Value) -> ConnectionPermissions {
    let config = json!({ "rules": [{
        "name": "tenant",
        "permissions": {
            "publish": { "allow": ["tenants.{{jwt.claim.tid}}.>", "users.{{jwt.sub}}", "ns.{{spiffe.namespace}}.{{spiffe.service_account}}", "td.{{spiffe.trust_domain}}"],
                         "deny": ["tenants.{{jwt.claim.tid}}.admin"] },
            "subscribe": { "allow": ["in.{{jwt.claim.tid}} q-{{jwt.claim.tid}}"] }
        }
    }]});
    let policy = load(config).unwrap().policy;
    let who = identity(
        Some(spiffe("cluster.local", "billing", "api")),
        Some(jwt("iss", "alice", claims)),
    );
    policy.resolve(&who).unwrap()
}

#[test]
fn templates_expand_per_connection() {
    let mut perms = templated(json!({ "tid": "acme" }));
    assert!(perms.check_publish(b"tenants.acme.orders", at(0)));
    assert!(!perms.check_publish(b"tenants.other.orders", at(0)));
    assert!(!perms.check_publish(b"tenants.acme.admin", at(0)));
    assert!(perms.check_publish(b"users.alice", at(0)));
    assert!(perms.check_publish(b"ns.billing.api", at(0)));
    assert!(
        !perms.check_publish(b"td.cluster", at(0)),
        "the trust domain has a dot: no token"
    );
    assert!(sub(&mut perms, "in.acme", Some("q-acme")));
    assert!(!sub(&mut perms, "in.acme", Some("q-other")));
}

#[test]
fn template_injection_never_widens_permissions() {
    let hostile: &[Value] = &[
        json!("a.b"),
        json!("*"),
        json!(">"),
        json!("a b"),
        json!(""),
        json!("a\tb"),
        json!("x\u{0}y"),
        json!("x\u{2003}y"),
        json!(["acme"]),
        json!(7),
        json!(null),
    ];
    for tid in hostile {
        let mut perms = templated(json!({ "tid": tid }));
        for subject in [
            "tenants.a.b.x",
            "tenants.a.x",
            "tenants.*.x",
            "tenants.>",
            "tenants.x.y",
            "tenants.acme.x",
        ] {
            assert!(
                !perms.check_publish(subject.as_bytes(), at(0)),
                "tid {tid}: PUB {subject}"
            );
        }
        assert!(!sub(&mut perms, "in.*", None), "tid {tid}");
        assert!(!sub(&mut perms, "in.>", Some("q-*")), "tid {tid}");
        // The entries without the claim still work.
        assert!(perms.check_publish(b"users.alice", at(0)), "tid {tid}");
    }
    // Unicode that forms one token is a literal token, nothing more.
    let mut perms = templated(json!({ "tid": "\u{fc}ber" }));
    assert!(perms.check_publish("tenants.\u{fc}ber.x".as_bytes(), at(0)));
    assert!(!perms.check_publish(b"tenants.uber.x", at(0)));
}

/// A queue allow entry restricts queue subscribers; when its template cannot be filled, the
/// restriction stays (granting no queue) instead of disappearing with the entry.
#[test]
fn unresolvable_queue_allow_templates_keep_restricting() {
    let config = json!({ "rules": [{ "name": "r", "permissions": {
        "subscribe": { "allow": ["orders.>", "orders.* {{jwt.claim.team}}", "jobs.{{jwt.claim.team}} w"] } } }] });
    let policy = load(config).unwrap().policy;
    let resolve = |team: Value| {
        policy
            .resolve(&identity(
                None,
                Some(jwt("iss", "s", json!({ "team": team }))),
            ))
            .unwrap()
    };
    let mut perms = resolve(json!("red"));
    assert!(sub(&mut perms, "orders.x", Some("red")));
    assert!(!sub(&mut perms, "orders.x", Some("blue")));
    assert!(sub(&mut perms, "jobs.red", Some("w")));
    assert!(
        !sub(&mut perms, "jobs.red", None),
        "a queue entry only grants its queue"
    );
    for hostile in [json!("a.b"), json!("*"), json!(null), json!("")] {
        let mut perms = resolve(hostile.clone());
        assert!(
            sub(&mut perms, "orders.x", None),
            "team {hostile}: plain SUB"
        );
        for queue in ["red", "blue", "a.b", "*", ">"] {
            assert!(
                !sub(&mut perms, "orders.x", Some(queue)),
                "team {hostile}: SUB orders.x {queue}"
            );
        }
        assert!(
            sub(&mut perms, "orders.x.y", Some("any")),
            "orders.x.y is outside the restriction"
        );
    }
}

#[test]
fn unresolvable_deny_templates_widen_the_deny() {
    let config = json!({ "rules": [{ "name": "r", "permissions": {
        "publish": { "allow": ["tenants.>"], "deny": ["tenants.{{jwt.claim.tid}}.admin"] } } }] });
    let policy = load(config).unwrap().policy;
    let mut perms = policy
        .resolve(&identity(
            None,
            Some(jwt("iss", "s", json!({ "tid": "*" }))),
        ))
        .unwrap();
    assert!(!perms.check_publish(b"tenants.any.admin", at(0)));
    assert!(perms.check_publish(b"tenants.any.other", at(0)));
}

#[test]
fn allow_list_emptied_by_templates_denies_everything() {
    let config =
        json!({ "rules": [{ "name": "r", "permissions": { "subscribe": ["t.{{jwt.sub}}"] } }] });
    let policy = load(config).unwrap().policy;
    let mut perms = policy.resolve(&identity(None, None)).unwrap();
    assert!(!sub(&mut perms, "t.x", None));
    assert!(!sub(&mut perms, ">", None));
}

#[test]
fn filter_level_keys() {
    let loaded = load(json!({
        "upstream": { "user": "proxy", "pass": "secret" },
        "trusted_proxy": { "seed": TEST_SEED },
        "limits": { "max_connect_line": 8192 },
        "strip_connect_urls": false
    }))
    .unwrap();
    let policy = loaded.policy;
    assert_eq!(
        policy.upstream(),
        Some(&UpstreamCredentials::UserPassword {
            user: "proxy".into(),
            pass: "secret".into()
        })
    );
    assert!(
        !format!("{policy:?}").contains("secret"),
        "secrets stay out of Debug"
    );
    assert!(!format!("{policy:?}").contains(TEST_SEED));
    assert_eq!(
        policy.trusted_proxy(),
        Some(&NkeySeed::Seed(TEST_SEED.into()))
    );
    assert_eq!(policy.limits().max_connect_line, 8192);
    assert_eq!(policy.limits().decision_cache_entries, 1024);
    assert!(!policy.strip_connect_urls());
    let policy = load(json!({
        "upstream": { "auth_token": "t" },
        "trusted_proxy": { "seed_env": "NATSGUARD_PROXY_SEED" }
    }))
    .unwrap()
    .policy;
    assert_eq!(
        policy.upstream(),
        Some(&UpstreamCredentials::Token("t".into()))
    );
    assert_eq!(
        policy.trusted_proxy(),
        Some(&NkeySeed::Env("NATSGUARD_PROXY_SEED".into()))
    );
    assert!(policy.strip_connect_urls());
}

#[test]
fn the_contract_example_loads() {
    let example = json!({
        "identity": {
            "spiffe": { "required": true, "trust_domains": ["cluster.local"] },
            "jwt": { "required": false, "token_fields": ["auth_token", "pass", "jwt"], "providers": [{
                "name": "corp-idp", "issuer": "https://idp.example.com", "audiences": ["nats"],
                "jwks": { "keys": [] },
                "remote_jwks": { "cluster": "idp", "authority": "idp.example.com", "path": "/.well-known/jwks.json", "refresh_seconds": 600 },
                "algorithms": ["RS256", "ES256", "EdDSA"], "clock_skew_seconds": 60 }] }
        },
        "default_action": "deny",
        "rules": [{
            "name": "billing publishers",
            "from": {
                "principals": ["cluster.local/ns/billing/sa/*"], "namespaces": ["billing"],
                "claims": { "scp": ["billing.publish"] }, "request_principals": ["https://idp.example.com/*"]
            },
            "permissions": {
                "publish": { "allow": ["billing.>"], "deny": ["billing.admin.>"] },
                "subscribe": { "allow": ["_INBOX.>", "billing.events.* workers"], "deny": [] },
                "allow_responses": { "max": 1, "expires": "5s" }
            }
        }]
    });
    let loaded = load(example).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let who = identity(
        Some(spiffe("cluster.local", "billing", "api")),
        Some(jwt(
            "https://idp.example.com",
            "svc",
            json!({ "scp": "billing.publish" }),
        )),
    );
    let mut perms = loaded.policy.resolve(&who).unwrap();
    assert!(perms.check_publish(b"billing.invoices", at(0)));
    assert!(!perms.check_publish(b"billing.admin.reset", at(0)));
    assert!(sub(&mut perms, "billing.events.x", Some("workers")));
    assert!(!sub(&mut perms, "billing.events.x", None));
}

#[test]
fn idle_connection_state_is_small() {
    assert!(std::mem::size_of::<ConnectionPermissions>() <= 128);
}

#[test]
fn config_errors_name_the_path() {
    let rule =
        |permissions: Value| json!({ "rules": [{ "name": "r", "permissions": permissions }] });
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({ "rulez": [] }), "rulez", "unknown field `rulez`"),
        (
            json!({ "default_action": "maybe" }),
            "default_action",
            "unknown variant `maybe`",
        ),
        (
            json!({ "rules": [{ "name": "r", "form": {} }] }),
            "rules[0].form",
            "unknown field `form`",
        ),
        (
            json!({ "rules": [{ "permissions": {} }] }),
            "rules[0]",
            "missing field `name`",
        ),
        (
            json!({ "rules": [{ "name": "" }] }),
            "rules[0].name",
            "must not be empty",
        ),
        (
            json!({ "rules": [{ "name": "a" }, { "name": "a" }] }),
            "rules[1].name",
            "duplicate rule name",
        ),
        (
            rule(json!({ "publish": { "allow": ["ok", "a..b"] } })),
            "rules[0].permissions.publish.allow[1]",
            "invalid subject",
        ),
        (
            rule(json!({ "publish": { "deny": ["a.>.b"] } })),
            "rules[0].permissions.publish.deny[0]",
            "invalid subject",
        ),
        (
            rule(json!({ "publish": ["x", "a b"] })),
            "rules[0].permissions.publish[1]",
            "publish entries take no queue group",
        ),
        (
            rule(json!({ "publish": "" })),
            "rules[0].permissions.publish",
            "must not be empty",
        ),
        (
            rule(json!({ "subscribe": { "allow": ["a b c"] } })),
            "rules[0].permissions.subscribe.allow[0]",
            "expected \"subject\" or \"subject queue\"",
        ),
        (
            rule(json!({ "subscribe": { "allow": ["a q..x"] } })),
            "rules[0].permissions.subscribe.allow[0]",
            "invalid queue group",
        ),
        (
            rule(json!({ "subscribe": { "allow": ["a.{{jwt.nope}}"] } })),
            "rules[0].permissions.subscribe.allow[0]",
            "unknown template variable \"jwt.nope\"",
        ),
        (
            rule(json!({ "subscribe": { "allow": ["a.{{jwt.sub"] } })),
            "rules[0].permissions.subscribe.allow[0]",
            "unclosed template placeholder",
        ),
        (
            rule(json!({ "subscribe": { "allow": ["a{{jwt.claim.}}"] } })),
            "rules[0].permissions.subscribe.allow[0]",
            "unknown template variable",
        ),
        (
            rule(json!({ "subscribe": { "allow": 5 } })),
            "rules[0].permissions.subscribe.allow",
            "invalid type",
        ),
        (
            rule(json!({ "subscribe": { "allowed": [] } })),
            "rules[0].permissions.subscribe.allowed",
            "unknown field `allowed`",
        ),
        (
            rule(json!({ "subscribe": 5 })),
            "rules[0].permissions.subscribe",
            "a subject, a list of subjects",
        ),
        (
            rule(json!({ "allow_responses": { "expires": "5 s" } })),
            "rules[0].permissions.allow_responses.expires",
            "invalid duration",
        ),
        (
            rule(json!({ "allow_responses": { "ttl": "5s" } })),
            "rules[0].permissions.allow_responses.ttl",
            "unknown field `ttl`",
        ),
        (
            rule(json!({ "allow_responses": "yes" })),
            "rules[0].permissions.allow_responses",
            "true, false, or an object",
        ),
        (
            json!({ "rules": [{ "name": "r", "from": { "principals": [] } }] }),
            "rules[0].from.principals",
            "must not be empty",
        ),
        (
            json!({ "rules": [{ "name": "r", "from": { "principals": ["a*b"] } }] }),
            "rules[0].from.principals[0]",
            "'*' is only allowed",
        ),
        (
            json!({ "rules": [{ "name": "r", "from": { "namespaces": [""] } }] }),
            "rules[0].from.namespaces[0]",
            "must not be empty",
        ),
        (
            json!({ "rules": [{ "name": "r", "from": { "request_principals": ["**"] } }] }),
            "rules[0].from.request_principals[0]",
            "'*' is only allowed",
        ),
        (
            json!({ "rules": [{ "name": "r", "from": { "claims": {} } }] }),
            "rules[0].from.claims",
            "must not be empty",
        ),
        (
            json!({ "rules": [{ "name": "r", "from": { "claims": { "scp": [] } } }] }),
            "rules[0].from.claims.scp",
            "at least one accepted value",
        ),
        (
            json!({ "rules": [{ "name": "r", "from": { "claims": { "a..b": ["x"] } } }] }),
            "rules[0].from.claims.a..b",
            "dot path",
        ),
        (
            json!({ "rules": [{ "name": "r", "from": { "claims": { "scp": [1] } } }] }),
            "rules[0].from.claims.scp[0]",
            "invalid type",
        ),
        (
            json!({ "upstream": { "user": "u" } }),
            "upstream",
            "either \"user\" and \"pass\"",
        ),
        (
            json!({ "upstream": { "user": "u", "pass": "p", "auth_token": "t" } }),
            "upstream",
            "either",
        ),
        (
            json!({ "upstream": { "auth_token": "" } }),
            "upstream.auth_token",
            "must not be empty",
        ),
        (
            json!({ "upstream": { "token": "t" } }),
            "upstream.token",
            "unknown field `token`",
        ),
        (
            json!({ "trusted_proxy": { "seed": "SNOTASEED" } }),
            "trusted_proxy.seed",
            "invalid nkey seed",
        ),
        (
            json!({ "trusted_proxy": {} }),
            "trusted_proxy",
            "either \"seed\" or \"seed_env\"",
        ),
        (
            json!({ "trusted_proxy": { "seed_env": "1BAD-NAME" } }),
            "trusted_proxy.seed_env",
            "not an environment variable name",
        ),
        (
            json!({ "limits": { "max_connect_line": 0 } }),
            "limits.max_connect_line",
            "must be between",
        ),
        (
            json!({ "limits": { "decision_cache_entries": 10000000 } }),
            "limits.decision_cache_entries",
            "must be at most",
        ),
        (
            json!({ "limits": { "max_connect_line": -1 } }),
            "limits.max_connect_line",
            "invalid value",
        ),
        (
            json!({ "limits": { "cache": 1 } }),
            "limits.cache",
            "unknown field `cache`",
        ),
        (
            json!({ "strip_connect_urls": "yes" }),
            "strip_connect_urls",
            "invalid type",
        ),
        (
            json!({ "identity": { "spifee": {} } }),
            "identity.spifee",
            "unknown field `spifee`",
        ),
        (
            json!({ "identity": {} }),
            "identity",
            "configure at least one",
        ),
        (
            json!({ "identity": { "jwt": { "providers": [{ "name": "p", "issuer": "https://i", "audiences": ["nats"], "jwks": { "keys": [] }, "algorithms": ["HS256"] }] } } }),
            "identity.jwt.providers[0].algorithms[0]",
            "HS256",
        ),
    ];
    for (config, path, reason) in cases {
        let error = load(config.clone()).expect_err(&config.to_string());
        assert_eq!(error.path, path, "{config}: {error}");
        assert!(error.reason.contains(reason), "{config}: {error}");
        assert_eq!(
            error.to_string(),
            format!("{}: {}", error.path, error.reason)
        );
    }
    let syntax = policy::load("{\"rules\": [").unwrap_err();
    assert!(syntax.reason.contains("EOF"), "{syntax}");
    let trailing = policy::load("{} x").unwrap_err();
    assert_eq!(trailing.path, "$");
}

#[test]
fn decision_cache_never_mixes_up_subjects() {
    for slots in [0, 1, 2, 1024] {
        let config = json!({
            "limits": { "decision_cache_entries": slots },
            "rules": [{ "name": "r", "permissions": {
                "publish": { "allow": ["ok.*"], "deny": ["ok.no"] },
                "subscribe": { "allow": [">"], "deny": ["s.no", "s.q v1"] }
            } }]
        });
        let mut perms = load(config)
            .unwrap()
            .policy
            .resolve(&Identity::default())
            .unwrap();
        assert!(sub(&mut perms, "s.*", Some("v1")));
        for round in 0..3 {
            for (subject, expected) in [
                ("ok.yes", true),
                ("ok.no", false),
                ("other", false),
                ("ok.x", true),
            ] {
                assert_eq!(
                    perms.check_publish(subject.as_bytes(), at(0)),
                    expected,
                    "{slots} {round} {subject}"
                );
            }
            for (subject, queue, expected) in [
                ("s.no", None, false),
                ("s.q", Some("v1"), false),
                ("s.q", Some("v2"), true),
                ("s.q", None, true),
                ("s.yes", None, true),
            ] {
                let delivered = perms.should_deliver(subject.as_bytes(), queue.map(str::as_bytes));
                assert_eq!(delivered, expected, "{slots} {round} {subject} {queue:?}");
            }
        }
    }
}

mod rulings {
    //! Every explanation agrees with the decision it explains, over generated permission blocks
    //! (subjects from `a`, `b`, `*`, `>`, queue entries, denies, allow_responses) and generated
    //! sequences of SUBs, PUBs, deliveries and replies.

    use super::*;
    use proptest::prelude::*;

    fn pattern() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "*"]), 1..3).prop_flat_map(
            |tokens| {
                let base = tokens.join(".");
                prop_oneof![
                    Just(base.clone()),
                    Just(format!("{base}.>")),
                    Just(">".to_string())
                ]
            },
        )
    }

    fn entry(queues: bool) -> impl Strategy<Value = String> {
        let queue = prop::sample::select(vec!["q1", "q2", "v.*"]);
        (pattern(), prop::option::weighted(0.3, queue), Just(queues)).prop_map(
            |(subject, queue, queues)| match queue {
                Some(queue) if queues => format!("{subject} {queue}"),
                _ => subject,
            },
        )
    }

    fn direction(queues: bool) -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(entry(queues), 0..4),
            prop::collection::vec(entry(queues), 0..3),
        )
            .prop_map(|(allow, deny)| json!({ "allow": allow, "deny": deny }))
    }

    fn block() -> impl Strategy<Value = Value> {
        (
            prop::option::of(direction(false)),
            prop::option::of(direction(true)),
            any::<bool>(),
        )
            .prop_map(|(publish, subscribe, responses)| {
                let mut block = serde_json::Map::new();
                if let Some(publish) = publish {
                    block.insert("publish".into(), publish);
                }
                if let Some(subscribe) = subscribe {
                    block.insert("subscribe".into(), subscribe);
                }
                if responses {
                    block.insert("allow_responses".into(), json!({ "max": 2 }));
                }
                Value::Object(block)
            })
    }

    #[derive(Clone, Debug)]
    enum Op {
        Sub(String, Option<String>),
        Pub(String),
        Deliver(String, Option<String>, Option<String>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let queue =
            prop::option::weighted(0.4, prop::sample::select(vec!["q1", "q2", "v.x", "_sys_"]));
        let literal = prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
            .prop_map(|tokens| tokens.join("."));
        prop_oneof![
            (pattern(), queue.clone()).prop_map(|(s, q)| Op::Sub(s, q.map(Into::into))),
            prop_oneof![literal.clone(), pattern()].prop_map(Op::Pub),
            (literal.clone(), queue, prop::option::of(literal)).prop_map(|(s, q, r)| Op::Deliver(
                s,
                q.map(Into::into),
                r.map(|r| format!("r.{r}"))
            )),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn every_ruling_agrees_with_its_decision(block in block(), ops in prop::collection::vec(op(), 1..12)) {
            let mut perms = permissions(block.clone());
            for op in &ops {
                match op {
                    Op::Sub(subject, queue) => {
                        let queue = queue.as_deref().map(str::as_bytes);
                        let ruling = perms.explain_subscribe(subject.as_bytes(), queue);
                        let decided = perms.check_subscribe(subject.as_bytes(), queue) == SubscribeDecision::Allowed;
                        prop_assert_eq!(ruling.allowed, decided, "{} SUB {} {:?}: {:?}", block, subject, queue, ruling);
                    }
                    Op::Pub(subject) => {
                        let ruling = perms.explain_publish(subject.as_bytes(), at(0));
                        let decided = perms.check_publish(subject.as_bytes(), at(0));
                        prop_assert_eq!(ruling.allowed, decided, "{} PUB {}: {:?}", block, subject, ruling);
                    }
                    Op::Deliver(subject, queue, reply) => {
                        let queue = queue.as_deref().map(str::as_bytes);
                        let ruling = perms.explain_delivery(subject.as_bytes(), queue);
                        let decided = perms.should_deliver(subject.as_bytes(), queue);
                        prop_assert_eq!(ruling.allowed, decided, "{} deliver {}: {:?}", block, subject, ruling);
                        if let (true, Some(reply)) = (decided, reply) {
                            perms.record_delivered_reply(reply.as_bytes(), at(0));
                            let ruling = perms.explain_publish(reply.as_bytes(), at(0));
                            let decided = perms.check_publish(reply.as_bytes(), at(0));
                            prop_assert_eq!(ruling.allowed, decided, "{} reply {}: {:?}", block, reply, ruling);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rulings_name_the_entry_and_its_rule() {
        let mut perms = permissions(json!({
            "publish": { "allow": ["billing.>"], "deny": ["billing.admin.>"] },
            "subscribe": { "allow": ["foo.*", "jobs.* workers"] },
        }));
        let denied = perms.explain_publish(b"billing.admin.reset", at(0));
        assert!(!denied.allowed);
        assert_eq!(denied.reason, "deny billing.admin.>");
        assert_eq!(denied.rule(), Some("only"));
        assert_eq!(
            perms.explain_publish(b"orders.x", at(0)).reason,
            "no allow entry matches"
        );
        assert_eq!(
            perms.explain_publish(b"billing.x", at(0)).reason,
            "allow billing.>"
        );
        let strict = perms.explain_subscribe(b"foo.>", None);
        assert!(!strict.allowed);
        assert!(strict.nats_server_allows.unwrap().contains("allow foo.*"));
        let queue = perms.explain_subscribe(b"jobs.a", Some(b"other"));
        assert_eq!(
            queue.reason,
            "queue entries for this subject (allow jobs.* workers) do not name queue other"
        );
        assert!(!perms.explain_subscribe(b"jobs.a", None).allowed);
        assert!(perms.check_subscribe(b"foo.x", None) == SubscribeDecision::Allowed);
    }
}

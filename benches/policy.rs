//! Policy engine benchmarks: per-connection resolution and per-operation decisions with a
//! 10,000-pattern policy, cached and uncached (targets: < 100 ns cached, < 2 µs uncached).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use natsguard::identity::Identity;
use natsguard::policy::{self, ConnectionPermissions, Policy};
use serde_json::json;

const PATTERNS: usize = 10_000;

/// 10,000 allow patterns per direction mixing literals, `*` and `>`, plus 100 deny entries.
fn large_policy(decision_cache_entries: u32) -> Policy {
    let allow: Vec<String> = (0..PATTERNS)
        .map(|index| match index % 4 {
            0 => format!("tenant{index}.orders.*"),
            1 => format!("tenant{index}.>"),
            2 => format!("*.tenant{index}.events"),
            _ => format!("a.b.tenant{index}"),
        })
        .collect();
    let deny: Vec<String> = (0..100)
        .map(|index| format!("tenant{}.orders.secret", index * 4))
        .collect();
    let config = json!({
        "identity": { "spiffe": { "trust_domains": ["cluster.local"] } },
        "limits": { "decision_cache_entries": decision_cache_entries },
        "rules": [{
            "name": "large",
            "permissions": {
                "publish": { "allow": allow, "deny": deny },
                "subscribe": { "allow": allow, "deny": deny }
            }
        }]
    });
    policy::load(&config.to_string())
        .expect("valid benchmark policy")
        .policy
}

fn connection(policy: &Policy) -> ConnectionPermissions {
    policy
        .resolve(&Identity::default())
        .expect("the rule has no `from`")
}

fn subjects() -> Vec<Vec<u8>> {
    (0..1024)
        .map(|index| match index % 4 {
            0 => format!("tenant{}.orders.new", (index * 37) % PATTERNS / 4 * 4),
            1 => format!("tenant{}.x.y.z", (index * 37) % PATTERNS / 4 * 4 + 1),
            2 => format!("svc.tenant{}.events", (index * 37) % PATTERNS / 4 * 4 + 2),
            _ => format!("not.allowed.{index}"),
        })
        .map(String::into_bytes)
        .collect()
}

fn benches(c: &mut Criterion) {
    let now = Duration::ZERO;
    let cached_policy = large_policy(1024);
    let uncached_policy = large_policy(0);
    let subjects = subjects();

    c.bench_function("resolve (shared compiled rules)", |b| {
        b.iter(|| black_box(connection(&cached_policy)))
    });

    let mut perms = connection(&cached_policy);
    let subject = b"tenant400.orders.new".as_slice();
    perms.check_publish(subject, now);
    c.bench_function("publish, cached decision", |b| {
        b.iter(|| black_box(perms.check_publish(black_box(subject), now)))
    });

    let mut perms = connection(&uncached_policy);
    let mut next = 0;
    c.bench_function("publish, uncached, 10k patterns", |b| {
        b.iter(|| {
            next = (next + 1) % subjects.len();
            black_box(perms.check_publish(black_box(&subjects[next]), now))
        })
    });

    let mut perms = connection(&uncached_policy);
    c.bench_function("subscribe, uncached, 10k patterns", |b| {
        b.iter(|| {
            next = (next + 1) % subjects.len();
            black_box(perms.check_subscribe(black_box(&subjects[next]), None))
        })
    });

    let mut perms = connection(&cached_policy);
    perms.check_subscribe(b"tenant0.orders.*", None);
    assert!(perms.delivery_filter_armed());
    perms.should_deliver(b"tenant0.orders.new", None);
    c.bench_function("delivery filter, cached decision", |b| {
        b.iter(|| black_box(perms.should_deliver(black_box(b"tenant0.orders.new"), None)))
    });
}

criterion_group!(policy_benches, benches);
criterion_main!(policy_benches);

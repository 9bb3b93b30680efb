//! natsguard's Envoy stats: counters named `natsguard.<name>` (shown as
//! `wasmcustom.natsguard.<name>` in `/stats`, `natsguard_<name>` in Prometheus).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use proxy_wasm::types::MetricType;

use crate::engine::{Counters, DecisionKind};

thread_local! {
    static IDS: RefCell<BTreeMap<String, u32>> = const { RefCell::new(BTreeMap::new()) };
    static REPORTED_MEMORY: Cell<u64> = const { Cell::new(0) };
}

fn add(name: &str, amount: u64) {
    add_to(MetricType::Counter, name, amount);
}

/// Stats are process-wide: every VM that defines the same name adds to one stat.
fn add_to(metric_type: MetricType, name: &str, amount: u64) {
    if amount == 0 {
        return;
    }
    let id = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if let Some(id) = ids.get(name) {
            return Some(*id);
        }
        let id =
            proxy_wasm::hostcalls::define_metric(metric_type, &format!("natsguard.{name}")).ok()?;
        ids.insert(name.to_string(), id);
        Some(id)
    });
    if let Some(id) = id {
        let _ = proxy_wasm::hostcalls::increment_metric(id, amount as i64);
    }
}

/// Gauge `natsguard.vm_memory_bytes`: the linear memory of natsguard's VMs, summed over them.
/// Each VM adds what its own memory grew by since it last reported (Wasm memory only grows).
pub fn report_vm_memory() {
    const WASM_PAGE: u64 = 64 * 1024;
    let bytes = core::arch::wasm32::memory_size(0) as u64 * WASM_PAGE;
    let grown = REPORTED_MEMORY.with(|reported| {
        let grown = bytes.saturating_sub(reported.get());
        reported.set(reported.get().max(bytes));
        grown
    });
    add_to(MetricType::Gauge, "vm_memory_bytes", grown);
}

pub fn count(name: &str) {
    add(name, 1);
}

/// `natsguard.<family>.<reason>`
pub fn count_reason(family: &str, reason: &str) {
    add(&format!("{family}.{reason}"), 1);
}

pub fn count_frames(counters: &Counters) {
    add("publish_allowed", counters.publish_allowed);
    add("publish_denied", counters.publish_denied);
    add("subscribe_allowed", counters.subscribe_allowed);
    add("subscribe_denied", counters.subscribe_denied);
    add("deliveries_filtered", counters.deliveries_filtered);
    add("connections_reevaluated", counters.reevaluated);
    add("subscriptions_revoked", counters.subscriptions_revoked);
    add("connections_revoked", counters.revoked);
    add("provenance.stamped", counters.provenance_stamped);
    add(
        "provenance.spoof_removed",
        counters.reserved_headers_removed,
    );
    // Names fixed per kind: metrics are counted per chunk, without formatting.
    const WOULD_DENY: [&str; 4] = [
        "shadow.would_deny.connect",
        "shadow.would_deny.publish",
        "shadow.would_deny.subscribe",
        "shadow.would_deny.deliver",
    ];
    const WOULD_ALLOW: [&str; 4] = [
        "shadow.would_allow.connect",
        "shadow.would_allow.publish",
        "shadow.would_allow.subscribe",
        "shadow.would_allow.deliver",
    ];
    for kind in DecisionKind::ALL {
        let index = kind as usize;
        add(WOULD_DENY[index], counters.shadow_would_deny[index]);
        add(WOULD_ALLOW[index], counters.shadow_would_allow[index]);
    }
}

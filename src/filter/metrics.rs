//! natsguard's Envoy stats: counters named `natsguard.<name>` (shown as
//! `wasmcustom.natsguard.<name>` in `/stats`, `natsguard_<name>` in Prometheus), and the
//! labelled counters whose names the engine writes (`engine::telemetry`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use proxy_wasm::types::MetricType;

use crate::engine::telemetry::{frame_counts, FRAME_SLOTS};
use crate::engine::{Counters, DecisionKind, Labelled};

thread_local! {
    /// Metric ids by full stat name.
    static IDS: RefCell<BTreeMap<String, u32>> = const { RefCell::new(BTreeMap::new()) };
    static REPORTED_MEMORY: Cell<u64> = const { Cell::new(0) };
    /// Each connection's labelled frame counters (by [`FRAME_SLOTS`] index), by stream id:
    /// defined when its labels change, so a chunk only adds to ids.
    static FRAME_IDS: RefCell<BTreeMap<u32, [Option<u32>; FRAME_SLOTS.len()]>> = const { RefCell::new(BTreeMap::new()) };
}

fn add(name: &str, amount: u64) {
    if amount > 0 {
        increment(
            id_of(MetricType::Counter, &format!("natsguard.{name}")),
            amount,
        );
    }
}

/// Stats are process-wide: every VM that defines the same name adds to one stat.
fn id_of(metric_type: MetricType, name: &str) -> Option<u32> {
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if let Some(id) = ids.get(name) {
            return Some(*id);
        }
        let id = proxy_wasm::hostcalls::define_metric(metric_type, name).ok()?;
        ids.insert(name.to_string(), id);
        Some(id)
    })
}

fn increment(id: Option<u32>, amount: u64) {
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
    if grown > 0 {
        increment(id_of(MetricType::Gauge, "natsguard.vm_memory_bytes"), grown);
    }
}

/// The labelled counters of connection `stream`'s report: its connection decisions, and its
/// frame counters under the names it counts under now.
pub fn count_labelled(stream: u32, labelled: &Labelled, counters: &Counters) {
    for name in &labelled.connect_stat_names {
        increment(id_of(MetricType::Counter, name), 1);
    }
    FRAME_IDS.with(|frame_ids| {
        let mut frame_ids = frame_ids.borrow_mut();
        if let Some(names) = &labelled.frame_stat_names {
            let ids = names
                .each_ref()
                .map(|name| id_of(MetricType::Counter, name));
            frame_ids.insert(stream, ids);
        }
        let Some(ids) = frame_ids.get(&stream) else {
            return;
        };
        for (id, count) in ids.iter().zip(frame_counts(counters)) {
            if count > 0 {
                increment(*id, count);
            }
        }
    });
}

/// The connection ended: its labelled counters are not counted any more.
pub fn forget_connection(stream: u32) {
    FRAME_IDS.with(|frame_ids| frame_ids.borrow_mut().remove(&stream));
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

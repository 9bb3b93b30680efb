//! natsguard's Envoy stats: counters named `natsguard.<name>` (shown as
//! `wasmcustom.natsguard.<name>` in `/stats`, `natsguard_<name>` in Prometheus).

use std::cell::RefCell;
use std::collections::BTreeMap;

use proxy_wasm::types::MetricType;

use crate::engine::Counters;

thread_local! {
    static IDS: RefCell<BTreeMap<String, u32>> = const { RefCell::new(BTreeMap::new()) };
}

fn add(name: &str, amount: u64) {
    if amount == 0 {
        return;
    }
    let id = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if let Some(id) = ids.get(name) {
            return Some(*id);
        }
        let id =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, &format!("natsguard.{name}"))
                .ok()?;
        ids.insert(name.to_string(), id);
        Some(id)
    });
    if let Some(id) = id {
        let _ = proxy_wasm::hostcalls::increment_metric(id, amount as i64);
    }
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
}

//! One JWKS fetch per provider and period for all of Envoy's VMs (one per worker thread plus
//! the main thread's): a fetched document is published in proxy-wasm shared data, every VM picks
//! it up on its tick, and a lease in shared data decides which VM fetches. Keys are prefixed:
//! Istio gives every WasmPlugin the same (empty) VM id, hence the same shared-data namespace.
//! They name the provider and its source (cluster, authority, path), so a configuration that
//! points a provider elsewhere never adopts the keys fetched from the old place.

use std::time::Duration;

use proxy_wasm::hostcalls::{get_shared_data, set_shared_data};

use crate::identity::RemoteJwksConfig;
use crate::policy::policy_version;

fn key(provider: &str, source: &RemoteJwksConfig, what: &str) -> String {
    let source = policy_version(&format!(
        "{}\n{}\n{}",
        source.cluster, source.authority, source.path
    ));
    format!("natsguard.jwks.{provider}.{source}.{what}")
}

/// Takes the right to fetch `provider`'s JWKS for `hold`, unless another VM holds a live lease.
pub fn take_lease(
    provider: &str,
    source: &RemoteJwksConfig,
    now: Duration,
    hold: Duration,
) -> bool {
    let key = key(provider, source, "lease");
    let Ok((held_until, cas)) = get_shared_data(&key) else {
        return false;
    };
    let held_until = held_until
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|millis| millis.parse::<u128>().ok());
    if held_until.is_some_and(|until| until > now.as_millis()) {
        return false;
    }
    let until = (now + hold).as_millis().to_string();
    set_shared_data(&key, Some(until.as_bytes()), cas).is_ok()
}

/// After a failed fetch: no VM fetches `provider` again before `now + backoff`.
pub fn back_off(provider: &str, source: &RemoteJwksConfig, now: Duration, backoff: Duration) {
    let until = (now + backoff).as_millis().to_string();
    let _ = set_shared_data(
        &key(provider, source, "lease"),
        Some(until.as_bytes()),
        None,
    );
}

/// Publishes a good JWKS document for the other VMs; returns its version.
pub fn publish(provider: &str, source: &RemoteJwksConfig, document: &[u8]) -> Option<u32> {
    let key = key(provider, source, "document");
    set_shared_data(&key, Some(document), None).ok()?;
    get_shared_data(&key).ok()?.1
}

/// The shared document of `provider` if its version differs from `seen`.
pub fn newer_than(
    provider: &str,
    source: &RemoteJwksConfig,
    seen: Option<u32>,
) -> Option<(Vec<u8>, u32)> {
    match get_shared_data(&key(provider, source, "document")) {
        Ok((Some(document), Some(version))) if Some(version) != seen => Some((document, version)),
        _ => None,
    }
}

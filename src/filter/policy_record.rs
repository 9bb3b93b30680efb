//! Which configuration of a plugin Envoy applies, in proxy-wasm shared data (process-wide):
//! every delivered configuration is configured by at least one VM (Envoy's canary VM, the main
//! thread's), even when the worker VMs reuse a root context without a callback. Each VM's root
//! contexts compare their configuration with the record on their ticks.

use proxy_wasm::hostcalls::{get_shared_data, set_shared_data};

fn key(plugin_name: &str, root_id: &str) -> String {
    format!("natsguard.policy.{plugin_name}.{root_id}.version")
}

/// What recording a configuration found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Another VM recorded this configuration already.
    Already,
    /// The plugin's first configuration in this Envoy.
    First,
    /// It replaced another one: an update, counted once per Envoy, not once per VM.
    Replaced,
}

/// Records `version` as the plugin's configuration.
pub fn record(plugin_name: &str, root_id: &str, version: &str) -> Recorded {
    let key = key(plugin_name, root_id);
    let Ok((recorded, cas)) = get_shared_data(&key) else {
        return Recorded::Already;
    };
    if recorded.as_deref() == Some(version.as_bytes()) {
        return Recorded::Already;
    }
    match set_shared_data(&key, Some(version.as_bytes()), cas) {
        // A lost race means another VM recorded this very configuration.
        Err(_) => Recorded::Already,
        Ok(()) if recorded.is_some() => Recorded::Replaced,
        Ok(()) => Recorded::First,
    }
}

/// The configuration recorded last for the plugin.
pub fn recorded(plugin_name: &str, root_id: &str) -> Option<String> {
    let (value, _) = get_shared_data(&key(plugin_name, root_id)).ok()?;
    String::from_utf8(value?).ok()
}

//! natsguard's filter configuration as an Envoy Extension Config Discovery (ECDS) resource: how
//! Istio delivers a `WasmPlugin` of `type: NETWORK`, and how a plain Envoy without a control
//! plane takes a configuration that can change under open connections (a
//! `config_discovery` filter whose `path_config_source` names the file written here).
//!
//! The file is a `DiscoveryResponse` with one `TypedExtensionConfig` named like the filter.
//! Envoy watches the file and applies a new version when one is renamed over it; a file
//! written in place could be read half-written, so [`write_atomically`] writes a temporary file
//! beside it and renames it.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

/// The Envoy side of the filter configuration (in Istio: the `WasmPlugin` outside
/// `pluginConfig`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSettings {
    /// The resource and filter name, which is also the plugin name (`plugin_name`).
    pub name: String,
    /// The plugin's `root_id`.
    pub root_id: String,
    /// The VM id (the shared-data namespace).
    pub vm_id: String,
    /// The module file, as Envoy resolves it (relative to Envoy's working directory).
    pub wasm_path: String,
    /// `FAIL_RELOAD`, `FAIL_CLOSED` or `FAIL_OPEN` (never for an authorization filter).
    pub failure_policy: String,
    /// Environment variables of Envoy's process the VM may read (the `seed_env`s).
    pub host_env_keys: Vec<String>,
}

impl FilterSettings {
    /// The settings of the local harness and the docs' examples.
    pub fn natsguard(wasm_path: impl Into<String>) -> FilterSettings {
        FilterSettings {
            name: "natsguard".to_owned(),
            root_id: "natsguard".to_owned(),
            vm_id: "natsguard".to_owned(),
            wasm_path: wasm_path.into(),
            failure_policy: "FAIL_RELOAD".to_owned(),
            host_env_keys: Vec::new(),
        }
    }
}

/// The type URL a `config_discovery` filter of natsguard lists.
pub const WASM_NETWORK_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";

/// The `DiscoveryResponse` carrying `policy_json` (natsguard's configuration, as the filter
/// reads it) under `settings`, as version `version`.
pub fn discovery_response(settings: &FilterSettings, policy_json: &str, version: &str) -> Value {
    let mut vm_config = json!({
        "vm_id": settings.vm_id,
        "runtime": "envoy.wasm.runtime.v8",
        "code": { "local": { "filename": settings.wasm_path } },
    });
    if !settings.host_env_keys.is_empty() {
        vm_config["environment_variables"] = json!({ "host_env_keys": settings.host_env_keys });
    }
    json!({
        "version_info": version,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": settings.name,
            "typed_config": {
                "@type": WASM_NETWORK_FILTER_TYPE,
                "config": {
                    "name": settings.name,
                    "root_id": settings.root_id,
                    "failure_policy": settings.failure_policy,
                    "vm_config": vm_config,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": policy_json,
                    },
                },
            },
        }],
    })
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file in the same directory, flushed, then renamed over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let temporary = directory.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_carries_the_policy_unchanged_under_the_filter_name() {
        let mut settings = FilterSettings::natsguard("target/natsguard.wasm");
        settings.host_env_keys.push("SEED".into());
        let response = discovery_response(&settings, "{\"rules\": []}", "abc");
        assert_eq!(response["version_info"], "abc");
        let resource = &response["resources"][0];
        assert_eq!(resource["name"], "natsguard");
        let config = &resource["typed_config"]["config"];
        assert_eq!(config["configuration"]["value"], "{\"rules\": []}");
        assert_eq!(
            config["vm_config"]["code"]["local"]["filename"],
            "target/natsguard.wasm"
        );
        assert_eq!(
            config["vm_config"]["environment_variables"]["host_env_keys"][0],
            "SEED"
        );
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecds.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomically(&dir.path().join("missing/ecds.json"), b"x").is_err());
    }
}

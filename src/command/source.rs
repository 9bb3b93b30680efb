//! Where the `natsguard` command finds natsguard's configuration in a file: the configuration
//! itself (JSON, read as the filter reads it), an Envoy configuration (YAML or JSON) with the
//! natsguard filter's `configuration`, static or in an ECDS file (a `DiscoveryResponse`), or an
//! Istio `WasmPlugin` manifest (`spec.pluginConfig`, which Istio hands to the filter as JSON).

use serde_json::Value;

use crate::ecds::WASM_NETWORK_FILTER_TYPE;

/// One natsguard configuration found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Where in the file: empty for a file that is the configuration, else e.g.
    /// `static_resources.listeners[0].filter_chains[0].filters[0]` or `WasmPlugin nats/natsguard`.
    pub location: String,
    /// The configuration as the filter receives it.
    pub json: String,
}

/// The natsguard configurations in `text`. An error says why none could be read.
pub fn configurations(text: &str) -> Result<Vec<Found>, String> {
    if text.trim_start().starts_with('{') {
        let value: Value =
            serde_json::from_str(text).map_err(|error| format!("not valid JSON: {error}"))?;
        if !is_container(&value) {
            // The configuration itself: the filter reads exactly this text.
            return Ok(vec![Found {
                location: String::new(),
                json: text.to_owned(),
            }]);
        }
    }
    let mut found = Vec::new();
    let mut discovered_elsewhere = Vec::new();
    for (index, document) in yaml_documents(text)?.into_iter().enumerate() {
        let prefix = if index == 0 {
            String::new()
        } else {
            format!("document {} ", index + 1)
        };
        if document.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
            found.push(wasm_plugin(&document, &prefix)?);
            continue;
        }
        if !is_container(&document) {
            continue;
        }
        walk(
            &document,
            &mut String::new(),
            &mut |path, filter| match filter_configuration(filter) {
                Some(json) => found.push(Found {
                    location: format!("{prefix}{path}"),
                    json,
                }),
                None => discovered_elsewhere.push(format!("{prefix}{path}")),
            },
        );
    }
    if found.is_empty() {
        let mut reason = "no natsguard configuration found: expected natsguard's JSON configuration, an Envoy configuration or ECDS file with natsguard's Wasm network filter, or an Istio WasmPlugin".to_owned();
        if !discovered_elsewhere.is_empty() {
            reason.push_str(&format!(
                " (the natsguard filter at {} takes its configuration by config_discovery: check the ECDS file it names)",
                discovered_elsewhere.join(", ")
            ));
        }
        return Err(reason);
    }
    Ok(found)
}

/// Whether `value` is an Envoy configuration or a Kubernetes manifest rather than natsguard's
/// own configuration (whose keys are natsguard's).
fn is_container(value: &Value) -> bool {
    const CONTAINER_KEYS: [&str; 6] = [
        "static_resources",
        "dynamic_resources",
        "resources",
        "version_info",
        "apiVersion",
        "kind",
    ];
    value
        .as_object()
        .is_some_and(|object| CONTAINER_KEYS.iter().any(|key| object.contains_key(*key)))
}

fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value =
            Value::deserialize(document).map_err(|error| format!("not YAML or JSON: {error}"))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

fn wasm_plugin(document: &Value, prefix: &str) -> Result<Found, String> {
    let metadata = &document["metadata"];
    let name = metadata["name"].as_str().unwrap_or("?");
    let location = match metadata["namespace"].as_str() {
        Some(namespace) => format!("{prefix}WasmPlugin {namespace}/{name}"),
        None => format!("{prefix}WasmPlugin {name}"),
    };
    let spec = &document["spec"];
    if spec["type"].as_str() != Some("NETWORK") {
        return Err(format!(
            "{location}: spec.type must be NETWORK (natsguard is a network filter; Istio installs an HTTP plugin otherwise)"
        ));
    }
    let config = match &spec["pluginConfig"] {
        Value::Null => {
            return Err(format!(
                "{location}: no spec.pluginConfig (natsguard's configuration)"
            ))
        }
        config => config,
    };
    Ok(Found {
        location,
        json: serde_json::to_string_pretty(config).map_err(|error| error.to_string())?,
    })
}

/// Calls `visit` with the JSON path of every natsguard Wasm network filter (its `typed_config`
/// of the Wasm network type, naming natsguard in its plugin name, root id, VM id or module),
/// and of every `config_discovery` filter named natsguard.
fn walk(value: &Value, path: &mut String, visit: &mut dyn FnMut(&str, &Value)) {
    match value {
        Value::Object(object) => {
            if let Some(typed) = object.get("typed_config") {
                if typed["@type"].as_str() == Some(WASM_NETWORK_FILTER_TYPE)
                    && names_natsguard(&typed["config"])
                {
                    visit(path, typed);
                    return;
                }
            }
            let discovered = object.contains_key("config_discovery")
                && object
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| name.contains("natsguard"));
            if discovered {
                visit(path, &Value::Null);
                return;
            }
            for (key, child) in object {
                let length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                walk(child, path, visit);
                path.truncate(length);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                walk(child, path, visit);
                path.truncate(length);
            }
        }
        _ => {}
    }
}

fn names_natsguard(config: &Value) -> bool {
    let fields = [
        &config["name"],
        &config["root_id"],
        &config["vm_config"]["vm_id"],
        &config["vm_config"]["code"]["local"]["filename"],
        &config["vm_config"]["code"]["remote"]["http_uri"]["uri"],
    ];
    fields
        .iter()
        .filter_map(|field| field.as_str())
        .any(|text| text.contains("natsguard"))
}

/// The `configuration` of a Wasm filter's `typed_config`: a `google.protobuf.StringValue`
/// whose value is natsguard's JSON. `None` for a filter without one (its configuration then
/// comes by ECDS, or it is missing).
fn filter_configuration(typed_config: &Value) -> Option<String> {
    let configuration = &typed_config["config"]["configuration"];
    match configuration {
        Value::Object(object) => object.get("value")?.as_str().map(str::to_owned),
        Value::String(value) => Some(value.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_file_is_read_as_is() {
        let text = "{ \"rules\": [] }\n";
        assert_eq!(
            configurations(text).unwrap(),
            [Found {
                location: String::new(),
                json: text.to_owned()
            }]
        );
    }

    #[test]
    fn an_ecds_file_gives_its_filter_configuration() {
        let settings = crate::ecds::FilterSettings::natsguard("natsguard.wasm");
        let response = crate::ecds::discovery_response(&settings, "{\"rules\":[]}", "v");
        let found = configurations(&response.to_string()).unwrap();
        assert_eq!(found[0].location, "resources[0]");
        assert_eq!(found[0].json, "{\"rules\":[]}");
    }

    #[test]
    fn a_wasm_plugin_must_be_a_network_plugin() {
        let manifest = "kind: WasmPlugin\nmetadata: {name: n, namespace: ns}\nspec:\n  type: HTTP\n  pluginConfig: {rules: []}\n";
        assert_eq!(
            configurations(manifest).unwrap_err(),
            "WasmPlugin ns/n: spec.type must be NETWORK (natsguard is a network filter; Istio installs an HTTP plugin otherwise)"
        );
        let network = manifest.replace("HTTP", "NETWORK");
        let found = configurations(&network).unwrap();
        assert_eq!(found[0].location, "WasmPlugin ns/n");
        assert_eq!(
            serde_json::from_str::<Value>(&found[0].json).unwrap(),
            serde_json::json!({"rules": []})
        );
    }

    #[test]
    fn an_envoy_configuration_with_ecds_says_where_to_look() {
        let envoy = "static_resources:\n  listeners:\n  - filter_chains:\n    - filters:\n      - name: natsguard\n        config_discovery: {config_source: {path_config_source: {path: x.json}}}\n";
        let error = configurations(envoy).unwrap_err();
        assert!(
            error.ends_with("(the natsguard filter at static_resources.listeners[0].filter_chains[0].filters[0] takes its configuration by config_discovery: check the ECDS file it names)"),
            "{error}"
        );
    }
}

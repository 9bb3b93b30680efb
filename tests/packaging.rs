//! Packaging checks, all offline:
//! - every manifest in `istio/` against Istio's real CRD schemas (vendored in `istio/schemas/`) or
//!   the structural subset for core kinds, and the wiring between the manifests;
//! - the standalone Envoy configs' natsguard filter block and JWKS cluster;
//! - `scripts/oci-image.sh`: structure, media types, digests and sizes of the OCI layout;
//! - every repository path the docs name exists.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

mod support;

const ISTIO_CRDS: &str = "istio/schemas/istio-crds-1.28.10.yaml";
const CORE_SCHEMAS: &str = "istio/schemas/kubernetes-core.yaml";
const STANDALONE_CONFIGS: [&str; 2] = ["envoy/standalone.yaml", "envoy/standalone-jwt-only.yaml"];
const WASM_MODULE: &str = "target/wasm32-wasip1/release/natsguard.wasm";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_text(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// All non-empty documents of a (multi-document) YAML file, as JSON values.
fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read_text(relative);
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let value = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{relative}: invalid YAML: {e}"));
            serde_json::to_value(value).unwrap_or_else(|e| panic!("{relative}: {e}"))
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

// ---------------------------------------------------------------------------------------------
// Manifests in istio/

/// The YAML manifests directly in `istio/` (the kustomization itself excluded).
fn istio_manifest_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo_path("istio"))
        .expect("istio/ exists")
        .map(|entry| {
            entry
                .expect("readable istio/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .map(|name| format!("istio/{name}"))
        .collect();
    files.sort();
    files
}

fn istio_documents() -> Vec<(String, Value)> {
    istio_manifest_files()
        .into_iter()
        .flat_map(|file| {
            yaml_documents(&file)
                .into_iter()
                .map(move |doc| (file.clone(), doc))
        })
        .collect()
}

fn find_kind<'a>(documents: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .map(|(_, doc)| doc)
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name} in istio/"))
}

/// Kubernetes rejects unknown fields (kubectl's strict field validation) while a JSON schema
/// allows them: close every object schema that lists its properties, except those Kubernetes
/// itself marks as open.
fn close_object_schemas(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let preserves_unknown =
        object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if object.contains_key("properties")
        && !object.contains_key("additionalProperties")
        && !preserves_unknown
    {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties.values_mut().for_each(close_object_schemas);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = object.get_mut(key) {
            close_object_schemas(child);
        }
    }
}

/// Schemas for a whole manifest minus apiVersion/kind/metadata, keyed by "apiVersion/kind".
fn manifest_schemas() -> HashMap<String, Value> {
    let mut schemas = HashMap::new();
    for crd in yaml_documents(ISTIO_CRDS) {
        let group = str_at(&crd, "/spec/group");
        let kind = str_at(&crd, "/spec/names/kind");
        for version in crd["spec"]["versions"].as_array().expect("CRD versions") {
            if version["served"] != Value::Bool(true) {
                continue;
            }
            let spec = version
                .pointer("/schema/openAPIV3Schema/properties/spec")
                .unwrap_or_else(|| panic!("{kind}: no spec schema"))
                .clone();
            let mut document = serde_json::json!({"type": "object", "properties": {"spec": spec}});
            close_object_schemas(&mut document);
            schemas.insert(
                format!("{group}/{}/{kind}", str_at(version, "/name")),
                document,
            );
        }
    }
    let core = yaml_documents(CORE_SCHEMAS)
        .pop()
        .expect("core schemas document");
    for (key, schema) in core["kinds"].as_object().expect("kinds map") {
        let mut schema = schema.clone();
        close_object_schemas(&mut schema);
        schemas.insert(key.clone(), schema);
    }
    schemas
}

const CLUSTER_SCOPED_KINDS: [&str; 1] = ["Namespace"];

fn metadata_violations(doc: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    let metadata = &doc["metadata"];
    let is_dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    match metadata["name"].as_str() {
        Some(name) if is_dns_label(name) => {}
        other => violations.push(format!("metadata.name {other:?} is not a DNS label")),
    }
    let cluster_scoped = doc["kind"]
        .as_str()
        .is_some_and(|kind| CLUSTER_SCOPED_KINDS.contains(&kind));
    match (cluster_scoped, metadata.get("namespace")) {
        (true, Some(_)) => violations.push("cluster-scoped kind with metadata.namespace".into()),
        (false, None) => violations.push("namespaced kind without metadata.namespace".into()),
        _ => {}
    }
    for key in metadata
        .as_object()
        .map(|m| m.keys().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if !["name", "namespace", "labels", "annotations"].contains(&key.as_str()) {
            violations.push(format!("unexpected metadata.{key}"));
        }
    }
    violations
}

#[test]
fn every_istio_manifest_matches_its_schema() {
    let schemas = manifest_schemas();
    let mut violations = Vec::new();
    let documents = istio_documents();
    assert!(
        documents.len() >= 10,
        "expected the full set of manifests, found {}",
        documents.len()
    );
    for (file, doc) in &documents {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let key = format!("{api_version}/{kind}");
        let place = format!("{file}: {kind} {}", doc["metadata"]["name"]);
        let Some(schema) = schemas.get(&key) else {
            violations.push(format!(
                "{place}: no schema for {key} (unknown kind or version not served)"
            ));
            continue;
        };
        violations.extend(
            metadata_violations(doc)
                .into_iter()
                .map(|v| format!("{place}: {v}")),
        );
        let mut body = doc.clone();
        if let Some(object) = body.as_object_mut() {
            for key in ["apiVersion", "kind", "metadata"] {
                object.remove(key);
            }
        }
        let validator = jsonschema::draft4::options()
            .should_validate_formats(false)
            .build(schema)
            .unwrap_or_else(|e| panic!("schema for {key} does not compile: {e}"));
        violations.extend(
            validator
                .iter_errors(&body)
                .map(|error| format!("{place}: at {}: {error}", error.instance_path())),
        );
    }
    assert!(
        violations.is_empty(),
        "schema violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn schema_check_rejects_misspelt_and_mistyped_fields() {
    let schemas = manifest_schemas();
    let wasm_plugin = &schemas["extensions.istio.io/v1alpha1/WasmPlugin"];
    let validator = jsonschema::draft4::options()
        .should_validate_formats(false)
        .build(wasm_plugin)
        .unwrap();
    let good = serde_json::json!({"spec": {"type": "NETWORK", "url": "oci://r/x:1", "failStrategy": "FAIL_CLOSE"}});
    assert!(validator.is_valid(&good));
    for bad in [
        serde_json::json!({"spec": {"type": "NETWORK", "url": "oci://r/x:1", "failStrategy": "FAIL_CLOSED"}}),
        serde_json::json!({"spec": {"typ": "NETWORK", "url": "oci://r/x:1"}}),
        serde_json::json!({"spec": {"type": "NETWORK", "url": "oci://r/x:1", "match": [{"mode": "SERVER", "ports": [{"number": "4222"}]}]}}),
        serde_json::json!({"spec": {"type": "NETWORK", "url": "oci://r/x:1", "sha256": "abc"}}),
    ] {
        assert!(!validator.is_valid(&bad), "accepted {bad}");
    }
}

/// Manifests applied instead of one that the kustomization lists (docs/istio.md, "A NATS
/// cluster"): the three-node StatefulSet replaces the single server.
const ALTERNATIVE_MANIFESTS: [(&str, &str); 1] = [("istio/nats-cluster.yaml", "istio/nats.yaml")];

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = yaml_documents("istio/kustomization.yaml")
        .pop()
        .expect("kustomization");
    let resources: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources list")
        .iter()
        .map(|r| format!("istio/{}", r.as_str().expect("resource path")))
        .collect();
    let mut manifests: BTreeSet<String> = istio_manifest_files().into_iter().collect();
    for (alternative, replaced) in ALTERNATIVE_MANIFESTS {
        assert!(manifests.remove(alternative), "{alternative} is missing");
        assert!(
            resources.contains(replaced),
            "{alternative} replaces {replaced}"
        );
    }
    assert_eq!(
        resources, manifests,
        "kustomization resources vs manifests in istio/"
    );
}

fn plugin_config(documents: &[(String, Value)]) -> &Value {
    &find_kind(documents, "WasmPlugin", "natsguard")["spec"]["pluginConfig"]
}

#[test]
fn istio_manifests_are_wired_together() {
    let documents = istio_documents();
    let deployment = find_kind(&documents, "Deployment", "nats");
    let pod = &deployment["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    let selects_nats = |selector: &Value| {
        let labels = selector["matchLabels"].as_object().expect("matchLabels");
        !labels.is_empty() && labels.iter().all(|(k, v)| &pod_labels[k] == v)
    };
    let plugin = find_kind(&documents, "WasmPlugin", "natsguard");
    for selector in [
        &plugin["spec"]["selector"],
        &find_kind(&documents, "PeerAuthentication", "nats-strict-mtls")["spec"]["selector"],
        &find_kind(&documents, "Telemetry", "nats-access-log")["spec"]["selector"],
        &deployment["spec"]["selector"],
    ] {
        assert!(
            selects_nats(selector),
            "{selector} does not select the nats pod {pod_labels}"
        );
    }
    assert_eq!(
        find_kind(&documents, "PeerAuthentication", "nats-strict-mtls")["spec"]["mtls"]["mode"],
        "STRICT"
    );

    // The plugin sits on the port nats-server binds; the Service declares that port as TCP.
    let spec = &plugin["spec"];
    assert_eq!(spec["type"], "NETWORK");
    assert_eq!(spec["phase"], "AUTHZ");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert!(str_at(spec, "/url").starts_with("oci://"));
    let sha256 = str_at(spec, "/sha256");
    assert!(
        sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(
        spec["match"],
        serde_json::json!([{"mode": "SERVER", "ports": [{"number": 4222}]}])
    );
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    let nats = containers
        .iter()
        .find(|c| c["name"] == "nats")
        .expect("nats container");
    assert_eq!(nats["ports"][0]["containerPort"], 4222);
    let service = find_kind(&documents, "Service", "nats");
    assert!(selects_nats(
        &serde_json::json!({"matchLabels": service["spec"]["selector"]})
    ));
    let client_port = &service["spec"]["ports"][0];
    assert_eq!(client_port["name"], "tcp-client");
    assert_eq!(client_port["appProtocol"], "tcp");
    assert_eq!(client_port["targetPort"], 4222);

    // Every remote JWKS cluster is the outbound cluster of a ServiceEntry whose host gets TLS.
    let config = plugin_config(&documents);
    let providers = config["identity"]["jwt"]["providers"]
        .as_array()
        .expect("providers");
    assert!(!providers.is_empty());
    for provider in providers {
        let cluster = str_at(provider, "/remote_jwks/cluster");
        let (port, host) = cluster
            .strip_prefix("outbound|")
            .and_then(|rest| rest.split_once("||"))
            .unwrap_or_else(|| panic!("{cluster} is not an Istio outbound cluster name"));
        assert_eq!(str_at(provider, "/remote_jwks/authority"), host);
        let entry_serves = documents.iter().any(|(_, doc)| {
            doc["kind"] == "ServiceEntry"
                && doc["spec"]["hosts"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|x| x == host))
                && doc["spec"]["ports"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|x| x["number"].as_u64().is_some_and(|n| n.to_string() == port))
                })
        });
        assert!(entry_serves, "no ServiceEntry for {host}:{port}");
        let tls_originated = documents.iter().any(|(_, doc)| {
            doc["kind"] == "DestinationRule"
                && doc["spec"]["host"] == host
                && doc["spec"]["trafficPolicy"]["portLevelSettings"]
                    .as_array()
                    .is_some_and(|settings| {
                        settings.iter().any(|s| {
                            s["port"]["number"]
                                .as_u64()
                                .is_some_and(|n| n.to_string() == port)
                                && s["tls"]["mode"] == "SIMPLE"
                        })
                    })
        });
        assert!(
            tls_originated,
            "no DestinationRule with tls SIMPLE for {host}:{port}"
        );
    }

    // The trusted-proxy seed travels Secret -> istio-proxy env -> vmConfig.env (HOST) -> seed_env.
    let seed_env = str_at(config, "/trusted_proxy/seed_env");
    let vm_env = spec["vmConfig"]["env"].as_array().expect("vmConfig.env");
    assert!(vm_env
        .iter()
        .any(|e| e["name"] == seed_env && e["valueFrom"] == "HOST"));
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("istio-proxy override");
    assert!(sidecar["env"]
        .as_array()
        .is_some_and(|env| env.iter().any(|e| e["name"] == seed_env)));

    // nats-server accepts exactly natsguard's upstream credentials, and only through the proxy.
    let nats_conf = str_at(
        find_kind(&documents, "ConfigMap", "nats-config"),
        "/data/nats.conf",
    );
    let user_line = format!(
        "{{ user: {}, password: {}, proxy_required: true }}",
        str_at(config, "/upstream/user"),
        str_at(config, "/upstream/pass")
    );
    assert!(
        nats_conf.contains(&user_line),
        "nats.conf lacks `{user_line}`"
    );
    assert!(
        nats_conf.contains("proxies {"),
        "nats.conf does not trust natsguard's proxy key"
    );
}

/// A duration of nats.conf in whole seconds (`key: 30s`).
fn conf_seconds(conf: &str, key: &str) -> u64 {
    conf.lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{key}: ")))
        .and_then(|value| value.strip_suffix('s')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in seconds in nats.conf"))
}

#[test]
fn the_cluster_manifest_keeps_routes_out_of_natsguard_and_restarts_in_lame_duck_mode() {
    let documents = istio_documents();
    let cluster: Vec<(String, Value)> = documents
        .iter()
        .filter(|(file, _)| file == "istio/nats-cluster.yaml")
        .cloned()
        .collect();
    let set = find_kind(&cluster, "StatefulSet", "nats");
    let pod = &set["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    let selects_pods = |labels: &Value| {
        let labels = labels.as_object().expect("labels");
        !labels.is_empty() && labels.iter().all(|(k, v)| &pod_labels[k] == v)
    };
    let plugin = find_kind(&documents, "WasmPlugin", "natsguard");
    for selector in [
        &plugin["spec"]["selector"]["matchLabels"],
        &find_kind(&documents, "PeerAuthentication", "nats-strict-mtls")["spec"]["selector"]
            ["matchLabels"],
        &find_kind(&documents, "Telemetry", "nats-access-log")["spec"]["selector"]["matchLabels"],
        &set["spec"]["selector"]["matchLabels"],
        &find_kind(&cluster, "Service", "nats")["spec"]["selector"],
    ] {
        assert!(
            selects_pods(selector),
            "{selector} does not select {pod_labels}"
        );
    }
    assert_eq!(set["spec"]["replicas"], 3);

    // Routes: a TCP port of the headless Service that natsguard's WasmPlugin does not match.
    let headless_name = str_at(set, "/spec/serviceName");
    let headless = find_kind(&cluster, "Service", headless_name);
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let port_named = |name: &str| {
        headless["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name} in {headless_name}"))
            .clone()
    };
    let (client, route) = (port_named("tcp-client"), port_named("tcp-cluster"));
    for port in [&client, &route] {
        assert_eq!(port["appProtocol"], "tcp", "{port}: declared TCP");
    }
    let matched: Vec<&Value> = plugin["spec"]["match"]
        .as_array()
        .expect("match")
        .iter()
        .flat_map(|m| m["ports"].as_array().expect("ports"))
        .map(|p| &p["number"])
        .collect();
    assert_eq!(
        matched,
        [&client["targetPort"]],
        "natsguard on the client port only"
    );

    // nats.conf: routes to every pod by its DNS name, no client advertisement, the same login.
    let conf = str_at(
        find_kind(&cluster, "ConfigMap", "nats-cluster-config"),
        "/data/nats.conf",
    );
    for ordinal in 0..3 {
        let route_url = format!(
            "nats://nats-{ordinal}.{headless_name}.nats.svc.cluster.local:{}",
            route["port"]
        );
        assert!(
            conf.contains(&route_url),
            "nats.conf lacks the route {route_url}"
        );
    }
    assert!(conf.contains(&format!("port: {}", route["targetPort"])));
    assert!(conf.contains("no_advertise: true"));
    let single_server_conf = str_at(
        find_kind(&documents, "ConfigMap", "nats-config"),
        "/data/nats.conf",
    );
    let login = single_server_conf
        .lines()
        .find(|line| line.contains("proxy_required: true"))
        .expect("the upstream login of nats.yaml");
    assert!(conf.contains(login), "nats.conf lacks `{}`", login.trim());

    // Stopping a pod: lame duck mode first, and neither Kubernetes nor the sidecar cuts it short.
    let nats = pod["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "nats")
        .expect("nats container");
    let pid_file = conf
        .lines()
        .find_map(|line| line.trim().strip_prefix("pid_file: "))
        .expect("pid_file");
    assert_eq!(
        nats["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!(["nats-server", "--signal", format!("ldm={pid_file}")])
    );
    let lame_duck =
        conf_seconds(conf, "lame_duck_grace_period") + conf_seconds(conf, "lame_duck_duration");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    assert!(
        grace > lame_duck,
        "terminationGracePeriodSeconds {grace} <= {lame_duck}"
    );
    let proxy_config: Value =
        serde_json::from_str(str_at(pod, "/metadata/annotations/proxy.istio.io~1config"))
            .expect("proxy.istio.io/config is JSON");
    let drain = str_at(&proxy_config, "/terminationDrainDuration");
    let drain: u64 = drain
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .expect("seconds");
    assert!(
        (lame_duck..grace).contains(&drain),
        "the sidecar drains {drain} s: not after lame duck mode ({lame_duck} s) and before the kill ({grace} s)"
    );
}

// ---------------------------------------------------------------------------------------------
// Standalone Envoy configs

fn wasm_filter_config(envoy_config: &Value) -> &Value {
    let filters = envoy_config
        .pointer("/static_resources/listeners/0/filter_chains/0/filters")
        .and_then(Value::as_array)
        .expect("listener filters");
    assert_eq!(filters.len(), 2, "natsguard then tcp_proxy");
    assert_eq!(filters[0]["name"], "envoy.filters.network.wasm");
    assert_eq!(filters[1]["name"], "envoy.filters.network.tcp_proxy");
    &filters[0]["typed_config"]["config"]
}

fn embedded_natsguard_config(envoy_config: &Value) -> Value {
    let configuration = &wasm_filter_config(envoy_config)["configuration"];
    assert_eq!(
        configuration["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    serde_json::from_str(str_at(configuration, "/value")).expect("natsguard configuration is JSON")
}

#[test]
fn standalone_envoy_configs_wire_natsguard() {
    for file in STANDALONE_CONFIGS {
        let envoy_config = yaml_documents(file).pop().expect("one document");
        let wasm = wasm_filter_config(&envoy_config);
        assert_eq!(wasm["root_id"], "natsguard", "{file}");
        assert_eq!(wasm["failure_policy"], "FAIL_RELOAD", "{file}");
        assert_eq!(
            wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8",
            "{file}"
        );
        assert_eq!(
            str_at(wasm, "/vm_config/code/local/filename"),
            WASM_MODULE,
            "{file}"
        );

        let config = embedded_natsguard_config(&envoy_config);
        let seed_env = str_at(&config, "/trusted_proxy/seed_env");
        let host_env = &wasm["vm_config"]["environment_variables"]["host_env_keys"];
        assert!(
            host_env
                .as_array()
                .is_some_and(|keys| keys.iter().any(|k| k == seed_env)),
            "{file}"
        );

        let clusters = envoy_config["static_resources"]["clusters"]
            .as_array()
            .expect("clusters");
        for provider in config["identity"]["jwt"]["providers"]
            .as_array()
            .expect("providers")
        {
            let cluster_name = str_at(provider, "/remote_jwks/cluster");
            let cluster = clusters
                .iter()
                .find(|c| c["name"] == cluster_name)
                .expect("JWKS cluster exists");
            let tls = &cluster["transport_socket"]["typed_config"];
            assert_eq!(
                tls["sni"], provider["remote_jwks"]["authority"],
                "{file}: JWKS over TLS to the IdP"
            );
        }

        let tls_context = envoy_config
            .pointer("/static_resources/listeners/0/filter_chains/0/transport_socket/typed_config")
            .expect("TLS listener");
        let spiffe_required = config["identity"]["spiffe"]["required"] == true;
        let jwt_required = config["identity"]["jwt"]["required"] == true;
        assert!(
            spiffe_required || jwt_required,
            "{file}: some identity must be required"
        );
        assert_eq!(
            tls_context["require_client_certificate"] == true,
            spiffe_required,
            "{file}"
        );

        let text = read_text(file);
        for filter_state in [
            "wasm.natsguard_identity:PLAIN",
            "wasm.natsguard_decision:PLAIN",
        ] {
            assert!(
                text.contains(&format!("%FILTER_STATE({filter_state})%")),
                "{file}: access log lacks {filter_state}"
            );
        }
        for path in relative_file_paths(&envoy_config) {
            assert!(
                path.starts_with("envoy/certs/") || path == WASM_MODULE,
                "{file}: {path} is neither a certificate from envoy/certs/ nor the module"
            );
        }
    }
    let jwt_only = embedded_natsguard_config(&yaml_documents(STANDALONE_CONFIGS[1]).pop().unwrap());
    assert_eq!(jwt_only["identity"]["spiffe"]["required"], false);
    assert_eq!(jwt_only["identity"]["jwt"]["required"], true);
}

/// Every relative `filename:` in an Envoy config (absolute ones are system files).
fn relative_file_paths(value: &Value) -> Vec<String> {
    match value {
        Value::Object(map) => map
            .iter()
            .flat_map(|(key, child)| match (key.as_str(), child.as_str()) {
                ("filename", Some(path)) if !path.starts_with('/') => vec![path.to_string()],
                _ => relative_file_paths(child),
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(relative_file_paths).collect(),
        _ => Vec::new(),
    }
}

/// A seed from nats-server's tests (server/auth_callout_test.go): any valid seed will do here.
const TEST_PROXY_SEED: &str = "SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU";
const ENVOY_VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `envoy --mode validate` on a config from the repository root, as docs/envoy.md runs
/// Envoy: validation reads the certificates and instantiates the module, whose on_configure
/// parses the embedded natsguard configuration. Returns success and Envoy's output (validation
/// logs to stderr).
fn envoy_validate(config_path: &Path) -> (bool, String) {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("envoy.log");
    let mut child = Command::new(support::venv_binary("envoy"))
        .args(["--mode", "validate", "--config-path"])
        .arg(config_path)
        .current_dir(repo_path(""))
        .env("NATSGUARD_PROXY_SEED", TEST_PROXY_SEED)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("envoy starts");
    let deadline = Instant::now() + ENVOY_VALIDATE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for envoy") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("envoy --mode validate did not finish within {ENVOY_VALIDATE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), support::read_log(&log))
}

/// Both standalone configs, and the Istio plugin's configuration, pass Envoy's validation with the
/// built module (`make build`, like the mesh tests need); a configuration error makes natsguard
/// refuse to start (fail closed).
#[test]
fn envoy_accepts_the_standalone_configs_and_natsguard_refuses_a_broken_one() {
    support::cert_dir();
    support::wasm_module();
    for file in STANDALONE_CONFIGS {
        let (valid, log) = envoy_validate(&repo_path(file));
        assert!(valid, "{file}: Envoy refuses it:\n{log}");
    }

    // The Istio plugin's configuration through the same filter (its JWKS cluster only exists in
    // the mesh; the filter resolves clusters when it fetches, not when it is configured).
    let mut with_istio_config = yaml_documents(STANDALONE_CONFIGS[0]).pop().unwrap();
    let istio_config = plugin_config(&istio_documents()).to_string();
    let filters = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/config/configuration/value";
    *with_istio_config
        .pointer_mut(filters)
        .expect("configuration value") = Value::from(istio_config);
    let temp = tempfile::tempdir().unwrap();
    let istio_path = temp.path().join("istio-plugin-config.json");
    std::fs::write(&istio_path, with_istio_config.to_string()).unwrap();
    let (valid, log) = envoy_validate(&istio_path);
    assert!(
        valid,
        "natsguard refuses istio/wasmplugin.yaml's pluginConfig:\n{log}"
    );

    let broken = read_text(STANDALONE_CONFIGS[0]).replace(
        r#""default_action": "deny","#,
        r#""default_action": "deny", "defualt_action": "allow","#,
    );
    let broken_path = temp.path().join("broken.yaml");
    std::fs::write(&broken_path, broken).unwrap();
    let (valid, log) = envoy_validate(&broken_path);
    assert!(
        !valid,
        "Envoy accepted a natsguard configuration with an unknown key"
    );
    assert!(
        log.contains("configuration rejected") && log.contains("defualt_action"),
        "natsguard's refusal does not name the offending key:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// OCI image

/// The smallest valid wasm module: magic and version, no sections.
const TINY_WASM: &[u8] = b"\0asm\x01\0\0\0";

struct OciRun {
    layout: PathBuf,
    stdout: String,
}

fn run_oci_script(wasm: &Path, out: &Path, tag: &str) -> OciRun {
    let output = Command::new("bash")
        .arg(repo_path("scripts/oci-image.sh"))
        .args([wasm.as_os_str(), out.as_os_str(), tag.as_ref()])
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "oci-image.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    OciRun {
        layout: out.to_path_buf(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

impl OciRun {
    fn json(&self, relative: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.layout.join(relative)).expect(relative))
            .expect(relative)
    }

    /// Reads a blob named by a descriptor and checks the descriptor's digest and size.
    fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let digest = str_at(descriptor, "/digest");
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let bytes = std::fs::read(self.layout.join("blobs/sha256").join(hex)).expect("blob exists");
        assert_eq!(sha256_hex(&bytes), hex, "blob content matches its digest");
        assert_eq!(
            descriptor["size"].as_u64(),
            Some(bytes.len() as u64),
            "descriptor size of {digest}"
        );
        bytes
    }
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let output = child.wait_with_output().expect("gzip finishes");
    writer.join().expect("writer thread").expect("gzip stdin");
    assert!(output.status.success(), "layer is valid gzip");
    output.stdout
}

/// The (name, content) entries of a ustar archive.
fn tar_entries(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset + 512 <= tar.len() && tar[offset..offset + 512].iter().any(|&b| b != 0) {
        let header = &tar[offset..offset + 512];
        let field = |range: std::ops::Range<usize>| {
            String::from_utf8_lossy(&header[range])
                .trim_end_matches('\0')
                .trim()
                .to_string()
        };
        let name = field(0..100);
        let size = usize::from_str_radix(&field(124..136), 8).expect("octal size");
        assert_eq!(header[156], b'0', "{name}: a regular file");
        let start = offset + 512;
        entries.push((name, tar[start..start + size].to_vec()));
        offset = start + size.div_ceil(512) * 512;
    }
    entries
}

#[test]
fn oci_image_layout_is_a_valid_compat_wasm_image() {
    let temp = tempfile::tempdir().unwrap();
    let wasm = temp.path().join("tiny.wasm");
    std::fs::write(&wasm, TINY_WASM).unwrap();
    let image = run_oci_script(&wasm, &temp.path().join("image"), "v1.2.3");

    assert_eq!(
        image.json("oci-layout"),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    let index = image.json("index.json");
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1);
    let manifest_descriptor = &manifests[0];
    assert_eq!(
        manifest_descriptor["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest_descriptor["annotations"]["org.opencontainers.image.ref.name"],
        "v1.2.3"
    );

    let manifest: Value = serde_json::from_slice(&image.blob(manifest_descriptor)).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"],
        "compat"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "compat variant: exactly one layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    let tar = gunzip(&image.blob(&layers[0]));
    assert_eq!(
        tar_entries(&tar),
        vec![("plugin.wasm".to_string(), TINY_WASM.to_vec())]
    );

    let config: Value = serde_json::from_slice(&image.blob(&manifest["config"])).unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip1");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([format!("sha256:{}", sha256_hex(&tar))])
    );

    let blobs = std::fs::read_dir(image.layout.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 3, "manifest, config and layer, nothing else");
    let manifest_digest = str_at(manifest_descriptor, "/digest");
    assert!(
        image
            .stdout
            .contains(&format!("manifest digest: {manifest_digest}\n")),
        "{}",
        image.stdout
    );
    assert!(
        image
            .stdout
            .contains(&format!("wasm sha256: {}\n", sha256_hex(TINY_WASM))),
        "{}",
        image.stdout
    );

    // An independent OCI implementation reads it the same way, where one is installed (Debian's
    // skopeo; the checks above stand on their own without it).
    if let Ok(inspect) = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:v1.2.3", image.layout.display()))
        .output()
    {
        assert!(
            inspect.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&inspect.stderr)
        );
        let inspected: Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(inspected["Digest"], manifest_descriptor["digest"]);
        assert_eq!(
            inspected["Layers"],
            serde_json::json!([layers[0]["digest"]])
        );
    }

    // Reproducible: the same module gives the same manifest digest (what a WasmPlugin pins).
    let again = run_oci_script(&wasm, &temp.path().join("again"), "v1.2.3");
    assert_eq!(
        again.json("index.json")["manifests"][0]["digest"],
        manifest_descriptor["digest"]
    );
}

#[test]
fn oci_script_refuses_what_is_not_a_wasm_module() {
    let temp = tempfile::tempdir().unwrap();
    let not_wasm = temp.path().join("plugin.wasm");
    std::fs::write(&not_wasm, b"#!/bin/sh\n").unwrap();
    let status = Command::new("bash")
        .arg(repo_path("scripts/oci-image.sh"))
        .args([not_wasm.as_os_str(), temp.path().join("image").as_os_str()])
        .output()
        .expect("bash runs")
        .status;
    assert!(!status.success());
    assert!(!temp.path().join("image").exists());
}

// ---------------------------------------------------------------------------------------------
// Docs

/// Path prefixes that `.gitignore` marks as build output: docs may name them before they exist.
fn generated_prefixes() -> Vec<String> {
    read_text(".gitignore")
        .lines()
        .map(|line| line.trim().trim_start_matches('/'))
        .filter(|line| line.ends_with('/') && !line.contains('*'))
        .map(str::to_string)
        .collect()
}

/// Candidate repository paths in a Markdown document, relative to the repository root: words
/// inside `code spans` (written from the root, as commands run there) and link targets (relative
/// to the document, as Markdown resolves them).
fn named_paths(document: &str, markdown: &str) -> Vec<(String, String)> {
    let directory = Path::new(document).parent().unwrap_or(Path::new(""));
    let mut candidates = Vec::new();
    for (index, span) in markdown.split('`').enumerate() {
        if index % 2 == 1 {
            candidates.extend(
                span.split_whitespace()
                    .map(|word| (word.to_string(), clean_path_word(word))),
            );
        }
    }
    for target in markdown.split("](").skip(1) {
        if let Some(end) = target.find(')') {
            let link = &target[..end];
            if link.contains("://") || link.starts_with('#') || link.starts_with("mailto:") {
                continue;
            }
            let resolved = normalize(&directory.join(clean_path_word(link)));
            candidates.push((link.to_string(), resolved));
        }
    }
    candidates
}

fn clean_path_word(word: &str) -> String {
    let word = word
        .trim_end_matches([',', '.', ':', ';', ')', '"', '\''])
        .trim_start_matches(['(', '"', '\'']);
    word.split('#').next().unwrap_or_default().to_string()
}

/// Resolves `.` and `..` without touching the file system.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for component in path.to_str().unwrap_or_default().split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let trailing_slash = if path.to_str().is_some_and(|p| p.ends_with('/')) {
        "/"
    } else {
        ""
    };
    format!("{}{trailing_slash}", parts.join("/"))
}

fn looks_like_repository_path(candidate: &str, top_level: &BTreeSet<String>) -> bool {
    let first = candidate.split('/').next().unwrap_or_default();
    !candidate.is_empty()
        && !candidate.contains("://")
        && !candidate.contains(['<', '>', '*', '{', '$', '|', '='])
        && top_level.contains(first)
        && (candidate.contains('/') || candidate.contains('.'))
}

#[test]
fn docs_name_only_existing_repository_paths() {
    let root = repo_path("");
    let top_level: BTreeSet<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.') || name == ".ci")
        .collect();
    let generated = generated_prefixes();
    let mut documents: Vec<String> = std::fs::read_dir(repo_path("docs"))
        .unwrap()
        .map(|entry| format!("docs/{}", entry.unwrap().file_name().to_string_lossy()))
        .filter(|name| name.ends_with(".md"))
        .collect();
    if repo_path("README.md").exists() {
        documents.push("README.md".into());
    }
    assert!(documents.len() >= 5, "docs/ holds the deployment guides");

    let mut missing = Vec::new();
    let mut checked = 0;
    for document in &documents {
        for (written, path) in named_paths(document, &read_text(document)) {
            if !looks_like_repository_path(&path, &top_level)
                || generated
                    .iter()
                    .any(|prefix| path.starts_with(prefix.as_str()))
            {
                continue;
            }
            checked += 1;
            if !repo_path(&path).exists() {
                missing.push(format!("{document}: `{written}` ({path})"));
            }
        }
    }
    assert!(
        checked >= 20,
        "expected the docs to name repository paths, checked only {checked}"
    );
    assert!(
        missing.is_empty(),
        "paths named in the docs that do not exist:\n{}",
        missing.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// natsguard configurations, through the filter's own parser

/// Every natsguard configuration shipped in istio/ and envoy/standalone*.yaml, with its origin.
fn shipped_natsguard_configs() -> Vec<(String, Value)> {
    let documents = istio_documents();
    let mut configs = vec![(
        "istio/wasmplugin.yaml pluginConfig".to_string(),
        plugin_config(&documents).clone(),
    )];
    for file in STANDALONE_CONFIGS {
        let envoy_config = yaml_documents(file).pop().expect("one document");
        configs.push((file.to_string(), embedded_natsguard_config(&envoy_config)));
    }
    configs
}

#[test]
fn shipped_configs_load_with_the_filters_parser_without_warnings() {
    for (origin, config) in shipped_natsguard_configs() {
        let loaded = natsguard::policy::load(&config.to_string()).unwrap_or_else(|error| {
            panic!("{origin}: natsguard rejects its configuration: {error}")
        });
        assert!(
            loaded.warnings.is_empty(),
            "{origin}: {:?}",
            loaded.warnings
        );
    }
}

#[test]
fn a_broken_shipped_config_is_rejected_with_its_json_path() {
    let (_, mut config) = shipped_natsguard_configs().swap_remove(0);
    config["rules"][2]["permissions"]["publish"]["alow"] = serde_json::json!(["x"]);
    let error = natsguard::policy::load(&config.to_string()).expect_err("unknown field");
    assert!(
        error.path.starts_with("rules[2].permissions.publish"),
        "{error}"
    );
}

/// The ```json blocks of a Markdown document.
fn json_blocks(markdown: &str) -> Vec<Value> {
    markdown
        .split("```json\n")
        .skip(1)
        .map(|rest| {
            let block = &rest[..rest.find("```").expect("closed code block")];
            serde_json::from_str(block)
                .unwrap_or_else(|e| panic!("invalid JSON block ({e}):\n{block}"))
        })
        .collect()
}

#[test]
fn configuration_examples_in_the_docs_load_with_the_filters_parser() {
    // A whole configuration loads as is; provider and rule fragments (idp-recipes.md) load inside
    // a configuration holding every provider of their document.
    let mut loaded = 0;
    for document in [
        "docs/migration.md",
        "docs/idp-recipes.md",
        "docs/envoy.md",
        "docs/istio.md",
    ] {
        let blocks = json_blocks(&read_text(document));
        let providers: Vec<&Value> = blocks
            .iter()
            .filter(|b| b.get("issuer").is_some())
            .collect();
        for block in &blocks {
            let config = if block.get("rules").is_some() || block.get("identity").is_some() {
                block.clone()
            } else {
                let rules = if block.get("permissions").is_some() {
                    vec![block.clone()]
                } else {
                    vec![]
                };
                serde_json::json!({
                    "identity": {"jwt": {"required": true, "providers": providers}},
                    "rules": rules,
                })
            };
            natsguard::policy::load(&config.to_string())
                .unwrap_or_else(|error| panic!("{document}: example rejected: {error}\n{block}"));
            loaded += 1;
        }
    }
    assert!(
        loaded >= 9,
        "expected the docs' configuration examples, loaded {loaded}"
    );
}

/// A NATS client of the venv's nats-py that connects to Envoy's TLS listener TLS-first, as
/// docs/envoy.md tells clients to: argv = port, certificate directory, publisher and subscriber
/// identity names. Prints what the subscriber received and the errors the publisher got.
const TLS_FIRST_CLIENTS: &str = r#"
import asyncio, json, ssl, sys
import nats

port, certs, publisher, subscriber = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

def tls_for(name):
    context = ssl.create_default_context(cafile=f"{certs}/ca.crt")
    context.load_cert_chain(f"{certs}/{name}.crt", f"{certs}/{name}.key")
    return context

async def connect(name, errors):
    async def on_error(error):
        errors.append(str(error))
    return await nats.connect(f"tls://127.0.0.1:{port}", tls=tls_for(name), tls_handshake_first=True,
                              tls_hostname="nats.nats.svc.cluster.local", error_cb=on_error,
                              allow_reconnect=False, connect_timeout=5)

async def main():
    received, publisher_errors, subscriber_errors = [], [], []
    async def on_message(message):
        received.append(message.subject)
    sub = await connect(subscriber, subscriber_errors)
    await sub.subscribe("billing.events.>", cb=on_message)
    await sub.flush()
    pub = await connect(publisher, publisher_errors)
    await pub.publish("billing.events.created", b"1")
    await pub.publish("billing.admin.reset", b"x")
    await pub.flush()
    await asyncio.sleep(0.5)
    print(json.dumps({"received": received, "publisher_errors": publisher_errors,
                      "subscriber_errors": subscriber_errors}))
    await pub.close()
    await sub.close()

asyncio.run(asyncio.wait_for(main(), 20))
"#;

/// `envoy/standalone.yaml` with its ports moved to free loopback ones, nats-server's port, and
/// the IdP cluster pointed at a closed loopback port (tests contact no other host).
fn localized_standalone_config(admin: u16, listener: u16, nats: u16, closed: u16) -> Value {
    fn rewrite(value: &mut Value, ports: &HashMap<u64, u64>, closed: u16) {
        match value {
            Value::Object(map) => {
                if map.get("name") == Some(&Value::from("idp"))
                    && map.contains_key("load_assignment")
                {
                    map.insert("type".into(), "STATIC".into());
                    map.remove("dns_lookup_family");
                    map.insert(
                        "load_assignment".into(),
                        serde_json::json!({"cluster_name": "idp", "endpoints": [{"lb_endpoints": [{"endpoint":
                            {"address": {"socket_address": {"address": "127.0.0.1", "port_value": closed}}}}]}]}),
                    );
                }
                for (key, entry) in map.iter_mut() {
                    match (key.as_str(), entry.as_u64(), entry.as_str()) {
                        ("port_value", Some(port), _) => {
                            *entry = Value::from(*ports.get(&port).unwrap_or(&port));
                        }
                        ("address", _, Some("0.0.0.0")) => *entry = Value::from("127.0.0.1"),
                        _ => rewrite(entry, ports, closed),
                    }
                }
            }
            Value::Array(items) => items
                .iter_mut()
                .for_each(|item| rewrite(item, ports, closed)),
            _ => {}
        }
    }
    let mut config = yaml_documents(STANDALONE_CONFIGS[0])
        .pop()
        .expect("one document");
    let ports = HashMap::from([
        (9901, u64::from(admin)),
        (4443, u64::from(listener)),
        (4222, u64::from(nats)),
    ]);
    rewrite(&mut config, &ports, closed);
    config
}

/// `envoy/standalone.yaml` end to end, run the way docs/envoy.md runs it: real Envoy from the
/// repository root (relative certificate and module paths), nats-server that trusts only
/// natsguard's proxy key and upstream login, TLS-first clients with the harness certificates.
#[test]
fn standalone_config_serves_tls_first_clients_through_natsguard() {
    let envoy = support::venv_binary("envoy");
    let certs = support::cert_dir();
    support::wasm_module();
    let embedded = embedded_natsguard_config(&yaml_documents(STANDALONE_CONFIGS[0]).pop().unwrap());
    let proxy_key = natsguard::identity::NkeySigner::from_seed(TEST_PROXY_SEED)
        .unwrap()
        .public_key();
    let nats = support::NatsServer::start(Some(&format!(
        "authorization {{ users: [ {{ user: {}, password: {}, proxy_required: true }} ] }}\n\
         proxies {{ trusted: [ {{ key: \"{proxy_key}\" }} ] }}\n",
        str_at(&embedded, "/upstream/user"),
        str_at(&embedded, "/upstream/pass"),
    )));

    let [admin, listener, closed] = support::free_ports(3)[..] else {
        unreachable!()
    };
    let run = tempfile::tempdir().unwrap();
    let config_path = run.path().join("standalone.json");
    std::fs::write(
        &config_path,
        localized_standalone_config(admin, listener, nats.port, closed).to_string(),
    )
    .unwrap();
    let log = run.path().join("envoy.log");
    let child = Command::new(&envoy)
        .arg("--config-path")
        .arg(&config_path)
        .args(["--disable-hot-restart", "--concurrency", "1", "--log-path"])
        .arg(&log)
        .current_dir(repo_path(""))
        .env("NATSGUARD_PROXY_SEED", TEST_PROXY_SEED)
        .stdout(std::fs::File::create(run.path().join("envoy.stdout")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("envoy starts");
    let mut envoy_process = support::Process {
        child,
        name: "envoy",
    };
    support::wait_for_port(listener, &mut envoy_process.child, "envoy", &log);

    let output = Command::new(support::venv_binary("python"))
        .args(["-c", TLS_FIRST_CLIENTS, &listener.to_string()])
        .arg(&certs)
        .args(["publisher", "subscriber"])
        .output()
        .expect("python runs");
    let envoy_log = support::read_log(&log);
    assert!(
        output.status.success(),
        "clients failed: {}\nenvoy log:\n{envoy_log}\nnats-server log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        nats.log()
    );
    let outcome: Value = serde_json::from_slice(&output.stdout).expect("client JSON");
    assert_eq!(
        outcome["received"],
        serde_json::json!(["billing.events.created"]),
        "{outcome}\n{envoy_log}"
    );
    let publisher_errors = outcome["publisher_errors"].to_string().to_lowercase();
    assert!(
        publisher_errors
            .contains(r#"permissions violation for publish to \"billing.admin.reset\""#),
        "{outcome}\n{envoy_log}"
    );
    assert_eq!(
        outcome["subscriber_errors"],
        serde_json::json!([]),
        "{outcome}"
    );
}

// ---------------------------------------------------------------------------------------------
// Labelled metrics: Envoy's stats tags, Istio's proxy config, the dashboard

const PROXY_CONFIG_SCHEMA: &str = "istio/schemas/istio-proxyconfig-1.28.10.yaml";
const ENVOY_CONFIGS_WITH_NATSGUARD: [&str; 3] = [
    "envoy/mesh.yaml",
    "envoy/standalone.yaml",
    "envoy/standalone-jwt-only.yaml",
];

/// The stats tags natsguard's stat names need: one per dimension, in Istio's form.
fn natsguard_stats_tags() -> Vec<(String, String)> {
    natsguard::policy::Dimension::ALL
        .iter()
        .map(|dimension| {
            (
                dimension.tag().to_owned(),
                natsguard::engine::telemetry::stats_tag_regex(*dimension),
            )
        })
        .collect()
}

#[test]
fn envoy_configs_turn_natsguards_dimensions_into_tags() {
    for file in ENVOY_CONFIGS_WITH_NATSGUARD {
        let config = yaml_documents(file).pop().expect("one document");
        let tags: Vec<(String, String)> = config["stats_config"]["stats_tags"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no stats_config.stats_tags"))
            .iter()
            .map(|tag| {
                (
                    str_at(tag, "/tag_name").to_owned(),
                    str_at(tag, "/regex").to_owned(),
                )
            })
            .collect();
        assert_eq!(tags, natsguard_stats_tags(), "{file}");
    }
}

#[test]
fn the_nats_pods_export_natsguards_metrics_with_their_tags() {
    let schema = yaml_documents(PROXY_CONFIG_SCHEMA).pop().expect("schema");
    let mut schema = schema;
    close_object_schemas(&mut schema);
    let validator = jsonschema::draft4::options()
        .should_validate_formats(false)
        .build(&schema)
        .expect("the ProxyConfig schema compiles");
    let tags: Vec<String> = natsguard_stats_tags()
        .into_iter()
        .map(|(tag, _)| tag)
        .collect();
    for (file, kind) in [
        ("istio/nats.yaml", "Deployment"),
        ("istio/nats-cluster.yaml", "StatefulSet"),
    ] {
        let documents: Vec<(String, Value)> = yaml_documents(file)
            .into_iter()
            .map(|document| (file.to_owned(), document))
            .collect();
        let annotations =
            &find_kind(&documents, kind, "nats")["spec"]["template"]["metadata"]["annotations"];
        assert!(
            annotations
                .get("sidecar.istio.io/statsInclusionPrefixes")
                .is_none(),
            "{file}: the annotation would replace proxyStatsMatcher"
        );
        let proxy_config: Value =
            serde_json::from_str(str_at(annotations, "/proxy.istio.io~1config"))
                .unwrap_or_else(|e| panic!("{file}: proxy.istio.io/config is not JSON: {e}"));
        let violations: Vec<String> = validator
            .iter_errors(&proxy_config)
            .map(|error| format!("at {}: {error}", error.instance_path()))
            .collect();
        assert!(violations.is_empty(), "{file}: {violations:?}");
        assert_eq!(
            proxy_config["proxyStatsMatcher"]["inclusionPrefixes"],
            serde_json::json!(["wasmcustom.natsguard"]),
            "{file}"
        );
        assert_eq!(
            proxy_config["extraStatTags"],
            serde_json::json!(tags),
            "{file}"
        );
    }
    let misspelt = serde_json::json!({"proxyStatsMatcher": {"inclusionPrefix": ["x"]}});
    assert!(!validator.is_valid(&misspelt));
}

#[test]
fn every_dashboard_query_parses_and_names_documented_natsguard_metrics() {
    let documented = support::dashboard::documented_metrics();
    for family in support::dashboard::labelled_families() {
        assert!(documented.contains(&family), "{family} is not documented");
    }
    let queries = support::dashboard::queries();
    assert!(queries.len() >= 10, "{queries:?}");
    // promtool (Prometheus's own parser) reads each one as a recording rule's expression.
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (index, query) in queries.iter().enumerate() {
        let names = support::dashboard::metric_names(&query.expr);
        assert!(
            !names.is_empty(),
            "{}: {} selects nothing",
            query.panel,
            query.expr
        );
        for name in names {
            assert!(
                support::dashboard::is_documented(&name, &documented),
                "{}: {name} is not a metric natsguard exports (docs/troubleshooting.md §6)",
                query.panel
            );
        }
        let expr = serde_json::to_string(&support::dashboard::instant(&query.expr)).unwrap();
        rules.push_str(&format!(
            "  - record: dashboard:query{index}\n    expr: {expr}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, &rules).expect("write the rules");
    let output = Command::new(support::prometheus::debian_binary("promtool"))
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool check rules:\n{}{}\n{rules}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // It does refuse what is not PromQL.
    std::fs::write(
        &path,
        "groups:\n- name: x\n  rules:\n  - record: x:y\n    expr: 'sum by (a (natsguard_publish_total)'\n",
    )
    .expect("write");
    let refused = Command::new(support::prometheus::debian_binary("promtool"))
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(!refused.status.success());
}

#[test]
fn metric_names_are_the_selectors() {
    let names = support::dashboard::metric_names(
        r#"topk(10, sum by (namespace, rule) (increase(natsguard_publish_total{decision="denied",rule=~"a b"}[1h]))) / on (namespace) group_left (x) natsguard_connect_total or vector(0) > bool 2.5e3"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "natsguard_connect_total".to_owned(),
            "natsguard_publish_total".to_owned()
        ])
    );
}

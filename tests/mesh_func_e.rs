//! The local harness under func-e, as its users run it: `func-e run -c envoy/mesh.yaml` from the
//! repository root, where .envoy-version selects the venv's Envoy from func-e's version layout
//! (scripts/ensure-runtime.sh), with the demo policy (envoy/demo-policy.json, by ECDS); and the
//! demo of scripts/demo-client.py through it, once with nats-py (a live policy change included)
//! and once with the nats CLI.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::{bounded_command, repo_root, successful_output, tool_binary, venv_binary, Mesh};

/// The policy `make run` demonstrates (envoy/mesh.yaml takes it by ECDS).
fn demo_policy() -> String {
    std::fs::read_to_string(repo_root().join("envoy/demo-policy.json"))
        .expect("envoy/demo-policy.json")
}

/// scripts/demo-client.py against the mesh's ports, with `extra` arguments; its output.
fn demo(mesh: &Mesh, extra: &[String]) -> String {
    let mut demo = bounded_command(venv_binary("python"), Duration::from_secs(60));
    demo.arg(repo_root().join("scripts/demo-client.py"))
        .args(["--publisher", &mesh.url_of("publisher")])
        .args(["--subscriber", &mesh.url_of("subscriber")])
        .args(["--visitor", &mesh.url_of("denied")])
        .args(["--admin", &format!("http://127.0.0.1:{}", mesh.admin_port)])
        .arg("--ecds")
        .arg(mesh.ecds_file())
        .arg("--wasm")
        .arg(support::wasm_module())
        .args(extra);
    successful_output(&mut demo, "scripts/demo-client.py")
}

fn assert_shows(output: &str, expected: &[&str]) {
    for line in expected {
        assert!(output.contains(line), "no {line:?} in:\n{output}");
    }
}

/// The one run directory func-e made, once it holds the config dump func-e takes when Envoy's
/// admin endpoint is ready.
fn func_e_run_dir(mesh: &Mesh) -> PathBuf {
    let runs = mesh.dir.path().join("func-e/state/envoy-runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dirs: Vec<PathBuf> = std::fs::read_dir(&runs)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if let [dir] = &dirs[..] {
            if dir.join("config_dump.json").is_file() {
                return dir.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no func-e run directory with a config dump in {}: {dirs:?}",
            runs.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_demo_works_through_the_mesh_harness_under_func_e() {
    let mesh = Mesh::start_under_func_e(&demo_policy());
    let run_dir = func_e_run_dir(&mesh);
    let dump = std::fs::read_to_string(run_dir.join("config_dump.json")).expect("config dump");
    assert!(
        dump.contains("\"inbound_nats\"") && dump.contains("natsguard"),
        "func-e's config dump is the mesh's"
    );
    let launcher = std::fs::read_link(format!("/proc/{}/exe", mesh.envoy_pid())).expect("exe");
    assert_eq!(
        launcher,
        tool_binary("func-e").canonicalize().expect("func-e"),
        "the mesh's Envoy process is func-e's"
    );

    let with_nats_py = demo(&mesh, &[]);
    assert_shows(
        &with_nats_py,
        &[
            "subscriber received billing.invoice: invoice #42",
            "publisher's error callback: nats: permissions violation for publish to \"billing.admin.reset\"",
            "publisher still connected: True",
            "refused: nats: 'Authorization Violation'",
            "publisher's error callback: nats: permissions violation for publish to \"billing.refund\"",
            "subscriber's error callback: nats: permissions violation for subscription to \"billing.>\" (sid \"1\")",
            "subscriber received billing.invoice.43: invoice #43",
            "both still connected: True",
            "wasmcustom.natsguard.publish_denied: 2",
            "wasmcustom.natsguard.connections_denied.no_matching_rule: 1",
        ],
    );

    let nats_cli = tool_binary("nats").display().to_string();
    let with_nats_cli = demo(&mesh, &["--nats-cli".into(), nats_cli]);
    assert_shows(
        &with_nats_cli,
        &[
            "Published 11 bytes to \"billing.invoice\"",
            "[#1] Received on \"billing.invoice\"",
            "invoice #42",
            "nats: error: nats: permissions violation: Permissions Violation for Publish to \"billing.admin.reset\"",
            "nats: error: nats: Authorization Violation",
            "wasmcustom.natsguard.publish_denied: 3",
        ],
    );
}

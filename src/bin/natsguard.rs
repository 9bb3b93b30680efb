//! The `natsguard` command: natsguard's configuration checked and delivered with exactly the
//! filter's code (`natsguard::policy::load`), outside Envoy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use natsguard::ecds::{self, FilterSettings};
use natsguard::policy;

#[derive(Parser)]
#[command(
    name = "natsguard",
    version,
    about = "natsguard's configuration, checked and delivered outside Envoy",
    after_help = "Examples:\n  natsguard check envoy/demo-policy.json\n  natsguard ecds envoy/demo-policy.json --out .run/natsguard-ecds.json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate configurations with the filter's own loader; exit 0 if valid, 2 if not.
    Check {
        /// natsguard configuration files (JSON); `-` reads standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write the configuration as an Envoy ECDS file (a DiscoveryResponse), atomically: Envoy
    /// applies it to new and open connections when it is renamed over the watched path.
    #[command(
        after_help = "Envoy's listener names the file in the natsguard filter:\n  - name: natsguard\n    config_discovery:\n      config_source: { path_config_source: { path: /etc/envoy/natsguard-ecds.json } }\n      type_urls: [\"type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm\"]\nThe configuration is checked first; an invalid one writes nothing (exit 2)."
    )]
    Ecds {
        /// natsguard configuration file (JSON); `-` reads standard input.
        policy: PathBuf,
        /// The ECDS file Envoy watches.
        #[arg(long)]
        out: PathBuf,
        /// The module as Envoy resolves the path.
        #[arg(long, default_value = "target/wasm32-wasip1/release/natsguard.wasm")]
        wasm: String,
        /// Filter, resource and plugin name (a newer configuration takes over the open
        /// connections of the plugin with the same name and root id).
        #[arg(long, default_value = "natsguard")]
        name: String,
        #[arg(long, default_value = "natsguard")]
        root_id: String,
        #[arg(long, default_value = "natsguard")]
        vm_id: String,
        #[arg(long, default_value = "FAIL_RELOAD", value_parser = ["FAIL_RELOAD", "FAIL_CLOSED"])]
        failure_policy: String,
        /// An environment variable of Envoy's process the VM may read (repeatable); the
        /// configuration's `trusted_proxy.seed_env` is added by itself.
        #[arg(long = "host-env")]
        host_env: Vec<String>,
    },
    /// Turn a nats-server configuration's `authorization` block into a natsguard policy on
    /// standard output, one rule per user given with --user; notes on standard error.
    #[command(
        after_help = "Each --user maps a nats-server user to the Istio principal of the workload that connects as it\n(<trust-domain>/ns/<namespace>/sa/<service-account>); users without --user are skipped (noted).\nThe user's permissions (or default_permissions when it has none) keep nats-server's meaning;\naccounts, nkey users, auth callout, token authorization and subject mappings are refused,\nwith the file and line. The policy is checked with the filter's own loader.\n\nExamples:\n  natsguard import /etc/nats/nats-server.conf --user billing-api=cluster.local/ns/billing/sa/api > policy.json\n  natsguard import nats.conf --user worker=cluster.local/ns/billing/sa/worker \\\n      --user worker=cluster.local/ns/billing/sa/batch --user shipping=cluster.local/ns/shipping/sa/default"
    )]
    Import {
        /// nats-server configuration file (its includes are read relative to it).
        conf: PathBuf,
        /// A nats-server user and the principal of the workload that connects as it
        /// (repeatable; a user given several principals gets one rule for all of them).
        #[arg(long = "user", value_name = "NAME=PRINCIPAL", required = true)]
        users: Vec<String>,
    },
}

/// A failure to report on one line, with the file it concerns.
struct Failure(String);

fn read(path: &Path) -> Result<String, Failure> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    text.map_err(|error| Failure(format!("{}: {error}", path.display())))
}

fn load(path: &Path) -> Result<(String, policy::LoadedPolicy), Failure> {
    let json = read(path)?;
    let loaded =
        policy::load(&json).map_err(|error| Failure(format!("{}: {error}", path.display())))?;
    Ok((json, loaded))
}

fn check(files: &[PathBuf]) -> Result<(), Failure> {
    let mut invalid = 0;
    for file in files {
        match load(file) {
            Ok((_, loaded)) => {
                println!(
                    "{}: valid, policy version {}",
                    file.display(),
                    loaded.policy.version()
                );
                for warning in &loaded.warnings {
                    println!("{}: warning: {warning}", file.display());
                }
            }
            Err(Failure(message)) => {
                eprintln!("{message}");
                invalid += 1;
            }
        }
    }
    match invalid {
        0 => Ok(()),
        _ => Err(Failure(format!(
            "{invalid} of {} files invalid",
            files.len()
        ))),
    }
}

fn write_ecds(policy_file: &Path, out: &Path, mut settings: FilterSettings) -> Result<(), Failure> {
    let (json, loaded) = load(policy_file)?;
    if let Some(policy::TrustedProxySeed::Env(name)) = loaded.policy.trusted_proxy() {
        if !settings.host_env_keys.contains(name) {
            settings.host_env_keys.push(name.clone());
        }
    }
    let version = loaded.policy.version();
    let response = ecds::discovery_response(&settings, &json, version);
    let mut bytes =
        serde_json::to_vec_pretty(&response).map_err(|error| Failure(error.to_string()))?;
    bytes.push(b'\n');
    ecds::write_atomically(out, &bytes)
        .map_err(|error| Failure(format!("{}: {error}", out.display())))?;
    println!(
        "{}: policy version {version} from {} ({} rules)",
        out.display(),
        policy_file.display(),
        loaded.policy.rule_names().count()
    );
    Ok(())
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Check { files } => check(&files),
        Command::Ecds {
            policy,
            out,
            wasm,
            name,
            root_id,
            vm_id,
            failure_policy,
            host_env,
        } => write_ecds(
            &policy,
            &out,
            FilterSettings {
                name,
                root_id,
                vm_id,
                wasm_path: wasm,
                failure_policy,
                host_env_keys: host_env,
            },
        ),
        Command::Import { conf, users } => natsguard::import::command(
            &conf,
            &users,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )
        .map_err(Failure),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            if !message.is_empty() {
                eprintln!("natsguard: {message}");
            }
            ExitCode::from(2)
        }
    }
}

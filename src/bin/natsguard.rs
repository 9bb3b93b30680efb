//! The `natsguard` command: natsguard's configuration checked, explained and delivered with
//! exactly the filter's code, outside Envoy. This file reads files and prints; the work is in
//! `natsguard::command` (and `natsguard::ecds`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use natsguard::command::explain::{self, Credential, Operation, Question};
use natsguard::command::{check, source};
use natsguard::ecds::{self, FilterSettings};
use natsguard::engine::Gate;

/// Where a configuration can come from, for every command's help.
macro_rules! sources {
    () => {
        "FILE is natsguard's JSON configuration, an Envoy configuration (YAML or JSON) with the\nnatsguard Wasm network filter's `configuration`, an ECDS file, or an Istio WasmPlugin\nmanifest (`spec.pluginConfig`); `-` reads standard input."
    };
}

#[derive(Parser)]
#[command(
    name = "natsguard",
    version,
    about = "natsguard's configuration checked, explained and delivered outside Envoy, with the filter's own code",
    after_help = "Examples:\n  natsguard check envoy/demo-policy.json istio/wasmplugin.yaml\n  natsguard explain envoy/demo-policy.json --spiffe spiffe://cluster.local/ns/billing/sa/publisher pub billing.admin.x\n  natsguard permissions istio/wasmplugin.yaml --spiffe spiffe://cluster.local/ns/billing/sa/api\n  natsguard ecds envoy/demo-policy.json --out .run/natsguard-ecds.json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate configurations with the filter's own loader and lint them: exit 0 when valid
    /// (1 with --strict when there are warnings), 2 when any is invalid.
    #[command(after_help = sources!())]
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Warnings fail the check too (exit 1): for the CI of a policy repository.
        #[arg(long)]
        strict: bool,
    },
    /// Why the filter decides what it decides for one identity: its facts, the rules it matches
    /// (and why each other one does not), its permissions, the decision with the entry that
    /// made it, and the exact bytes the client gets.
    #[command(after_help = concat!(
        "Examples:\n  natsguard explain envoy/demo-policy.json --spiffe spiffe://cluster.local/ns/billing/sa/publisher pub billing.admin.x\n  natsguard explain policy.json --spiffe spiffe://cluster.local/ns/ops/sa/cli --jwt \"$TOKEN\" sub '$JS.API.>'\n  natsguard explain policy.json --spiffe ID --claims '{\"iss\":\"https://idp\",\"sub\":\"alice\",\"groups\":[\"ops\"]}' deliver billing.secret --sub 'billing.>'\n\nA token is verified against the configuration's inline keys (remote key sets with --jwks);\n--no-verify only decodes it, and the output says so.\n\n",
        sources!()
    ))]
    Explain {
        #[command(flatten)]
        who: Who,
        #[command(subcommand)]
        operation: ExplainOperation,
    },
    /// The nats-server `permissions` block that gives a nats-server user the permissions this
    /// identity gets (templates resolved).
    #[command(after_help = sources!())]
    Permissions {
        #[command(flatten)]
        who: Who,
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
        /// configuration's `seed_env`s (`trusted_proxy`, `provenance.sign`) are added by
        /// themselves.
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
    /// Check the provenance signatures (`Nats-Publisher-Sig`) of messages: exit 0 when every
    /// message verifies with one of the keys, 1 when one does not, 2 when the input is unreadable.
    #[command(
        after_help = "INPUT is what `nats sub` prints (`[#1] Received on \"subject\"`, headers, payload), or raw\nprotocol bytes as a subscriber reads them from nats-server (`HMSG subject sid [reply] #hdr #total`);\n`-` (default) reads standard input. The signature format is in docs/provenance.md.\n\nExamples:\n  nats sub 'orders.>' --count 1 | natsguard verify --key NABC...\n  natsguard verify --key \"$(cat natsguard-provenance.pub)\" captured-hmsg.bin"
    )]
    Verify {
        /// A public nkey whose signatures count: the natsguard deployment's `provenance.sign`
        /// key (repeatable).
        #[arg(long = "key", value_name = "PUBLIC_NKEY", required = true)]
        keys: Vec<String>,
        /// `provenance.header` of the deployment (the signature is `<header>-Sig`).
        #[arg(long, default_value = natsguard::policy::DEFAULT_PROVENANCE_HEADER)]
        header: String,
        #[arg(value_name = "INPUT", default_value = "-")]
        input: PathBuf,
    },
}

/// The configuration and the identity a question is about.
#[derive(Args)]
struct Who {
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Which configuration of a file holding several (the location `check` prints).
    #[arg(long, global = true, value_name = "LOCATION")]
    at: Option<String>,
    /// The URI SAN of the client's certificate.
    #[arg(long, global = true, value_name = "ID")]
    spiffe: Option<String>,
    /// The token the client presents in CONNECT.
    #[arg(long, global = true, value_name = "TOKEN", conflicts_with = "claims")]
    jwt: Option<String>,
    /// A token's claims as JSON, taken as verified (no token at hand).
    #[arg(long, global = true, value_name = "JSON")]
    claims: Option<String>,
    /// Decode --jwt without verifying it.
    #[arg(long, global = true, requires = "jwt")]
    no_verify: bool,
    /// The key set of a provider with remote_jwks, from a file (repeatable).
    #[arg(long, global = true, value_name = "PROVIDER=FILE")]
    jwks: Vec<String>,
    /// JSON for tooling instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum ExplainOperation {
    /// A PUB (or HPUB) to SUBJECT.
    Pub {
        subject: String,
        reply: Option<String>,
    },
    /// A SUB to SUBJECT, in QUEUE.
    Sub {
        subject: String,
        queue: Option<String>,
    },
    /// A message on SUBJECT delivered to a subscription to PATTERN (in QUEUE).
    Deliver {
        subject: String,
        #[arg(long = "sub", value_name = "PATTERN")]
        subscription: String,
        queue: Option<String>,
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

fn check(files: &[PathBuf], strict: bool) -> Result<ExitCode, Failure> {
    let (mut invalid, mut warnings) = (0, 0);
    for file in files {
        let name = file.display().to_string();
        let checked = match read(file) {
            Ok(text) => check::check(&name, &text, &|variable| std::env::var(variable).ok()),
            Err(Failure(message)) => check::Checked {
                errors: vec![format!("{message}")],
                ..Default::default()
            },
        };
        for line in &checked.lines {
            println!("{line}");
        }
        for error in &checked.errors {
            eprintln!("{error}");
        }
        invalid += usize::from(!checked.errors.is_empty());
        warnings += checked.warnings;
    }
    Ok(if invalid > 0 {
        eprintln!(
            "natsguard check: {invalid} of {} files invalid",
            files.len()
        );
        ExitCode::from(2)
    } else if strict && warnings > 0 {
        eprintln!(
            "natsguard check: {} (--strict)",
            check::counted(warnings, "warning")
        );
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The one configuration of `who.file` (or the one at `who.at`), loaded as the filter loads it.
fn gate_of(who: &Who) -> Result<Gate, Failure> {
    let name = who.file.display().to_string();
    let found = source::configurations(&read(&who.file)?)
        .map_err(|reason| Failure(format!("{name}: {reason}")))?;
    let locations = || {
        found
            .iter()
            .map(|found| found.location.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let chosen = match &who.at {
        Some(at) => found
            .iter()
            .find(|found| found.location == *at)
            .ok_or_else(|| {
                Failure(format!(
                    "{name}: no configuration at {at:?} (there are: {})",
                    locations()
                ))
            })?,
        None if found.len() == 1 => &found[0],
        None => {
            return Err(Failure(format!(
                "{name} holds {} natsguard configurations ({}): choose one with --at",
                found.len(),
                locations()
            )))
        }
    };
    Gate::load(&chosen.json, &|_| Ok(None))
        .map(|(gate, _)| gate)
        .map_err(|reason| Failure(format!("{name}: {reason}")))
}

fn question(who: &Who) -> Result<Question, Failure> {
    let credential = match (&who.jwt, &who.claims) {
        (Some(token), _) => Credential::Token {
            token: token.trim().to_owned(),
            verify: !who.no_verify,
        },
        (None, Some(claims)) => match serde_json::from_str(claims) {
            Ok(serde_json::Value::Object(claims)) => Credential::Claims(claims),
            _ => return Err(Failure("--claims: not a JSON object".to_owned())),
        },
        (None, None) => Credential::None,
    };
    let remote_keys = who
        .jwks
        .iter()
        .map(|given| {
            let (provider, file) = given
                .split_once('=')
                .ok_or_else(|| Failure(format!("--jwks {given}: expected PROVIDER=FILE")))?;
            let keys = std::fs::read(file).map_err(|error| Failure(format!("{file}: {error}")))?;
            Ok((provider.to_owned(), keys))
        })
        .collect::<Result<_, Failure>>()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    Ok(Question {
        spiffe: who.spiffe.clone(),
        credential,
        remote_keys,
        now,
    })
}

fn explain(who: &Who, operation: Option<Operation>) -> Result<(), Failure> {
    let gate = gate_of(who)?;
    let explanation = explain::explain(&gate.policy, &question(who)?, operation.as_ref())
        .map_err(|reason| Failure(format!("{}: {reason}", who.file.display())))?;
    if who.json {
        let json =
            serde_json::to_string_pretty(&explanation).map_err(|e| Failure(e.to_string()))?;
        println!("{json}");
    } else if operation.is_none() {
        print_permissions(&explanation);
    } else {
        print!("{}", explain::render(&explanation));
    }
    Ok(())
}

/// `natsguard permissions`: the block in nats-server's configuration syntax, with what the
/// filter reads stricter as comments.
fn print_permissions(explanation: &explain::Explanation) {
    let identity = &explanation.identity;
    let who = identity
        .principal
        .as_deref()
        .or(identity
            .token
            .as_ref()
            .map(|token| token.request_principal.as_str()))
        .unwrap_or("the anonymous connection");
    println!(
        "# natsguard policy version {}: the permissions of {who}",
        explanation.policy_version
    );
    let Some(permissions) = &explanation.permissions else {
        let refused = identity.refused.as_deref().unwrap_or("refused");
        println!("# refused at CONNECT ({refused}): no permissions, the client gets -ERR 'Authorization Violation'");
        return;
    };
    if let Some(rules) = &explanation.rules {
        let matched: Vec<&str> = rules
            .iter()
            .filter(|rule| rule.matches)
            .map(|rule| rule.name.as_str())
            .collect();
        println!(
            "# rules: {}",
            if matched.is_empty() {
                "none (default_action allow)".to_owned()
            } else {
                matched.join(", ")
            }
        );
    }
    println!("# natsguard reads `*` stricter than nats-server (it does not stand for a literal `>` token): docs/policy.md");
    println!(
        "permissions: {}",
        serde_json::to_string_pretty(permissions).unwrap_or_default()
    );
}

fn write_ecds(policy_file: &Path, out: &Path, mut settings: FilterSettings) -> Result<(), Failure> {
    let json = read(policy_file)?;
    let (gate, _) = Gate::load(&json, &|variable| Ok(std::env::var(variable).ok()))
        .map_err(|reason| Failure(format!("{}: {reason}", policy_file.display())))?;
    let policy = &gate.policy;
    for (_, name) in policy.seed_envs() {
        if !settings.host_env_keys.iter().any(|known| known == name) {
            settings.host_env_keys.push(name.to_owned());
        }
    }
    let version = policy.version();
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
        policy.rule_names().count()
    );
    Ok(())
}

fn verify(keys: &[String], header: &str, input: &Path) -> Result<ExitCode, Failure> {
    let trusted = keys
        .iter()
        .map(|key| {
            natsguard::identity::PublicNkey::parse(key)
                .map_err(|error| Failure(format!("--key {key}: {error}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = if input == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(input)
    }
    .map_err(|error| Failure(format!("{}: {error}", input.display())))?;
    let checked = natsguard::command::verify::verify_input(&bytes, header, &trusted)
        .map_err(|reason| Failure(format!("{}: {reason}", input.display())))?;
    for message in &checked {
        println!("{}", message.line());
    }
    Ok(if checked.iter().all(|message| message.outcome.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Check { files, strict } => check(&files, strict),
        Command::Explain { who, operation } => {
            let operation = match operation {
                ExplainOperation::Pub { subject, reply } => Operation::Publish { subject, reply },
                ExplainOperation::Sub { subject, queue } => Operation::Subscribe { subject, queue },
                ExplainOperation::Deliver {
                    subject,
                    subscription,
                    queue,
                } => Operation::Deliver {
                    subject,
                    subscription,
                    queue,
                },
            };
            explain(&who, Some(operation)).map(|()| ExitCode::SUCCESS)
        }
        Command::Permissions { who } => explain(&who, None).map(|()| ExitCode::SUCCESS),
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
        )
        .map(|()| ExitCode::SUCCESS),
        Command::Import { conf, users } => natsguard::import::command(
            &conf,
            &users,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )
        .map(|()| ExitCode::SUCCESS)
        .map_err(Failure),
        Command::Verify {
            keys,
            header,
            input,
        } => verify(&keys, &header, &input),
    };
    match outcome {
        Ok(code) => code,
        Err(Failure(message)) => {
            if !message.is_empty() {
                eprintln!("natsguard: {message}");
            }
            ExitCode::from(2)
        }
    }
}

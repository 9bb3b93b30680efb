//! `natsguard import` as a command (the built binary) on realistic nats-server configurations
//! and on a generated one (200 users, each a generated permissions block in a random spelling:
//! aliases, separators, quoting, forms, variables), and the round trip: nats-server started
//! with the same configuration (users with passwords) decides like natsguard's engine with the
//! imported policy, for every imported user, over generated SUBs (with and without queue),
//! PUBs, deliveries from an unrestricted feeder and replies under allow_responses (the
//! conformance harness of tests/support/conformance.rs: never looser, and identical except
//! natsguard's documented deliberate differences).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use natsguard::identity::{Identity, SpiffeId};
use natsguard::policy;
use serde_json::Value;
use support::conformance::{
    generate_block, generate_ops, run_user, Client, Outcome, Rng, UserRun, Vocabulary,
};

const SEED: u64 = 0x696d_706f_7274;
/// Connections (each with freshly generated operations) per imported user of the written
/// configurations.
const SESSIONS_PER_USER: usize = 40;
/// Users of the generated configuration, one connection each.
const GENERATED_USERS: usize = 200;
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// The shapes of docs/migration.md in one file: variables, default_permissions, aliases,
/// every permission form, comments of both kinds.
const INLINE: &[(&str, &str)] = &[(
    "inline.conf",
    r#"# Billing and shipping share this server.
server_name: import-round-trip
PASS = "s3cret"

authorization {
  timeout: 2 // seconds
  default_permissions = {
    publish = "SANDBOX.*"
    subscribe = ["PUBLIC.>", "_INBOX.>"]
  }
  BILLING = {
    publish = { allow: ["billing.>", "_INBOX.>"], deny: ["billing.admin.>"] }
    subscribe = ["billing.>", "_INBOX.>"]
  }
  RESPONDER: {
    sub: "billing.requests.* billing-workers"
    allow_responses: { max_msgs: 2, ttl: "1m" }
  }
  users = [
    { user: billing-api, password: $PASS, permissions: $BILLING }
    {user: "billing-worker", pass: $PASS, permissions = $RESPONDER}
    { user: shipping, password: $PASS
      permissions: {
        pub: ["shipping.>", "billing.requests.*"]   # requests to billing
        sub: { allow: ["shipping.>", "billing.events.*   shipping", "_INBOX.>"], deny: "shipping.audit.>" }
      }
    }
    { user: sandbox, password: $PASS }
    { user: auditor, password: $PASS
      permissions: {
        import: { deny: "audit.secret.>" } # with allow_responses: replies only
        export: { allow: ">", deny: ["billing.admin.>", "shipping.* secret"] }
        publish_allow_responses: true
      }
    }
    # The harness's feeder, not imported: an empty block keeps default_permissions away.
    { user: feeder, password: $PASS, permissions: {} }
  ]
}
"#,
)];

const INLINE_USERS: &[&str] = &[
    "billing-api=cluster.local/ns/billing/sa/api",
    "billing-worker=cluster.local/ns/billing/sa/worker",
    "shipping=cluster.local/ns/shipping/sa/default",
    "sandbox=dev.example/ns/sandbox/sa/tools",
    "auditor=cluster.local/ns/audit/sa/auditor",
];

/// Permissions in files of their own, included from inside the authorization block and from
/// an include (paths relative to the including file).
const INCLUDED: &[(&str, &str)] = &[
    (
        "includes.conf",
        "// Limits and users come from other files.\ninclude \"limits.conf\"\nauthorization {\n  include 'auth/users.conf'\n}\n",
    ),
    ("limits.conf", "max_payload: 1MB\nmax_control_line = 4KB\n"),
    (
        "auth/users.conf",
        r#"include ../perms/common.conf   # ORDERS and READER
users: [
  { user: orders, password: pw, permissions: $ORDERS }
  { user: reader, password: pw, permissions: $READER }
  { user: feeder, password: pw }
]
"#,
    ),
    (
        "perms/common.conf",
        r#"ORDERS = {
  publish: { allow: ["orders.>", "_INBOX.>"], deny: "orders.*.cancelled" }
  subscribe: { allow: ["orders.* order-workers", "orders.>", "_INBOX.>"], deny: ["orders.audit"] }
  allow_responses: { max: 1, expires: "30s" }
}
READER = {
  subscribe: { allow: ">", deny: ["orders.*.cancelled", "orders.secret q1"] }
}
"#,
    ),
];

const INCLUDED_USERS: &[&str] = &[
    "orders=cluster.local/ns/orders/sa/api",
    "reader=cluster.local/ns/orders/sa/reader",
];

/// The configuration files in a directory of their own.
fn write_config(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create config dir");
        std::fs::write(path, text).expect("write config");
    }
    dir
}

fn natsguard_command(args: &[&str]) -> Command {
    let mut command = support::bounded_command(env!("CARGO_BIN_EXE_natsguard"), COMMAND_LIMIT);
    command.args(args);
    command
}

fn natsguard(args: &[&str]) -> Output {
    natsguard_command(args).output().expect("run natsguard")
}

fn import(conf: &Path, users: &[&str]) -> Output {
    let mut args = vec!["import".to_owned(), conf.display().to_string()];
    for user in users {
        args.extend(["--user".to_owned(), (*user).to_owned()]);
    }
    natsguard(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The policy and the notes of a successful import.
fn imported(conf: &Path, users: &[&str]) -> (Value, String) {
    let output = import(conf, users);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "natsguard import failed: {stderr}");
    let policy = serde_json::from_slice(&output.stdout).expect("the policy is JSON");
    (policy, stderr)
}

/// nats-server started with the configuration at `main` itself: the server's own file only
/// includes it (both directories are siblings in the temporary directory), so its includes
/// resolve as they do for `natsguard import`.
fn start_server(config_dir: &Path, main: &str) -> support::NatsServer {
    let dir_name = config_dir.file_name().expect("config dir name");
    let included = PathBuf::from("..").join(dir_name).join(main);
    support::NatsServer::start(Some(&format!("include \"{}\"\n", included.display())))
}

/// Subjects, patterns and queue groups of the imported entries, for the generated operations.
fn vocabulary(policy: &Value) -> Vocabulary {
    let mut entries = Vec::new();
    for rule in policy["rules"].as_array().expect("rules") {
        for direction in ["publish", "subscribe"] {
            let permission = &rule["permissions"][direction];
            let lists = match permission {
                Value::Array(_) => vec![permission],
                _ => vec![&permission["allow"], &permission["deny"]],
            };
            for entry in lists.into_iter().filter_map(Value::as_array).flatten() {
                entries.push(entry.as_str().expect("entry").to_owned());
            }
        }
    }
    let mut tokens = BTreeSet::from(["x".to_owned()]);
    let mut patterns = BTreeSet::new();
    let mut queues = BTreeSet::from(["q1".to_owned(), "_sys_".to_owned()]);
    for entry in &entries {
        let mut fields = entry.split(' ');
        let subject = fields.next().expect("subject");
        queues.extend(fields.map(str::to_owned));
        patterns.insert(subject.to_owned());
        tokens.extend(
            subject
                .split('.')
                .filter(|token| !matches!(*token, "*" | ">"))
                .map(str::to_owned),
        );
    }
    Vocabulary {
        tokens: tokens.into_iter().collect(),
        patterns: patterns.into_iter().collect(),
        queues: queues.into_iter().collect(),
    }
}

/// How a round trip runs.
struct Sessions {
    /// The password of every user (the feeder's too).
    password: &'static str,
    /// Connections per imported user.
    per_user: usize,
    /// Decisions that must at least be compared.
    min_decisions: usize,
}

/// Every imported user against nats-server: each rule's identity (its principal) resolved in
/// the imported policy, and the nats-server user of the same name.
fn round_trip(files: &[(&str, &str)], users: &[&str], sessions: Sessions) {
    let Sessions {
        password,
        per_user,
        min_decisions,
    } = sessions;
    let dir = write_config(files);
    let conf = dir.path().join(files[0].0);
    let (policy, notes) = imported(&conf, users);
    assert!(
        notes.contains("natsguard: note: user \"feeder\" (") && notes.contains("is not imported"),
        "{notes}"
    );
    let loaded = policy::load(&policy.to_string()).expect("the imported policy loads");
    let server = start_server(dir.path(), files[0].0);
    let started = Instant::now();
    let mut feeder = Client::connect(server.port, "feeder", password);
    let mut rng = Rng::with_vocabulary(SEED, vocabulary(&policy));
    let mut outcome = Outcome::default();
    let mut index = 0;
    for rule in policy["rules"].as_array().expect("rules") {
        let name = rule["name"].as_str().expect("name");
        let principal = rule["from"]["principals"][0].as_str().expect("principal");
        let identity = Identity {
            spiffe: Some(SpiffeId::parse(&format!("spiffe://{principal}")).expect("SPIFFE ID")),
            ..Identity::default()
        };
        for _ in 0..per_user {
            let ops = generate_ops(&mut rng);
            let engine = loaded.policy.resolve(&identity).expect("the rule matches");
            let mut user = Client::connect(server.port, name, password);
            let run = UserRun {
                index,
                name,
                block: &rule["permissions"],
                ops: &ops,
            };
            run_user(&run, engine, &mut user, &mut feeder, started, &mut outcome);
            index += 1;
        }
    }
    eprintln!(
        "{}: {} users, {index} connections, {}, in {:?}",
        files[0].0,
        policy["rules"].as_array().map_or(0, Vec::len),
        outcome.summary(),
        started.elapsed()
    );
    outcome.assert_conformant(files[0].0);
    assert!(
        outcome.compared >= min_decisions,
        "only {} decisions",
        outcome.compared
    );
}

#[test]
fn imported_users_decide_like_nats_server() {
    for (files, users, password, min_decisions) in [
        (INLINE, INLINE_USERS, "s3cret", 4_000),
        (INCLUDED, INCLUDED_USERS, "pw", 1_500),
    ] {
        let sessions = Sessions {
            password,
            per_user: SESSIONS_PER_USER,
            min_decisions,
        };
        round_trip(files, users, sessions);
    }
}

/// A string as nats-server's configuration takes it: unquoted, `"double"` or `'single'` quoted.
fn conf_string(rng: &mut Rng, text: &str) -> String {
    match rng.below(3) {
        0 if !text.contains(' ') => text.to_owned(),
        1 => format!("'{text}'"),
        _ => format!("\"{text}\""),
    }
}

/// `key value` with one of nats-server's separators.
fn conf_entry(rng: &mut Rng, key: &str, value: &str) -> String {
    format!("{key}{}{value}", rng.pick(&[": ", " = ", " ", ":", "="]))
}

fn conf_map(rng: &mut Rng, entries: &[String]) -> String {
    let comment = if rng.chance(20) { "// generated\n" } else { "" };
    let separator = rng.pick(&[", ", "\n", "; ", ",\n"]);
    format!("{{ {comment}{} }}", entries.join(separator))
}

fn conf_list(rng: &mut Rng, items: &[Value]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|item| conf_string(rng, item.as_str().expect("subject")))
        .collect();
    format!("[{}]", items.join(rng.pick(&[", ", ",\n", "\n", " , "])))
}

/// A generated permissions block in nats-server's spelling: aliases, separators, quoting, the
/// string, list and map forms, comments, each chosen at random.
fn conf_permissions(rng: &mut Rng, block: &Value) -> String {
    let mut entries = Vec::new();
    for (name, value) in block.as_object().expect("block") {
        let (key, text) = match name.as_str() {
            "allow_responses" => {
                let key = rng.pick(&["allow_responses", "publish_allow_responses"]);
                let text = match value {
                    Value::Bool(_) => rng.pick(&["true", "yes", "on", "TRUE"]).to_owned(),
                    limits => {
                        let max = limits["max"].to_string();
                        let expires = limits["expires"].as_str().expect("expires");
                        let max_key =
                            rng.pick(&["max", "max_msgs", "max_messages", "max_responses"]);
                        let expires_key = rng.pick(&["expires", "expiration", "ttl"]);
                        let limits = [
                            conf_entry(rng, max_key, &max),
                            conf_entry(rng, expires_key, &format!("\"{expires}\"")),
                        ];
                        conf_map(rng, &limits)
                    }
                };
                (key, text)
            }
            direction => {
                let key = match direction {
                    "publish" => rng.pick(&["publish", "pub", "import", "Publish"]),
                    _ => rng.pick(&["subscribe", "sub", "export", "SUB"]),
                };
                let text = match value {
                    Value::Array(items) if items.len() == 1 && rng.chance(50) => {
                        conf_string(rng, items[0].as_str().expect("subject"))
                    }
                    Value::Array(items) => conf_list(rng, items),
                    lists => {
                        let mut fields = Vec::new();
                        for (list, items) in lists.as_object().expect("allow/deny") {
                            let items = conf_list(rng, items.as_array().expect("list"));
                            fields.push(conf_entry(rng, list, &items));
                        }
                        conf_map(rng, &fields)
                    }
                };
                (key, text)
            }
        };
        entries.push(conf_entry(rng, key, &text));
    }
    conf_map(rng, &entries)
}

#[test]
fn generated_configurations_decide_like_nats_server() {
    let mut rng = Rng::new(SEED);
    let mut variables = String::new();
    let mut users = vec!["    { user: feeder, password: pw, permissions: {} }".to_owned()];
    for index in 0..GENERATED_USERS {
        let block = generate_block(&mut rng);
        let permissions = conf_permissions(&mut rng, &block);
        let key = rng.pick(&["permissions", "permission", "authorization"]);
        let value = if rng.chance(30) {
            variables += &format!("  P{index} = {permissions}\n");
            format!("$P{index}")
        } else {
            permissions
        };
        let entry = conf_entry(&mut rng, key, &value);
        users.push(format!("    {{ user: u{index}, password: pw, {entry} }}"));
    }
    let config = format!(
        "# {GENERATED_USERS} generated users\nauthorization {{\n{variables}  users: [\n{}\n  ]\n}}\n",
        users.join("\n")
    );
    let mappings: Vec<String> = (0..GENERATED_USERS)
        .map(|index| format!("u{index}=cluster.local/ns/generated/sa/u{index}"))
        .collect();
    let mappings: Vec<&str> = mappings.iter().map(String::as_str).collect();
    let sessions = Sessions {
        password: "pw",
        per_user: 1,
        min_decisions: 4_000,
    };
    round_trip(&[("generated.conf", &config)], &mappings, sessions);
}

#[test]
fn the_imported_policy_is_what_the_configuration_says() {
    let dir = write_config(INLINE);
    let (policy, notes) = imported(&dir.path().join(INLINE[0].0), INLINE_USERS);
    assert_eq!(
        policy["identity"],
        serde_json::json!({ "spiffe": { "required": true, "trust_domains": ["cluster.local", "dev.example"] } })
    );
    assert_eq!(policy["default_action"], "deny");
    let names: Vec<&str> = policy["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|rule| rule["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "billing-api",
            "billing-worker",
            "shipping",
            "sandbox",
            "auditor"
        ]
    );
    assert_eq!(
        policy["rules"][3]["permissions"],
        serde_json::json!({ "publish": ["SANDBOX.*"], "subscribe": ["PUBLIC.>", "_INBOX.>"] })
    );
    assert_eq!(
        policy["rules"][2]["permissions"]["subscribe"]["allow"][1],
        "billing.events.* shipping"
    );
    let note_lines: Vec<&str> = notes.lines().collect();
    assert_eq!(
        note_lines,
        [
            "natsguard: note: user \"sandbox\" gets default_permissions (it has no permissions of its own)",
            &format!(
                "natsguard: note: user \"feeder\" ({}:37:5) is not imported: no --user names it",
                dir.path().join(INLINE[0].0).display()
            ),
        ]
    );
}

/// The fenced code blocks of a section of docs/migration.md: (language, text).
fn guide_blocks(guide: &str, heading: &str) -> Vec<(String, String)> {
    let start = guide
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} not found"));
    let section = &guide[start..];
    let end = section[heading.len()..]
        .find("\n## ")
        .map_or(section.len(), |end| end + heading.len());
    section[..end]
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| {
            let (language, text) = block.split_once('\n').expect("fenced block");
            (language.to_owned(), text.to_owned())
        })
        .collect()
}

#[test]
fn the_worked_example_of_the_migration_guide_is_what_the_command_writes() {
    let guide = std::fs::read_to_string(support::repo_root().join("docs/migration.md"))
        .expect("read docs/migration.md");
    let config = guide_blocks(&guide, "## 1. Before").remove(0).1;
    let example = guide_blocks(
        &guide,
        "## Importing an existing nats-server authorization block",
    );
    let [(sh, command), (text, notes), (json, policy)] = &example[..] else {
        panic!("expected the command, its notes and the policy: {example:?}")
    };
    assert_eq!(
        (sh.as_str(), text.as_str(), json.as_str()),
        ("sh", "text", "json")
    );
    let words: Vec<&str> = command.split_whitespace().collect();
    let mut args = vec!["import", "nats-server.conf"];
    for pair in words.windows(2).filter(|pair| pair[0] == "--user") {
        args.extend(["--user", pair[1]]);
    }
    assert!(
        command.starts_with("natsguard import nats-server.conf "),
        "{command}"
    );
    let dir = write_config(&[("nats-server.conf", config.as_str())]);
    let output = natsguard_command(&args)
        .current_dir(dir.path())
        .output()
        .expect("run natsguard");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written: Value = serde_json::from_slice(&output.stdout).expect("the policy is JSON");
    let shown: Value = serde_json::from_str(policy).expect("the guide's policy is JSON");
    assert_eq!(written, shown);
    assert_eq!(String::from_utf8_lossy(&output.stderr), *notes);
}

#[test]
fn failures_are_one_line_with_the_file_and_place() {
    let dir = write_config(&[
        ("accounts.conf", "port: 4222\naccounts {\n  A: { users: [ { user: a, password: b } ] }\n}\n"),
        ("nkey.conf", "authorization {\n  users: [\n    { nkey: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4 }\n  ]\n}\n"),
        ("include.conf", "authorization {\n  users: [ { user: a } ]\n  include missing.conf\n}\n"),
        ("users.conf", "authorization { users: [ { user: a, password: b } ] }\n"),
    ]);
    let path = |name: &str| dir.path().join(name).display().to_string();
    let user = "a=cluster.local/ns/a/sa/a";
    let cases = [
        (
            import(&dir.path().join("accounts.conf"), &[user]),
            format!("natsguard: {}:2:1: accounts: accounts cannot be imported: natsguard logs every client in to nats-server as one user, so all of them share one account", path("accounts.conf")),
        ),
        (
            import(&dir.path().join("nkey.conf"), &[user]),
            format!("natsguard: {}:3:7: authorization.users[0].nkey: nkey users cannot be imported: natsguard knows a client by its SPIFFE ID or JWT and forwards its own credentials, so nats-server's nkey challenge never reaches the client", path("nkey.conf")),
        ),
        (
            import(&dir.path().join("include.conf"), &[user]),
            format!("natsguard: {}:3:3: cannot read include file {}: No such file or directory (os error 2)", path("include.conf"), path("missing.conf")),
        ),
        (
            import(&dir.path().join("users.conf"), &["b=cluster.local/ns/b/sa/b"]),
            format!("natsguard: {}:1:17: authorization.users: no user \"b\" (given with --user)", path("users.conf")),
        ),
        (
            import(&dir.path().join("users.conf"), &["a=cluster.local/a"]),
            "natsguard: --user \"a=cluster.local/a\": the principal must have Istio's form <trust-domain>/ns/<namespace>/sa/<service-account>".to_owned(),
        ),
        (
            import(&dir.path().join("absent.conf"), &[user]),
            format!("natsguard: {}: cannot read: No such file or directory (os error 2)", path("absent.conf")),
        ),
    ];
    for (output, expected) in cases {
        assert_eq!(output.status.code(), Some(2), "{expected}");
        assert!(output.stdout.is_empty(), "{expected}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            format!("{expected}\n")
        );
    }
    // --user is required (clap's usage error, exit 2).
    let output = natsguard(&["import", &path("users.conf")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--user <NAME=PRINCIPAL>"));
}

#[test]
fn help_shows_examples() {
    let output = natsguard(&["import", "--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("Examples:\n  natsguard import "), "{help}");
    assert!(help.contains("--user <NAME=PRINCIPAL>"), "{help}");
}

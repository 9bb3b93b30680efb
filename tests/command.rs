//! The `natsguard` command, run as the built binary: `check` on the repository's own
//! configurations and documentation examples, on broken and lint-triggering policies (exact
//! messages and exit codes); `explain` and `permissions` on the README example, with real
//! signed tokens; and explain's bytes against the engine's for the same frames.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use jwt_simple::prelude::*;
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_natsguard");

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the command from the repository root, with `stdin` as standard input.
fn natsguard(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(BINARY)
        .args(args)
        .current_dir(repo(""))
        .env_remove("NATSGUARD_PROXY_SEED")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the natsguard binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn check_stdin(config: &str, strict: bool) -> Run {
    let mut args = vec!["check"];
    if strict {
        args.push("--strict");
    }
    args.push("-");
    natsguard(&args, config)
}

const SPIFFE: &str = r#""identity": { "spiffe": { "trust_domains": ["cluster.local"] } }"#;

#[test]
fn check_finds_the_repositorys_configurations_clean() {
    let files = [
        "envoy/demo-policy.json",
        "envoy/demo-policy-live.json",
        "envoy/standalone.yaml",
        "envoy/standalone-jwt-only.yaml",
        "istio/wasmplugin.yaml",
    ];
    let mut args = vec!["check", "--strict"];
    args.extend(files);
    let run = natsguard(&args, "");
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let valid: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.contains(": valid: "))
        .collect();
    assert_eq!(valid.len(), files.len(), "{}", run.stdout);
    for (line, file) in valid.iter().zip(files) {
        assert!(line.starts_with(file), "{line}");
    }
    assert!(!run.stdout.contains("warning"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("istio/wasmplugin.yaml (WasmPlugin nats/natsguard): valid: policy version "),
        "{}",
        run.stdout
    );
    // The seed lives in Envoy's environment: said, not guessed.
    assert!(run.stdout.contains(
        "istio/wasmplugin.yaml (WasmPlugin nats/natsguard): note: trusted_proxy.seed_env: NATSGUARD_PROXY_SEED is not set here"
    ));
}

#[test]
fn check_reads_the_harness_ecds_file_and_says_where_an_ecds_filter_takes_its_configuration() {
    let ecds = tempfile::NamedTempFile::new().unwrap();
    let written = natsguard(
        &[
            "ecds",
            "envoy/demo-policy.json",
            "--out",
            ecds.path().to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(written.code, 0, "{}", written.stderr);
    let run = natsguard(&["check", ecds.path().to_str().unwrap()], "");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(" (resources[0]): valid: policy version "),
        "{}",
        run.stdout
    );
    let mesh = natsguard(&["check", "envoy/mesh.yaml"], "");
    assert_eq!(mesh.code, 2);
    assert_eq!(
        mesh.stderr,
        "envoy/mesh.yaml: error: no natsguard configuration found: expected natsguard's JSON configuration, an Envoy configuration or ECDS file with natsguard's Wasm network filter, or an Istio WasmPlugin (the natsguard filter at static_resources.listeners[0].filter_chains[0].filters[0] takes its configuration by config_discovery: check the ECDS file it names)\nnatsguard check: 1 of 1 files invalid\n"
    );
}

/// The whole configurations among the ```json blocks of the README and the docs.
fn documented_configurations() -> Vec<(String, String)> {
    let mut documents = vec![repo("README.md")];
    for entry in std::fs::read_dir(repo("docs")).unwrap() {
        documents.push(entry.unwrap().path());
    }
    let mut found = Vec::new();
    for document in documents {
        let markdown = std::fs::read_to_string(&document).unwrap();
        for block in markdown.split("```json\n").skip(1) {
            let block = &block[..block.find("```").expect("closed code block")];
            let Ok(Value::Object(object)) = serde_json::from_str::<Value>(block) else {
                continue;
            };
            if object.contains_key("identity") {
                let name = document.file_name().unwrap().to_string_lossy().into_owned();
                found.push((name, block.to_owned()));
            }
        }
    }
    found
}

#[test]
fn check_finds_the_documented_configurations_valid_and_warns_only_where_they_mean_to() {
    let examples = documented_configurations();
    assert!(examples.len() >= 5, "{} examples", examples.len());
    for (document, example) in examples {
        let run = check_stdin(&example, false);
        assert_eq!(run.code, 0, "{document}: {}\n{example}", run.stderr);
        for warning in run
            .stdout
            .lines()
            .filter(|line| line.contains(": warning: "))
        {
            // A rollout example is a dry run on purpose; nothing else may warn.
            assert!(
                warning.starts_with("-: warning: mode: dry_run"),
                "{document}: {warning}\n{example}"
            );
        }
    }
}

#[test]
fn check_reports_each_error_on_one_line_with_its_json_path() {
    let cases = [
        (
            format!(r#"{{ {SPIFFE}, "rules": [{{ "name": "a", "permissions": {{ "publish": {{ "alow": ["x"] }} }} }}] }}"#),
            "-: error: rules[0].permissions.publish.alow: unknown field `alow`, expected `allow` or `deny` at line 1 column 129",
        ),
        (
            format!(r#"{{ {SPIFFE}, "rules": [{{ "name": "a", "permissions": {{ "publish": ["a..b"] }} }}] }}"#),
            "-: error: rules[0].permissions.publish[0]: invalid subject \"a..b\"",
        ),
        (
            format!(r#"{{ {SPIFFE}, "mode": "dry_run", "shadow": {{}} }}"#),
            "-: error: shadow: a dry run evaluates the policy itself: put the candidate policy in the policy, not in shadow",
        ),
        (
            format!(r#"{{ {SPIFFE}, "shadow": {{ "rules": [{{ "name": "" }}] }} }}"#),
            "-: error: shadow.rules[0].name: must not be empty",
        ),
        (
            format!(r#"{{ {SPIFFE}, "mode": "enforced" }}"#),
            "-: error: mode: unknown variant `enforced`, expected `enforce` or `dry_run` at line 1 column 86",
        ),
        (
            format!(r#"{{ {SPIFFE}, "telemetry": {{ "dimensions": ["decision", "subject"] }} }}"#),
            "-: error: telemetry.dimensions[1]: unknown variant `subject`, expected one of `decision`, `reason`, `namespace`, `service_account`, `rule` at line 1 column 119",
        ),
        (
            format!(r#"{{ {SPIFFE}, "telemetry": {{ "dimensions": ["rule", "decision", "rule"] }} }}"#),
            "-: error: telemetry.dimensions[2]: \"rule\" is listed twice",
        ),
        (
            format!(r#"{{ {SPIFFE}, "telemetry": {{ "dimension": [] }} }}"#),
            "-: error: telemetry.dimension: unknown field `dimension`, expected `dimensions` at line 1 column 94",
        ),
        (
            format!(r#"{{ {SPIFFE}, "audit": {{ "subscriptions": "yes" }} }}"#),
            "-: error: audit.subscriptions: invalid type: string \"yes\", expected a boolean at line 1 column 101",
        ),
        (
            format!(r#"{{ {SPIFFE}, "audit": {{ "subscription": true }} }}"#),
            "-: error: audit.subscription: unknown field `subscription`, expected `subscriptions` at line 1 column 93",
        ),
        (
            format!(r#"{{ {SPIFFE}, "trusted_proxy": {{ "seed": "SUXX" }} }}"#),
            "-: error: trusted_proxy.seed: invalid nkey seed: nkey_not_base32",
        ),
        (
            format!(r#"{{ {SPIFFE}, "provenance": {{ "subjects": ["orders.>", "a..b"] }} }}"#),
            "-: error: provenance.subjects[1]: \"a..b\" is not a valid subject",
        ),
        (
            format!(r#"{{ {SPIFFE}, "provenance": {{ "header": "Nats Publisher" }} }}"#),
            "-: error: provenance.header: \"Nats Publisher\" is not a header name (1 to 128 letters, digits or !#$%&'*+-.^_`|~)",
        ),
        (
            format!(r#"{{ {SPIFFE}, "provenance": {{ "subject": ["a"] }} }}"#),
            "-: error: provenance.subject: unknown field `subject`, expected one of `subjects`, `header`, `sign` at line 1 column 93",
        ),
        (
            format!(r#"{{ {SPIFFE}, "provenance": {{ "sign": {{ "seed": "SUXX" }} }} }}"#),
            "-: error: provenance.sign.seed: invalid nkey seed: nkey_not_base32",
        ),
        (
            format!(r#"{{ {SPIFFE}, "reserved_headers": ["Nats-Request-Info", "bad\nname"] }}"#),
            "-: error: reserved_headers[1]: \"bad\\nname\" is not a header name (1 to 128 letters, digits or !#$%&'*+-.^_`|~)",
        ),
        (
            format!(r#"{{ {SPIFFE}, "reserved_headers": "Nats-Request-Info" }}"#),
            "-: error: reserved_headers: invalid type: string \"Nats-Request-Info\", expected a sequence at line 1 column 107",
        ),
        (
            format!(r#"{{ {SPIFFE}, "rules": [{{ "name": "a", "from": {{ "claims": {{ "groups": ["a*b"] }} }} }}] }}"#),
            "-: error: rules[0].from.claims.groups[0]: \"a*b\": '*' is only allowed alone, at the start or at the end",
        ),
        (
            // What the configuration contains is escaped: an error stays one line.
            format!(r#"{{ {SPIFFE}, "rules": [{{ "name": "a", "permissions": {{ "pub\nlish\u001b": [] }} }}] }}"#),
            "-: error: rules[0].permissions.pub\\nlish\\u{1b}: unknown field `pub\\nlish\\u{1b}`, expected one of `publish`, `subscribe`, `allow_responses` at line 1 column 127",
        ),
        (
            "{ \"rules\": [,] }".to_owned(),
            "-: error: not valid JSON: expected value at line 1 column 13",
        ),
        (
            "kind: WasmPlugin\nmetadata: {name: natsguard, namespace: nats}\nspec: {type: HTTP, pluginConfig: {}}\n".to_owned(),
            "-: error: WasmPlugin nats/natsguard: spec.type must be NETWORK (natsguard is a network filter; Istio installs an HTTP plugin otherwise)",
        ),
    ];
    for (config, expected) in cases {
        let run = check_stdin(&config, false);
        assert_eq!(run.code, 2, "{config}");
        assert_eq!(
            run.stderr,
            format!("{expected}\nnatsguard check: 1 of 1 files invalid\n"),
            "{config}"
        );
        assert_eq!(run.stdout, "");
    }
    let missing = natsguard(&["check", "no/such/policy.json"], "");
    assert_eq!(missing.code, 2);
    assert!(
        missing
            .stderr
            .starts_with("no/such/policy.json: No such file or directory"),
        "{}",
        missing.stderr
    );
}

#[test]
fn check_lints_with_the_warnings_the_filter_logs() {
    let jwt = r#""identity": { "jwt": { "providers": [{ "name": "idp", "issuer": "https://idp", "audiences": ["nats"], "algorithms": ["ES256"],
                 "remote_jwks": { "cluster": "c", "authority": "a", "path": "/" } }] } }"#;
    let cases: Vec<(String, Vec<&str>)> = vec![
        // No false alarm: `deny: [">"]` restricts publishing entirely.
        (
            format!(r#"{{ {SPIFFE}, "rules": [{{ "name": "readers", "permissions": {{ "publish": {{ "deny": [">"] }}, "subscribe": ["a.>"] }} }}] }}"#),
            vec![],
        ),
        (
            format!(r#"{{ {SPIFFE}, "rules": [{{ "name": "open", "permissions": {{ "publish": ["a.>"] }} }}] }}"#),
            vec![r#"rules[0].permissions.subscribe: rule "open" leaves subscribe unrestricted (no allow list): every subject not denied is allowed"#],
        ),
        (
            format!(r#"{{ {SPIFFE}, "rules": [{{ "name": "r", "permissions": {{
                "publish": {{ "allow": ["a.b", "c", "c"], "deny": ["a.>"] }},
                "subscribe": {{ "allow": ["q.x workers", "q.y"], "deny": ["q.* workers"] }} }} }}] }}"#),
            vec![
                r#"rules[0].permissions.publish.allow[2]: duplicate: "c" is listed before in the same list"#,
                r#"rules[0].permissions.publish.allow[0]: allow "a.b" is unreachable: the rule's deny "a.>" matches everything it allows"#,
                r#"rules[0].permissions.subscribe.allow[0]: allow "q.x workers" is unreachable: the rule's deny "q.* workers" matches everything it allows"#,
            ],
        ),
        (
            format!(r#"{{ {jwt}, "rules": [{{ "name": "ns", "from": {{ "namespaces": ["billing"], "request_principals": ["https://other/*"] }},
                "permissions": {{ "publish": ["{{{{spiffe.namespace}}}}.>", "u.{{{{jwt.sub}}}}"], "subscribe": ["t.{{{{jwt.claim.tid}}}}"] }} }}] }}"#),
            vec![
                "rules[0].from.namespaces: no identity can match: identity.spiffe is not configured, so no connection has a SPIFFE ID",
                r#"rules[0].from.request_principals[0]: no identity can match: "https://other/*" names no configured issuer (request principals are "<iss>/<sub>"; issuers: https://idp)"#,
                "rules[0].permissions.publish[0]: {{spiffe.namespace}} never has a value: identity.spiffe is not configured",
                r#"rules[0].permissions.subscribe[0]: {{jwt.claim.tid}}: the rule's from does not require claim "tid": an identity the rule matches may lack it, and then loses this allow entry (a deny entry widens); require it with "claims": { "tid": ["*"] }"#,
            ],
        ),
        (
            format!(r#"{{ {SPIFFE}, "rules": [{{ "name": "td", "from": {{ "principals": ["other.domain/ns/a/sa/b", "cluster.local/ns/a/*", "*/sa/b"] }},
                "permissions": {{ "publish": ["a"], "subscribe": ["a"] }} }}] }}"#),
            vec![r#"rules[0].from.principals[0]: no identity can match: "other.domain/ns/a/sa/b" is not in an accepted trust domain (identity.spiffe.trust_domains: cluster.local)"#],
        ),
        (
            format!(r#"{{ {SPIFFE}, "default_action": "allow", "mode": "dry_run" }}"#),
            vec![
                "mode: dry_run: the policy is evaluated and reported, nothing is denied, refused or filtered",
                "default_action: allow: connections matching no rule are unrestricted",
            ],
        ),
        (
            format!(r#"{{ {SPIFFE}, "telemetry": {{ "dimensions": ["namespace", "service_account"] }}, "audit": {{ "subscriptions": true }} }}"#),
            vec![r#"telemetry.dimensions: "decision" is off: allowed and denied frames count in the same series"#],
        ),
        (
            format!(r#"{{ {SPIFFE}, "telemetry": {{ "dimensions": ["rule", "decision"] }}, "audit": {{ "subscriptions": false }} }}"#),
            vec![],
        ),
        (
            format!(r#"{{ {SPIFFE}, "rules": [{{ "name": "r", "permissions": {{ "publish": ["a"], "subscribe": ["a"] }} }}],
                "shadow": {{ "rules": [{{ "name": "r2", "permissions": {{ "publish": ["a", "a"], "subscribe": ["a"] }} }}] }} }}"#),
            vec![r#"shadow.rules[0].permissions.publish[1]: duplicate: "a" is listed before in the same list"#],
        ),
        (
            format!(r#"{{ {SPIFFE}, "default_action": "allow", "reserved_headers": ["X-Tenant"], "provenance": {{ "subjects": [] }} }}"#),
            vec![
                "default_action: allow: connections matching no rule are unrestricted",
                "reserved_headers: Nats-Request-Info is not listed: a client can forge nats-server's identity header, and services behind the mesh read it as who asked",
                "provenance.subjects: empty: no message is stamped (only the reserved headers are removed)",
            ],
        ),
    ];
    for (config, expected) in cases {
        let run = check_stdin(&config, false);
        assert_eq!(run.code, 0, "{config}: {}", run.stderr);
        let warnings: Vec<&str> = run
            .stdout
            .lines()
            .filter_map(|line| line.strip_prefix("-: warning: "))
            .collect();
        assert_eq!(warnings, expected, "{config}");
        let strict = check_stdin(&config, true);
        let code = if expected.is_empty() { 0 } else { 1 };
        assert_eq!(strict.code, code, "{config}");
    }
}

/// The README's example configuration.
fn readme_example() -> tempfile::NamedTempFile {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let block = readme
        .split("```json\n")
        .nth(1)
        .expect("the README has its example");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&block.as_bytes()[..block.find("```").unwrap()])
        .unwrap();
    file
}

const API: &str = "spiffe://cluster.local/ns/billing/sa/api";
const PUBLISH_SCOPE: &str =
    r#"{"iss":"https://idp.example.com","sub":"alice","aud":"nats","scp":"billing.publish"}"#;

impl Run {
    /// Asserts that each of `lines` is a line of the standard output, and the exit code 0.
    fn prints(&self, lines: &[&str]) {
        assert_eq!(self.code, 0, "{}", self.stderr);
        for line in lines {
            assert!(
                self.stdout.lines().any(|printed| printed == *line),
                "{line:?} missing in\n{}",
                self.stdout
            );
        }
    }
}

/// `natsguard explain FILE` with `args` (identity options, then the operation).
fn explain(file: &str, args: &[&str]) -> Run {
    let mut all = vec!["explain", file];
    all.extend(args);
    natsguard(&all, "")
}

#[test]
fn explain_names_the_rule_the_entry_and_the_bytes_for_the_readme_example() {
    let policy = readme_example();
    let path = policy.path().to_str().unwrap();
    let with_scope = ["--spiffe", API, "--claims", PUBLISH_SCOPE];
    explain(
        path,
        &[&with_scope[..], &["pub", "billing.admin.x"]].concat(),
    )
    .prints(&[
        "  principal        cluster.local/ns/billing/sa/api",
        "  namespace        billing",
        "  token            NOT VERIFIED: claims given with --claims",
        "  request principal https://idp.example.com/alice",
        "  matches          billing publishers",
        "  frame            PUB billing.admin.x",
        "  decision         DENIED",
        "  rule             billing publishers",
        "  entry            deny billing.admin.>",
        r#"  client gets      -ERR 'Permissions Violation for Publish to "billing.admin.x"'\r\n"#,
    ]);
    // Without the scope the rule does not match, and the output says which key failed.
    let no_scope = r#"{"iss":"https://idp.example.com","sub":"alice"}"#;
    explain(
        path,
        &["--spiffe", API, "--claims", no_scope, "sub", "billing.x"],
    )
    .prints(&[
        "  does not match   billing publishers: claims.scp: the token has no such claim",
        r"  client gets      -ERR 'Authorization Violation'\r\n",
    ]);
    // --json for tooling: the same facts.
    let run = explain(
        path,
        &[
            &with_scope[..],
            &["--json", "sub", "billing.events.x", "other"],
        ]
        .concat(),
    );
    let explanation: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(explanation["decision"]["allowed"], false);
    assert_eq!(
        explanation["decision"]["entry"],
        "queue entries for this subject (allow billing.events.* workers) do not name queue other"
    );
    assert_eq!(
        explanation["decision"]["client_gets"],
        r#"-ERR 'Permissions Violation for Subscription to "billing.events.x" using queue "other"'\r\n"#
    );
    assert_eq!(
        explanation["permissions"]["allow_responses"],
        json!({"max": 1, "expires": "5s"})
    );
}

struct Idp {
    key: ES256KeyPair,
    jwks: tempfile::NamedTempFile,
}

/// A key pair for the README example's provider, with its public key as a JWKS file.
fn idp() -> Idp {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let point = key.public_key().public_key().to_bytes_uncompressed();
    let b64 = |bytes: &[u8]| {
        use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
        Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
    };
    let jwks = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
                                  "x": b64(&point[1..33]), "y": b64(&point[33..]) }] });
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(jwks.to_string().as_bytes()).unwrap();
    Idp { key, jwks: file }
}

fn token(key: &ES256KeyPair, scope: &str) -> String {
    let claims = Claims::with_custom_claims(
        json!({ "scp": scope }),
        jwt_simple::prelude::Duration::from_mins(10),
    )
    .with_issuer("https://idp.example.com")
    .with_subject("alice")
    .with_audience("nats");
    key.sign(claims).unwrap()
}

#[test]
fn explain_verifies_a_token_with_the_providers_keys_and_says_so_when_it_does_not() {
    let policy = readme_example();
    let path = policy.path().to_str().unwrap();
    let idp = idp();
    let jwks = format!("corp-idp={}", idp.jwks.path().display());
    let signed = token(&idp.key, "billing.publish");
    let publish = ["pub", "billing.x"];
    explain(
        path,
        &[
            &["--spiffe", API, "--jwt", &signed, "--jwks", &jwks][..],
            &publish,
        ]
        .concat(),
    )
    .prints(&[
        "  token            verified",
        "  provider         corp-idp",
        "  decision         ALLOWED",
        "  entry            allow billing.>",
    ]);
    // Signed by another key: refused as the filter refuses it.
    let forged = token(
        &ES256KeyPair::generate().with_key_id("k1"),
        "billing.publish",
    );
    explain(
        path,
        &[
            &["--spiffe", API, "--jwt", &forged, "--jwks", &jwks][..],
            &publish,
        ]
        .concat(),
    )
    .prints(&[
        "  refused          jwt_bad_signature",
        "  entry            the connection is refused at CONNECT (jwt_bad_signature)",
    ]);
    // Only decoded: loudly.
    explain(path, &[&["--spiffe", API, "--jwt", &forged, "--no-verify"][..], &publish].concat())
        .prints(&[
            "  token            NOT VERIFIED: decoded only (--no-verify); the filter verifies the signature, issuer, audience and times",
            "  decision         ALLOWED",
        ]);
    // Remote keys not given: a clear error, not a guess.
    let run = explain(
        path,
        &[&["--spiffe", API, "--jwt", &signed][..], &publish].concat(),
    );
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr,
        format!("natsguard: {path}: provider corp-idp takes its keys from remote_jwks: give them with --jwks corp-idp=FILE, or read the token without verifying it (--no-verify)\n")
    );
}

#[test]
fn explain_follows_a_delivery_through_the_subscription_and_the_filter() {
    let subscriber = [
        "--spiffe",
        "spiffe://cluster.local/ns/billing/sa/subscriber",
    ];
    let deliver = |subject: &'static str| {
        let operation = ["deliver", subject, "--sub", "billing.>"];
        explain(
            "envoy/demo-policy.json",
            &[&subscriber[..], &operation].concat(),
        )
    };
    deliver("billing.admin.x").prints(&[
        "  frame            MSG billing.admin.x to SUB billing.>",
        "  decision         DENIED",
        "  rule             billing subscribers",
        "  entry            deny billing.admin.>",
        "  client gets      nothing",
    ]);
    let run = deliver("orders.x");
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.ends_with("\"orders.x\" does not match the subscription \"billing.>\": nats-server would not deliver it\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn permissions_prints_the_nats_server_block_for_an_identity() {
    let run = natsguard(
        &[
            "permissions",
            "envoy/demo-policy.json",
            "--spiffe",
            "spiffe://cluster.local/ns/billing/sa/publisher",
        ],
        "",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let block = run.stdout.split("permissions: ").nth(1).expect("the block");
    let permissions: Value = serde_json::from_str(block).unwrap();
    assert_eq!(
        permissions,
        json!({ "publish": { "allow": ["billing.>"], "deny": ["billing.admin.>"] },
                "subscribe": { "allow": ["_INBOX.>"] } })
    );
    assert!(run.stdout.starts_with("# natsguard policy version 025a1b1f1300: the permissions of cluster.local/ns/billing/sa/publisher\n# rules: billing publishers\n"), "{}", run.stdout);
}

/// explain's bytes are the engine's: each case's frame through a real [`Connection`] gives the
/// client what `explain` says it gets.
#[test]
fn explain_gives_the_bytes_the_engine_sends() {
    use natsguard::command::explain::{explain, Credential, Operation, Question};
    use natsguard::engine::{Connection, Forward, Gate};
    let json = std::fs::read_to_string(repo("envoy/demo-policy.json")).unwrap();
    let (gate, _) = Gate::load(&json, &|_| Ok(None)).unwrap();
    let gate = std::rc::Rc::new(gate);
    let now = std::time::Duration::from_secs(1_800_000_000);
    let info = b"INFO {\"server_id\":\"S\",\"headers\":true,\"max_payload\":1048576} \r\n";
    let cases = [
        (
            "publisher",
            "PUB billing.admin.x 0\r\n\r\n",
            Operation::Publish {
                subject: "billing.admin.x".into(),
                reply: None,
            },
        ),
        (
            "publisher",
            "PUB billing.x 0\r\n\r\n",
            Operation::Publish {
                subject: "billing.x".into(),
                reply: None,
            },
        ),
        (
            "publisher",
            "SUB billing.x 1\r\n",
            Operation::Subscribe {
                subject: "billing.x".into(),
                queue: None,
            },
        ),
        (
            "subscriber",
            "SUB billing.x q 1\r\n",
            Operation::Subscribe {
                subject: "billing.x".into(),
                queue: Some("q".into()),
            },
        ),
        (
            "subscriber",
            "PUB billing.x 0\r\n\r\n",
            Operation::Publish {
                subject: "billing.x".into(),
                reply: None,
            },
        ),
    ];
    for (account, frame, operation) in cases {
        let spiffe = format!("spiffe://cluster.local/ns/billing/sa/{account}");
        let question = Question {
            spiffe: Some(spiffe.clone()),
            credential: Credential::None,
            remote_keys: vec![],
            now: now.as_secs(),
        };
        let explained = explain(&gate.policy, &question, Some(&operation)).unwrap();
        let mut connection = Connection::new(std::rc::Rc::clone(&gate));
        connection.set_peer_uri_san(Some(spiffe));
        connection.server_data(info, now);
        connection.client_data(b"CONNECT {}\r\n", now);
        let upstream = connection.client_data(frame.as_bytes(), now);
        // A denial travels as a PING whose PONG becomes the error.
        let client_gets = match upstream.forward {
            Forward::Replace(bytes) if bytes == b"PING\r\n" => {
                match connection.server_data(b"PONG\r\n", now).forward {
                    Forward::Replace(bytes) => String::from_utf8(bytes).unwrap(),
                    other => panic!("{other:?}"),
                }
            }
            _ => String::new(),
        };
        assert_eq!(
            explained.decision.unwrap().client_gets,
            client_gets.replace("\r\n", "\\r\\n"),
            "{account}: {frame:?}"
        );
    }
}

/// JSON shaped like natsguard's configuration, with the keys and values most likely to reach
/// every branch of the loader and the lints.
fn config_like() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let keys = prop::sample::select(vec![
        "identity",
        "spiffe",
        "jwt",
        "required",
        "trust_domains",
        "providers",
        "name",
        "issuer",
        "audiences",
        "algorithms",
        "jwks",
        "remote_jwks",
        "rules",
        "from",
        "principals",
        "namespaces",
        "request_principals",
        "claims",
        "permissions",
        "publish",
        "subscribe",
        "allow",
        "deny",
        "allow_responses",
        "max",
        "expires",
        "default_action",
        "mode",
        "shadow",
        "upstream",
        "trusted_proxy",
        "provenance",
        "subjects",
        "header",
        "sign",
        "reserved_headers",
        "reserved_header_action",
        "seed",
        "seed_env",
        "limits",
        "telemetry",
        "dimensions",
        "audit",
        "subscriptions",
        "tid",
    ]);
    let strings = prop::sample::select(vec![
        "",
        "*",
        ">",
        "a.>",
        "a.*",
        "a.b",
        "a.b q",
        "a.* q",
        "x.{{jwt.claim.tid}}",
        "{{spiffe.namespace}}.>",
        "u.{{jwt.sub}}",
        "cluster.local",
        "cluster.local/ns/a/*",
        "*/sa/b",
        "https://idp",
        "https://idp/*",
        "deny",
        "allow",
        "dry_run",
        "enforce",
        "decision",
        "rule",
        "Nats-Request-Info",
        "refuse",
        "ES256",
        "1s",
        "a..b",
        "{{",
        "q q q",
    ]);
    let leaf = prop_oneof![
        strings.prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        (-3i64..5).prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..5).prop_map(|map| Value::Object(
                map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3_000))]
    /// `check` (loader and lints) answers every input without panicking, and what it accepts
    /// the filter's loader accepts.
    #[test]
    fn check_answers_any_configuration_like_input(config in config_like()) {
        let text = config.to_string();
        let checked = natsguard::command::check::check("-", &text, &|_| None);
        if config.is_object() && !["static_resources", "resources", "kind", "apiVersion", "version_info"]
            .iter()
            .any(|key| config.get(key).is_some())
        {
            let loads = natsguard::engine::Gate::load(&text, &|_| Ok(None)).is_ok();
            proptest::prop_assert_eq!(checked.errors.is_empty(), loads);
        }
    }
}

/// Valid-looking configurations: the identity variants, rules with every `from` key and entry
/// form, modes and shadows, so that the lints see what they are for.
fn policy_like() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let subjects = vec![
        ">",
        "a.>",
        "a.*",
        "a.b",
        "x.{{jwt.claim.tid}}",
        "{{spiffe.namespace}}.>",
        "u.{{jwt.sub}}",
        "t.{{spiffe.trust_domain}}",
        "b.{{spiffe.service_account}}",
        "_INBOX.>",
    ];
    let mut queue_entries = subjects.clone();
    queue_entries.extend(["a.b q", "a.* q", "a.> q.*", "b.* {{jwt.claim.g}}"]);
    let direction = |entries: Vec<&'static str>| {
        let list = prop::collection::vec(prop::sample::select(entries), 0..4);
        prop_oneof![
            Just(Value::Null),
            list.clone().prop_map(|allow| json!(allow)),
            (list.clone(), list).prop_map(|(allow, deny)| json!({ "allow": allow, "deny": deny })),
        ]
    };
    let matcher = |values: Vec<&'static str>| {
        prop::option::of(prop::collection::vec(prop::sample::select(values), 1..3))
    };
    let from = (
        matcher(vec![
            "cluster.local/ns/a/sa/b",
            "other/ns/a/sa/b",
            "cluster.local/*",
            "*",
            "*/sa/b",
            "clu*",
        ]),
        matcher(vec!["a", "b*", "*"]),
        matcher(vec![
            "https://idp/alice",
            "https://idp/*",
            "https://other/*",
            "*",
        ]),
        prop::option::of(prop::collection::btree_map(
            prop::sample::select(vec!["tid", "g", "scp", "a.b"]),
            prop::collection::vec(prop::sample::select(vec!["x", "*", "y*"]), 1..3),
            1..3,
        )),
    )
        .prop_map(|(principals, namespaces, request_principals, claims)| {
            let mut from = serde_json::Map::new();
            for (key, value) in [
                ("principals", principals),
                ("namespaces", namespaces),
                ("request_principals", request_principals),
            ] {
                if let Some(value) = value {
                    from.insert(key.into(), json!(value));
                }
            }
            if let Some(claims) = claims {
                from.insert("claims".into(), json!(claims));
            }
            Value::Object(from)
        });
    let rule = (
        prop::option::of(from),
        direction(subjects),
        direction(queue_entries),
        any::<bool>(),
    );
    let rules = prop::collection::vec(rule, 0..4).prop_map(|rules| {
        rules
            .into_iter()
            .enumerate()
            .map(|(index, (from, publish, subscribe, responses))| {
                let mut permissions = serde_json::Map::new();
                for (key, value) in [("publish", publish), ("subscribe", subscribe)] {
                    if !value.is_null() {
                        permissions.insert(key.into(), value);
                    }
                }
                if responses {
                    permissions.insert("allow_responses".into(), json!(true));
                }
                let mut rule = json!({ "name": format!("r{index}"), "permissions": permissions });
                if let Some(from) = from {
                    rule["from"] = from;
                }
                rule
            })
            .collect::<Vec<_>>()
    });
    let provider = json!({ "name": "idp", "issuer": "https://idp", "audiences": ["nats"], "algorithms": ["ES256"],
                           "remote_jwks": { "cluster": "c", "authority": "a", "path": "/" } });
    let identity = prop::sample::select(vec![
        json!({ "spiffe": { "trust_domains": ["cluster.local"] } }),
        json!({ "spiffe": { "required": false, "trust_domains": ["cluster.local"] }, "jwt": { "providers": [provider.clone()] } }),
        json!({ "jwt": { "required": true, "providers": [provider] } }),
    ]);
    (
        identity,
        rules.clone(),
        prop::option::of(rules),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(identity, rules, shadow, dry_run, allow)| {
            let mut config = json!({ "identity": identity, "rules": rules });
            if allow {
                config["default_action"] = json!("allow");
            }
            match (shadow, dry_run) {
                (_, true) => config["mode"] = json!("dry_run"),
                (Some(shadow), false) => config["shadow"] = json!({ "rules": shadow }),
                (None, false) => {}
            }
            config
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3_000))]
    /// Every such configuration loads (the lints only warn), and checking it never panics.
    #[test]
    fn check_lints_any_policy_without_failing_it(config in policy_like()) {
        let text = config.to_string();
        let checked = natsguard::command::check::check("-", &text, &|_| None);
        proptest::prop_assert!(checked.errors.is_empty(), "{:?}\n{}", checked.errors, text);
    }
}

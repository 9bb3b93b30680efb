//! Real client libraries through natsguard: nats-py (Python) for core NATS and permission
//! errors, async-nats (Rust) for JetStream publish and a pull consumer with acks, and nats.go (Go)
//! and jnats (Java) in one scripted session each, run straight against nats-server users with the
//! policy's permissions and through natsguard, with the same transcript.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{
    bounded_command, repo_root, run_project_script, successful_output, venv_binary, Mesh,
    NatsServer,
};

fn policy() -> String {
    json!({
        "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
        "default_action": "deny",
        "rules": [
            {
                "name": "publisher",
                "from": { "principals": ["cluster.local/ns/billing/sa/publisher"] },
                "permissions": {
                    "publish": { "allow": ["billing.>", "$JS.API.>"], "deny": ["billing.admin.>"] },
                    "subscribe": { "allow": ["_INBOX.>"] }
                }
            },
            {
                "name": "subscriber",
                "from": { "principals": ["cluster.local/ns/billing/sa/subscriber"] },
                "permissions": {
                    "publish": { "allow": ["$JS.API.>"] },
                    "subscribe": { "allow": ["billing.>", "_INBOX.>"] },
                    "allow_responses": { "max": 1, "expires": "1m" }
                }
            }
        ]
    })
    .to_string()
}

#[test]
fn nats_py_works_through_natsguard_and_sees_permission_errors() {
    let mesh = Mesh::start(&policy());
    let output = Command::new(venv_binary("python"))
        .arg(repo_root().join("tests/clients/nats_py_session.py"))
        .args([
            mesh.url_of("publisher"),
            mesh.url_of("subscriber"),
            "billing.admin.reset".into(),
        ])
        .output()
        .expect("run nats-py");
    assert!(
        output.status.success(),
        "nats-py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("JSON result");
    assert_eq!(
        result["received"],
        json!([
            ["billing.events.created", "one", {}],
            ["billing.events.headers", "two", { "X-Trace": "abc" }],
            ["billing.events.after", "three", {}]
        ])
    );
    assert_eq!(result["queued"], json!(["billing.jobs"]));
    assert_eq!(result["response"], "pong:ping");
    assert_eq!(result["publisher_connected"], true);
    let errors = result["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .as_str()
            .unwrap_or("")
            .contains("permissions violation for publish to \"billing.admin.reset\""),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_publish_and_pull_consumer_with_acks_work_through_natsguard() {
    let store = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(Some(&format!(
        "jetstream {{ store_dir: \"{}\" }}\n",
        store.path().display()
    )));
    let mesh = Mesh::start_with_server(&policy(), nats);

    let publisher = async_nats::jetstream::new(
        async_nats::connect(mesh.url_of("publisher"))
            .await
            .expect("connect"),
    );
    let stream = publisher
        .create_stream(async_nats::jetstream::stream::Config {
            name: "BILLING".into(),
            subjects: vec!["billing.orders.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    for n in 0..3 {
        let ack = publisher
            .publish(format!("billing.orders.{n}"), format!("order {n}").into())
            .await
            .expect("publish");
        ack.await.expect("stored");
    }
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("audit".into()),
            ..Default::default()
        })
        .await
        .expect("create consumer");

    // The subscriber acks through allow_responses: each delivered message's $JS.ACK reply.
    let subscriber = async_nats::jetstream::new(
        async_nats::connect(mesh.url_of("subscriber"))
            .await
            .expect("connect"),
    );
    let consumer: async_nats::jetstream::consumer::PullConsumer = subscriber
        .get_consumer_from_stream("audit", "BILLING")
        .await
        .expect("consumer");
    let mut messages = consumer
        .fetch()
        .max_messages(3)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .expect("fetch");
    let mut payloads = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("in time")
    {
        let message = message.expect("message");
        payloads.push(String::from_utf8_lossy(&message.payload).into_owned());
        message.double_ack().await.expect("acknowledged");
    }
    assert_eq!(payloads, ["order 0", "order 1", "order 2"]);
    let stream = publisher.get_stream("BILLING").await.expect("stream");
    let mut audit: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("audit").await.expect("consumer");
    assert_eq!(
        audit.info().await.expect("info").num_ack_pending,
        0,
        "every message acknowledged"
    );
}

/// The Go and Java sessions of tests/clients/, built into target/clients/ by
/// scripts/build-clients.sh on first use (a later run reuses the builds).
fn client_build(path: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| run_project_script("scripts/build-clients.sh"));
    repo_root().join("target/clients").join(path)
}

#[derive(Clone, Copy, Debug)]
enum Client {
    NatsGo,
    Jnats,
}

impl Client {
    /// The session's transcript (its standard output) for the publisher and subscriber URLs.
    fn session(self, publisher: &str, subscriber: &str) -> String {
        let mut command = match self {
            Client::NatsGo => {
                bounded_command(client_build("nats_go_session"), Duration::from_secs(90))
            }
            Client::Jnats => {
                let classpath =
                    std::fs::read_to_string(client_build("jnats_session/classpath.txt"))
                        .expect("jnats classpath");
                let mut java = bounded_command("java", Duration::from_secs(90));
                java.arg("-cp")
                    .arg(format!(
                        "{}:{}",
                        client_build("jnats_session/classes").display(),
                        classpath.trim()
                    ))
                    .arg("natsguard.JnatsSession");
                java
            }
        };
        command.args([publisher, subscriber, "billing.admin.reset"]);
        successful_output(&mut command, &format!("the {self:?} session"))
    }
}

/// What both sessions must see, in order; the async error's wording is the client's own.
const TRANSCRIPT: &[&str] = &[
    "request billing.rpc answered: pong:ping",
    "publisher async error: *",
    "publisher connected after the denial: true",
    "received billing.events.created: one",
    "received billing.events.headers: two [X-Trace=abc]",
    "received billing.events.after: three",
    "queue group workers received: job-1 job-2 job-3 job-4",
    "jetstream stored billing.orders.0 in BILLING as 1",
    "jetstream stored billing.orders.1 in BILLING as 2",
    "jetstream stored billing.orders.2 in BILLING as 3",
    "pull consumer fetched and acked billing.orders.0: order 0",
    "pull consumer fetched and acked billing.orders.1: order 1",
    "pull consumer fetched and acked billing.orders.2: order 2",
    "consumer audit: 3 delivered, 0 awaiting an ack",
];

fn jetstream_config(store: &tempfile::TempDir) -> String {
    format!(
        "jetstream {{ store_dir: \"{}\" }}\n",
        store.path().display()
    )
}

/// nats-server users with the permissions of the policy's rules: one per rule, named after it
/// (password: the name too). nats-server reads JSON as configuration.
fn nats_server_users(policy: &Value) -> String {
    let users: Vec<Value> = policy["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|rule| {
            json!({ "user": rule["name"], "password": rule["name"], "permissions": rule["permissions"] })
        })
        .collect();
    format!("authorization {{ users: {} }}\n", Value::from(users))
}

/// The session straight against nats-server users with the policy's permissions, then through
/// natsguard with the policy (each on a fresh JetStream-enabled nats-server): the transcripts
/// are the same, and the expected one.
fn same_session_direct_and_through_natsguard(client: Client) {
    let policy: Value = serde_json::from_str(&policy()).expect("policy JSON");
    let direct_store = tempfile::tempdir().expect("tempdir");
    let direct = NatsServer::start(Some(&format!(
        "{}{}",
        jetstream_config(&direct_store),
        nats_server_users(&policy)
    )));
    let user_url = |user: &str| format!("nats://{user}:{user}@127.0.0.1:{}", direct.port);
    let straight = client.session(&user_url("publisher"), &user_url("subscriber"));

    let mesh_store = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::start_with_server(
        &policy.to_string(),
        NatsServer::start(Some(&jetstream_config(&mesh_store))),
    );
    let through_natsguard = client.session(&mesh.url_of("publisher"), &mesh.url_of("subscriber"));

    assert_eq!(
        through_natsguard, straight,
        "{client:?}: through natsguard (left) vs nats-server's own permissions (right)"
    );
    let lines: Vec<&str> = through_natsguard.lines().collect();
    assert_eq!(lines.len(), TRANSCRIPT.len(), "{through_natsguard}");
    for (line, expected) in lines.iter().zip(TRANSCRIPT) {
        match expected.strip_suffix('*') {
            Some(prefix) => assert!(
                line.starts_with(prefix)
                    && line
                        .to_lowercase()
                        .contains("permissions violation for publish to \"billing.admin.reset\""),
                "{line}"
            ),
            None => assert_eq!(line, expected),
        }
    }
}

#[test]
fn nats_go_sees_through_natsguard_what_it_sees_from_nats_server_permissions() {
    same_session_direct_and_through_natsguard(Client::NatsGo);
}

#[test]
fn jnats_sees_through_natsguard_what_it_sees_from_nats_server_permissions() {
    same_session_direct_and_through_natsguard(Client::Jnats);
}

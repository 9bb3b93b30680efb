//! Real client libraries through natsguard: nats-py (Python) for core NATS and permission
//! errors, async-nats (Rust) for JetStream publish and a pull consumer with acks.

mod support;

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{repo_root, venv_binary, Mesh, NatsServer};

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

//! natsguard's labelled metrics as an operator queries them: a real Prometheus scrapes the mesh
//! harness's Envoy (`/stats/prometheus`, with the stats tags of envoy/mesh.yaml) while two
//! identities publish and subscribe, allowed and denied, and a third is refused; PromQL over
//! Prometheus's HTTP API finds every labelled series with the right value. The dashboard's
//! expressions run on the same Prometheus, and the subscription audit lines are read from the log.

mod support;

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use natsguard::engine::telemetry::{unescape, Decision, Family, MetricLabels};
use natsguard::engine::{Connection, Gate};
use natsguard::identity::{Identity, SpiffeId};
use support::prometheus::Prometheus;
use support::{Mesh, NatsServer, RawClient, Session};

/// A rule name with what stat names and tag regexes treat specially: it comes back whole.
const PUBLISHER_RULE: &str = "billing.publishers; east=1";

fn policy() -> String {
    serde_json::json!({
        "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
        "default_action": "deny",
        "rules": [
            {
                "name": PUBLISHER_RULE,
                "from": { "principals": ["cluster.local/ns/billing/sa/publisher"] },
                "permissions": {
                    "publish": { "allow": ["billing.>"], "deny": ["billing.admin.>"] },
                    "subscribe": { "allow": ["_INBOX.>"] }
                }
            },
            {
                "name": "billing subscribers",
                "from": { "principals": ["cluster.local/ns/billing/sa/subscriber"] },
                "permissions": {
                    "publish": { "deny": [">"] },
                    "subscribe": { "allow": ["billing.>"], "deny": ["billing.admin.>"] }
                }
            }
        ],
        "audit": { "subscriptions": true }
    })
    .to_string()
}

/// `natsguard_<family>` of one identity and decision.
fn series(family: &str, service_account: &str, decision: &str) -> String {
    format!(
        "natsguard_{family}{{namespace=\"billing\",service_account=\"{service_account}\",decision=\"{decision}\"}}"
    )
}

#[test]
fn prometheus_sees_the_labelled_series_of_allowed_and_denied_traffic() {
    let mesh = Mesh::start_with_server(&policy(), NatsServer::start(None));
    let prometheus = Prometheus::scraping(mesh.admin_port);

    let mut subscriber = Session::open(mesh.port_of("subscriber"), "");
    assert_eq!(
        subscriber.exchange("SUB billing.> 1\r\n"),
        Vec::<String>::new()
    );
    assert_eq!(
        subscriber.exchange("SUB billing.admin.> 2\r\n"),
        ["-ERR 'Permissions Violation for Subscription to \"billing.admin.>\"'"]
    );
    mesh.nats.wait_for_subscription("billing.>");
    let mut publisher = Session::open(mesh.port_of("publisher"), "");
    let allowed = "PUB billing.orders 5\r\nhello\r\n".repeat(3);
    assert_eq!(publisher.exchange(&allowed), Vec::<String>::new());
    let denied = "PUB billing.admin.x 3\r\nabc\r\n".repeat(2);
    assert_eq!(publisher.exchange(&denied).len(), 2);
    let (delivered, _) = subscriber.client.read_until(DEADLINE, |bytes| {
        String::from_utf8_lossy(bytes)
            .matches("MSG billing.orders")
            .count()
            == 3
    });
    assert_eq!(
        String::from_utf8_lossy(&delivered).matches("hello").count(),
        3
    );
    assert_eq!(subscriber.exchange("UNSUB 1\r\n"), Vec::<String>::new());
    // A third identity no rule matches: refused at CONNECT.
    let mut refused = RawClient::connect(mesh.port_of("denied"));
    refused.read_line();
    refused.send(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    let (answer, _) = refused.read_until(DEADLINE, |bytes| bytes.ends_with(b"\r\n"));
    assert!(String::from_utf8_lossy(&answer).contains("Authorization Violation"));

    let value = |promql: &str, expected: f64| {
        prometheus.wait_for_value(promql, |value| value == expected);
    };
    value(&series("publish_total", "publisher", "allowed"), 3.0);
    value(&series("publish_total", "publisher", "denied"), 2.0);
    value(&series("publish_bytes_total", "publisher", "allowed"), 15.0);
    value(&series("publish_bytes_total", "publisher", "denied"), 6.0);
    value(&series("subscribe_total", "subscriber", "allowed"), 1.0);
    value(&series("subscribe_total", "subscriber", "denied"), 1.0);
    value(&series("deliver_total", "subscriber", "allowed"), 3.0);
    value(
        &series("deliver_bytes_total", "subscriber", "allowed"),
        15.0,
    );
    value(
        "sum by (decision) (natsguard_connect_total{decision=\"allowed\"})",
        2.0,
    );
    value(
        "natsguard_connect_total{decision=\"denied\",reason=\"no_matching_rule\",namespace=\"guest\",service_account=\"visitor\"}",
        1.0,
    );

    // The rule label: the matched rule's name, escaped in the stat name, decoded whole.
    let publishes = prometheus
        .query(&series("publish_total", "publisher", "allowed"))
        .expect("query");
    let rule = publishes[0]["metric"]["rule"]
        .as_str()
        .expect("a rule label");
    assert_eq!(unescape(rule).as_deref(), Some(PUBLISHER_RULE), "{rule}");
    let subscribes = prometheus
        .query(&series("subscribe_total", "subscriber", "allowed"))
        .expect("query");
    assert_eq!(subscribes[0]["metric"]["rule"], "billing subscribers");

    // Every natsguard series: the flat counters and the labelled ones, none with a subject.
    let natsguard = prometheus
        .query("{__name__=~\"natsguard_.+\"}")
        .expect("query");
    let labels: BTreeSet<&str> = natsguard
        .iter()
        .flat_map(|series| series["metric"].as_object().into_iter().flatten())
        .map(|(label, _)| label.as_str())
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from([
            "__name__",
            "decision",
            "instance",
            "job",
            "namespace",
            "reason",
            "rule",
            "service_account"
        ])
    );
    let documented = support::dashboard::documented_metrics();
    for series in &natsguard {
        let name = series["metric"]["__name__"].as_str().expect("a name");
        assert!(
            support::dashboard::is_documented(name, &documented),
            "{name} is not in docs/troubleshooting.md §6"
        );
    }
    let labelled = natsguard
        .iter()
        .filter(|series| series["metric"]["decision"].is_string())
        .count();
    println!(
        "natsguard series in Prometheus: {} ({labelled} labelled)",
        natsguard.len()
    );

    // The dashboard's queries run on this Prometheus, and those over the labelled metrics find
    // data (a rate needs two scrapes of a series).
    for query in support::dashboard::queries() {
        let promql = support::dashboard::instant(&query.expr);
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let answer = prometheus
                .query(&promql)
                .unwrap_or_else(|error| panic!("{}: {promql}: {error}", query.panel));
            if !query.expects_data || !answer.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {promql} found nothing",
                query.panel
            );
            std::thread::sleep(support::prometheus::SCRAPE_INTERVAL / 4);
        }
    }

    // audit.subscriptions: a line for every SUB and UNSUB.
    let lines = mesh.wait_for_audit("the UNSUB", |lines| {
        lines.iter().any(|line| line["natsguard"] == "unsubscribe")
    });
    let subscription_lines: Vec<_> = lines
        .iter()
        .filter(|line| {
            matches!(
                line["natsguard"].as_str(),
                Some("subscribe" | "unsubscribe")
            )
        })
        .map(|line| {
            (
                line["op"].as_str().unwrap_or_default().to_owned(),
                line["subject"].as_str().unwrap_or_default().to_owned(),
                line["sid"].as_str().unwrap_or_default().to_owned(),
                line["decision"].as_str().unwrap_or_default().to_owned(),
                line["service_account"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let line = |op: &str, subject: &str, sid: &str, decision: &str| {
        (
            op.to_owned(),
            subject.to_owned(),
            sid.to_owned(),
            decision.to_owned(),
            "subscriber".to_owned(),
        )
    };
    assert_eq!(
        subscription_lines,
        [
            line("SUB", "billing.>", "1", "allow"),
            line("SUB", "billing.admin.>", "2", "deny"),
            line("UNSUB", "billing.>", "1", "allow"),
        ]
    );
}

/// A deadline for what the test waits for (deliveries, a refusal, a query finding data): generous
/// on a loaded machine, never slept through when things are quick.
const DEADLINE: Duration = Duration::from_secs(30);

/// The natsguard configuration of envoy/standalone.yaml (the demo policy).
fn standalone_configuration() -> String {
    let text = std::fs::read_to_string(support::repo_root().join("envoy/standalone.yaml"))
        .expect("envoy/standalone.yaml");
    let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let filter = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
    filter["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .expect("the natsguard filter's configuration")
        .to_owned()
}

/// The labelled series the demo policy makes, counted from the stat names the engine defines
/// when each of the mesh harness's identities (envoy/identities.txt) connects, subscribes and
/// publishes, plus an operator with a SPIFFE ID of its own and a token of the OIDC rule (its
/// labels, as a token cannot be verified offline against the remote JWKS). The bound of
/// docs/troubleshooting.md §6: 11 frame series and one `connect_total` per accepted identity,
/// one `connect_total` per refused identity and reason.
#[test]
fn the_demo_policy_makes_a_bounded_number_of_series() {
    let (gate, _) =
        Gate::load(&standalone_configuration(), &|_| Ok(None)).expect("the demo policy");
    let gate = Rc::new(gate);
    let now = Duration::from_secs(1_800_000_000);
    let identities = std::fs::read_to_string(support::repo_root().join("envoy/identities.txt"))
        .expect("envoy/identities.txt");
    let mut names = BTreeSet::new();
    let mut accepted = 0;
    for line in identities.lines().filter(|line| !line.starts_with('#')) {
        let Some(uri) = line.split_whitespace().nth(1) else {
            continue;
        };
        let mut connection = Connection::new(Rc::clone(&gate));
        connection.set_peer_uri_san((uri != "-").then(|| uri.to_owned()));
        connection.server_data(b"INFO {\"server_id\":\"S\",\"headers\":true} \r\n", now);
        connection.client_data(
            b"CONNECT {\"verbose\":false}\r\nSUB billing.events.> 1\r\nPUB billing.requests.a 1\r\nx\r\n",
            now,
        );
        let labelled = connection.take_report().labelled;
        names.extend(labelled.connect_stat_names);
        if let Some(frame_names) = labelled.frame_stat_names {
            accepted += 1;
            names.extend(*frame_names);
        }
    }
    assert_eq!(accepted, 2, "publisher and subscriber: {names:#?}");
    let operator = Identity {
        spiffe: SpiffeId::parse("spiffe://cluster.local/ns/ops/sa/operator").ok(),
        ..Identity::default()
    };
    let labels = MetricLabels::of(Some(&operator), &["operators with an OIDC token".into()]);
    let dimensions = gate.policy.dimensions();
    names.extend(labels.frame_stat_names(dimensions));
    names.insert(labels.stat_name(dimensions, Family::Connect, Decision::Allowed, ""));
    let refused = names
        .iter()
        .filter(|name| name.contains("=.=denied;.;") && name.ends_with("connect_total"))
        .count();
    assert_eq!(
        refused, 3,
        "guest, another trust domain, no certificate: {names:#?}"
    );
    assert_eq!(names.len(), 3 * 12 + 3, "{names:#?}");
    println!(
        "demo policy (envoy/standalone.yaml), {} identities: {} labelled series",
        identities
            .lines()
            .filter(|line| !line.starts_with('#'))
            .count()
            + 1,
        names.len()
    );
}

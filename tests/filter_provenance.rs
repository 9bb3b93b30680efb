//! Provenance through real Envoy and nats-server: a client's copies of reserved headers
//! (`Nats-Request-Info`, the provenance names) never reach nats-server; messages on selected
//! subjects reach nats-server, raw subscribers with and without headers, async-nats, nats-py, the
//! nats CLI and a JetStream stream with the publisher's verified identity and a signature that
//! `natsguard verify` and the library function check; the stamped size counts against
//! max_payload as nats-server counts it; a response allowed by allow_responses is stamped.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use natsguard::engine::provenance::{header_pairs, verify};
use natsguard::identity::PublicNkey;
use natsguard::policy::ProvenanceNames;
use serde_json::{json, Value};
use support::{
    bounded_command, contains, repo_root, tool_binary, venv_binary, Mesh, NatsServer, Session,
};

/// A user nkey seed and its public key (nats-server's server/auth_callout_test.go).
const SEED: &str = "SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU";
const PUBLIC_KEY: &str = "UBO2MQV67TQTVIRV3XFTEZOACM4WLOCMCDMAWN5QVN5PI2N6JHTVDRON";
const PUBLISHER: &str = "spiffe://cluster.local/ns/billing/sa/publisher";
const SUBSCRIBER: &str = "spiffe://cluster.local/ns/billing/sa/subscriber";
const HEADERS: &str = r#","headers":true"#;
const WAIT: Duration = Duration::from_secs(10);

fn policy() -> String {
    json!({
        "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
        "default_action": "deny",
        "rules": [
            { "name": "publisher",
              "from": { "principals": ["cluster.local/ns/billing/sa/publisher"] },
              "permissions": { "publish": ["orders.>", "rpc.>", "svc.>"], "subscribe": ["_INBOX.>"] } },
            { "name": "subscriber",
              "from": { "principals": ["cluster.local/ns/billing/sa/subscriber"] },
              "permissions": { "publish": ["$JS.API.>"], "subscribe": [">"],
                               "allow_responses": true } }
        ],
        "provenance": { "subjects": ["orders.>", "rpc.>"], "sign": { "seed": SEED } }
    })
    .to_string()
}

/// Reads from a raw session until `marker` arrived; the server's own PINGs left out.
fn read_until_marker(session: &mut Session, marker: &str) -> String {
    let (bytes, _) = session
        .client
        .read_until(WAIT, |b| contains(b, marker.as_bytes()));
    String::from_utf8_lossy(&bytes).replace("PING\r\n", "")
}

/// natsguard's counter `natsguard.<name>`, once it reached `at_least` (stats are flushed
/// asynchronously).
fn wait_for_counter(mesh: &Mesh, name: &str, at_least: u64) -> u64 {
    let full = format!("wasmcustom.natsguard.{name}");
    let deadline = Instant::now() + WAIT;
    loop {
        let value = mesh.stats().get(&full).copied().unwrap_or(0);
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hpub(subject: &str, headers: &str, payload: &str) -> String {
    format!(
        "HPUB {subject} {} {}\r\n{headers}{payload}\r\n",
        headers.len(),
        headers.len() + payload.len()
    )
}

#[test]
fn spoofed_reserved_headers_never_reach_nats_server() {
    let nats = NatsServer::start(None);
    // A subscriber straight on nats-server sees what natsguard forwarded.
    let mut spy = Session::open(nats.port, HEADERS);
    assert_eq!(spy.exchange("SUB svc.> 1\r\n"), Vec::<String>::new());
    let mesh = Mesh::start_with_server(&policy(), nats);
    let mut publisher = Session::open(mesh.port_of("publisher"), HEADERS);
    let spoofed = concat!(
        "NATS/1.0\r\n",
        "Nats-Request-Info: {\"acc\":\"ADMIN\",\"user\":\"root\"}\r\n",
        "A: 1\r\n",
        "nats-request-info: {\"acc\":\"ADMIN\"}\r\n",
        "NATS-REQUEST-INFO:{\"acc\":\"ADMIN\"}\r\n",
        " Nats-Request-Info : folded\r\n",
        "   {\"acc\":\"ADMIN\"}\r\n",
        "nats-publisher: spiffe://cluster.local/ns/admin/sa/root\r\n",
        "Nats-Publisher-Sig: v1;key=X;ts=1;sig=Y\r\n",
        "\r\n",
    );
    let frames = [
        hpub("svc.request", spoofed, "q"),
        "PUB svc.end 3\r\nend\r\n".to_owned(),
    ]
    .concat();
    assert_eq!(publisher.exchange(&frames), Vec::<String>::new());
    let clean = "NATS/1.0\r\nA: 1\r\n\r\n";
    assert_eq!(
        read_until_marker(&mut spy, "end\r\n"),
        format!(
            "HMSG svc.request 1 {} {}\r\n{clean}q\r\nMSG svc.end 1 3\r\nend\r\n",
            clean.len(),
            clean.len() + 1
        )
    );
    assert_eq!(wait_for_counter(&mesh, "provenance.spoof_removed", 6), 6);
    let lines = mesh.wait_for_audit("the removal", |lines| {
        lines
            .iter()
            .any(|line| line["natsguard"] == "reserved_headers_removed")
    });
    let removal = lines
        .iter()
        .find(|line| line["natsguard"] == "reserved_headers_removed")
        .expect("audited");
    assert_eq!(removal["subject"], "svc.request");
    assert_eq!(
        removal["principal"],
        "cluster.local/ns/billing/sa/publisher"
    );
    assert_eq!(
        removal["headers"],
        json!([
            "Nats-Request-Info",
            "nats-request-info",
            "NATS-REQUEST-INFO",
            "Nats-Request-Info",
            "nats-publisher",
            "Nats-Publisher-Sig"
        ])
    );
    let start = lines
        .iter()
        .find(|line| line["natsguard"] == "connection_start")
        .expect("connection start");
    assert_eq!(
        start["provenance"],
        json!({ "subjects": ["orders.>", "rpc.>"], "header": "Nats-Publisher", "signed": true })
    );
}

/// One HMSG: its subject, header lines and payload.
type Hmsg = (String, Vec<(String, String)>, String);

/// The HMSGs in `raw`.
fn hmsgs(raw: &str) -> Vec<Hmsg> {
    let mut found = Vec::new();
    let mut rest = raw;
    while let Some(at) = rest.find("HMSG ") {
        let line_end = at + rest[at..].find("\r\n").expect("line");
        let fields: Vec<&str> = rest[at..line_end].split(' ').collect();
        let header_len: usize = fields[fields.len() - 2].parse().expect("size");
        let total: usize = fields[fields.len() - 1].parse().expect("size");
        let block = &rest[line_end + 2..line_end + 2 + header_len];
        let payload = &rest[line_end + 2 + header_len..line_end + 2 + total];
        let headers = header_pairs(block.as_bytes())
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        found.push((fields[1].to_owned(), headers, payload.to_owned()));
        rest = &rest[line_end + 2 + total..];
    }
    found
}

/// `natsguard verify --key PUBLIC_KEY` on `input`: exit code and standard output.
fn natsguard_verify(input: &[u8]) -> (i32, String) {
    let mut child = bounded_command(env!("CARGO_BIN_EXE_natsguard"), Duration::from_secs(30))
        .args(["verify", "--key", PUBLIC_KEY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("natsguard verify");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    let output = child.wait_with_output().expect("natsguard verify");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamped_messages_carry_the_verified_publisher_to_every_reader() {
    let store = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(Some(&format!(
        "max_payload: 2048\njetstream {{ store_dir: \"{}\" }}\n",
        store.path().display()
    )));
    let admin = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let stream = admin
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    // The nats CLI, straight on nats-server: its printout goes to `natsguard verify`.
    let cli = bounded_command(tool_binary("nats"), Duration::from_secs(30))
        .args(["-s", &nats.url(), "sub", "orders.>", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats sub");
    nats.wait_for_subscription("orders.>");
    let mut with_headers = Session::open(nats.port, HEADERS);
    let mut without_headers = Session::open(nats.port, "");
    for spy in [&mut with_headers, &mut without_headers] {
        assert_eq!(spy.exchange("SUB orders.> 1\r\n"), Vec::<String>::new());
    }
    let mesh = Mesh::start_with_server(&policy(), nats);

    // async-nats and nats-py through the mesh, as the subscriber workload.
    let subscriber = async_nats::connect(mesh.url_of("subscriber"))
        .await
        .expect("connect");
    let mut subscription = subscriber.subscribe("orders.>").await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    let mut nats_py = bounded_command(venv_binary("python"), Duration::from_secs(40))
        .arg(repo_root().join("tests/clients/nats_py_provenance.py"))
        .args([&mesh.url_of("subscriber"), "orders.>", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("nats-py");
    let mut nats_py_out = BufReader::new(nats_py.stdout.take().expect("stdout"));
    let mut ready = String::new();
    nats_py_out.read_line(&mut ready).expect("nats-py ready");
    assert_eq!(ready.trim(), "ready");

    // A PUB becomes an HPUB; a client's HPUB keeps its headers but not its forged identity.
    let mut publisher = Session::open(mesh.port_of("publisher"), HEADERS);
    let forged = "NATS/1.0\r\nNats-Publisher: spiffe://cluster.local/ns/admin/sa/root\r\nX-Trace: abc\r\n\r\n";
    let frames = [
        "PUB orders.created 5\r\nhello\r\n".to_owned(),
        hpub("orders.updated", forged, "world"),
    ]
    .concat();
    assert_eq!(publisher.exchange(&frames), Vec::<String>::new());

    // Raw bytes as nats-server delivers them to a subscriber with headers...
    let raw = read_until_marker(&mut with_headers, "world\r\n");
    let messages = hmsgs(&raw);
    assert_eq!(messages.len(), 2, "{raw}");
    for ((subject, headers, payload), (expected_subject, expected_payload)) in messages
        .iter()
        .zip([("orders.created", "hello"), ("orders.updated", "world")])
    {
        assert_eq!(
            (&**subject, &**payload),
            (expected_subject, expected_payload)
        );
        let names: Vec<&str> = headers.iter().map(|(name, _)| &**name).collect();
        let expected_names = if subject == "orders.updated" {
            vec!["Nats-Publisher", "Nats-Publisher-Sig", "X-Trace"]
        } else {
            vec!["Nats-Publisher", "Nats-Publisher-Sig"]
        };
        assert_eq!(names, expected_names, "{raw}");
        assert_eq!(headers[0].1, PUBLISHER);
    }
    let (code, verified) = natsguard_verify(raw.as_bytes());
    assert_eq!(code, 0, "{verified}");
    assert_eq!(verified.lines().filter(|l| l.starts_with("ok ")).count(), 2);
    assert!(verified.contains(PUBLISHER), "{verified}");
    let tampered = raw.replacen("hello", "hellO", 1);
    let (code, refused) = natsguard_verify(tampered.as_bytes());
    assert_eq!(code, 1, "{refused}");
    assert!(
        refused.starts_with("FAILED \"orders.created\": the signature does not match"),
        "{refused}"
    );

    // ...and without: the payload alone, as nats-server gives any message with headers.
    assert_eq!(
        read_until_marker(&mut without_headers, "world\r\n"),
        "MSG orders.created 1 5\r\nhello\r\nMSG orders.updated 1 5\r\nworld\r\n"
    );

    // The nats CLI's printout verifies.
    let printed = cli.wait_with_output().expect("nats sub");
    let (code, verified) = natsguard_verify(&printed.stdout);
    assert_eq!(
        (
            code,
            verified.lines().filter(|l| l.starts_with("ok ")).count()
        ),
        (0, 2),
        "{verified}\n{}",
        String::from_utf8_lossy(&printed.stdout)
    );

    // async-nats reads the headers.
    for (subject, payload) in [("orders.created", "hello"), ("orders.updated", "world")] {
        let message = tokio::time::timeout(WAIT, subscription.next())
            .await
            .expect("in time")
            .expect("message");
        assert_eq!(
            (message.subject.as_str(), &message.payload[..]),
            (subject, payload.as_bytes())
        );
        let headers = message.headers.expect("headers");
        assert_eq!(
            headers.get("Nats-Publisher").map(|v| v.as_str()),
            Some(PUBLISHER)
        );
        assert!(headers.get("Nats-Publisher-Sig").is_some());
    }
    // nats-py too.
    let mut line = String::new();
    nats_py_out.read_line(&mut line).expect("nats-py result");
    let received: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(received[0][0], "orders.created");
    assert_eq!(received[0][1], "hello");
    assert_eq!(received[0][2]["Nats-Publisher"], PUBLISHER);
    assert_eq!(received[1][2]["Nats-Publisher"], PUBLISHER);
    assert_eq!(received[1][2]["X-Trace"], "abc");
    assert!(nats_py.wait().expect("nats-py").success());

    // The stream keeps the headers; the library function verifies what it stored.
    let stored = stream.get_raw_message(2).await.expect("stored message");
    let pairs: Vec<(String, String)> = stored
        .headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (name.to_string(), value.as_str().to_owned()))
        })
        .collect();
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (&**n, &**v)).collect();
    let trusted = [PublicNkey::parse(PUBLIC_KEY).expect("public key")];
    let names = ProvenanceNames::derived_from("Nats-Publisher");
    let verified = verify("orders.updated", &pairs, &stored.payload, &names, &trusted)
        .expect("the stored message verifies");
    assert_eq!(verified.spiffe.as_deref(), Some(PUBLISHER));

    // A response allowed by allow_responses to a stamped request is stamped as its responder.
    let mut responder = Session::open(mesh.port_of("subscriber"), HEADERS);
    assert_eq!(
        responder.exchange("SUB rpc.orders 7\r\n"),
        Vec::<String>::new()
    );
    assert_eq!(
        publisher.exchange("SUB _INBOX.p 9\r\nPUB rpc.orders _INBOX.p 1\r\nq\r\n"),
        Vec::<String>::new()
    );
    let request = read_until_marker(&mut responder, "q\r\n");
    assert!(
        request.starts_with("HMSG rpc.orders 7 _INBOX.p "),
        "{request}"
    );
    assert_eq!(
        responder.exchange("PUB _INBOX.p 1\r\nr\r\n"),
        Vec::<String>::new()
    );
    let response = read_until_marker(&mut publisher, "r\r\n");
    let responses = hmsgs(&response);
    assert_eq!(responses.len(), 1, "{response}");
    assert_eq!(
        responses[0].1[0],
        ("Nats-Publisher".into(), SUBSCRIBER.into())
    );

    // At max_payload unstamped, over it stamped: nats-server's own error, then the close; the
    // message reaches no subscriber.
    let (lines, closed) = publisher
        .exchange_until_closed(&format!("PUB orders.big 2048\r\n{}\r\n", "x".repeat(2048)));
    assert_eq!(lines, ["-ERR 'Maximum Payload Violation'"]);
    assert!(closed);
    let mut direct = Session::open(mesh.nats.port, HEADERS);
    let (lines, closed) = direct.exchange_until_closed(&format!(
        "HPUB orders.big 12 2049\r\nNATS/1.0\r\n\r\n{}\r\n",
        "x".repeat(2037)
    ));
    assert_eq!(
        (lines, closed),
        (vec!["-ERR 'Maximum Payload Violation'".to_owned()], true)
    );
    let after = with_headers.exchange("");
    assert!(
        after.iter().all(|line| !line.contains("orders.big")),
        "{after:?}"
    );
    // orders.created, orders.updated, the request on rpc.orders and its response.
    assert_eq!(wait_for_counter(&mesh, "provenance.stamped", 4), 4);
}

/// The two refusals provenance adds, through Envoy: a publish on a stamped subject from a client
/// without headers (natsguard cannot send nats-server an HPUB for it), and with
/// `reserved_header_action: refuse` a publish carrying a reserved header. Each gets nats-server's
/// permissions violation, the connection stays, and nats-server never sees the frame.
#[test]
fn refused_publishes_never_reach_nats_server() {
    let nats = NatsServer::start(None);
    let mut spy = Session::open(nats.port, HEADERS);
    assert_eq!(
        spy.exchange("SUB orders.> 1\r\nSUB svc.> 2\r\n"),
        Vec::<String>::new()
    );
    let mut config: Value = serde_json::from_str(&policy()).expect("policy");
    config["reserved_header_action"] = json!("refuse");
    let mesh = Mesh::start_with_server(&config.to_string(), nats);

    let mut without_headers = Session::open(mesh.port_of("publisher"), "");
    assert_eq!(
        without_headers.exchange("PUB orders.created 2\r\nno\r\nPUB svc.end 3\r\nend\r\n"),
        ["-ERR 'Permissions Violation for Publish to \"orders.created\"'"]
    );
    let mut spoofing = Session::open(mesh.port_of("publisher"), HEADERS);
    let frames = [
        hpub(
            "svc.request",
            "NATS/1.0\r\nnats-request-info: {}\r\n\r\n",
            "q",
        ),
        "PUB svc.end2 4\r\nend2\r\n".to_owned(),
    ]
    .concat();
    assert_eq!(
        spoofing.exchange(&frames),
        ["-ERR 'Permissions Violation for Publish to \"svc.request\"'"]
    );
    let seen = read_until_marker(&mut spy, "end2\r\n");
    assert_eq!(
        seen, "MSG svc.end 2 3\r\nend\r\nMSG svc.end2 2 4\r\nend2\r\n",
        "only the allowed publishes reached nats-server"
    );
}

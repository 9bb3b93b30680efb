#![no_main]
//! The header rewrite of provenance on any header block: an HPUB with the input as its header
//! block, on a stamped or an unstamped subject, sent whole or split where the input says. Never a
//! panic; the same bytes reach nats-server however the frame is split; what is forwarded is one
//! well-formed HPUB with the payload unchanged (or nothing, for a refused frame); no reader finds
//! a reserved header in a forwarded block other than the lines natsguard added.
use libfuzzer_sys::fuzz_target;
use natsguard::engine::{Connection, Forward, Gate};
use natsguard::protocol::headers::{find, Found, HeaderNames};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

const NOW: Duration = Duration::from_secs(1_800_000_000);
const PUBLISHER: &str = "spiffe://cluster.local/ns/billing/sa/publisher";
const STAMP: &[u8] = b"Nats-Publisher: spiffe://cluster.local/ns/billing/sa/publisher\r\n";
const POLICY: &str = r#"{
  "identity": { "spiffe": { "required": true, "trust_domains": ["cluster.local"] } },
  "default_action": "allow",
  "provenance": { "subjects": ["stamped"] }
}"#;

thread_local! {
    static GATE: Rc<Gate> = Rc::new(Gate::load(POLICY, &|_| Ok(None)).expect("valid").0);
}

fn reserved() -> &'static HeaderNames {
    static NAMES: OnceLock<HeaderNames> = OnceLock::new();
    NAMES.get_or_init(|| {
        HeaderNames::new([
            "Nats-Request-Info",
            "Nats-Publisher",
            "Nats-Publisher-Subject",
            "Nats-Publisher-Sig",
        ])
    })
}

fn upstream(connection: &mut Connection, chunk: &[u8]) -> Vec<u8> {
    match connection.client_data(chunk, NOW).forward {
        Forward::Unchanged => chunk.to_vec(),
        Forward::Prefix(len) => chunk[..len].to_vec(),
        Forward::Replace(bytes) => bytes,
        Forward::Hold => panic!("no CONNECT is held"),
    }
}

/// What nats-server receives for `frame`, cut at `cut`.
fn send(gate: &Rc<Gate>, frame: &[u8], cut: usize) -> Vec<u8> {
    let mut connection = Connection::new(Rc::clone(gate));
    connection.set_peer_uri_san(Some(PUBLISHER.into()));
    let info = b"INFO {\"server_id\":\"S\",\"headers\":true,\"max_payload\":1048576} \r\n";
    connection.server_data(info, NOW);
    upstream(
        &mut connection,
        b"CONNECT {\"verbose\":false,\"headers\":true}\r\n",
    );
    let mut out = upstream(&mut connection, &frame[..cut]);
    out.extend(upstream(&mut connection, &frame[cut..]));
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, block)) = data.split_first() else {
        return;
    };
    let gate = GATE.with(Rc::clone);
    let subject = if control & 1 == 1 { "stamped" } else { "other" };
    let mut frame = format!("HPUB {subject} {} {}\r\n", block.len(), block.len() + 5).into_bytes();
    frame.extend_from_slice(block);
    frame.extend_from_slice(b"hello\r\nPING\r\n");
    let whole = send(&gate, &frame, frame.len());
    let cut = usize::from(control >> 1) * frame.len() / 128;
    assert_eq!(send(&gate, &frame, cut), whole, "split at {cut}");
    // Refused (a PING whose PONG becomes the -ERR), or one HPUB then the client's PING.
    if whole == b"PING\r\nPING\r\n" {
        return;
    }
    let line_end = whole.iter().position(|&b| b == b'\n').expect("a line") + 1;
    let line = std::str::from_utf8(&whole[..line_end]).expect("a canonical line");
    let fields: Vec<&str> = line.trim_end().split(' ').collect();
    assert_eq!(fields[..2], ["HPUB", subject], "{line:?}");
    let header_len: usize = fields[2].parse().expect("size");
    let total: usize = fields[3].parse().expect("size");
    let forwarded = &whole[line_end..line_end + header_len];
    assert_eq!(&whole[line_end + header_len..line_end + total], b"hello");
    assert_eq!(&whole[line_end + total..], b"\r\nPING\r\n");
    let rest = if subject == "stamped" {
        let version_end = forwarded.iter().position(|&b| b == b'\n').expect("version") + 1;
        assert_eq!(&forwarded[version_end..version_end + STAMP.len()], STAMP);
        [
            &forwarded[..version_end],
            &forwarded[version_end + STAMP.len()..],
        ]
        .concat()
    } else {
        forwarded.to_vec()
    };
    // Read again as natsguard reads a client's block (the most lenient reader): no reserved
    // header left, and nothing a reader could read otherwise.
    assert_eq!(
        find(&rest, reserved()),
        Found::Lines(Vec::new()),
        "a reserved header reached nats-server: {rest:?}"
    );
    assert!(rest.len() <= block.len().max(12), "only lines are removed");
});

//! Provenance: the publisher's verified identity in the headers of the messages it publishes,
//! optionally signed, and no client-made copy of those headers (or of any other reserved one)
//! reaching nats-server. docs/provenance.md is the user's side of this file.
//!
//! For every publish a connection makes (decided allowed by the permissions), [`Connection`]
//! asks [`Connection::provenance_edit`] what becomes of its control line and header block:
//! nothing (the common case: no copy), a new `HPUB` line and header block in their place (the
//! payload follows unchanged), or a refusal. The header block is read by `protocol::headers`, as
//! the most lenient reader would read it.
//!
//! A signature covers the payload's SHA-256, so a signed frame whose payload is not all at hand
//! is held until it is ([`Edit::NeedsPayload`]).
//!
//! The canonical encoding a signature covers ([`signed_message`]) and [`verify`] are public:
//! they are what consumers check.

use std::time::Duration;

use super::{Connection, Gate, State};
use crate::identity::{Identity, NkeySigner, PublicNkey};
use crate::policy::{Mode, Provenance, ProvenanceNames, ReservedHeaderAction, Selection};
use crate::protocol::headers::{self, Found};
use crate::protocol::{ClientOp, Operation};

/// The first line of the canonical encoding: its version.
pub const SIGNED_MESSAGE_VERSION: &str = "natsguard-provenance-v1";
/// The version field of a `Nats-Publisher-Sig` value.
const SIGNATURE_VERSION: &str = "v1";

/// What a connection writes into the messages it stamps, under the configuration deciding it:
/// computed once per connection and configuration.
#[derive(Debug)]
pub(super) struct Stamping {
    /// The identity header lines, `\r\n` each.
    lines: Vec<u8>,
    spiffe: Option<Box<str>>,
    jwt: Option<Box<str>>,
    /// An identity value a header cannot carry as it is (a control byte, blanks at its ends):
    /// the connection's stamped publishes are refused.
    unrepresentable: bool,
    selection: Selection,
}

impl Stamping {
    /// The stamping of a connection with `identity` under the configuration of `gate`: none
    /// without `provenance`, and in a dry run (which changes no message).
    pub(super) fn of(gate: &Gate, identity: &Identity) -> Option<Box<Stamping>> {
        match (gate.policy.provenance(), gate.policy.mode()) {
            (Some(provenance), Mode::Enforce) => {
                Some(Box::new(Stamping::new(provenance, identity)))
            }
            _ => None,
        }
    }

    fn new(provenance: &Provenance, identity: &Identity) -> Stamping {
        let spiffe = identity.spiffe.as_ref().map(|spiffe| spiffe.to_string());
        let jwt = identity.jwt.as_ref().map(|jwt| jwt.request_principal());
        let names = provenance.names();
        let mut lines = Vec::new();
        let mut unrepresentable = false;
        for (name, value) in [(&names.spiffe, &spiffe), (&names.jwt, &jwt)] {
            if let Some(value) = value {
                unrepresentable |= !headers::is_plain_value(value);
                write_header_line(&mut lines, name, value);
            }
        }
        Stamping {
            lines,
            spiffe: spiffe.map(Into::into),
            jwt: jwt.map(Into::into),
            unrepresentable,
            selection: provenance.selection(),
        }
    }
}

impl Stamping {
    /// Whether `provenance.subjects` selects `subject` (cached per connection).
    pub(super) fn selects(&mut self, provenance: &Provenance, subject: &[u8]) -> bool {
        provenance.selects(subject, &mut self.selection)
    }
}

fn write_header_line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A publish as [`Connection::provenance_edit`] reads it.
pub(super) struct Publish<'a> {
    pub(super) subject: &'a str,
    pub(super) reply: Option<&'a str>,
    /// The header block (HPUB), `None` for a PUB.
    pub(super) headers: Option<&'a [u8]>,
    /// The payload after the header block, when all of it is at hand.
    pub(super) payload: Option<&'a [u8]>,
    /// Its length.
    pub(super) payload_len: u32,
}

impl Publish<'_> {
    /// The message's size as the client sent it, header block included (the byte counters').
    pub(super) fn size(&self) -> u64 {
        self.headers.map_or(0, |block| block.len() as u64) + u64::from(self.payload_len)
    }
}

/// What becomes of an allowed publish.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Edit {
    /// It goes as it came.
    Keep,
    /// These bytes (a canonical `HPUB` line and the new header block) replace its control line
    /// and header block; the payload follows unchanged.
    Replace(Vec<u8>),
    /// It is refused like a denied publish, for this reason (the audit line's).
    Refuse(&'static str),
    /// Stamped, it would be larger than `max_payload`: nats-server's answer, then close.
    TooLarge { size: u32, max: u32 },
    /// It is signed, and its payload is not all at hand yet: ask again when it is.
    NeedsPayload,
}

/// What one edit did, for counters and the audit line.
#[derive(Debug, Default)]
pub(super) struct Done {
    pub(super) stamped: bool,
    /// The reserved headers removed, as the client spelled them.
    pub(super) removed: Vec<String>,
}

impl Connection {
    /// What becomes of a publish the permissions allowed: stamped when `provenance.subjects`
    /// selects it (or it answers a message delivered on a selected subject, through
    /// `allow_responses`), reserved headers removed (or refused), nothing at all otherwise. Only
    /// an enforced configuration edits: a dry run changes no message.
    pub(super) fn provenance_edit(&mut self, publish: &Publish, now: Duration) -> (Edit, Done) {
        let gate = std::rc::Rc::clone(&self.gate);
        let policy = &gate.policy;
        let max_payload = self.client.limits().max_payload;
        let State::Established(session) = &mut self.state else {
            return (Edit::Keep, Done::default());
        };
        if policy.mode() == Mode::DryRun {
            return (Edit::Keep, Done::default());
        }
        let reserved = policy.reserved_headers();
        // An empty header block is no header block (nats-server delivers it as a MSG).
        let block = publish.headers.filter(|block| !block.is_empty());
        let found = match block {
            Some(block) if !reserved.names.is_empty() => headers::find(block, &reserved.names),
            _ => Found::Lines(Vec::new()),
        };
        let removed = match found {
            Found::Uncertain => return (Edit::Refuse("header_block_uncertain"), Done::default()),
            Found::Lines(lines) => lines,
        };
        if !removed.is_empty() && reserved.action == ReservedHeaderAction::Refuse {
            return (Edit::Refuse("reserved_header"), Done::default());
        }
        let stamp = match (policy.provenance(), session.stamping.as_deref_mut()) {
            (Some(provenance), Some(stamping)) => {
                let subject = publish.subject.as_bytes();
                let selected = stamping.selects(provenance, subject)
                    || session.permissions.answers_selected_message(subject);
                selected.then_some((provenance, &*stamping))
            }
            _ => None,
        };
        if stamp.is_none() && removed.is_empty() {
            return (Edit::Keep, Done::default());
        }
        let mut added = Vec::new();
        if let Some((provenance, stamping)) = stamp {
            if !session.headers {
                return (Edit::Refuse("provenance_needs_headers"), Done::default());
            }
            if stamping.unrepresentable {
                return (Edit::Refuse("provenance_unrepresentable"), Done::default());
            }
            if block.is_some_and(|block| !headers::is_plain(block)) {
                return (Edit::Refuse("header_block_uncertain"), Done::default());
            }
            added.extend_from_slice(&stamping.lines);
            if let Some(signer) = &gate.provenance_signer {
                let Some(payload) = publish.payload else {
                    return (Edit::NeedsPayload, Done::default());
                };
                let signature = signature_value(
                    signer,
                    publish.subject,
                    stamping.spiffe.as_deref(),
                    stamping.jwt.as_deref(),
                    now,
                    payload,
                );
                write_header_line(&mut added, &provenance.names().signature, &signature);
            }
        }
        let header_len = match block {
            Some(block) => headers::rewritten_len(block, &removed, &added),
            None => headers::new_len(&added),
        };
        let total = header_len as u64 + u64::from(publish.payload_len);
        if total > u64::from(max_payload) {
            return (
                Edit::TooLarge {
                    size: u32::try_from(total).unwrap_or(u32::MAX),
                    max: max_payload,
                },
                Done::default(),
            );
        }
        let line = ClientOp::HPub {
            subject: publish.subject,
            reply: publish.reply,
            header_len: header_len as u32,
            total_len: total as u32,
        };
        let mut head = Vec::with_capacity(line.canonical_len() + header_len);
        line.write_canonical(&mut head);
        match block {
            Some(block) => headers::write_rewritten(block, &removed, &added, &mut head),
            None => headers::write_new(&added, &mut head),
        }
        let done = Done {
            stamped: stamp.is_some(),
            removed: removed_names(block, &removed, &reserved.names),
        };
        (Edit::Replace(head), done)
    }
}

/// The reserved headers in the removed lines, as the client wrote their names.
fn removed_names(
    block: Option<&[u8]>,
    removed: &[std::ops::Range<usize>],
    names: &headers::HeaderNames,
) -> Vec<String> {
    let Some(block) = block else {
        return Vec::new();
    };
    headers::lines(block)
        .filter(|line| removed.iter().any(|range| range.contains(&line.span.start)))
        .filter_map(|line| line.name.filter(|name| names.contains(name)))
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

/// The `Nats-Publisher-Sig` value: `v1;key=<public nkey>;ts=<Unix ms>;sig=<base64url>`.
fn signature_value(
    signer: &NkeySigner,
    subject: &str,
    spiffe: Option<&str>,
    jwt: Option<&str>,
    now: Duration,
    payload: &[u8],
) -> String {
    let key = signer.public_key();
    let timestamp = now.as_millis() as u64;
    let payload_hash = hmac_sha256::Hash::hash(payload);
    let message = signed_message(&key, timestamp, subject, spiffe, jwt, &payload_hash);
    format!(
        "{SIGNATURE_VERSION};key={key};ts={timestamp};sig={}",
        signer.sign(&message)
    )
}

/// The bytes a provenance signature covers (docs/provenance.md): seven lines, each ending in
/// `\n`: the version, `key:`, `ts:`, `subject:`, `spiffe:` and `jwt:` (empty when the header is
/// absent), and `payload-sha256:` with the payload's SHA-256 in lower-case hex.
pub fn signed_message(
    key: &str,
    timestamp_ms: u64,
    subject: &str,
    spiffe: Option<&str>,
    jwt: Option<&str>,
    payload_sha256: &[u8; 32],
) -> Vec<u8> {
    let hex: String = payload_sha256
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!(
        "{SIGNED_MESSAGE_VERSION}\nkey:{key}\nts:{timestamp_ms}\nsubject:{subject}\nspiffe:{}\njwt:{}\npayload-sha256:{hex}\n",
        spiffe.unwrap_or_default(),
        jwt.unwrap_or_default()
    )
    .into_bytes()
}

/// A message whose provenance signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The public nkey that signed it.
    pub key: String,
    /// When natsguard signed it (Unix milliseconds).
    pub timestamp_ms: u64,
    /// The SPIFFE ID of the publisher's certificate (`Nats-Publisher`), if it had one.
    pub spiffe: Option<String>,
    /// The `iss/sub` of the publisher's verified token (`Nats-Publisher-Subject`), if any.
    pub jwt: Option<String>,
}

/// Why a message's provenance did not check out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// No signature header.
    Unsigned,
    /// A provenance header appears more than once.
    Repeated(String),
    /// The signature header is not `v1;key=…;ts=…;sig=…`.
    Malformed,
    /// Signed by a key that is not among the trusted ones.
    UntrustedKey(String),
    /// The signature does not match the message (subject, identity headers, time or payload
    /// changed, or not natsguard's).
    BadSignature,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Unsigned => f.write_str("no provenance signature"),
            VerifyError::Repeated(name) => write!(f, "header {name} appears more than once"),
            VerifyError::Malformed => f.write_str("malformed provenance signature header"),
            VerifyError::UntrustedKey(key) => write!(f, "signed by untrusted key {key}"),
            VerifyError::BadSignature => f.write_str("the signature does not match the message"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Checks a message's provenance signature: `headers` are its headers as any client library
/// reads them (name, value; names compared without regard to case), `names` the provenance
/// header names (`ProvenanceNames::derived_from("Nats-Publisher")` by default), `trusted` the
/// public nkeys of the natsguard deployments whose signatures count.
pub fn verify(
    subject: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
    names: &ProvenanceNames,
    trusted: &[PublicNkey],
) -> Result<Verified, VerifyError> {
    let header = |name: &str| -> Result<Option<&str>, VerifyError> {
        let mut values = headers
            .iter()
            .filter(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| *value);
        let first = values.next();
        match values.next() {
            Some(_) => Err(VerifyError::Repeated(name.to_owned())),
            None => Ok(first),
        }
    };
    let signature = header(&names.signature)?.ok_or(VerifyError::Unsigned)?;
    let spiffe = header(&names.spiffe)?;
    let jwt = header(&names.jwt)?;
    let fields: Vec<&str> = signature.trim().split(';').collect();
    let [SIGNATURE_VERSION, key, timestamp, sig] = fields[..] else {
        return Err(VerifyError::Malformed);
    };
    let (Some(key), Some(timestamp), Some(sig)) = (
        key.strip_prefix("key="),
        timestamp.strip_prefix("ts="),
        sig.strip_prefix("sig="),
    ) else {
        return Err(VerifyError::Malformed);
    };
    let timestamp: u64 = timestamp.parse().map_err(|_| VerifyError::Malformed)?;
    let public = trusted
        .iter()
        .find(|trusted| trusted.to_string() == key)
        .ok_or_else(|| VerifyError::UntrustedKey(key.to_owned()))?;
    let payload_hash = hmac_sha256::Hash::hash(payload);
    let message = signed_message(key, timestamp, subject, spiffe, jwt, &payload_hash);
    if !public.verifies(&message, sig) {
        return Err(VerifyError::BadSignature);
    }
    Ok(Verified {
        key: key.to_owned(),
        timestamp_ms: timestamp,
        spiffe: spiffe.map(str::to_owned),
        jwt: jwt.map(str::to_owned),
    })
}

/// The headers of a raw header block (an HMSG's), as name/value pairs for [`verify`].
pub fn header_pairs(block: &[u8]) -> Vec<(&str, &str)> {
    headers::lines(block)
        .filter_map(|line| {
            let name = std::str::from_utf8(line.name?).ok()?;
            let value = std::str::from_utf8(line.value).ok()?;
            Some((name, value))
        })
        .collect()
}

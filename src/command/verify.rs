//! `natsguard verify`: the provenance signatures of messages as a consumer has them, checked
//! with [`crate::engine::provenance::verify`] against the public keys given.
//!
//! Two inputs, told apart by their first bytes:
//!
//! - raw protocol bytes: one or more `HMSG <subject> <sid> [reply] <#hdr> <#total>\r\n` frames
//!   (and `MSG` frames, which carry no headers and so no signature), as a subscriber reads them
//!   from nats-server;
//! - what `nats sub` prints: `[#1] Received on "<subject>"[ with reply "<reply>"]`, the header
//!   lines, an empty line, the payload and one to three newlines (more when the payload does
//!   not end with one, one more between messages). The printout does not say how many of them
//!   are the payload's, so each reading is tried: the signature covers the payload's SHA-256,
//!   and at most one of them can match.

use crate::engine::provenance::{header_pairs, verify, Verified, VerifyError};
use crate::identity::PublicNkey;
use crate::policy::ProvenanceNames;

/// One message of the input and what checking it found.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    pub subject: String,
    pub outcome: Result<Verified, VerifyError>,
}

impl Checked {
    /// One line for the terminal: `ok <subject>: ...` or `FAILED <subject>: <reason>`.
    pub fn line(&self) -> String {
        match &self.outcome {
            Ok(verified) => format!(
                "ok {:?}: published by {} ({}), signed by {} at {} ms",
                self.subject,
                verified.spiffe.as_deref().unwrap_or("no SPIFFE ID"),
                verified.jwt.as_deref().unwrap_or("no token"),
                verified.key,
                verified.timestamp_ms
            ),
            Err(error) => format!("FAILED {:?}: {error}", self.subject),
        }
    }
}

/// A message read from the input: its subject, header lines as pairs, and the payloads it may
/// have had (one, or several readings of a printout).
struct Message<'a> {
    subject: String,
    headers: Vec<(&'a str, &'a str)>,
    payloads: Vec<&'a [u8]>,
}

/// Checks every message of `input` against the `trusted` keys, with the header names derived
/// from `header` (`Nats-Publisher` by default). `Err` when the input is neither form.
pub fn verify_input(
    input: &[u8],
    header: &str,
    trusted: &[PublicNkey],
) -> Result<Vec<Checked>, String> {
    let names = ProvenanceNames::derived_from(header);
    let messages = if input.starts_with(b"[#") {
        printed_messages(input)?
    } else {
        raw_messages(input)?
    };
    if messages.is_empty() {
        return Err("no message in the input".to_owned());
    }
    Ok(messages
        .into_iter()
        .map(|message| {
            let mut outcome = Err(VerifyError::Unsigned);
            for payload in &message.payloads {
                outcome = verify(&message.subject, &message.headers, payload, &names, trusted);
                if outcome.is_ok() {
                    break;
                }
            }
            Checked {
                subject: message.subject,
                outcome,
            }
        })
        .collect())
}

/// `HMSG`/`MSG` frames, back to back (other server lines, such as `PING` or `INFO`, skipped).
fn raw_messages(input: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let line_end = memchr::memchr(b'\n', &input[at..])
            .map(|end| at + end)
            .ok_or("an unterminated line at the end of the input")?;
        let line = std::str::from_utf8(&input[at..line_end])
            .map_err(|_| "a control line is not UTF-8")?
            .trim_end_matches('\r');
        at = line_end + 1;
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let (subject, header_len, total_len) = match fields.as_slice() {
            [op, subject, _sid, _reply @ .., header, total]
                if op.eq_ignore_ascii_case("HMSG") && fields.len() <= 6 =>
            {
                (*subject, size(header)?, size(total)?)
            }
            [op, subject, _sid, _reply @ .., total]
                if op.eq_ignore_ascii_case("MSG") && fields.len() <= 5 =>
            {
                (*subject, 0, size(total)?)
            }
            _ => continue,
        };
        if header_len > total_len || input.len() < at + total_len + 2 {
            return Err(format!("the message on {subject:?} is cut short"));
        }
        let block = &input[at..at + header_len];
        let payload = &input[at + header_len..at + total_len];
        if &input[at + total_len..at + total_len + 2] != b"\r\n" {
            return Err(format!(
                "the message on {subject:?} does not end where its size says"
            ));
        }
        at += total_len + 2;
        messages.push(Message {
            subject: subject.to_owned(),
            headers: header_pairs(block),
            payloads: vec![payload],
        });
    }
    Ok(messages)
}

fn size(token: &str) -> Result<usize, String> {
    token
        .parse()
        .map_err(|_| format!("{token:?} is not a message size"))
}

/// What `nats sub` prints, message after message.
fn printed_messages(input: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let text = std::str::from_utf8(input).map_err(|_| "the printout is not UTF-8")?;
    let mut starts: Vec<usize> = text
        .match_indices("[#")
        .map(|(at, _)| at)
        .filter(|&at| at == 0 || input[at - 1] == b'\n')
        .filter(|&at| {
            let line = text[at..].lines().next().unwrap_or_default();
            line.contains("] Received on \"")
        })
        .collect();
    starts.push(input.len());
    let mut messages = Vec::new();
    for pair in starts.windows(2) {
        let block = &text[pair[0]..pair[1]];
        let (first, rest) = block.split_once('\n').unwrap_or((block, ""));
        let subject = first
            .split_once("Received on \"")
            .and_then(|(_, after)| after.split_once('"'))
            .map(|(subject, _)| subject.to_owned())
            .ok_or_else(|| format!("no subject in {first:?}"))?;
        // Header lines up to the first empty line (a message without headers has none).
        let mut headers = Vec::new();
        let mut body = rest;
        if let Some((head, after)) = rest.split_once("\n\n") {
            let lines: Vec<&str> = head.lines().collect();
            if !lines.is_empty() && lines.iter().all(|line| line.contains(": ")) {
                headers = lines
                    .iter()
                    .filter_map(|line| line.split_once(": "))
                    .map(|(name, value)| (name.trim(), value.trim()))
                    .collect();
                body = after;
            }
        }
        let payloads = if body.trim_end_matches('\n') == "nil body" {
            vec![&b""[..]]
        } else {
            (1..=3)
                .filter_map(|newlines| body.strip_suffix(&"\n".repeat(newlines)))
                .map(str::as_bytes)
                .collect()
        };
        messages.push(Message {
            subject,
            headers,
            payloads,
        });
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provenance::signed_message;
    use crate::identity::NkeySigner;

    const SEED: &str = "SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU";
    const SPIFFE: &str = "spiffe://cluster.local/ns/billing/sa/api";

    /// A header block natsguard would write for `payload` on `subject`.
    fn block(subject: &str, payload: &[u8]) -> String {
        let signer = NkeySigner::from_seed(SEED).unwrap();
        let key = signer.public_key();
        let hash = hmac_sha256::Hash::hash(payload);
        let message = signed_message(&key, 1_700_000_000_000, subject, Some(SPIFFE), None, &hash);
        format!(
            "NATS/1.0\r\nNats-Publisher: {SPIFFE}\r\nNats-Publisher-Sig: v1;key={key};ts=1700000000000;sig={}\r\n\r\n",
            signer.sign(&message)
        )
    }

    fn trusted() -> Vec<PublicNkey> {
        let key = NkeySigner::from_seed(SEED).unwrap().public_key();
        vec![PublicNkey::parse(&key).unwrap()]
    }

    #[test]
    fn raw_hmsg_frames_verify_and_a_changed_byte_does_not() {
        let headers = block("orders.x", b"hi");
        let frame = |payload: &str| {
            format!(
                "HMSG orders.x 1 _INBOX.r {} {}\r\n{headers}{payload}\r\n",
                headers.len(),
                headers.len() + payload.len()
            )
        };
        let input = format!(
            "PING\r\n{}MSG other 2 1\r\nx\r\n{}",
            frame("hi"),
            frame("ho")
        );
        let checked = verify_input(input.as_bytes(), "Nats-Publisher", &trusted()).unwrap();
        let outcomes: Vec<_> = checked
            .iter()
            .map(|c| c.outcome.clone().map(|_| ()))
            .collect();
        assert_eq!(
            outcomes,
            [
                Ok(()),
                Err(VerifyError::Unsigned),
                Err(VerifyError::BadSignature)
            ]
        );
        assert!(checked[0]
            .line()
            .starts_with("ok \"orders.x\": published by spiffe://"));
        let cut = &input[..input.len() - 3];
        assert!(verify_input(cut.as_bytes(), "Nats-Publisher", &trusted()).is_err());
    }

    #[test]
    fn a_nats_cli_printout_verifies_whatever_newlines_end_the_payload() {
        let mut printout = String::new();
        for (n, payload) in ["hello", "line\n", ""].iter().enumerate() {
            let headers = block("orders.x", payload.as_bytes());
            printout.push_str(&format!("[#{}] Received on \"orders.x\"\n", n + 1));
            for line in headers
                .split("\r\n")
                .skip(1)
                .filter(|line| !line.is_empty())
            {
                printout.push_str(line);
                printout.push('\n');
            }
            let body = if payload.is_empty() {
                "nil body"
            } else {
                payload
            };
            let end = if body.ends_with('\n') {
                "\n\n"
            } else {
                "\n\n\n"
            };
            printout.push_str(&format!("\n{body}{end}"));
        }
        let checked = verify_input(printout.as_bytes(), "Nats-Publisher", &trusted()).unwrap();
        assert_eq!(checked.len(), 3);
        assert!(checked.iter().all(|c| c.outcome.is_ok()), "{checked:?}");
    }
}

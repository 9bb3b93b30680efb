//! Trusted-proxy nkey seeds: decoding against nats-io vectors, public key encoding, nonce
//! signatures checked with the public key.

mod support;

use ed25519_compact::{PublicKey, Signature};
use jwt_simple::reexports::ct_codecs::{Base32NoPadding, Base64UrlSafeNoPadding, Decoder, Encoder};
use natsguard::identity::{NkeyError, NkeySigner};

/// Seed/public pairs from nats-server's tests (server/auth_callout_test.go).
const VECTORS: [(&str, &str); 2] = [
    (
        "SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU",
        "UBO2MQV67TQTVIRV3XFTEZOACM4WLOCMCDMAWN5QVN5PI2N6JHTVDRON",
    ),
    (
        "SAANDLKMXL6CUS3CP52WIXBEDN6YJ545GDKC65U5JZPPV6WH6ESWUA6YAI",
        "ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA",
    ),
];

/// The raw ed25519 public key inside an encoded public nkey (type byte, key, checksum).
fn raw_public_key(public_nkey: &str) -> PublicKey {
    let raw = Base32NoPadding::decode_to_vec(public_nkey, None).unwrap();
    assert_eq!(raw.len(), 35);
    PublicKey::from_slice(&raw[1..33]).unwrap()
}

#[test]
fn known_seeds_give_known_public_keys() {
    for (seed, public) in VECTORS {
        let signer = NkeySigner::from_seed(seed).unwrap();
        assert_eq!(signer.public_key(), public);
        // A trailing newline, as in a mounted secret, is ignored.
        assert_eq!(
            NkeySigner::from_seed(&format!("{seed}\n"))
                .unwrap()
                .public_key(),
            public
        );
    }
}

#[test]
fn nonce_signature_verifies_with_the_public_key() {
    let (seed, public) = VECTORS[0];
    let signer = NkeySigner::from_seed(seed).unwrap();
    let nonce = "iHzFwOFnG2ok4ns";
    let proxy_sig = signer.sign_nonce(nonce);
    assert!(
        !proxy_sig.contains('='),
        "base64url without padding: {proxy_sig}"
    );
    assert!(!proxy_sig.contains('+') && !proxy_sig.contains('/'));
    let signature = Base64UrlSafeNoPadding::decode_to_vec(&proxy_sig, None).unwrap();
    let signature = Signature::from_slice(&signature).unwrap();
    let key = raw_public_key(public);
    key.verify(nonce.as_bytes(), &signature).unwrap();
    assert!(key.verify(b"another nonce", &signature).is_err());
    // Deterministic: no random number generator involved.
    assert_eq!(signer.sign_nonce(nonce), proxy_sig);
}

#[test]
fn debug_output_never_shows_the_seed() {
    let (seed, public) = VECTORS[0];
    let debug = format!("{:?}", NkeySigner::from_seed(seed).unwrap());
    assert!(debug.contains(public));
    assert!(!debug.contains(&seed[2..20]));
}

/// Re-encodes `seed` after `tamper` changed its raw bytes, with a recomputed checksum.
fn reencode(seed: &str, tamper: impl Fn(&mut Vec<u8>)) -> String {
    let mut raw = Base32NoPadding::decode_to_vec(seed, None).unwrap();
    raw.truncate(34);
    tamper(&mut raw);
    let crc = raw.iter().fold(0u16, |crc, byte| {
        (0..8).fold(crc ^ (u16::from(*byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    });
    raw.extend_from_slice(&crc.to_le_bytes());
    Base32NoPadding::encode_to_string(&raw).unwrap()
}

#[test]
fn every_signing_key_type_round_trips() {
    let (seed, _) = VECTORS[0];
    // (type byte, public key's first letter): operator, server, cluster, account, user.
    for (key_type, letter) in [
        (14u8 << 3, 'O'),
        (13 << 3, 'N'),
        (2 << 3, 'C'),
        (0, 'A'),
        (20 << 3, 'U'),
    ] {
        let typed = reencode(seed, |raw| {
            raw[0] = (18 << 3) | (key_type >> 5);
            raw[1] = (key_type & 31) << 3;
        });
        assert_eq!(typed.as_bytes()[1] as char, letter);
        let signer = NkeySigner::from_seed(&typed).unwrap();
        let public = signer.public_key();
        assert!(public.starts_with(letter), "{public}");
        // Same ed25519 key whatever the type.
        assert_eq!(raw_public_key(&public), raw_public_key(VECTORS[0].1));
    }
}

#[test]
fn invalid_seeds_are_refused() {
    let (seed, public) = VECTORS[0];
    assert_eq!(
        NkeySigner::from_seed("not base32!").unwrap_err(),
        NkeyError::NotBase32
    );
    assert_eq!(
        NkeySigner::from_seed(&seed[..40]).unwrap_err().reason(),
        "nkey_wrong_length"
    );
    assert_eq!(
        NkeySigner::from_seed("").unwrap_err(),
        NkeyError::WrongLength
    );
    // A public key is not a seed (and is shorter).
    assert_eq!(
        NkeySigner::from_seed(public).unwrap_err(),
        NkeyError::WrongLength
    );
    let mut flipped = seed.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        NkeySigner::from_seed(std::str::from_utf8(&flipped).unwrap()).unwrap_err(),
        NkeyError::BadChecksum
    );
    let private_marker = reencode(seed, |raw| raw[0] = (15 << 3) | (raw[0] & 7));
    assert_eq!(
        NkeySigner::from_seed(&private_marker).unwrap_err(),
        NkeyError::NotASeed
    );
    let curve = reencode(seed, |raw| {
        raw[0] = (18 << 3) | ((23u8 << 3) >> 5);
        raw[1] = ((23u8 << 3) & 31) << 3;
    });
    assert!(curve.starts_with("SX"));
    assert_eq!(
        NkeySigner::from_seed(&curve).unwrap_err(),
        NkeyError::UnsupportedKeyType
    );
}

// ---------------------------------------------------------------- against nats-server

mod nats_server {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub use super::support::NatsServer as Server;

    pub fn start(config: &str) -> Server {
        Server::start(Some(config))
    }

    /// Connects, reads INFO, sends the CONNECT built from the nonce, then PING; returns the first
    /// line the server answers (`PONG` or `-ERR ...`).
    pub fn connect(server: &Server, connect_json: impl Fn(&str) -> String) -> String {
        let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        let info: serde_json::Value =
            serde_json::from_str(info.strip_prefix("INFO ").unwrap().trim()).unwrap();
        let nonce = info["nonce"].as_str().expect("a nonce in INFO").to_string();
        let mut writer = stream;
        write!(writer, "CONNECT {}\r\nPING\r\n", connect_json(&nonce)).unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    }
}

#[test]
fn nats_server_accepts_proxy_sig_from_a_trusted_server_key() {
    let (user_seed, _) = VECTORS[0];
    let server_seed = reencode(user_seed, |raw| {
        raw[0] = (18 << 3) | ((13u8 << 3) >> 5);
        raw[1] = ((13u8 << 3) & 31) << 3;
    });
    assert!(server_seed.starts_with("SN"));
    let signer = NkeySigner::from_seed(&server_seed).unwrap();
    let untrusted = NkeySigner::from_seed(VECTORS[1].0).unwrap();
    let server = nats_server::start(&format!(
        "proxies {{ trusted: [ {{ key: \"{}\" }} ] }}\n\
         authorization {{ users: [ {{ user: app, password: pw, proxy_required: true }} ] }}\n",
        signer.public_key()
    ));
    let connect = |proxy_sig: Option<String>| {
        let mut connect =
            serde_json::json!({ "verbose": false, "pedantic": false, "user": "app", "pass": "pw" });
        if let Some(proxy_sig) = proxy_sig {
            connect["proxy_sig"] = serde_json::json!(proxy_sig);
        }
        connect.to_string()
    };
    let violation = "-ERR 'Authorization Violation'";
    assert_eq!(
        nats_server::connect(&server, |nonce| connect(Some(signer.sign_nonce(nonce)))),
        "PONG"
    );
    assert_eq!(nats_server::connect(&server, |_| connect(None)), violation);
    assert_eq!(
        nats_server::connect(&server, |_| connect(Some(
            signer.sign_nonce("another nonce")
        ))),
        violation
    );
    assert_eq!(
        nats_server::connect(&server, |nonce| connect(Some(untrusted.sign_nonce(nonce)))),
        violation
    );
}

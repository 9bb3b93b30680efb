//! Cost of authenticating one CONNECT with a JWT (the whole `Authenticator::authenticate` path:
//! decoding, provider and key selection, signature, claims). Budget: ≤ 1 ms with RS256.
//!
//! Run: `cargo bench --bench identity`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use natsguard::identity::{AuthOutcome, Authenticator, IdentityConfig};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://idp.example.com";

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

fn claims() -> JWTClaims<NoCustomClaims> {
    let mut claims = Claims::create(Duration::from_secs(600))
        .with_issuer(ISSUER)
        .with_subject("alice")
        .with_audience("nats");
    claims.issued_at = Some(UnixTimeStamp::from_secs(NOW - 10));
    claims.invalid_before = Some(UnixTimeStamp::from_secs(NOW - 10));
    claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 600));
    claims
}

fn authenticator(jwk: Value, algorithm: &str) -> Authenticator {
    let config: IdentityConfig = serde_json::from_value(json!({
        "spiffe": { "trust_domains": ["cluster.local"] },
        "jwt": { "required": true, "providers": [{
            "name": "corp-idp", "issuer": ISSUER, "audiences": ["nats"],
            "jwks": { "keys": [jwk] }, "algorithms": [algorithm]
        }]}
    }))
    .unwrap();
    Authenticator::new(&config).unwrap()
}

fn bench_authentication(c: &mut Criterion, name: &str, auth: &Authenticator, token: &str) {
    let san = Some("spiffe://cluster.local/ns/billing/sa/api");
    assert!(matches!(
        auth.authenticate(san, Some(token), NOW),
        AuthOutcome::Authenticated(_)
    ));
    c.bench_function(name, |b| {
        b.iter(|| auth.authenticate(black_box(san), black_box(Some(token)), NOW))
    });
}

fn identity(c: &mut Criterion) {
    let rsa = RS256KeyPair::generate(2048).unwrap().with_key_id("rsa");
    let components = rsa.public_key().to_components();
    let rsa_jwk =
        json!({ "kty": "RSA", "kid": "rsa", "n": b64(&components.n), "e": b64(&components.e) });
    bench_authentication(
        c,
        "authenticate_rs256_2048",
        &authenticator(rsa_jwk, "RS256"),
        &rsa.sign(claims()).unwrap(),
    );

    let ec = ES256KeyPair::generate().with_key_id("ec");
    let point = ec.public_key().public_key().to_bytes_uncompressed();
    let ec_jwk = json!({ "kty": "EC", "crv": "P-256", "kid": "ec", "x": b64(&point[1..33]), "y": b64(&point[33..]) });
    bench_authentication(
        c,
        "authenticate_es256",
        &authenticator(ec_jwk, "ES256"),
        &ec.sign(claims()).unwrap(),
    );

    let ed = Ed25519KeyPair::generate().with_key_id("ed");
    let ed_jwk = json!({ "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(&ed.public_key().to_bytes()) });
    bench_authentication(
        c,
        "authenticate_eddsa",
        &authenticator(ed_jwk, "EdDSA"),
        &ed.sign(claims()).unwrap(),
    );
}

criterion_group!(benches, identity);
criterion_main!(benches);

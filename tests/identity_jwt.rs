//! JWT authentication with keys and tokens generated in the test: every accepted algorithm
//! family and header shape, every rejection reason, static and remote key sets.

use std::sync::LazyLock;

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use natsguard::identity::{
    AuthOutcome, Authenticator, ConfigIssue, Identity, IdentityConfig, Rejection, VerifiedJwt,
};
use serde_json::{json, Map, Value};

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://idp.example.com";
const ALL_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Key pairs shared by all tests of this binary (RSA generation is slow in debug builds).
struct Keys {
    rsa: RS256KeyPair,
    rsa_other: RS256KeyPair,
    es256: ES256KeyPair,
    es384: ES384KeyPair,
    ed25519: ed25519_compact::KeyPair,
}

/// The ES256 test key, optionally labelled with a `kid` (jwt-simple's EC key pairs are not `Clone`).
fn es256(kid: Option<&str>) -> ES256KeyPair {
    let key = ES256KeyPair::from_bytes(&KEYS.es256.to_bytes()).unwrap();
    match kid {
        Some(kid) => key.with_key_id(kid),
        None => key,
    }
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    rsa: RS256KeyPair::generate(2048).unwrap(),
    rsa_other: RS256KeyPair::generate(2048).unwrap(),
    es256: ES256KeyPair::generate(),
    es384: ES384KeyPair::generate(),
    ed25519: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32])),
});

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

fn with_kid(mut jwk: Value, kid: Option<&str>) -> Value {
    if let Some(kid) = kid {
        jwk["kid"] = json!(kid);
    }
    jwk
}

fn rsa_jwk(key: &RS256KeyPair, kid: Option<&str>) -> Value {
    let components = key.public_key().to_components();
    with_kid(
        json!({ "kty": "RSA", "n": b64(&components.n), "e": b64(&components.e) }),
        kid,
    )
}

fn ec_jwk(uncompressed_point: &[u8], crv: &str, kid: Option<&str>) -> Value {
    let size = (uncompressed_point.len() - 1) / 2;
    let (x, y) = uncompressed_point[1..].split_at(size);
    with_kid(
        json!({ "kty": "EC", "crv": crv, "x": b64(x), "y": b64(y) }),
        kid,
    )
}

fn es256_jwk(kid: Option<&str>) -> Value {
    ec_jwk(
        &KEYS.es256.public_key().public_key().to_bytes_uncompressed(),
        "P-256",
        kid,
    )
}

fn es384_jwk(kid: Option<&str>) -> Value {
    ec_jwk(
        &KEYS.es384.public_key().public_key().to_bytes_uncompressed(),
        "P-384",
        kid,
    )
}

fn ed25519_jwk(kid: Option<&str>) -> Value {
    with_kid(
        json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(KEYS.ed25519.pk.as_ref()) }),
        kid,
    )
}

/// Every test key, each with a `kid`.
fn full_jwks() -> Value {
    json!({ "keys": [
        rsa_jwk(&KEYS.rsa, Some("rsa")),
        es256_jwk(Some("es256")),
        es384_jwk(Some("es384")),
        ed25519_jwk(Some("ed")),
    ]})
}

fn provider(jwks: Value, algorithms: &[&str]) -> Value {
    json!({
        "name": "corp-idp",
        "issuer": ISSUER,
        "audiences": ["nats"],
        "jwks": jwks,
        "algorithms": algorithms,
        "clock_skew_seconds": 60
    })
}

fn identity_config(providers: Value) -> IdentityConfig {
    serde_json::from_value(json!({ "jwt": { "required": true, "providers": providers } })).unwrap()
}

fn authenticator_with(jwks: Value, algorithms: &[&str]) -> Authenticator {
    Authenticator::new(&identity_config(json!([provider(jwks, algorithms)]))).unwrap()
}

fn authenticator() -> Authenticator {
    authenticator_with(full_jwks(), &ALL_ALGORITHMS)
}

/// Standard claims valid at `NOW`, plus a few custom ones.
fn claims() -> JWTClaims<Map<String, Value>> {
    let custom = json!({
        "scp": "billing.publish billing.read",
        "tid": "acme",
        "realm_access": { "roles": ["admin", "ops"] },
        "https://example.com/groups": ["g1"]
    });
    let Value::Object(custom) = custom else {
        unreachable!()
    };
    let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(600))
        .with_issuer(ISSUER)
        .with_subject("alice")
        .with_audience("nats");
    claims.issued_at = Some(UnixTimeStamp::from_secs(NOW - 10));
    claims.invalid_before = Some(UnixTimeStamp::from_secs(NOW - 10));
    claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 600));
    claims
}

/// A token with an arbitrary header and payload, signed with the test Ed25519 key.
fn eddsa_token(header: Value, payload: Value) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let signature = KEYS.ed25519.sk.sign(signing_input.as_bytes(), None);
    format!("{signing_input}.{}", b64(signature.as_ref()))
}

fn standard_payload() -> Value {
    json!({ "iss": ISSUER, "sub": "alice", "aud": "nats", "exp": NOW + 600, "iat": NOW - 10 })
}

fn verify(auth: &Authenticator, token: &str) -> AuthOutcome {
    auth.authenticate(None, Some(token), NOW)
}

fn accepted(auth: &Authenticator, token: &str) -> Identity {
    match verify(auth, token) {
        AuthOutcome::Authenticated(identity) => *identity,
        other => panic!("expected acceptance, got {other:?}"),
    }
}

fn accepted_jwt(auth: &Authenticator, token: &str) -> VerifiedJwt {
    accepted(auth, token).jwt.expect("a verified token")
}

fn rejected(auth: &Authenticator, token: &str) -> &'static str {
    match verify(auth, token) {
        AuthOutcome::Rejected(rejection) => rejection.reason(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

// ---------------------------------------------------------------- acceptance

#[test]
fn rs256_with_kid_exposes_identity_and_claims() {
    let token = KEYS.rsa.clone().with_key_id("rsa").sign(claims()).unwrap();
    let auth = authenticator();
    let jwt = accepted_jwt(&auth, &token);
    assert_eq!(jwt.issuer, ISSUER);
    assert_eq!(jwt.subject, "alice");
    assert_eq!(jwt.audiences, vec!["nats".to_string()]);
    assert_eq!(jwt.provider, "corp-idp");
    assert_eq!(jwt.expires_at, Some(NOW + 600));
    assert_eq!(jwt.not_before, Some(NOW - 10));
    assert_eq!(jwt.valid_until(), Some(NOW + 600 + 60 + 1));
    assert_eq!(jwt.request_principal(), "https://idp.example.com/alice");
    assert_eq!(jwt.claim("tid"), Some(&json!("acme")));
    assert_eq!(jwt.claim("sub"), Some(&json!("alice")));
    assert_eq!(
        jwt.claim("realm_access.roles"),
        Some(&json!(["admin", "ops"]))
    );
    assert_eq!(
        jwt.claim("https://example.com/groups"),
        Some(&json!(["g1"]))
    );
    assert_eq!(jwt.claim("realm_access.missing"), None);
    assert_eq!(jwt.claim("tid.x"), None);
    assert_eq!(jwt.claim("nope"), None);
}

#[test]
fn every_rsa_algorithm_verifies() {
    let der = KEYS.rsa.to_der().unwrap();
    let auth = authenticator();
    let tokens = [
        RS256KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa")
            .sign(claims())
            .unwrap(),
        RS384KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa")
            .sign(claims())
            .unwrap(),
        RS512KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa")
            .sign(claims())
            .unwrap(),
        PS256KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa")
            .sign(claims())
            .unwrap(),
        PS384KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa")
            .sign(claims())
            .unwrap(),
        PS512KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa")
            .sign(claims())
            .unwrap(),
    ];
    for token in tokens {
        assert_eq!(accepted_jwt(&auth, &token).subject, "alice");
    }
}

#[test]
fn ec_and_eddsa_algorithms_verify() {
    let auth = authenticator();
    let es256 = es256(Some("es256")).sign(claims()).unwrap();
    let es384 = ES384KeyPair::from_bytes(&KEYS.es384.to_bytes())
        .unwrap()
        .with_key_id("es384")
        .sign(claims())
        .unwrap();
    let eddsa = eddsa_token(
        json!({ "alg": "EdDSA", "typ": "JWT", "kid": "ed" }),
        standard_payload(),
    );
    for token in [es256, es384, eddsa] {
        assert_eq!(accepted_jwt(&auth, &token).subject, "alice");
    }
}

#[test]
fn tokens_without_kid_try_every_key_of_their_algorithm() {
    let jwks = json!({ "keys": [
        rsa_jwk(&KEYS.rsa_other, None),
        rsa_jwk(&KEYS.rsa, None),
        es256_jwk(None),
    ]});
    let auth = authenticator_with(jwks, &["RS256", "ES256"]);
    let rsa = KEYS.rsa.sign(claims()).unwrap();
    let rsa_other = KEYS.rsa_other.sign(claims()).unwrap();
    let es256 = es256(None).sign(claims()).unwrap();
    for token in [rsa, rsa_other, es256] {
        accepted_jwt(&auth, &token);
    }
    // A `kid` in the token must name a key, even when the set has keys without one.
    let with_kid = KEYS.rsa.clone().with_key_id("rsa").sign(claims()).unwrap();
    assert_eq!(rejected(&auth, &with_kid), "jwt_unknown_kid");
}

#[test]
fn kid_selects_among_several_keys_of_one_algorithm() {
    let jwks =
        json!({ "keys": [rsa_jwk(&KEYS.rsa_other, Some("old")), rsa_jwk(&KEYS.rsa, Some("new"))] });
    let auth = authenticator_with(jwks, &["RS256"]);
    accepted_jwt(
        &auth,
        &KEYS.rsa.clone().with_key_id("new").sign(claims()).unwrap(),
    );
    accepted_jwt(
        &auth,
        &KEYS
            .rsa_other
            .clone()
            .with_key_id("old")
            .sign(claims())
            .unwrap(),
    );
    // The right key id with the wrong key is a bad signature, not a fallback to another key.
    let mislabelled = KEYS
        .rsa_other
        .clone()
        .with_key_id("new")
        .sign(claims())
        .unwrap();
    assert_eq!(rejected(&auth, &mislabelled), "jwt_bad_signature");
}

#[test]
fn access_token_and_absent_typ_are_accepted() {
    let auth = authenticator();
    let options = HeaderOptions {
        signature_type: Some("at+jwt".into()),
        ..Default::default()
    };
    let at_jwt = es256(Some("es256"))
        .sign_with_options(claims(), &options)
        .unwrap();
    accepted_jwt(&auth, &at_jwt);
    let application_at_jwt = eddsa_token(
        json!({ "alg": "EdDSA", "typ": "application/at+jwt" }),
        standard_payload(),
    );
    accepted_jwt(&auth, &application_at_jwt);
    let no_typ = eddsa_token(json!({ "alg": "EdDSA" }), standard_payload());
    accepted_jwt(&auth, &no_typ);
}

#[test]
fn array_audience_matches_when_any_element_is_configured() {
    let auth = authenticator();
    let mut payload = standard_payload();
    payload["aud"] = json!(["other", "nats"]);
    let jwt = accepted_jwt(&auth, &eddsa_token(json!({ "alg": "EdDSA" }), payload));
    assert_eq!(jwt.audiences, vec!["other".to_string(), "nats".to_string()]);
}

#[test]
fn clock_skew_is_applied_to_exp_and_nbf() {
    let auth = authenticator();
    let mut payload = standard_payload();
    payload["exp"] = json!(NOW - 60);
    payload["nbf"] = json!(NOW + 60);
    payload["iat"] = json!(NOW + 60);
    accepted_jwt(&auth, &eddsa_token(json!({ "alg": "EdDSA" }), payload));
    // Without `exp` the token never expires (as in Envoy and Istio).
    let mut payload = standard_payload();
    payload.as_object_mut().unwrap().remove("exp");
    let jwt = accepted_jwt(&auth, &eddsa_token(json!({ "alg": "EdDSA" }), payload));
    assert_eq!(jwt.valid_until(), None);
}

#[test]
fn private_members_are_ignored_and_other_uses_skipped() {
    let mut jwk = ed25519_jwk(Some("ed"));
    jwk["d"] = json!(b64(&[1; 32]));
    jwk["use"] = json!("sig");
    jwk["alg"] = json!("EdDSA");
    let encryption_key =
        json!({ "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc" });
    let unsupported = json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" });
    let other_curve = json!({ "kty": "OKP", "crv": "X25519", "x": b64(&[9; 32]) });
    let other_alg = json!({ "kty": "RSA", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" });
    let auth = authenticator_with(
        json!({ "keys": [encryption_key, unsupported, other_curve, other_alg, jwk] }),
        &["EdDSA"],
    );
    accepted_jwt(
        &auth,
        &eddsa_token(json!({ "alg": "EdDSA", "kid": "ed" }), standard_payload()),
    );
    assert_eq!(
        rejected(
            &auth,
            &eddsa_token(json!({ "alg": "EdDSA", "kid": "enc" }), standard_payload())
        ),
        "jwt_unknown_kid"
    );
}

#[test]
fn jwk_alg_restricts_the_key_to_that_algorithm() {
    let mut jwk = rsa_jwk(&KEYS.rsa, Some("rsa"));
    jwk["alg"] = json!("PS256");
    let auth = authenticator_with(json!({ "keys": [jwk] }), &["RS256", "PS256"]);
    let der = KEYS.rsa.to_der().unwrap();
    accepted_jwt(
        &auth,
        &PS256KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa")
            .sign(claims())
            .unwrap(),
    );
    assert_eq!(
        rejected(
            &auth,
            &KEYS.rsa.clone().with_key_id("rsa").sign(claims()).unwrap()
        ),
        "jwt_unknown_kid"
    );
}

#[test]
fn spiffe_and_jwt_together_and_summary_hides_the_token() {
    let mut config = identity_config(json!([provider(full_jwks(), &ALL_ALGORITHMS)]));
    config.spiffe = serde_json::from_value(json!({ "trust_domains": ["cluster.local"] })).unwrap();
    let auth = Authenticator::new(&config).unwrap();
    let token = KEYS.rsa.clone().with_key_id("rsa").sign(claims()).unwrap();
    let outcome = auth.authenticate(
        Some("spiffe://cluster.local/ns/billing/sa/api"),
        Some(&token),
        NOW,
    );
    let AuthOutcome::Authenticated(identity) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(identity.valid_until(), Some(NOW + 661));
    let summary = identity.log_summary();
    assert_eq!(
        summary,
        "principal=cluster.local/ns/billing/sa/api namespace=billing service_account=api \
         provider=corp-idp iss=https://idp.example.com sub=alice"
    );
    let debug = format!("{identity:?}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!debug.contains(signature) && !summary.contains(signature));
    // SPIFFE is checked first.
    assert_eq!(
        auth.authenticate(None, Some(&token), NOW),
        AuthOutcome::Rejected(Rejection::SpiffeMissing)
    );
}

#[test]
fn optional_jwt_and_token_fields() {
    let config: IdentityConfig = serde_json::from_value(json!({
        "jwt": { "token_fields": ["jwt", "pass"], "providers": [provider(full_jwks(), &["EdDSA"])] }
    }))
    .unwrap();
    let auth = Authenticator::new(&config).unwrap();
    assert_eq!(
        auth.token_fields()
            .iter()
            .map(|field| field.as_str())
            .collect::<Vec<_>>(),
        ["jwt", "pass"]
    );
    let AuthOutcome::Authenticated(identity) = auth.authenticate(None, None, NOW) else {
        panic!()
    };
    assert_eq!(*identity, Identity::default());
    // A token that is present is verified even when optional.
    assert_eq!(
        auth.authenticate(None, Some("s3cret"), NOW),
        AuthOutcome::Rejected(Rejection::JwtMalformed)
    );
    let defaults =
        Authenticator::new(&identity_config(json!([provider(full_jwks(), &["EdDSA"])]))).unwrap();
    assert_eq!(
        defaults
            .token_fields()
            .iter()
            .map(|field| field.as_str())
            .collect::<Vec<_>>(),
        ["auth_token", "pass", "jwt"]
    );
}

// ---------------------------------------------------------------- rejection

#[test]
fn missing_token_when_required() {
    assert_eq!(
        authenticator().authenticate(None, None, NOW),
        AuthOutcome::Rejected(Rejection::JwtMissing)
    );
}

#[test]
fn oversized_token() {
    let mut claims = claims();
    claims
        .custom
        .insert("padding".into(), json!("x".repeat(16 * 1024)));
    let token = KEYS.rsa.clone().with_key_id("rsa").sign(claims).unwrap();
    assert_eq!(rejected(&authenticator(), &token), "jwt_too_large");
}

#[test]
fn malformed_tokens() {
    let auth = authenticator();
    let good = eddsa_token(json!({ "alg": "EdDSA" }), standard_payload());
    let parts: Vec<&str> = good.split('.').collect();
    let not_json = b64(b"not json");
    let array = b64(b"[1,2]");
    let cases = [
        String::new(),
        "garbage".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.{}.!!!", parts[0], parts[1]),
        format!("{}.%%%.{}", parts[0], parts[2]),
        format!("{not_json}.{}.{}", parts[1], parts[2]),
        format!("{}.{not_json}.{}", parts[0], parts[2]),
        format!("{}.{array}.{}", parts[0], parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        eddsa_token(json!({ "typ": "JWT" }), standard_payload()),
        eddsa_token(json!({ "alg": 5 }), standard_payload()),
        eddsa_token(json!({ "alg": "EdDSA", "kid": 5 }), standard_payload()),
    ];
    for token in &cases {
        assert_eq!(rejected(&auth, token), "jwt_malformed", "{token}");
    }
    for (claim, value) in [
        ("exp", json!("tomorrow")),
        ("nbf", json!(-5)),
        ("iat", json!(true)),
        ("aud", json!(["nats", 5])),
        ("aud", json!(7)),
        ("sub", json!(5)),
        ("iss", json!(["x"])),
        ("nonce", json!(1)),
    ] {
        let mut payload = standard_payload();
        payload[claim] = value;
        assert_eq!(
            rejected(&auth, &eddsa_token(json!({ "alg": "EdDSA" }), payload)),
            "jwt_malformed",
            "{claim}"
        );
    }
}

#[test]
fn unsupported_token_types() {
    let auth = authenticator();
    for typ in [
        json!("dpop+jwt"),
        json!("JOSE"),
        json!("application/jwt+x"),
        json!(1),
    ] {
        let token = eddsa_token(json!({ "alg": "EdDSA", "typ": typ }), standard_payload());
        assert_eq!(rejected(&auth, &token), "jwt_type", "{typ}");
    }
}

#[test]
fn unsigned_tokens() {
    let auth = authenticator();
    let payload = b64(standard_payload().to_string().as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes());
        assert_eq!(
            rejected(&auth, &format!("{header}.{payload}.")),
            "jwt_alg_none"
        );
        assert_eq!(
            rejected(&auth, &format!("{header}.{payload}.{}", b64(b"sig"))),
            "jwt_alg_none"
        );
    }
}

#[test]
fn algorithms_outside_the_provider_list() {
    // Algorithm confusion: HS256 keyed with the RSA public key an attacker can download.
    let auth = authenticator_with(
        json!({ "keys": [rsa_jwk(&KEYS.rsa, Some("rsa"))] }),
        &["RS256"],
    );
    for public_key_bytes in [
        KEYS.rsa.public_key().to_pem().unwrap().into_bytes(),
        KEYS.rsa.public_key().to_der().unwrap(),
    ] {
        let confused = HS256Key::from_bytes(&public_key_bytes)
            .with_key_id("rsa")
            .authenticate(claims())
            .unwrap();
        assert_eq!(rejected(&auth, &confused), "jwt_alg_not_allowed");
    }
    let es256 = es256(Some("es256")).sign(claims()).unwrap();
    assert_eq!(rejected(&auth, &es256), "jwt_alg_not_allowed");
    let unknown = eddsa_token(json!({ "alg": "Ed448" }), standard_payload());
    assert_eq!(rejected(&auth, &unknown), "jwt_alg_not_allowed");
}

#[test]
fn critical_header_extensions() {
    let token = eddsa_token(
        json!({ "alg": "EdDSA", "crit": ["exp"], "exp": 1 }),
        standard_payload(),
    );
    assert_eq!(rejected(&authenticator(), &token), "jwt_crit");
}

#[test]
fn issuer_missing_or_unknown() {
    let auth = authenticator();
    let mut payload = standard_payload();
    payload.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        rejected(&auth, &eddsa_token(json!({ "alg": "EdDSA" }), payload)),
        "jwt_issuer"
    );
    for issuer in [
        "https://evil.example.com",
        "https://idp.example.com/",
        "HTTPS://IDP.EXAMPLE.COM",
    ] {
        let mut payload = standard_payload();
        payload["iss"] = json!(issuer);
        assert_eq!(
            rejected(&auth, &eddsa_token(json!({ "alg": "EdDSA" }), payload)),
            "jwt_unknown_provider"
        );
    }
}

#[test]
fn unknown_kid_and_no_key() {
    let auth = authenticator_with(
        json!({ "keys": [rsa_jwk(&KEYS.rsa, Some("rsa"))] }),
        &["RS256", "EdDSA"],
    );
    let unknown = KEYS
        .rsa
        .clone()
        .with_key_id("rotated-away")
        .sign(claims())
        .unwrap();
    assert_eq!(rejected(&auth, &unknown), "jwt_unknown_kid");
    assert_eq!(
        rejected(
            &auth,
            &eddsa_token(json!({ "alg": "EdDSA" }), standard_payload())
        ),
        "jwt_no_key"
    );
    assert_eq!(
        rejected(
            &auth,
            &eddsa_token(json!({ "alg": "EdDSA", "kid": "rsa" }), standard_payload())
        ),
        "jwt_unknown_kid"
    );
}

#[test]
fn tampered_tokens_fail_the_signature_check() {
    let auth = authenticator();
    let token = KEYS.rsa.clone().with_key_id("rsa").sign(claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    let mut forged_claims = claims();
    forged_claims.subject = Some("mallory".into());
    let forged = KEYS
        .rsa_other
        .clone()
        .with_key_id("rsa")
        .sign(forged_claims)
        .unwrap();
    let forged_parts: Vec<&str> = forged.split('.').collect();
    // Payload swapped under the original signature.
    assert_eq!(
        rejected(
            &auth,
            &format!("{}.{}.{}", parts[0], forged_parts[1], parts[2])
        ),
        "jwt_bad_signature"
    );
    // Signed by another key.
    assert_eq!(rejected(&auth, &forged), "jwt_bad_signature");
    // Header changed (still valid JSON, same kid).
    let header = b64(
        json!({ "alg": "RS256", "typ": "JWT", "kid": "rsa", "x": 1 })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        rejected(&auth, &format!("{header}.{}.{}", parts[1], parts[2])),
        "jwt_bad_signature"
    );
    // One signature bit flipped.
    let mut signature =
        jwt_simple::reexports::ct_codecs::Base64UrlSafeNoPadding::decode_to_vec(parts[2], None)
            .unwrap();
    signature[10] ^= 1;
    assert_eq!(
        rejected(
            &auth,
            &format!("{}.{}.{}", parts[0], parts[1], b64(&signature))
        ),
        "jwt_bad_signature"
    );
    // An ES256 signature of the wrong length.
    let es256 = es256(Some("es256")).sign(claims()).unwrap();
    let (signing_input, _) = es256.rsplit_once('.').unwrap();
    assert_eq!(
        rejected(&auth, &format!("{signing_input}.{}", b64(&[1; 10]))),
        "jwt_bad_signature"
    );
    // EdDSA with a payload change.
    let eddsa = eddsa_token(json!({ "alg": "EdDSA", "kid": "ed" }), standard_payload());
    let mut payload = standard_payload();
    payload["sub"] = json!("mallory");
    let eddsa_parts: Vec<&str> = eddsa.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        eddsa_parts[0],
        b64(payload.to_string().as_bytes()),
        eddsa_parts[2]
    );
    assert_eq!(rejected(&auth, &tampered), "jwt_bad_signature");
}

#[test]
fn claim_checks_after_the_signature() {
    let auth = authenticator();
    let header = json!({ "alg": "EdDSA" });
    let with = |claim: &str, value: Value| {
        let mut payload = standard_payload();
        payload[claim] = value;
        eddsa_token(header.clone(), payload)
    };
    assert_eq!(
        rejected(&auth, &with("aud", json!("other"))),
        "jwt_audience"
    );
    assert_eq!(rejected(&auth, &with("aud", json!([]))), "jwt_audience");
    assert_eq!(
        rejected(&auth, &with("aud", json!(["Nats"]))),
        "jwt_audience"
    );
    let mut no_audience = standard_payload();
    no_audience.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        rejected(&auth, &eddsa_token(header.clone(), no_audience)),
        "jwt_audience"
    );
    assert_eq!(
        rejected(&auth, &with("exp", json!(NOW - 61))),
        "jwt_expired"
    );
    assert_eq!(
        rejected(&auth, &with("nbf", json!(NOW + 61))),
        "jwt_not_yet_valid"
    );
    assert_eq!(
        rejected(&auth, &with("iat", json!(NOW + 61))),
        "jwt_issued_in_future"
    );
    let mut no_subject = standard_payload();
    no_subject.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        rejected(&auth, &eddsa_token(header.clone(), no_subject)),
        "jwt_subject"
    );
    assert_eq!(rejected(&auth, &with("sub", json!(""))), "jwt_subject");
    // The time comes from the caller: the same token is fine earlier and expired later.
    let token = KEYS.rsa.clone().with_key_id("rsa").sign(claims()).unwrap();
    assert!(matches!(
        auth.authenticate(None, Some(&token), NOW + 660),
        AuthOutcome::Authenticated(_)
    ));
    assert_eq!(
        auth.authenticate(None, Some(&token), NOW + 661),
        AuthOutcome::Rejected(Rejection::JwtExpired)
    );
}

#[test]
fn every_rejection_reason_is_distinct() {
    let reasons = [
        Rejection::SpiffeMissing,
        Rejection::SpiffeInvalid,
        Rejection::SpiffeTrustDomain,
        Rejection::JwtMissing,
        Rejection::JwtTooLarge,
        Rejection::JwtMalformed,
        Rejection::JwtType,
        Rejection::JwtAlgNone,
        Rejection::JwtAlgNotAllowed,
        Rejection::JwtCritical,
        Rejection::JwtIssuer,
        Rejection::JwtUnknownProvider,
        Rejection::JwtUnknownKid,
        Rejection::JwtNoKey,
        Rejection::JwtBadSignature,
        Rejection::JwtAudience,
        Rejection::JwtExpired,
        Rejection::JwtNotYetValid,
        Rejection::JwtIssuedInFuture,
        Rejection::JwtSubject,
    ]
    .map(Rejection::reason);
    let unique: std::collections::HashSet<_> = reasons.iter().collect();
    assert_eq!(unique.len(), reasons.len());
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/identity.md")).unwrap();
    for reason in reasons {
        assert!(
            docs.contains(&format!("`{reason}`")),
            "docs/identity.md does not document {reason}"
        );
    }
}

// ---------------------------------------------------------------- remote JWKS

fn remote_provider(jwks: Option<Value>) -> Value {
    let mut provider = json!({
        "name": "remote-idp",
        "issuer": ISSUER,
        "audiences": ["nats"],
        "remote_jwks": { "cluster": "idp", "authority": "idp.example.com", "path": "/.well-known/jwks.json", "refresh_seconds": 600 },
        "algorithms": ["RS256", "EdDSA"]
    });
    if let Some(jwks) = jwks {
        provider["jwks"] = jwks;
    }
    provider
}

#[test]
fn remote_jwks_lifecycle() {
    let mut auth = Authenticator::new(&identity_config(json!([remote_provider(None)]))).unwrap();
    let sources = auth.remote_jwks_sources();
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].0, "remote-idp");
    assert_eq!(sources[0].1.path, "/.well-known/jwks.json");
    assert_eq!(auth.remote_jwks_due(NOW), ["remote-idp"]);

    let token = KEYS.rsa.clone().with_key_id("rsa").sign(claims()).unwrap();
    assert_eq!(
        verify(&auth, &token),
        AuthOutcome::AwaitingKeys {
            provider: "remote-idp".into()
        }
    );
    // Checks that need no key still reject at once.
    assert_eq!(rejected(&auth, "garbage"), "jwt_malformed");

    let jwks = json!({ "keys": [rsa_jwk(&KEYS.rsa, Some("rsa"))] }).to_string();
    auth.update_remote_jwks("remote-idp", jwks.as_bytes(), NOW)
        .unwrap();
    accepted_jwt(&auth, &token);
    assert!(auth.remote_jwks_due(NOW + 599).is_empty());
    assert_eq!(auth.remote_jwks_due(NOW + 600), ["remote-idp"]);

    // Bad documents are refused and the last good keys stay in use.
    let error = auth
        .update_remote_jwks("remote-idp", b"<html>", NOW + 600)
        .unwrap_err();
    assert!(error.reason.starts_with("not JSON"), "{error}");
    let error = auth
        .update_remote_jwks(
            "remote-idp",
            br#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#,
            NOW + 600,
        )
        .unwrap_err();
    assert_eq!(error.path, "keys[0].n");
    let error = auth
        .update_remote_jwks("remote-idp", br#"{"keys":[]}"#, NOW + 600)
        .unwrap_err();
    assert_eq!(error.path, "keys");
    accepted_jwt(&auth, &token);
    assert_eq!(auth.remote_jwks_due(NOW + 600), ["remote-idp"]);
    let error = auth
        .update_remote_jwks("corp-idp", jwks.as_bytes(), NOW)
        .unwrap_err();
    assert!(error.to_string().contains("corp-idp"));

    // Rotation: the new set replaces the old one.
    let rotated = json!({ "keys": [ed25519_jwk(Some("ed"))] }).to_string();
    auth.update_remote_jwks("remote-idp", rotated.as_bytes(), NOW + 700)
        .unwrap();
    assert_eq!(rejected(&auth, &token), "jwt_unknown_kid");
    accepted_jwt(
        &auth,
        &eddsa_token(json!({ "alg": "EdDSA", "kid": "ed" }), standard_payload()),
    );
    assert!(auth.remote_jwks_due(NOW + 700).is_empty());
}

#[test]
fn static_and_remote_keys_combine() {
    let static_jwks = json!({ "keys": [ed25519_jwk(Some("ed"))] });
    let mut auth = Authenticator::new(&identity_config(json!([remote_provider(Some(
        static_jwks
    ))])))
    .unwrap();
    // Static keys work before the first fetch; other kids wait for it.
    accepted_jwt(
        &auth,
        &eddsa_token(json!({ "alg": "EdDSA", "kid": "ed" }), standard_payload()),
    );
    let token = KEYS.rsa.clone().with_key_id("rsa").sign(claims()).unwrap();
    assert!(matches!(
        verify(&auth, &token),
        AuthOutcome::AwaitingKeys { .. }
    ));
    let jwks = json!({ "keys": [rsa_jwk(&KEYS.rsa, Some("rsa"))] }).to_string();
    auth.update_remote_jwks("remote-idp", jwks.as_bytes(), NOW)
        .unwrap();
    accepted_jwt(&auth, &token);
    accepted_jwt(
        &auth,
        &eddsa_token(json!({ "alg": "EdDSA", "kid": "ed" }), standard_payload()),
    );
}

// ---------------------------------------------------------------- verified tokens remembered

/// A token verified once is remembered by its digest (a reconnect costs no second signature
/// check), and every later answer is the one a full verification would give at that time.
#[test]
fn a_remembered_token_gets_the_answer_a_full_verification_would_give() {
    let auth = authenticator();
    let mut payload = standard_payload();
    payload["nbf"] = json!(NOW + 60);
    let token = eddsa_token(json!({ "alg": "EdDSA", "kid": "ed" }), payload);
    let first = accepted_jwt(&auth, &token);
    assert_eq!(accepted_jwt(&auth, &token), first);
    // Valid through exp + skew, expired one second later.
    let at = |now: u64| auth.authenticate(None, Some(&token), now);
    assert!(matches!(at(NOW + 660), AuthOutcome::Authenticated(_)));
    assert_eq!(at(NOW + 661), AuthOutcome::Rejected(Rejection::JwtExpired));
    // A clock gone back before the first verification: nbf (within the skew at NOW) fails.
    assert!(matches!(at(NOW), AuthOutcome::Authenticated(_)));
    assert_eq!(
        at(NOW - 1),
        AuthOutcome::Rejected(Rejection::JwtNotYetValid)
    );
    // The remembered token with another signature is another token.
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let forged = format!("{signed}.{flipped}{}", &signature[1..]);
    assert_eq!(rejected(&auth, &forged), "jwt_bad_signature");
    assert_eq!(accepted_jwt(&auth, &token), first);
}

// ---------------------------------------------------------------- static JWKS errors

fn config_error(jwks: Value, algorithms: &[&str]) -> ConfigIssue {
    Authenticator::new(&identity_config(json!([provider(jwks, algorithms)]))).unwrap_err()
}

#[test]
fn invalid_static_jwks_names_its_path() {
    let rsa = rsa_jwk(&KEYS.rsa, Some("rsa"));
    let mut bad_n = rsa.clone();
    bad_n["n"] = json!("***");
    let mut missing_e = rsa.clone();
    missing_e.as_object_mut().unwrap().remove("e");
    let mut short_x = es256_jwk(None);
    short_x["x"] = json!(b64(&[1; 31]));
    let mut off_curve = es256_jwk(None);
    off_curve["y"] = json!(b64(&[1; 32]));
    let mut bad_kid = ed25519_jwk(None);
    bad_kid["kid"] = json!(7);
    let weak_rsa = json!({ "kty": "RSA", "n": b64(&[0xc5; 64]), "e": "AQAB" });
    let cases = [
        (
            json!([]),
            &["RS256"][..],
            "jwt.providers[0].jwks",
            "must be a JSON object",
        ),
        (
            json!({}),
            &["RS256"],
            "jwt.providers[0].jwks.keys",
            "is missing",
        ),
        (
            json!({ "keys": {} }),
            &["RS256"],
            "jwt.providers[0].jwks.keys",
            "must be an array",
        ),
        (
            json!({ "keys": [1] }),
            &["RS256"],
            "jwt.providers[0].jwks.keys[0]",
            "must be a JSON object",
        ),
        (
            json!({ "keys": [{ "n": "AQAB" }] }),
            &["RS256"],
            "jwt.providers[0].jwks.keys[0].kty",
            "is missing",
        ),
        (
            json!({ "keys": [rsa.clone(), bad_n] }),
            &["RS256"],
            "jwt.providers[0].jwks.keys[1].n",
            "base64url",
        ),
        (
            json!({ "keys": [missing_e] }),
            &["RS256"],
            "jwt.providers[0].jwks.keys[0].e",
            "is missing",
        ),
        (
            json!({ "keys": [short_x] }),
            &["ES256"],
            "jwt.providers[0].jwks.keys[0].x",
            "32 bytes",
        ),
        (
            json!({ "keys": [off_curve] }),
            &["ES256"],
            "jwt.providers[0].jwks.keys[0]",
            "invalid public key",
        ),
        (
            json!({ "keys": [bad_kid] }),
            &["EdDSA"],
            "jwt.providers[0].jwks.keys[0].kid",
            "must be a string",
        ),
        (
            json!({ "keys": [weak_rsa] }),
            &["RS256"],
            "jwt.providers[0].jwks.keys[0]",
            "invalid public key",
        ),
        (
            json!({ "keys": [] }),
            &["RS256"],
            "jwt.providers[0].jwks",
            "no key usable",
        ),
        (
            json!({ "keys": [rsa] }),
            &["ES256"],
            "jwt.providers[0].jwks",
            "no key usable",
        ),
    ];
    for (jwks, algorithms, path, reason) in cases {
        let issue = config_error(jwks.clone(), algorithms);
        assert_eq!(issue.path, path, "{jwks}: {issue}");
        assert!(issue.reason.contains(reason), "{jwks}: {issue}");
    }
    let too_many = json!({ "keys": vec![ed25519_jwk(None); 65] });
    assert_eq!(
        config_error(too_many, &["EdDSA"]).path,
        "jwt.providers[0].jwks.keys"
    );
}

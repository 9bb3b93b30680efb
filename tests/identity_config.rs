//! The `identity` configuration object: defaults, shape errors (serde) and semantic errors with
//! their JSON paths.

use natsguard::identity::{Authenticator, IdentityConfig, JwtAlgorithm, TokenField};
use serde_json::{json, Value};

/// An Ed25519 JWKS (the key value is irrelevant to configuration checks).
fn jwks() -> Value {
    json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }] })
}

fn provider() -> Value {
    json!({ "name": "corp-idp", "issuer": "https://idp.example.com", "audiences": ["nats"], "jwks": jwks(), "algorithms": ["EdDSA"] })
}

fn parse(value: Value) -> Result<IdentityConfig, serde_json::Error> {
    serde_json::from_value(value)
}

/// The path and reason of the first semantic problem of `value`.
fn issue(value: Value) -> (String, String) {
    let config = parse(value.clone()).unwrap_or_else(|error| panic!("{value}: {error}"));
    let issue = Authenticator::new(&config).unwrap_err();
    assert_eq!(
        config.validate().err().map(|validated| validated.path),
        Some(issue.path.clone())
    );
    (issue.path, issue.reason)
}

#[test]
fn contract_example_parses_with_defaults() {
    let config = parse(json!({
        "spiffe": { "trust_domains": ["cluster.local"] },
        "jwt": {
            "providers": [{
                "name": "corp-idp",
                "issuer": "https://idp.example.com",
                "audiences": ["nats"],
                "jwks": { "keys": [] },
                "remote_jwks": { "cluster": "idp", "authority": "idp.example.com", "path": "/.well-known/jwks.json" }
            }]
        }
    }))
    .unwrap();
    let spiffe = config.spiffe.as_ref().unwrap();
    assert!(spiffe.required);
    let jwt = config.jwt.as_ref().unwrap();
    assert!(!jwt.required);
    assert_eq!(jwt.token_fields, ["auth_token", "pass", "jwt"]);
    let provider = &jwt.providers[0];
    assert_eq!(provider.algorithms, ["RS256", "ES256"]);
    assert_eq!(provider.clock_skew_seconds, 60);
    assert_eq!(provider.remote_jwks.as_ref().unwrap().refresh_seconds, 600);
    let auth = Authenticator::new(&config).unwrap();
    assert_eq!(
        auth.token_fields(),
        [TokenField::AuthToken, TokenField::Pass, TokenField::Jwt]
    );
    assert_eq!(JwtAlgorithm::parse("EdDSA"), Some(JwtAlgorithm::EdDSA));
    assert_eq!(JwtAlgorithm::parse("HS256"), None);
    assert_eq!(
        TokenField::parse("user").map(TokenField::as_str),
        Some("user")
    );
}

#[test]
fn the_full_contract_example_is_accepted() {
    let config = parse(json!({
        "spiffe": { "required": true, "trust_domains": ["cluster.local"] },
        "jwt": {
            "required": false,
            "token_fields": ["auth_token", "pass", "jwt"],
            "providers": [{
                "name": "corp-idp",
                "issuer": "https://idp.example.com",
                "audiences": ["nats"],
                "jwks": { "keys": [] },
                "remote_jwks": { "cluster": "idp", "authority": "idp.example.com", "path": "/.well-known/jwks.json", "refresh_seconds": 600 },
                "algorithms": ["RS256", "ES256", "EdDSA"],
                "clock_skew_seconds": 60
            }]
        }
    }))
    .unwrap();
    Authenticator::new(&config).unwrap();
}

#[test]
fn unknown_fields_and_wrong_types_are_shape_errors() {
    for value in [
        json!({ "spiffe": { "trust_domains": ["a"], "trustDomains": ["b"] } }),
        json!({ "spife": {} }),
        json!({ "jwt": { "providers": [], "extra": 1 } }),
        json!({ "jwt": { "providers": [{ "name": "p", "issuer": "i", "audiences": ["a"], "jwks": {"keys": []}, "skew": 1 }] } }),
        json!({ "jwt": { "providers": [{ "name": "p", "issuer": "i", "remote_jwks": { "cluster": "c", "authority": "a", "path": "/", "timeout": 1 } }] } }),
        json!({ "spiffe": { "required": "yes", "trust_domains": ["a"] } }),
        json!({ "jwt": { "providers": [{ "name": "p", "issuer": "i", "clock_skew_seconds": -1 }] } }),
        json!({ "jwt": { "providers": [{ "issuer": "i" }] } }),
    ] {
        assert!(parse(value.clone()).is_err(), "{value}");
    }
}

#[test]
fn semantic_errors_name_their_path() {
    let with_provider = |changes: Value| {
        let mut provider = provider();
        for (key, value) in changes.as_object().unwrap() {
            if value.is_null() {
                provider.as_object_mut().unwrap().remove(key);
            } else {
                provider[key] = value.clone();
            }
        }
        json!({ "jwt": { "providers": [provider] } })
    };
    let cases = [
        (json!({}), "", "at least one of"),
        (
            json!({ "spiffe": {} }),
            "spiffe.trust_domains",
            "at least one",
        ),
        (
            json!({ "spiffe": { "required": false, "trust_domains": [] } }),
            "spiffe.trust_domains",
            "at least one",
        ),
        (
            json!({ "spiffe": { "trust_domains": ["ok.local", "Bad.Local"] } }),
            "spiffe.trust_domains[1]",
            "not a SPIFFE trust domain",
        ),
        (
            json!({ "spiffe": { "trust_domains": ["spiffe://cluster.local"] } }),
            "spiffe.trust_domains[0]",
            "not a SPIFFE trust domain",
        ),
        (
            json!({ "jwt": { "providers": [] } }),
            "jwt.providers",
            "at least one provider",
        ),
        (
            json!({ "jwt": { "token_fields": [], "providers": [provider()] } }),
            "jwt.token_fields",
            "at least one",
        ),
        (
            json!({ "jwt": { "token_fields": ["jwt", "nkey"], "providers": [provider()] } }),
            "jwt.token_fields[1]",
            "not a CONNECT string field",
        ),
        (
            json!({ "jwt": { "token_fields": ["jwt", "jwt"], "providers": [provider()] } }),
            "jwt.token_fields[1]",
            "twice",
        ),
        (
            with_provider(json!({ "algorithms": ["RS256", "ES256", "HS256"] })),
            "jwt.providers[0].algorithms[2]",
            "unsupported algorithm `HS256`",
        ),
        (
            with_provider(json!({ "algorithms": ["none"] })),
            "jwt.providers[0].algorithms[0]",
            "unsupported algorithm",
        ),
        (
            with_provider(json!({ "algorithms": ["rs256"] })),
            "jwt.providers[0].algorithms[0]",
            "unsupported algorithm",
        ),
        (
            with_provider(json!({ "algorithms": [] })),
            "jwt.providers[0].algorithms",
            "at least one",
        ),
        (
            with_provider(json!({ "name": "" })),
            "jwt.providers[0].name",
            "must not be empty",
        ),
        (
            with_provider(json!({ "issuer": "" })),
            "jwt.providers[0].issuer",
            "must not be empty",
        ),
        (
            with_provider(json!({ "audiences": null })),
            "jwt.providers[0].audiences",
            "at least one audience",
        ),
        (
            with_provider(json!({ "audiences": ["nats", ""] })),
            "jwt.providers[0].audiences[1]",
            "must not be empty",
        ),
        (
            with_provider(json!({ "clock_skew_seconds": 3601 })),
            "jwt.providers[0].clock_skew_seconds",
            "at most 3600",
        ),
        (
            with_provider(json!({ "jwks": null })),
            "jwt.providers[0]",
            "needs `jwks`, `remote_jwks` or both",
        ),
        (
            with_provider(
                json!({ "remote_jwks": { "cluster": "", "authority": "idp", "path": "/jwks" } }),
            ),
            "jwt.providers[0].remote_jwks.cluster",
            "must not be empty",
        ),
        (
            with_provider(
                json!({ "remote_jwks": { "cluster": "idp", "authority": "", "path": "/jwks" } }),
            ),
            "jwt.providers[0].remote_jwks.authority",
            "must not be empty",
        ),
        (
            with_provider(
                json!({ "remote_jwks": { "cluster": "idp", "authority": "idp", "path": "jwks" } }),
            ),
            "jwt.providers[0].remote_jwks.path",
            "must start with `/`",
        ),
        (
            with_provider(
                json!({ "remote_jwks": { "cluster": "idp", "authority": "idp", "path": "/jwks", "refresh_seconds": 9 } }),
            ),
            "jwt.providers[0].remote_jwks.refresh_seconds",
            "at least 10",
        ),
        (
            json!({ "jwt": { "providers": [provider(), { "name": "corp-idp", "issuer": "https://other", "audiences": ["nats"], "jwks": jwks(), "algorithms": ["EdDSA"] }] } }),
            "jwt.providers[1].name",
            "used twice",
        ),
        (
            json!({ "jwt": { "providers": [provider(), { "name": "second", "issuer": "https://idp.example.com", "audiences": ["nats"], "jwks": jwks(), "algorithms": ["EdDSA"] }] } }),
            "jwt.providers[1].issuer",
            "used by two providers",
        ),
        (
            json!({ "jwt": { "providers": [provider(), { "name": "second", "issuer": "https://other", "audiences": ["nats"], "jwks": { "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "c2hvcnQ" }] }, "algorithms": ["EdDSA"] }] } }),
            "jwt.providers[1].jwks.keys[0].x",
            "32 bytes",
        ),
    ];
    for (value, path, reason) in cases {
        let (actual_path, actual_reason) = issue(value.clone());
        assert_eq!(actual_path, path, "{value}: {actual_reason}");
        assert!(actual_reason.contains(reason), "{value}: {actual_reason}");
    }
}

#[test]
fn config_issue_displays_path_and_reason() {
    let config = parse(json!({ "spiffe": { "trust_domains": [] } })).unwrap();
    let issue = config.validate().unwrap_err();
    assert_eq!(
        issue.to_string(),
        "spiffe.trust_domains: must list at least one trust domain"
    );
}

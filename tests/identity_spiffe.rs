//! SPIFFE ID parsing (SPIFFE-ID spec), Istio namespace/service-account extraction, and the
//! authenticator's SPIFFE decisions.

use natsguard::identity::{
    AuthOutcome, Authenticator, IdentityConfig, Rejection, SpiffeError, SpiffeId,
};

/// (uri, trust domain, path, namespace, service account)
type ValidCase = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

#[test]
fn valid_ids_parse_with_istio_fields() {
    let cases: &[ValidCase] = &[
        (
            "spiffe://cluster.local/ns/billing/sa/api",
            "cluster.local",
            "/ns/billing/sa/api",
            Some("billing"),
            Some("api"),
        ),
        ("spiffe://example.org", "example.org", "", None, None),
        (
            "spiffe://td-1_x.example/workload",
            "td-1_x.example",
            "/workload",
            None,
            None,
        ),
        (
            "spiffe://example.org/ns/a/sa/b/extra",
            "example.org",
            "/ns/a/sa/b/extra",
            None,
            None,
        ),
        (
            "spiffe://example.org/ns/a",
            "example.org",
            "/ns/a",
            None,
            None,
        ),
        (
            "spiffe://example.org/NS/a/SA/b",
            "example.org",
            "/NS/a/SA/b",
            None,
            None,
        ),
        (
            "spiffe://example.org/a.b/-_/A9",
            "example.org",
            "/a.b/-_/A9",
            None,
            None,
        ),
        (
            "spiffe://example.org/.../x",
            "example.org",
            "/.../x",
            None,
            None,
        ),
    ];
    for (uri, trust_domain, path, namespace, service_account) in cases {
        let id = SpiffeId::parse(uri).unwrap_or_else(|error| panic!("{uri}: {error}"));
        assert_eq!(id.trust_domain, *trust_domain, "{uri}");
        assert_eq!(id.path, *path, "{uri}");
        assert_eq!(id.namespace.as_deref(), *namespace, "{uri}");
        assert_eq!(id.service_account.as_deref(), *service_account, "{uri}");
        assert_eq!(id.to_string(), *uri);
        assert_eq!(id.principal(), uri.strip_prefix("spiffe://").unwrap());
    }
}

#[test]
fn invalid_ids_are_refused_with_a_reason() {
    let long_path = format!("spiffe://example.org/{}", "a".repeat(2048));
    let cases: &[(&str, SpiffeError)] = &[
        ("", SpiffeError::Empty),
        (&long_path, SpiffeError::TooLong),
        ("http://example.org/ns/a/sa/b", SpiffeError::WrongScheme),
        ("SPIFFE://example.org/ns/a/sa/b", SpiffeError::WrongScheme),
        ("spiffe:/example.org", SpiffeError::WrongScheme),
        ("example.org/ns/a/sa/b", SpiffeError::WrongScheme),
        ("spiffe://", SpiffeError::MissingTrustDomain),
        ("spiffe:///ns/a/sa/b", SpiffeError::MissingTrustDomain),
        ("spiffe://Example.org/ns/a", SpiffeError::InvalidTrustDomain),
        (
            "spiffe://example.org:8080/ns/a",
            SpiffeError::InvalidTrustDomain,
        ),
        (
            "spiffe://user@example.org/ns/a",
            SpiffeError::InvalidTrustDomain,
        ),
        ("spiffe://example.org?x=1", SpiffeError::InvalidTrustDomain),
        ("spiffe://example.org#frag", SpiffeError::InvalidTrustDomain),
        ("spiffe://exa mple.org", SpiffeError::InvalidTrustDomain),
        ("spiffe://example.org/", SpiffeError::EmptySegment),
        ("spiffe://example.org//ns", SpiffeError::EmptySegment),
        ("spiffe://example.org/ns/a/", SpiffeError::EmptySegment),
        ("spiffe://example.org/./ns", SpiffeError::DotSegment),
        ("spiffe://example.org/ns/..", SpiffeError::DotSegment),
        (
            "spiffe://example.org/ns/a?x=1",
            SpiffeError::InvalidPathCharacter,
        ),
        (
            "spiffe://example.org/ns/a#f",
            SpiffeError::InvalidPathCharacter,
        ),
        (
            "spiffe://example.org/ns/%61",
            SpiffeError::InvalidPathCharacter,
        ),
        (
            "spiffe://example.org/ns/a b",
            SpiffeError::InvalidPathCharacter,
        ),
        (
            "spiffe://example.org/ns/ä",
            SpiffeError::InvalidPathCharacter,
        ),
    ];
    for (uri, expected) in cases {
        assert_eq!(SpiffeId::parse(uri), Err(*expected), "{uri}");
    }
    let longest_trust_domain = format!("spiffe://{}", "a".repeat(255));
    assert!(SpiffeId::parse(&longest_trust_domain).is_ok());
    let too_long_trust_domain = format!("spiffe://{}", "a".repeat(256));
    assert_eq!(
        SpiffeId::parse(&too_long_trust_domain),
        Err(SpiffeError::InvalidTrustDomain)
    );
    let exactly_max = format!(
        "spiffe://example.org/{}",
        "a".repeat(2048 - "spiffe://example.org/".len())
    );
    assert!(SpiffeId::parse(&exactly_max).is_ok());
}

fn authenticator(spiffe: serde_json::Value) -> Authenticator {
    let config: IdentityConfig =
        serde_json::from_value(serde_json::json!({ "spiffe": spiffe })).unwrap();
    Authenticator::new(&config).unwrap()
}

fn rejection(outcome: AuthOutcome) -> Rejection {
    match outcome {
        AuthOutcome::Rejected(rejection) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn required_spiffe_checks_presence_validity_and_trust_domain() {
    let auth =
        authenticator(serde_json::json!({ "trust_domains": ["cluster.local", "other.example"] }));
    assert!(auth.token_fields().is_empty());
    let outcome = auth.authenticate(Some("spiffe://cluster.local/ns/billing/sa/api"), None, 0);
    let AuthOutcome::Authenticated(identity) = outcome else {
        panic!("{outcome:?}")
    };
    let spiffe = identity.spiffe.as_ref().unwrap();
    assert_eq!(spiffe.namespace.as_deref(), Some("billing"));
    assert_eq!(spiffe.service_account.as_deref(), Some("api"));
    assert_eq!(identity.jwt, None);
    assert_eq!(identity.valid_until(), None);
    assert_eq!(
        identity.log_summary(),
        "principal=cluster.local/ns/billing/sa/api namespace=billing service_account=api"
    );
    assert!(matches!(
        auth.authenticate(Some("spiffe://other.example/x"), None, 0),
        AuthOutcome::Authenticated(_)
    ));

    assert_eq!(
        rejection(auth.authenticate(None, None, 0)),
        Rejection::SpiffeMissing
    );
    assert_eq!(
        rejection(auth.authenticate(Some(""), None, 0)),
        Rejection::SpiffeMissing
    );
    assert_eq!(
        rejection(auth.authenticate(Some("spiffe://cluster.local/ns//sa/x"), None, 0)),
        Rejection::SpiffeInvalid
    );
    assert_eq!(
        rejection(auth.authenticate(Some("https://cluster.local/ns/a/sa/b"), None, 0)),
        Rejection::SpiffeInvalid
    );
    assert_eq!(
        rejection(auth.authenticate(Some("spiffe://evil.local/ns/billing/sa/api"), None, 0)),
        Rejection::SpiffeTrustDomain
    );
    // A trust domain is matched exactly, not as a suffix or prefix.
    assert_eq!(
        rejection(auth.authenticate(Some("spiffe://x.cluster.local/ns/a/sa/b"), None, 0)),
        Rejection::SpiffeTrustDomain
    );
    assert_eq!(
        rejection(auth.authenticate(Some("spiffe://cluster.local.evil/ns/a/sa/b"), None, 0)),
        Rejection::SpiffeTrustDomain
    );
}

#[test]
fn optional_spiffe_accepts_absence_but_not_invalid_ids() {
    let auth =
        authenticator(serde_json::json!({ "required": false, "trust_domains": ["cluster.local"] }));
    let AuthOutcome::Authenticated(identity) = auth.authenticate(None, None, 0) else {
        panic!()
    };
    assert_eq!(identity.spiffe, None);
    assert_eq!(identity.log_summary(), "anonymous");
    assert_eq!(
        rejection(auth.authenticate(Some("spiffe://cluster.local/ns/../sa/b"), None, 0)),
        Rejection::SpiffeInvalid
    );
    assert_eq!(
        rejection(auth.authenticate(Some("spiffe://evil.local/ns/a/sa/b"), None, 0)),
        Rejection::SpiffeTrustDomain
    );
}

#[test]
fn rejection_reasons_are_stable_strings() {
    assert_eq!(Rejection::SpiffeMissing.reason(), "spiffe_missing");
    assert_eq!(Rejection::SpiffeInvalid.to_string(), "spiffe_invalid");
    assert_eq!(Rejection::SpiffeTrustDomain.reason(), "spiffe_trust_domain");
    assert_eq!(SpiffeError::DotSegment.reason(), "dot_path_segment");
}

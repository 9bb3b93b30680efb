//! Identity: who is on the other end of a NATS connection.
//!
//! A connection's identity is established once, at CONNECT, from two independent sources:
//! - the SPIFFE ID in the URI SAN of its mTLS peer certificate (what Envoy reports as
//!   `connection.uri_san_peer_certificate`), and
//! - an OIDC JWT carried in a CONNECT string field, verified against a configured provider's keys.
//!
//! [`Authenticator`] turns those inputs and the current time into an [`AuthOutcome`]. It reads no
//! clock, does no I/O and never panics on input: the filter fetches remote key sets through Envoy
//! and hands them to [`Authenticator::update_remote_jwks`].
//!
//! [`NkeySigner`] signs nats-server's INFO nonce as a trusted proxy (`proxy_sig`) and provenance
//! headers; [`PublicNkey`] checks provenance signatures.

mod config;
mod jwks;
mod jwt;
mod nkey;
mod rsa_tokens;
mod spiffe;
mod verified_tokens;

use std::fmt;

use serde_json::{Map, Value};

pub use config::{
    ConfigIssue, IdentityConfig, JwtAlgorithm, JwtConfig, JwtProviderConfig, RemoteJwksConfig,
    SpiffeConfig, TokenField,
};
pub use jwks::JwksError;
pub use nkey::{NkeyError, NkeySigner, PublicNkey};
pub use spiffe::{SpiffeError, SpiffeId};

pub use jwt::{audiences, unverified_claims};
use jwt::{JwtVerification, JwtVerifier};

/// A JWT whose signature, issuer, audience and validity period were verified.
///
/// The token itself is not kept, so neither `Debug` nor logs can leak it.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedJwt {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `aud`, as an array even when the token carried a single string.
    pub audiences: Vec<String>,
    /// `exp` (unix seconds), if the token has one.
    pub expires_at: Option<u64>,
    /// `nbf` (unix seconds), if the token has one.
    pub not_before: Option<u64>,
    /// The clock skew of the provider that verified the token, in seconds.
    pub clock_skew_seconds: u64,
    /// Name of the provider that verified the token.
    pub provider: String,
    /// Every claim of the payload, standard ones included.
    pub claims: Map<String, Value>,
}

impl VerifiedJwt {
    /// The Istio request principal: `iss/sub`.
    pub fn request_principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }

    /// A claim by name, or by dot path into nested objects (`realm_access.roles`).
    ///
    /// A top-level claim whose name is the whole path (namespaced claims such as
    /// `https://example.com/roles` contain dots) takes precedence over the nested lookup.
    pub fn claim(&self, path: &str) -> Option<&Value> {
        if let Some(value) = self.claims.get(path) {
            return Some(value);
        }
        let mut segments = path.split('.');
        let first = self.claims.get(segments.next()?)?;
        segments.try_fold(first, |value, segment| value.as_object()?.get(segment))
    }

    /// The unix second from which the connection must be closed: `exp` plus the provider's skew,
    /// the same bound the verifier accepted the token with. `None` when the token has no `exp`.
    pub fn valid_until(&self) -> Option<u64> {
        self.expires_at.map(|exp| {
            exp.saturating_add(self.clock_skew_seconds)
                .saturating_add(1)
        })
    }
}

/// The authenticated identity of a connection. Either part may be absent when the configuration
/// makes it optional; an `Identity` is only produced for an accepted connection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    /// SPIFFE ID of the mTLS peer certificate.
    pub spiffe: Option<SpiffeId>,
    /// Verified token from CONNECT.
    pub jwt: Option<VerifiedJwt>,
}

impl Identity {
    /// The unix second from which the connection must be closed (token expiry), if any.
    pub fn valid_until(&self) -> Option<u64> {
        self.jwt.as_ref().and_then(VerifiedJwt::valid_until)
    }

    /// A one-line summary for logs: principal, namespace, service account, issuer, subject.
    /// It never contains the token or other claims.
    pub fn log_summary(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut separator = "";
        if let Some(spiffe) = &self.spiffe {
            write!(f, "principal={}", spiffe.principal())?;
            if let Some(namespace) = &spiffe.namespace {
                write!(f, " namespace={namespace}")?;
            }
            if let Some(service_account) = &spiffe.service_account {
                write!(f, " service_account={service_account}")?;
            }
            separator = " ";
        }
        if let Some(jwt) = &self.jwt {
            write!(
                f,
                "{separator}provider={} iss={} sub={}",
                jwt.provider, jwt.issuer, jwt.subject
            )?;
            separator = " ";
        }
        if separator.is_empty() {
            f.write_str("anonymous")?;
        }
        Ok(())
    }
}

/// Why a connection's identity was refused. [`Rejection::reason`] is stable: it feeds metrics and
/// logs, and `docs/identity.md` lists every value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// SPIFFE is required and the peer presented no URI SAN.
    SpiffeMissing,
    /// The URI SAN is not a valid SPIFFE ID.
    SpiffeInvalid,
    /// The SPIFFE ID belongs to a trust domain that is not configured.
    SpiffeTrustDomain,
    /// A token is required and CONNECT carried none.
    JwtMissing,
    /// The token is longer than 16 KiB.
    JwtTooLarge,
    /// Not three base64url parts, or header/payload not JSON objects, or a standard claim of the
    /// wrong type.
    JwtMalformed,
    /// The header's `typ` is neither `JWT` nor `at+jwt`.
    JwtType,
    /// `alg: none` (an unsigned token).
    JwtAlgNone,
    /// The header's `alg` is not among the provider's `algorithms` (this includes every HMAC alg).
    JwtAlgNotAllowed,
    /// The header lists `crit` extensions natsguard does not understand.
    JwtCritical,
    /// The payload has no string `iss`.
    JwtIssuer,
    /// No provider is configured for the token's `iss`.
    JwtUnknownProvider,
    /// The header's `kid` names no key of the provider.
    JwtUnknownKid,
    /// The provider has no key usable with the token's `alg`.
    JwtNoKey,
    /// No candidate key verifies the signature.
    JwtBadSignature,
    /// None of the token's audiences is configured (or it has none).
    JwtAudience,
    /// `exp` is in the past (beyond the clock skew).
    JwtExpired,
    /// `nbf` is in the future (beyond the clock skew).
    JwtNotYetValid,
    /// `iat` is in the future (beyond the clock skew).
    JwtIssuedInFuture,
    /// The payload has no string `sub`, so there is no request principal.
    JwtSubject,
}

impl Rejection {
    /// A stable snake_case reason.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::SpiffeMissing => "spiffe_missing",
            Rejection::SpiffeInvalid => "spiffe_invalid",
            Rejection::SpiffeTrustDomain => "spiffe_trust_domain",
            Rejection::JwtMissing => "jwt_missing",
            Rejection::JwtTooLarge => "jwt_too_large",
            Rejection::JwtMalformed => "jwt_malformed",
            Rejection::JwtType => "jwt_type",
            Rejection::JwtAlgNone => "jwt_alg_none",
            Rejection::JwtAlgNotAllowed => "jwt_alg_not_allowed",
            Rejection::JwtCritical => "jwt_crit",
            Rejection::JwtIssuer => "jwt_issuer",
            Rejection::JwtUnknownProvider => "jwt_unknown_provider",
            Rejection::JwtUnknownKid => "jwt_unknown_kid",
            Rejection::JwtNoKey => "jwt_no_key",
            Rejection::JwtBadSignature => "jwt_bad_signature",
            Rejection::JwtAudience => "jwt_audience",
            Rejection::JwtExpired => "jwt_expired",
            Rejection::JwtNotYetValid => "jwt_not_yet_valid",
            Rejection::JwtIssuedInFuture => "jwt_issued_in_future",
            Rejection::JwtSubject => "jwt_subject",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// The result of authenticating a connection.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthOutcome {
    /// The connection proved this identity.
    Authenticated(Box<Identity>),
    /// The token's provider uses `remote_jwks` and no key set has been fetched yet: hold the
    /// connection, and authenticate again after [`Authenticator::update_remote_jwks`] (or refuse it
    /// on timeout).
    AwaitingKeys {
        /// Name of the provider whose keys are missing.
        provider: String,
    },
    /// The connection must be refused.
    Rejected(Rejection),
}

/// Decides connections' identities from a validated [`IdentityConfig`].
#[derive(Debug)]
pub struct Authenticator {
    spiffe: Option<SpiffeConfig>,
    jwt: Option<JwtAuthenticator>,
}

#[derive(Debug)]
struct JwtAuthenticator {
    required: bool,
    token_fields: Vec<TokenField>,
    verifier: JwtVerifier,
}

impl IdentityConfig {
    /// Checks the whole configuration, static key sets included: exactly the checks of
    /// [`Authenticator::new`], for callers that validate before building.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        Authenticator::new(self).map(drop)
    }
}

impl Authenticator {
    /// Validates `config` and compiles its static key sets. An invalid JWKS is a configuration
    /// error whose path points into it (`jwt.providers[0].jwks.keys[1].n`).
    pub fn new(config: &IdentityConfig) -> Result<Authenticator, ConfigIssue> {
        config.check_fields()?;
        let jwt = match &config.jwt {
            Some(jwt) => Some(JwtAuthenticator {
                required: jwt.required,
                token_fields: jwt.parsed_token_fields(),
                verifier: JwtVerifier::new(jwt)?,
            }),
            None => None,
        };
        Ok(Authenticator {
            spiffe: config.spiffe.clone(),
            jwt,
        })
    }

    /// CONNECT fields to take the token from, in order of preference (the first present wins).
    /// Empty when JWT authentication is not configured.
    pub fn token_fields(&self) -> &[TokenField] {
        self.jwt
            .as_ref()
            .map_or(&[], |jwt| jwt.token_fields.as_slice())
    }

    /// Decides a connection's identity.
    ///
    /// - `uri_san`: the peer certificate's first URI SAN, if any.
    /// - `token`: the value of the first configured [`token_fields`](Self::token_fields) entry
    ///   present in CONNECT, if any.
    /// - `now`: the host's current unix time in seconds.
    ///
    /// Anything presented is checked even when optional: an invalid SPIFFE ID or token refuses the
    /// connection rather than being ignored.
    pub fn authenticate(
        &self,
        uri_san: Option<&str>,
        token: Option<&str>,
        now: u64,
    ) -> AuthOutcome {
        let spiffe = match self.authenticate_spiffe(uri_san) {
            Ok(spiffe) => spiffe,
            Err(rejection) => return AuthOutcome::Rejected(rejection),
        };
        let jwt = match &self.jwt {
            None => None,
            Some(jwt) => match token {
                None if jwt.required => return AuthOutcome::Rejected(Rejection::JwtMissing),
                None => None,
                Some(token) => match jwt.verifier.verify(token, now) {
                    JwtVerification::Verified(verified) => Some(verified),
                    JwtVerification::AwaitingKeys { provider } => {
                        return AuthOutcome::AwaitingKeys { provider }
                    }
                    JwtVerification::Rejected(rejection) => {
                        return AuthOutcome::Rejected(rejection)
                    }
                },
            },
        };
        AuthOutcome::Authenticated(Box::new(Identity { spiffe, jwt }))
    }

    fn authenticate_spiffe(&self, uri_san: Option<&str>) -> Result<Option<SpiffeId>, Rejection> {
        let Some(config) = &self.spiffe else {
            return Ok(None);
        };
        let uri = match uri_san {
            Some(uri) if !uri.is_empty() => uri,
            _ if config.required => return Err(Rejection::SpiffeMissing),
            _ => return Ok(None),
        };
        let id = SpiffeId::parse(uri).map_err(|_| Rejection::SpiffeInvalid)?;
        if !config.trust_domains.contains(&id.trust_domain) {
            return Err(Rejection::SpiffeTrustDomain);
        }
        Ok(Some(id))
    }

    /// Replaces the fetched key set of provider `provider`. On error the last good keys stay in
    /// use. `now` records when the keys were fetched, for [`remote_jwks_due`](Self::remote_jwks_due).
    pub fn update_remote_jwks(
        &mut self,
        provider: &str,
        jwks_json: &[u8],
        now: u64,
    ) -> Result<(), JwksError> {
        match &mut self.jwt {
            Some(jwt) => jwt.verifier.update_remote_jwks(provider, jwks_json, now),
            None => Err(JwksError::unknown_provider(provider)),
        }
    }

    /// Every provider that uses `remote_jwks`, with its settings.
    pub fn remote_jwks_sources(&self) -> Vec<(&str, &RemoteJwksConfig)> {
        self.jwt
            .as_ref()
            .map_or_else(Vec::new, |jwt| jwt.verifier.remote_jwks_sources())
    }

    /// Providers whose remote key set has never been fetched, or was fetched `refresh_seconds`
    /// or more before `now`.
    pub fn remote_jwks_due(&self, now: u64) -> Vec<&str> {
        self.jwt
            .as_ref()
            .map_or_else(Vec::new, |jwt| jwt.verifier.remote_jwks_due(now))
    }
}

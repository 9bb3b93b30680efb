//! The `identity` object of natsguard's JSON configuration, and its semantic validation.
//!
//! Serde checks the shape (`deny_unknown_fields`, types); [`IdentityConfig::validate`] (or
//! building an [`super::Authenticator`]) checks the meaning and reports the first problem as a
//! [`ConfigIssue`] whose path is relative to the `identity` object (the policy module prefixes
//! `identity.`).

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use super::spiffe::is_valid_trust_domain;

/// The `identity` object: how a connection proves who it is.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// SPIFFE identity from the mTLS peer certificate (URI SAN). Absent: certificates are ignored.
    #[serde(default)]
    pub spiffe: Option<SpiffeConfig>,
    /// OIDC/JWT identity from a token carried in CONNECT. Absent: tokens are ignored.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
}

/// `identity.spiffe`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpiffeConfig {
    /// Refuse connections without a SPIFFE ID (default true).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Accepted trust domains (non-empty), e.g. `cluster.local`.
    #[serde(default)]
    pub trust_domains: Vec<String>,
}

/// `identity.jwt`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Refuse connections without a token (default false).
    #[serde(default)]
    pub required: bool,
    /// CONNECT string fields searched for the token, first present wins
    /// (default `["auth_token", "pass", "jwt"]`; allowed: auth_token, pass, user, jwt).
    #[serde(default = "default_token_fields")]
    pub token_fields: Vec<String>,
    /// Trusted issuers (at least one, unique names, unique issuers).
    #[serde(default)]
    pub providers: Vec<JwtProviderConfig>,
}

/// One entry of `identity.jwt.providers`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderConfig {
    /// Unique name, used in logs, metrics and [`super::Authenticator::update_remote_jwks`].
    pub name: String,
    /// Exact `iss` value of this provider's tokens; tokens are routed to providers by `iss`.
    pub issuer: String,
    /// Accepted `aud` values (non-empty); a token is accepted when any of its audiences is listed.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Static JSON Web Key Set (`{"keys": [...]}`), compiled when the configuration loads.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// JWKS fetched by the filter through an Envoy cluster.
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// Accepted `alg` values (default `["RS256", "ES256"]`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerance applied to `exp`, `nbf` and `iat`, in seconds (default 60, at most 3600).
    #[serde(default = "default_clock_skew_seconds")]
    pub clock_skew_seconds: u64,
}

/// `remote_jwks` of a provider: where the filter fetches the key set from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// Envoy cluster name used for `dispatch_http_call`.
    pub cluster: String,
    /// `:authority` of the request.
    pub authority: String,
    /// `:path` of the request, starting with `/`.
    pub path: String,
    /// Refresh period in seconds (default 600, at least 10).
    #[serde(default = "default_refresh_seconds")]
    pub refresh_seconds: u64,
}

/// A semantic configuration error: the JSON path (relative to the `identity` object) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// JSON path such as `jwt.providers[0].algorithms[2]`.
    pub path: String,
    /// Human-readable reason.
    pub reason: String,
}

impl ConfigIssue {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigIssue {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ConfigIssue {}

/// A CONNECT string field that may carry the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenField {
    AuthToken,
    Pass,
    User,
    Jwt,
}

impl TokenField {
    /// The CONNECT JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenField::AuthToken => "auth_token",
            TokenField::Pass => "pass",
            TokenField::User => "user",
            TokenField::Jwt => "jwt",
        }
    }

    /// Parses a configured field name.
    pub fn parse(name: &str) -> Option<TokenField> {
        [
            TokenField::AuthToken,
            TokenField::Pass,
            TokenField::User,
            TokenField::Jwt,
        ]
        .into_iter()
        .find(|field| field.as_str() == name)
    }
}

/// A JWS algorithm natsguard can verify (asymmetric only: a shared secret in a proxy config is a
/// liability, and excluding HMAC rules out algorithm confusion with public keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    /// RS256 to PS512 first, then the curves.
    pub(crate) const ALL: [JwtAlgorithm; 9] = [
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// Parses a JOSE `alg` name (case-sensitive, as JOSE requires).
    pub fn parse(name: &str) -> Option<JwtAlgorithm> {
        Self::ALL.into_iter().find(|alg| alg.as_str() == name)
    }
}

/// Most clock skew accepted in configuration; more would make `exp` meaningless.
const MAX_CLOCK_SKEW_SECONDS: u64 = 3600;
/// Shortest remote JWKS refresh period, so a misconfiguration cannot hammer the IdP.
const MIN_REFRESH_SECONDS: u64 = 10;

fn default_true() -> bool {
    true
}

fn default_token_fields() -> Vec<String> {
    vec!["auth_token".into(), "pass".into(), "jwt".into()]
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_clock_skew_seconds() -> u64 {
    60
}

fn default_refresh_seconds() -> u64 {
    600
}

impl IdentityConfig {
    /// Checks the meaning of every field except the key sets' contents (compiled by
    /// [`super::Authenticator::new`]); the first problem is returned with its path.
    pub(crate) fn check_fields(&self) -> Result<(), ConfigIssue> {
        if self.spiffe.is_none() && self.jwt.is_none() {
            return Err(ConfigIssue::new(
                "",
                "configure at least one of `spiffe` and `jwt`: a connection must prove an identity",
            ));
        }
        if let Some(spiffe) = &self.spiffe {
            spiffe.validate()?;
        }
        if let Some(jwt) = &self.jwt {
            jwt.validate()?;
        }
        Ok(())
    }
}

impl SpiffeConfig {
    fn validate(&self) -> Result<(), ConfigIssue> {
        if self.trust_domains.is_empty() {
            return Err(ConfigIssue::new(
                "spiffe.trust_domains",
                "must list at least one trust domain",
            ));
        }
        for (index, domain) in self.trust_domains.iter().enumerate() {
            if !is_valid_trust_domain(domain) {
                return Err(ConfigIssue::new(
                    format!("spiffe.trust_domains[{index}]"),
                    format!("`{domain}` is not a SPIFFE trust domain (lower-case letters, digits, `.`, `-`, `_`)"),
                ));
            }
        }
        Ok(())
    }
}

impl JwtConfig {
    /// The configured token fields, in order (validated, so every name parses).
    pub(crate) fn parsed_token_fields(&self) -> Vec<TokenField> {
        self.token_fields
            .iter()
            .filter_map(|name| TokenField::parse(name))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigIssue> {
        if self.token_fields.is_empty() {
            return Err(ConfigIssue::new(
                "jwt.token_fields",
                "must list at least one CONNECT field",
            ));
        }
        let mut seen_fields = HashSet::new();
        for (index, name) in self.token_fields.iter().enumerate() {
            let path = format!("jwt.token_fields[{index}]");
            if TokenField::parse(name).is_none() {
                return Err(ConfigIssue::new(
                    path,
                    format!("`{name}` is not a CONNECT string field (allowed: auth_token, pass, user, jwt)"),
                ));
            }
            if !seen_fields.insert(name) {
                return Err(ConfigIssue::new(path, format!("`{name}` is listed twice")));
            }
        }
        if self.providers.is_empty() {
            return Err(ConfigIssue::new(
                "jwt.providers",
                "must list at least one provider",
            ));
        }
        let mut names = HashSet::new();
        let mut issuers = HashSet::new();
        for (index, provider) in self.providers.iter().enumerate() {
            let path = format!("jwt.providers[{index}]");
            provider.validate(&path)?;
            if !names.insert(provider.name.as_str()) {
                return Err(ConfigIssue::new(
                    format!("{path}.name"),
                    format!("provider name `{}` is used twice", provider.name),
                ));
            }
            // Tokens are routed to a provider by `iss`; two providers for one issuer would be ambiguous.
            if !issuers.insert(provider.issuer.as_str()) {
                return Err(ConfigIssue::new(
                    format!("{path}.issuer"),
                    format!("issuer `{}` is used by two providers", provider.issuer),
                ));
            }
        }
        Ok(())
    }
}

impl JwtProviderConfig {
    /// The configured algorithms (validated, so every name parses).
    pub(crate) fn parsed_algorithms(&self) -> Vec<JwtAlgorithm> {
        self.algorithms
            .iter()
            .filter_map(|name| JwtAlgorithm::parse(name))
            .collect()
    }

    fn validate(&self, path: &str) -> Result<(), ConfigIssue> {
        if self.name.is_empty() {
            return Err(ConfigIssue::new(
                format!("{path}.name"),
                "must not be empty",
            ));
        }
        if self.issuer.is_empty() {
            return Err(ConfigIssue::new(
                format!("{path}.issuer"),
                "must not be empty",
            ));
        }
        if self.audiences.is_empty() {
            return Err(ConfigIssue::new(
                format!("{path}.audiences"),
                "must list at least one audience: a token issued for another service must not be accepted",
            ));
        }
        if let Some(index) = self.audiences.iter().position(String::is_empty) {
            return Err(ConfigIssue::new(
                format!("{path}.audiences[{index}]"),
                "must not be empty",
            ));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigIssue::new(
                format!("{path}.algorithms"),
                "must list at least one algorithm",
            ));
        }
        for (index, name) in self.algorithms.iter().enumerate() {
            if JwtAlgorithm::parse(name).is_none() {
                return Err(ConfigIssue::new(
                    format!("{path}.algorithms[{index}]"),
                    format!(
                        "unknown or unsupported algorithm `{name}` (allowed: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA)"
                    ),
                ));
            }
        }
        if self.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
            return Err(ConfigIssue::new(
                format!("{path}.clock_skew_seconds"),
                format!("must be at most {MAX_CLOCK_SKEW_SECONDS}"),
            ));
        }
        if self.jwks.is_none() && self.remote_jwks.is_none() {
            return Err(ConfigIssue::new(
                path.to_string(),
                "needs `jwks`, `remote_jwks` or both",
            ));
        }
        if let Some(remote) = &self.remote_jwks {
            remote.validate(&format!("{path}.remote_jwks"))?;
        }
        Ok(())
    }
}

impl RemoteJwksConfig {
    fn validate(&self, path: &str) -> Result<(), ConfigIssue> {
        if self.cluster.is_empty() {
            return Err(ConfigIssue::new(
                format!("{path}.cluster"),
                "must not be empty",
            ));
        }
        if self.authority.is_empty() {
            return Err(ConfigIssue::new(
                format!("{path}.authority"),
                "must not be empty",
            ));
        }
        if !self.path.starts_with('/') {
            return Err(ConfigIssue::new(
                format!("{path}.path"),
                "must start with `/`",
            ));
        }
        if self.refresh_seconds < MIN_REFRESH_SECONDS {
            return Err(ConfigIssue::new(
                format!("{path}.refresh_seconds"),
                format!("must be at least {MIN_REFRESH_SECONDS}"),
            ));
        }
        Ok(())
    }
}

//! SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md) as Istio issues
//! them: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;

const SCHEME_PREFIX: &str = "spiffe://";
/// The SPIFFE ID spec's limit on the whole URI.
const MAX_ID_BYTES: usize = 2048;
/// The SPIFFE ID spec's limit on the trust domain (a DNS-name-sized label).
const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// A validated SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// Trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// Path including its leading `/`, or empty, e.g. `/ns/billing/sa/api`.
    pub path: String,
    /// Namespace of an Istio-shaped path (`/ns/<ns>/sa/<sa>`).
    pub namespace: Option<String>,
    /// Service account of an Istio-shaped path (`/ns/<ns>/sa/<sa>`).
    pub service_account: Option<String>,
}

/// Why a string is not a SPIFFE ID. [`SpiffeError::reason`] is stable (logs, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpiffeError {
    /// Empty input.
    Empty,
    /// Longer than 2048 bytes.
    TooLong,
    /// Does not start with `spiffe://` (scheme is case-sensitive).
    WrongScheme,
    /// Empty trust domain.
    MissingTrustDomain,
    /// Trust domain with a character outside `[a-z0-9.-_]` (this includes upper case, a port,
    /// userinfo, a query or a fragment), or longer than 255 bytes.
    InvalidTrustDomain,
    /// An empty path segment (`//` or a trailing `/`).
    EmptySegment,
    /// A `.` or `..` path segment.
    DotSegment,
    /// A path character outside `[A-Za-z0-9.-_]` (this includes `%`, `?` and `#`).
    InvalidPathCharacter,
}

impl SpiffeError {
    /// A stable snake_case reason.
    pub fn reason(self) -> &'static str {
        match self {
            SpiffeError::Empty => "empty",
            SpiffeError::TooLong => "too_long",
            SpiffeError::WrongScheme => "wrong_scheme",
            SpiffeError::MissingTrustDomain => "missing_trust_domain",
            SpiffeError::InvalidTrustDomain => "invalid_trust_domain",
            SpiffeError::EmptySegment => "empty_path_segment",
            SpiffeError::DotSegment => "dot_path_segment",
            SpiffeError::InvalidPathCharacter => "invalid_path_character",
        }
    }
}

impl fmt::Display for SpiffeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for SpiffeError {}

/// True when `domain` is a valid SPIFFE trust domain name.
pub(crate) fn is_valid_trust_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= MAX_TRUST_DOMAIN_BYTES
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn is_valid_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID URI.
    pub fn parse(uri: &str) -> Result<SpiffeId, SpiffeError> {
        if uri.is_empty() {
            return Err(SpiffeError::Empty);
        }
        if uri.len() > MAX_ID_BYTES {
            return Err(SpiffeError::TooLong);
        }
        let rest = uri
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeError::WrongScheme)?;
        let (trust_domain, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(SpiffeError::MissingTrustDomain);
        }
        if !is_valid_trust_domain(trust_domain) {
            return Err(SpiffeError::InvalidTrustDomain);
        }
        let segments: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path[1..].split('/').collect()
        };
        for segment in &segments {
            if segment.is_empty() {
                return Err(SpiffeError::EmptySegment);
            }
            if *segment == "." || *segment == ".." {
                return Err(SpiffeError::DotSegment);
            }
            if !segment.bytes().all(is_valid_path_byte) {
                return Err(SpiffeError::InvalidPathCharacter);
            }
        }
        let (namespace, service_account) = match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => (
                Some((*namespace).to_string()),
                Some((*service_account).to_string()),
            ),
            _ => (None, None),
        };
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            path: path.to_string(),
            namespace,
            service_account,
        })
    }

    /// The Istio principal: the ID without `spiffe://`, e.g. `cluster.local/ns/billing/sa/api`.
    pub fn principal(&self) -> String {
        format!("{}{}", self.trust_domain, self.path)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain, self.path)
    }
}

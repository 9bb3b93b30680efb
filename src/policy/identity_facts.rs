//! The facts about a connection's identity that rule matching and templates read.
//!
//! The policy only needs strings and claim values; this trait keeps it independent of how the
//! identity module represents SPIFFE IDs and tokens (and lets tests describe identities directly).

use serde_json::Value;

/// What the policy reads from an authenticated connection's identity.
pub trait IdentityFacts {
    /// The SPIFFE ID without `spiffe://`, e.g. `cluster.local/ns/billing/sa/api`.
    fn spiffe_principal(&self) -> Option<String>;
    /// The SPIFFE trust domain, e.g. `cluster.local`.
    fn spiffe_trust_domain(&self) -> Option<&str>;
    /// The namespace of an Istio-shaped SPIFFE path (`/ns/<ns>/sa/<sa>`).
    fn spiffe_namespace(&self) -> Option<&str>;
    /// The service account of an Istio-shaped SPIFFE path.
    fn spiffe_service_account(&self) -> Option<&str>;
    /// `iss/sub` of the verified JWT.
    fn jwt_request_principal(&self) -> Option<String>;
    /// `sub` of the verified JWT.
    fn jwt_subject(&self) -> Option<&str>;
    /// A claim of the verified JWT by name or dot path.
    fn jwt_claim(&self, dot_path: &str) -> Option<&Value>;
}

impl IdentityFacts for crate::identity::Identity {
    fn spiffe_principal(&self) -> Option<String> {
        self.spiffe.as_ref().map(|spiffe| spiffe.principal())
    }

    fn spiffe_trust_domain(&self) -> Option<&str> {
        self.spiffe
            .as_ref()
            .map(|spiffe| spiffe.trust_domain.as_str())
    }

    fn spiffe_namespace(&self) -> Option<&str> {
        self.spiffe.as_ref()?.namespace.as_deref()
    }

    fn spiffe_service_account(&self) -> Option<&str> {
        self.spiffe.as_ref()?.service_account.as_deref()
    }

    fn jwt_request_principal(&self) -> Option<String> {
        self.jwt.as_ref().map(|jwt| jwt.request_principal())
    }

    fn jwt_subject(&self) -> Option<&str> {
        self.jwt.as_ref().map(|jwt| jwt.subject.as_str())
    }

    fn jwt_claim(&self, dot_path: &str) -> Option<&Value> {
        self.jwt.as_ref()?.claim(dot_path)
    }
}

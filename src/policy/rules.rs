//! Which rules apply to a connection: Istio AuthorizationPolicy-style string matching on the
//! SPIFFE principal, namespace and JWT request principal, plus JWT claim matching.

use serde_json::Value;

use super::identity_facts::IdentityFacts;

/// An Istio string match: exact, `prefix*`, `*suffix`, or `*` (any non-empty value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StringMatch {
    pub(crate) fn parse(pattern: &str) -> Result<StringMatch, String> {
        if pattern.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if pattern == "*" {
            return Ok(StringMatch::Presence);
        }
        let (kind, core): (fn(String) -> StringMatch, &str) =
            if let Some(suffix) = pattern.strip_prefix('*') {
                (StringMatch::Suffix, suffix)
            } else if let Some(prefix) = pattern.strip_suffix('*') {
                (StringMatch::Prefix, prefix)
            } else {
                (StringMatch::Exact, pattern)
            };
        if core.contains('*') {
            return Err(format!(
                "{pattern:?}: '*' is only allowed alone, at the start or at the end"
            ));
        }
        Ok(kind(core.to_owned()))
    }

    pub(crate) fn matches(&self, candidate: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => candidate == exact,
            StringMatch::Prefix(prefix) => candidate.starts_with(prefix.as_str()),
            StringMatch::Suffix(suffix) => candidate.ends_with(suffix.as_str()),
            StringMatch::Presence => !candidate.is_empty(),
        }
    }
}

fn any_matches(patterns: &[StringMatch], candidate: Option<&str>) -> bool {
    candidate.is_some_and(|candidate| patterns.iter().any(|pattern| pattern.matches(candidate)))
}

impl std::fmt::Display for StringMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StringMatch::Exact(exact) => write!(f, "{exact}"),
            StringMatch::Prefix(prefix) => write!(f, "{prefix}*"),
            StringMatch::Suffix(suffix) => write!(f, "*{suffix}"),
            StringMatch::Presence => f.write_str("*"),
        }
    }
}

fn listed(patterns: &[StringMatch]) -> String {
    patterns
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A claim condition: the claim (name or dot path) must hold one of the accepted values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClaimCondition {
    pub(crate) path: String,
    pub(crate) accepted: Vec<StringMatch>,
}

impl ClaimCondition {
    /// OAuth scope claims are one space-separated string.
    fn is_space_separated(&self) -> bool {
        matches!(self.path.rsplit('.').next(), Some("scp" | "scope"))
    }

    fn matches(&self, value: &Value) -> bool {
        let accepted = |candidate: &str| self.accepted.iter().any(|value| value.matches(candidate));
        match value {
            Value::String(text) if self.is_space_separated() => {
                text.split_whitespace().any(accepted)
            }
            Value::String(text) => accepted(text),
            Value::Array(items) => items.iter().filter_map(Value::as_str).any(accepted),
            _ => false,
        }
    }
}

/// A rule's `from`: keys are ANDed, values within a key ORed. `None` keys are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FromClause {
    pub(crate) principals: Option<Vec<StringMatch>>,
    pub(crate) namespaces: Option<Vec<StringMatch>>,
    pub(crate) request_principals: Option<Vec<StringMatch>>,
    pub(crate) claims: Vec<ClaimCondition>,
}

impl FromClause {
    pub(crate) fn matches(&self, identity: &dyn IdentityFacts) -> bool {
        self.mismatch(identity).is_none()
    }

    /// Why the identity does not match (the first key that fails), or `None` if it matches.
    pub(crate) fn mismatch(&self, identity: &dyn IdentityFacts) -> Option<String> {
        let key = |key: &str, patterns: &[StringMatch], value: Option<&str>, what: &str| match value
        {
            _ if any_matches(patterns, value) => None,
            Some(value) => Some(format!("{key}: {value} is none of {}", listed(patterns))),
            None => Some(format!("{key}: the connection has no {what}")),
        };
        if let Some(principals) = &self.principals {
            let principal = identity.spiffe_principal();
            if let Some(why) = key("principals", principals, principal.as_deref(), "SPIFFE ID") {
                return Some(why);
            }
        }
        if let Some(namespaces) = &self.namespaces {
            let namespace = identity.spiffe_namespace();
            let what = "namespace (no SPIFFE ID of the form /ns/<ns>/sa/<sa>)";
            if let Some(why) = key("namespaces", namespaces, namespace, what) {
                return Some(why);
            }
        }
        if let Some(request_principals) = &self.request_principals {
            let principal = identity.jwt_request_principal();
            let what = "verified JWT";
            if let Some(why) = key(
                "request_principals",
                request_principals,
                principal.as_deref(),
                what,
            ) {
                return Some(why);
            }
        }
        self.claims.iter().find_map(|condition| {
            let accepted = listed(&condition.accepted);
            match identity.jwt_claim(&condition.path) {
                Some(value) if condition.matches(value) => None,
                Some(value) => Some(format!(
                    "claims.{}: {value} holds none of {accepted}",
                    condition.path
                )),
                None if identity.jwt_subject().is_none() => Some(format!(
                    "claims.{}: the connection has no verified JWT",
                    condition.path
                )),
                None => Some(format!(
                    "claims.{}: the token has no such claim",
                    condition.path
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::StringMatch;

    #[test]
    fn istio_string_matches() {
        let cases = [
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("pre*", "prefix", true),
            ("pre*", "xpre", false),
            ("*fix", "suffix", true),
            ("*fix", "fixed", false),
            ("*", "anything", true),
            ("*", "", false),
        ];
        for (pattern, candidate, expected) in cases {
            let matcher = StringMatch::parse(pattern).unwrap();
            assert_eq!(
                matcher.matches(candidate),
                expected,
                "{pattern} {candidate}"
            );
        }
        for invalid in ["", "a*b", "**", "*a*"] {
            assert!(StringMatch::parse(invalid).is_err(), "{invalid}");
        }
    }
}

//! Identity templates inside permission entries (`"tenants.{{jwt.claim.tid}}.>"`), resolved
//! once per connection. A value may only ever become one literal subject token: anything else
//! (a `.`, `*`, `>`, whitespace, a control character, an empty value, a non-string claim) makes
//! the variable unresolvable, so a claim can never expand into a wildcard or a second token.

use std::borrow::Cow;

use super::identity_facts::IdentityFacts;

/// A template variable, validated at configuration time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Variable {
    SpiffeTrustDomain,
    SpiffeNamespace,
    SpiffeServiceAccount,
    JwtSubject,
    JwtClaim(String),
}

impl std::fmt::Display for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Variable::SpiffeTrustDomain => f.write_str("spiffe.trust_domain"),
            Variable::SpiffeNamespace => f.write_str("spiffe.namespace"),
            Variable::SpiffeServiceAccount => f.write_str("spiffe.service_account"),
            Variable::JwtSubject => f.write_str("jwt.sub"),
            Variable::JwtClaim(claim) => write!(f, "jwt.claim.{claim}"),
        }
    }
}

impl Variable {
    fn parse(name: &str) -> Option<Variable> {
        match name {
            "spiffe.trust_domain" => Some(Variable::SpiffeTrustDomain),
            "spiffe.namespace" => Some(Variable::SpiffeNamespace),
            "spiffe.service_account" => Some(Variable::SpiffeServiceAccount),
            "jwt.sub" => Some(Variable::JwtSubject),
            _ => {
                let claim = name.strip_prefix("jwt.claim.")?;
                let well_formed =
                    !claim.is_empty() && claim.split('.').all(|segment| !segment.is_empty());
                well_formed.then(|| Variable::JwtClaim(claim.to_owned()))
            }
        }
    }

    fn value<'a>(&self, identity: &'a dyn IdentityFacts) -> Option<Cow<'a, str>> {
        match self {
            Variable::SpiffeTrustDomain => identity.spiffe_trust_domain().map(Cow::Borrowed),
            Variable::SpiffeNamespace => identity.spiffe_namespace().map(Cow::Borrowed),
            Variable::SpiffeServiceAccount => identity.spiffe_service_account().map(Cow::Borrowed),
            Variable::JwtSubject => identity.jwt_subject().map(Cow::Borrowed),
            Variable::JwtClaim(path) => identity.jwt_claim(path)?.as_str().map(Cow::Borrowed),
        }
    }
}

/// True when `value` can stand as exactly one literal subject token.
pub(crate) fn is_single_literal_token(value: &str) -> bool {
    !value.is_empty()
        && !value
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Variable(Variable),
}

/// A permission subject (or queue) that may contain `{{variable}}` placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    segments: Vec<Segment>,
}

/// Text substituted for each placeholder when the configuration is validated: the entry must be
/// a valid subject whatever single token the variable becomes.
const VALIDATION_STAND_IN: &str = "x";

impl Template {
    /// Parses `{{name}}` placeholders; `Err` names the problem.
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Literal(rest[..start].to_owned()));
            }
            let after_open = &rest[start + 2..];
            let end = after_open
                .find("}}")
                .ok_or_else(|| format!("unclosed template placeholder in {text:?}"))?;
            let name = &after_open[..end];
            let variable = Variable::parse(name).ok_or_else(|| {
                format!(
                    "unknown template variable {name:?} (known: spiffe.trust_domain, spiffe.namespace, \
                     spiffe.service_account, jwt.sub, jwt.claim.<name>)"
                )
            })?;
            segments.push(Segment::Variable(variable));
            rest = &after_open[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        Ok(Template { segments })
    }

    pub(crate) fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Variable(variable) => Some(variable),
            Segment::Literal(_) => None,
        })
    }

    pub(crate) fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|segment| matches!(segment, Segment::Literal(_)))
    }

    /// The text with every placeholder replaced by a stand-in token, for syntax validation.
    pub(crate) fn validation_form(&self) -> String {
        self.render(|_| Some(Cow::Borrowed(VALIDATION_STAND_IN)))
            .unwrap_or_default()
    }

    /// Expands every placeholder; `None` when any value is not a single literal token.
    pub(crate) fn expand(&self, identity: &dyn IdentityFacts) -> Option<String> {
        self.render(|variable| {
            variable
                .value(identity)
                .filter(|value| is_single_literal_token(value))
        })
    }

    /// Expands for a deny entry: a subject token whose placeholder cannot be resolved becomes
    /// `*` (or the whole queue becomes `>`), so a bad value widens the deny instead of
    /// dropping it.
    pub(crate) fn expand_for_deny(&self, identity: &dyn IdentityFacts, is_queue: bool) -> String {
        if let Some(expanded) = self.expand(identity) {
            return expanded;
        }
        if is_queue {
            return ">".to_owned();
        }
        let mut tokens: Vec<String> = vec![String::new()];
        let mut unresolved_tokens: Vec<bool> = vec![false];
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => {
                    let mut parts = text.split('.');
                    if let (Some(first), Some(last)) = (parts.next(), tokens.last_mut()) {
                        last.push_str(first);
                    }
                    for part in parts {
                        tokens.push(part.to_owned());
                        unresolved_tokens.push(false);
                    }
                }
                Segment::Variable(variable) => {
                    let value = variable
                        .value(identity)
                        .filter(|value| is_single_literal_token(value));
                    match (value, tokens.last_mut(), unresolved_tokens.last_mut()) {
                        (Some(value), Some(last), _) => last.push_str(&value),
                        (None, _, Some(unresolved)) => *unresolved = true,
                        _ => {}
                    }
                }
            }
        }
        tokens
            .into_iter()
            .zip(unresolved_tokens)
            .map(|(token, unresolved)| if unresolved { "*".to_owned() } else { token })
            .collect::<Vec<_>>()
            .join(".")
    }

    fn render<'a>(
        &self,
        mut value_of: impl FnMut(&Variable) -> Option<Cow<'a, str>>,
    ) -> Option<String> {
        let mut text = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => text.push_str(literal),
                Segment::Variable(variable) => text.push_str(&value_of(variable)?),
            }
        }
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    struct Claims(Value);

    impl IdentityFacts for Claims {
        fn spiffe_principal(&self) -> Option<String> {
            None
        }
        fn spiffe_trust_domain(&self) -> Option<&str> {
            None
        }
        fn spiffe_namespace(&self) -> Option<&str> {
            Some("billing")
        }
        fn spiffe_service_account(&self) -> Option<&str> {
            None
        }
        fn jwt_request_principal(&self) -> Option<String> {
            None
        }
        fn jwt_subject(&self) -> Option<&str> {
            self.0.get("sub")?.as_str()
        }
        fn jwt_claim(&self, dot_path: &str) -> Option<&Value> {
            self.0.get(dot_path)
        }
    }

    #[test]
    fn parse_and_validation_form() {
        let template = Template::parse("t.{{jwt.claim.org.id}}-{{spiffe.namespace}}.>").unwrap();
        assert_eq!(template.validation_form(), "t.x-x.>");
        assert!(!template.is_literal());
        assert!(Template::parse("plain.subject").unwrap().is_literal());
        assert!(Template::parse("a.{{jwt.claim}}").is_err());
        assert!(Template::parse("a.{{ jwt.sub }}").is_err());
        assert!(Template::parse("a.{{jwt.sub").is_err());
    }

    #[test]
    fn deny_expansion_widens_only_the_unresolved_token() {
        let template = Template::parse("t.{{spiffe.namespace}}.x-{{jwt.sub}}.y").unwrap();
        let resolved = Claims(json!({ "sub": "alice" }));
        assert_eq!(
            template.expand_for_deny(&resolved, false),
            "t.billing.x-alice.y"
        );
        let hostile = Claims(json!({ "sub": "a.b" }));
        assert_eq!(template.expand(&hostile), None);
        assert_eq!(template.expand_for_deny(&hostile, false), "t.billing.*.y");
        assert_eq!(template.expand_for_deny(&hostile, true), ">");
    }
}

//! What a valid configuration probably did not mean: the warnings the filter logs at load and
//! `natsguard check` prints, each at the JSON path of what it is about. Nothing here rejects a
//! configuration (that is [`super::compile`]'s job); every warning describes a decision the
//! policy will make that its author may not expect.

use std::fmt;

use super::compile::{compile_entry, Entry};
use super::config::one_line;
use super::config::{
    AllowResponsesConfig, Config, DefaultAction, Dimension, FromConfig, Mode, RuleConfig,
    SubjectPermissionConfig, DEFAULT_RESERVED_HEADERS,
};
use super::subject::{is_subset_match, tokens};
use super::template::Variable;
use crate::identity::IdentityConfig;

/// One lint finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// JSON path in the configuration (`rules[0].permissions.publish.allow[1]`, `$` for the
    /// whole).
    pub path: String,
    pub message: String,
}

impl Warning {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Warning {
        Warning {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", one_line(&self.path), one_line(&self.message))
    }
}

/// The warnings about a configuration that compiled: its policy part (identity, rules,
/// default action, mode, telemetry). A shadow policy is linted as the policy it makes, under
/// `shadow.`.
pub(super) fn lint(config: &Config) -> Vec<Warning> {
    let mut warnings = Vec::new();
    if !config.telemetry.dimensions.contains(&Dimension::Decision) {
        warnings.push(Warning::new(
            "telemetry.dimensions",
            "\"decision\" is off: allowed and denied frames count in the same series",
        ));
    }
    if config.mode == Mode::DryRun {
        warnings.push(Warning::new(
            "mode",
            "dry_run: the policy is evaluated and reported, nothing is denied, refused or filtered",
        ));
    }
    if config.default_action == DefaultAction::Allow {
        warnings.push(Warning::new(
            "default_action",
            "allow: connections matching no rule are unrestricted",
        ));
    }
    lint_provenance(config, &mut warnings);
    for (index, rule) in config.rules.iter().enumerate() {
        lint_rule(
            rule,
            &format!("rules[{index}]"),
            &config.identity,
            &mut warnings,
        );
    }
    warnings
}

/// `provenance` and `reserved_headers`: what they leave undone.
fn lint_provenance(config: &Config, out: &mut Vec<Warning>) {
    let reserves = |name: &str| {
        config
            .reserved_headers
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(name))
    };
    for name in DEFAULT_RESERVED_HEADERS {
        if !reserves(name) {
            out.push(Warning::new(
                "reserved_headers",
                format!("{name} is not listed: a client can forge nats-server's identity header, and services behind the mesh read it as who asked"),
            ));
        }
    }
    let Some(provenance) = &config.provenance else {
        return;
    };
    if config.mode == Mode::DryRun {
        out.push(Warning::new(
            "provenance",
            "a dry run changes no message: nothing is stamped and no reserved header removed",
        ));
    } else if provenance.subjects.is_empty() {
        out.push(Warning::new(
            "provenance.subjects",
            "empty: no message is stamped (only the reserved headers are removed)",
        ));
    }
}

fn lint_rule(rule: &RuleConfig, path: &str, identity: &IdentityConfig, out: &mut Vec<Warning>) {
    if let Some(from) = &rule.from {
        lint_reachability(from, &format!("{path}.from"), identity, out);
    }
    let permissions = &rule.permissions;
    // allow_responses installs an empty publish allow list by itself.
    let responses = matches!(
        permissions.allow_responses,
        Some(AllowResponsesConfig::Enabled(true) | AllowResponsesConfig::Limits { .. })
    );
    for (direction, permission) in [
        ("publish", permissions.publish.as_ref()),
        ("subscribe", permissions.subscribe.as_ref()),
    ] {
        let direction_path = format!("{path}.permissions.{direction}");
        let entries = permission.map(|permission| Entries::of(permission, &direction_path));
        let restricted = entries.as_ref().is_some_and(|entries| {
            !entries.allow.is_empty()
                || entries
                    .deny
                    .iter()
                    .any(|(_, entry)| entry.denies_everything())
        }) || (direction == "publish" && responses);
        if !restricted {
            out.push(Warning::new(
                direction_path.clone(),
                format!(
                    "rule {:?} leaves {direction} unrestricted (no allow list): every subject not denied is allowed",
                    rule.name
                ),
            ));
        }
        let Some(entries) = entries else {
            continue;
        };
        entries.lint(out);
        for (entry_path, entry) in entries.allow.iter().chain(&entries.deny) {
            for variable in entry.variables() {
                if let Some(message) = unfillable(variable, rule.from.as_ref(), identity) {
                    out.push(Warning::new(entry_path.clone(), message));
                }
            }
        }
    }
}

/// The allow and deny entries of one direction, with their JSON paths.
struct Entries {
    allow: Vec<(String, Entry)>,
    deny: Vec<(String, Entry)>,
}

impl Entries {
    fn of(permission: &SubjectPermissionConfig, path: &str) -> Entries {
        let list = |name: &str, written: &[String]| -> Vec<(String, Entry)> {
            written
                .iter()
                .enumerate()
                .filter_map(|(index, text)| {
                    // The configuration compiled: every entry parses.
                    let entry = compile_entry(text, true).ok()?;
                    Some((permission.entry_path(path, name, index), entry))
                })
                .collect()
        };
        Entries {
            allow: list("allow", &permission.allow),
            deny: list("deny", &permission.deny),
        }
    }

    fn lint(&self, out: &mut Vec<Warning>) {
        for list in [&self.allow, &self.deny] {
            for (index, (path, entry)) in list.iter().enumerate() {
                if list[..index]
                    .iter()
                    .any(|(_, earlier)| earlier.same_as(entry))
                {
                    out.push(Warning::new(
                        path.clone(),
                        format!(
                            "duplicate: {:?} is listed before in the same list",
                            entry.written()
                        ),
                    ));
                }
            }
        }
        for (path, allow) in &self.allow {
            if let Some((_, deny)) = self.deny.iter().find(|(_, deny)| deny.covers(allow)) {
                out.push(Warning::new(
                    path.clone(),
                    format!(
                        "allow {:?} is unreachable: the rule's deny {:?} matches everything it allows",
                        allow.written(),
                        deny.written()
                    ),
                ));
            }
        }
    }
}

impl Entry {
    /// Same subject and queue, templates included (whitespace between them does not count).
    fn same_as(&self, other: &Entry) -> bool {
        self.subject_text() == other.subject_text() && self.queue_text() == other.queue_text()
    }

    /// Whether this deny entry denies everything `allow` could grant (template-free entries
    /// only: a template's value is the identity's).
    fn covers(&self, allow: &Entry) -> bool {
        if self.has_template() || allow.has_template() {
            return false;
        }
        let subject_covered = {
            let allowed: Vec<&[u8]> = tokens(allow.subject_text().as_bytes()).collect();
            let denied: Vec<&[u8]> = tokens(self.subject_text().as_bytes()).collect();
            is_subset_match(&allowed, &denied)
        };
        let queue_covered = match (self.queue_text(), allow.queue_text()) {
            // A plain deny entry denies every subscription, queue or not.
            (None, _) => true,
            // A queue deny entry only denies its queue groups.
            (Some(_), None) => false,
            (Some(denied), Some(allowed)) => {
                let allowed: Vec<&[u8]> = tokens(allowed.as_bytes()).collect();
                let denied: Vec<&[u8]> = tokens(denied.as_bytes()).collect();
                is_subset_match(&allowed, &denied)
            }
        };
        subject_covered && queue_covered
    }
}

/// Why a rule matches no identity the identity configuration can produce, if it cannot.
fn lint_reachability(
    from: &FromConfig,
    path: &str,
    identity: &IdentityConfig,
    out: &mut Vec<Warning>,
) {
    let spiffe_keys = [
        ("principals", from.principals.is_some()),
        ("namespaces", from.namespaces.is_some()),
    ];
    for (key, present) in spiffe_keys {
        if present && identity.spiffe.is_none() {
            out.push(Warning::new(
                format!("{path}.{key}"),
                "no identity can match: identity.spiffe is not configured, so no connection has a SPIFFE ID",
            ));
        }
    }
    let jwt_keys = [
        ("request_principals", from.request_principals.is_some()),
        ("claims", from.claims.is_some()),
    ];
    for (key, present) in jwt_keys {
        if present && identity.jwt.is_none() {
            out.push(Warning::new(
                format!("{path}.{key}"),
                "no identity can match: identity.jwt is not configured, so no connection has a verified token",
            ));
        }
    }
    if let (Some(principals), Some(spiffe)) = (&from.principals, &identity.spiffe) {
        for (index, principal) in principals.iter().enumerate() {
            // A principal is `<trust domain>/ns/<ns>/sa/<sa>`.
            let reaches = |trust_domain: &String| match pattern_kind(principal) {
                PatternKind::Exact => principal.split('/').next() == Some(trust_domain.as_str()),
                PatternKind::Prefix => match exact_prefix(principal).split_once('/') {
                    Some((domain, _)) => domain == trust_domain,
                    None => trust_domain.starts_with(exact_prefix(principal)),
                },
                PatternKind::Suffix | PatternKind::Any => true,
            };
            if !spiffe.trust_domains.iter().any(reaches) {
                out.push(Warning::new(
                    format!("{path}.principals[{index}]"),
                    format!(
                        "no identity can match: {principal:?} is not in an accepted trust domain (identity.spiffe.trust_domains: {})",
                        spiffe.trust_domains.join(", ")
                    ),
                ));
            }
        }
    }
    if let (Some(request_principals), Some(jwt)) = (&from.request_principals, &identity.jwt) {
        for (index, pattern) in request_principals.iter().enumerate() {
            let reaches = |issuer: &str| {
                let issuer_slash = format!("{issuer}/");
                match pattern_kind(pattern) {
                    PatternKind::Exact => pattern.starts_with(&issuer_slash),
                    PatternKind::Prefix => {
                        let prefix = exact_prefix(pattern);
                        issuer_slash.starts_with(prefix) || prefix.starts_with(&issuer_slash)
                    }
                    PatternKind::Suffix | PatternKind::Any => true,
                }
            };
            if !jwt
                .providers
                .iter()
                .any(|provider| reaches(&provider.issuer))
            {
                out.push(Warning::new(
                    format!("{path}.request_principals[{index}]"),
                    format!(
                        "no identity can match: {pattern:?} names no configured issuer (request principals are \"<iss>/<sub>\"; issuers: {})",
                        jwt.providers
                            .iter()
                            .map(|provider| provider.issuer.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
}

enum PatternKind {
    Exact,
    Prefix,
    Suffix,
    Any,
}

/// Istio's string match forms (`*`, `x*`, `*x`, exact), as [`super::rules::StringMatch`] reads
/// them.
fn pattern_kind(pattern: &str) -> PatternKind {
    if pattern == "*" {
        PatternKind::Any
    } else if pattern.starts_with('*') {
        PatternKind::Suffix
    } else if pattern.ends_with('*') {
        PatternKind::Prefix
    } else {
        PatternKind::Exact
    }
}

fn exact_prefix(pattern: &str) -> &str {
    pattern.strip_suffix('*').unwrap_or(pattern)
}

/// Why a template variable of a rule's entry may have no value for an identity the rule
/// matches (the allow entry is then dropped for that connection, a deny entry widens).
fn unfillable(
    variable: &Variable,
    from: Option<&FromConfig>,
    identity: &IdentityConfig,
) -> Option<String> {
    const CONSEQUENCE: &str = "an identity the rule matches may lack it, and then loses this allow entry (a deny entry widens)";
    let from = from.cloned().unwrap_or_default();
    let requires_token = identity.jwt.as_ref().is_some_and(|jwt| jwt.required)
        || from.request_principals.is_some()
        || from.claims.is_some();
    let requires_spiffe = identity
        .spiffe
        .as_ref()
        .is_some_and(|spiffe| spiffe.required)
        || from.principals.is_some()
        || from.namespaces.is_some();
    match variable {
        Variable::JwtClaim(_) | Variable::JwtSubject if identity.jwt.is_none() => Some(format!(
            "{{{{{variable}}}}} never has a value: identity.jwt is not configured"
        )),
        Variable::JwtClaim(claim)
            if !from.claims.as_ref().is_some_and(|claims| claims.contains_key(claim)) =>
        {
            Some(format!(
                "{{{{{variable}}}}}: the rule's from does not require claim {claim:?}: {CONSEQUENCE}; require it with \"claims\": {{ {claim:?}: [\"*\"] }}"
            ))
        }
        Variable::JwtSubject if !requires_token => Some(format!(
            "{{{{{variable}}}}}: neither identity.jwt.required nor the rule's from requires a token: {CONSEQUENCE}"
        )),
        Variable::SpiffeTrustDomain | Variable::SpiffeNamespace | Variable::SpiffeServiceAccount
            if identity.spiffe.is_none() =>
        {
            Some(format!(
                "{{{{{variable}}}}} never has a value: identity.spiffe is not configured"
            ))
        }
        Variable::SpiffeTrustDomain if !requires_spiffe => Some(format!(
            "{{{{{variable}}}}}: neither identity.spiffe.required nor the rule's from requires a SPIFFE ID: {CONSEQUENCE}"
        )),
        Variable::SpiffeNamespace | Variable::SpiffeServiceAccount
            if from.namespaces.is_none() && from.principals.is_none() =>
        {
            Some(format!(
                "{{{{{variable}}}}}: the rule's from has neither namespaces nor principals, so a matching identity may have no Istio-shaped SPIFFE ID (/ns/<ns>/sa/<sa>): {CONSEQUENCE}"
            ))
        }
        _ => None,
    }
}

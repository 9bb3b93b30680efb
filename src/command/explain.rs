//! `natsguard explain` and `natsguard permissions`: for one identity, what the filter decides
//! and why — the identity facts, which rules match (and why each other one does not), the
//! effective permissions, the decision with the entry that made it, and the exact bytes the
//! client gets. Decisions and explanations are the engine's own ([`crate::policy`]); the bytes
//! are the protocol module's, as the engine sends them.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::identity::{
    unverified_claims, AuthOutcome, Authenticator, Identity, IdentityConfig, SpiffeId, VerifiedJwt,
};
use crate::policy::{is_reserved_reply, ConnectionPermissions};
use crate::policy::{DefaultAction, Mode, Policy, Ruling, SubscribeDecision};
use crate::protocol::{
    publish_reply_violation, publish_violation, subscription_violation, AUTHORIZATION_VIOLATION,
};

/// What the connection presents besides its SPIFFE ID.
#[derive(Clone, Debug)]
pub enum Credential {
    None,
    /// A JWT, verified against the configuration's keys unless `verify` is false (then only
    /// decoded).
    Token {
        token: String,
        verify: bool,
    },
    /// The claims of a token, taken as given (not verified).
    Claims(Map<String, Value>),
}

/// The frame to explain.
#[derive(Clone, Debug)]
pub enum Operation {
    Publish {
        subject: String,
        reply: Option<String>,
    },
    Subscribe {
        subject: String,
        queue: Option<String>,
    },
    /// A message on `subject` delivered to a subscription to `subscription` (in `queue`).
    Deliver {
        subject: String,
        subscription: String,
        queue: Option<String>,
    },
}

/// Who asks, and when.
#[derive(Clone, Debug)]
pub struct Question {
    /// The peer certificate's URI SAN (`spiffe://…`).
    pub spiffe: Option<String>,
    pub credential: Credential,
    /// Key sets for providers with `remote_jwks` (provider name, JWKS document).
    pub remote_keys: Vec<(String, Vec<u8>)>,
    /// Unix seconds.
    pub now: u64,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub policy_version: String,
    pub mode: &'static str,
    pub identity: IdentityReport,
    /// `None` when the connection is refused before any rule is read.
    pub rules: Option<Vec<RuleReport>>,
    pub default_action: &'static str,
    /// The effective permissions as a nats-server `permissions` block (`None`: refused).
    pub permissions: Option<Value>,
    pub decision: Option<Decision>,
    /// The same question under the configuration's shadow policy.
    pub shadow: Option<Box<Explanation>>,
}

#[derive(Debug, Default, Serialize)]
pub struct IdentityReport {
    pub spiffe_id: Option<String>,
    pub principal: Option<String>,
    pub trust_domain: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub token: Option<TokenReport>,
    /// Why the filter refuses the identity (a stable reason), if it does.
    pub refused: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TokenReport {
    /// `verified`, or how it was read without verification.
    pub verification: &'static str,
    pub provider: Option<String>,
    pub issuer: String,
    pub subject: String,
    pub request_principal: String,
    pub audiences: Vec<String>,
    pub expires_at: Option<u64>,
    pub claims: Map<String, Value>,
}

#[derive(Debug, Serialize)]
pub struct RuleReport {
    pub name: String,
    pub matches: bool,
    /// Why it does not match.
    pub mismatch: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Decision {
    /// The frame, as the client writes it (`PUB billing.x`, `SUB jobs.* workers`, `MSG …`).
    pub frame: String,
    pub allowed: bool,
    pub rule: Option<String>,
    /// The entry that decided, or what decided without one.
    pub entry: String,
    /// Where nats-server's own reading would allow it.
    pub nats_server_allows: Option<String>,
    /// What the client receives because of this decision (nothing: empty).
    pub client_gets: String,
    /// What else follows.
    pub note: Option<String>,
}

const UNVERIFIED: &str = "NOT VERIFIED: decoded only (--no-verify); the filter verifies the signature, issuer, audience and times";
const GIVEN_CLAIMS: &str = "NOT VERIFIED: claims given with --claims";

/// Explains `operation` (or, with `None`, only the identity and its permissions) under `policy`.
pub fn explain(
    policy: &Policy,
    question: &Question,
    operation: Option<&Operation>,
) -> Result<Explanation, String> {
    let mut explanation = explain_one(policy, question, operation)?;
    if let Some(shadow) = policy.shadow() {
        explanation.shadow = Some(Box::new(explain_one(shadow, question, operation)?));
    }
    Ok(explanation)
}

fn explain_one(
    policy: &Policy,
    question: &Question,
    operation: Option<&Operation>,
) -> Result<Explanation, String> {
    let (identity, mut report) = identify(policy.identity_config(), question)?;
    let mut explanation = Explanation {
        policy_version: policy.version().to_owned(),
        mode: match policy.mode() {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry_run",
        },
        identity: IdentityReport::default(),
        rules: None,
        default_action: match policy.default_action() {
            DefaultAction::Allow => "allow",
            DefaultAction::Deny => "deny",
        },
        permissions: None,
        decision: None,
        shadow: None,
    };
    let refused = |reason: String, operation: Option<&Operation>| {
        operation.map(|operation| Decision {
            frame: operation.frame(),
            allowed: false,
            rule: None,
            entry: format!("the connection is refused at CONNECT ({reason})"),
            nats_server_allows: None,
            client_gets: text(AUTHORIZATION_VIOLATION),
            note: Some("the connection closes".to_owned()),
        })
    };
    let Some(identity) = identity else {
        let reason = report.refused.clone().unwrap_or_default();
        explanation.decision = refused(reason, operation);
        explanation.identity = report;
        return Ok(explanation);
    };
    explanation.rules = Some(
        policy
            .rule_matches(&identity)
            .into_iter()
            .map(|rule| RuleReport {
                name: rule.name,
                matches: rule.mismatch.is_none(),
                mismatch: rule.mismatch,
            })
            .collect(),
    );
    let Ok(mut permissions) = policy.resolve(&identity) else {
        report.refused = Some("no_matching_rule".to_owned());
        explanation.decision = refused(
            "no_matching_rule: no rule matches and default_action is deny".to_owned(),
            operation,
        );
        explanation.identity = report;
        return Ok(explanation);
    };
    explanation.identity = report;
    explanation.permissions = Some(permissions.nats_server_permissions());
    if let Some(operation) = operation {
        let now = std::time::Duration::from_secs(question.now);
        let mut decision = decide(&mut permissions, operation, now)?;
        if policy.mode() == Mode::DryRun && !decision.allowed {
            decision.client_gets = String::new();
            decision.note = Some(
                "mode dry_run: nothing is enforced; the filter reports this as a shadow_diff line (would_deny) and counts it in natsguard.shadow.would_deny"
                    .to_owned(),
            );
        }
        explanation.decision = Some(decision);
    }
    Ok(explanation)
}

impl Operation {
    fn frame(&self) -> String {
        let joined = |parts: &[Option<&str>]| {
            parts
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        };
        match self {
            Operation::Publish { subject, reply } => {
                joined(&[Some("PUB"), Some(subject), reply.as_deref()])
            }
            Operation::Subscribe { subject, queue } => {
                joined(&[Some("SUB"), Some(subject), queue.as_deref()])
            }
            Operation::Deliver {
                subject,
                subscription,
                queue,
            } => format!(
                "MSG {subject} to {}",
                joined(&[Some("SUB"), Some(subscription), queue.as_deref()])
            ),
        }
    }
}

fn decide(
    permissions: &mut ConnectionPermissions,
    operation: &Operation,
    now: std::time::Duration,
) -> Result<Decision, String> {
    let frame = operation.frame();
    let decision = |ruling: Ruling, client_gets: String, note: Option<String>| Decision {
        frame: frame.clone(),
        allowed: ruling.allowed,
        rule: ruling.rule().map(str::to_owned),
        entry: ruling.reason.clone(),
        nats_server_allows: ruling.nats_server_allows.clone(),
        client_gets,
        note,
    };
    Ok(match operation {
        Operation::Publish { subject, reply } => {
            check_subject(subject)?;
            let ruling = permissions.explain_publish(subject.as_bytes(), now);
            match reply {
                _ if !ruling.allowed => {
                    let note = "the frame and its payload are dropped; the connection stays open";
                    decision(ruling, text(&publish_violation(subject.as_bytes())), Some(note.into()))
                }
                Some(reply) if is_reserved_reply(reply.as_bytes()) => decision(
                    ruling,
                    text(&publish_reply_violation(reply.as_bytes())),
                    Some("natsguard allows the subject; nats-server refuses the reply subject itself".into()),
                ),
                _ => decision(ruling, String::new(), Some("forwarded to nats-server unchanged".into())),
            }
        }
        Operation::Subscribe { subject, queue } => {
            check_subject(subject)?;
            let queue_bytes = queue.as_deref().map(str::as_bytes);
            let ruling = permissions.explain_subscribe(subject.as_bytes(), queue_bytes);
            match ruling.allowed {
                true => decision(
                    ruling,
                    String::new(),
                    Some("forwarded to nats-server unchanged".into()),
                ),
                false => {
                    let bytes = subscription_violation(subject.as_bytes(), queue_bytes);
                    let note =
                        "the SUB is dropped (nats-server never sees it); the connection stays open";
                    decision(ruling, text(&bytes), Some(note.into()))
                }
            }
        }
        Operation::Deliver {
            subject,
            subscription,
            queue,
        } => {
            check_subject(subject)?;
            check_subject(subscription)?;
            if !subject_matches(subject, subscription) {
                return Err(format!(
                    "{subject:?} does not match the subscription {subscription:?}: nats-server would not deliver it"
                ));
            }
            let queue_bytes = queue.as_deref().map(str::as_bytes);
            let subscribed = permissions.check_subscribe(subscription.as_bytes(), queue_bytes);
            if subscribed == SubscribeDecision::Denied {
                let ruling = permissions.explain_subscribe(subscription.as_bytes(), queue_bytes);
                let bytes = subscription_violation(subscription.as_bytes(), queue_bytes);
                let note = "the subscription is refused, so nothing is delivered on it";
                return Ok(decision(ruling, text(&bytes), Some(note.into())));
            }
            let ruling = permissions.explain_delivery(subject.as_bytes(), queue_bytes);
            match ruling.allowed {
                true => decision(ruling, String::new(), Some("delivered unchanged".into())),
                false => {
                    let note = "the message is dropped silently, as nats-server's delivery filter drops it";
                    decision(ruling, String::new(), Some(note.into()))
                }
            }
        }
    })
}

fn check_subject(subject: &str) -> Result<(), String> {
    match crate::policy::is_valid_subject(subject) {
        true => Ok(()),
        false => Err(format!("{subject:?} is not a valid subject")),
    }
}

/// Whether a message on the literal `subject` is delivered to a subscription to `pattern`.
fn subject_matches(subject: &str, pattern: &str) -> bool {
    use crate::policy::subject::{is_subset_match, tokens};
    let subject: Vec<&[u8]> = tokens(subject.as_bytes()).collect();
    let pattern: Vec<&[u8]> = tokens(pattern.as_bytes()).collect();
    is_subset_match(&subject, &pattern)
}

/// Bytes as printable text (`\r\n` spelled out).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\\r\\n")
}

/// The identity the filter would establish for `question` under `config`, and its report.
/// `None` when the filter refuses it (`report.refused` says why).
fn identify(
    config: &IdentityConfig,
    question: &Question,
) -> Result<(Option<Identity>, IdentityReport), String> {
    let mut report = IdentityReport {
        spiffe_id: question.spiffe.clone(),
        ..IdentityReport::default()
    };
    if let Some(uri) = &question.spiffe {
        if let Ok(id) = SpiffeId::parse(uri) {
            report.principal = Some(id.principal());
            report.trust_domain = Some(id.trust_domain.clone());
            report.namespace = id.namespace.clone();
            report.service_account = id.service_account.clone();
        }
    }
    let mut authenticator = Authenticator::new(config).map_err(|issue| issue.reason)?;
    for (provider, keys) in &question.remote_keys {
        authenticator
            .update_remote_jwks(provider, keys, question.now)
            .map_err(|error| format!("--jwks {provider}: {}", error.reason))?;
    }
    let outcome = match &question.credential {
        Credential::None => {
            authenticator.authenticate(question.spiffe.as_deref(), None, question.now)
        }
        Credential::Token {
            token,
            verify: true,
        } => authenticator.authenticate(question.spiffe.as_deref(), Some(token), question.now),
        Credential::Token {
            token,
            verify: false,
        } => match unverified_claims(token) {
            Ok(claims) => unverified(config, question, claims, UNVERIFIED)?,
            Err(rejection) => AuthOutcome::Rejected(rejection),
        },
        Credential::Claims(claims) => unverified(config, question, claims.clone(), GIVEN_CLAIMS)?,
    };
    let identity = match outcome {
        AuthOutcome::Authenticated(identity) => *identity,
        AuthOutcome::AwaitingKeys { provider } => {
            return Err(format!(
                "provider {provider} takes its keys from remote_jwks: give them with --jwks {provider}=FILE, or read the token without verifying it (--no-verify)"
            ))
        }
        AuthOutcome::Rejected(rejection) => {
            report.refused = Some(rejection.reason().to_owned());
            if let Credential::Token { token, .. } = &question.credential {
                if let Ok(claims) = unverified_claims(token) {
                    report.token = Some(token_report(&unverified_jwt(config, claims), "refused"));
                }
            }
            return Ok((None, report));
        }
    };
    if let Some(jwt) = &identity.jwt {
        let verification = match question.credential {
            Credential::Token { verify: true, .. } => "verified",
            Credential::Token { verify: false, .. } => UNVERIFIED,
            _ => GIVEN_CLAIMS,
        };
        report.token = Some(token_report(jwt, verification));
    }
    Ok((Some(identity), report))
}

/// The identity from claims that were not verified: the SPIFFE part as the filter checks it, the
/// token's claims as given (a provider is looked up by `iss`, for its name only).
fn unverified(
    config: &IdentityConfig,
    question: &Question,
    claims: Map<String, Value>,
    how: &'static str,
) -> Result<AuthOutcome, String> {
    let spiffe_only = IdentityConfig {
        spiffe: config.spiffe.clone(),
        jwt: None,
    };
    let authenticator = Authenticator::new(&spiffe_only).map_err(|issue| issue.reason)?;
    let outcome = authenticator.authenticate(question.spiffe.as_deref(), None, question.now);
    let AuthOutcome::Authenticated(mut identity) = outcome else {
        return Ok(outcome);
    };
    if config.jwt.is_none() {
        return Err(format!(
            "the configuration reads no tokens (no identity.jwt): drop the token ({how})"
        ));
    }
    for claim in ["iss", "sub"] {
        if !claims.get(claim).is_some_and(Value::is_string) {
            return Err(format!("the token's claims have no string {claim:?}"));
        }
    }
    identity.jwt = Some(unverified_jwt(config, claims));
    Ok(AuthOutcome::Authenticated(identity))
}

fn unverified_jwt(config: &IdentityConfig, claims: Map<String, Value>) -> VerifiedJwt {
    let string = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let issuer = string("iss");
    let provider = config
        .jwt
        .iter()
        .flat_map(|jwt| &jwt.providers)
        .find(|provider| provider.issuer == issuer);
    let audiences = crate::identity::audiences(&claims);
    VerifiedJwt {
        subject: string("sub"),
        issuer,
        audiences,
        expires_at: claims.get("exp").and_then(Value::as_u64),
        not_before: claims.get("nbf").and_then(Value::as_u64),
        clock_skew_seconds: provider.map_or(0, |provider| provider.clock_skew_seconds),
        provider: provider
            .map(|provider| provider.name.clone())
            .unwrap_or_default(),
        claims,
    }
}

fn token_report(jwt: &VerifiedJwt, verification: &'static str) -> TokenReport {
    TokenReport {
        verification,
        provider: Some(jwt.provider.clone()).filter(|name| !name.is_empty()),
        issuer: jwt.issuer.clone(),
        subject: jwt.subject.clone(),
        request_principal: jwt.request_principal(),
        audiences: jwt.audiences.clone(),
        expires_at: jwt.expires_at,
        claims: jwt.claims.clone(),
    }
}

/// The explanation as text for a terminal.
pub fn render(explanation: &Explanation) -> String {
    let mut out = String::new();
    render_into(explanation, &mut out, "", "client gets");
    out
}

fn render_into(explanation: &Explanation, out: &mut String, title: &str, gets_label: &str) {
    use std::fmt::Write;
    let field = |out: &mut String, name: &str, value: &str| {
        let _ = writeln!(out, "  {name:<16} {value}");
    };
    let _ = writeln!(
        out,
        "{title}policy version {}, mode {}, default_action {}",
        explanation.policy_version, explanation.mode, explanation.default_action
    );
    let identity = &explanation.identity;
    out.push_str("\nidentity\n");
    field(
        out,
        "spiffe id",
        identity.spiffe_id.as_deref().unwrap_or("none"),
    );
    for (name, value) in [
        ("principal", &identity.principal),
        ("trust domain", &identity.trust_domain),
        ("namespace", &identity.namespace),
        ("service account", &identity.service_account),
    ] {
        if let Some(value) = value {
            field(out, name, value);
        }
    }
    match &identity.token {
        None => field(out, "token", "none"),
        Some(token) => {
            field(out, "token", token.verification);
            if let Some(provider) = &token.provider {
                field(out, "provider", provider);
            }
            field(out, "request principal", &token.request_principal);
            field(out, "audiences", &token.audiences.join(", "));
            if let Some(exp) = token.expires_at {
                field(out, "expires at", &exp.to_string());
            }
            field(
                out,
                "claims",
                &Value::Object(token.claims.clone()).to_string(),
            );
        }
    }
    if let Some(refused) = &identity.refused {
        field(out, "refused", refused);
    }
    if let Some(rules) = &explanation.rules {
        out.push_str("\nrules\n");
        if rules.is_empty() {
            field(out, "none", "the configuration has no rules");
        }
        for rule in rules {
            match &rule.mismatch {
                None => field(out, "matches", &rule.name),
                Some(why) => field(out, "does not match", &format!("{}: {why}", rule.name)),
            }
        }
    }
    if let Some(permissions) = &explanation.permissions {
        out.push_str("\neffective permissions (as a nats-server permissions block)\n");
        match permissions.as_object() {
            Some(block) if !block.is_empty() => {
                for (key, value) in block {
                    let _ = writeln!(out, "  {key:<16} {value}");
                }
            }
            _ => field(out, "none", "everything is allowed"),
        }
    }
    if let Some(decision) = &explanation.decision {
        out.push_str("\ndecision\n");
        field(out, "frame", &decision.frame);
        field(
            out,
            "decision",
            if decision.allowed {
                "ALLOWED"
            } else {
                "DENIED"
            },
        );
        if let Some(rule) = &decision.rule {
            field(out, "rule", rule);
        }
        field(out, "entry", &decision.entry);
        if let Some(note) = &decision.nats_server_allows {
            field(out, "nats-server", note);
        }
        let gets = if decision.client_gets.is_empty() {
            "nothing"
        } else {
            &decision.client_gets
        };
        field(out, gets_label, gets);
        if let Some(note) = &decision.note {
            field(out, "then", note);
        }
    }
    if let Some(shadow) = &explanation.shadow {
        out.push_str("\n----\n");
        render_into(
            shadow,
            out,
            "shadow policy (reported, never applied): ",
            "would get",
        );
    }
}

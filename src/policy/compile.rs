//! Validation and compilation of a [`Config`] into a [`Policy`], and per-connection resolution
//! of the rules an identity matches into [`ConnectionPermissions`].

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use super::config::{
    AllowResponsesConfig, Config, ConfigError, DefaultAction, Dimension, FromConfig, LimitsConfig,
    Mode, NkeySeedConfig, SubjectPermissionConfig, TelemetryConfig, UpstreamConfig,
};
use super::connection::{
    ConnectionPermissions, EffectivePermissions, EntryList, PermissionEntry, ResponsePermission,
};
use super::duration::parse_go_duration;
use super::identity_facts::IdentityFacts;
use super::lint::{lint, Warning};
use super::provenance::{Provenance, ReservedHeaders};
use super::rules::{ClaimCondition, FromClause, StringMatch};
use super::subject::is_valid_subject;
use super::template::{Template, Variable};
use super::trie::PatternTrie;
use crate::identity::{IdentityConfig, NkeySigner};

/// nats-server's defaults for `allow_responses` (server/const.go).
const DEFAULT_RESPONSE_MAX_MSGS: i64 = 1;
const DEFAULT_RESPONSE_EXPIRES_NANOS: i64 = 120_000_000_000;
/// Largest accepted `limits.max_connect_line` (16 MiB) and `limits.decision_cache_entries`.
const MAX_CONNECT_LINE_LIMIT: u32 = 16 << 20;
const MAX_DECISION_CACHE_ENTRIES: u32 = 1 << 16;
/// How many distinct template-free rule combinations keep a shared compiled permission set.
const MAX_SHARED_COMBINATIONS: usize = 256;

/// A permission entry: a subject and, for subscribe entries, an optional queue group.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    /// The entry as configured, for explanations.
    written: String,
    subject: Template,
    queue: Option<Template>,
}

impl Entry {
    pub(super) fn has_template(&self) -> bool {
        !self.subject.is_literal() || self.queue.as_ref().is_some_and(|queue| !queue.is_literal())
    }

    /// The entry as configured.
    pub(super) fn written(&self) -> &str {
        &self.written
    }

    /// The subject as configured (templates unexpanded).
    pub(super) fn subject_text(&self) -> &str {
        self.written.split_whitespace().next().unwrap_or_default()
    }

    /// The queue group as configured, for a queue entry.
    pub(super) fn queue_text(&self) -> Option<&str> {
        self.written.split_whitespace().nth(1)
    }

    /// The template variables of its subject and queue.
    pub(super) fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.subject
            .variables()
            .chain(self.queue.iter().flat_map(Template::variables))
    }

    /// A plain deny entry `>`: nothing is allowed, whatever the allow list says.
    pub(super) fn denies_everything(&self) -> bool {
        self.queue.is_none() && self.written.trim() == ">"
    }
}

/// One direction (publish or subscribe) of a rule. `allow: None` is unrestricted.
#[derive(Clone, Debug, Default)]
struct DirectionRules {
    allow: Option<Vec<Entry>>,
    deny: Vec<Entry>,
}

#[derive(Debug)]
struct CompiledRule {
    name: String,
    from: Option<FromClause>,
    publish: DirectionRules,
    subscribe: DirectionRules,
    responses: Option<ResponsePermission>,
    has_templates: bool,
}

/// Upstream credentials natsguard puts into the CONNECT it forwards.
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamCredentials {
    /// `user` + `pass`.
    UserPassword {
        /// CONNECT `user`.
        user: String,
        /// CONNECT `pass`.
        pass: String,
    },
    /// `auth_token`.
    Token(String),
}

impl std::fmt::Debug for UpstreamCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamCredentials::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, pass: <redacted> }}")
            }
            UpstreamCredentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// Where an nkey seed comes from (`trusted_proxy`, `provenance.sign`).
#[derive(Clone, PartialEq, Eq)]
pub enum NkeySeed {
    /// The seed itself (validated with the identity module's `NkeySigner::from_seed`).
    Seed(String),
    /// An environment variable the filter reads at start.
    Env(String),
}

impl std::fmt::Debug for NkeySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NkeySeed::Seed(_) => f.write_str("Seed(<redacted>)"),
            NkeySeed::Env(name) => write!(f, "Env({name:?})"),
        }
    }
}

/// Whether a rule applies to an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    pub name: String,
    /// Why it does not apply (`None`: it applies).
    pub mismatch: Option<String>,
}

/// No rule matched the identity and `default_action` is `deny`: refuse the connection at
/// CONNECT with `Authorization Violation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoMatchingRule;

impl std::fmt::Display for NoMatchingRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no rule matches the connection's identity and default_action is deny")
    }
}

impl std::error::Error for NoMatchingRule {}

/// A validated, compiled configuration.
#[derive(Debug)]
pub struct Policy {
    identity: IdentityConfig,
    default_action: DefaultAction,
    rules: Vec<CompiledRule>,
    upstream: Option<UpstreamCredentials>,
    trusted_proxy: Option<NkeySeed>,
    limits: LimitsConfig,
    strip_connect_urls: bool,
    unrestricted: Arc<EffectivePermissions>,
    /// Compiled permission sets of template-free rule combinations, shared by connections.
    shared: Mutex<BTreeMap<Vec<usize>, Arc<EffectivePermissions>>>,
    version: String,
    mode: Mode,
    /// The policy every decision is also made under and reported (not applied).
    shadow: Option<Box<Policy>>,
    /// The dimensions of the labelled metrics that are on, in stat name order.
    dimensions: Vec<Dimension>,
    /// `audit.subscriptions`.
    audit_subscriptions: bool,
    provenance: Option<Provenance>,
    reserved_headers: ReservedHeaders,
}

/// Hex digits of the configuration's SHA-256 that name a policy version.
const VERSION_DIGITS: usize = 12;

/// The version of a configuration text: the first hex digits of its SHA-256, so a log line, an
/// audit line and `natsguard check` name the same configuration the same way.
pub fn policy_version(json: &str) -> String {
    hmac_sha256::Hash::hash(json.as_bytes())
        .iter()
        .flat_map(|byte| [byte >> 4, byte & 0xf])
        .take(VERSION_DIGITS)
        .map(|nibble| char::from_digit(u32::from(nibble), 16).unwrap_or('0'))
        .collect()
}

/// A compiled policy and the warnings the filter should log.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The compiled policy.
    pub policy: Policy,
    /// What it probably did not mean ([`super::lint`]), for the log and `natsguard check`.
    pub warnings: Vec<Warning>,
}

impl Policy {
    /// Parses, validates and compiles a JSON configuration.
    pub fn from_json(json: &str) -> Result<LoadedPolicy, ConfigError> {
        let mut config = Config::from_json(json)?;
        let version = policy_version(json);
        let Some(shadow) = config.shadow.take() else {
            return Policy::compile(config, version);
        };
        if config.mode == Mode::DryRun {
            return Err(ConfigError::new(
                "shadow",
                "a dry run evaluates the policy itself: put the candidate policy in the policy, not in shadow",
            ));
        }
        // The shadow is the enforced policy with its own parts replaced.
        let shadow_config = Config {
            identity: shadow.identity.unwrap_or_else(|| config.identity.clone()),
            default_action: shadow.default_action.unwrap_or(config.default_action),
            rules: shadow.rules.unwrap_or_else(|| config.rules.clone()),
            ..config.clone()
        };
        // The policy first: an error in a part the shadow inherits is reported at its own path.
        let mut loaded = Policy::compile(config, version.clone())?;
        let LoadedPolicy {
            policy: shadow,
            warnings: shadow_warnings,
        } = Policy::compile(shadow_config, version).map_err(|error| {
            let path = match error.path.as_str() {
                "$" => "shadow".to_owned(),
                path => format!("shadow.{path}"),
            };
            ConfigError::new(path, error.reason)
        })?;
        loaded.policy.shadow = Some(Box::new(shadow));
        // A part the shadow inherits says what the policy's own warning says already.
        let shadow_warnings: Vec<Warning> = shadow_warnings
            .into_iter()
            .filter(|warning| !loaded.warnings.contains(warning))
            .map(|warning| Warning {
                path: format!("shadow.{}", warning.path),
                message: warning.message,
            })
            .collect();
        loaded.warnings.extend(shadow_warnings);
        Ok(loaded)
    }

    /// Validates and compiles a parsed configuration; any problem rejects it as a whole.
    fn compile(config: Config, version: String) -> Result<LoadedPolicy, ConfigError> {
        // Building the authenticator validates the identity block and compiles its static JWKS,
        // so an unusable key set rejects the configuration too.
        crate::identity::Authenticator::new(&config.identity).map_err(|issue| {
            let path = match issue.path.as_str() {
                "" => "identity".to_owned(),
                relative => format!("identity.{relative}"),
            };
            ConfigError::new(path, issue.reason)
        })?;
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut names: HashSet<&str> = HashSet::new();
        for (index, rule) in config.rules.iter().enumerate() {
            let path = format!("rules[{index}]");
            if rule.name.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    "must not be empty",
                ));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("duplicate rule name {:?}", rule.name),
                ));
            }
            let from = rule
                .from
                .as_ref()
                .map(|from| compile_from(from, &format!("{path}.from")))
                .transpose()?;
            let permissions_path = format!("{path}.permissions");
            let permissions = &rule.permissions;
            let responses = permissions
                .allow_responses
                .as_ref()
                .map(|responses| {
                    compile_responses(responses, &format!("{permissions_path}.allow_responses"))
                })
                .transpose()?
                .flatten();
            let mut publish = compile_direction(
                permissions.publish.as_ref(),
                &format!("{permissions_path}.publish"),
                false,
            )?;
            if responses.is_some() && publish.allow.is_none() {
                // nats-server: allow_responses without a publish allow list installs an empty
                // one, so only reply subjects (and explicit allows) are publishable.
                publish.allow = Some(Vec::new());
            }
            let subscribe = compile_direction(
                permissions.subscribe.as_ref(),
                &format!("{permissions_path}.subscribe"),
                true,
            )?;
            let has_templates = [&publish, &subscribe]
                .iter()
                .flat_map(|direction| direction.allow.iter().flatten().chain(&direction.deny))
                .any(Entry::has_template);
            rules.push(CompiledRule {
                name: rule.name.clone(),
                from,
                publish,
                subscribe,
                responses,
                has_templates,
            });
        }
        let upstream = config.upstream.as_ref().map(compile_upstream).transpose()?;
        let warnings = lint(&config);
        let trusted_proxy = config
            .trusted_proxy
            .as_ref()
            .map(|seed| compile_seed(seed, "trusted_proxy"))
            .transpose()?;
        let provenance = config
            .provenance
            .as_ref()
            .map(Provenance::compile)
            .transpose()?;
        let reserved_headers = ReservedHeaders::compile(
            &config.reserved_headers,
            provenance.as_ref(),
            config.reserved_header_action,
        )?;
        validate_limits(&config.limits)?;
        let dimensions = compile_dimensions(&config.telemetry)?;
        let unrestricted = Arc::new(EffectivePermissions::unrestricted(
            Vec::new(),
            config.limits.decision_cache_entries as usize,
        ));
        let policy = Policy {
            identity: config.identity,
            default_action: config.default_action,
            rules,
            upstream,
            trusted_proxy,
            limits: config.limits,
            strip_connect_urls: config.strip_connect_urls,
            unrestricted,
            shared: Mutex::new(BTreeMap::new()),
            version,
            mode: config.mode,
            shadow: None,
            dimensions,
            audit_subscriptions: config.audit.subscriptions,
            provenance,
            reserved_headers,
        };
        Ok(LoadedPolicy { policy, warnings })
    }

    /// The effective permissions of a connection with this identity: the union of the allows
    /// and of the denies of every matching rule (deny wins), templates expanded.
    pub fn resolve(
        &self,
        identity: &dyn IdentityFacts,
    ) -> Result<ConnectionPermissions, NoMatchingRule> {
        let matched: Vec<usize> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.from.as_ref().is_none_or(|from| from.matches(identity)))
            .map(|(index, _)| index)
            .collect();
        if matched.is_empty() {
            return match self.default_action {
                DefaultAction::Deny => Err(NoMatchingRule),
                DefaultAction::Allow => {
                    Ok(ConnectionPermissions::new(Arc::clone(&self.unrestricted)))
                }
            };
        }
        let templated = matched.iter().any(|&index| self.rules[index].has_templates);
        let effective = if templated {
            Arc::new(self.build(&matched, identity))
        } else {
            self.shared_build(matched, identity)
        };
        Ok(ConnectionPermissions::new(effective))
    }

    fn shared_build(
        &self,
        matched: Vec<usize>,
        identity: &dyn IdentityFacts,
    ) -> Arc<EffectivePermissions> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = shared.get(&matched) {
            return Arc::clone(existing);
        }
        let built = Arc::new(self.build(&matched, identity));
        if shared.len() < MAX_SHARED_COMBINATIONS {
            shared.insert(matched, Arc::clone(&built));
        }
        built
    }

    fn build(&self, matched: &[usize], identity: &dyn IdentityFacts) -> EffectivePermissions {
        let rules: Vec<&CompiledRule> = matched.iter().map(|&index| &self.rules[index]).collect();
        let names = rules.iter().map(|rule| rule.name.clone()).collect();
        let mut entries = Vec::new();
        let (publish_allow, publish_deny, _) = union_direction(
            rules.iter().map(|rule| (rule.name.as_str(), &rule.publish)),
            identity,
            [EntryList::PublishAllow, EntryList::PublishDeny],
            &mut entries,
        );
        let (subscribe_allow, subscribe_deny, subscribe_deny_subjects) = union_direction(
            rules
                .iter()
                .map(|rule| (rule.name.as_str(), &rule.subscribe)),
            identity,
            [EntryList::SubscribeAllow, EntryList::SubscribeDeny],
            &mut entries,
        );
        let responses = rules
            .iter()
            .filter_map(|rule| rule.responses)
            .reduce(ResponsePermission::most_permissive);
        EffectivePermissions {
            matched_rules: names,
            publish_allow,
            publish_deny,
            subscribe_allow,
            subscribe_deny,
            subscribe_deny_subjects,
            responses,
            decision_cache_entries: self.limits.decision_cache_entries as usize,
            entries,
        }
    }

    /// The `identity` configuration, for the identity module.
    pub fn identity_config(&self) -> &IdentityConfig {
        &self.identity
    }

    /// `default_action`.
    pub fn default_action(&self) -> DefaultAction {
        self.default_action
    }

    /// `upstream` credentials, if configured.
    pub fn upstream(&self) -> Option<&UpstreamCredentials> {
        self.upstream.as_ref()
    }

    /// `trusted_proxy` seed source, if configured.
    pub fn trusted_proxy(&self) -> Option<&NkeySeed> {
        self.trusted_proxy.as_ref()
    }

    /// `provenance`, if configured.
    pub fn provenance(&self) -> Option<&Provenance> {
        self.provenance.as_ref()
    }

    /// `reserved_headers` (with the provenance names) and `reserved_header_action`.
    pub fn reserved_headers(&self) -> &ReservedHeaders {
        &self.reserved_headers
    }

    /// Every seed the configuration reads from an environment variable, with the JSON path of
    /// its `seed_env`.
    pub fn seed_envs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let seeds = [
            ("trusted_proxy.seed_env", self.trusted_proxy()),
            (
                "provenance.sign.seed_env",
                self.provenance().and_then(Provenance::sign),
            ),
        ];
        seeds.into_iter().filter_map(|(path, seed)| match seed {
            Some(NkeySeed::Env(name)) => Some((path, name.as_str())),
            _ => None,
        })
    }

    /// `limits`.
    pub fn limits(&self) -> LimitsConfig {
        self.limits
    }

    /// `strip_connect_urls`.
    pub fn strip_connect_urls(&self) -> bool {
        self.strip_connect_urls
    }

    /// The configuration's version (see [`policy_version`]).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Permissions that allow everything (what a dry run applies).
    pub fn unrestricted_permissions(&self) -> ConnectionPermissions {
        ConnectionPermissions::new(Arc::clone(&self.unrestricted))
    }

    /// `mode`.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The `shadow` policy, compiled (its own identity, default action and rules; the rest is
    /// this one's).
    pub fn shadow(&self) -> Option<&Policy> {
        self.shadow.as_deref()
    }

    /// Whether each rule applies to `identity`, and for the others why not.
    pub fn rule_matches(&self, identity: &dyn IdentityFacts) -> Vec<RuleMatch> {
        self.rules
            .iter()
            .map(|rule| RuleMatch {
                name: rule.name.clone(),
                mismatch: rule.from.as_ref().and_then(|from| from.mismatch(identity)),
            })
            .collect()
    }

    /// The dimensions of the labelled metrics that are on, in the order stat names carry them.
    pub fn dimensions(&self) -> &[Dimension] {
        &self.dimensions
    }

    /// `audit.subscriptions`: an audit line for every SUB and UNSUB.
    pub fn audit_subscriptions(&self) -> bool {
        self.audit_subscriptions
    }

    /// Names of the configured rules, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.name.as_str())
    }
}

type DirectionUnion = (Option<PatternTrie>, Option<PatternTrie>, Vec<Box<[u8]>>);

/// Unites one direction over several rules: unrestricted if any rule is, otherwise all allow
/// entries; all deny entries. A plain allow entry whose template cannot be expanded is dropped
/// (so a list can end up empty: nothing allowed); a queue allow entry keeps restricting without
/// granting a queue, and a deny entry widens (see `Template`): what cannot be read denies more.
fn union_direction<'a>(
    directions: impl Iterator<Item = (&'a str, &'a DirectionRules)> + Clone,
    identity: &dyn IdentityFacts,
    [allow_list, deny_list]: [EntryList; 2],
    entries: &mut Vec<PermissionEntry>,
) -> DirectionUnion {
    let mut record = |rule: &str, list, entry: &Entry, subject: &str, queue: Option<&str>, note| {
        entries.push(PermissionEntry {
            rule: rule.into(),
            list,
            written: entry.written.as_str().into(),
            subject: subject.into(),
            is_queue_entry: entry.queue.is_some(),
            queue: queue.map(Into::into),
            note,
        });
        (entries.len() - 1) as u32
    };
    let unrestricted = directions
        .clone()
        .any(|(_, direction)| direction.allow.is_none());
    let allow = (!unrestricted).then(|| {
        let mut trie = PatternTrie::default();
        for (rule, direction) in directions.clone() {
            for entry in direction.allow.iter().flatten() {
                let subject = entry.subject.expand(identity);
                match (&entry.queue, subject) {
                    (None, Some(subject)) => {
                        let origin = record(rule, allow_list, entry, &subject, None, None);
                        trie.insert(subject.as_bytes(), None, origin)
                    }
                    // A plain entry that cannot be expanded grants nothing: dropped.
                    (None, None) => {}
                    (Some(queue), subject) => match (queue.expand(identity), subject) {
                        (Some(queue), Some(subject)) => {
                            let origin =
                                record(rule, allow_list, entry, &subject, Some(&queue), None);
                            trie.insert(subject.as_bytes(), Some(queue.as_bytes()), origin)
                        }
                        // A queue entry also restricts: whatever cannot be expanded still limits
                        // queue subscribers (the subject widened as in a deny entry), granting
                        // none.
                        (_, subject) => {
                            let subject = subject
                                .unwrap_or_else(|| entry.subject.expand_for_deny(identity, false));
                            let note = Some("a template could not be filled: it restricts queue subscribers without granting a queue");
                            let origin = record(rule, allow_list, entry, &subject, None, note);
                            trie.insert_queue_restriction(subject.as_bytes(), origin);
                        }
                    },
                }
            }
        }
        trie
    });
    let mut deny = PatternTrie::default();
    let mut deny_subjects = Vec::new();
    for (rule, direction) in directions {
        for entry in &direction.deny {
            let subject = entry.subject.expand_for_deny(identity, false);
            let queue = entry
                .queue
                .as_ref()
                .map(|queue| queue.expand_for_deny(identity, true));
            let widened = entry.subject.expand(identity).is_none()
                || entry
                    .queue
                    .as_ref()
                    .is_some_and(|q| q.expand(identity).is_none());
            let note = widened.then_some("a template could not be filled: the deny is widened");
            let origin = record(rule, deny_list, entry, &subject, queue.as_deref(), note);
            deny.insert(
                subject.as_bytes(),
                queue.as_deref().map(str::as_bytes),
                origin,
            );
            deny_subjects.push(subject.into_bytes().into_boxed_slice());
        }
    }
    let deny = (deny.len() > 0).then_some(deny);
    (allow, deny, deny_subjects)
}

fn compile_from(from: &FromConfig, path: &str) -> Result<FromClause, ConfigError> {
    let string_matches = |values: &Option<Vec<String>>,
                          key: &str|
     -> Result<Option<Vec<StringMatch>>, ConfigError> {
        let Some(values) = values else {
            return Ok(None);
        };
        if values.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.{key}"),
                "must not be empty (omit the key to match any value)",
            ));
        }
        values
            .iter()
            .enumerate()
            .map(|(index, value)| {
                StringMatch::parse(value)
                    .map_err(|reason| ConfigError::new(format!("{path}.{key}[{index}]"), reason))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    let mut claims = Vec::new();
    if let Some(configured) = &from.claims {
        if configured.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.claims"),
                "must not be empty (omit the key to match any claims)",
            ));
        }
        for (name, accepted) in configured {
            let claim_path = format!("{path}.claims.{name}");
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(ConfigError::new(
                    claim_path,
                    "claim name must be a name or a dot path without empty segments",
                ));
            }
            if accepted.is_empty() {
                return Err(ConfigError::new(
                    claim_path,
                    "must list at least one accepted value",
                ));
            }
            let accepted = accepted
                .iter()
                .enumerate()
                .map(|(index, value)| {
                    StringMatch::parse(value).map_err(|reason| {
                        ConfigError::new(format!("{claim_path}[{index}]"), reason)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            claims.push(ClaimCondition {
                path: name.clone(),
                accepted,
            });
        }
    }
    Ok(FromClause {
        principals: string_matches(&from.principals, "principals")?,
        namespaces: string_matches(&from.namespaces, "namespaces")?,
        request_principals: string_matches(&from.request_principals, "request_principals")?,
        claims,
    })
}

fn compile_direction(
    permission: Option<&SubjectPermissionConfig>,
    path: &str,
    queues_allowed: bool,
) -> Result<DirectionRules, ConfigError> {
    let Some(permission) = permission else {
        return Ok(DirectionRules::default());
    };
    let compile_list = |list: &str, entries: &[String]| -> Result<Vec<Entry>, ConfigError> {
        entries
            .iter()
            .enumerate()
            .map(|(index, text)| {
                compile_entry(text, queues_allowed).map_err(|reason| {
                    ConfigError::new(permission.entry_path(path, list, index), reason)
                })
            })
            .collect()
    };
    let allow = compile_list("allow", &permission.allow)?;
    let deny = compile_list("deny", &permission.deny)?;
    // nats-server: an empty allow list means no list, i.e. unrestricted.
    let allow = (!allow.is_empty()).then_some(allow);
    Ok(DirectionRules { allow, deny })
}

/// Parses `"subject"` or (subscribe only) `"subject queue"`, templates included.
pub(super) fn compile_entry(text: &str, queues_allowed: bool) -> Result<Entry, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let (subject, queue) = match fields.as_slice() {
        [subject] => (*subject, None),
        [subject, queue] if queues_allowed => (*subject, Some(*queue)),
        [_, _] => return Err(format!("{text:?}: publish entries take no queue group")),
        [] => return Err("must not be empty".to_owned()),
        _ => {
            return Err(format!(
                "{text:?}: expected \"subject\" or \"subject queue\""
            ))
        }
    };
    let parse = |part: &str, what: &str| -> Result<Template, String> {
        let template = Template::parse(part)?;
        if !is_valid_subject(&template.validation_form()) {
            return Err(format!("invalid {what} {part:?}"));
        }
        Ok(template)
    };
    let subject = parse(subject, "subject")?;
    let queue = queue.map(|queue| parse(queue, "queue group")).transpose()?;
    Ok(Entry {
        written: text.to_owned(),
        subject,
        queue,
    })
}

fn compile_responses(
    responses: &AllowResponsesConfig,
    path: &str,
) -> Result<Option<ResponsePermission>, ConfigError> {
    let (max, expires) = match responses {
        AllowResponsesConfig::Enabled(false) => return Ok(None),
        AllowResponsesConfig::Enabled(true) => (None, None),
        AllowResponsesConfig::Limits { max, expires } => (*max, expires.as_deref()),
    };
    let max_msgs = match max.unwrap_or(0) {
        0 => DEFAULT_RESPONSE_MAX_MSGS,
        max => max,
    };
    let expires_nanos = match expires.map(parse_go_duration).transpose() {
        Ok(None | Some(0)) => DEFAULT_RESPONSE_EXPIRES_NANOS,
        Ok(Some(nanos)) => nanos,
        Err(reason) => return Err(ConfigError::new(format!("{path}.expires"), reason)),
    };
    Ok(Some(ResponsePermission {
        max_msgs,
        expires_nanos,
    }))
}

fn compile_upstream(upstream: &UpstreamConfig) -> Result<UpstreamCredentials, ConfigError> {
    let non_empty = |value: &Option<String>, key: &str| -> Result<Option<String>, ConfigError> {
        match value {
            Some(text) if text.is_empty() => Err(ConfigError::new(
                format!("upstream.{key}"),
                "must not be empty",
            )),
            other => Ok(other.clone()),
        }
    };
    let user = non_empty(&upstream.user, "user")?;
    let pass = non_empty(&upstream.pass, "pass")?;
    let token = non_empty(&upstream.auth_token, "auth_token")?;
    match (user, pass, token) {
        (Some(user), Some(pass), None) => Ok(UpstreamCredentials::UserPassword { user, pass }),
        (None, None, Some(token)) => Ok(UpstreamCredentials::Token(token)),
        _ => Err(ConfigError::new(
            "upstream",
            "expected either \"user\" and \"pass\", or \"auth_token\" alone",
        )),
    }
}

/// An nkey seed at `path` (`trusted_proxy`, `provenance.sign`): the seed itself, checked, or the
/// name of the environment variable the filter reads it from.
pub(super) fn compile_seed(config: &NkeySeedConfig, path: &str) -> Result<NkeySeed, ConfigError> {
    match (&config.seed, &config.seed_env) {
        (Some(seed), None) => NkeySigner::from_seed(seed)
            .map(|_| NkeySeed::Seed(seed.clone()))
            .map_err(|error| {
                ConfigError::new(
                    format!("{path}.seed"),
                    format!("invalid nkey seed: {error}"),
                )
            }),
        (None, Some(name)) => {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if valid {
                Ok(NkeySeed::Env(name.clone()))
            } else {
                Err(ConfigError::new(
                    format!("{path}.seed_env"),
                    format!("{name:?} is not an environment variable name"),
                ))
            }
        }
        _ => Err(ConfigError::new(
            path,
            "expected either \"seed\" or \"seed_env\"",
        )),
    }
}

/// `telemetry.dimensions`, each named once, in stat name order.
fn compile_dimensions(telemetry: &TelemetryConfig) -> Result<Vec<Dimension>, ConfigError> {
    let mut seen = Vec::with_capacity(telemetry.dimensions.len());
    for (index, dimension) in telemetry.dimensions.iter().enumerate() {
        if seen.contains(dimension) {
            return Err(ConfigError::new(
                format!("telemetry.dimensions[{index}]"),
                format!("{:?} is listed twice", dimension.tag()),
            ));
        }
        seen.push(*dimension);
    }
    Ok(Dimension::ALL
        .into_iter()
        .filter(|dimension| seen.contains(dimension))
        .collect())
}

fn validate_limits(limits: &LimitsConfig) -> Result<(), ConfigError> {
    if limits.max_connect_line == 0 || limits.max_connect_line > MAX_CONNECT_LINE_LIMIT {
        return Err(ConfigError::new(
            "limits.max_connect_line",
            format!("must be between 1 and {MAX_CONNECT_LINE_LIMIT}"),
        ));
    }
    if limits.decision_cache_entries > MAX_DECISION_CACHE_ENTRIES {
        return Err(ConfigError::new(
            "limits.decision_cache_entries",
            format!("must be at most {MAX_DECISION_CACHE_ENTRIES}"),
        ));
    }
    Ok(())
}

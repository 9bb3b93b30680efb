//! natsguard's JSON configuration (the user-facing contract): serde types with
//! `deny_unknown_fields`, and [`ConfigError`], which names the JSON path of every problem.
//! Semantic validation happens when the configuration is compiled (`compile.rs`).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::identity::IdentityConfig;

/// A configuration error: the JSON path (`rules[3].permissions.publish.allow[1]`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending value; `$` is the document itself.
    pub path: String,
    /// Human-readable reason.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", one_line(&self.path), one_line(&self.reason))
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`): an error or a warning naming
/// what a configuration contains stays one line, in a log and on a terminal.
pub(crate) fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| match c {
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect::<String>()
        .into()
}

impl std::error::Error for ConfigError {}

/// The whole configuration document.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How connections prove who they are (owned by the identity module).
    #[serde(default)]
    pub identity: IdentityConfig,
    /// What a connection matching no rule gets.
    #[serde(default)]
    pub default_action: DefaultAction,
    /// Permission rules; a connection gets the union of the rules it matches.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Credentials natsguard puts into the CONNECT it forwards.
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
    /// nkey seed with which natsguard signs the server nonce (`proxy_sig`).
    #[serde(default)]
    pub trusted_proxy: Option<NkeySeedConfig>,
    /// Resource limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Remove `connect_urls`/`ws_connect_urls` from every INFO (default true).
    #[serde(default = "default_true")]
    pub strip_connect_urls: bool,
    /// `enforce` (default) or `dry_run` (evaluated and reported, nothing enforced).
    #[serde(default)]
    pub mode: Mode,
    /// A second policy every decision is also made under, only reported.
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
    /// What the labelled metrics carry.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Optional audit lines.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The verified publisher identity in the headers of messages on chosen subjects.
    #[serde(default)]
    pub provenance: Option<ProvenanceConfig>,
    /// Header names no client may publish (the provenance headers are added to them).
    #[serde(default = "default_reserved_headers")]
    pub reserved_headers: Vec<String>,
    /// What a client publish carrying a reserved header gets.
    #[serde(default)]
    pub reserved_header_action: ReservedHeaderAction,
}

/// `telemetry`: the dimensions (Envoy stat tags, Prometheus labels) of natsguard's labelled
/// metrics. Each one multiplies the series Envoy keeps and Prometheus stores.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The dimensions that are on (default: all of them).
    pub dimensions: Vec<Dimension>,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            dimensions: Dimension::ALL.to_vec(),
        }
    }
}

/// One dimension of the labelled metrics. The operation (publish, subscribe, deliver, connect)
/// is the metric's name; none of them is ever a subject or a token's subject (unbounded).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// `allowed`, `denied` (deliveries: filtered), `revoked` (by a newer configuration).
    Decision,
    /// Why a connection was refused or revoked (the audit line's `reason`).
    Reason,
    /// The namespace of the client's SPIFFE ID (`unknown` without one).
    Namespace,
    /// The service account of the client's SPIFFE ID (`unknown` without one).
    ServiceAccount,
    /// The rules the connection matched (its permissions are theirs).
    Rule,
}

impl Dimension {
    /// In the order they appear in stat names.
    pub const ALL: [Dimension; 5] = [
        Dimension::Decision,
        Dimension::Reason,
        Dimension::Namespace,
        Dimension::ServiceAccount,
        Dimension::Rule,
    ];

    /// The Envoy tag and Prometheus label name.
    pub fn tag(self) -> &'static str {
        match self {
            Dimension::Decision => "decision",
            Dimension::Reason => "reason",
            Dimension::Namespace => "namespace",
            Dimension::ServiceAccount => "service_account",
            Dimension::Rule => "rule",
        }
    }
}

/// `audit`: audit lines beyond the default ones (connections, denials, revocations).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// One line for every SUB and UNSUB, allowed or not (default false).
    pub subscriptions: bool,
}

/// The default `reserved_headers`: nats-server's own identity header, which it sets on
/// requests through service imports and which a client can otherwise forge.
pub const DEFAULT_RESERVED_HEADERS: [&str; 1] = ["Nats-Request-Info"];
/// The default `provenance.header`.
pub const DEFAULT_PROVENANCE_HEADER: &str = "Nats-Publisher";

fn default_reserved_headers() -> Vec<String> {
    DEFAULT_RESERVED_HEADERS.map(String::from).to_vec()
}

fn default_provenance_header() -> String {
    DEFAULT_PROVENANCE_HEADER.to_owned()
}

/// `provenance`: which messages get the publisher's identity in their headers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceConfig {
    /// nats-server subject patterns of the publishes stamped; default none.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The SPIFFE ID's header; `<header>-Subject` carries the JWT's `iss/sub`, `<header>-Sig`
    /// the signature.
    #[serde(default = "default_provenance_header")]
    pub header: String,
    /// An nkey seed that signs the provenance headers.
    #[serde(default)]
    pub sign: Option<NkeySeedConfig>,
}

/// `reserved_header_action`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReservedHeaderAction {
    /// The header is removed, the message goes on.
    #[default]
    Remove,
    /// The publish is refused like a denied one (`Permissions Violation for Publish to ...`).
    Refuse,
}

/// `mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decisions are applied.
    #[default]
    Enforce,
    /// Decisions are made and reported as what the policy would do; nothing is denied, refused
    /// or filtered, and the client's CONNECT reaches nats-server as it was sent.
    DryRun,
}

/// `shadow`: the parts of a policy to evaluate beside the enforced one; a missing part is the
/// enforced policy's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    #[serde(default)]
    pub default_action: Option<DefaultAction>,
    #[serde(default)]
    pub rules: Option<Vec<RuleConfig>>,
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Parses the JSON document; unknown fields and wrong types are errors naming their path.
    pub fn from_json(json: &str) -> Result<Config, ConfigError> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let config: Config =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let path = error.path().to_string();
                let path = if path == "." { "$".to_owned() } else { path };
                ConfigError::new(path, error.into_inner().to_string())
            })?;
        deserializer
            .end()
            .map_err(|error| ConfigError::new("$", error.to_string()))?;
        Ok(config)
    }
}

/// `default_action`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// No matching rule: the connection is refused at CONNECT (Authorization Violation).
    #[default]
    Deny,
    /// No matching rule: the connection is unrestricted.
    Allow,
}

/// One entry of `rules`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name, reported in logs.
    pub name: String,
    /// Which connections the rule applies to; absent: every authenticated connection.
    #[serde(default)]
    pub from: Option<FromConfig>,
    /// nats-server's permissions block.
    #[serde(default)]
    pub permissions: PermissionsConfig,
}

/// `rules[].from`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromConfig {
    /// SPIFFE IDs without `spiffe://` (Istio string matches).
    #[serde(default)]
    pub principals: Option<Vec<String>>,
    /// Namespaces from `/ns/<ns>/sa/<sa>` SPIFFE paths.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Claim name (or dot path) → accepted values.
    #[serde(default)]
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    /// `iss/sub` of the verified JWT.
    #[serde(default)]
    pub request_principals: Option<Vec<String>>,
}

/// `rules[].permissions`: nats-server's permissions block.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsConfig {
    /// Publish permissions; absent: unrestricted.
    #[serde(default)]
    pub publish: Option<SubjectPermissionConfig>,
    /// Subscribe permissions; absent: unrestricted.
    #[serde(default)]
    pub subscribe: Option<SubjectPermissionConfig>,
    /// Dynamic publish permission on reply subjects of delivered messages.
    #[serde(default)]
    pub allow_responses: Option<AllowResponsesConfig>,
}

/// How a subject permission was written; it decides the JSON path of its entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PermissionForm {
    /// `{"allow": [...], "deny": [...]}`.
    #[default]
    Object,
    /// `["a", "b"]`: an allow list.
    List,
    /// `"a"`: a one-entry allow list.
    Single,
}

/// `publish` / `subscribe`: an object with `allow`/`deny`, or nats-server's shorthand (a subject
/// or a list of subjects, meaning `allow`).
#[derive(Clone, Debug, Default)]
pub struct SubjectPermissionConfig {
    /// Allowed subjects (subscribe: `"subject"` or `"subject queue"`); empty: unrestricted.
    pub allow: Vec<String>,
    /// Denied subjects; deny wins over allow.
    pub deny: Vec<String>,
    /// The form it was written in.
    pub form: PermissionForm,
}

impl SubjectPermissionConfig {
    /// The JSON path of entry `index` of `list` (`allow`/`deny`), for a permission at `path`.
    pub(crate) fn entry_path(&self, path: &str, list: &str, index: usize) -> String {
        match self.form {
            PermissionForm::Object => format!("{path}.{list}[{index}]"),
            PermissionForm::List => format!("{path}[{index}]"),
            PermissionForm::Single => path.to_owned(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowDenyObject {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

impl<'de> Deserialize<'de> for SubjectPermissionConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PermissionVisitor;
        impl<'de> Visitor<'de> for PermissionVisitor {
            type Value = SubjectPermissionConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a subject, a list of subjects, or an object with \"allow\"/\"deny\"")
            }
            fn visit_str<E: de::Error>(self, subject: &str) -> Result<Self::Value, E> {
                Ok(SubjectPermissionConfig {
                    allow: vec![subject.to_owned()],
                    deny: Vec::new(),
                    form: PermissionForm::Single,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let allow = Vec::<String>::deserialize(SeqAccessDeserializer::new(seq))?;
                Ok(SubjectPermissionConfig {
                    allow,
                    deny: Vec::new(),
                    form: PermissionForm::List,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let object = AllowDenyObject::deserialize(MapAccessDeserializer::new(map))?;
                Ok(SubjectPermissionConfig {
                    allow: object.allow,
                    deny: object.deny,
                    form: PermissionForm::Object,
                })
            }
        }
        deserializer.deserialize_any(PermissionVisitor)
    }
}

/// `allow_responses`: `true`/`false`, or `{ "max": N, "expires": "dur" }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowResponsesConfig {
    /// `true` (nats-server defaults: max 1, expires 2m) or `false` (off).
    Enabled(bool),
    /// Explicit limits; 0 or absent means the default, negative means unlimited.
    Limits {
        /// Responses allowed per reply subject.
        max: Option<i64>,
        /// Go duration after which the reply subject is no longer publishable.
        expires: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseLimitsObject {
    #[serde(default)]
    max: Option<i64>,
    #[serde(default)]
    expires: Option<String>,
}

impl<'de> Deserialize<'de> for AllowResponsesConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ResponsesVisitor;
        impl<'de> Visitor<'de> for ResponsesVisitor {
            type Value = AllowResponsesConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, or an object with \"max\"/\"expires\"")
            }
            fn visit_bool<E: de::Error>(self, enabled: bool) -> Result<Self::Value, E> {
                Ok(AllowResponsesConfig::Enabled(enabled))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let limits = ResponseLimitsObject::deserialize(MapAccessDeserializer::new(map))?;
                Ok(AllowResponsesConfig::Limits {
                    max: limits.max,
                    expires: limits.expires,
                })
            }
        }
        deserializer.deserialize_any(ResponsesVisitor)
    }
}

/// `upstream`: `{"user", "pass"}` or `{"auth_token"}`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// CONNECT `user`.
    #[serde(default)]
    pub user: Option<String>,
    /// CONNECT `pass`.
    #[serde(default)]
    pub pass: Option<String>,
    /// CONNECT `auth_token`.
    #[serde(default)]
    pub auth_token: Option<String>,
}

/// Secrets stay out of logs.
impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "<redacted>"))
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// An nkey seed (`trusted_proxy`, `provenance.sign`): `{"seed"}` or `{"seed_env"}`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NkeySeedConfig {
    /// The nkey seed itself.
    #[serde(default)]
    pub seed: Option<String>,
    /// Name of the environment variable the filter reads the seed from at start.
    #[serde(default)]
    pub seed_env: Option<String>,
}

/// Secrets stay out of logs.
impl fmt::Debug for NkeySeedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NkeySeedConfig")
            .field("seed", &self.seed.as_ref().map(|_| "<redacted>"))
            .field("seed_env", &self.seed_env)
            .finish()
    }
}

/// Default `limits.max_connect_line`.
pub const DEFAULT_MAX_CONNECT_LINE: u32 = 65_536;
/// Default `limits.decision_cache_entries`.
pub const DEFAULT_DECISION_CACHE_ENTRIES: u32 = 1_024;

/// `limits`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest CONNECT control line accepted from a client, in bytes.
    pub max_connect_line: u32,
    /// Per-connection decision cache slots (0 disables the cache).
    pub decision_cache_entries: u32,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_connect_line: DEFAULT_MAX_CONNECT_LINE,
            decision_cache_entries: DEFAULT_DECISION_CACHE_ENTRIES,
        }
    }
}

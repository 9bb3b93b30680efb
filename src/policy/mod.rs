//! The policy engine: natsguard's JSON configuration contract, compiled into rules that decide,
//! for one connection, what it may publish and subscribe, with nats-server's semantics
//! (server/sublist.go, server/client.go, server/auth.go) except where natsguard is deliberately
//! stricter (docs/policy.md lists those differences).
//!
//! Flow: [`load`] validates and compiles the configuration once (fail closed: any error rejects
//! it as a whole); [`Policy::resolve`] turns a connection's identity into its
//! [`ConnectionPermissions`] once, at CONNECT; the connection then asks it about every SUB, PUB
//! and delivered message.

mod cache;
mod compile;
mod config;
mod connection;
mod duration;
mod explain;
mod identity_facts;
mod lint;
mod provenance;
mod rules;
pub(crate) mod subject;
mod template;
mod trie;

pub use compile::{
    policy_version, LoadedPolicy, NkeySeed, NoMatchingRule, Policy, RuleMatch, UpstreamCredentials,
};
#[cfg(not(target_arch = "wasm32"))] // the command's own messages
pub(crate) use config::one_line;
pub use config::{
    AllowResponsesConfig, AuditConfig, Config, ConfigError, DefaultAction, Dimension, FromConfig,
    LimitsConfig, Mode, NkeySeedConfig, PermissionForm, PermissionsConfig, ProvenanceConfig,
    ReservedHeaderAction, RuleConfig, ShadowConfig, SubjectPermissionConfig, TelemetryConfig,
    UpstreamConfig, DEFAULT_DECISION_CACHE_ENTRIES, DEFAULT_MAX_CONNECT_LINE,
    DEFAULT_PROVENANCE_HEADER, DEFAULT_RESERVED_HEADERS,
};
pub use connection::{
    is_reserved_reply, ConnectionPermissions, EntryList, PermissionEntry, ResponsePermission,
    SubscribeDecision, MAX_TRACKED_REPLIES, MAX_TRACKED_REPLY_BYTES,
};
pub use explain::Ruling;
pub use identity_facts::IdentityFacts;
pub use lint::Warning;
pub use provenance::{Provenance, ProvenanceNames, ReservedHeaders, Selection};
pub use subject::is_valid_subject;

/// Parses, validates and compiles natsguard's JSON configuration.
pub fn load(json: &str) -> Result<LoadedPolicy, ConfigError> {
    Policy::from_json(json)
}

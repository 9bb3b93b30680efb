//! `provenance` and `reserved_headers` compiled: which publishes natsguard stamps with the
//! publisher's verified identity (and signs), under which header names, and which header names
//! no client may publish. The stamping itself is the engine's (`engine/provenance.rs`); the
//! header reading is the protocol module's (`protocol::headers`).

use super::cache::{DecisionCache, DecisionKind};
use super::compile::{compile_seed, NkeySeed};
use super::config::{ConfigError, ProvenanceConfig, ReservedHeaderAction};
use super::subject::is_valid_subject;
use super::trie::{MatchMode, PatternTrie};
use crate::protocol::headers::{is_token, HeaderNames};

/// Longest `provenance.header` and `reserved_headers` entry.
const MAX_HEADER_NAME: usize = 128;
/// Subjects whose selection a connection remembers (most streams use a few subjects).
const SELECTION_CACHE_ENTRIES: usize = 256;

/// The compiled `provenance` section.
#[derive(Debug)]
pub struct Provenance {
    subjects: Vec<String>,
    selected: PatternTrie,
    names: ProvenanceNames,
    sign: Option<NkeySeed>,
}

/// The headers natsguard writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenanceNames {
    /// The SPIFFE ID (`Nats-Publisher`).
    pub spiffe: String,
    /// The JWT's `iss/sub` (`Nats-Publisher-Subject`).
    pub jwt: String,
    /// The signature (`Nats-Publisher-Sig`).
    pub signature: String,
}

impl ProvenanceNames {
    /// The names derived from `header` (docs/provenance.md).
    pub fn derived_from(header: &str) -> ProvenanceNames {
        ProvenanceNames {
            spiffe: header.to_owned(),
            jwt: format!("{header}-Subject"),
            signature: format!("{header}-Sig"),
        }
    }

    /// All three.
    pub fn all(&self) -> [&str; 3] {
        [&self.spiffe, &self.jwt, &self.signature]
    }
}

impl Provenance {
    pub(super) fn compile(config: &ProvenanceConfig) -> Result<Provenance, ConfigError> {
        check_header_name(&config.header, "provenance.header")?;
        let mut selected = PatternTrie::default();
        for (index, subject) in config.subjects.iter().enumerate() {
            if !is_valid_subject(subject) {
                return Err(ConfigError::new(
                    format!("provenance.subjects[{index}]"),
                    format!("{subject:?} is not a valid subject"),
                ));
            }
            selected.insert(subject.as_bytes(), None, index as u32);
        }
        let sign = config
            .sign
            .as_ref()
            .map(|sign| compile_seed(sign, "provenance.sign"))
            .transpose()?;
        Ok(Provenance {
            subjects: config.subjects.clone(),
            selected,
            names: ProvenanceNames::derived_from(&config.header),
            sign,
        })
    }

    /// `provenance.subjects` as configured.
    pub fn subjects(&self) -> &[String] {
        &self.subjects
    }

    pub fn names(&self) -> &ProvenanceNames {
        &self.names
    }

    /// The seed that signs, when `provenance.sign` is set.
    pub fn sign(&self) -> Option<&NkeySeed> {
        self.sign.as_ref()
    }

    /// A connection's reading of `provenance.subjects`, with a cache of the subjects it met.
    pub fn selection(&self) -> Selection {
        Selection {
            cache: DecisionCache::new(SELECTION_CACHE_ENTRIES),
        }
    }

    /// Whether a publish to `subject` is stamped (a pattern matches it as nats-server matches
    /// a subscription).
    pub fn selects(&self, subject: &[u8], selection: &mut Selection) -> bool {
        if self.selected.len() == 0 {
            return false;
        }
        if let Some(cached) = selection.cache.get(DecisionKind::Stamp, subject, None) {
            return cached == 1;
        }
        let selected = self.selected.matches_plain(subject, MatchMode::NatsServer);
        selection
            .cache
            .insert(DecisionKind::Stamp, subject, None, u8::from(selected));
        selected
    }
}

/// One connection's cache of [`Provenance::selects`].
#[derive(Debug)]
pub struct Selection {
    cache: DecisionCache,
}

/// The compiled `reserved_headers` (with the provenance names) and `reserved_header_action`.
#[derive(Debug)]
pub struct ReservedHeaders {
    pub names: HeaderNames,
    pub action: ReservedHeaderAction,
}

impl ReservedHeaders {
    pub(super) fn compile(
        configured: &[String],
        provenance: Option<&Provenance>,
        action: ReservedHeaderAction,
    ) -> Result<ReservedHeaders, ConfigError> {
        for (index, name) in configured.iter().enumerate() {
            check_header_name(name, &format!("reserved_headers[{index}]"))?;
        }
        let provenance_names = provenance.into_iter().flat_map(|p| p.names.all());
        Ok(ReservedHeaders {
            names: HeaderNames::new(
                configured
                    .iter()
                    .map(String::as_str)
                    .chain(provenance_names),
            ),
            action,
        })
    }
}

fn check_header_name(name: &str, path: &str) -> Result<(), ConfigError> {
    if !is_token(name) || name.len() > MAX_HEADER_NAME {
        return Err(ConfigError::new(
            path,
            format!(
                "{name:?} is not a header name (1 to {MAX_HEADER_NAME} letters, digits or !#$%&'*+-.^_`|~)"
            ),
        ));
    }
    Ok(())
}

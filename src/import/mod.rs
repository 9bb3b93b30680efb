//! `natsguard import`: an existing nats-server `authorization` block turned into a natsguard
//! policy, one rule per user mapped to a workload identity (`--user NAME=PRINCIPAL`).
//!
//! [`conf`] reads nats-server's configuration format as nats-server does (variables, includes,
//! comments, every value form); [`convert`] maps the `authorization` block onto natsguard's
//! policy with nats-server's meaning (aliases, `default_permissions`, shorthand forms, queue
//! entries) and refuses, with the file, line and key path, whatever natsguard cannot express.
//! The result is checked with [`crate::policy::load`], the filter's own loader.

mod conf;
mod convert;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::identity::SpiffeId;

pub use conf::{parse_file, Entry, Inputs, Location, Map, MemoryInputs, Node, SystemInputs, Value};

/// One `--user NAME=PRINCIPAL`: the nats-server user whose permissions the workload with this
/// Istio principal gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserMapping {
    /// The user's name in the nats-server configuration (`user`/`username`).
    pub user: String,
    /// Istio's principal, `<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub principal: String,
}

impl UserMapping {
    /// The principal's trust domain.
    pub fn trust_domain(&self) -> &str {
        self.principal.split('/').next().unwrap_or_default()
    }
}

impl FromStr for UserMapping {
    type Err = String;

    /// `NAME=PRINCIPAL`; the principal is an Istio-shaped SPIFFE ID without `spiffe://`.
    fn from_str(text: &str) -> Result<UserMapping, String> {
        let invalid = |reason: &str| format!("--user {text:?}: {reason}");
        // A principal never contains `=`, a nats-server user name may.
        let Some((user, principal)) = text.rsplit_once('=') else {
            return Err(invalid("expected NAME=PRINCIPAL"));
        };
        if user.is_empty() {
            return Err(invalid("the user name is empty"));
        }
        if principal.starts_with("spiffe://") {
            return Err(invalid(
                "give the principal without spiffe:// (Istio's form, e.g. cluster.local/ns/billing/sa/api)",
            ));
        }
        let id = SpiffeId::parse(&format!("spiffe://{principal}"))
            .map_err(|error| invalid(&format!("invalid principal ({error})")))?;
        if id.service_account.is_none() {
            return Err(invalid(
                "the principal must have Istio's form <trust-domain>/ns/<namespace>/sa/<service-account>",
            ));
        }
        Ok(UserMapping {
            user: user.to_owned(),
            principal: principal.to_owned(),
        })
    }
}

/// A converted configuration: the policy and what the operator should know about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// natsguard's policy (it loads with [`crate::policy::load`]).
    pub policy: serde_json::Value,
    /// One line each: users skipped, `default_permissions` taken, unrestricted directions...
    pub notes: Vec<String>,
}

/// Why a configuration cannot be imported: where, and one line of reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportError {
    /// The configuration file concerned (an included file for errors inside it).
    pub file: PathBuf,
    /// Line and column (1-based), when the error concerns one place of the file.
    pub position: Option<(u32, u32)>,
    /// Key path inside the configuration, e.g. `authorization.users[2].permissions`; may be empty.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl ImportError {
    /// An error at one place of a file.
    pub(crate) fn at(location: &Location, path: &str, reason: impl Into<String>) -> ImportError {
        ImportError {
            file: location.file.to_path_buf(),
            position: Some((location.line, location.column)),
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// An error about a whole file.
    pub(crate) fn file(file: &Path, reason: impl Into<String>) -> ImportError {
        ImportError {
            file: file.to_path_buf(),
            position: None,
            path: String::new(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.file.display().to_string();
        if let Some((row, column)) = self.position {
            line += &format!(":{row}:{column}");
        }
        if !self.path.is_empty() {
            line += &format!(": {}", self.path);
        }
        line += &format!(": {}", self.reason);
        // One line, whatever a file name or key holds.
        for c in line.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ImportError {}

/// Reads the nats-server configuration at `conf_path` (and its includes; `$VARIABLES` no map
/// defines come from the environment, as in nats-server) and converts its `authorization` block.
pub fn import(conf_path: &Path, users: &[UserMapping]) -> Result<Imported, ImportError> {
    import_with(conf_path, users, &SystemInputs)
}

/// [`import`] with the files and environment variables given by `inputs`.
pub fn import_with(
    conf_path: &Path,
    users: &[UserMapping],
    inputs: &dyn Inputs,
) -> Result<Imported, ImportError> {
    let config = conf::parse_file(conf_path, inputs)?;
    convert::convert(&config, conf_path, users)
}

/// The `natsguard import` command: the policy as pretty JSON on `out`, one note a line on
/// `notes`; `Err` is the one-line failure.
pub fn command(
    conf_path: &Path,
    users: &[String],
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<(), String> {
    let mappings = users
        .iter()
        .map(|text| text.parse())
        .collect::<Result<Vec<UserMapping>, String>>()?;
    let imported = import(conf_path, &mappings).map_err(|error| error.to_string())?;
    let write_failed = |error: std::io::Error| format!("cannot write the policy: {error}");
    let mut json = serde_json::to_string_pretty(&imported.policy).map_err(|e| e.to_string())?;
    json.push('\n');
    out.write_all(json.as_bytes()).map_err(write_failed)?;
    for note in &imported.notes {
        writeln!(notes, "natsguard: note: {note}").map_err(write_failed)?;
    }
    Ok(())
}

//! `natsguard check`: every natsguard configuration in a file, loaded with the filter's own
//! loader ([`Gate::load`]: the same errors, at the same JSON paths) and linted
//! ([`crate::policy::Warning`]: the warnings the filter logs at load).

use super::source::{configurations, Found};
use crate::engine::Gate;
use crate::policy::one_line;

/// What checking one file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// One line per configuration, warning and note (for standard output).
    pub lines: Vec<String>,
    /// One line per error (for standard error).
    pub errors: Vec<String>,
    pub warnings: usize,
}

/// Checks the configurations in `text`, read from `name`. `environment` reads a variable a
/// `seed_env` names (`trusted_proxy`, `provenance.sign`); unset, the seed is left unchecked
/// (Envoy's process has its own environment) and a note says so.
pub fn check(name: &str, text: &str, environment: &dyn Fn(&str) -> Option<String>) -> Checked {
    let mut checked = Checked::default();
    let found = match configurations(text) {
        Ok(found) => found,
        Err(reason) => {
            checked
                .errors
                .push(format!("{name}: error: {}", one_line(&reason)));
            return checked;
        }
    };
    for Found { location, json } in found {
        let at = match location.as_str() {
            "" => name.to_owned(),
            location => format!("{name} ({})", one_line(location)),
        };
        let loaded = Gate::load(&json, &|variable| Ok(environment(variable)));
        match loaded {
            Ok((gate, warnings)) => {
                let policy = &gate.policy;
                let mode = match policy.mode() {
                    crate::policy::Mode::Enforce => "enforce",
                    crate::policy::Mode::DryRun => "dry_run",
                };
                let rules = counted(policy.rule_names().count(), "rule");
                let shadow = match policy.shadow() {
                    Some(shadow) => {
                        format!(
                            ", shadow of {}",
                            counted(shadow.rule_names().count(), "rule")
                        )
                    }
                    None => String::new(),
                };
                checked.lines.push(format!(
                    "{at}: valid: policy version {}, mode {mode}, {rules}{shadow}",
                    policy.version()
                ));
                for warning in &warnings {
                    checked.lines.push(format!("{at}: warning: {warning}"));
                }
                checked.warnings += warnings.len();
                for (path, variable) in policy.seed_envs() {
                    if environment(variable).is_none() {
                        checked.lines.push(format!(
                            "{at}: note: {path}: {variable} is not set here; the filter reads it from Envoy's environment at load (an unset or invalid seed rejects the configuration there)"
                        ));
                    }
                }
            }
            Err(reason) => checked
                .errors
                .push(format!("{at}: error: {}", one_line(&reason))),
        }
    }
    checked
}

/// `1 rule`, `2 rules`.
pub fn counted(count: usize, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        _ => format!("{count} {noun}s"),
    }
}

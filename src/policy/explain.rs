//! Why a decision is what it is: for a PUB, a SUB or a delivery, the entry that decided (and
//! where natsguard reads stricter than nats-server, what nats-server would have done), from the
//! same tries the decisions walk. Read-only: explaining changes no state. Audit lines and
//! `natsguard explain` print these; tests check that every ruling agrees with the decision.

use std::time::Duration;

use super::connection::{
    is_system_queue_group, queue_matches, reserved_publish_subject, ConnectionPermissions,
    PermissionEntry,
};
use super::subject::{tokens, FULL_WILDCARD};
use super::trie::{MatchMode, PatternTrie};

/// What decided a PUB, a SUB or a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruling {
    pub allowed: bool,
    /// The configured entry that decided, when one did.
    pub entry: Option<PermissionEntry>,
    /// In words: the entry (`deny billing.admin.>`), or what decided without one (`no allow
    /// entry matches`).
    pub reason: String,
    /// Where nats-server's own reading would allow it: what nats-server would use.
    pub nats_server_allows: Option<String>,
}

impl Ruling {
    fn by(allowed: bool, entry: &PermissionEntry) -> Ruling {
        Ruling {
            allowed,
            entry: Some(entry.clone()),
            reason: entry.to_string(),
            nats_server_allows: None,
        }
    }

    fn without_entry(allowed: bool, reason: impl Into<String>) -> Ruling {
        Ruling {
            allowed,
            entry: None,
            reason: reason.into(),
            nats_server_allows: None,
        }
    }

    /// The deciding rule's name, when an entry decided.
    pub fn rule(&self) -> Option<&str> {
        self.entry.as_ref().map(|entry| &*entry.rule)
    }
}

/// The configured entries of `trie` matching `subject` under `mode`, in configuration order.
fn matching<'e>(
    trie: &PatternTrie,
    entries: &'e [PermissionEntry],
    subject: &[u8],
    mode: MatchMode,
) -> Vec<&'e PermissionEntry> {
    let mut origins: Vec<u32> = Vec::new();
    trie.find_match(subject, mode, &mut |terminal| {
        origins.extend(&terminal.origins);
        false
    });
    origins.sort_unstable();
    origins.dedup();
    origins
        .into_iter()
        .filter_map(|origin| entries.get(origin as usize))
        .collect()
}

/// The allow list's answer for a SUB under one reading: granted, and the entry that decided.
struct AllowPart<'e> {
    allowed: bool,
    entry: Option<&'e PermissionEntry>,
    reason: String,
}

impl ConnectionPermissions {
    /// Every configured entry of this connection's permissions (templates filled).
    pub fn entries(&self) -> &[PermissionEntry] {
        &self.effective.entries
    }

    /// Why [`Self::check_publish`] would decide what it decides for `subject` now.
    pub fn explain_publish(&self, subject: &[u8], now: Duration) -> Ruling {
        if let Some(reason) = reserved_publish_subject(subject) {
            return Ruling::without_entry(false, reason);
        }
        let effective = &self.effective;
        let entries = &effective.entries;
        if let Some(deny) = &effective.publish_deny {
            if let Some(entry) = matching(deny, entries, subject, MatchMode::NatsServer).first() {
                return Ruling::by(false, entry);
            }
        }
        let Some(allow) = &effective.publish_allow else {
            return Ruling::without_entry(true, "publish unrestricted (no allow list)");
        };
        if let Some(entry) = matching(allow, entries, subject, MatchMode::Strict).first() {
            return Ruling::by(true, entry);
        }
        if let Some(limits) = effective.responses {
            if self.replies.allows(subject, now, limits) {
                return Ruling::without_entry(
                    true,
                    "allow_responses: the reply subject of a message delivered to this connection",
                );
            }
        }
        let mut ruling = Ruling::without_entry(false, "no allow entry matches");
        if let Some(entry) = matching(allow, entries, subject, MatchMode::NatsServer).first() {
            ruling.nats_server_allows = Some(full_wildcard_note(entry));
        }
        ruling
    }

    /// Why [`Self::check_subscribe`] would decide what it decides for `subject` and `queue`.
    pub fn explain_subscribe(&self, subject: &[u8], queue: Option<&[u8]>) -> Ruling {
        let queue = queue.filter(|queue| !queue.is_empty());
        let effective = &self.effective;
        let entries = &effective.entries;
        let mut ruling = Ruling::without_entry(true, "subscribe unrestricted (no allow list)");
        if let Some(allow) = &effective.subscribe_allow {
            let nats_server = allow_part(allow, entries, subject, queue, MatchMode::NatsServer);
            if !nats_server.allowed {
                return part_ruling(nats_server);
            }
            let readings_differ = tokens(subject).any(|token| token == FULL_WILDCARD);
            let strict = if readings_differ {
                allow_part(allow, entries, subject, queue, MatchMode::Strict)
            } else {
                allow_part(allow, entries, subject, queue, MatchMode::NatsServer)
            };
            if strict.allowed {
                ruling = part_ruling(strict);
            } else {
                let note = nats_server.entry.map(full_wildcard_note);
                ruling = part_ruling(strict);
                ruling.nats_server_allows = note;
            }
        }
        if let Some(deny) = &effective.subscribe_deny {
            if let Some(entry) = denying_entry(deny, entries, subject, queue) {
                // A deny entry denies under both readings.
                return Ruling::by(false, entry);
            }
        }
        if ruling.allowed && is_system_queue_group(queue) {
            return Ruling::without_entry(false, "nats-server refuses the queue group _sys_");
        }
        ruling
    }

    /// Why [`Self::should_deliver`] would decide what it decides for a message on `subject`
    /// delivered to a subscription in `sub_queue`.
    pub fn explain_delivery(&self, subject: &[u8], sub_queue: Option<&[u8]>) -> Ruling {
        let effective = &self.effective;
        let Some(deny) = &effective.subscribe_deny else {
            return Ruling::without_entry(true, "no subscribe deny entries: nothing is filtered");
        };
        if !self.delivery_filter_armed {
            return Ruling::without_entry(
                true,
                "the delivery filter is not armed: no wildcard or queue subscription of this connection overlaps a subscribe deny entry",
            );
        }
        let queue = sub_queue.filter(|queue| !queue.is_empty());
        match denying_entry(deny, &effective.entries, subject, queue) {
            Some(entry) => Ruling::by(false, entry),
            None => Ruling::without_entry(
                true,
                "no subscribe deny entry matches the message's subject",
            ),
        }
    }
}

/// The first deny entry matching `subject` that applies to a subscription in `queue`: a plain
/// one, or a queue entry of that group.
fn denying_entry<'e>(
    deny: &PatternTrie,
    entries: &'e [PermissionEntry],
    subject: &[u8],
    queue: Option<&[u8]>,
) -> Option<&'e PermissionEntry> {
    matching(deny, entries, subject, MatchMode::NatsServer)
        .into_iter()
        .find(|entry| match (entry.is_queue_entry, queue, &entry.queue) {
            (false, _, _) => true,
            (true, Some(queue), Some(entry_queue)) => queue_matches(queue, entry_queue.as_bytes()),
            (true, _, _) => false,
        })
}

impl<'e> AllowPart<'e> {
    fn granted_by(entry: &'e PermissionEntry) -> AllowPart<'e> {
        AllowPart {
            allowed: true,
            entry: Some(entry),
            reason: entry.to_string(),
        }
    }
}

/// nats-server's canSubscribe allow part, under `mode`: a matching queue entry replaces the plain
/// allows for queue subscribers.
fn allow_part<'e>(
    allow: &PatternTrie,
    entries: &'e [PermissionEntry],
    subject: &[u8],
    queue: Option<&[u8]>,
    mode: MatchMode,
) -> AllowPart<'e> {
    let matched = matching(allow, entries, subject, mode);
    let restricting: Vec<&PermissionEntry> = matched
        .iter()
        .copied()
        .filter(|entry| entry.is_queue_entry)
        .collect();
    match queue {
        Some(queue) if !restricting.is_empty() => {
            let granting = restricting.iter().copied().find(|entry| {
                entry
                    .queue
                    .as_ref()
                    .is_some_and(|entry_queue| queue_matches(queue, entry_queue.as_bytes()))
            });
            match granting {
                Some(entry) => AllowPart::granted_by(entry),
                None => AllowPart {
                    allowed: false,
                    entry: restricting.first().copied(),
                    reason: format!(
                        "queue entries for this subject ({}) do not name queue {}",
                        restricting
                            .iter()
                            .map(|entry| entry.to_string())
                            .collect::<Vec<_>>()
                            .join("; "),
                        String::from_utf8_lossy(queue)
                    ),
                },
            }
        }
        _ => {
            let plain = matched.iter().copied().find(|entry| !entry.is_queue_entry);
            match plain {
                Some(entry) => AllowPart::granted_by(entry),
                None => AllowPart {
                    allowed: false,
                    entry: None,
                    reason: match (queue, matched.first()) {
                        (None, Some(_)) => {
                            "only queue entries match this subject: it needs a queue group".into()
                        }
                        _ => "no allow entry matches".into(),
                    },
                },
            }
        }
    }
}

fn part_ruling(part: AllowPart) -> Ruling {
    Ruling {
        allowed: part.allowed,
        entry: part.entry.cloned(),
        reason: part.reason,
        nats_server_allows: None,
    }
}

fn full_wildcard_note(entry: &PermissionEntry) -> String {
    format!(
        "nats-server's reading would allow it by `{entry}` (rule {:?}): natsguard does not let a `*` entry token stand for a literal `>`",
        entry.rule
    )
}

impl ConnectionPermissions {
    /// The nats-server `permissions` block that gives a nats-server user these permissions
    /// (templates filled; natsguard's stricter readings of it are listed in docs/policy.md).
    pub fn nats_server_permissions(&self) -> serde_json::Value {
        use super::connection::EntryList;
        use serde_json::{json, Map, Value};
        let effective = &self.effective;
        let listed = |list: EntryList| -> Vec<Value> {
            effective
                .entries
                .iter()
                .filter(|entry| {
                    entry.list == list && !(entry.is_queue_entry && entry.queue.is_none())
                })
                .map(|entry| match &entry.queue {
                    Some(queue) => Value::from(format!("{} {queue}", entry.subject)),
                    None => Value::from(&*entry.subject),
                })
                .collect()
        };
        let direction = |allow: Option<&PatternTrie>, allow_list, deny_list| -> Option<Value> {
            let mut block = Map::new();
            let mut deny = listed(deny_list);
            match allow {
                None => {}
                // allow_responses installs the empty publish allow list by itself.
                Some(trie) if trie.len() == 0 && effective.responses.is_some() => {}
                // Every allow entry lost to an unfillable template: nothing is allowed.
                Some(trie) if trie.len() == 0 => deny.push(">".into()),
                Some(_) => {
                    block.insert("allow".into(), listed(allow_list).into());
                }
            }
            if !deny.is_empty() {
                block.insert("deny".into(), deny.into());
            }
            (!block.is_empty()).then(|| Value::Object(block))
        };
        let mut permissions = Map::new();
        if let Some(publish) = direction(
            effective.publish_allow.as_ref(),
            EntryList::PublishAllow,
            EntryList::PublishDeny,
        ) {
            permissions.insert("publish".into(), publish);
        }
        if let Some(subscribe) = direction(
            effective.subscribe_allow.as_ref(),
            EntryList::SubscribeAllow,
            EntryList::SubscribeDeny,
        ) {
            permissions.insert("subscribe".into(), subscribe);
        }
        if let Some(limits) = effective.responses {
            permissions.insert(
                "allow_responses".into(),
                json!({
                    "max": limits.max_msgs,
                    "expires": super::duration::format_go_duration(limits.expires_nanos),
                }),
            );
        }
        Value::Object(permissions)
    }
}

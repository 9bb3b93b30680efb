//! One connection's permissions and the state nats-server keeps with them (server/client.go):
//! the delivery-time deny filter, the allow_responses reply table and a decision cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::cache::{DecisionCache, DecisionKind};
use super::subject::{has_wildcard, is_subset_match, subjects_collide, tokens, FULL_WILDCARD};
use super::trie::{MatchMode, PatternTrie, Terminal};

/// nats-server refuses this queue group name to clients (server/client.go, `sysGroup`).
const SYSTEM_QUEUE_GROUP: &[u8] = b"_sys_";
/// Gateway-routed reply subjects: nats-server refuses them as client publish subjects.
const GATEWAY_REPLY_PREFIX: &[u8] = b"_GR_.";
/// Raft subjects: refused to clients outside the system account (natsguard: to every client).
const RAFT_PREFIX: &[u8] = b"$NRG.";
/// Reply subjects a client may not set (server/client.go, func isReservedReply).
const RESERVED_REPLY_PREFIXES: [&[u8]; 3] = [b"_R_.", b"$JS.ACK.", b"_GR_."];
/// Bounds of the allow_responses reply table per connection. When full (after pruning expired
/// and used-up entries) a new reply subject is not recorded: replying to it is denied.
pub const MAX_TRACKED_REPLIES: usize = 4_096;
/// Total bytes of tracked reply subjects per connection (same fail-closed behaviour).
pub const MAX_TRACKED_REPLY_BYTES: usize = 256 * 1024;

/// `allow_responses` after nats-server's defaults: max messages per reply subject and the
/// time a reply subject stays publishable; a negative value is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponsePermission {
    /// Responses allowed per reply subject (negative: unlimited).
    pub max_msgs: i64,
    /// Lifetime of a tracked reply subject in nanoseconds (negative: unlimited).
    pub expires_nanos: i64,
}

impl ResponsePermission {
    /// The union of two rules' response permissions: the larger limits (negative = unlimited).
    pub(crate) fn most_permissive(self, other: ResponsePermission) -> ResponsePermission {
        let wider = |a: i64, b: i64| if a < 0 || b < 0 { -1 } else { a.max(b) };
        ResponsePermission {
            max_msgs: wider(self.max_msgs, other.max_msgs),
            expires_nanos: wider(self.expires_nanos, other.expires_nanos),
        }
    }
}

/// Which list of a permission set an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryList {
    PublishAllow,
    PublishDeny,
    SubscribeAllow,
    SubscribeDeny,
}

impl EntryList {
    /// `allow` or `deny`, as in the configuration.
    pub fn action(self) -> &'static str {
        match self {
            EntryList::PublishAllow | EntryList::SubscribeAllow => "allow",
            EntryList::PublishDeny | EntryList::SubscribeDeny => "deny",
        }
    }
}

/// A configured permission entry as one identity has it: what explanations name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionEntry {
    /// The rule it comes from.
    pub rule: Box<str>,
    pub list: EntryList,
    /// The entry as configured (`"tenants.{{jwt.claim.tid}}.> workers"`).
    pub written: Box<str>,
    /// Its subject for this identity (templates filled, or widened).
    pub subject: Box<str>,
    /// A queue entry (`"subject queue"`): it concerns queue subscribers only.
    pub is_queue_entry: bool,
    /// Its queue group for this identity (none for a queue entry whose queue could not be
    /// filled: it restricts without granting).
    pub queue: Option<Box<str>>,
    /// Why it acts differently from what it says (an unfillable template).
    pub note: Option<&'static str>,
}

impl std::fmt::Display for PermissionEntry {
    /// `deny billing.admin.>` (the configured form; the filled subject after `→` when it differs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.list.action(), self.written)?;
        let filled = match &self.queue {
            Some(queue) => format!("{} {queue}", self.subject),
            None => self.subject.to_string(),
        };
        if filled != *self.written {
            write!(f, " → {filled}")?;
        }
        Ok(())
    }
}

/// The resolved permission set of one identity: immutable, shared between connections whose
/// identities match the same template-free rules.
#[derive(Debug)]
pub(crate) struct EffectivePermissions {
    pub(crate) matched_rules: Vec<String>,
    pub(crate) publish_allow: Option<PatternTrie>,
    pub(crate) publish_deny: Option<PatternTrie>,
    pub(crate) subscribe_allow: Option<PatternTrie>,
    pub(crate) subscribe_deny: Option<PatternTrie>,
    /// Subjects of the subscribe deny entries: a SUB colliding with one arms the delivery filter.
    pub(crate) subscribe_deny_subjects: Vec<Box<[u8]>>,
    pub(crate) responses: Option<ResponsePermission>,
    pub(crate) decision_cache_entries: usize,
    /// Every configured entry of the set; the tries' terminals index it.
    pub(crate) entries: Vec<PermissionEntry>,
}

impl EffectivePermissions {
    pub(crate) fn unrestricted(
        matched_rules: Vec<String>,
        decision_cache_entries: usize,
    ) -> EffectivePermissions {
        EffectivePermissions {
            matched_rules,
            publish_allow: None,
            publish_deny: None,
            subscribe_allow: None,
            subscribe_deny: None,
            subscribe_deny_subjects: Vec::new(),
            responses: None,
            decision_cache_entries,
            entries: Vec::new(),
        }
    }
}

/// The verdict on a SUB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeDecision {
    /// Forward the SUB.
    Allowed,
    /// Answer `Permissions Violation for Subscription to ...` and drop the SUB.
    Denied,
}

#[derive(Debug, Clone, Copy)]
struct ReplyGrant {
    recorded_at: Duration,
    uses: i64,
    /// The message it answers was on a subject `provenance.subjects` selects.
    answers_selected: bool,
}

/// Reply subjects the connection may publish to under allow_responses.
#[derive(Debug, Default)]
pub(super) struct ReplyGrants {
    grants: BTreeMap<Box<[u8]>, ReplyGrant>,
    bytes: usize,
    /// Some grant ever answered a selected message (until then nothing is looked up for it).
    any_answers_selected: bool,
}

impl ReplyGrants {
    fn remove(&mut self, reply: &[u8]) {
        if self.grants.remove(reply).is_some() {
            self.bytes -= reply.len();
        }
    }

    /// Whether one more publish to `reply` would be allowed by its grant (nothing changes).
    pub(super) fn allows(&self, reply: &[u8], now: Duration, limits: ResponsePermission) -> bool {
        self.grants.get(reply).is_some_and(|grant| {
            let used_up = limits.max_msgs > 0 && grant.uses + 1 > limits.max_msgs;
            !used_up && !is_expired(grant, now, limits)
        })
    }

    /// nats-server's `responseAllowed`: counts one use; an over-used or expired grant is
    /// removed and refused.
    fn use_grant(&mut self, reply: &[u8], now: Duration, limits: ResponsePermission) -> bool {
        let allowed = self.allows(reply, now, limits);
        match self.grants.get_mut(reply) {
            Some(grant) if allowed => grant.uses += 1,
            Some(_) => self.remove(reply),
            None => {}
        }
        allowed
    }

    fn record(&mut self, reply: &[u8], now: Duration, limits: ResponsePermission) {
        let full = |grants: &ReplyGrants| {
            grants.grants.len() >= MAX_TRACKED_REPLIES
                || grants.bytes + reply.len() > MAX_TRACKED_REPLY_BYTES
        };
        if full(self) {
            self.prune(now, limits);
            if full(self) {
                return;
            }
        }
        if self
            .grants
            .insert(
                reply.into(),
                ReplyGrant {
                    recorded_at: now,
                    uses: 0,
                    answers_selected: false,
                },
            )
            .is_none()
        {
            self.bytes += reply.len();
        }
    }

    /// nats-server's `pruneReplyPerms`: drops used-up and expired grants.
    fn prune(&mut self, now: Duration, limits: ResponsePermission) {
        let before = self.grants.len();
        self.grants.retain(|_, grant| {
            let used_up = limits.max_msgs > 0 && grant.uses >= limits.max_msgs;
            !used_up && !is_expired(grant, now, limits)
        });
        if self.grants.len() != before {
            self.bytes = self.grants.keys().map(|reply| reply.len()).sum();
        }
    }
}

fn is_expired(grant: &ReplyGrant, now: Duration, limits: ResponsePermission) -> bool {
    let Ok(expires) = u64::try_from(limits.expires_nanos) else {
        return false;
    };
    expires > 0 && now.saturating_sub(grant.recorded_at) > Duration::from_nanos(expires)
}

/// True when a client may not use `reply` as the reply subject of a PUB (nats-server answers
/// `Permissions Violation for Publish with Reply of "<reply>"`).
pub fn is_reserved_reply(reply: &[u8]) -> bool {
    RESERVED_REPLY_PREFIXES
        .iter()
        .any(|prefix| reply.len() > prefix.len() && reply.starts_with(prefix))
        // nats-server's `isServiceReply` accepts `_R_.` itself (length > 3).
        || reply == b"_R_."
}

/// The permissions of one connection, owned by it: decisions plus the per-connection state
/// nats-server keeps (delivery filter, reply grants, decision cache). Time is an input:
/// `now` is a monotonic instant measured from any fixed origin.
#[derive(Debug)]
pub struct ConnectionPermissions {
    pub(super) effective: Arc<EffectivePermissions>,
    pub(super) delivery_filter_armed: bool,
    cache: DecisionCache,
    pub(super) replies: ReplyGrants,
}

impl ConnectionPermissions {
    pub(crate) fn new(effective: Arc<EffectivePermissions>) -> ConnectionPermissions {
        let cache = DecisionCache::new(effective.decision_cache_entries);
        ConnectionPermissions {
            effective,
            delivery_filter_armed: false,
            cache,
            replies: ReplyGrants::default(),
        }
    }

    /// Names of the rules that matched the identity (empty under `default_action: allow`).
    pub fn matched_rules(&self) -> &[String] {
        &self.effective.matched_rules
    }

    /// Whether the delivery-time deny filter can ever arm: the permissions have a subscribe deny
    /// entry. Without one every delivery passes, whatever the subscription.
    pub fn may_filter_deliveries(&self) -> bool {
        !self.effective.subscribe_deny_subjects.is_empty()
    }

    /// Whether the delivery-time deny filter is active (see [`Self::should_deliver`]).
    pub fn delivery_filter_armed(&self) -> bool {
        self.delivery_filter_armed
    }

    /// The SUB check of nats-server (server/client.go, funcs processSubEx, canSubscribe): allow
    /// list with the queue-entry override, deny list, `_sys_`. An allowed wildcard or queue SUB
    /// that could overlap a deny entry arms the delivery filter.
    pub fn check_subscribe(&mut self, subject: &[u8], queue: Option<&[u8]>) -> SubscribeDecision {
        let queue = queue.filter(|queue| !queue.is_empty());
        if !self.check_subscribe_permission(subject, queue) {
            return SubscribeDecision::Denied;
        }
        if is_system_queue_group(queue) {
            return SubscribeDecision::Denied;
        }
        SubscribeDecision::Allowed
    }

    /// The SUB check under both readings of `*` against a `>` token (see [`MatchMode`]): allowed
    /// only if both allow it, so a queue entry that nats-server sees as restricting restricts
    /// here too. The delivery filter arms as nats-server's does, on the SUBs nats-server's
    /// reading allows: a SUB natsguard alone refuses must not leave the filter off where
    /// nats-server would filter the connection's other deliveries.
    fn check_subscribe_permission(&mut self, subject: &[u8], queue: Option<&[u8]>) -> bool {
        let nats_server_allows = self.can_subscribe(subject, queue, MatchMode::NatsServer);
        if nats_server_allows {
            self.arm_delivery_filter_if_needed(subject, queue.is_some());
        }
        let readings_differ = tokens(subject).any(|token| token == FULL_WILDCARD);
        nats_server_allows
            && (!readings_differ || self.can_subscribe(subject, queue, MatchMode::Strict))
    }

    /// nats-server's canSubscribeInternal with `mode` for the allow list; the deny list is
    /// always read the nats-server way (it only restricts).
    fn can_subscribe(&self, subject: &[u8], queue: Option<&[u8]>, mode: MatchMode) -> bool {
        let effective = &self.effective;
        if let Some(allow) = &effective.subscribe_allow {
            let (mut plain, mut queue_entries, mut queue_allowed) = (false, false, false);
            allow.find_match(subject, mode, &mut |terminal| {
                plain |= terminal.plain;
                if let Some(queue) = queue {
                    if terminal.queue_restricted {
                        queue_entries = true;
                        queue_allowed |= terminal_has_queue(terminal, queue);
                    }
                }
                false
            });
            // A matching queue entry replaces the plain allow for queue subscribers.
            let allowed = if queue_entries { queue_allowed } else { plain };
            if !allowed {
                return false;
            }
        }
        match &effective.subscribe_deny {
            Some(deny) => !deny_matches(deny, subject, queue),
            None => true,
        }
    }

    fn arm_delivery_filter_if_needed(&mut self, subject: &[u8], has_queue: bool) {
        if self.delivery_filter_armed || !(has_queue || has_wildcard(subject)) {
            return;
        }
        self.delivery_filter_armed = self
            .effective
            .subscribe_deny_subjects
            .iter()
            .any(|denied| subjects_collide(denied, subject));
    }

    /// The delivery-time deny filter (nats-server's checkDenySub): once armed, every message
    /// delivered to this connection is dropped when its subject matches a plain subscribe deny
    /// entry, or a queue deny entry of the subscription's queue group.
    pub fn should_deliver(&mut self, msg_subject: &[u8], sub_queue: Option<&[u8]>) -> bool {
        if !self.delivery_filter_armed {
            return true;
        }
        let Some(deny) = &self.effective.subscribe_deny else {
            return true;
        };
        let queue = sub_queue.filter(|queue| !queue.is_empty());
        if let Some(cached) = self.cache.get(DecisionKind::Deliver, msg_subject, queue) {
            return cached == 1;
        }
        let allowed = !deny_matches(deny, msg_subject, queue);
        self.cache
            .insert(DecisionKind::Deliver, msg_subject, queue, u8::from(allowed));
        allowed
    }

    /// The PUB subject check (server/client.go, funcs processInboundClientMsg,
    /// pubAllowedFullCheck): reserved prefixes, allow, deny, then allow_responses grants.
    /// The reply subject is checked separately with [`is_reserved_reply`].
    pub fn check_publish(&mut self, subject: &[u8], now: Duration) -> bool {
        if reserved_publish_subject(subject).is_some() {
            return false;
        }
        match self.static_publish_decision(subject) {
            PublishVerdict::Allowed => true,
            PublishVerdict::Denied => false,
            PublishVerdict::NotAllowed => match self.effective.responses {
                Some(limits) => self.replies.use_grant(subject, now, limits),
                None => false,
            },
        }
    }

    /// Records the reply subject of a message delivered to this connection (call it after
    /// [`Self::should_deliver`] let the message through): under allow_responses it becomes
    /// publishable `max` times until `expires`.
    pub fn record_delivered_reply(&mut self, reply: &[u8], now: Duration) {
        let Some(limits) = self.effective.responses else {
            return;
        };
        if reply.is_empty() {
            return;
        }
        match self.static_publish_decision(reply) {
            PublishVerdict::Allowed | PublishVerdict::Denied => {}
            // nats-server checks the reply with its full publish check first, which consumes
            // one use of a live grant instead of renewing it.
            PublishVerdict::NotAllowed => {
                if !self.replies.use_grant(reply, now, limits) {
                    self.replies.record(reply, now, limits);
                }
            }
        }
    }

    /// The reply subject of a message just delivered (and recorded with
    /// [`Self::record_delivered_reply`]) on a subject `provenance.subjects` selects: the
    /// response it grants is stamped too.
    pub fn note_reply_answers_selected(&mut self, reply: &[u8]) {
        if let Some(grant) = self.replies.grants.get_mut(reply) {
            grant.answers_selected = true;
            self.replies.any_answers_selected = true;
        }
    }

    /// Whether `subject` is the reply subject of a message delivered on a selected subject,
    /// granted by allow_responses (see [`Self::note_reply_answers_selected`]).
    pub fn answers_selected_message(&self, subject: &[u8]) -> bool {
        self.replies.any_answers_selected
            && self
                .replies
                .grants
                .get(subject)
                .is_some_and(|grant| grant.answers_selected)
    }

    fn static_publish_decision(&mut self, subject: &[u8]) -> PublishVerdict {
        let effective = &self.effective;
        if effective.publish_allow.is_none() && effective.publish_deny.is_none() {
            return PublishVerdict::Allowed;
        }
        if let Some(cached) = self.cache.get(DecisionKind::Publish, subject, None) {
            return PublishVerdict::from_cached(cached);
        }
        let allowed = effective
            .publish_allow
            .as_ref()
            .is_none_or(|allow| allow.matches_plain(subject, MatchMode::Strict));
        let denied = effective
            .publish_deny
            .as_ref()
            .is_some_and(|deny| deny.matches_plain(subject, MatchMode::NatsServer));
        // Deny wins, also over allow_responses grants (nats-server lets a grant override a
        // deny entry; natsguard does not).
        let verdict = match (allowed, denied) {
            (_, true) => PublishVerdict::Denied,
            (true, false) => PublishVerdict::Allowed,
            (false, false) => PublishVerdict::NotAllowed,
        };
        self.cache
            .insert(DecisionKind::Publish, subject, None, verdict.to_cached());
        verdict
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PublishVerdict {
    Allowed,
    /// Not on the allow list: an allow_responses grant may still permit it.
    NotAllowed,
    /// On the deny list.
    Denied,
}

impl PublishVerdict {
    fn to_cached(self) -> u8 {
        self as u8
    }

    fn from_cached(value: u8) -> PublishVerdict {
        match value {
            0 => PublishVerdict::Allowed,
            1 => PublishVerdict::NotAllowed,
            _ => PublishVerdict::Denied,
        }
    }
}

/// Why no client may publish to `subject`, if none may: nats-server refuses gateway reply
/// subjects (`_GR_.` and at least one more byte); natsguard refuses Raft subjects (`$NRG.`) to
/// every connection (nats-server: outside the system account).
pub(super) fn reserved_publish_subject(subject: &[u8]) -> Option<&'static str> {
    let gateway_reply =
        subject.len() > GATEWAY_REPLY_PREFIX.len() && subject.starts_with(GATEWAY_REPLY_PREFIX);
    if gateway_reply {
        Some("nats-server refuses gateway reply subjects (_GR_.) to clients")
    } else if subject.starts_with(RAFT_PREFIX) {
        Some("natsguard refuses Raft subjects ($NRG.) to every connection")
    } else {
        None
    }
}

/// nats-server refuses the queue group `_sys_` to clients.
pub(super) fn is_system_queue_group(queue: Option<&[u8]>) -> bool {
    queue == Some(SYSTEM_QUEUE_GROUP)
}

pub(super) fn terminal_has_queue(terminal: &Terminal, queue: &[u8]) -> bool {
    terminal
        .queues
        .iter()
        .any(|entry| queue_matches(queue, entry))
}

/// nats-server's `queueMatches` for one entry: the same name, or a wildcard entry that the
/// queue name is a subset of.
pub(super) fn queue_matches(queue: &[u8], entry: &[u8]) -> bool {
    if queue == entry {
        return true;
    }
    if !has_wildcard(entry) {
        return false;
    }
    let queue_tokens: Vec<&[u8]> = tokens(queue).collect();
    let entry_tokens: Vec<&[u8]> = tokens(entry).collect();
    is_subset_match(&queue_tokens, &entry_tokens)
}

/// A plain deny entry matches, or a queue deny entry of this queue group does.
fn deny_matches(deny: &PatternTrie, subject: &[u8], queue: Option<&[u8]>) -> bool {
    deny.find_match(subject, MatchMode::NatsServer, &mut |terminal| {
        terminal.plain || queue.is_some_and(|queue| terminal_has_queue(terminal, queue))
    })
}

//! The subscriptions of one connection as nats-server holds them: what a policy update
//! re-checks, and what the delivery filter needs (a delivery's queue group by sid).
//!
//! Kept compact (sid, subject, queue, and a delivery count only while an UNSUB max is pending),
//! on every connection: a policy update may revoke any of them.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Subscription {
    pub(super) subject: Box<str>,
    pub(super) queue: Option<Box<str>>,
    /// `UNSUB <sid> <max>`: nats-server removes the subscription after `max` deliveries.
    limit: Option<DeliveryLimit>,
}

#[derive(Debug, PartialEq, Eq)]
struct DeliveryLimit {
    delivered: u32,
    max: u32,
}

#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    by_sid: BTreeMap<Box<str>, Subscription>,
    /// How many subscriptions have a pending UNSUB max (their deliveries must be counted).
    limited: usize,
    /// Sids a policy update revoked: their deliveries are dropped until nats-server confirmed the
    /// UNSUB natsguard sent for them.
    revoked: BTreeSet<Box<str>>,
}

impl Subscriptions {
    /// A SUB nats-server accepted. nats-server ignores a SUB that reuses a live sid: the first
    /// one stays.
    pub(super) fn subscribe(&mut self, sid: &str, subject: &str, queue: Option<&str>) {
        self.by_sid
            .entry(sid.into())
            .or_insert_with(|| Subscription {
                subject: subject.into(),
                queue: queue.map(Into::into),
                limit: None,
            });
    }

    /// `UNSUB <sid> [max]`: nats-server unsubscribes now unless `max` is above what was
    /// already delivered (server/client.go, processUnsub).
    pub(super) fn unsubscribe(&mut self, sid: &str, max: Option<u32>) {
        let Some(subscription) = self.by_sid.get_mut(sid) else {
            return;
        };
        let delivered = subscription
            .limit
            .as_ref()
            .map_or(0, |limit| limit.delivered);
        match max {
            Some(max) if max > delivered => {
                if subscription.limit.is_none() {
                    self.limited += 1;
                }
                subscription.limit = Some(DeliveryLimit { delivered, max });
            }
            _ => {
                self.remove(sid);
            }
        }
    }

    fn remove(&mut self, sid: &str) -> Option<Subscription> {
        let removed = self.by_sid.remove(sid)?;
        if removed.limit.is_some() {
            self.limited -= 1;
        }
        Some(removed)
    }

    /// Counts a message nats-server delivered on `sid` (filtered by natsguard or not: the server
    /// counted it) toward a pending UNSUB max; the subscription ends at the max, as on the
    /// server. Nothing to do, and no lookup, while no UNSUB max is pending.
    pub(super) fn count_delivery(&mut self, sid: &str) {
        if self.limited == 0 {
            return;
        }
        let used_up = self.by_sid.get_mut(sid).is_some_and(|subscription| {
            subscription.limit.as_mut().is_some_and(|limit| {
                limit.delivered = limit.delivered.saturating_add(1);
                limit.delivered >= limit.max
            })
        });
        if used_up {
            self.remove(sid);
        }
    }

    pub(super) fn contains(&self, sid: &str) -> bool {
        self.by_sid.contains_key(sid)
    }

    pub(super) fn get(&self, sid: &str) -> Option<&Subscription> {
        self.by_sid.get(sid)
    }

    pub(super) fn queue_of(&self, sid: &str) -> Option<&str> {
        self.by_sid.get(sid)?.queue.as_deref()
    }

    pub(super) fn is_revoked(&self, sid: &str) -> bool {
        !self.revoked.is_empty() && self.revoked.contains(sid)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &Subscription)> {
        self.by_sid
            .iter()
            .map(|(sid, subscription)| (&**sid, subscription))
    }

    /// Removes a subscription a policy update no longer allows; its deliveries are dropped from
    /// now on, until [`Self::unsubscribed`] is told nats-server removed it too.
    pub(super) fn revoke(&mut self, sid: &str) -> Option<Subscription> {
        let removed = self.remove(sid)?;
        self.revoked.insert(sid.into());
        Some(removed)
    }

    /// nats-server processed natsguard's UNSUB for these sids: nothing more can arrive for the
    /// revoked subscriptions (a later SUB may reuse the sid).
    pub(super) fn unsubscribed(&mut self, sids: &[Box<str>]) {
        for sid in sids {
            self.revoked.remove(sid);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_sid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sub_of_a_sid_wins_and_unsub_max_counts_deliveries() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.subscribe("1", "a.>", Some("q"));
        subscriptions.subscribe("1", "b", None);
        assert_eq!(subscriptions.queue_of("1"), Some("q"));
        subscriptions.unsubscribe("1", Some(2));
        subscriptions.count_delivery("1");
        assert_eq!(subscriptions.len(), 1);
        subscriptions.count_delivery("1");
        assert_eq!(
            subscriptions.len(),
            0,
            "removed at the max, like nats-server"
        );
        assert_eq!(subscriptions.limited, 0);
    }

    #[test]
    fn an_unsub_max_not_above_the_deliveries_removes_at_once() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.subscribe("1", "a", None);
        subscriptions.unsubscribe("1", Some(3));
        subscriptions.count_delivery("1");
        subscriptions.unsubscribe("1", Some(1));
        assert_eq!(subscriptions.len(), 0);
        subscriptions.subscribe("2", "a", None);
        subscriptions.unsubscribe("2", None);
        assert_eq!(subscriptions.len(), 0);
        assert_eq!(subscriptions.limited, 0);
    }

    #[test]
    fn a_revoked_sid_drops_deliveries_until_unsubscribed() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.subscribe("7", "a.*", None);
        assert!(!subscriptions.is_revoked("7"));
        let revoked = subscriptions.revoke("7").expect("live");
        assert_eq!(&*revoked.subject, "a.*");
        assert!(subscriptions.is_revoked("7"));
        subscriptions.unsubscribed(&["7".into()]);
        assert!(!subscriptions.is_revoked("7"));
    }
}

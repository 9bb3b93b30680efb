//! Tokens a configuration already verified, so that a client reconnecting with its token, or the
//! many connections of a workload sharing one, cost a SHA-256 and a lookup instead of a signature
//! verification (an RS256 verification is most of a millisecond in the VM).
//!
//! Only successful verifications are remembered, keyed by the digest of the whole token. A hit
//! gives the same answer jwt-simple would give now: of its time checks only expiry can turn with
//! time (`iat` and `nbf` passed at the first verification and stay passed as the clock moves on),
//! so a hit requires the clock not to have gone back and re-checks `exp` with the provider's skew
//! exactly as jwt-simple does; anything else is a miss and the token is verified in full. A new
//! key set of a provider forgets that provider's tokens; the number of tokens is bounded, the
//! oldest forgotten first.

use std::collections::{HashMap, VecDeque};

use super::VerifiedJwt;

/// Enough for every client of a busy sidecar's VM to reconnect after a nats-server restart
/// without a second verification (each entry holds the token's claims: typically well under 1 KB).
pub(crate) const MAX_VERIFIED_TOKENS: usize = 1024;

pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &str) -> TokenDigest {
    hmac_sha256::Hash::hash(token.as_bytes())
}

#[derive(Debug)]
struct Entry {
    verified: VerifiedJwt,
    /// The time of the full verification (unix seconds).
    verified_at: u64,
}

#[derive(Debug)]
pub(crate) struct VerifiedTokens {
    capacity: usize,
    entries: HashMap<TokenDigest, Entry>,
    /// Digests in the order they were remembered: the first is forgotten first.
    order: VecDeque<TokenDigest>,
}

impl VerifiedTokens {
    pub(crate) fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The verified identity of the token with `digest` if a full verification at `now` would
    /// accept it again.
    pub(crate) fn get(&mut self, digest: &TokenDigest, now: u64) -> Option<VerifiedJwt> {
        let entry = self.entries.get(digest)?;
        let still_valid = now >= entry.verified_at
            && entry.verified.valid_until().is_none_or(|until| now < until);
        if still_valid {
            return Some(entry.verified.clone());
        }
        // Expired (or the clock went back): verified in full from now on, which gives the reason.
        self.entries.remove(digest);
        self.order.retain(|kept| kept != digest);
        None
    }

    pub(crate) fn remember(&mut self, digest: TokenDigest, verified: &VerifiedJwt, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let entry = Entry {
            verified: verified.clone(),
            verified_at: now,
        };
        if self.entries.insert(digest, entry).is_some() {
            return;
        }
        self.order.push_back(digest);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }

    /// Forgets the tokens `provider` verified: its key set changed.
    pub(crate) fn forget_provider(&mut self, provider: &str) {
        self.entries
            .retain(|_, entry| entry.verified.provider != provider);
        let entries = &self.entries;
        self.order.retain(|digest| entries.contains_key(digest));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(provider: &str, expires_at: Option<u64>) -> VerifiedJwt {
        VerifiedJwt {
            issuer: "https://idp".into(),
            subject: "alice".into(),
            audiences: vec!["nats".into()],
            expires_at,
            not_before: None,
            clock_skew_seconds: 30,
            provider: provider.into(),
            claims: serde_json::Map::new(),
        }
    }

    #[test]
    fn a_hit_holds_until_expiry_plus_skew_and_never_after() {
        let mut tokens = VerifiedTokens::new(4);
        let token = digest("a.b.c");
        tokens.remember(token, &verified("idp", Some(1_000)), 900);
        assert!(tokens.get(&token, 900).is_some());
        assert!(
            tokens.get(&token, 1_030).is_some(),
            "exp + skew is still valid"
        );
        assert!(
            tokens.get(&token, 1_031).is_none(),
            "one second later it is not"
        );
        assert_eq!(tokens.len(), 0, "and it is forgotten");
    }

    #[test]
    fn a_clock_gone_back_is_a_miss() {
        let mut tokens = VerifiedTokens::new(4);
        let token = digest("a.b.c");
        tokens.remember(token, &verified("idp", None), 900);
        assert!(tokens.get(&token, 899).is_none());
    }

    #[test]
    fn a_new_key_set_forgets_only_its_providers_tokens() {
        let mut tokens = VerifiedTokens::new(4);
        let (first, second) = (digest("1"), digest("2"));
        tokens.remember(first, &verified("one", None), 0);
        tokens.remember(second, &verified("two", None), 0);
        tokens.forget_provider("one");
        assert!(tokens.get(&first, 1).is_none());
        assert!(tokens.get(&second, 1).is_some());
    }

    #[test]
    fn the_oldest_token_goes_first_when_full() {
        let mut tokens = VerifiedTokens::new(2);
        let digests: Vec<TokenDigest> = ["1", "2", "3"].map(digest).to_vec();
        for token in &digests {
            tokens.remember(*token, &verified("idp", None), 0);
        }
        assert_eq!(tokens.len(), 2);
        assert!(tokens.get(&digests[0], 0).is_none());
        assert!(tokens.get(&digests[2], 0).is_some());
        tokens.remember(digests[2], &verified("idp", None), 0);
        assert_eq!(
            tokens.order.len(),
            2,
            "remembering again adds no second place"
        );
    }
}

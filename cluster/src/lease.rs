//! When an owner must stop writing.
//!
//! etcd expires a lease TTL seconds after the *server* last processed a
//! keep-alive for it. The client knows only when it *sent* that keep-alive
//! (and, later, that it was acknowledged). The server processed it no
//! earlier than it was sent, so the lease cannot expire before
//! `sent + ttl`, by any clock that runs at the same rate. Timing from the
//! acknowledgement instead would let a slow reply push the owner's own
//! deadline past the real expiry, while a new owner already writes.
//!
//! The owner therefore stops writing at `sent + ttl - margin`, where the
//! margin covers the time fencing itself takes (remounting read-only,
//! refusing rounds) and clock-rate error. An etcd leader change only
//! extends leases, which keeps this rule safe.
//!
//! Times are milliseconds of a monotonic clock (`Instant` in the daemon, a
//! counter in tests), so the rule is pure.

use std::time::Duration;

/// The deadline rule for one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRule {
    ttl_ms: u64,
    margin_ms: u64,
}

/// Where an owner stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Writes are safe until this moment.
    Held { writable_until_ms: u64 },
    /// Stop writing now: the lease may expire before another renewal is
    /// known to have landed. Fencing is not undone by a late renewal; the
    /// node re-claims (and gets a new epoch) instead.
    MustFence { since_ms: u64 },
}

impl LeaseRule {
    /// `margin` must be below `ttl` (the config keeps it below half).
    pub fn new(ttl: Duration, margin: Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let margin_ms = u64::try_from(margin.as_millis()).unwrap_or(u64::MAX);
        Self {
            ttl_ms,
            margin_ms: margin_ms.min(ttl_ms),
        }
    }

    /// The last moment writes are safe, given when the newest *acknowledged*
    /// keep-alive (or the grant) was sent.
    pub fn writable_until(&self, acked_sent_ms: u64) -> u64 {
        acked_sent_ms.saturating_add(self.ttl_ms - self.margin_ms)
    }

    pub fn standing(&self, acked_sent_ms: u64, now_ms: u64) -> Standing {
        let until = self.writable_until(acked_sent_ms);
        if now_ms < until {
            Standing::Held {
                writable_until_ms: until,
            }
        } else {
            Standing::MustFence { since_ms: until }
        }
    }

    /// How often to send keep-alives: a third of the TTL (as etcd's own
    /// client does), so two may be lost before the margin is reached.
    pub fn renew_every(&self) -> Duration {
        Duration::from_millis((self.ttl_ms / 3).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_counts_from_the_send_not_the_reply() {
        let rule = LeaseRule::new(Duration::from_secs(10), Duration::from_secs(2));
        // Sent at 1,000, acknowledged at 4,000: writable until 9,000, not 12,000.
        assert_eq!(rule.writable_until(1_000), 9_000);
        assert_eq!(
            rule.standing(1_000, 4_000),
            Standing::Held {
                writable_until_ms: 9_000
            }
        );
        assert_eq!(
            rule.standing(1_000, 9_000),
            Standing::MustFence { since_ms: 9_000 }
        );
        assert_eq!(rule.renew_every(), Duration::from_millis(3_333));
    }

    #[test]
    fn a_margin_as_long_as_the_lease_never_writes() {
        let rule = LeaseRule::new(Duration::from_secs(2), Duration::from_secs(5));
        assert!(matches!(
            rule.standing(100, 100),
            Standing::MustFence { .. }
        ));
    }
}

//! The lease keeper: renews this node's etcd lease a third of a TTL apart
//! and applies the lease rule (`cluster::lease`) between renewals. When the
//! rule says stop, the node owns nothing any more: the watchdog
//! ([`super::fencing`]) shuts the owned block filesystems down at the same
//! deadline, from the heartbeat it already holds. A renewal acknowledged
//! after that does not undo the fence: the node revokes the old lease
//! (freeing its owner keys for others at once) and starts a new term.

use super::fencing::boot_ms;
use super::{ClusterNode, lock};
use cluster::{CoordinatorError, Standing};
use std::sync::Arc;
use std::time::Duration;

/// Between two looks at the lease rule: small against any sane margin.
const TICK: Duration = Duration::from_millis(100);

impl ClusterNode {
    /// Starts the keeper thread; it runs as long as the daemon.
    pub(crate) fn spawn_keeper(self: &Arc<Self>) {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("daffe-lease".into())
            .spawn(move || {
                loop {
                    me.tick();
                    std::thread::sleep(TICK);
                }
            })
            .expect("spawning the lease keeper");
    }

    /// One step: fence if the deadline passed, renew if due.
    pub(crate) fn tick(&self) {
        let renew_every = u64::try_from(self.rule.renew_every().as_millis()).unwrap_or(u64::MAX);
        let (lease, due) = {
            let mut term = lock(&self.term);
            let now = boot_ms();
            if !term.fenced
                && let Standing::MustFence { since_ms } =
                    self.rule.standing(term.acked_sent_ms, now)
            {
                let lost = term.fence();
                self.beat(&term);
                tracing::error!(
                    volumes = %lost.join(", "),
                    late_ms = now.saturating_sub(since_ms),
                    "lease not renewed in time: fenced; this node owns no volume until it re-claims"
                );
            }
            let due = now >= term.last_sent_ms.saturating_add(renew_every);
            if due {
                term.last_sent_ms = now;
            }
            (term.lease, due)
        };
        if !due {
            return;
        }
        let sent = boot_ms();
        match self.coord.keep_alive(lease) {
            Ok(()) => {
                let fenced = {
                    let mut term = lock(&self.term);
                    if !term.fenced && term.lease == lease {
                        term.acked_sent_ms = term.acked_sent_ms.max(sent);
                        self.beat(&term);
                    }
                    term.fenced
                };
                if fenced {
                    self.new_term(Some(lease));
                }
            }
            Err(CoordinatorError::LeaseGone(_)) => {
                {
                    let mut term = lock(&self.term);
                    if !term.fenced {
                        let lost = term.fence();
                        self.beat(&term);
                        tracing::error!(volumes = %lost.join(", "), "the lease is gone: fenced");
                    }
                }
                self.new_term(None);
            }
            Err(e) => tracing::warn!(error = %e, "lease keep-alive failed; retrying"),
        }
    }

    /// After a fence: a new lease, registered, with nothing owned.
    fn new_term(&self, old: Option<cluster::LeaseId>) {
        if let Some(old) = old
            && let Err(e) = self.coord.revoke(old)
        {
            tracing::warn!(error = %e, "revoking the fenced lease; it expires by itself");
        }
        let sent = boot_ms();
        let lease = match self.coord.grant(self.cfg.lease_ttl()) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "a new lease after the fence; retrying");
                return;
            }
        };
        if let Err(e) = self.register(lease) {
            tracing::warn!(error = %e, "registering this node under its new lease");
        }
        let mut term = lock(&self.term);
        term.lease = lease;
        term.acked_sent_ms = sent;
        term.last_sent_ms = sent;
        term.fenced = false;
        self.beat(&term);
        tracing::info!("new lease after the fence: this node may claim volumes again");
    }
}

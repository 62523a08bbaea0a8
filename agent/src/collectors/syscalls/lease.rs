//! Leases on the syscall hooks: every client of `sonde syscalls` and
//! `sonde top` holds one and renews it while it runs. In on-demand mode the
//! hooks stay attached while any lease is live, so a client that dies
//! without releasing its lease keeps them attached for at most [`TTL`].

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::aggregate::Since;

/// How long a lease lives without renewal. Clients renew at a third of it.
pub const TTL: Duration = Duration::from_secs(10);

struct Lease {
    expires: Instant,
    since: Since,
}

/// The live leases.
#[derive(Default)]
pub struct Leases {
    last_id: u64,
    live: HashMap<u64, Lease>,
}

impl Leases {
    /// A new lease whose window begins at `since`; returns its id.
    pub fn grant(&mut self, now: Instant, since: Since) -> u64 {
        self.last_id += 1;
        self.live.insert(
            self.last_id,
            Lease {
                expires: now + TTL,
                since,
            },
        );
        self.last_id
    }

    /// Extends lease `id` by [`TTL`] from `now`; false when it is unknown
    /// or has expired.
    pub fn renew(&mut self, id: u64, now: Instant) -> bool {
        self.expire(now);
        match self.live.get_mut(&id) {
            Some(l) => {
                l.expires = now + TTL;
                true
            }
            None => false,
        }
    }

    /// Ends lease `id`; false when it was not live.
    pub fn release(&mut self, id: u64) -> bool {
        self.live.remove(&id).is_some()
    }

    /// Where the window of live lease `id` begins.
    pub fn since(&self, id: u64, now: Instant) -> Option<Since> {
        self.live
            .get(&id)
            .filter(|l| l.expires > now)
            .map(|l| l.since)
    }

    /// Drops the leases that expired by `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.live.len();
        self.live.retain(|_, l| l.expires > now);
        before - self.live.len()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The oldest drain a live lease's window still needs.
    pub fn hold(&self) -> Option<u64> {
        self.live.values().map(|l| l.since.seq).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(seq: u64, at: Instant) -> Since {
        Since { seq, at }
    }

    #[test]
    fn leases_expire_unless_renewed() {
        let t0 = Instant::now();
        let mut l = Leases::default();
        let a = l.grant(t0, since(3, t0));
        let b = l.grant(t0, since(5, t0));
        assert_ne!(a, b);
        assert_eq!(l.hold(), Some(3));
        assert!(l.renew(b, t0 + TTL / 2));
        // At t0 + TTL, a has expired and b (renewed) has not.
        let t1 = t0 + TTL;
        assert!(l.since(a, t1).is_none());
        assert_eq!(l.since(b, t1).map(|s| s.seq), Some(5));
        assert_eq!(l.expire(t1), 1);
        assert!(!l.renew(a, t1), "an expired lease cannot be renewed");
        assert_eq!(l.len(), 1);
        assert_eq!(l.hold(), Some(5));
        assert!(l.release(b));
        assert!(!l.release(b));
        assert!(l.is_empty());
        assert_eq!(l.hold(), None);
    }
}

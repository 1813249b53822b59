//! Which subflows a health round reads, and how. A sock_diag dump walks
//! the kernel's whole TCP hash table, once per address family: 262,144
//! buckets and ~1 ms each on a host with a few GB of memory, where the
//! subflows are a handful. Measured with `strace -c` during a transfer: 98 %
//! of the daemon's syscall time went to those dumps, two per 50 ms round.
//! So the subflows a dump found are then looked up one by one (a hash
//! lookup each), and a full dump is made only when subflows may have come:
//! after an MPTCP event that adds one, after lost events, every
//! `FULL_EVERY_MS` whatever happens (a subflow whose event was missed), and
//! when there are too many to look up.

use std::collections::BTreeSet;

use braid_kernel::diag::{SocketKey, Subflow};
use braid_kernel::events::EventKind;

/// A full dump at least this often.
pub const FULL_EVERY_MS: u64 = 2000;
/// More known subflows than this: a dump costs less than the lookups.
pub const LOOKUP_MAX: usize = 64;

/// How to read the subflows this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Dump every TCP socket and keep the MPTCP subflows.
    Dump,
    /// Look these up one by one.
    Lookup(Vec<SocketKey>),
}

#[derive(Debug, Default)]
pub struct Census {
    known: BTreeSet<SocketKey>,
    /// When the last full dump was (daemon clock, ms); None: one is due.
    last_dump_ms: Option<u64>,
}

impl Census {
    pub fn plan(&self, now_ms: u64) -> Plan {
        match self.last_dump_ms {
            Some(t)
                if now_ms.saturating_sub(t) < FULL_EVERY_MS
                    && !self.known.is_empty()
                    && self.known.len() <= LOOKUP_MAX =>
            {
                Plan::Lookup(self.known.iter().copied().collect())
            }
            _ => Plan::Dump,
        }
    }

    /// A full dump found `subflows`.
    pub fn dumped(&mut self, subflows: &[Subflow], now_ms: u64) {
        self.known = subflows.iter().map(Subflow::key).collect();
        self.last_dump_ms = Some(now_ms);
    }

    /// The lookups of `keys` found `found` (in the same order): the gone
    /// ones are forgotten; what is left, in order.
    pub fn looked_up(&mut self, keys: &[SocketKey], found: Vec<Option<Subflow>>) -> Vec<Subflow> {
        let mut out = Vec::with_capacity(found.len());
        for (key, sf) in keys.iter().zip(found) {
            match sf {
                Some(sf) => out.push(sf),
                None => {
                    self.known.remove(key);
                }
            }
        }
        out
    }

    /// A subflow may have come that no lookup would find (MPTCP events
    /// lost): the next round dumps.
    pub fn may_have_new(&mut self) {
        self.last_dump_ms = None;
    }

    /// An MPTCP event: one that can bring a subflow (a connection created
    /// or established, a subflow established, a kind this version does
    /// not know) makes the next round dump.
    pub fn mptcp_event(&mut self, kind: EventKind) {
        if matches!(
            kind,
            EventKind::Created
                | EventKind::Established
                | EventKind::SubEstablished
                | EventKind::Unknown(_)
        ) {
            self.may_have_new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subflow(port: u16) -> Subflow {
        Subflow {
            local: format!("10.0.1.1:{port}").parse().unwrap(),
            remote: "10.0.2.2:443".parse().unwrap(),
            bound_ifindex: 2,
            state: "established",
            token_local: 1,
            token_remote: 2,
            local_id: 0,
            remote_id: 0,
            flags: 0,
            backup_local: false,
            backup_remote: false,
            tcp: None,
            rcvbuf: None,
        }
    }

    #[test]
    fn what_a_dump_found_is_looked_up_until_the_next_full_dump() {
        let mut c = Census::default();
        assert_eq!(c.plan(0), Plan::Dump, "nothing known yet");
        let found = [subflow(1000), subflow(1001)];
        c.dumped(&found, 100);
        let Plan::Lookup(keys) = c.plan(150) else {
            panic!("a dump just made: lookups");
        };
        assert_eq!(keys, vec![found[0].key(), found[1].key()]);
        assert_eq!(
            keys[0].bound_ifindex, 2,
            "a bound subflow is looked up on its interface"
        );
        // One is gone: forgotten, the other kept.
        let left = c.looked_up(&keys, vec![None, Some(found[1].clone())]);
        assert_eq!(left, vec![found[1].clone()]);
        assert_eq!(c.plan(200), Plan::Lookup(vec![found[1].key()]));
        // A full dump every FULL_EVERY_MS whatever happens.
        assert_eq!(c.plan(100 + FULL_EVERY_MS), Plan::Dump);
    }

    #[test]
    fn new_subflows_lost_events_none_known_or_too_many_make_a_dump() {
        let mut c = Census::default();
        c.dumped(&[subflow(1000)], 0);
        c.mptcp_event(EventKind::SubClosed);
        assert!(
            matches!(c.plan(5), Plan::Lookup(_)),
            "a closed subflow is not a new one"
        );
        c.mptcp_event(EventKind::SubEstablished);
        assert_eq!(c.plan(10), Plan::Dump);
        c.dumped(&[], 20);
        assert_eq!(c.plan(30), Plan::Dump, "nothing to look up");
        let many: Vec<Subflow> = (0..=LOOKUP_MAX as u16).map(subflow).collect();
        c.dumped(&many, 40);
        assert_eq!(c.plan(50), Plan::Dump, "a dump is cheaper");
        c.dumped(&many[..LOOKUP_MAX], 60);
        assert!(matches!(c.plan(70), Plan::Lookup(k) if k.len() == LOOKUP_MAX));
    }
}

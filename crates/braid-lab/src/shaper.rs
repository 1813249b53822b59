//! The impairment model of one direction of one path, without I/O: given a
//! packet's arrival time and size it decides to drop it or when to release
//! it. Deterministic for a given seed.

use crate::mptcp_option::{carries_mptcp, is_mp_capable_syn, MP_PRIO};
use crate::spec::PathSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    /// Release at this time (ns on the caller's clock).
    ReleaseAt(u64),
}

pub struct Shaper {
    pub spec: PathSpec,
    /// Drop everything (a silent blackhole, carrier stays up).
    pub blackhole: bool,
    rng: fastrand::Rng,
    last_release: u64,
    link_free_at: u64,
    /// MP_PRIO options lost so far (`PathSpec::lose_mp_prio`).
    mp_prio_lost: u32,
    /// MP_CAPABLE SYNs lost so far (`PathSpec::lose_mp_capable_syn`).
    mp_capable_syns_lost: u32,
}

/// With an emulator rate, a packet waiting longer than this is tail-dropped.
const MAX_QUEUE_NS: u64 = 200_000_000;

impl Shaper {
    pub fn new(spec: PathSpec, seed: u64) -> Self {
        Shaper {
            spec,
            blackhole: false,
            rng: fastrand::Rng::with_seed(seed),
            last_release: 0,
            link_free_at: 0,
            mp_prio_lost: 0,
            mp_capable_syns_lost: 0,
        }
    }

    /// Whether `packet` is one the spec loses on purpose, whatever else
    /// would happen to it: one of the first MP_PRIO options
    /// (`PathSpec::lose_mp_prio`) or MP_CAPABLE SYNs
    /// (`PathSpec::lose_mp_capable_syn`).
    pub fn loses_on_purpose(&mut self, packet: &[u8]) -> bool {
        if self.mp_prio_lost < self.spec.lose_mp_prio && carries_mptcp(packet, MP_PRIO) {
            self.mp_prio_lost += 1;
            return true;
        }
        if self.mp_capable_syns_lost < self.spec.lose_mp_capable_syn && is_mp_capable_syn(packet) {
            self.mp_capable_syns_lost += 1;
            return true;
        }
        false
    }

    pub fn on_packet(&mut self, now: u64, len: usize) -> Verdict {
        if self.blackhole || (self.spec.loss > 0.0 && self.rng.f64() < self.spec.loss) {
            return Verdict::Drop;
        }
        let mut start = now;
        let emu_rate = self
            .spec
            .rate_bps
            .filter(|r| self.spec.rate_in_emulator && *r > 0);
        if let Some(rate) = emu_rate {
            start = now.max(self.link_free_at);
            if start - now > MAX_QUEUE_NS {
                return Verdict::Drop;
            }
            self.link_free_at = start + len as u64 * 8 * 1_000_000_000 / rate;
            start = self.link_free_at;
        }
        let delay_ns = self.spec.delay_us as i64 * 1000;
        let jitter_ns = self.spec.jitter_us as i64 * 1000;
        let offset = if jitter_ns > 0 {
            self.rng.i64(-jitter_ns..=jitter_ns)
        } else {
            0
        };
        let mut release = start + (delay_ns + offset).max(0) as u64;
        if !self.spec.reorder {
            release = release.max(self.last_release);
        }
        self.last_release = self.last_release.max(release);
        Verdict::ReleaseAt(release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(delay_us: u64, jitter_us: u64, loss: f64) -> PathSpec {
        PathSpec {
            delay_us,
            jitter_us,
            loss,
            ..Default::default()
        }
    }

    #[test]
    fn the_first_mp_prios_asked_for_are_lost_and_nothing_else() {
        use crate::mptcp_option::{ipv4_tcp, PRIO_OPTION};
        let prio = ipv4_tcp(&PRIO_OPTION);
        let ack = ipv4_tcp(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        let mut s = Shaper::new(
            PathSpec {
                lose_mp_prio: 2,
                ..spec(0, 0, 0.0)
            },
            1,
        );
        assert!(!s.loses_on_purpose(&ack));
        assert!(s.loses_on_purpose(&prio));
        assert!(!s.loses_on_purpose(&ack));
        assert!(s.loses_on_purpose(&prio));
        assert!(!s.loses_on_purpose(&prio), "only the first two");
        let mut s = Shaper::new(spec(0, 0, 0.0), 1);
        assert!(!s.loses_on_purpose(&prio), "none asked for");
    }

    #[test]
    fn the_first_mp_capable_syns_asked_for_are_lost() {
        use crate::mptcp_option::ipv4_tcp;
        let mut syn = ipv4_tcp(&[30, 4, 0x01, 0x81]);
        syn[20 + 13] = 0x02;
        let mut s = Shaper::new(
            PathSpec {
                lose_mp_capable_syn: 2,
                ..spec(0, 0, 0.0)
            },
            1,
        );
        assert!(s.loses_on_purpose(&syn));
        assert!(s.loses_on_purpose(&syn));
        assert!(!s.loses_on_purpose(&syn), "only the first two");
    }

    #[test]
    fn fixed_delay() {
        let mut s = Shaper::new(spec(10_000, 0, 0.0), 1);
        assert_eq!(s.on_packet(5, 1500), Verdict::ReleaseAt(10_000_005));
    }

    #[test]
    fn loss_rate_is_close_to_setting() {
        let mut s = Shaper::new(spec(0, 0, 0.05), 42);
        let drops = (0..100_000)
            .filter(|i| s.on_packet(*i, 100) == Verdict::Drop)
            .count();
        assert!((4_500..5_500).contains(&drops), "{drops}");
    }

    #[test]
    fn jitter_without_reordering_is_monotonic() {
        let mut s = Shaper::new(spec(10_000, 5_000, 0.0), 7);
        let mut last = 0;
        for i in 0..10_000u64 {
            let Verdict::ReleaseAt(t) = s.on_packet(i * 100_000, 100) else {
                panic!()
            };
            assert!(t >= last);
            assert!(t >= i * 100_000 + 5_000_000 && t <= i * 100_000 + 15_000_000 || t == last);
            last = t;
        }
    }

    #[test]
    fn jitter_with_reordering_can_overtake() {
        let mut s = Shaper::new(
            PathSpec {
                reorder: true,
                ..spec(10_000, 5_000, 0.0)
            },
            7,
        );
        let times: Vec<u64> = (0..1000u64)
            .map(|i| match s.on_packet(i * 10_000, 100) {
                Verdict::ReleaseAt(t) => t,
                Verdict::Drop => unreachable!(),
            })
            .collect();
        assert!(times.windows(2).any(|w| w[1] < w[0]));
    }

    #[test]
    fn blackhole_and_rate() {
        let mut s = Shaper::new(spec(0, 0, 0.0), 1);
        s.blackhole = true;
        assert_eq!(s.on_packet(0, 100), Verdict::Drop);
        s.blackhole = false;
        s.spec.rate_bps = Some(8_000_000); // 1 byte per microsecond
        s.spec.rate_in_emulator = true;
        assert_eq!(s.on_packet(0, 1000), Verdict::ReleaseAt(1_000_000));
        assert_eq!(s.on_packet(0, 1000), Verdict::ReleaseAt(2_000_000));
    }
}

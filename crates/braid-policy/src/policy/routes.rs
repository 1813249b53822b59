//! The standby route's larger initial window (handover and interactive).

use super::*;
use crate::config::INTERACTIVE_MAX_INITCWND;

impl Policy {
    /// The modes connections here may be in: the host-wide one, and with
    /// the per-connection path manager each rule's as well.
    fn modes_in_use(&self) -> Vec<PathMode> {
        let mut modes = vec![self.config.policy.mode];
        if self.config.pm == PmKind::Userspace {
            modes.extend(self.config.apps.iter().map(|a| a.mode));
        }
        modes
    }

    /// The window a path standing by in `mode` gets.
    fn window_in(&self, mode: PathMode) -> u32 {
        let window = self.config.policy.standby_initcwnd;
        match mode {
            PathMode::Interactive => window.min(INTERACTIVE_MAX_INITCWND),
            PathMode::Aggregate | PathMode::Handover => window,
        }
    }

    /// The mode in which `w` stands by for some connection, if one does;
    /// of several, the one with the larger window.
    fn standby_in(&self, w: &Want) -> Option<PathMode> {
        self.modes_in_use()
            .into_iter()
            .filter(|m| match m {
                PathMode::Aggregate => false,
                PathMode::Interactive => true,
                PathMode::Handover => self.role_of(w) == Role::Secondary,
            })
            .max_by_key(|m| self.window_in(*m))
    }

    /// The interfaces that stand by and may have to take over at once,
    /// with the mode that makes them.
    pub(super) fn standby_interfaces(&self, wanted: &[Want]) -> BTreeMap<u32, PathMode> {
        wanted
            .iter()
            .filter_map(|w| Some((self.ifindex_of(w.addr)?, self.standby_in(w)?)))
            .collect()
    }

    /// Give the default routes of standby paths a larger initial window
    /// (`policy.standby_initcwnd`) and put back what other routes had.
    /// `wanted` empty (stopping): every route Braid changed is restored.
    pub(super) fn reconcile_standby_windows(&mut self, wanted: &[Want], out: &mut Vec<Decision>) {
        let standby = if self.config.policy.standby_initcwnd == 0 {
            BTreeMap::new()
        } else {
            self.standby_interfaces(wanted)
        };
        let routes: Vec<DefaultRoute> = self.default_routes.iter().copied().collect();
        for r in routes {
            let key = r.key();
            if self.initcwnd_refused.contains_key(&key) {
                continue;
            }
            let name = link_name(&self.links, r.ifindex);
            let (target, reason) = if let Some(&mode) = standby.get(&r.ifindex) {
                self.initcwnd_set.entry(key).or_insert(r.initcwnd);
                let whose = if self.config.pm == PmKind::Userspace {
                    format!("for connections in {} mode", mode.name())
                } else {
                    format!("{} mode", mode.name())
                };
                let window = self.window_in(mode);
                let capped = if window < self.config.policy.standby_initcwnd {
                    format!(", at most {INTERACTIVE_MAX_INITCWND} in interactive mode, where every path stands by, the one of the host's unbound connections too")
                } else {
                    String::new()
                };
                (
                    Some(window),
                    format!(
                        "{name} stands by ({whose}): when it takes over it resends the failed path's data in flight, so TCP starts there with {window} segments instead of 10 (policy.standby_initcwnd{capped})"
                    ),
                )
            } else if let Some(before) = self.initcwnd_set.remove(&key) {
                let why = if self.stopping {
                    "the daemon is stopping"
                } else {
                    "it no longer stands by"
                };
                (before, format!("{why}: {name}'s initcwnd is put back"))
            } else {
                continue;
            };
            if r.initcwnd == target {
                continue;
            }
            self.default_routes.retain(|x| x.key() != key);
            self.default_routes.insert(DefaultRoute {
                initcwnd: target,
                ..r
            });
            out.push(Decision {
                id: 0,
                action: Action::SetRouteInitcwnd {
                    ifindex: r.ifindex,
                    table: r.table,
                    ipv6: r.ipv6,
                    initcwnd: target,
                },
                reason,
            });
        }
        // Routes that are gone need nothing put back.
        let present: BTreeSet<RouteKey> = self.default_routes.iter().map(|r| r.key()).collect();
        self.initcwnd_set.retain(|k, _| present.contains(k));
    }
}

//! The standby route's larger initial window (handover mode).

use super::*;

impl Policy {
    /// The interfaces that stand by and may have to take over at once.
    pub(super) fn standby_interfaces(&self, wanted: &[Want]) -> BTreeSet<u32> {
        let on = |w: &&Want| match self.config.policy.mode {
            PathMode::Aggregate => false,
            PathMode::Interactive => true,
            PathMode::Handover => self.role_of(w) == Role::Secondary,
        };
        wanted
            .iter()
            .filter(on)
            .filter_map(|w| self.ifindex_of(w.addr))
            .collect()
    }

    /// Give the default routes of standby paths a larger initial window
    /// (`policy.standby_initcwnd`) and put back what other routes had.
    /// `wanted` empty (stopping): every route Braid changed is restored.
    pub(super) fn reconcile_standby_windows(&mut self, wanted: &[Want], out: &mut Vec<Decision>) {
        let window = self.config.policy.standby_initcwnd;
        let standby = if window == 0 {
            BTreeSet::new()
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
            let (target, reason) = if standby.contains(&r.ifindex) {
                self.initcwnd_set.entry(key).or_insert(r.initcwnd);
                (
                    Some(window),
                    format!(
                        "{name} stands by ({} mode): when it takes over it resends the failed path's data in flight, so TCP starts there with {window} segments instead of 10 (policy.standby_initcwnd)",
                        self.config.policy.mode.name()
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

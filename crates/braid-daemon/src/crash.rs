//! Test-only crash injection: `BRAID_DAEMON_CRASH_AT=POINT[:N]` makes the
//! daemon SIGKILL itself the Nth time (default 1) it reaches POINT, so
//! tests can check that a crash at any step leaves nothing the next start
//! cannot put right. Points: `before:ACTION` and `after:ACTION` around
//! each kernel action (ACTION as in the status JSON: `add_endpoint`,
//! `remove_endpoint`, `set_route_initcwnd`, ...), and
//! `before:state_rename` (the new state file is written and synced but
//! not yet in place). Unset, it costs one environment lookup at start.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "BRAID_DAEMON_CRASH_AT";

struct Target {
    point: String,
    nth: u32,
}

fn target() -> Option<&'static Target> {
    static T: OnceLock<Option<Target>> = OnceLock::new();
    T.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (point, nth) = match v.rsplit_once(':') {
            Some((p, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                (p.to_string(), n.parse().ok()?)
            }
            _ => (v.clone(), 1),
        };
        Some(Target { point, nth })
    })
    .as_ref()
}

static HITS: AtomicU32 = AtomicU32::new(0);

/// Die here, by SIGKILL, if this is the chosen point and time.
pub fn point(name: &str) {
    let Some(t) = target() else { return };
    if t.point != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == t.nth {
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        // SIGKILL to ourselves is delivered before kill returns; never go on.
        std::process::abort();
    }
}

/// `before:NAME` / `after:NAME` for an action.
pub fn around(when: &str, action: &braid_policy::model::Action) {
    if target().is_some() {
        point(&format!("{when}:{}", action_name(action)));
    }
}

/// The action's name as the status JSON has it (`add_endpoint`, ...).
pub fn action_name(a: &braid_policy::model::Action) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v["action"].as_str().map(str::to_string))
        .unwrap_or_default()
}

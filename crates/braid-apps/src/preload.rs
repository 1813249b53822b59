//! The preload library: where it is, and the environment that makes a
//! program load it (LD_PRELOAD, GODEBUG for Go, the scope).

use std::path::{Path, PathBuf};

use braid_kernel::Error;

pub const PRELOAD_NAME: &str = "libbraid_preload.so";

/// Which sockets become MPTCP (`BRAID_MPTCP_SCOPE`).
pub fn scope(listen_only: bool, connect_only: bool) -> &'static str {
    match (listen_only, connect_only) {
        (true, _) => "listen",
        (_, true) => "connect",
        _ => "all",
    }
}

/// Where the preload library is: next to the binary, or in the install prefix.
/// Where `braid install` puts the preload library under `prefix`.
pub fn installed_preload(prefix: &Path) -> PathBuf {
    prefix.join("lib/braid").join(PRELOAD_NAME)
}

/// Where the preload library may be, in the order it is looked for: the
/// copy installed under `prefix` (when given), then next to the braid
/// executable in `dir` (a build tree), then in `dir/../lib/braid` (an
/// installed tree).
pub fn preload_candidates(dir: &Path, prefix: Option<&Path>) -> Vec<PathBuf> {
    prefix
        .map(installed_preload)
        .into_iter()
        .chain([
            dir.join(PRELOAD_NAME),
            dir.join("../lib/braid").join(PRELOAD_NAME),
        ])
        .collect()
}

pub fn find_preload() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("BRAID_PRELOAD_LIB") {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(p)
        } else {
            Err(Error::Invalid(format!(
                "BRAID_PRELOAD_LIB points to {}, which does not exist",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("cannot find the braid executable: {e}")))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut candidates = preload_candidates(dir, None);
    candidates.extend(["/usr/local", "/usr"].map(|p| installed_preload(Path::new(p))));
    candidates.iter().find(|p| p.exists()).map(|p| p.canonicalize().unwrap_or(p.clone())).ok_or_else(|| {
        Error::Invalid(format!(
            "the preload library {PRELOAD_NAME} was not found (looked in {}); build it with 'cargo build -p braid-preload' \
             and install it next to braid or in /usr/local/lib/braid/, or set BRAID_PRELOAD_LIB",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// `existing` with `ours` appended (space-separated, as ld.so reads it).
pub fn append_preload(existing: Option<&str>, ours: &str) -> String {
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) if e.split([' ', ':']).any(|x| x == ours) => e.to_string(),
        Some(e) => format!("{e} {ours}"),
        None => ours.to_string(),
    }
}

/// `existing` GODEBUG with multipathtcp=1 appended (unless it says otherwise).
pub fn append_godebug(existing: Option<&str>) -> String {
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) if e.split(',').any(|x| x.trim().starts_with("multipathtcp=")) => e.to_string(),
        Some(e) => format!("{e},multipathtcp=1"),
        None => "multipathtcp=1".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_merging() {
        assert_eq!(append_preload(None, "/b.so"), "/b.so");
        assert_eq!(append_preload(Some("/a.so"), "/b.so"), "/a.so /b.so");
        assert_eq!(append_preload(Some("/a.so /b.so"), "/b.so"), "/a.so /b.so");
        assert_eq!(
            append_godebug(Some("http2debug=1")),
            "http2debug=1,multipathtcp=1"
        );
        assert_eq!(append_godebug(Some("multipathtcp=0")), "multipathtcp=0");
    }
}

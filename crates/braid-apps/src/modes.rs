//! Per-program and per-unit modes: what braidd needs to apply them, the
//! rule file of a unit, and asking braidd to read it.

use std::path::{Path, PathBuf};

use braid_kernel::Error;
use braid_policy::config::PathMode;

use crate::systemd::under;

/// The mode called `name`, or an error that lists the modes.
pub fn parse_mode(name: &str) -> Result<PathMode, Error> {
    PathMode::parse(name).ok_or_else(|| {
        Error::Invalid(format!(
            "unknown mode '{name}': aggregate, handover or interactive"
        ))
    })
}

/// Why `--mode` will not be applied here, if it will not: only braidd's
/// userspace path manager applies per-connection modes.
pub fn mode_not_applied(mode: PathMode) -> Option<String> {
    match braid_kernel::sysctl::path_manager() {
        Ok(pm) if pm == "userspace" => None,
        Ok(pm) => Some(format!(
            "--mode {} is applied by braidd with pm = \"userspace\"; this network namespace's path manager is '{pm}', so these connections get the host-wide mode (see 'braid status')",
            mode.name()
        )),
        Err(e) => Some(format!(
            "--mode {}: the path manager cannot be read ({e}); the mode is applied only by braidd with pm = \"userspace\"",
            mode.name()
        )),
    }
}

/// Where the unit's `--mode` rule file is, under `root`.
pub fn app_rule_path(root: &Path, config: &Path, unit: &str) -> PathBuf {
    use braid_daemon::config_file::{app_file, apps_dir};
    app_file(&apps_dir(&under(root, &config.to_string_lossy())), unit)
}

/// Ask braidd to read its configuration and rules again; what happened,
/// in words.
pub fn reload_braidd(root: &Path, socket: &Path) -> String {
    if root != Path::new("/") {
        return "braidd reads it when it next starts or reloads".into();
    }
    use braid_daemon::control::{request, Request};
    match request(socket, &Request::Reload) {
        Ok(r) if r.ok => "braidd reloaded: the unit's new connections get this mode".into(),
        Ok(r) => format!(
            "braidd refused to reload: {} (fix it, then 'braid daemon reload')",
            r.error.unwrap_or_default()
        ),
        Err(e) => format!(
            "braidd does not answer on {} ({e}): the rule applies when it starts",
            socket.display()
        ),
    }
}

/// Write the unit's rule file under `root` (braidd's `config` gives the
/// directory); its path.
pub fn write_rule(
    root: &Path,
    config: &Path,
    unit: &str,
    mode: PathMode,
) -> Result<PathBuf, Error> {
    let path = app_rule_path(root, config, unit);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Invalid(format!("creating {}: {e}", dir.display())))?;
    }
    let text = braid_daemon::config_file::app_file_text(unit, mode);
    std::fs::write(&path, text)
        .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))?;
    Ok(path)
}

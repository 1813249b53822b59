//! systemd units: Braid's drop-in (the preload library in the unit's
//! environment, the unit's own LD_PRELOAD and GODEBUG kept), and the
//! units that have it.

use std::path::{Path, PathBuf};
use std::process::Command;

use braid_kernel::Error;

use crate::preload::{append_godebug, append_preload};

pub const DROPIN_NAME: &str = "50-braid-mptcp.conf";

/// A unit name (".service" added when no type is given).
pub fn unit_name(u: &str) -> Result<String, Error> {
    if u.is_empty()
        || u.contains('/')
        || u.starts_with('.')
        || u.chars().any(|c| c == '\'' || c == '"' || c.is_control())
    {
        return Err(Error::Invalid(format!("'{u}' is not a systemd unit name")));
    }
    Ok(if u.contains('.') {
        u.to_string()
    } else {
        format!("{u}.service")
    })
}

/// `p` below `root` (a root filesystem for tests and images).
pub fn under(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Split a systemd `Environment=` value into assignments (quotes honoured).
pub fn split_environment(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut has = false;
    for c in v.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => {
                quote = Some(c);
                has = true;
            }
            (None, c) if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            (_, c) => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// The unit's own LD_PRELOAD and GODEBUG (unit file and other drop-ins),
/// and whether it reads an EnvironmentFile.
/// The unit's LD_PRELOAD and GODEBUG as its files set them, and whether
/// it reads an EnvironmentFile= (which could set them too).
pub fn unit_environment(root: &Path, unit: &str) -> (Option<String>, Option<String>, bool) {
    let mut files = Vec::new();
    for dir in [
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ] {
        let f = under(root, dir).join(unit);
        if f.exists() {
            files.push(f);
            break;
        }
    }
    for dir in [
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/run/systemd/system",
        "/etc/systemd/system",
    ] {
        if let Ok(rd) = std::fs::read_dir(under(root, dir).join(format!("{unit}.d"))) {
            let mut confs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf") && !p.ends_with(DROPIN_NAME))
                .collect();
            confs.sort();
            files.extend(confs);
        }
    }
    let (mut preload, mut godebug, mut envfile) = (None, None, false);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("EnvironmentFile=") {
                envfile = true;
            }
            if let Some(v) = line.strip_prefix("Environment=") {
                if v.is_empty() {
                    preload = None;
                    godebug = None;
                }
                for a in split_environment(v) {
                    if let Some(x) = a.strip_prefix("LD_PRELOAD=") {
                        preload = Some(x.to_string());
                    } else if let Some(x) = a.strip_prefix("GODEBUG=") {
                        godebug = Some(x.to_string());
                    }
                }
            }
        }
    }
    (preload, godebug, envfile)
}

pub fn dropin_text(
    unit: &str,
    lib: &str,
    preload: Option<&str>,
    godebug: Option<&str>,
    scope: &str,
    bpf_exe: Option<&str>,
) -> String {
    let mut s = format!(
        "# Written by 'braid enable {unit}': the unit's programs use MPTCP.\n\
         # Remove with 'braid disable {unit}'. The unit's own LD_PRELOAD and\n\
         # GODEBUG are kept: a drop-in's Environment= replaces them otherwise.\n\
         [Service]\n\
         Environment=\"LD_PRELOAD={}\"\n\
         Environment=\"GODEBUG={}\"\n\
         Environment=\"BRAID_MPTCP_SCOPE={scope}\"\n",
        append_preload(preload, lib),
        append_godebug(godebug),
    );
    if let Some(exe) = bpf_exe {
        let pin = format!("/sys/fs/bpf/braid/{unit}");
        s.push_str(&format!(
            "# BPF: force MPTCP in this unit's cgroup, also for static binaries.\n\
             ExecStartPre=+{exe} bpf attach --self-cgroup --pin {pin}\n\
             ExecStopPost=+{exe} bpf detach --pin {pin}\n"
        ));
    }
    s
}

pub fn systemd_running(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").exists()
}

/// `systemctl daemon-reload` when systemd runs this root (no D-Bus crate needed).
pub fn reload_systemd(root: &Path) -> bool {
    systemd_running(root)
        && Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .is_ok_and(|s| s.success())
}

/// Units with Braid's drop-in, for `braid status`.
pub fn enabled_units(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(under(root, "/etc/systemd/system"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join(DROPIN_NAME).exists())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".d")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_lines_are_split_with_quotes() {
        assert_eq!(
            split_environment("A=1 \"B=two words\" 'C=3'"),
            vec!["A=1", "B=two words", "C=3"]
        );
    }
}

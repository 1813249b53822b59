//! `net.mptcp.*` sysctls (and `net.ipv4.tcp_rmem`) of the current network namespace, through
//! /proc/sys (which always shows the namespace of the calling thread).
//! Use [`crate::netns::run_in`] to reach another namespace.

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::error::{Error, Op, Result};

const ROOT: &str = "/proc/sys/net/mptcp";

fn path_of(name: &str) -> Result<PathBuf> {
    let key = name.strip_prefix("net.mptcp.").unwrap_or(name);
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::Invalid(format!(
            "'{name}' is not a net.mptcp sysctl name (expected e.g. net.mptcp.enabled)"
        )));
    }
    Ok(PathBuf::from(ROOT).join(key))
}

fn sysctl_error(name: &str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::Invalid(format!(
            "this kernel has no sysctl {name} (an older kernel, or MPTCP is not built in)"
        ))
    } else {
        Error::io(Op::Sysctl, e)
    }
}

/// Read one sysctl, e.g. `enabled` or `net.mptcp.enabled`.
pub fn read(name: &str) -> Result<String> {
    let path = path_of(name)?;
    fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| sysctl_error(name, e))
}

pub fn write(name: &str, value: &str) -> Result<()> {
    let path = path_of(name)?;
    fs::write(&path, value).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => Error::Invalid(format!(
            "the kernel rejected '{value}' for net.mptcp.{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        )),
        _ => sysctl_error(name, e),
    })
}

/// The path manager in use, by the name `path_manager` gives it
/// ("kernel", "userspace"; 6.15+), else from `pm_type` (0, 1).
pub fn path_manager() -> Result<String> {
    match read("path_manager") {
        Ok(name) => Ok(name),
        Err(_) => read("pm_type").map(|t| if t == "1" { "userspace" } else { "kernel" }.into()),
    }
}

/// Select the path manager by name ("kernel" or "userspace"), through
/// `path_manager` where it exists, else `pm_type`.
pub fn set_path_manager(name: &str) -> Result<()> {
    if read("path_manager").is_ok() {
        return write("path_manager", name);
    }
    match name {
        "kernel" => write("pm_type", "0"),
        "userspace" => write("pm_type", "1"),
        other => Err(Error::Invalid(format!(
            "path manager '{other}' needs net.mptcp.path_manager (Linux 6.15+)"
        ))),
    }
}

/// Whether MPTCP sysctls exist at all (MPTCP built in and loaded).
pub fn available() -> bool {
    fs::metadata(ROOT).is_ok()
}

/// Every `net.mptcp.*` sysctl with its value, sorted by name.
pub fn all() -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(ROOT).map_err(|e| sysctl_error("net.mptcp", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(Op::Sysctl, e))?;
        let key = entry.file_name().to_string_lossy().into_owned();
        // Some entries are write-only or unreadable: skip them rather than fail.
        if let Ok(v) = fs::read_to_string(entry.path()) {
            out.push((format!("net.mptcp.{key}"), v.trim().to_string()));
        }
    }
    out.sort();
    Ok(out)
}

/// `net.ipv4.tcp_rmem` (minimum, initial, maximum receive buffer, bytes),
/// for the doctor's receive-buffer hint.
pub fn tcp_rmem() -> Result<[u32; 3]> {
    tcp_buffer_sizes("tcp_rmem")
}

/// `net.ipv4.tcp_wmem` (minimum, initial, maximum send buffer, bytes), for
/// the doctor's send-queue hint.
pub fn tcp_wmem() -> Result<[u32; 3]> {
    tcp_buffer_sizes("tcp_wmem")
}

fn tcp_buffer_sizes(name: &str) -> Result<[u32; 3]> {
    let path = format!("/proc/sys/net/ipv4/{name}");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(Op::Sysctl, e))?;
    parse_buffer_sizes(&text)
        .ok_or_else(|| Error::Invalid(format!("{path} holds '{}', not three numbers", text.trim())))
}

fn parse_buffer_sizes(text: &str) -> Option<[u32; 3]> {
    let v: Vec<u32> = text
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_buffer_sizes;

    #[test]
    fn buffer_sizes_are_three_numbers() {
        assert_eq!(
            parse_buffer_sizes("4096\t131072\t6291456\n"),
            Some([4096, 131072, 6291456])
        );
        assert_eq!(parse_buffer_sizes("4096 131072"), None);
        assert_eq!(parse_buffer_sizes("4096 x 6291456"), None);
    }
}

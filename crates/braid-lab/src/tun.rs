//! TUN devices: open one in a given network namespace (the descriptor stays
//! bound to that namespace's device) and switch its carrier.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::LabError;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETCARRIER: libc::c_ulong = 0x4004_54e2;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Create TUN device `name` (layer 3, no packet info header).
pub fn open_tun(name: &str) -> Result<OwnedFd, LabError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(LabError::Invalid(format!(
            "interface name '{name}' must be 1 to 15 bytes"
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| {
            LabError::Io(format!(
                "opening /dev/net/tun (is the tun module available?): {e}"
            ))
        })?;
    // SAFETY: ifreq is plain data; we fill the name and flags the ioctl reads.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(LabError::Io(format!(
            "creating TUN device {name}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(file.into())
}

/// Open a TUN device inside the named network namespace.
pub fn open_tun_in(netns: &str, name: &str) -> Result<OwnedFd, LabError> {
    let (ns, n) = (netns.to_string(), name.to_string());
    std::thread::spawn(move || {
        braid_kernel::netns::enter(&ns)?;
        open_tun(&n)
    })
    .join()
    .map_err(|_| LabError::Io("TUN creation thread panicked".into()))?
}

/// Switch a TUN device's carrier (NO-CARRIER when off). Not a cable pull
/// by itself: the device still takes what is written to it, and its kernel
/// sends into it until the link watch runs (the emulator stops the wire).
pub fn set_carrier(fd: &OwnedFd, on: bool) -> Result<(), LabError> {
    let mut v: libc::c_int = on as libc::c_int;
    // SAFETY: TUNSETCARRIER reads one int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETCARRIER, &mut v) } < 0 {
        return Err(LabError::Io(format!(
            "TUNSETCARRIER: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

//! Forcing MPTCP with BPF, for programs LD_PRELOAD cannot reach (static
//! binaries, Go without GODEBUG, anything that issues the syscall itself):
//! an `fmod_ret` program on the kernel's `update_socket_protocol()` hook
//! (Linux 6.6+) that turns TCP stream sockets into MPTCP for the processes
//! of one cgroup. Loaded with the raw `bpf()` syscall: the program is 16
//! instructions and needs nothing from libbpf.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

pub const HOOK: &str = "update_socket_protocol";
const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_MODIFY_RETURN: u32 = 26;
const BTF_KIND_FUNC: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The kernel cannot do this at all; the text says why and what allows it.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Failed(String),
}

/// Why this kernel refuses, in words, with what would allow it.
fn explain_refusal(errno: i32, verifier_log: &str) -> String {
    let log = verifier_log.trim();
    let base = match errno {
        libc::EPERM | libc::EACCES => "the kernel refused to load a BPF tracing program (fmod_ret) with EPERM: \
             this needs CAP_BPF/CAP_SYS_ADMIN and CAP_PERFMON, a kernel not in lockdown mode \
             (/sys/kernel/security/lockdown must say [none]), kernel.unprivileged_bpf_disabled does not matter for root; \
             some hardened or virtualised kernels refuse tracing programs entirely (security modules, \
             CONFIG_BPF_LSM policies); use 'braid run' without --bpf (LD_PRELOAD) instead",
        libc::EINVAL => "the kernel rejected the program (EINVAL): fmod_ret needs CONFIG_FUNCTION_ERROR_INJECTION and \
             update_socket_protocol() allows it only on Linux 6.6 or newer",
        524 | libc::EOPNOTSUPP => "this kernel cannot attach fmod_ret programs (no BPF trampoline on this architecture or build)",
        _ => "the kernel refused the BPF program",
    };
    let err = std::io::Error::from_raw_os_error(errno);
    if log.is_empty() {
        format!("{base} [{err}]")
    } else {
        format!(
            "{base} [{err}; verifier: {}]",
            log.lines().last().unwrap_or("")
        )
    }
}

/// Find the BTF type id of kernel function `name` in vmlinux BTF.
pub fn btf_func_id(name: &str) -> Result<u32, BpfError> {
    let mut data = Vec::new();
    File::open(BTF_VMLINUX)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| {
            BpfError::Unsupported(format!(
                "{BTF_VMLINUX} is not readable ({e}): the kernel needs CONFIG_DEBUG_INFO_BTF=y for BPF trampolines"
            ))
        })?;
    find_func(&data, name)?.ok_or_else(|| {
        BpfError::Unsupported(format!(
            "the kernel has no {name}() (it appeared in Linux 6.6): MPTCP cannot be forced with BPF here"
        ))
    })
}

fn rd32(d: &[u8], off: usize) -> Result<u32, BpfError> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| BpfError::Failed("truncated BTF".into()))
}

/// Walk the BTF type section (little-endian hosts) looking for a FUNC.
pub fn find_func(d: &[u8], name: &str) -> Result<Option<u32>, BpfError> {
    if d.len() < 24 || u16::from_le_bytes([d[0], d[1]]) != 0xeb9f {
        return Err(BpfError::Failed("not a BTF blob (bad magic)".into()));
    }
    let hdr_len = rd32(d, 4)? as usize;
    let type_off = hdr_len + rd32(d, 8)? as usize;
    let type_len = rd32(d, 12)? as usize;
    let str_off = hdr_len + rd32(d, 16)? as usize;
    let str_len = rd32(d, 20)? as usize;
    let strings = d
        .get(str_off..str_off + str_len)
        .ok_or_else(|| BpfError::Failed("truncated BTF strings".into()))?;
    let name_at = |off: u32| -> &[u8] {
        let s = &strings[(off as usize).min(strings.len())..];
        &s[..s.iter().position(|b| *b == 0).unwrap_or(s.len())]
    };
    let mut pos = type_off;
    let end = type_off + type_len;
    let mut id = 1u32;
    while pos + 12 <= end {
        let name_off = rd32(d, pos)?;
        let info = rd32(d, pos + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        if kind == BTF_KIND_FUNC && name_at(name_off) == name.as_bytes() {
            return Ok(Some(id));
        }
        let extra = match kind {
            1 => 4,             // INT
            3 => 12,            // ARRAY
            4 | 5 => vlen * 12, // STRUCT, UNION
            6 => vlen * 8,      // ENUM
            13 => vlen * 8,     // FUNC_PROTO
            14 => 4,            // VAR
            15 => vlen * 12,    // DATASEC
            17 => 4,            // DECL_TAG
            19 => vlen * 12,    // ENUM64
            2 | 7..=12 | 16 | 18 => 0,
            k => return Err(BpfError::Failed(format!("unknown BTF kind {k}"))),
        };
        pos += 12 + extra;
        id += 1;
    }
    Ok(None)
}

/// One eBPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | dst;
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

/// The program: for the processes of cgroup `cgroup_id`, socket(AF_INET or
/// AF_INET6, SOCK_STREAM, 0 or IPPROTO_TCP) gets IPPROTO_MPTCP; every other
/// call keeps its protocol.
pub fn mptcpify_program(cgroup_id: u64) -> Vec<u8> {
    const LDX_DW: u8 = 0x79; // r_dst = *(u64 *)(r_src + off)
    const CALL: u8 = 0x85;
    const LD_IMM64: u8 = 0x18;
    const MOV64_X: u8 = 0xbf;
    const MOV64_K: u8 = 0xb7;
    const JNE_X: u8 = 0x5d;
    const JNE32_K: u8 = 0x56;
    const JEQ32_K: u8 = 0x16;
    const EXIT: u8 = 0x95;
    const GET_CURRENT_CGROUP_ID: i32 = 80;
    let prog: Vec<[u8; 8]> = vec![
        insn(LDX_DW, 6, 1, 0, 0),                         // 0: r6 = family
        insn(LDX_DW, 7, 1, 8, 0),                         // 1: r7 = type
        insn(LDX_DW, 8, 1, 16, 0),                        // 2: r8 = protocol
        insn(CALL, 0, 0, 0, GET_CURRENT_CGROUP_ID),       // 3: r0 = cgroup id
        insn(LD_IMM64, 1, 0, 0, cgroup_id as u32 as i32), // 4-5: r1 = target cgroup
        insn(0, 0, 0, 0, (cgroup_id >> 32) as u32 as i32),
        insn(MOV64_X, 2, 0, 0, 0),                   // 6: r2 = r0
        insn(MOV64_X, 0, 8, 0, 0),                   // 7: r0 = protocol (default)
        insn(JNE_X, 2, 1, 6, 0),                     // 8: other cgroup -> exit
        insn(JNE32_K, 7, 0, 5, libc::SOCK_STREAM),   // 9: not a stream -> exit
        insn(JEQ32_K, 6, 0, 1, libc::AF_INET),       // 10: AF_INET -> 12
        insn(JNE32_K, 6, 0, 3, libc::AF_INET6),      // 11: nor AF_INET6 -> exit
        insn(JEQ32_K, 8, 0, 1, 0),                   // 12: protocol 0 -> 14
        insn(JNE32_K, 8, 0, 1, libc::IPPROTO_TCP),   // 13: not TCP -> exit
        insn(MOV64_K, 0, 0, 0, libc::IPPROTO_MPTCP), // 14: r0 = IPPROTO_MPTCP
        insn(EXIT, 0, 0, 0, 0),                      // 15
    ];
    prog.concat()
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> Result<i32, i32> {
    // SAFETY: attr is a zero-padded bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(rc as i32)
    }
}

fn put32(a: &mut [u8], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put64(a: &mut [u8], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Load the program for `cgroup_id`.
pub fn load(cgroup_id: u64) -> Result<OwnedFd, BpfError> {
    let btf_id = btf_func_id(HOOK)?;
    let prog = mptcpify_program(cgroup_id);
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = vec![0u8; 128];
    put32(&mut attr, 0, BPF_PROG_TYPE_TRACING);
    put32(&mut attr, 4, (prog.len() / 8) as u32);
    put64(&mut attr, 8, prog.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    put32(&mut attr, 24, 1); // log level
    put32(&mut attr, 28, log.len() as u32);
    put64(&mut attr, 32, log.as_mut_ptr() as u64);
    attr[48..56].copy_from_slice(b"braid_mp");
    put32(&mut attr, 68, BPF_MODIFY_RETURN);
    put32(&mut attr, 108, btf_id);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new descriptor the kernel just returned.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(errno) => {
            let text =
                String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)])
                    .into_owned();
            Err(BpfError::Unsupported(explain_refusal(errno, &text)))
        }
    }
}

/// Attach a loaded program; it stays attached while the link is open or pinned.
pub fn attach(prog: &OwnedFd) -> Result<OwnedFd, BpfError> {
    let mut attr = vec![0u8; 64];
    put32(&mut attr, 0, prog.as_raw_fd() as u32);
    put32(&mut attr, 8, BPF_MODIFY_RETURN);
    match bpf(BPF_LINK_CREATE, &mut attr) {
        // SAFETY: a new descriptor the kernel just returned.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(errno) => Err(BpfError::Unsupported(explain_refusal(errno, ""))),
    }
}

/// Pin a link in bpffs so it outlives this process.
pub fn pin(link: &OwnedFd, path: &Path) -> Result<(), BpfError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut attr = vec![0u8; 64];
    put64(&mut attr, 0, c.as_ptr() as u64);
    put32(&mut attr, 8, link.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ()).map_err(|e| {
        BpfError::Failed(format!(
            "pinning at {} failed: {} (is bpffs mounted on /sys/fs/bpf?)",
            path.display(),
            std::io::Error::from_raw_os_error(e)
        ))
    })
}

/// Check, without side effects beyond a load that is freed at once, whether
/// this kernel can force MPTCP with BPF.
pub fn probe() -> Result<(), BpfError> {
    let prog = load(0)?;
    drop(prog);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_shape() {
        let p = mptcpify_program(0x1_0000_0002);
        assert_eq!(p.len(), 16 * 8);
        assert_eq!(p[15 * 8], 0x95, "ends with exit");
        assert_eq!(i32::from_le_bytes(p[36..40].try_into().unwrap()), 2);
        assert_eq!(i32::from_le_bytes(p[44..48].try_into().unwrap()), 1);
    }

    #[test]
    fn finds_functions_in_a_synthetic_btf() {
        // header (24) + types: INT "int" (16 bytes), FUNC "hook" (12) + strings.
        let strings = b"\0int\0hook\0";
        let mut types = Vec::new();
        for v in [1u32, 1 << 24, 4, 32] {
            types.extend_from_slice(&v.to_le_bytes());
        }
        for v in [5u32, 12 << 24, 1] {
            types.extend_from_slice(&v.to_le_bytes());
        }
        let mut d = Vec::new();
        d.extend_from_slice(&0xeb9fu16.to_le_bytes());
        d.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(&types);
        d.extend_from_slice(strings);
        assert_eq!(find_func(&d, "hook").unwrap(), Some(2));
        assert_eq!(find_func(&d, "nope").unwrap(), None);
        assert!(find_func(&d[..10], "hook").is_err());
    }

    #[test]
    fn vmlinux_has_the_hook_when_btf_exists() {
        if !Path::new(BTF_VMLINUX).exists() {
            eprintln!("skip: no {BTF_VMLINUX}");
            return;
        }
        match btf_func_id(HOOK) {
            Ok(id) => assert!(id > 0),
            Err(e) => eprintln!("skip: {e}"),
        }
    }
}

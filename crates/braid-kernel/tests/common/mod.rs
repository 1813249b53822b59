//! What the kernel tests share: namespaces removed on every path (also on
//! panics), and iproute2 for setting them up.

use std::process::Command;

use braid_kernel::netns;

/// Named namespaces, created now and deleted when dropped.
pub struct Namespaces(Vec<String>);

impl Namespaces {
    pub fn create(names: &[&str]) -> Namespaces {
        let ns = Namespaces(names.iter().map(|n| n.to_string()).collect());
        for n in &ns.0 {
            netns::create(n).unwrap();
        }
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netns::delete(n);
        }
    }
}

/// Run `ip ARGS` (split on whitespace); its output, or a failed test.
pub fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

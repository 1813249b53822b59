//! vmlinux BTF (/sys/kernel/btf/vmlinux, kernel bytes) walked by
//! `bpf::find_func` for the type id of a kernel function.
//!
//! Input: name length (1 byte), name, BTF blob.
//! Asserts: no panic, no unbounded work (the walk ends within the blob);
//! an id found is a type id (>= 1) of a FUNC with that name.
#![no_main]

use braid_kernel::bpf::find_func;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize).min(rest.len());
    let (name, blob) = rest.split_at(n);
    let name = String::from_utf8_lossy(name);
    if let Ok(Some(id)) = find_func(blob, &name) {
        assert!(id >= 1);
        // At least 12 bytes per type before it.
        assert!((id as usize - 1) * 12 < blob.len());
    }
});

//! Unmodified programs and services over MPTCP: where the preload library
//! is and the environment that loads it (`preload`), systemd drop-ins for
//! units (`systemd`), a program in a cgroup of its own for `--bpf` and
//! `--mode` (`cgroup_run`), and the per-unit mode rules braidd reads
//! (`modes`). The CLI (`braid run`, `enable`, `disable`) parses and prints.

pub mod cgroup_run;
pub mod modes;
pub mod preload;
pub mod systemd;
pub mod trust;

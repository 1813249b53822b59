//! The doctor behind `braid status`: which problems of the host's MPTCP
//! setup to report, each with the command that fixes it.
//!
//! Sans-IO at its core: [`rules::hints`] is a pure function of [`Facts`],
//! so every rule is tested on constructed facts. [`facts::read`] is the
//! thin shell that reads those facts from the kernel.

pub mod facts;
pub mod rules;

pub use facts::{ConnectionSummary, DeepSendQueue, Facts, PmTable, SmallBuffer};
pub use rules::{hints, Hint, Severity};

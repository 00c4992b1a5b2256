//! The benchmark's traffic generator and sender-side counter.

pub mod abi;
pub mod bpf;
pub mod frame;
pub mod netns;

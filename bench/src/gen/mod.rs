//! The benchmark's traffic generator and sender-side counter.

pub mod abi;
pub mod frame;

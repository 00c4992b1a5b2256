//! Ricochet's data plane library (filled by the data-plane work).
pub mod bpf;

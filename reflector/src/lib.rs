//! Ricochet's data plane: the XDP loader and pinned maps (`bpf`), the
//! portable socket reflector (`socket`) and the host clock state (`clock`).

pub mod afxdp;
pub mod bpf;
pub mod clock;
pub mod daemon;
pub mod engine;
pub mod session_table;
pub mod socket;
pub mod stamp_engine;

//! The benchmark's traffic generator and sender-side counter.
//!
//! * [`abi`]: mirror of `bench/ebpf/bench.h`, histogram buckets.
//! * [`bpf`]: loading, attaching, live-frames runs.
//! * [`frame`]: template frames of a test session in any mode.
//! * [`latency`]: percentiles and CDFs of the counter's histograms.
//! * [`netns`]: namespaces, interfaces, CPU pinning.
//! * [`trial`]: one rate for one duration ([`crate::search::Trial`]).
//! * [`target`]: the reflectors under test ([`target::Target`]): the
//!   ceiling, the bare echoes, an external command.
//! * [`ricochet`]: Ricochet's XDP, AF_XDP and socket paths as targets.
//! * [`twampd`]: perfSONAR `twampd` with a session negotiated over TWAMP-Control.
//! * [`run`]: the comparison: every target × size, searched.

pub mod abi;
pub mod bpf;
pub mod frame;
pub mod latency;
pub mod netns;
pub mod ricochet;
pub mod run;
pub mod target;
pub mod trial;
pub mod twampd;

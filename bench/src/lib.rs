//! Ricochet's measuring tools: the session-sender client (`ricochet-ping`)
//! and the benchmark (`ricochet-bench`). Shared pieces live here.

pub mod gen;
pub mod pace;
pub mod ping;
pub mod report;
pub mod search;
pub mod stats;

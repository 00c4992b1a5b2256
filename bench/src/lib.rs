//! Ricochet's measuring tools: the session-sender client (`ricochet-ping`)
//! and the benchmark (`ricochet-bench`). Shared pieces live here.

pub mod pace;
pub mod stats;
pub mod gen;
pub mod search;
pub mod report;

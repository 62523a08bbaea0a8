//! sonde's agent and CLI as a library, so tests and tools can reuse the
//! config, the API types and the output formatting.

pub mod alerts;
pub mod api;
pub mod bounded;
pub mod cli;
pub mod collectors;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod ebpf;
pub mod error;
pub mod features;
pub mod heap;
pub mod identity;
pub mod logging;
pub mod metrics_catalog;
pub mod process_table;
pub mod reload;
pub mod telemetry;

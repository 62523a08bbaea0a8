//! Structured logs through `tracing`: JSON when stderr is not a terminal (a
//! journal or a log shipper reads it), human text when it is.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{AgentConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG` wins over the config, so a
/// user can turn on `sonde::ebpf=debug` without editing files.
pub fn init(cfg: &AgentConfig) -> Result<EnvFilter, String> {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| cfg.log_level.as_str().to_owned());
    let filter = EnvFilter::try_new(&spec).map_err(|e| format!("agent.log_level {spec:?}: {e}"))?;
    let json = match cfg.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry =
        tracing_subscriber::registry().with(EnvFilter::try_new(&spec).map_err(|e| e.to_string())?);
    let result = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    // A second init (tests) is harmless.
    let _ = result;
    Ok(filter)
}

/// Whether kernel-side debug logging should be compiled in at load time.
pub fn kernel_debug_enabled(filter: &EnvFilter) -> bool {
    filter
        .max_level_hint()
        .is_some_and(|l| l >= tracing::level_filters::LevelFilter::DEBUG)
}

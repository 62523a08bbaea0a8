//! The collectors' error type and how errors are shown: a leaf module with
//! no collector imports, so the kit, the collectors and the daemon can all
//! use it without import cycles.

/// Why a collector (or one of its hooks) could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Load(#[from] crate::ebpf::LoadError),
    /// A program or map the collector declares is not in its object: the
    /// object and the agent were built from different sources.
    #[error("{kind} {name} missing from object")]
    Missing { kind: &'static str, name: String },
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no usable hook: {0}")]
    NoHook(String),
    /// A configuration the collector cannot run with.
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CollectorError {
    pub fn missing_program(name: &str) -> Self {
        Self::Missing {
            kind: "program",
            name: name.to_owned(),
        }
    }

    pub fn missing_map(name: &str) -> Self {
        Self::Missing {
            kind: "map",
            name: name.to_owned(),
        }
    }
}

/// Formats an error with its whole source chain on one line, the way the
/// verifier's reason reaches the user.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

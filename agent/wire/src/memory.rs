//! `GET /api/v1/memory` (`sonde memory`): growth by stack.

use serde::{Deserialize, Serialize};

/// Query of `GET /api/v1/memory`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryQuery {
    pub pid: Option<u32>,
    pub name: Option<String>,
    /// rss (default), mapped, unmapped.
    pub kind: Option<String>,
    /// top (default), folded, pprof, json.
    pub format: Option<String>,
}

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Resident memory growth: user page faults x page size (sampled).
    Rss,
    /// Address space mapped: mmap, brk growth, mremap growth.
    Mapped,
    /// Address space released: munmap, brk shrink, mremap shrink.
    Unmapped,
}

impl Group {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rss" => Self::Rss,
            "mapped" => Self::Mapped,
            "unmapped" => Self::Unmapped,
            _ => return None,
        })
    }
}

/// One stack in the JSON answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryRow {
    pub pid: u32,
    pub comm: String,
    pub service: String,
    pub bytes: u64,
    pub events: u64,
    /// Function names, leaf first.
    pub frames: Vec<String>,
}

/// What `GET /api/v1/memory?format=json` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryAnswer {
    pub kind: Group,
    pub seconds: f64,
    pub rows: Vec<MemoryRow>,
}

//! The libc a process actually maps, and where to probe its allocation
//! functions (file offsets, for uprobes).

use std::path::PathBuf;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::probe_point::{self, ProbePoint};
use crate::collectors::profile::procmaps::ProcMaps;

/// The allocation functions probed, by exported name.
pub const ALLOC_FUNCTIONS: [&str; 6] = [
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
];

#[derive(Debug, thiserror::Error)]
pub enum LibcError {
    #[error("no process with pid {0}")]
    NoProcess(u32),
    #[error(
        "pid {0} maps no shared libc (statically linked, or another allocator \
         library): nothing to attach malloc probes to"
    )]
    NoLibc(u32),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file we can read: {detail}")]
    Elf { path: String, detail: String },
    #[error("{path} exports no `{name}`")]
    Missing { path: String, name: &'static str },
}

/// One probe to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Exported name (several names may share an address; the first wins).
    pub function: &'static str,
    /// File offset of the probe (function start + `point.offset`).
    pub file_offset: u64,
    pub point: ProbePoint,
}

/// A process's libc and its probe targets.
#[derive(Debug, Clone)]
pub struct Libc {
    /// As the process sees it.
    pub path: String,
    /// Where the agent opens it (through /proc/PID/root).
    pub host_path: PathBuf,
    /// Allocation functions (entry + return probes).
    pub allocs: Vec<Target>,
    /// `free` (entry probe only).
    pub free: Target,
}

fn is_libc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "libc.so.6"
        || (name.starts_with("libc-") && name.ends_with(".so"))
        || name.starts_with("libc.musl-")
        || name == "ld-musl-x86_64.so.1"
}

/// Finds the libc `pid` maps and its probe points.
pub fn find(pid: u32) -> Result<Libc, LibcError> {
    let maps = ProcMaps::read(pid).ok_or(LibcError::NoProcess(pid))?;
    let m = maps
        .maps
        .iter()
        .find(|m| is_libc(&m.path))
        .ok_or(LibcError::NoLibc(pid))?;
    let host_path = maps.host_path(&m.path);
    let data = std::fs::read(&host_path).map_err(|source| LibcError::Read {
        path: host_path.display().to_string(),
        source,
    })?;
    let (allocs, free) = targets(&data, &m.path)?;
    Ok(Libc {
        path: m.path.clone(),
        host_path,
        allocs,
        free,
    })
}

/// The probe target of the function `name` (a definition in `.dynsym` or
/// `.symtab`) in `elf`, whose bytes are `data`, at a point where its first
/// `args` argument registers still hold the arguments.
pub fn target(elf: &object::File, data: &[u8], name: &'static str, args: usize) -> Option<Target> {
    let sym = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.is_definition() && s.name() == Ok(name))?;
    let section = elf.section_by_index(sym.section_index()?).ok()?;
    let (file_start, size) = section.file_range()?;
    let in_section = sym.address().checked_sub(section.address())?;
    if in_section >= size {
        return None;
    }
    let file_offset = file_start + in_section;
    let code = data.get(file_offset as usize..(file_offset as usize + 32).min(data.len()))?;
    let point = probe_point::choose_keeping(code, args);
    Some(Target {
        function: name,
        file_offset: file_offset + point.offset,
        point,
    })
}

/// Probe targets in the ELF image `data`.
pub fn targets(data: &[u8], path: &str) -> Result<(Vec<Target>, Target), LibcError> {
    let elf = object::File::parse(data).map_err(|e| LibcError::Elf {
        path: path.into(),
        detail: e.to_string(),
    })?;
    let find = |name: &'static str| target(&elf, data, name, 6);
    let free = find("free").ok_or(LibcError::Missing {
        path: path.into(),
        name: "free",
    })?;
    let mut allocs: Vec<Target> = Vec::new();
    for name in ALLOC_FUNCTIONS {
        match find(name) {
            // aligned_alloc and memalign are one function in glibc: probe
            // an address once, or each call would count twice.
            Some(t) if !allocs.iter().any(|a| a.file_offset == t.file_offset) => allocs.push(t),
            Some(_) => {}
            None if name == "malloc" => {
                return Err(LibcError::Missing {
                    path: path.into(),
                    name,
                });
            }
            None => {}
        }
    }
    Ok((allocs, free))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_libc_names() {
        assert!(is_libc("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_libc("/lib/libc-2.31.so"));
        assert!(is_libc("/lib/ld-musl-x86_64.so.1"));
        assert!(!is_libc("/usr/lib/libcrypto.so.3"));
        assert!(!is_libc("/usr/lib/libc++.so.1"));
    }

    #[test]
    fn finds_the_host_libcs_allocation_functions() {
        let path = "/lib/x86_64-linux-gnu/libc.so.6";
        let data = std::fs::read(path).expect("the test host has glibc");
        let (allocs, free) = targets(&data, path).unwrap();
        assert!(allocs.iter().any(|t| t.function == "malloc"));
        assert!(allocs.iter().any(|t| t.function == "calloc"));
        assert!(allocs.iter().any(|t| t.function == "realloc"));
        // Every probe point lands where the kernel emulates the instruction.
        assert!(free.point.emulated, "{free:?}");
        for t in &allocs {
            assert!(t.point.emulated, "{t:?}");
        }
    }
}

//! CPython's own allocator as `sonde alloc` probe targets.
//!
//! CPython serves objects of up to 512 bytes from its arenas (pymalloc):
//! malloc probes never see them. Both allocator domains, `PyObject_*` and
//! `PyMem_*`, end in the same implementation functions, which take the
//! allocator's context first (`_PyObject_Malloc(void *ctx, size_t size)`).
//! Where the image keeps their symbols (pyenv's libpython has `.symtab`),
//! those four are probed, with the programs that read one argument further
//! (`alloc_py_*`). A stripped image (Debian's static python3.11) only
//! exports the public entry points, which are probed instead, both
//! domains; that build also inlines pymalloc's fast path into ~190 call
//! sites (LTO), which no entry probe sees (docs/memory.md).
//!
//! Each allocation counts once: pymalloc hands requests above 512 bytes to
//! `malloc`, a call nested in the tracked one that the kernel ignores.

use std::path::PathBuf;

use super::libc::{LibcError, Target, target};
use crate::collectors::profile::procmaps::ProcMaps;

/// One probe on the interpreter's allocator.
#[derive(Debug, Clone)]
pub struct PyTarget {
    pub target: Target,
    /// The entry program.
    pub program: &'static str,
    /// Allocations get the return probe too; frees do not.
    pub allocates: bool,
}

/// The interpreter image and its allocator probes.
#[derive(Debug, Clone)]
pub struct PyAlloc {
    /// As the process sees it.
    pub path: String,
    /// Where the agent opens it.
    pub host_path: PathBuf,
    pub targets: Vec<PyTarget>,
}

/// (symbol, entry program, allocates, argument registers read)
type Spec = (&'static str, &'static str, bool, usize);

/// The implementation functions (`static` in obmalloc.c).
const IMPLEMENTATION: [Spec; 4] = [
    ("_PyObject_Malloc", "alloc_py_malloc", true, 2),
    ("_PyObject_Calloc", "alloc_py_calloc", true, 3),
    ("_PyObject_Realloc", "alloc_py_realloc", true, 3),
    ("_PyObject_Free", "alloc_py_free", false, 2),
];

/// The exported entry points, for images without the above.
const EXPORTED: [Spec; 8] = [
    ("PyObject_Malloc", "alloc_malloc", true, 1),
    ("PyObject_Calloc", "alloc_calloc", true, 2),
    ("PyObject_Realloc", "alloc_realloc", true, 2),
    ("PyObject_Free", "alloc_free", false, 1),
    ("PyMem_Malloc", "alloc_malloc", true, 1),
    ("PyMem_Calloc", "alloc_calloc", true, 2),
    ("PyMem_Realloc", "alloc_realloc", true, 2),
    ("PyMem_Free", "alloc_free", false, 1),
];

/// The allocator probes of the interpreter image `path` (as mapped by
/// `pid`).
pub fn find(pid: u32, path: &str) -> Result<PyAlloc, LibcError> {
    let maps = ProcMaps::read(pid).ok_or(LibcError::NoProcess(pid))?;
    let host_path = maps.host_path(path);
    let data = std::fs::read(&host_path).map_err(|source| LibcError::Read {
        path: host_path.display().to_string(),
        source,
    })?;
    let targets = targets(&data, path)?;
    Ok(PyAlloc {
        path: path.to_owned(),
        host_path,
        targets,
    })
}

/// The allocator probes in the ELF image `data`: the implementation
/// functions when all four are there, else the exported entry points.
pub fn targets(data: &[u8], path: &str) -> Result<Vec<PyTarget>, LibcError> {
    let elf = object::File::parse(data).map_err(|e| LibcError::Elf {
        path: path.into(),
        detail: e.to_string(),
    })?;
    let resolve = |specs: &[Spec]| -> Vec<PyTarget> {
        specs
            .iter()
            .filter_map(|&(name, program, allocates, args)| {
                Some(PyTarget {
                    target: target(&elf, data, name, args)?,
                    program,
                    allocates,
                })
            })
            .collect()
    };
    let implementation = resolve(&IMPLEMENTATION);
    if implementation.len() == IMPLEMENTATION.len() {
        return Ok(implementation);
    }
    let exported = resolve(&EXPORTED);
    if !exported
        .iter()
        .any(|t| t.target.function == "PyObject_Malloc")
    {
        return Err(LibcError::Missing {
            path: path.into(),
            name: "PyObject_Malloc",
        });
    }
    Ok(exported)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pyenv's shared libpython keeps `.symtab`: its implementation
    /// functions are probed, each where the kernel emulates the instruction.
    #[test]
    fn pyenv_libpython_probes_the_implementation() {
        let data = std::fs::read("/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0")
            .expect("the test host has pyenv's 3.11.7");
        let t = targets(&data, "libpython3.11.so.1.0").unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.target.function).collect();
        assert_eq!(names, IMPLEMENTATION.map(|s| s.0));
        for t in &t {
            assert!(t.target.point.emulated, "{t:?}");
        }
    }

    /// Debian's stripped static python3.11 exports the entry points only.
    #[test]
    fn stripped_debian_python_probes_the_exported_entry_points() {
        let data = std::fs::read("/usr/bin/python3.11").expect("the test host has python3.11");
        let t = targets(&data, "/usr/bin/python3.11").unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.target.function).collect();
        assert_eq!(names, EXPORTED.map(|s| s.0));
        for t in &t {
            assert!(t.target.point.emulated, "{t:?}");
        }
    }
}

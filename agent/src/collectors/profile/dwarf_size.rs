//! How large a file's DWARF is, read from its section headers only: what
//! the symbolizer would hold if it parsed the file's debug info. blazesym
//! inflates compressed debug sections onto the heap and maps the rest, so
//! a debug build of a large program (hundreds of MiB of DWARF) would move
//! the agent's RSS by that much for as long as its misses keep coming. The
//! resolver admits DWARF against a byte budget with this figure
//! (`Resolver::dwarf_budget`).
//!
//! Counted: the `.debug_*` / `.zdebug_*` sections of the file, and of its
//! separate debug file when one is installed under the build-id directory
//! (`/usr/lib/debug/.build-id/xx/yyyy.debug`, how Debian's `-dbg` and
//! `-dbgsym` packages ship it), uncompressed sizes. A debug file found only
//! through `.gnu_debuglink` elsewhere is not counted.

use std::{fs::File, path::Path};

use object::{Object as _, ObjectSection as _, ReadCache};

/// Where distributions install separate debug files by build id.
const BUILD_ID_DIR: &str = "/usr/lib/debug/.build-id";

/// Uncompressed bytes of the DWARF sections of `path` and of its separate
/// debug file; 0 when the file cannot be read as ELF.
pub fn dwarf_bytes(path: &Path) -> u64 {
    let Ok(file) = File::open(path) else {
        return 0;
    };
    // Reads only what parsing asks for (headers, notes), not the file.
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return 0;
    };
    let own = debug_sections(&elf);
    let separate = elf
        .build_id()
        .ok()
        .flatten()
        .filter(|id| id.len() >= 2)
        .map(|id| {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            let p = format!("{BUILD_ID_DIR}/{}/{}.debug", &hex[..2], &hex[2..]);
            File::open(p)
                .ok()
                .map(|f| {
                    let c = ReadCache::new(f);
                    object::File::parse(&c).map_or(0, |e| debug_sections(&e))
                })
                .unwrap_or(0)
        })
        .unwrap_or(0);
    own + separate
}

fn debug_sections<'a, R: object::ReadRef<'a>>(elf: &object::File<'a, R>) -> u64 {
    elf.sections()
        .filter(|s| {
            s.name()
                .is_ok_and(|n| n.starts_with(".debug_") || n.starts_with(".zdebug_"))
        })
        .map(|s| {
            s.compressed_file_range()
                .map_or(s.size(), |r| r.uncompressed_size)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_binary_has_dwarf_and_a_missing_file_has_none() {
        // Test binaries are built with debug info (the dev profile).
        let me = std::env::current_exe().unwrap();
        let n = dwarf_bytes(&me);
        assert!(n > 1 << 20, "{} has {n} bytes of DWARF", me.display());
        assert_eq!(dwarf_bytes(Path::new("/nonexistent")), 0);
        // Not ELF at all.
        assert_eq!(dwarf_bytes(Path::new("/proc/self/status")), 0);
    }
}

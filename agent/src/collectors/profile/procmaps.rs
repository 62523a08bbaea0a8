//! Executable mappings of a process, captured from `/proc/PID/maps` the first
//! time the process is seen, so its stacks still resolve after it exits.

use std::{fs::File, os::unix::fs::MetadataExt, path::PathBuf};

use crate::process_table::read_lossy;

/// One executable, file-backed (or anonymous) mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The inode as the kernel reports it; 0 for anonymous memory.
    pub inode: u64,
    /// The device (`major:minor`, as `sonde_python::detect::parse_dev`
    /// encodes it); 0 for anonymous memory.
    pub dev: u64,
    /// Path as the process sees it (inside its mount namespace), or a
    /// pseudo name (`[vdso]`), or empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
}

/// Executable mappings of one process, sorted by start address.
#[derive(Debug, Clone, Default)]
pub struct ProcMaps {
    pub pid: u32,
    pub maps: Vec<Mapping>,
}

impl ProcMaps {
    /// Reads `/proc/PID/maps`; `None` when the process is gone. A zombie
    /// (exited, not yet reaped) still has a maps file, but an empty one:
    /// that counts as gone too, so it never replaces what we captured.
    pub fn read(pid: u32) -> Option<Self> {
        let text = read_lossy(format!("/proc/{pid}/maps"))?;
        let m = Self::parse(pid, &text);
        (!m.maps.is_empty()).then_some(m)
    }

    pub fn parse(pid: u32, text: &str) -> Self {
        let mut maps: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        maps.sort_by_key(|m| m.start);
        Self { pid, maps }
    }

    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.maps.partition_point(|m| m.start <= addr);
        let m = self.maps.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// Where the agent can open `path` as this process sees it, containers
    /// included.
    pub fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.pid, path))
    }
}

/// `start-end perms offset dev inode path`, executable mappings only.
fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?;
    let offset = it.next()?;
    let dev = it.next()?;
    let inode = it.next()?;
    let path = it.next().unwrap_or("").trim();
    if !perms.contains('x') {
        return None;
    }
    let (s, e) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        dev: sonde_python::detect::parse_dev(dev)?,
        path: path.trim_end_matches(" (deleted)").to_owned(),
    })
}

/// A file's identity: a replaced file (new inode or mtime) is a new file.
pub type FileKey = (u64, u64, i64);

/// A process's maps with its mapped executable files already open, taken
/// as soon as the kernel reports the process, before it can exit. `Send`,
/// unlike the symbolizer, so any thread can take it.
pub struct Captured {
    pub maps: ProcMaps,
    /// Per mapping: the open file and its identity (None for anonymous or
    /// unopenable mappings).
    pub files: Vec<Option<(File, FileKey)>>,
    pub perf_map: Option<PerfMap>,
}

impl Captured {
    pub fn read(pid: u32) -> Option<Self> {
        Some(Self::open(ProcMaps::read(pid)?))
    }

    pub fn open(maps: ProcMaps) -> Self {
        let files = maps
            .maps
            .iter()
            .map(|m| {
                if !m.is_file() {
                    return None;
                }
                // map_files names exactly the mapped file, even when it was
                // deleted or replaced since; the path through the process's
                // root is the fallback (containers included).
                let mapped = format!("/proc/{}/map_files/{:x}-{:x}", maps.pid, m.start, m.end);
                let f = File::open(mapped)
                    .or_else(|_| File::open(maps.host_path(&m.path)))
                    .ok()?;
                let meta = f.metadata().ok()?;
                let key = (meta.dev(), meta.ino(), meta.mtime());
                Some((f, key))
            })
            .collect();
        Self {
            perf_map: PerfMap::read(maps.pid),
            maps,
            files,
        }
    }
}

/// Symbols a JIT wrote to `/tmp/perf-PID.map` (`START SIZE name`, hex).
#[derive(Debug, Clone, Default)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
}

impl PerfMap {
    /// Reads the process's perf map through its root, when it has one.
    pub fn read(pid: u32) -> Option<Self> {
        let text = read_lossy(format!("/proc/{pid}/root/tmp/perf-{pid}.map"))?;
        Some(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        let mut entries: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let start = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
                let size = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
                Some((start, size, it.next()?.trim().to_owned()))
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        Self { entries }
    }

    pub fn find(&self, addr: u64) -> Option<&str> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        let (start, size, name) = self.entries.get(i.checked_sub(1)?)?;
        // `start <= addr` here; `start + size` may not fit in a u64 (the
        // file is the process's own writing).
        (addr - start < *size).then_some(name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234 /usr/bin/work
55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 1234 /usr/bin/work
7f0000000000-7f0000100000 r-xp 00028000 08:01 99 /usr/lib/libc.so.6
7f0000200000-7f0000201000 r-xp 00000000 00:00 0 
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn keeps_executable_mappings_and_finds_addresses() {
        let m = ProcMaps::parse(42, MAPS);
        assert_eq!(m.maps.len(), 4);
        let w = m.find(0x55d0c0a01010).unwrap();
        assert_eq!(w.path, "/usr/bin/work");
        assert_eq!(w.offset, 0x1000);
        assert_eq!((w.dev, w.inode), (8 << 32 | 1, 1234));
        assert!(w.is_file());
        assert!(m.find(0x55d0c0a00010).is_none(), "not executable");
        assert!(!m.find(0x7f0000200010).unwrap().is_file());
        assert_eq!(m.find(0x7ffd00000001).unwrap().path, "[vdso]");
        assert!(m.find(0x1).is_none());
        assert_eq!(
            m.host_path("/usr/bin/work"),
            PathBuf::from("/proc/42/root/usr/bin/work")
        );
    }

    #[test]
    fn perf_map_lookup() {
        let p = PerfMap::parse("7f0000200000 100 LazyCompile:foo\n7f0000200100 20 bar baz\n");
        assert_eq!(p.find(0x7f0000200010), Some("LazyCompile:foo"));
        assert_eq!(p.find(0x7f0000200110), Some("bar baz"));
        assert_eq!(p.find(0x7f0000200200), None);
    }

    #[test]
    fn perf_map_entry_at_the_top_of_the_address_space() {
        // Found by the procmaps fuzz target: start + size past u64::MAX
        // (the JIT writes this file, any values it likes).
        let p = PerfMap::parse(
            "ffffffffffffff00 1000 top
",
        );
        assert_eq!(p.find(u64::MAX), Some("top"));
        assert_eq!(p.find(0xffff_ffff_ffff_ff00), Some("top"));
        assert_eq!(p.find(0xffff_ffff_ffff_feff), None);
    }
}

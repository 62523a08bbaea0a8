//! Is a process a supported CPython, and where is its interpreter?
//!
//! From /proc/PID/maps: the image holding the interpreter is a mapped
//! `libpython3.X*.so*`, or else a mapped `python*` executable that exports
//! `_PyRuntime` and has no `DT_NEEDED` libpython (a static build such as
//! Debian's /usr/bin/python3.11). The version is `Py_Version` (3.11+),
//! falling back to the file name. Anything unsupported is a [`Rejected`]
//! with a short label for metrics.

use std::{collections::HashMap, ops::Range, path::PathBuf, sync::Arc};

use crate::{
    elf::{self, ElfFacts},
    mem::{MemError, ProcMem},
    offsets::{self, DebugOffsetsError, Offsets},
};

/// Why a process is not walked.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("no CPython interpreter mapped")]
    NotPython,
    #[error("PyPy is not supported")]
    PyPy,
    #[error("free-threaded CPython build")]
    FreeThreaded,
    #[error("CPython version {0} is not supported")]
    UnsupportedVersion(String),
    #[error("cannot tell the CPython version of {0}")]
    UnknownVersion(String),
    #[error("the interpreter is not initialized yet: {0}")]
    NotReady(&'static str),
    #[error("not a glibc process (or an unknown glibc TSD layout): {0}")]
    UnsupportedLibc(&'static str),
    #[error("{0}")]
    Layout(String),
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("parsing {0}: {1}")]
    Elf(String, elf::ElfError),
    #[error(transparent)]
    Mem(#[from] MemError),
}

impl Rejected {
    /// A metric label value.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotPython => "not_python",
            Self::PyPy => "pypy",
            Self::FreeThreaded => "free_threaded",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::UnknownVersion(_) => "unknown_version",
            Self::NotReady(_) => "not_ready",
            Self::UnsupportedLibc(_) => "unsupported_libc",
            Self::Layout(_) => "layout_mismatch",
            Self::Io(..) | Self::Mem(_) => "read_error",
            Self::Elf(..) => "bad_elf",
        }
    }
}

/// One line of /proc/PID/maps with a file.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub executable: bool,
    /// `(device, inode)` of the file, the key of [`Detector`]'s caches.
    pub file_id: (u64, u64),
    pub path: String,
}

pub fn read_maps(pid: u32) -> Result<Vec<Mapping>, Rejected> {
    let p = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&p).map_err(|e| Rejected::Io(p, e))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (range, perms, offset) = (it.next()?, it.next()?, it.next()?);
            let (dev, inode) = (it.next()?, it.next()?);
            let path = it.next()?;
            if !path.starts_with('/') {
                return None;
            }
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                executable: perms.contains('x'),
                file_id: (parse_dev(dev)?, inode.parse().ok()?),
                path: path.to_owned(),
            })
        })
        .collect())
}

/// The `major:minor` device field of /proc/PID/maps as one number (the
/// device half of [`Mapping::file_id`]).
pub fn parse_dev(dev: &str) -> Option<u64> {
    dev.split(':').try_fold(0, |acc, part| {
        u64::from_str_radix(part, 16).ok().map(|v| (acc << 32) | v)
    })
}

/// glibc's thread-specific data: the value of key `k` (< `first_block`)
/// is at `fsbase + base + stride * k + value` (nptl `specific_1stblock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TsdLayout {
    pub base: u64,
    pub stride: u64,
    pub value: u64,
    pub first_block: u64,
}

/// Decodes glibc's `pthread_getspecific` fast path (2.36 x86_64):
/// `cmp $0x1f,%edi; ja; mov %edi,%eax; add $B,%rax; shl $S,%rax;
/// add %fs:0x10,%rax; mov V(%rax),%rdx`, where `%fs:0x10` is the TCB's
/// self pointer, i.e. fsbase.
pub fn decode_glibc_tsd(code: &[u8]) -> Option<TsdLayout> {
    let cmp = code.windows(3).position(|w| w[..2] == [0x83, 0xff])?;
    let first_block = u64::from(code[cmp + 2]) + 1;
    (0..code.len()).find_map(|i| match code[i..] {
        [
            0x48,
            0x83,
            0xc0,
            b,
            0x48,
            0xc1,
            0xe0,
            s,
            0x64,
            0x48,
            0x03,
            0x04,
            0x25,
            0x10,
            0,
            0,
            0,
            0x48,
            0x8b,
            0x50,
            v,
            ..,
        ] => Some(TsdLayout {
            base: u64::from(b) << s,
            stride: 1 << s,
            value: u64::from(v),
            first_block,
        }),
        _ => None,
    })
}

/// A detected, supported CPython process.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub pid: u32,
    /// The image as mapped (libpython or the static executable).
    pub path: String,
    /// Runtime address minus ELF virtual address of the image.
    pub bias: u64,
    pub major: u32,
    pub minor: u32,
    /// `Py_Version` when the image has it.
    pub hex_version: Option<u32>,
    pub facts: ElfFacts,
    pub offsets: Offsets,
    /// Runtime addresses.
    pub runtime: u64,
    pub none_struct: u64,
    pub code_type: Option<u64>,
    /// The autoTSSkey's `pthread_key_t` (runtime address), from the table
    /// and, where the decode worked, checked against the machine code.
    pub tss_key_addr: u64,
    pub tss_key_cross_checked: bool,
    pub tsd: TsdLayout,
}

impl Interpreter {
    /// The eval loop's ranges as ELF virtual addresses of `path`.
    pub fn interpreter_ranges(&self) -> Vec<Range<u64>> {
        self.facts.interpreter_ranges()
    }
}

fn file_of(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `(3, minor)` from `libpython3.11.so.1.0` / `python3.11`; `t` after the
/// minor (`3.13t`) marks a free-threaded build.
fn version_from_name(name: &str) -> Option<(u32, u32, bool)> {
    let rest = &name[name.find("python3.")? + "python3.".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let minor = digits.parse().ok()?;
    Some((3, minor, rest[digits.len()..].starts_with('t')))
}

/// One-off detection; an agent keeps a [`Detector`] to parse each file once.
pub fn detect(pid: u32) -> Result<Interpreter, Rejected> {
    Detector::default().detect(pid)
}

/// Files analysed in one cache entry at most; the caches are dropped whole
/// when full.
const CACHE_FILES: usize = 256;

/// Detection with the per-file work (ELF parsing of the interpreter image
/// and of libc) cached by `(device, inode)`.
#[derive(Default)]
pub struct Detector {
    images: HashMap<(u64, u64), Arc<ElfFacts>>,
    libcs: HashMap<(u64, u64), Result<TsdLayout, &'static str>>,
}

impl Detector {
    fn image(&mut self, pid: u32, m: &Mapping) -> Result<Arc<ElfFacts>, Rejected> {
        if let Some(f) = self.images.get(&m.file_id) {
            return Ok(f.clone());
        }
        let data =
            std::fs::read(file_of(pid, &m.path)).map_err(|e| Rejected::Io(m.path.clone(), e))?;
        let facts = Arc::new(elf::analyze(&data).map_err(|e| Rejected::Elf(m.path.clone(), e))?);
        if self.images.len() >= CACHE_FILES {
            self.images.clear();
        }
        self.images.insert(m.file_id, facts.clone());
        Ok(facts)
    }

    /// The TSD layout of the process's libc.
    fn tsd(&mut self, pid: u32, maps: &[Mapping]) -> Result<TsdLayout, Rejected> {
        if maps
            .iter()
            .any(|m| base_name(&m.path).starts_with("ld-musl"))
        {
            return Err(Rejected::UnsupportedLibc("musl"));
        }
        let libc = maps
            .iter()
            .find(|m| base_name(&m.path).starts_with("libc.so"))
            .ok_or(Rejected::UnsupportedLibc("no libc.so mapped"))?;
        if let Some(r) = self.libcs.get(&libc.file_id) {
            return r.map_err(Rejected::UnsupportedLibc);
        }
        let data = std::fs::read(file_of(pid, &libc.path))
            .map_err(|e| Rejected::Io(libc.path.clone(), e))?;
        let r = symbol_bytes(&data, "pthread_getspecific", 96)
            .ok_or("no pthread_getspecific")
            .and_then(|code| decode_glibc_tsd(&code).ok_or("pthread_getspecific not recognized"));
        if self.libcs.len() >= CACHE_FILES {
            self.libcs.clear();
        }
        self.libcs.insert(libc.file_id, r);
        r.map_err(Rejected::UnsupportedLibc)
    }

    pub fn detect(&mut self, pid: u32) -> Result<Interpreter, Rejected> {
        self.detect_in(pid, &read_maps(pid)?)
    }

    /// [`Detector::detect`] with the process's maps already read (its
    /// executable mappings are enough).
    pub fn detect_in(&mut self, pid: u32, maps: &[Mapping]) -> Result<Interpreter, Rejected> {
        if maps
            .iter()
            .any(|m| base_name(&m.path).starts_with("libpypy"))
        {
            return Err(Rejected::PyPy);
        }
        // The executable mapping of each candidate file (what the bias is
        // computed from), libpython first.
        let text = |prefix: &str| {
            maps.iter()
                .filter(move |m| m.executable && base_name(&m.path).starts_with(prefix))
                .collect::<Vec<_>>()
        };
        let mut found = None;
        for m in text("libpython3").into_iter().chain(text("python")) {
            let facts = self.image(pid, m)?;
            if facts.runtime.is_none() || facts.needs_libpython {
                continue;
            }
            let bias = sonde_unwind_table::bias_of(&facts.exec_segments, m.start, m.offset)
                .ok_or_else(|| Rejected::Layout(format!("no load bias for {}", m.path)))?;
            found = Some((m.path.clone(), facts, bias));
            break;
        }
        let (path, facts, bias) = found.ok_or(Rejected::NotPython)?;
        let (major, minor) = match (facts.py_version, version_from_name(base_name(&path))) {
            (_, Some((_, _, true))) => return Err(Rejected::FreeThreaded),
            (Some(v), _) => (v >> 24, (v >> 16) & 0xff),
            (None, Some((maj, min, false))) => (maj, min),
            (None, None) => return Err(Rejected::UnknownVersion(path)),
        };
        let mem = ProcMem::new(pid);
        let runtime = facts.runtime.expect("checked above") + bias;
        let offsets = match (major, minor) {
            (3, 13) => offsets::from_debug_offsets_313(&mem, runtime).map_err(|e| match e {
                DebugOffsetsError::FreeThreaded => Rejected::FreeThreaded,
                DebugOffsetsError::NoCookie => Rejected::NotReady("no _Py_DebugOffsets cookie"),
                DebugOffsetsError::Version(v) => {
                    Rejected::Layout(format!("debug offsets version {v:#x}"))
                }
                DebugOffsetsError::Mem(m) => Rejected::Mem(m),
            })?,
            (3, m) if m > 13 && offsets::is_free_threaded(&mem, runtime)? => {
                return Err(Rejected::FreeThreaded);
            }
            (3, m) => {
                offsets::table(m).ok_or_else(|| Rejected::UnsupportedVersion(format!("3.{m}")))?
            }
            (maj, m) => return Err(Rejected::UnsupportedVersion(format!("{maj}.{m}"))),
        };
        let table_key = facts.runtime.expect("checked above") + offsets.runtime_tss + 4;
        if let Some(decoded) = facts.tss_key_decoded
            && decoded != table_key
        {
            return Err(Rejected::Layout(format!(
                "autoTSSkey decoded at {decoded:#x}, table says {table_key:#x}"
            )));
        }
        let none = facts
            .none_struct
            .ok_or_else(|| Rejected::Layout("no _Py_NoneStruct".into()))?;
        Ok(Interpreter {
            pid,
            bias,
            major,
            minor,
            hex_version: facts.py_version,
            offsets,
            runtime,
            none_struct: none + bias,
            code_type: facts.code_type.map(|a| a + bias),
            tss_key_addr: table_key + bias,
            tss_key_cross_checked: facts.tss_key_decoded.is_some(),
            tsd: self.tsd(pid, maps)?,
            facts: (*facts).clone(),
            path,
        })
    }
}

fn symbol_bytes(data: &[u8], name: &str, len: u64) -> Option<Vec<u8>> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let obj = object::File::parse(data).ok()?;
    let sym = obj.dynamic_symbols().find(|s| s.name() == Ok(name))?;
    let sec = obj.section_by_index(sym.section_index()?).ok()?;
    let at = (sym.address() - sec.address()) as usize;
    let len = len.min(sym.size().max(1)) as usize;
    sec.data().ok()?.get(at..at + len).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(
            version_from_name("libpython3.11.so.1.0"),
            Some((3, 11, false))
        );
        assert_eq!(version_from_name("python3.10"), Some((3, 10, false)));
        assert_eq!(
            version_from_name("libpython3.13t.so.1.0"),
            Some((3, 13, true))
        );
        assert_eq!(version_from_name("python"), None);
    }

    #[test]
    fn this_glibc_tsd_layout() {
        // Debian 12's glibc 2.36: `((key + 0x31) << 4) + fsbase`, value at +8.
        let data = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let code = symbol_bytes(&data, "pthread_getspecific", 96).unwrap();
        let tsd = decode_glibc_tsd(&code).unwrap();
        assert_eq!(
            tsd,
            TsdLayout {
                base: 0x310,
                stride: 16,
                value: 8,
                first_block: 32
            }
        );
    }

    #[test]
    fn labels_are_distinct() {
        let all = [
            Rejected::NotPython,
            Rejected::PyPy,
            Rejected::FreeThreaded,
            Rejected::UnsupportedVersion("3.9".into()),
            Rejected::UnknownVersion(String::new()),
            Rejected::NotReady(""),
            Rejected::UnsupportedLibc(""),
            Rejected::Layout(String::new()),
        ];
        let mut labels: Vec<_> = all.iter().map(Rejected::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
    }
}

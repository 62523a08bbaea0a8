//! What the agent learns from an interpreter image's file: the symbols it
//! anchors on, the `Py_Version` value, whether it defers to a libpython,
//! the address ranges of the eval loop (hot and cold part), and the
//! autoTSSkey address decoded from `PyGILState_GetThisThreadState`. Every
//! address here is an ELF virtual address (runtime address minus the
//! load bias).

use std::{collections::HashMap, ops::Range};

use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
use object::{
    Endianness, Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable,
    RelocationTarget,
    elf::DT_NEEDED,
    read::elf::{Dyn, ElfFile64},
};

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("parsing the ELF file: {0}")]
    Parse(#[from] object::Error),
}

/// The facts read from one interpreter image.
#[derive(Clone, Debug, Default)]
pub struct ElfFacts {
    /// `_PyRuntime` (absent: not a CPython image).
    pub runtime: Option<u64>,
    pub none_struct: Option<u64>,
    pub code_type: Option<u64>,
    /// The value of `Py_Version` (3.11+), e.g. `0x030b02f0`.
    pub py_version: Option<u32>,
    /// A `DT_NEEDED` entry names a libpython: the interpreter lives there.
    pub needs_libpython: bool,
    /// `_PyEval_EvalFrameDefault`'s symbol range.
    pub eval: Option<Range<u64>>,
    /// The eval loop's cold part: the FDE holding the targets of the
    /// function's jumps out of itself (GCC's `.cold` split).
    pub eval_cold: Option<Range<u64>>,
    /// Address of the autoTSSkey's `pthread_key_t`, decoded from
    /// `PyGILState_GetThisThreadState`.
    pub tss_key_decoded: Option<u64>,
    /// `(p_offset, p_vaddr, p_filesz)` of each executable `PT_LOAD`, for
    /// the load bias of a mapping.
    pub exec_segments: Vec<(u64, u64, u64)>,
}

impl ElfFacts {
    /// The eval loop's ranges: the symbol and, if found, its cold part.
    pub fn interpreter_ranges(&self) -> Vec<Range<u64>> {
        self.eval
            .iter()
            .chain(self.eval_cold.iter())
            .cloned()
            .collect()
    }
}

struct Sym {
    addr: u64,
    size: u64,
}

pub fn analyze(data: &[u8]) -> Result<ElfFacts, ElfError> {
    let elf = ElfFile64::<Endianness>::parse(data)?;
    let mut syms: HashMap<&str, Sym> = HashMap::new();
    // Starts of named functions, to tell a cold part (which no symbol
    // starts) from a neighbouring function.
    let mut starts = Vec::new();
    for s in elf.dynamic_symbols().chain(elf.symbols()) {
        let Ok(name) = s.name() else { continue };
        if s.address() == 0 {
            continue;
        }
        if s.kind() == object::SymbolKind::Text && !name.ends_with(".cold") {
            starts.push(s.address());
        }
        syms.entry(name).or_insert(Sym {
            addr: s.address(),
            size: s.size(),
        });
    }
    starts.sort_unstable();
    let addr = |n: &str| syms.get(n).map(|s| s.addr);
    let mut f = ElfFacts {
        runtime: addr("_PyRuntime"),
        none_struct: addr("_Py_NoneStruct"),
        code_type: addr("PyCode_Type"),
        needs_libpython: needs_libpython(&elf, data),
        exec_segments: elf
            .segments()
            .filter(|s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0))
            .map(|s| (s.file_range().0, s.address(), s.file_range().1))
            .collect(),
        ..ElfFacts::default()
    };
    f.py_version = addr("Py_Version")
        .and_then(|a| bytes_at(&elf, a, 4))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if let Some(eval) = syms.get("_PyEval_EvalFrameDefault") {
        let range = eval.addr..eval.addr + eval.size.max(1);
        let fdes = fdes(&elf).unwrap_or_default();
        let cold_sym = addr("_PyEval_EvalFrameDefault.cold");
        f.eval_cold = cold_range(&elf, &range, &fdes, cold_sym, &starts);
        f.eval = Some(range);
    }
    if let (Some(rt), Some(gil)) = (f.runtime, syms.get("PyGILState_GetThisThreadState")) {
        let code = bytes_at(&elf, gil.addr, gil.size.clamp(1, 64) as usize);
        let got_runtime = |slot: u64| got_slot_names(&elf, slot, "_PyRuntime");
        f.tss_key_decoded = code.and_then(|c| decode_tss_key(c, gil.addr, rt, got_runtime));
    }
    Ok(f)
}

/// `len` bytes of the file at virtual address `addr`, if a section holds them.
fn bytes_at<'d>(elf: &ElfFile64<'d, Endianness>, addr: u64, len: usize) -> Option<&'d [u8]> {
    let s = elf
        .sections()
        .find(|s| s.address() <= addr && addr + len as u64 <= s.address() + s.size())?;
    let data = s.data().ok()?;
    let at = (addr - s.address()) as usize;
    data.get(at..at + len)
}

fn needs_libpython(elf: &ElfFile64<'_, Endianness>, data: &[u8]) -> bool {
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let Ok(Some((dyns, link))) = sections.dynamic(endian, data) else {
        return false;
    };
    let Ok(strings) = sections.strings(endian, data, link) else {
        return false;
    };
    dyns.iter().any(|d| {
        d.tag32(endian) == Some(DT_NEEDED as i32)
            && d.string(endian, strings)
                .is_ok_and(|n| n.starts_with(b"libpython"))
    })
}

/// Does the GOT slot at `slot` get relocated to symbol `name`?
fn got_slot_names(elf: &ElfFile64<'_, Endianness>, slot: u64, name: &str) -> bool {
    let Some(relocs) = elf.dynamic_relocations() else {
        return false;
    };
    let dynsyms = elf.dynamic_symbol_table();
    relocs.into_iter().any(|(at, r)| {
        at == slot
            && matches!(r.target(), RelocationTarget::Symbol(i)
                if dynsyms.as_ref().and_then(|t| t.symbol_by_index(i).ok())
                    .is_some_and(|s| s.name() == Ok(name)))
    })
}

/// The address of the autoTSSkey's `pthread_key_t` from the machine code
/// of `PyGILState_GetThisThreadState` at `base`. Two forms seen in builds:
/// - static (Debian's python3.11): `mov disp32(%rip),%edi` (8b 3d) loads
///   the key itself, then tail-calls `pthread_getspecific`;
/// - shared libpython (pyenv): `mov GOT(%rip),%rax` (48 8b 05) loads
///   `&_PyRuntime`, then `lea disp32(%rax),%reg` (48 8d, mod=10 rm=rax)
///   forms `&Py_tss_t`, whose key is at +4 (`{int _is_initialized; key}`).
pub fn decode_tss_key(
    code: &[u8],
    base: u64,
    runtime: u64,
    got_is_runtime: impl Fn(u64) -> bool,
) -> Option<u64> {
    let disp = |at: usize| -> Option<i64> {
        Some(i64::from(i32::from_le_bytes(
            code.get(at..at + 4)?.try_into().ok()?,
        )))
    };
    let mut rax_is_runtime = false;
    for i in 0..code.len() {
        match code[i..] {
            [0x8b, 0x3d, ..] => {
                let next = base + i as u64 + 6;
                return Some(next.wrapping_add_signed(disp(i + 2)?));
            }
            [0x48, 0x8b, 0x05, ..] => {
                let slot = (base + i as u64 + 7).wrapping_add_signed(disp(i + 3)?);
                rax_is_runtime = got_is_runtime(slot);
            }
            [0x48, 0x8d, modrm, ..] if rax_is_runtime && modrm & 0xc7 == 0x80 => {
                let off = u64::try_from(disp(i + 3)?).ok()?;
                return Some(runtime + off + 4);
            }
            _ => {}
        }
    }
    None
}

/// Every FDE's address range in `.eh_frame`, sorted.
fn fdes(elf: &ElfFile64<'_, Endianness>) -> Option<Vec<Range<u64>>> {
    let s = elf.section_by_name(".eh_frame")?;
    let mut bases = BaseAddresses::default().set_eh_frame(s.address());
    if let Some(text) = elf.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    let mut eh = EhFrame::new(s.data().ok()?, LittleEndian);
    eh.set_address_size(8);
    let mut out = Vec::new();
    let mut entries = eh.entries(&bases);
    while let Ok(Some(e)) = entries.next() {
        if let CieOrFde::Fde(partial) = e
            && let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o))
        {
            out.push(fde.initial_address()..fde.end_address());
        }
    }
    out.sort_unstable_by_key(|r| r.start);
    Some(out)
}

fn fde_of(fdes: &[Range<u64>], addr: u64) -> Option<&Range<u64>> {
    let i = fdes.partition_point(|r| r.start <= addr).checked_sub(1)?;
    fdes.get(i).filter(|r| r.contains(&addr))
}

/// The cold part of the eval loop. With a `.cold` symbol (builds that keep
/// `.symtab`), its FDE. Otherwise every `jcc rel32` / `jmp rel32` byte
/// pattern in the function votes for the FDE its target falls in; byte
/// patterns inside other instructions scatter, while the real jumps to the
/// cold part (hundreds in the eval loop) agree. An FDE that a function
/// symbol starts is another function, not a cold part.
fn cold_range(
    elf: &ElfFile64<'_, Endianness>,
    eval: &Range<u64>,
    fdes: &[Range<u64>],
    cold_sym: Option<u64>,
    starts: &[u64],
) -> Option<Range<u64>> {
    let main = fde_of(fdes, eval.start);
    let outside = |r: &Range<u64>| Some(r) != main && !r.contains(&eval.start);
    if let Some(c) = cold_sym {
        return fde_of(fdes, c).filter(|r| outside(r)).cloned();
    }
    let code = bytes_at(elf, eval.start, (eval.end - eval.start) as usize)?;
    let mut votes: HashMap<u64, (Range<u64>, u32)> = HashMap::new();
    for i in 0..code.len() {
        let (op_len, rel_at) = match code[i..] {
            [0x0f, 0x80..=0x8f, ..] => (6, i + 2),
            [0xe9, ..] => (5, i + 1),
            _ => continue,
        };
        let Some(rel) = code.get(rel_at..rel_at + 4) else {
            continue;
        };
        let rel = i64::from(i32::from_le_bytes(rel.try_into().ok()?));
        let target = (eval.start + (i + op_len) as u64).wrapping_add_signed(rel);
        if eval.contains(&target) {
            continue;
        }
        let Some(r) = fde_of(fdes, target).filter(|r| outside(r)) else {
            continue;
        };
        if starts.binary_search(&r.start).is_ok() {
            continue;
        }
        votes.entry(r.start).or_insert((r.clone(), 0)).1 += 1;
    }
    let mut ranked: Vec<_> = votes.into_values().collect();
    ranked.sort_unstable_by_key(|(_, n)| std::cmp::Reverse(*n));
    let (best, n) = ranked.first()?.clone();
    let runner_up = ranked.get(1).map_or(0, |(_, n)| *n);
    (n >= 4 && n >= 4 * runner_up).then_some(best)
}

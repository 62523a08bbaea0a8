//! Compact unwind rows from an ELF file's call frame information
//! (`.eh_frame`, and `.debug_frame` for ranges `.eh_frame` lacks), x86_64.
//!
//! Each CFI row becomes one [`UnwindRow`]: how to find the CFA (rsp or rbp
//! plus an offset) and where rbp was saved. Known expression patterns are
//! translated (the PLT's `DW_CFA_def_cfa_expression`, signal trampolines);
//! any other expression is kept as an `UNSUPPORTED` row so the unwinder
//! stops there instead of guessing. Gaps between functions get a `NONE`
//! row, where the unwinder falls back to frame pointers.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Reader,
    RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment};
use sonde_common::unwind::{UnwindRow, cfa, rbp};

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// `(p_offset, p_vaddr, p_filesz)` of an executable `PT_LOAD` segment.
pub type Segment = (u64, u64, u64);

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("not a parsable ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("not an x86_64 ELF file")]
    Arch,
    #[error("no call frame information (.eh_frame or .debug_frame)")]
    NoCfi,
    #[error("more than {0} unwind rows")]
    TooBig(usize),
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
}

/// A file's rows, sorted by pc, and what building them found.
#[derive(Debug, Default)]
pub struct Table {
    pub rows: Vec<UnwindRow>,
    pub fdes: usize,
    /// FDEs that could not be parsed or evaluated (skipped: their range
    /// has no row, so frame pointers are used there).
    pub bad_fdes: usize,
    pub unsupported_rows: usize,
}

/// One FDE's range and where its rows sit in the flat row buffer: one
/// buffer for all FDEs, not a `Vec` each, because a large binary has
/// hundreds of thousands of FDEs and the per-vector slack and headers
/// were most of the build's peak heap.
struct Fde {
    start: u64,
    end: u64,
    first: usize,
    len: usize,
}

/// Parses `data` (a whole ELF file) into its unwind rows.
pub fn build(data: &[u8]) -> Result<Table, TableError> {
    build_from(data, usize::MAX)
}

/// Like [`build`], for an open file, giving up with
/// [`TableError::TooBig`] once more than `max_rows` rows are found (the
/// kernel could not hold them, so building them would only cost memory).
/// Also returns the executable segments (for [`bias_of`]).
pub fn build_file(
    file: &std::fs::File,
    max_rows: usize,
) -> Result<(Table, Vec<Segment>), TableError> {
    // SAFETY: a read-only private mapping; the file is a binary some
    // process has mapped for execution, so it is not expected to change
    // under us (the kernel refuses writes to a running executable, and
    // rewriting a mapped library in place would crash its users first).
    // Mapping instead of reading keeps the CFI and symbol sections out of
    // the heap: they are page cache, dropped with the mapping.
    let map = unsafe { memmap2::Mmap::map(file)? };
    let data: &[u8] = &map;
    let t = build_from(data, max_rows)?;
    let obj = object::File::parse(data)?;
    Ok((t, segments(&obj)))
}

// The public entry points are not generic on purpose: the CFI evaluation
// is then instantiated in this crate, which is optimized even in debug
// builds (a generic would be compiled, unoptimized, into its caller).
fn build_from(data: &[u8], max_rows: usize) -> Result<Table, TableError> {
    let obj = object::File::parse(data)?;
    if obj.architecture() != object::Architecture::X86_64 {
        return Err(TableError::Arch);
    }
    let mut t = Table::default();
    let mut fdes = Vec::new();
    let mut flat = Vec::new();
    let text = obj.section_by_name(".text").map(|s| s.address());
    if let Some(s) = obj.section_by_name(".eh_frame")
        && let Ok(bytes) = s.data()
    {
        let sec = EhFrame::new(bytes, LittleEndian);
        let mut bases = BaseAddresses::default().set_eh_frame(s.address());
        if let Some(text) = text {
            bases = bases.set_text(text);
        }
        if let Some(got) = obj.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        collect(&sec, &bases, &mut fdes, &mut flat, &mut t, max_rows)?;
    }
    let covered = fdes.len();
    if let Some(s) = obj.section_by_name(".debug_frame")
        && let Ok(bytes) = s.data()
    {
        let mut sec = DebugFrame::new(bytes, LittleEndian);
        sec.set_address_size(8);
        collect(
            &sec,
            &BaseAddresses::default(),
            &mut fdes,
            &mut flat,
            &mut t,
            max_rows,
        )?;
    }
    if fdes.is_empty() {
        return Err(TableError::NoCfi);
    }
    // `.eh_frame` wins where both describe a range: sort it first.
    let mut order: Vec<usize> = (0..fdes.len()).collect();
    order.sort_by_key(|&i| (fdes[i].start, i >= covered));
    // Merging only shrinks the rows; a gap row per FDE at most is added.
    t.rows.reserve_exact(flat.len() + fdes.len() + 1);
    let mut end = 0u64;
    for i in order {
        let f = &fdes[i];
        if f.start < end || f.end > u32::MAX as u64 {
            continue; // overlaps one already taken (or out of u32 range)
        }
        if end != 0 && f.start > end {
            push(&mut t.rows, gap(end));
        }
        for r in &flat[f.first..f.first + f.len] {
            push(&mut t.rows, *r);
        }
        end = f.end;
    }
    if end != 0 {
        push(&mut t.rows, gap(end));
    }
    Ok(t)
}

fn gap(pc: u64) -> UnwindRow {
    UnwindRow {
        pc: pc as u32,
        cfa_kind: cfa::NONE,
        ..Default::default()
    }
}

/// Appends `r`, merging it into the previous row when the rule is the
/// same (or replacing a previous row at the same pc).
fn push(rows: &mut Vec<UnwindRow>, r: UnwindRow) {
    if let Some(last) = rows.last_mut() {
        if last.pc == r.pc {
            *last = r;
            return;
        }
        let same = UnwindRow { pc: last.pc, ..r };
        if same == *last {
            return;
        }
    }
    rows.push(r);
}

fn collect<'a, S: UnwindSection<Slice<'a>>>(
    sec: &S,
    bases: &BaseAddresses,
    out: &mut Vec<Fde>,
    flat: &mut Vec<UnwindRow>,
    t: &mut Table,
    max_rows: usize,
) -> Result<(), TableError> {
    let mut ctx = UnwindContext::new();
    let mut entries = sec.entries(bases);
    loop {
        let e = match entries.next() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            // A broken entry ends the walk: lengths can no longer be trusted.
            Err(_) => {
                t.bad_fdes += 1;
                break;
            }
        };
        let CieOrFde::Fde(partial) = e else { continue };
        t.fdes += 1;
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            t.bad_fdes += 1;
            continue;
        };
        if fde.len() == 0 {
            continue;
        }
        let signal = fde.is_signal_trampoline();
        let first = flat.len();
        let ok = (|| -> gimli::Result<()> {
            let mut table = fde.rows(sec, bases, &mut ctx)?;
            while let Some(row) = table.next_row()? {
                let r = convert(sec, row, signal);
                if r.cfa_kind == cfa::UNSUPPORTED {
                    t.unsupported_rows += 1;
                }
                flat.push(UnwindRow {
                    pc: row.start_address() as u32,
                    ..r
                });
            }
            Ok(())
        })();
        if ok.is_err() {
            // Its rows are dropped with it: the range falls back to frame
            // pointers.
            flat.truncate(first);
            t.bad_fdes += 1;
            continue;
        }
        if flat.len() > max_rows {
            return Err(TableError::TooBig(max_rows));
        }
        out.push(Fde {
            start: fde.initial_address(),
            end: fde.end_address(),
            first,
            len: flat.len() - first,
        });
    }
    Ok(())
}

/// One CFI row as an unwinder rule.
fn convert<'a, S: UnwindSection<Slice<'a>>>(
    sec: &S,
    row: &gimli::UnwindTableRow<usize>,
    signal: bool,
) -> UnwindRow {
    let unsupported = UnwindRow {
        cfa_kind: cfa::UNSUPPORTED,
        ..Default::default()
    };
    if signal {
        return UnwindRow {
            cfa_kind: cfa::SIGNAL,
            ..Default::default()
        };
    }
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            return UnwindRow {
                cfa_kind: cfa::END,
                ..Default::default()
            };
        }
        None | Some(RegisterRule::Offset(-8)) => {}
        Some(_) => return unsupported,
    }
    let mut r = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(off) = i32::try_from(*offset) else {
                return unsupported;
            };
            let kind = if *register == X86_64::RSP {
                cfa::RSP
            } else if *register == X86_64::RBP {
                cfa::RBP
            } else {
                return unsupported;
            };
            UnwindRow {
                cfa_kind: kind,
                cfa_offset: off,
                ..Default::default()
            }
        }
        CfaRule::Expression(e) => {
            let Ok(e) = e.get(sec) else {
                return unsupported;
            };
            let Ok(bytes) = e.0.to_slice() else {
                return unsupported;
            };
            match plt_rule(&bytes) {
                Some((off, threshold)) => UnwindRow {
                    cfa_kind: cfa::PLT,
                    cfa_offset: off,
                    rbp_offset: threshold,
                    ..Default::default()
                },
                None => return unsupported,
            }
        }
    };
    match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => {}
        Some(RegisterRule::Offset(o)) => {
            if r.cfa_kind == cfa::PLT {
                return unsupported;
            }
            let Ok(o) = i32::try_from(o) else {
                return unsupported;
            };
            r.rbp_kind = rbp::AT_CFA;
            r.rbp_offset = o;
        }
        Some(_) => return unsupported,
    }
    r
}

/// GNU ld's `.plt` CFA expression:
/// `DW_OP_breg7 (rsp) N; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and;
/// DW_OP_litT; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`,
/// i.e. CFA = rsp + N + 8 when (rip & 15) >= T. Returns (N, T).
pub fn plt_rule(b: &[u8]) -> Option<(i32, i32)> {
    if b.len() != 11 {
        return None;
    }
    let fixed = b[0] == 0x77
        && b[1] < 0x40 // one-byte positive SLEB128
        && b[2] == 0x80
        && b[3] == 0
        && b[4] == 0x3f
        && b[5] == 0x1a
        && (0x30..=0x4f).contains(&b[6])
        && b[7] == 0x2a
        && b[8] == 0x33
        && b[9] == 0x24
        && b[10] == 0x22;
    fixed.then(|| (i32::from(b[1]), i32::from(b[6] - 0x30)))
}

/// The load bias of a mapping of this file: runtime address minus the
/// file's virtual address, from the `PT_LOAD` segment holding `offset`.
pub fn load_bias(data: &[u8], start: u64, offset: u64) -> Option<u64> {
    let obj = object::File::parse(data).ok()?;
    bias_of(&segments(&obj), start, offset)
}

/// `(p_offset, p_vaddr, p_filesz)` of each executable loadable segment
/// (the mappings unwound are the executable ones).
fn segments<'a, R: object::ReadRef<'a>>(obj: &object::File<'a, R>) -> Vec<(u64, u64, u64)> {
    obj.segments()
        .filter(|s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & 1 != 0))
        .map(|s| {
            let (off, size) = s.file_range();
            (off, s.address(), size)
        })
        .collect()
}

pub fn bias_of(segs: &[(u64, u64, u64)], start: u64, offset: u64) -> Option<u64> {
    // Segment offsets and sizes come from the file as is: a corrupt one may
    // reach past u64::MAX, hence the saturating end.
    // The mapping starts at the page holding p_offset, which need not be
    // page aligned (lld/rustc lay segments out unaligned in the file).
    let &(p_off, p_vaddr, _) = segs
        .iter()
        .find(|(o, _, size)| o & !0xfff <= offset && offset < o.saturating_add(*size.max(&1)))?;
    Some(
        start
            .wrapping_sub(offset)
            .wrapping_add(p_off)
            .wrapping_sub(p_vaddr),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    #[test]
    fn libc_rows_are_sorted_and_cover_known_patterns() {
        let data = std::fs::read(LIBC).expect("Debian libc");
        let t = build(&data).expect("libc has .eh_frame");
        assert!(t.rows.len() > 10_000, "{} rows", t.rows.len());
        assert!(t.rows.windows(2).all(|w| w[0].pc < w[1].pc), "sorted");
        let kinds = |k| t.rows.iter().filter(|r| r.cfa_kind == k).count();
        assert!(kinds(cfa::RSP) > 1000);
        assert!(kinds(cfa::RBP) > 10);
        assert!(kinds(cfa::SIGNAL) >= 1, "__restore_rt");
        assert!(kinds(cfa::NONE) >= 1, "gaps");
        assert!(
            t.rows
                .iter()
                .any(|r| r.rbp_kind == rbp::AT_CFA && r.rbp_offset == -16)
        );
    }

    #[test]
    fn a_table_over_the_row_cap_is_abandoned() {
        let f = std::fs::File::open(LIBC).unwrap();
        let (whole, _) = build_file(&f, usize::MAX).unwrap();
        assert_eq!(
            whole.rows,
            build(&std::fs::read(LIBC).unwrap()).unwrap().rows
        );
        let cap = whole.rows.len() / 2;
        match build_file(&f, cap) {
            Err(TableError::TooBig(n)) => assert_eq!(n, cap),
            other => panic!("expected TooBig, got {other:?}"),
        }
    }

    #[test]
    fn plt_expression_is_recognised() {
        let e = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(plt_rule(&e), Some((8, 11)));
        let mut other = e;
        other[8] = 0x34;
        assert_eq!(plt_rule(&other), None);
    }

    #[test]
    fn bias_from_segments() {
        // A PIE: text segment at file offset 0x1000, vaddr 0x1000.
        let segs = [(0, 0, 0x800), (0x1000, 0x1000, 0x2000)];
        assert_eq!(
            bias_of(&segs, 0x5555_0000_1000, 0x1000),
            Some(0x5555_0000_0000)
        );
        // Non-PIE at 0x400000.
        let segs = [(0, 0x40_0000, 0x800), (0x1000, 0x40_1000, 0x2000)];
        assert_eq!(bias_of(&segs, 0x40_1000, 0x1000), Some(0));
        assert_eq!(bias_of(&segs, 0x40_1000, 0x9000), None);
        // rustc's layout: exec segment at file 0x16f40, vaddr 0x17f40, mapped
        // from file offset 0x16000.
        let segs = [(0x16f40, 0x17f40, 0x3fbe0)];
        assert_eq!(
            bias_of(&segs, 0x55da_e206_1000, 0x16000),
            Some(0x55da_e206_1000 - 0x17000)
        );
    }

    #[test]
    fn segment_reaching_past_the_address_space() {
        // Found by the unwind_table fuzz target: a corrupt program header
        // whose p_offset + p_filesz overflows a u64 (it panicked in debug
        // builds and matched nothing in release builds).
        let segs = [(0xffff_ffff_ffff_f000, 0, 0x2000)];
        assert_eq!(
            bias_of(&segs, 0x1000, 0xffff_ffff_ffff_f800),
            Some(0x1000u64.wrapping_sub(0x800))
        );
        assert_eq!(bias_of(&segs, 0x1000, 0x1000), None);
    }
}

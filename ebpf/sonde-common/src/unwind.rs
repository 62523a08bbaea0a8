//! DWARF (`.eh_frame`) unwinding ABI shared by the profiler's eBPF unwinder
//! and the agent that builds its tables.
//!
//! The agent turns the call frame information of each executable file into
//! a sorted array of [`UnwindRow`]s (one per address range with one rule)
//! stored in a slice of the big row array; [`UnwindFile`] names that slice
//! by a table id. Per process, [`UnwindProc`] lists the executable
//! mappings sorted by start address with the table id and load bias of the
//! file behind each. The kernel side walks the stack with these and stores
//! the result as an [`UnwoundStack`] under a stack id at or above
//! [`UNWIND_STACK_ID_BASE`] (ids below it come from `bpf_get_stackid`).

/// Deepest user stack the unwinder walks (the kernel's
/// `PERF_MAX_STACK_DEPTH`, like `bpf_get_stackid`).
pub const UNWIND_MAX_DEPTH: usize = 127;
/// Most executable mappings per process the unwinder knows of.
pub const UNWIND_MAX_MAPPINGS: usize = 64;
/// Processes with unwind information loaded at once.
pub const UNWIND_MAX_PROCS: u32 = 2048;
/// Table ids (distinct files loaded at once).
pub const UNWIND_MAX_FILES: u32 = 4096;
/// Binary-search steps over a file's rows: enough for 2^27 rows, more than
/// the largest budget allows.
pub const UNWIND_ROW_SEARCH_STEPS: u32 = 27;
/// Binary-search steps over a process's mappings (2^7 > 64).
pub const UNWIND_MAP_SEARCH_STEPS: u32 = 7;
/// User stack ids at or above this value name [`UnwoundStack`]s in the
/// unwinder's own stack maps.
pub const UNWIND_STACK_ID_BASE: i32 = 1 << 30;

/// How the canonical frame address (CFA, the caller's stack pointer) is
/// computed for a row. Values are ABI.
pub mod cfa {
    /// No call frame information for this address (a gap between FDEs):
    /// the unwinder falls back to frame pointers.
    pub const NONE: u8 = 0;
    /// CFA = rsp + offset.
    pub const RSP: u8 = 1;
    /// CFA = rbp + offset.
    pub const RBP: u8 = 2;
    /// A PLT stub: CFA = rsp + offset, plus 8 when
    /// `(pc & 15) >= rbp_offset` (the GNU ld `.plt` expression).
    pub const PLT: u8 = 3;
    /// A signal trampoline (`__restore_rt`): the interrupted registers are
    /// in the `ucontext` at rsp.
    pub const SIGNAL: u8 = 4;
    /// A DWARF expression the unwinder cannot evaluate.
    pub const UNSUPPORTED: u8 = 5;
    /// The return address is undefined: the outermost frame (`_start`,
    /// thread entry).
    pub const END: u8 = 6;
}

/// Where the caller's rbp is. Values are ABI.
pub mod rbp {
    /// Not saved by this frame: the caller's rbp is the current one.
    pub const SAME: u8 = 0;
    /// Saved at CFA + rbp_offset.
    pub const AT_CFA: u8 = 1;
}

/// One unwind rule, valid from `pc` up to the next row's `pc`. Addresses
/// are the file's virtual addresses (load bias removed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    pub cfa_offset: i32,
    /// rbp's save slot relative to the CFA ([`rbp::AT_CFA`]), or the PLT
    /// threshold ([`cfa::PLT`]).
    pub rbp_offset: i32,
    /// One of [`cfa`].
    pub cfa_kind: u8,
    /// One of [`rbp`].
    pub rbp_kind: u8,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<UnwindRow>() == 16);

/// Where a file's rows are in the row array; `rows == 0`: not loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindFile {
    pub first: u32,
    pub rows: u32,
}

const _: () = assert!(core::mem::size_of::<UnwindFile>() == 8);

/// One executable mapping of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    /// Runtime address minus file virtual address.
    pub bias: u64,
    /// Index into the file table; [`UNWIND_NO_TABLE`] when the mapping has
    /// no table (JIT code, unreadable file): frame pointers are used there.
    pub file: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<UnwindMapping>() == 32);

/// Table id of mappings without a table.
pub const UNWIND_NO_TABLE: u32 = u32::MAX;

/// A process's executable mappings, sorted by start, `len` of them valid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindProc {
    pub len: u32,
    pub _pad: u32,
    pub maps: [UnwindMapping; UNWIND_MAX_MAPPINGS],
}

const _: () = assert!(core::mem::size_of::<UnwindProc>() == 8 + 32 * UNWIND_MAX_MAPPINGS);

/// A user stack walked by the unwinder: `len` frames, innermost first.
/// `check` is a second hash of the frames, telling a hash collision from a
/// repeated stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwoundStack {
    pub len: u32,
    pub check: u32,
    pub frames: [u64; UNWIND_MAX_DEPTH],
}

const _: () = assert!(core::mem::size_of::<UnwoundStack>() == 1024);

crate::counters! {
    /// Indexes into the unwinder's per-CPU counter array. Values are ABI.
    pub enum UnwindCounter [UNWIND_COUNTERS] {
        /// Samples whose user stack was walked with the tables.
        Walked = 0 => "walked",
        /// A PC in no known mapping (JIT code, a library loaded after the
        /// process was captured): frame pointers were tried.
        NoMapping = 1 => "no_mapping",
        /// A PC in a mapping whose file has no table loaded (evicted, too big,
        /// unreadable): frame pointers were tried.
        NoTable = 2 => "no_table",
        /// A PC in a gap of the table: frame pointers were tried.
        NoRow = 3 => "no_row",
        /// A row with an expression the unwinder cannot evaluate: walk ended.
        UnsupportedRule = 4 => "unsupported_rule",
        /// A read of the user stack failed: walk ended.
        ReadFault = 5 => "read_fault",
        /// The walk reached [`UNWIND_MAX_DEPTH`] frames: stack truncated.
        MaxDepth = 6 => "max_depth",
        /// The computed frame did not move up the stack: walk ended.
        BadFrame = 7 => "bad_frame",
        /// Two different stacks hashed to one id: user stack dropped.
        StackCollision = 8 => "stack_collision",
        /// The unwound-stack map was full: user stack dropped.
        StackMapFull = 9 => "stack_map_full",
        /// The user registers of the sampled task could not be read.
        NoRegisters = 10 => "no_registers",
    }
}

impl UnwindCounter {
    /// The `reason` label of `sonde_unwind_errors_total` (None: not an
    /// error).
    pub fn reason(self) -> Option<&'static str> {
        (self != Self::Walked).then(|| self.label())
    }
}

crate::user_pod!(
    UnwindRow,
    UnwindFile,
    UnwindMapping,
    UnwindProc,
    UnwoundStack
);

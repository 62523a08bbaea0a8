//! Field offsets of the CPython structures the walk and the symbolizer
//! read, per supported minor version (x86_64, default GIL build). 3.10 to
//! 3.12 come from tables checked with `ptype /o` against pyenv's debug
//! builds here (3.10.13, 3.11.7, 3.12.1) and live by the tests; 3.13 reads
//! `_Py_DebugOffsets` (Include/internal/pycore_runtime.h) from the process
//! and keeps only what that struct lacks from the table.

use crate::mem::{MemError, ProcMem};

/// How the code object's line table is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// 3.10 `co_linetable` (PEP 626, Objects/lnotab_notes.txt): pairs of
    /// (byte delta: u8, line delta: i8, -128 = no line).
    Pep626,
    /// 3.11+ location table (Objects/locations.md).
    Locations,
}

/// How frames chain and where a `_PyEval_EvalFrameDefault` call starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// 3.10 `PyFrameObject` (Include/cpython/frameobject.h): one eval call
    /// per frame, `f_lasti` in code units.
    Object,
    /// 3.11 `_PyInterpreterFrame` (Include/internal/pycore_frame.h) with
    /// `is_entry`.
    EntryFlag,
    /// 3.12/3.13 `_PyInterpreterFrame` with `owner`; each eval call pushes
    /// a shim frame owned by `FRAME_OWNED_BY_CSTACK`.
    Owner { cstack: u8 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offsets {
    // _PyRuntimeState (Include/internal/pycore_runtime.h)
    pub runtime_interpreters_head: u64,
    /// `Py_tss_t autoTSSkey` (3.10/3.11 inside `gilstate`); the key is at +4.
    pub runtime_tss: u64,
    // PyInterpreterState (Include/internal/pycore_interp.h)
    /// `tstate_head` (3.10) / `threads.head`.
    pub interp_threads_head: u64,
    // PyThreadState (Include/cpython/pystate.h)
    pub tstate_next: u64,
    /// `thread_id`: the `pthread_t`, which is the thread's TCB in glibc.
    pub tstate_thread_id: u64,
    /// `native_thread_id` (3.11+).
    pub tstate_native_thread_id: Option<u64>,
    /// `frame` (3.10), `cframe` (3.11/3.12), `current_frame` (3.13).
    pub tstate_frame: u64,
    /// `_PyCFrame.current_frame` (3.11/3.12, Include/cpython/pystate.h).
    pub cframe_current_frame: Option<u64>,
    // the frame (see FrameKind)
    pub frame_kind: FrameKind,
    pub frame_previous: u64,
    pub frame_code: u64,
    pub frame_instr: u64,
    /// `is_entry` (3.11) / `owner` (3.12+); unused for 3.10.
    pub frame_entry: u64,
    // PyCodeObject (Include/cpython/code.h)
    pub code_argcount: u64,
    pub code_kwonlyargcount: u64,
    pub code_flags: u64,
    pub code_firstlineno: u64,
    pub code_filename: u64,
    pub code_name: u64,
    /// `co_qualname` (3.11+).
    pub code_qualname: Option<u64>,
    pub code_linetable: u64,
    /// `co_code_adaptive` (3.11+): bytecode inline in the code object.
    pub code_adaptive: Option<u64>,
    /// `co_version` (3.12+): a u32 the interpreter gives each code object
    /// from a counter (`_Py_next_func_version`, 3.13
    /// `interp->func_state.next_version`), so two code objects at one
    /// address in turn tell apart by it. Just before `co_localsplusnames`.
    pub code_version: Option<u64>,
    pub line_table: LineTable,
    // PyASCIIObject / PyCompactUnicodeObject (Include/cpython/unicodeobject.h)
    pub unicode_length: u64,
    /// `PyASCIIObject.hash`: the str's cached hash (set for the interned
    /// names of code objects).
    pub unicode_hash: u64,
    pub unicode_state: u64,
    pub unicode_ascii_size: u64,
    pub unicode_compact_size: u64,
    // PyBytesObject (Include/cpython/bytesobject.h)
    pub bytes_size: u64,
    pub bytes_sval: u64,
}

/// Offset of `tid` in glibc's `struct pthread` (nptl/descr.h; 2.36 x86_64),
/// to name a 3.10 thread, whose state has no `native_thread_id`.
pub const GLIBC_PTHREAD_TID: u64 = 0x2d0;

/// The table for `3.minor`, or `None` for a version without one.
pub fn table(minor: u32) -> Option<Offsets> {
    let t311 = Offsets {
        runtime_interpreters_head: 40,
        runtime_tss: 592,
        interp_threads_head: 16,
        tstate_next: 8,
        tstate_thread_id: 152,
        tstate_native_thread_id: Some(160),
        tstate_frame: 56,
        cframe_current_frame: Some(8),
        frame_kind: FrameKind::EntryFlag,
        frame_previous: 48,
        frame_code: 32,
        frame_instr: 56,
        frame_entry: 68,
        code_argcount: 56,
        code_kwonlyargcount: 64,
        code_flags: 48,
        code_firstlineno: 72,
        code_filename: 112,
        code_name: 120,
        code_qualname: Some(128),
        code_linetable: 136,
        code_adaptive: Some(184),
        code_version: None,
        line_table: LineTable::Locations,
        unicode_length: 16,
        unicode_hash: 24,
        unicode_state: 32,
        unicode_ascii_size: 48,
        unicode_compact_size: 72,
        bytes_size: 16,
        bytes_sval: 32,
    };
    match minor {
        10 => Some(Offsets {
            runtime_interpreters_head: 32,
            runtime_tss: 584,
            interp_threads_head: 8,
            tstate_thread_id: 176,
            tstate_native_thread_id: None,
            tstate_frame: 24,
            cframe_current_frame: None,
            frame_kind: FrameKind::Object,
            frame_previous: 24,
            frame_code: 32,
            frame_instr: 96,
            frame_entry: 0,
            code_argcount: 16,
            code_kwonlyargcount: 24,
            code_flags: 36,
            code_firstlineno: 40,
            code_filename: 104,
            code_name: 112,
            code_qualname: None,
            code_linetable: 120,
            code_adaptive: None,
            line_table: LineTable::Pep626,
            ..t311
        }),
        11 => Some(t311),
        12 => Some(Offsets {
            runtime_tss: 1544,
            interp_threads_head: 72,
            tstate_thread_id: 136,
            tstate_native_thread_id: Some(144),
            cframe_current_frame: Some(0),
            frame_kind: FrameKind::Owner { cstack: 3 },
            frame_previous: 8,
            frame_code: 0,
            frame_entry: 70,
            code_argcount: 52,
            code_kwonlyargcount: 60,
            code_firstlineno: 68,
            code_adaptive: Some(192),
            code_version: Some(92),
            unicode_ascii_size: 40,
            unicode_compact_size: 56,
            ..t311
        }),
        13 => Some(Offsets {
            runtime_interpreters_head: 632,
            runtime_tss: 2160,
            interp_threads_head: 7344,
            tstate_thread_id: 152,
            tstate_native_thread_id: Some(160),
            tstate_frame: 72,
            cframe_current_frame: None,
            frame_kind: FrameKind::Owner { cstack: 3 },
            frame_previous: 8,
            frame_code: 0,
            frame_entry: 70,
            code_argcount: 52,
            code_kwonlyargcount: 60,
            code_firstlineno: 68,
            code_adaptive: Some(200),
            code_version: Some(92),
            unicode_ascii_size: 40,
            unicode_compact_size: 56,
            ..t311
        }),
        _ => None,
    }
}

/// `_Py_DebugOffsets` as 3.13 lays it out (each field a u64).
mod debug13 {
    pub const COOKIE: &[u8; 8] = b"xdebugpy";
    pub const VERSION: usize = 8;
    pub const FREE_THREADED: usize = 16;
    pub const INTERPRETERS_HEAD: usize = 40;
    pub const THREADS_HEAD: usize = 72;
    pub const TSTATE_NEXT: usize = 168;
    pub const TSTATE_CURRENT_FRAME: usize = 184;
    pub const TSTATE_THREAD_ID: usize = 192;
    pub const TSTATE_NATIVE_THREAD_ID: usize = 200;
    pub const FRAME_PREVIOUS: usize = 232;
    pub const FRAME_EXECUTABLE: usize = 240;
    pub const FRAME_INSTR_PTR: usize = 248;
    pub const FRAME_OWNER: usize = 264;
    pub const CODE_FILENAME: usize = 280;
    pub const CODE_NAME: usize = 288;
    pub const CODE_QUALNAME: usize = 296;
    pub const CODE_LINETABLE: usize = 304;
    pub const CODE_FIRSTLINENO: usize = 312;
    pub const CODE_ARGCOUNT: usize = 320;
    pub const CODE_LOCALSPLUSNAMES: usize = 328;
    pub const CODE_ADAPTIVE: usize = 344;
    pub const BYTES_SIZE: usize = 520;
    pub const BYTES_SVAL: usize = 528;
    pub const UNICODE_STATE: usize = 544;
    pub const UNICODE_LENGTH: usize = 552;
    pub const UNICODE_ASCII_SIZE: usize = 560;
    pub const LEN: usize = 584;
}

#[derive(Debug, thiserror::Error)]
pub enum DebugOffsetsError {
    #[error(transparent)]
    Mem(#[from] MemError),
    #[error("no \"xdebugpy\" cookie at _PyRuntime")]
    NoCookie,
    #[error("free-threaded build")]
    FreeThreaded,
    #[error("_Py_DebugOffsets.version {0:#x} is not a 3.13 release")]
    Version(u64),
}

/// The 3.13 offsets from the process's own `_Py_DebugOffsets` at
/// `_PyRuntime`, completed from the table for what it does not describe
/// (`co_flags`, `co_kwonlyargcount`, the autoTSSkey, compact unicode).
pub fn from_debug_offsets_313(mem: &ProcMem, runtime: u64) -> Result<Offsets, DebugOffsetsError> {
    use debug13::*;
    let b = mem.bytes(runtime, LEN)?;
    if &b[..8] != COOKIE {
        return Err(DebugOffsetsError::NoCookie);
    }
    let f = |at: usize| crate::mem::le_u64(&b, at).unwrap_or(0);
    let version = f(VERSION);
    if version >> 16 != 0x030d {
        return Err(DebugOffsetsError::Version(version));
    }
    if f(FREE_THREADED) != 0 {
        return Err(DebugOffsetsError::FreeThreaded);
    }
    let mut o = table(13).expect("3.13 has a table");
    o.runtime_interpreters_head = f(INTERPRETERS_HEAD);
    o.interp_threads_head = f(THREADS_HEAD);
    o.tstate_next = f(TSTATE_NEXT);
    o.tstate_frame = f(TSTATE_CURRENT_FRAME);
    o.tstate_thread_id = f(TSTATE_THREAD_ID);
    o.tstate_native_thread_id = Some(f(TSTATE_NATIVE_THREAD_ID));
    o.frame_previous = f(FRAME_PREVIOUS);
    o.frame_code = f(FRAME_EXECUTABLE);
    o.frame_instr = f(FRAME_INSTR_PTR);
    o.frame_entry = f(FRAME_OWNER);
    o.code_filename = f(CODE_FILENAME);
    o.code_name = f(CODE_NAME);
    o.code_qualname = Some(f(CODE_QUALNAME));
    o.code_linetable = f(CODE_LINETABLE);
    o.code_firstlineno = f(CODE_FIRSTLINENO);
    o.code_argcount = f(CODE_ARGCOUNT);
    o.code_version = f(CODE_LOCALSPLUSNAMES).checked_sub(4);
    o.code_adaptive = Some(f(CODE_ADAPTIVE));
    o.bytes_size = f(BYTES_SIZE);
    o.bytes_sval = f(BYTES_SVAL);
    o.unicode_state = f(UNICODE_STATE);
    o.unicode_length = f(UNICODE_LENGTH);
    o.unicode_ascii_size = f(UNICODE_ASCII_SIZE);
    Ok(o)
}

/// Reads only the `free_threaded` flag (for detection before the rest).
pub fn is_free_threaded(mem: &ProcMem, runtime: u64) -> Result<bool, MemError> {
    let b = mem.bytes(runtime, 24)?;
    Ok(&b[..8] == debug13::COOKIE && crate::mem::le_u64(&b, debug13::FREE_THREADED) != Some(0))
}

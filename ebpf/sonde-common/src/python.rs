//! Python (CPython) stack ABI: what the agent tells the kernel about a
//! CPython process ([`PyProcInfo`]) and what the kernel's walk of the
//! interpreter's frame chain emits per frame ([`PyFrameRecord`]).
//!
//! The walk, for the current thread of a process with a `PyProcInfo`:
//! 1. `fsbase = task->thread.fsbase` (kernel read; the offset comes from BTF);
//! 2. `tstate = *(u64 *)(fsbase + tsd_offset)` — glibc's thread-specific
//!    slot of CPython's autoTSSkey; 0 means the thread has no Python state;
//! 3. `frame = *(u64 *)(tstate + tstate_frame)`, and with
//!    [`PY_PROC_CFRAME_HOP`] one more hop `frame = *(u64 *)(frame + cframe_frame)`;
//! 4. up to [`PY_FRAMES_MAX`] times, while `frame != 0`: one read of
//!    `frame_read_len` bytes at `frame`, then, by `frame_kind`:
//!    - [`PY_FRAME_KIND_OBJECT`] (3.10 `PyFrameObject`): `code` at
//!      `frame_code`, `instr = i32 at frame_instr` (`f_lasti`, code units),
//!      every frame is an entry frame;
//!    - [`PY_FRAME_KIND_ENTRY_FLAG`] (3.11 `_PyInterpreterFrame`): `instr =
//!      (ptr at frame_instr - code - code_adaptive) / 2`, entry when the
//!      byte at `frame_entry` is non-zero;
//!    - [`PY_FRAME_KIND_OWNER`] (3.12/3.13): a frame whose byte at
//!      `frame_entry` equals `owner_cstack`, or whose code is `none_addr`,
//!      is the C-stack shim pushed by each `_PyEval_EvalFrameDefault` call:
//!      emit nothing for it and set [`PY_FRAME_ENTRY`] on the record emitted
//!      just before (the younger frame); otherwise as for ENTRY_FLAG;
//!
//!    then one read of [`PY_CODE_CHECK_LEN`] bytes at `code + code_check`
//!    (the `code_*` fields of [`PyCodeIdentity`], each at its offset minus
//!    `code_check` in that window: four `i32`s, the `co_version` u32 when
//!    `code_version` is not 0, the `co_filename` and `co_name` pointers),
//!    one u64 read at `co_name + str_hash` (the name's hash), and emit the
//!    record with [`py_code_checksum`]; `frame = u64 at frame_previous`.

/// Most Python frames the kernel walks per sample.
pub const PY_FRAMES_MAX: usize = 128;
/// Bytes of the code object read for the checksum, from `code_check`.
pub const PY_CODE_CHECK_LEN: usize = 128;
/// Largest `frame_read_len` any supported version needs (3.10: 104).
pub const PY_FRAME_READ_MAX: usize = 112;

/// `frame_kind`: 3.10's heap `PyFrameObject` chain (`f_back`).
pub const PY_FRAME_KIND_OBJECT: u8 = 1;
/// `frame_kind`: 3.11's `_PyInterpreterFrame` with `is_entry`.
pub const PY_FRAME_KIND_ENTRY_FLAG: u8 = 2;
/// `frame_kind`: 3.12+'s `_PyInterpreterFrame` with `owner`, shim frames.
pub const PY_FRAME_KIND_OWNER: u8 = 3;

/// `PyProcInfo::flags`: the thread state points to a `_PyCFrame` whose
/// `current_frame` is the frame (3.11, 3.12).
pub const PY_PROC_CFRAME_HOP: u32 = 1;

/// `PyFrameRecord::flags`: the oldest frame run by one
/// `_PyEval_EvalFrameDefault` call; the native eval frame's Python segment
/// ends with it.
pub const PY_FRAME_ENTRY: u32 = 1;
/// `PyFrameRecord::flags`: the code object could not be read, `checksum`
/// is 0 and not to be trusted.
pub const PY_FRAME_NO_CHECKSUM: u32 = 2;

/// What the kernel needs to walk one CPython process's frames. All offsets
/// are bytes from the start of the named object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProcInfo {
    /// Address of the autoTSSkey's `pthread_key_t` (kept for checks; the
    /// kernel uses `tsd_offset`).
    pub tss_key_addr: u64,
    /// Address of `_Py_NoneStruct` (3.13's shim frames execute `None`).
    pub none_addr: u64,
    /// Offset from the thread's fsbase of the glibc slot holding the
    /// thread's `PyThreadState *` (`0x310 + 16 * key + 8`).
    pub tsd_offset: u32,
    /// `PY_PROC_*` bits.
    pub flags: u32,
    /// `PyThreadState` field leading to the current frame.
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame`, with [`PY_PROC_CFRAME_HOP`].
    pub cframe_frame: u16,
    /// Bytes read per frame, covering every `frame_*` field.
    pub frame_read_len: u16,
    /// The older frame (`f_back` / `previous`).
    pub frame_previous: u16,
    /// The code object (`f_code` / `f_executable`).
    pub frame_code: u16,
    /// `f_lasti` (3.10) or `prev_instr` / `instr_ptr` (3.11+).
    pub frame_instr: u16,
    /// `is_entry` (3.11) or `owner` (3.12+); unused for 3.10.
    pub frame_entry: u16,
    /// Start of the code-object window read for the checksum.
    pub code_check: u16,
    /// `co_argcount`.
    pub code_argcount: u16,
    /// `co_kwonlyargcount`.
    pub code_kwonly: u16,
    /// `co_flags`.
    pub code_flags: u16,
    /// `co_firstlineno`.
    pub code_firstlineno: u16,
    /// `co_code_adaptive`: the bytecode, inline in the code object (3.11+).
    pub code_adaptive: u16,
    /// `co_version` (3.12+), 0 when the version has none.
    pub code_version: u16,
    /// `co_filename`.
    pub code_filename: u16,
    /// `co_name`.
    pub code_name: u16,
    /// `PyASCIIObject.hash` in the `co_name` string.
    pub str_hash: u16,
    /// `(major << 8) | minor`, e.g. `0x030b`.
    pub version: u16,
    /// `PY_FRAME_KIND_*`.
    pub frame_kind: u8,
    /// `owner` value of a C-stack shim frame (`FRAME_OWNED_BY_CSTACK`).
    pub owner_cstack: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<PyProcInfo>() == 64);

/// One Python frame as the kernel emits it, youngest first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrameRecord {
    /// Address of the code object.
    pub code: u64,
    /// Instruction offset in code units from the start of the bytecode;
    /// `u32::MAX` (-1) before the first instruction ran.
    pub instr: u32,
    /// [`py_code_checksum`] of the code object as read with the frame.
    pub checksum: u32,
    /// `PY_FRAME_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<PyFrameRecord>() == 24);

/// Most processes the kernel walks Python stacks for (`PY_PROCS`).
pub const PY_MAX_PROCS: u32 = 1024;
/// Distinct Python stacks per generation (`PY_STACKS_*`, 3 KiB each).
pub const PY_MAX_STACKS: u32 = 2048;
/// Python stack ids carry this bit, so 0 means "no Python stack".
pub const PY_STACK_ID_BASE: i32 = 1 << 30;
/// Index in `PY_CONFIG` of `task_struct`'s fsbase offset (from BTF); the
/// kernel walks nothing while it is 0.
pub const PY_CONFIG_FSBASE: u32 = 0;
/// Entries of `PY_CONFIG`.
pub const PY_CONFIG_ENTRIES: u32 = 1;

/// One walked Python stack, youngest frame first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyStack {
    pub len: u32,
    /// A second hash of the records, to tell an id collision from the same
    /// stack.
    pub check: u32,
    pub frames: [PyFrameRecord; PY_FRAMES_MAX],
}

const _: () = assert!(core::mem::size_of::<PyStack>() == 8 + 24 * PY_FRAMES_MAX);

crate::user_pod!(PyProcInfo, PyFrameRecord, PyStack);

/// What tells one code object from another that later took its memory:
/// the fields [`py_code_checksum`] hashes, as read with the sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyCodeIdentity {
    pub argcount: i32,
    pub kwonly: i32,
    pub flags: i32,
    pub firstlineno: i32,
    /// `co_version` (3.12+: unique per code object); 0 before 3.12.
    pub version: u32,
    /// The `co_filename` pointer.
    pub filename: u64,
    /// The cached hash of the `co_name` string (its content, unlike the
    /// pointer: a function of another name compiled into the freed memory
    /// of a code object may get its name string at the freed name's
    /// address too).
    pub name_hash: u64,
}

/// Identity check of a code object: a cached name for a code address is
/// trusted only while these fields still hash the same (code objects are
/// freed and their memory reused). FNV-1a over 32-bit words, so the kernel
/// computes it with a few multiplies.
pub const fn py_code_checksum(id: &PyCodeIdentity) -> u32 {
    let words = [
        id.argcount as u32,
        id.kwonly as u32,
        id.flags as u32,
        id.firstlineno as u32,
        id.version,
        id.filename as u32,
        (id.filename >> 32) as u32,
        id.name_hash as u32,
        (id.name_hash >> 32) as u32,
    ];
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < words.len() {
        h = (h ^ words[i]).wrapping_mul(0x0100_0193);
        i += 1;
    }
    h
}

//! Python (CPython) stack walk, run for processes the agent put in
//! `PY_PROCS` (any other process costs one hash-map miss) by the programs
//! that capture user stacks: the profiler's `perf_event` program after the
//! native unwind and its off-CPU `sched_switch` program, `sonde alloc`'s
//! return probe, and the memory collector's sampled page faults. Each
//! object that includes this file has its own copy of the maps; the caller
//! counts the outcome in its own counters.
//!
//! The recipe is documented on `sonde_common::python` (and run in
//! userspace by `sonde_python::walk::kernel_walk`): fsbase from the task,
//! the thread state from glibc's TSD slot, then one `bpf_loop` iteration
//! per frame, each one read of the frame, one of the code object's
//! checksum window and one of its name's hash. The records go to a hash
//! map keyed by their hash, one map per generation like the native
//! stacks, and the id joins the count key.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{self, bpf_get_current_task, bpf_loop},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use sonde_common::python::{
    PY_CODE_CHECK_LEN, PY_CONFIG_ENTRIES, PY_CONFIG_FSBASE, PY_FRAME_ENTRY,
    PY_FRAME_KIND_ENTRY_FLAG, PY_FRAME_KIND_OBJECT, PY_FRAME_KIND_OWNER, PY_FRAME_NO_CHECKSUM,
    PY_FRAME_READ_MAX, PY_FRAMES_MAX, PY_MAX_PROCS, PY_MAX_STACKS, PY_PROC_CFRAME_HOP,
    PY_STACK_ID_BASE, PyCodeIdentity, PyFrameRecord, PyProcInfo, PyStack, py_code_checksum,
};

/// CPython processes to walk, filled by the agent.
#[map]
static PY_PROCS: HashMap<u32, PyProcInfo> = HashMap::with_max_entries(PY_MAX_PROCS, 0);

/// Settings from the agent: `task_struct`'s fsbase offset.
#[map]
static PY_CONFIG: Array<u32> = Array::with_max_entries(PY_CONFIG_ENTRIES, 0);

#[map]
static PY_STACKS_0: HashMap<u32, PyStack> = HashMap::with_max_entries(PY_MAX_STACKS, 0);
#[map]
static PY_STACKS_1: HashMap<u32, PyStack> = HashMap::with_max_entries(PY_MAX_STACKS, 0);

/// The walk in progress on this CPU (far too big for the BPF stack).
#[repr(C)]
pub struct PyWalk {
    stack: PyStack,
    info: PyProcInfo,
    frame: u64,
    hash: u64,
    check: u64,
    /// A frame read failed (the walk stopped there).
    fault: bool,
    /// The frame as read; a power of two of words so that a masked index
    /// needs no bounds check the verifier could lose track of.
    buf: [u64; BUF_WORDS],
    code: [u32; PY_CODE_CHECK_LEN / 4],
}

#[map]
static PY_WALK: PerCpuArray<PyWalk> = PerCpuArray::with_max_entries(1, 0);

const BUF_WORDS: usize = 16;
const _: () = assert!(BUF_WORDS * 8 >= PY_FRAME_READ_MAX);
const CODE_WORDS: usize = PY_CODE_CHECK_LEN / 4;
const _: () = assert!(CODE_WORDS.is_power_of_two());
const _: () = assert!(PY_FRAMES_MAX.is_power_of_two());

const EEXIST: i32 = 17;
const EFAULT: i32 = 14;
const CONTINUE: i64 = 0;
const STOP: i64 = 1;

/// What one walk did, for the caller's counters.
#[derive(Clone, Copy, Default)]
pub struct PyOutcome {
    /// 0: no Python stack (not a marked process, no Python state, or a
    /// failure below); else the stored stack's id (>= PY_STACK_ID_BASE);
    /// negative: `-errno` of the failure.
    pub id: i32,
    /// The process is in `PY_PROCS`: a walk was attempted.
    pub walked: bool,
    /// A read failed (fsbase, thread state, frame).
    pub fault: bool,
    /// Stopped at PY_FRAMES_MAX frames.
    pub truncated: bool,
    /// Walked but not stored (id collision, map full).
    pub lost: bool,
}

#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copies through the kernel's fault-safe
    // user access; a bad address returns an error, never faults.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The u64 at byte `off` of the frame buffer (offsets of pointer fields
/// are multiples of 8 and lie within `frame_read_len`, as the agent checks).
#[inline(always)]
fn word(buf: &[u64; BUF_WORDS], off: u16) -> u64 {
    // Masked, not checked: LLVM re-derives a checked index from an
    // unchecked register, which the verifier then rejects.
    buf[(usize::from(off) / 8) & (BUF_WORDS - 1)]
}

/// The byte at `off` of the frame buffer.
#[inline(always)]
fn byte(buf: &[u64; BUF_WORDS], off: u16) -> u8 {
    (word(buf, off & !7) >> ((off & 7) * 8)) as u8
}

/// The u32 at `off` (a multiple of 4) of the frame buffer.
#[inline(always)]
fn half(buf: &[u64; BUF_WORDS], off: u16) -> u32 {
    (word(buf, off & !7) >> ((off & 4) * 8)) as u32
}

/// The i32 at `off` (a multiple of 4) of the code window.
#[inline(always)]
fn code_field(w: &PyWalk, off: u16) -> i32 {
    let i = usize::from(off.wrapping_sub(w.info.code_check)) / 4;
    w.code[i & (CODE_WORDS - 1)] as i32
}

/// The u64 at `off` (a multiple of 8) of the code window.
#[inline(always)]
fn code_word(w: &PyWalk, off: u16) -> u64 {
    u64::from(code_field(w, off) as u32)
        | u64::from(code_field(w, off.wrapping_add(4)) as u32) << 32
}

/// The identity fields of the code object whose window `w.code` holds;
/// None when its name string cannot be read.
#[inline(always)]
fn identity(w: &PyWalk) -> Option<PyCodeIdentity> {
    let info = &w.info;
    let name = code_word(w, info.code_name);
    Some(PyCodeIdentity {
        argcount: code_field(w, info.code_argcount),
        kwonly: code_field(w, info.code_kwonly),
        flags: code_field(w, info.code_flags),
        firstlineno: code_field(w, info.code_firstlineno),
        version: if info.code_version != 0 {
            code_field(w, info.code_version) as u32
        } else {
            0
        },
        filename: code_word(w, info.code_filename),
        name_hash: read_user(name.wrapping_add(u64::from(info.str_hash)))?,
    })
}

#[inline(always)]
fn push(w: &mut PyWalk, rec: PyFrameRecord) -> i64 {
    let n = w.stack.len as usize;
    if n >= PY_FRAMES_MAX {
        return STOP;
    }
    w.stack.frames[n & (PY_FRAMES_MAX - 1)] = rec;
    w.stack.len += 1;
    let v = rec.code ^ (u64::from(rec.instr) << 32) ^ u64::from(rec.flags);
    w.hash = (w.hash ^ v).wrapping_mul(0x100_0000_01b3);
    w.check =
        (w.check.rotate_left(5) ^ v ^ u64::from(rec.checksum)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    CONTINUE
}

/// One frame: read it, emit its record (or mark the entry of a shim), go
/// to the older frame.
#[inline(always)]
fn step(w: &mut PyWalk) -> i64 {
    if w.frame == 0 {
        return STOP;
    }
    let len = u32::from(w.info.frame_read_len);
    if len == 0 || len > PY_FRAME_READ_MAX as u32 {
        return STOP;
    }
    // SAFETY: `buf` is this CPU's scratch slot, at least `len` bytes long
    // (checked above); the helper copies with fault handling.
    let r = unsafe {
        generated::bpf_probe_read_user(
            w.buf.as_mut_ptr() as *mut c_void,
            len,
            w.frame as *const c_void,
        )
    };
    if r != 0 {
        w.fault = true;
        w.frame = 0;
        return STOP;
    }
    let info = &w.info;
    let code = word(&w.buf, info.frame_code);
    let previous = word(&w.buf, info.frame_previous);
    let entry_byte = byte(&w.buf, info.frame_entry);
    if info.frame_kind == PY_FRAME_KIND_OWNER
        && (entry_byte == info.owner_cstack || code == info.none_addr)
    {
        // The shim each `_PyEval_EvalFrameDefault` call pushes: the frame
        // emitted just before is the oldest one that call runs.
        let n = w.stack.len as usize;
        if n > 0 {
            w.stack.frames[(n - 1) & (PY_FRAMES_MAX - 1)].flags |= PY_FRAME_ENTRY;
        }
        w.frame = previous;
        return CONTINUE;
    }
    let (instr, mut flags) = if info.frame_kind == PY_FRAME_KIND_OBJECT {
        (half(&w.buf, info.frame_instr), PY_FRAME_ENTRY)
    } else {
        let ip = word(&w.buf, info.frame_instr);
        let bci = (ip
            .wrapping_sub(code)
            .wrapping_sub(u64::from(info.code_adaptive)) as i64)
            >> 1;
        let entry = info.frame_kind == PY_FRAME_KIND_ENTRY_FLAG && entry_byte != 0;
        (bci as u32, if entry { PY_FRAME_ENTRY } else { 0 })
    };
    // SAFETY: `code` is this CPU's scratch slot of exactly
    // PY_CODE_CHECK_LEN bytes; the helper copies with fault handling.
    let r = unsafe {
        generated::bpf_probe_read_user(
            w.code.as_mut_ptr() as *mut c_void,
            PY_CODE_CHECK_LEN as u32,
            code.wrapping_add(u64::from(w.info.code_check)) as *const c_void,
        )
    };
    let checksum = match (r == 0).then(|| identity(w)).flatten() {
        Some(id) => py_code_checksum(&id),
        None => {
            flags |= PY_FRAME_NO_CHECKSUM;
            0
        }
    };
    w.frame = previous;
    push(
        w,
        PyFrameRecord {
            code,
            instr,
            checksum,
            flags,
            _pad: 0,
        },
    )
}

/// `bpf_loop` callback: one frame per call.
#[inline(never)]
extern "C" fn step_cb(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = PY_WALK.get_ptr_mut(0) else {
        return STOP;
    };
    // SAFETY: this CPU's own scratch slot; the profile object's programs
    // do not nest on one CPU (sched_switch runs with interrupts off, the
    // cpu-clock sample in a hard interrupt).
    step(unsafe { &mut *w })
}

/// The current thread's first frame: fsbase → TSD slot → thread state →
/// frame (→ cframe). `Ok(0)` when the thread has no Python state.
#[inline(always)]
fn first_frame(info: &PyProcInfo) -> Result<u64, ()> {
    let off = PY_CONFIG.get(PY_CONFIG_FSBASE).copied().unwrap_or(0);
    if off == 0 {
        return Err(());
    }
    // SAFETY: the helper returns the current task's address, only used
    // as a base for the fault-safe kernel read below.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: bpf_probe_read_kernel copies with fault handling; `off` is
    // task_struct.thread.fsbase's offset from this kernel's BTF.
    let fsbase =
        unsafe { bpf_probe_read_kernel((task + u64::from(off)) as *const u64) }.map_err(|_| ())?;
    let tstate = read_user(fsbase.wrapping_add(u64::from(info.tsd_offset))).ok_or(())?;
    if tstate == 0 {
        return Ok(0);
    }
    let mut frame = read_user(tstate.wrapping_add(u64::from(info.tstate_frame))).ok_or(())?;
    if info.flags & PY_PROC_CFRAME_HOP != 0 && frame != 0 {
        frame = read_user(frame.wrapping_add(u64::from(info.cframe_frame))).ok_or(())?;
    }
    Ok(frame)
}

/// The Python stack of the current thread, stored in generation
/// `generation`'s map: see [`PyOutcome`].
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, the 3 KiB stack would be copied onto the 512-byte BPF stack"
)]
pub fn python_stack(tgid: u32, generation: u32) -> PyOutcome {
    let mut out = PyOutcome::default();
    let Some(info) = PY_PROCS.get_ptr(tgid) else {
        return out;
    };
    out.walked = true;
    let Some(w) = PY_WALK.get_ptr_mut(0) else {
        return out;
    };
    // SAFETY: this CPU's own scratch slot; the programs that walk (perf
    // event, sched_switch, uprobe, tracepoint) do not nest on one CPU
    // (sched_switch runs with interrupts off, the cpu-clock sample in a
    // hard interrupt).
    let w = unsafe { &mut *w };
    // SAFETY: a successful lookup's value, valid for this program run (the
    // agent may rewrite it concurrently: at worst a wrong stack, which the
    // agent's checksums catch).
    w.info = unsafe { *info };
    let frame = match first_frame(&w.info) {
        Ok(0) => return out,
        Ok(f) => f,
        Err(()) => {
            out.fault = true;
            out.id = -EFAULT;
            return out;
        }
    };
    w.frame = frame;
    w.fault = false;
    w.stack.len = 0;
    w.hash = 0xcbf2_9ce4_8422_2325;
    w.check = 0;
    // SAFETY: the callback has the signature bpf_loop expects and only
    // touches the per-CPU scratch slot.
    unsafe {
        bpf_loop(
            PY_FRAMES_MAX as u32,
            step_cb as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    out.fault = w.fault;
    out.truncated = w.frame != 0;
    if w.stack.len == 0 {
        return out;
    }
    let id = (w.hash as u32 ^ (w.hash >> 32) as u32) & (PY_STACK_ID_BASE as u32 - 1)
        | PY_STACK_ID_BASE as u32;
    w.stack.check = w.check as u32 ^ (w.check >> 32) as u32;
    let stacks = if generation == 0 {
        &PY_STACKS_0
    } else {
        &PY_STACKS_1
    };
    out.id = match stacks.insert(id, &w.stack, BPF_NOEXIST as u64) {
        Ok(()) => id as i32,
        Err(e) if -e == EEXIST => {
            let same = stacks.get_ptr(id).is_some_and(|old| {
                // SAFETY: a successful lookup's value, valid for this run.
                let old = unsafe { &*old };
                old.check == w.stack.check && old.len == w.stack.len
            });
            if same {
                id as i32
            } else {
                out.lost = true;
                -EEXIST
            }
        }
        Err(e) => {
            out.lost = true;
            e
        }
    };
    out
}

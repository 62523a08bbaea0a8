//! DWARF unwinder for user stacks of binaries without frame pointers.
//!
//! Reached from the profiler's `perf_event` program for processes the agent
//! loaded unwind tables for (`UNWIND_PROCS`). One `bpf_loop` iteration
//! unwinds one frame: find the PC's mapping (binary search over the
//! process's mappings), its row (binary search over the file's rows),
//! compute the CFA, read the return address and the saved rbp. Where a PC
//! has no table the step follows frame pointers instead. The walk state
//! lives in a per-CPU scratch slot (too big for the 512-byte stack), and
//! the finished stack goes to a hash map keyed by its hash, one map per
//! generation like the `bpf_get_stackid` maps.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::PerfEventContext,
};
use sonde_common::{
    profile::PROFILE_MAX_STACKS,
    unwind::{
        UNWIND_COUNTERS, UNWIND_MAP_SEARCH_STEPS, UNWIND_MAX_DEPTH, UNWIND_MAX_FILES,
        UNWIND_MAX_MAPPINGS, UNWIND_MAX_PROCS, UNWIND_NO_TABLE, UNWIND_ROW_SEARCH_STEPS,
        UNWIND_STACK_ID_BASE, UnwindCounter, UnwindFile, UnwindMapping, UnwindProc, UnwindRow,
        UnwoundStack, cfa, rbp,
    },
};

use crate::{
    arch::{REG_BP, REG_CS, REG_IP, REG_SP, UC_RBP, UC_RIP, UC_RSP, user_mode},
    counters::bump,
};

/// Every loaded file's rows; sized from the memory budget by the agent at
/// load time, and written by the agent through `mmap`.
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map]
static UNWIND_FILES: Array<UnwindFile> = Array::with_max_entries(UNWIND_MAX_FILES, 0);

#[map]
static UNWIND_PROCS: HashMap<u32, UnwindProc> = HashMap::with_max_entries(UNWIND_MAX_PROCS, 0);

#[map]
static UNWIND_STACKS_0: HashMap<u32, UnwoundStack> =
    HashMap::with_max_entries(PROFILE_MAX_STACKS, 0);
#[map]
static UNWIND_STACKS_1: HashMap<u32, UnwoundStack> =
    HashMap::with_max_entries(PROFILE_MAX_STACKS, 0);

#[map]
static UNWIND_COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(UNWIND_COUNTERS, 0);

/// The walk in progress on this CPU.
#[repr(C)]
pub struct Walk {
    stack: UnwoundStack,
    pc: u64,
    sp: u64,
    bp: u64,
    hash: u64,
    check: u64,
    tgid: u32,
    /// 1 while `pc` is an interrupted instruction (first frame, or the
    /// frame a signal interrupted), 0 when it is a return address (then
    /// `pc - 1` is looked up: the call may be a function's last bytes).
    exact: u32,
    search: Search,
}

/// The bounds of a binary search, kept in map memory between steps (see
/// [`Search::forget`]).
#[repr(C)]
struct Search {
    lo: u32,
    hi: u32,
}

impl Search {
    /// Stores the bounds and reads them back through volatile loads from
    /// map memory, which the verifier does not track: it then knows only
    /// that they are u32s. Kept in registers, each step's comparison left
    /// the two branches with different exact bounds, no state could prune
    /// another, and the 27-step row search multiplied the paths past the
    /// verifier's 1M-instruction limit (seen on a 6.18 stable kernel; an
    /// earlier build of the same version happened to prune them).
    #[inline(always)]
    fn forget(&mut self, lo: u32, hi: u32) -> (u32, u32) {
        // SAFETY: `self` is a valid, aligned field of this CPU's scratch
        // slot; volatile only keeps the compiler from eliding the round trip.
        unsafe {
            core::ptr::write_volatile(&mut self.lo, lo);
            core::ptr::write_volatile(&mut self.hi, hi);
            (
                core::ptr::read_volatile(&self.lo),
                core::ptr::read_volatile(&self.hi),
            )
        }
    }
}

#[map]
static UNWIND_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

const EEXIST: i32 = 17;

const CONTINUE: i64 = 0;
const STOP: i64 = 1;

#[inline(always)]
fn count(c: UnwindCounter) {
    bump(&UNWIND_COUNTERS_MAP, c as u32);
}

#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copies through the kernel's fault-safe
    // user access; a bad address returns an error, never faults.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The process's mapping holding `pc`.
#[inline(always)]
fn find_mapping<'a>(p: &'a UnwindProc, pc: u64, s: &mut Search) -> Option<&'a UnwindMapping> {
    let mut lo = 0u32;
    let mut hi = p.len.min(UNWIND_MAX_MAPPINGS as u32);
    for _ in 0..UNWIND_MAP_SEARCH_STEPS {
        (lo, hi) = s.forget(lo, hi);
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let m = p.maps.get(mid as usize)?;
        if m.start <= pc {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    // Through map memory too: LLVM otherwise re-derives the index from
    // `lo` after the bounds check, on a register the check did not bound.
    let (i, _) = s.forget(lo.checked_sub(1)?, 0);
    let m = p.maps.get(i as usize)?;
    (pc < m.end).then_some(m)
}

/// The last row of `f` starting at or before `pc`.
#[inline(always)]
fn find_row(f: &UnwindFile, pc: u32, s: &mut Search) -> Option<&'static UnwindRow> {
    let mut lo = 0u32;
    let mut hi = f.rows;
    for _ in 0..UNWIND_ROW_SEARCH_STEPS {
        (lo, hi) = s.forget(lo, hi);
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let r = UNWIND_ROWS.get(f.first.wrapping_add(mid))?;
        if r.pc <= pc {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    UNWIND_ROWS.get(f.first.wrapping_add(lo.checked_sub(1)?))
}

/// Appends the new `pc` as a frame; STOP at the end of the stack or when
/// full.
#[inline(always)]
fn push(w: &mut Walk) -> i64 {
    if w.pc == 0 {
        return STOP;
    }
    let n = w.stack.len as usize;
    let Some(slot) = w.stack.frames.get_mut(n) else {
        count(UnwindCounter::MaxDepth);
        return STOP;
    };
    *slot = w.pc;
    w.stack.len += 1;
    w.hash = (w.hash ^ w.pc).wrapping_mul(0x100_0000_01b3);
    w.check = (w.check.rotate_left(5) ^ w.pc).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    CONTINUE
}

/// One frame by frame pointers: [rbp] = caller's rbp, [rbp+8] = return.
#[inline(always)]
fn fp_step(w: &mut Walk) -> i64 {
    if w.bp == 0 || w.bp < w.sp {
        return STOP;
    }
    let (Some(ra), Some(bp)) = (read_user(w.bp + 8), read_user(w.bp)) else {
        count(UnwindCounter::ReadFault);
        return STOP;
    };
    w.sp = w.bp + 16;
    w.bp = bp;
    w.pc = ra;
    w.exact = 0;
    push(w)
}

/// Out of a signal handler: the interrupted registers are in the
/// `ucontext` at rsp.
#[inline(always)]
fn signal_step(w: &mut Walk) -> i64 {
    let (Some(ip), Some(sp), Some(bp)) = (
        read_user(w.sp + UC_RIP),
        read_user(w.sp + UC_RSP),
        read_user(w.sp + UC_RBP),
    ) else {
        count(UnwindCounter::ReadFault);
        return STOP;
    };
    w.pc = ip;
    w.sp = sp;
    w.bp = bp;
    w.exact = 1;
    push(w)
}

/// The row for the current pc, counting why there is none.
#[inline(always)]
fn row_for(w: &mut Walk) -> Option<&'static UnwindRow> {
    let p = UNWIND_PROCS.get_ptr(w.tgid)?;
    // SAFETY: a successful lookup's value stays valid for this program run
    // (the agent may rewrite it concurrently: at worst a wrong frame).
    let p = unsafe { &*p };
    let pc = if w.exact != 0 { w.pc } else { w.pc - 1 };
    let Some(m) = find_mapping(p, pc, &mut w.search) else {
        count(UnwindCounter::NoMapping);
        return None;
    };
    let f = match UNWIND_FILES.get(m.file) {
        Some(f) if m.file != UNWIND_NO_TABLE && f.rows > 0 => f,
        _ => {
            count(UnwindCounter::NoTable);
            return None;
        }
    };
    let rel = pc.wrapping_sub(m.bias);
    let r = if rel > u32::MAX as u64 {
        None
    } else {
        find_row(f, rel as u32, &mut w.search)
    };
    match r {
        Some(r) if r.cfa_kind != cfa::NONE => Some(r),
        _ => {
            count(UnwindCounter::NoRow);
            None
        }
    }
}

#[inline(always)]
fn step(w: &mut Walk) -> i64 {
    let Some(r) = row_for(w) else {
        return fp_step(w);
    };
    let base = match r.cfa_kind {
        cfa::RSP => w.sp.wrapping_add(r.cfa_offset as i64 as u64),
        cfa::RBP => w.bp.wrapping_add(r.cfa_offset as i64 as u64),
        cfa::PLT => {
            let extra = if (w.pc & 15) as i32 >= r.rbp_offset {
                8
            } else {
                0
            };
            w.sp.wrapping_add(r.cfa_offset as i64 as u64) + extra
        }
        cfa::SIGNAL => return signal_step(w),
        cfa::END => return STOP,
        _ => {
            count(UnwindCounter::UnsupportedRule);
            return STOP;
        }
    };
    if base <= w.sp {
        count(UnwindCounter::BadFrame);
        return STOP;
    }
    let Some(ra) = read_user(base - 8) else {
        count(UnwindCounter::ReadFault);
        return STOP;
    };
    if r.rbp_kind == rbp::AT_CFA {
        let Some(bp) = read_user(base.wrapping_add(r.rbp_offset as i64 as u64)) else {
            count(UnwindCounter::ReadFault);
            return STOP;
        };
        w.bp = bp;
    }
    w.sp = base;
    w.pc = ra;
    w.exact = 0;
    push(w)
}

/// `bpf_loop` callback: one frame per call.
#[inline(never)]
extern "C" fn step_cb(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = UNWIND_WALK.get_ptr_mut(0) else {
        return STOP;
    };
    // SAFETY: this CPU's own scratch slot; the profile object's programs
    // do not nest on one CPU (sched_switch runs with interrupts off, the
    // cpu-clock sample in a hard interrupt).
    step(unsafe { &mut *w })
}

/// User registers (ip, sp, bp) the walk starts from.
pub type UserRegs = (u64, u64, u64);

/// The registers a `perf_event` sample interrupted, read from the context
/// once, up front: whether it was user mode (CPL 3 in the saved cs), and
/// ip, sp, bp. Reading the context in one place keeps LLVM from keeping a
/// pointer into it (ctx + offset) in a register for a later load, which
/// the verifier rejects ("dereference of modified ctx ptr").
#[inline(always)]
pub fn perf_regs(ctx: &PerfEventContext) -> (bool, UserRegs) {
    let regs = ctx.as_ptr() as *const u8;
    // SAFETY: the context of a perf_event program starts with the
    // interrupted `pt_regs`; the verifier checks these fixed-offset reads.
    unsafe {
        (
            user_mode(*(regs.add(REG_CS) as *const u64)),
            (
                *(regs.add(REG_IP) as *const u64),
                *(regs.add(REG_SP) as *const u64),
                *(regs.add(REG_BP) as *const u64),
            ),
        )
    }
}

/// The current task's user registers as saved at kernel entry: what a
/// program running in kernel context (a tracepoint) starts the walk from.
#[inline(always)]
pub fn task_user_regs() -> Option<UserRegs> {
    // SAFETY: both helpers accept the current task; bpf_task_pt_regs
    // returns its user-mode registers saved at kernel entry.
    let saved = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as usize as *const u8;
    if saved.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies with fault handling.
    unsafe {
        Some((
            bpf_probe_read_kernel(saved.add(REG_IP) as *const u64).ok()?,
            bpf_probe_read_kernel(saved.add(REG_SP) as *const u64).ok()?,
            bpf_probe_read_kernel(saved.add(REG_BP) as *const u64).ok()?,
        ))
    }
}

/// Walks the user stack of `tgid` when the agent loaded its tables:
/// `None` when it did not (the caller uses `bpf_get_stackid`), else the
/// stack id (>= UNWIND_STACK_ID_BASE) or `-errno` when it was not stored.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, the 1 KiB stack would be copied onto the 512-byte BPF stack"
)]
pub fn user_stack(
    regs: impl FnOnce() -> Option<UserRegs>,
    tgid: u32,
    generation: u32,
) -> Option<i32> {
    UNWIND_PROCS.get_ptr(tgid)?;
    let Some((ip, sp, bp)) = regs() else {
        count(UnwindCounter::NoRegisters);
        return Some(-14);
    };
    let w = UNWIND_WALK.get_ptr_mut(0)?;
    // SAFETY: this CPU's own scratch slot; the profile object's programs
    // do not nest on one CPU (sched_switch runs with interrupts off, the
    // cpu-clock sample in a hard interrupt).
    let w = unsafe { &mut *w };
    w.stack.len = 0;
    w.pc = ip;
    w.sp = sp;
    w.bp = bp;
    w.hash = 0xcbf2_9ce4_8422_2325;
    w.check = 0;
    w.tgid = tgid;
    w.exact = 1;
    push(w);
    count(UnwindCounter::Walked);
    // SAFETY: the callback has the signature bpf_loop expects and only
    // touches the per-CPU scratch slot.
    unsafe {
        bpf_loop(
            UNWIND_MAX_DEPTH as u32,
            step_cb as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let id = (w.hash as u32 ^ (w.hash >> 32) as u32) & (UNWIND_STACK_ID_BASE as u32 - 1)
        | UNWIND_STACK_ID_BASE as u32;
    w.stack.check = w.check as u32 ^ (w.check >> 32) as u32;
    let stacks = if generation == 0 {
        &UNWIND_STACKS_0
    } else {
        &UNWIND_STACKS_1
    };
    match stacks.insert(id, &w.stack, BPF_NOEXIST as u64) {
        Ok(()) => Some(id as i32),
        Err(e) if -e == EEXIST => {
            let same = stacks.get_ptr(id).is_some_and(|old| {
                // SAFETY: a successful lookup's value, valid for this run.
                let old = unsafe { &*old };
                old.check == w.stack.check && old.len == w.stack.len
            });
            if same {
                Some(id as i32)
            } else {
                count(UnwindCounter::StackCollision);
                Some(-EEXIST)
            }
        }
        Err(e) => {
            count(UnwindCounter::StackMapFull);
            Some(e)
        }
    }
}

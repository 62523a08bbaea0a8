//! Tier-2 allocation tracking (`sonde alloc`): malloc-family uprobes on one
//! process. Entry probes remember the request per thread; return probes
//! (where the caller's frame is the top of the user stack) record the
//! allocation in a bounded live map; `free` removes it.
//!
//! For CPython processes the agent marks in `PY_PROCS` (python.rs, in this
//! object too), the return probe also walks the Python stack, and the agent
//! probes the interpreter's allocator entry points (`PyObject_Malloc`, ...)
//! with these same programs: a call nested in a tracked one (pymalloc
//! falling through to `malloc` for a large object) is ignored by `depth`,
//! so each allocation counts once, at the outermost entry point.
//!
//! Probe points are chosen by the agent so the kernel can emulate the
//! probed instruction (see agent/src/collectors/memory/probe_point.rs);
//! these programs only need the argument registers to be intact there.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, StackTrace},
    programs::{ProbeContext, RetProbeContext, tracing::StackIdContext},
};
use sonde_common::memory::{
    ALLOC_ACTIVE_SLOT, ALLOC_CONTROL_ENTRIES, ALLOC_COUNTERS, ALLOC_MAX_LIVE, ALLOC_MAX_PENDING,
    ALLOC_MAX_STACKS, ALLOC_SAMPLE_BYTES_SLOT, AllocCounter, AllocFn, AllocLive, AllocPending,
    AllocStackKey, AllocTotals,
};

use crate::counters::bump;

#[map]
static ALLOC_CONTROL: Array<u64> = Array::with_max_entries(ALLOC_CONTROL_ENTRIES, 0);

/// Calls between entry and return, by thread (pid_tgid). Entries stay,
/// idle, between calls (an in-place update is cheaper than an insert and a
/// delete per call); LRU so exited threads' entries make room.
#[map]
static ALLOC_PENDING: LruHashMap<u64, AllocPending> =
    LruHashMap::with_max_entries(ALLOC_MAX_PENDING, 0);

/// Live allocations by address.
#[map]
static ALLOC_LIVE: HashMap<u64, AllocLive> = HashMap::with_max_entries(ALLOC_MAX_LIVE, 0);

/// Per-stack totals.
#[map]
static ALLOC_TOTALS: PerCpuHashMap<AllocStackKey, AllocTotals> =
    PerCpuHashMap::with_max_entries(ALLOC_MAX_STACKS, 0);

#[map]
static ALLOC_STACKS: StackTrace = StackTrace::with_max_entries(ALLOC_MAX_STACKS, 0);

/// Bytes left before the next sampled allocation, per CPU (byte sampling).
#[map]
static ALLOC_COUNTDOWN: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static ALLOC_COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(ALLOC_COUNTERS, 0);

#[inline(always)]
fn count(c: AllocCounter) {
    bump(&ALLOC_COUNTERS_MAP, c as u32);
}

/// Entry of an allocation function: remember the request for the return.
#[inline(always)]
pub fn enter(func: AllocFn, size: u64, arg: u64) -> u32 {
    let tid = bpf_get_current_pid_tgid();
    if let Some(p) = ALLOC_PENDING.get_ptr_mut(tid) {
        // SAFETY: `p` comes from a successful lookup of this thread's own
        // entry, which only this thread (running this program) updates.
        let p = unsafe { &mut *p };
        if p.depth == 0 {
            *p = AllocPending {
                size,
                arg,
                func: func as u32,
                depth: 1,
            };
        } else {
            p.depth += 1;
        }
        return 0;
    }
    let p = AllocPending {
        size,
        arg,
        func: func as u32,
        depth: 1,
    };
    if ALLOC_PENDING.insert(tid, p, 0).is_err() {
        count(AllocCounter::PendingFull);
    }
    0
}

// The `*_enter` functions take the index of the first argument they read:
// 0 for malloc and CPython's `PyObject_Malloc`, 1 for CPython's
// allocator implementations (`_PyObject_Malloc(void *ctx, size_t size)`).
// Inlined, so that the index is a constant: the verifier rejects a context
// access at a computed offset.

#[inline(always)]
pub fn malloc_enter(ctx: &ProbeContext, a: usize) -> u32 {
    enter(AllocFn::Malloc, ctx.arg::<u64>(a).unwrap_or(0), 0)
}

#[inline(always)]
pub fn calloc_enter(ctx: &ProbeContext, a: usize) -> u32 {
    let n = ctx.arg::<u64>(a).unwrap_or(0);
    let size = ctx.arg::<u64>(a + 1).unwrap_or(0);
    // Overflowing calloc fails; `saturating_mul` would need 128-bit
    // arithmetic the BPF backend lacks.
    let total = if n <= 1 || size <= 1 || (n >> 32 == 0 && size >> 32 == 0) {
        n * size
    } else {
        // Beyond 4 GiB per factor: calloc fails or the size is huge anyway.
        u64::MAX
    };
    enter(AllocFn::Calloc, total, 0)
}

#[inline(always)]
pub fn realloc_enter(ctx: &ProbeContext, a: usize) -> u32 {
    let old = ctx.arg::<u64>(a).unwrap_or(0);
    enter(AllocFn::Realloc, ctx.arg::<u64>(a + 1).unwrap_or(0), old)
}

pub fn memalign_enter(ctx: &ProbeContext) -> u32 {
    enter(AllocFn::Memalign, ctx.arg::<u64>(1).unwrap_or(0), 0)
}

pub fn posix_memalign_enter(ctx: &ProbeContext) -> u32 {
    let memptr = ctx.arg::<u64>(0).unwrap_or(0);
    enter(
        AllocFn::PosixMemalign,
        ctx.arg::<u64>(2).unwrap_or(0),
        memptr,
    )
}

/// Return of any allocation function.
pub fn alloc_return(ctx: &RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid();
    let Some(p) = ALLOC_PENDING.get_ptr_mut(tid) else {
        count(AllocCounter::ReturnWithoutEntry);
        return 0;
    };
    // SAFETY: this thread's own entry from a successful lookup; only this
    // thread updates it.
    let pending = unsafe { &mut *p };
    if pending.depth == 0 {
        count(AllocCounter::ReturnWithoutEntry);
        return 0;
    }
    pending.depth -= 1;
    if pending.depth > 0 {
        // The return of a call nested in the one we track.
        return 0;
    }
    let pending = *pending;
    let ret: u64 = ctx.ret();
    let func = pending.func;
    let ptr = if func == AllocFn::PosixMemalign as u32 {
        if ret != 0 {
            count(AllocCounter::Failed);
            return 0;
        }
        // SAFETY: reads 8 bytes of the traced process's memory through the
        // helper, which fails cleanly on a bad address.
        match unsafe { bpf_probe_read_user(pending.arg as *const u64) } {
            Ok(v) => v,
            Err(_) => return 0,
        }
    } else {
        ret
    };
    if func == AllocFn::Realloc as u32 {
        // realloc(p, 0) frees p (and may return NULL); a failed realloc
        // (NULL for a non-zero size) leaves p alone.
        if pending.arg != 0 && (ptr != 0 || pending.size == 0) {
            release(pending.arg);
        }
    }
    // Frees (above) always count; new allocations only while the session
    // records (see ALLOC_ACTIVE_SLOT).
    if ALLOC_CONTROL.get(ALLOC_ACTIVE_SLOT).copied().unwrap_or(0) == 0 {
        count(AllocCounter::Inactive);
        return 0;
    }
    if ptr == 0 {
        if pending.size != 0 {
            count(AllocCounter::Failed);
        }
        return 0;
    }
    record(ctx, ptr, pending.size);
    0
}

/// Bytes this allocation stands for, or None when byte sampling skips it.
#[inline(always)]
fn weight(size: u64) -> Option<u64> {
    let mean = ALLOC_CONTROL
        .get(ALLOC_SAMPLE_BYTES_SLOT)
        .copied()
        .unwrap_or(0);
    if mean == 0 {
        return Some(size);
    }
    let slot = ALLOC_COUNTDOWN.get_ptr_mut(0)?;
    // SAFETY: this CPU's own slot of a per-CPU array, from a successful
    // lookup; programs do not preempt each other on one CPU.
    let left = unsafe { &mut *slot };
    *left -= size as i64;
    if *left > 0 {
        count(AllocCounter::SampledOut);
        return None;
    }
    // Next gap: uniform in [0, 2*mean), mean `mean` bytes. An allocation
    // of `size` is then sampled with probability ~min(1, size/mean), so it
    // stands for max(size, mean) bytes.
    // SAFETY: a helper call with no arguments and no memory access.
    let r = unsafe { bpf_get_prandom_u32() } as u64;
    *left = ((r * 2 * mean) >> 32) as i64;
    Some(if size > mean { size } else { mean })
}

#[inline(always)]
fn record(ctx: &RetProbeContext, ptr: u64, size: u64) {
    count(AllocCounter::Allocs);
    let Some(w) = weight(size) else { return };
    let stack_id = match ctx.get_stackid(&ALLOC_STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => id as i32,
        Err(e) => {
            count(AllocCounter::StackMissing);
            e
        }
    };
    let py = crate::python::python_stack((bpf_get_current_pid_tgid() >> 32) as u32, 0);
    for (hit, c) in [
        (py.walked, AllocCounter::PythonWalks),
        (py.fault, AllocCounter::PythonReadFault),
        (py.truncated, AllocCounter::PythonTruncated),
        (py.lost, AllocCounter::PythonStackLost),
    ] {
        if hit {
            count(c);
        }
    }
    let key = AllocStackKey {
        stack_id,
        python_stack_id: py.id,
    };
    // SAFETY: a helper call with no arguments and no memory access.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let live = AllocLive {
        size,
        weight: w,
        ts_ns,
        stack_id,
        python_stack_id: py.id,
    };
    // An address reused without our seeing its free (freed through a path
    // we do not probe) is simply overwritten.
    if ALLOC_LIVE.insert(ptr, live, 0).is_err() {
        count(AllocCounter::LiveFull);
    }
    add_totals(key, w, 1, 0, 0);
}

#[inline(always)]
fn add_totals(key: AllocStackKey, ab: u64, ac: u64, fb: u64, fc: u64) {
    if let Some(t) = ALLOC_TOTALS.get_ptr_mut(key) {
        // SAFETY: this CPU's own slot of a found per-CPU entry.
        let t = unsafe { &mut *t };
        t.alloc_bytes += ab;
        t.alloc_count += ac;
        t.free_bytes += fb;
        t.free_count += fc;
        return;
    }
    let t = AllocTotals {
        alloc_bytes: ab,
        alloc_count: ac,
        free_bytes: fb,
        free_count: fc,
    };
    if ALLOC_TOTALS.insert(key, t, 0).is_err() {
        count(AllocCounter::TotalsFull);
    }
}

/// A tracked address was freed (or reallocated away).
#[inline(always)]
fn release(ptr: u64) {
    count(AllocCounter::Frees);
    // SAFETY: the value is copied out at once, before the removal below.
    let Some(live) = (unsafe { ALLOC_LIVE.get(ptr) }).copied() else {
        count(AllocCounter::FreeUntracked);
        return;
    };
    let _ = ALLOC_LIVE.remove(ptr);
    let key = AllocStackKey {
        stack_id: live.stack_id,
        python_stack_id: live.python_stack_id,
    };
    add_totals(key, 0, 0, live.weight, 1);
}

#[inline(always)]
pub fn free_enter(ctx: &ProbeContext, a: usize) -> u32 {
    let ptr = ctx.arg::<u64>(a).unwrap_or(0);
    if ptr != 0 {
        release(ptr);
    }
    0
}

//! Tier-1 memory growth (the `memory` collector): bytes mapped and unmapped
//! through `mmap`, `munmap`, `mremap` and `brk`, and user page faults,
//! counted per (process, user stack, kind) in the kernel; one page fault in
//! N (per CPU) is sampled with its stack through a perf event.
//!
//! The syscalls are seen from one tp_btf `sys_exit` program, which reads the
//! call's arguments from the saved registers and leaves after one compare
//! for every other syscall. The per-syscall tracepoints
//! (`syscalls:sys_enter_mmap`, ...) look cheaper, since only their syscall
//! runs them, but enabling any of them hooks the kernel's perf syscall
//! handler into every syscall of every task: measured +113 ns per
//! `getppid` here, against a few tens of ns for one more program on the
//! generic hook (docs/memory.md). They remain the fallback for kernels
//! without tp_btf.
//!
//! Two generations of counts and stacks, flipped by the agent, as in the
//! CPU profiler (see profile.rs).

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, StackTrace},
    programs::{
        BtfTracePointContext, PerfEventContext, TracePointContext, tracing::StackIdContext,
    },
};
use sonde_common::{
    COMM_LEN,
    memory::{
        MEM_CONTROL_ENTRIES, MEM_COUNTERS, MEM_FAULT_SAMPLE_SLOT, MEM_GEN_SLOT, MEM_MAX_BRK,
        MEM_MAX_KEYS, MEM_MAX_STACKS, MEM_NO_STACK, MEM_PAGE_SIZE_SLOT, MemCounter, MemKey,
        MemKind, MemValue,
    },
};

use crate::{
    counters::bump,
    regs::{REG_DX, REG_ORIG_AX, REG_SI, reg},
};

#[map]
static MEM_CONTROL: Array<u64> = Array::with_max_entries(MEM_CONTROL_ENTRIES, 0);

#[map]
static MEM_COUNTS_0: PerCpuHashMap<MemKey, MemValue> =
    PerCpuHashMap::with_max_entries(MEM_MAX_KEYS, 0);
#[map]
static MEM_COUNTS_1: PerCpuHashMap<MemKey, MemValue> =
    PerCpuHashMap::with_max_entries(MEM_MAX_KEYS, 0);

#[map]
static MEM_STACKS_0: StackTrace = StackTrace::with_max_entries(MEM_MAX_STACKS, 0);
#[map]
static MEM_STACKS_1: StackTrace = StackTrace::with_max_entries(MEM_MAX_STACKS, 0);

/// Last program break seen per process, to turn `brk` results into growth.
#[map]
static MEM_BRK: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MEM_MAX_BRK, 0);

#[map]
static MEM_COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(MEM_COUNTERS, 0);

const EEXIST: i32 = 17;

#[inline(always)]
fn control(slot: u32) -> u64 {
    MEM_CONTROL.get(slot).copied().unwrap_or(0)
}

#[inline(always)]
fn add(counts: &PerCpuHashMap<MemKey, MemValue>, key: &MemKey, bytes: u64, n: u64) {
    if let Some(p) = counts.get_ptr_mut(key) {
        // SAFETY: this CPU's own value slot of a found per-CPU entry; no
        // other CPU writes it and it stays valid for the program's run.
        unsafe {
            (*p).bytes += bytes;
            (*p).count += n;
        }
        return;
    }
    let v = MemValue { bytes, count: n };
    match counts.insert(key, v, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if -e == EEXIST => {
            if let Some(p) = counts.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe {
                    (*p).bytes += bytes;
                    (*p).count += n;
                }
            }
        }
        Err(_) => bump(&MEM_COUNTERS_MAP, MemCounter::CountsFull as u32),
    }
}

/// Counts `bytes` of `kind` for the current process, with its user stack
/// unless `with_stack` is false.
#[inline(always)]
fn account<C: StackIdContext>(ctx: &C, kind: MemKind, bytes: u64, n: u64, with_stack: bool) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 {
        return;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let generation = control(MEM_GEN_SLOT);
    let (counts, stacks) = if generation == 0 {
        (&MEM_COUNTS_0, &MEM_STACKS_0)
    } else {
        (&MEM_COUNTS_1, &MEM_STACKS_1)
    };
    let user_stack_id = if with_stack {
        match ctx.get_stackid(stacks, BPF_F_USER_STACK as u64) {
            Ok(id) => id as i32,
            Err(e) => {
                bump(&MEM_COUNTERS_MAP, MemCounter::StackMissing as u32);
                e
            }
        }
    } else {
        MEM_NO_STACK
    };
    let key = MemKey {
        tgid,
        user_stack_id,
        kind: kind as u32,
        _pad: 0,
        comm,
    };
    add(counts, &key, bytes, n);
}

/// Reads a tracepoint field, 0 when unreadable.
#[inline(always)]
fn field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: `read_at` copies 8 bytes through bpf_probe_read, which fails
    // cleanly (and we return 0) if the offset is outside the record.
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

/// `syscalls:sys_enter_mmap`: `len` at offset 24.
pub fn mmap(ctx: &TracePointContext) -> u32 {
    bump(&MEM_COUNTERS_MAP, MemCounter::Events as u32);
    let len = field(ctx, 24);
    account(ctx, MemKind::Mmap, len, 1, true);
    0
}

/// `syscalls:sys_enter_munmap`: `len` at offset 24.
pub fn munmap(ctx: &TracePointContext) -> u32 {
    bump(&MEM_COUNTERS_MAP, MemCounter::Events as u32);
    let len = field(ctx, 24);
    account(ctx, MemKind::Munmap, len, 1, true);
    0
}

/// `syscalls:sys_enter_mremap`: `old_len` at 24, `new_len` at 32.
pub fn mremap(ctx: &TracePointContext) -> u32 {
    bump(&MEM_COUNTERS_MAP, MemCounter::Events as u32);
    on_mremap(ctx, field(ctx, 24), field(ctx, 32));
    0
}

#[inline(always)]
fn on_mremap<C: StackIdContext>(ctx: &C, old: u64, new: u64) {
    if new > old {
        account(ctx, MemKind::MremapGrow, new - old, 1, true);
    } else if old > new {
        account(ctx, MemKind::MremapShrink, old - new, 1, true);
    }
}

/// `syscalls:sys_exit_brk`: the new break (`ret`, offset 16).
pub fn brk(ctx: &TracePointContext) -> u32 {
    bump(&MEM_COUNTERS_MAP, MemCounter::Events as u32);
    on_brk(ctx, field(ctx, 16));
    0
}

/// Growth is the difference from the break last seen for the process; the
/// first call seen only sets the baseline.
#[inline(always)]
fn on_brk<C: StackIdContext>(ctx: &C, now: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Known processes update their entry in place: an LRU map's update
    // allocates a node and frees the old one, which measured dearer.
    let before = match MEM_BRK.get_ptr_mut(tgid) {
        Some(p) => {
            // SAFETY: a found entry's value, valid for this program's run;
            // only this process's brk calls write it (a racing brk of
            // another thread of it leaves one of the two values, as an
            // update would).
            unsafe {
                let b = *p;
                *p = now;
                Some(b)
            }
        }
        None => {
            if MEM_BRK.insert(tgid, now, 0).is_err() {
                bump(&MEM_COUNTERS_MAP, MemCounter::BrkFull as u32);
            }
            None
        }
    };
    if let Some(before) = before {
        if now > before {
            account(ctx, MemKind::BrkGrow, now - before, 1, true);
        } else if before > now {
            account(ctx, MemKind::BrkShrink, before - now, 1, true);
        }
    }
}

/// x86_64 syscall numbers of the calls this collector counts.
const NR_MMAP: u64 = 9;
const NR_MUNMAP: u64 = 11;
const NR_BRK: u64 = 12;
const NR_MREMAP: u64 = 25;

/// tp_btf `sys_exit(struct pt_regs *regs, long ret)`: every syscall of
/// every task comes here; all but the four memory calls leave after the
/// compare. Calls that failed change no mapping and are not counted.
#[inline(always)]
pub fn sys_exit(ctx: &BtfTracePointContext) -> u32 {
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let nr = reg(regs, REG_ORIG_AX);
    if nr != NR_MMAP && nr != NR_MUNMAP && nr != NR_BRK && nr != NR_MREMAP {
        return 0;
    }
    bump(&MEM_COUNTERS_MAP, MemCounter::Events as u32);
    match nr {
        // brk returns the (possibly unchanged) break, never an errno.
        NR_BRK => on_brk(ctx, ret as u64),
        _ if ret < 0 => {}
        // mmap(addr, len, ...), munmap(addr, len)
        NR_MMAP => account(ctx, MemKind::Mmap, reg(regs, REG_SI), 1, true),
        NR_MUNMAP => account(ctx, MemKind::Munmap, reg(regs, REG_SI), 1, true),
        // mremap(old_addr, old_len, new_len, ...)
        _ => on_mremap(ctx, reg(regs, REG_SI), reg(regs, REG_DX)),
    }
    0
}

/// One page fault in N (per CPU): a `perf_event` program on the software
/// page-fault event with sample period N. The kernel counts faults in the
/// perf event itself (cheap, it does so anyway) and runs this program only
/// on every N-th; each sample stands for N faults. A tracepoint on every
/// fault measured far costlier here (docs/memory.md).
pub fn fault_sample(ctx: &PerfEventContext) -> u32 {
    bump(&MEM_COUNTERS_MAP, MemCounter::Events as u32);
    let every = control(MEM_FAULT_SAMPLE_SLOT).max(1);
    let page = control(MEM_PAGE_SIZE_SLOT);
    account(ctx, MemKind::FaultSampled, page * every, every, true);
    0
}

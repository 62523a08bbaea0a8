//! Tier-1 memory growth (the `memory` collector): bytes mapped and unmapped
//! through `mmap`, `munmap`, `mremap` and `brk`, and user page faults,
//! counted per (process, user stack, kind) in the kernel.
//!
//! Preferred hooks (tp_btf, no syscall hook at all):
//! - `mmap_lock_acquire_returned` / `mmap_lock_released`: those four calls
//!   take the mmap lock for writing, and what they changed is the growth of
//!   `mm->total_vm` between taking and releasing it. Only code that takes
//!   the mmap lock runs these programs: mostly calls that change mappings
//!   (mprotect and madvise leave after the syscall-number test), and read
//!   locks (page faults that miss the per-VMA lock, /proc readers) leave
//!   after one test. The rest of the system's syscalls run no program and
//!   stay off the kernel's syscall-tracing slow path.
//! - `page_fault_user`: one fault in N (per CPU) is sampled with its stack
//!   by a countdown in the program; each sample stands for N faults.
//!
//! Fallbacks, for kernels without those: a tp_btf `sys_exit` program that
//! reads the four calls' arguments from the saved registers (every syscall
//! then runs it: measured ~100 ns each here), or the per-syscall
//! tracepoints (`syscalls:sys_enter_mmap`, ...), which hook the kernel's
//! perf syscall handler into every syscall of every task (+113 ns per
//! `getppid`, docs/memory.md); and a software perf event sampling faults.
//!
//! Two generations of counts and stacks, flipped by the agent, as in the
//! CPU profiler (see profile.rs). Rows with a stack of a CPython process
//! the agent marked also carry its Python stack (python.rs).

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
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
        MEM_MAX_KEYS, MEM_MAX_STACKS, MEM_NO_STACK, MEM_PAGE_SIZE_SLOT, MEM_TOTAL_VM_OFF_SLOT,
        MemCounter, MemKey, MemKind, MemValue,
    },
};

use crate::{
    arch::{REG_ARG2, REG_ARG3, REG_CS, REG_ORIG_AX, nr, reg, user_mode},
    counters::bump,
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

/// A thread inside an mmap-family call, between taking the mmap lock for
/// writing and releasing it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LockPending {
    /// pid_tgid of the thread that owns the slot (0: free).
    pub id: u64,
    /// The `struct mm_struct *` locked.
    pub mm: u64,
    /// Its `total_vm` (pages) when the lock was taken.
    pub total_vm: u64,
    /// The syscall number.
    pub nr: u64,
}

/// One slot per thread id modulo LOCK_SLOTS: an array lookup is inlined
/// where a hash lookup is a helper call. A collision (two threads with the
/// same slot inside such a call at once) loses the earlier call, counted.
#[map]
static MEM_LOCK_PENDING: Array<LockPending> = Array::with_max_entries(LOCK_SLOTS, 0);
const LOCK_SLOTS: u32 = 1 << 12;

/// Faults seen on this CPU since the last sample (the page_fault_user
/// hook's countdown).
#[map]
static MEM_FAULT_TICK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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
    // CPython processes the agent marked: their Python stack too.
    let python_stack_id = if with_stack {
        let py = crate::python::python_stack(tgid, generation as u32);
        for (hit, c) in [
            (py.walked, MemCounter::PythonWalks),
            (py.fault, MemCounter::PythonReadFault),
            (py.truncated, MemCounter::PythonTruncated),
            (py.lost, MemCounter::PythonStackLost),
        ] {
            if hit {
                bump(&MEM_COUNTERS_MAP, c as u32);
            }
        }
        py.id
    } else {
        0
    };
    let key = MemKey {
        tgid,
        user_stack_id,
        kind: kind as u32,
        python_stack_id,
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

/// Syscall numbers of the calls this collector counts, as the registers
/// hold them.
const NR_MMAP: u64 = nr::MMAP as u64;
const NR_MUNMAP: u64 = nr::MUNMAP as u64;
const NR_BRK: u64 = nr::BRK as u64;
const NR_MREMAP: u64 = nr::MREMAP as u64;

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
        NR_MMAP => account(ctx, MemKind::Mmap, reg(regs, REG_ARG2), 1, true),
        NR_MUNMAP => account(ctx, MemKind::Munmap, reg(regs, REG_ARG2), 1, true),
        // mremap(old_addr, old_len, new_len, ...)
        _ => on_mremap(ctx, reg(regs, REG_ARG2), reg(regs, REG_ARG3)),
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

#[inline(always)]
fn is_memory_call(nr: u64) -> bool {
    nr == NR_MMAP || nr == NR_MUNMAP || nr == NR_BRK || nr == NR_MREMAP
}

/// `mm->total_vm` (pages), 0 when unreadable.
#[inline(always)]
fn total_vm(mm: u64, off: u64) -> u64 {
    // SAFETY: a fault-safe kernel read of 8 bytes at the offset the agent
    // took from the kernel's BTF for `struct mm_struct`.
    unsafe { bpf_probe_read_kernel((mm + off) as *const u64) }.unwrap_or(0)
}

/// tp_btf `mmap_lock_acquire_returned(struct mm_struct *mm, bool write,
/// bool success)`: an mmap-family call from user space took the lock for
/// writing; remember the size of the address space.
#[inline(always)]
pub fn lock_acquired(ctx: &BtfTracePointContext) -> u32 {
    let mm: u64 = ctx.arg(0);
    let write: u64 = ctx.arg(1);
    let success: u64 = ctx.arg(2);
    if write & 0xff == 0 || success & 0xff == 0 {
        return 0;
    }
    // SAFETY: helpers; the task pointer is the verifier-trusted current
    // task and the returned registers are a BTF-typed `struct pt_regs *`.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    // Only a syscall from user mode (not the kernel's own users of the
    // lock: exec, exit, khugepaged).
    if !user_mode(reg(regs, REG_CS)) {
        return 0;
    }
    let nr = reg(regs, REG_ORIG_AX);
    if !is_memory_call(nr) {
        return 0;
    }
    let off = control(MEM_TOTAL_VM_OFF_SLOT);
    if off == 0 {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = MEM_LOCK_PENDING.get_ptr_mut(id as u32 & (LOCK_SLOTS - 1)) else {
        return 0;
    };
    // SAFETY: a slot of our own array map; only the thread whose id hashes
    // here writes it, so a race needs a collision, which is counted.
    unsafe {
        if (*slot).id != 0 && (*slot).id != id {
            bump(&MEM_COUNTERS_MAP, MemCounter::SlotCollision as u32);
        }
        (*slot).id = id;
        (*slot).mm = mm;
        (*slot).nr = nr;
        // Through the map: read back, the pointer is a plain number, which
        // the verifier lets us add an offset to (not so the BTF pointer).
        (*slot).total_vm = total_vm(core::ptr::read_volatile(&(*slot).mm), off);
    }
    0
}

/// tp_btf `mmap_lock_released(struct mm_struct *mm, bool write)`: the call
/// remembered at acquire is done with the address space (munmap and brk
/// downgrade to a read lock first, so this may be a read release); count
/// how much it grew or shrank.
#[inline(always)]
pub fn lock_released(ctx: &BtfTracePointContext) -> u32 {
    let mm: u64 = ctx.arg(0);
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = MEM_LOCK_PENDING.get_ptr_mut(id as u32 & (LOCK_SLOTS - 1)) else {
        return 0;
    };
    // SAFETY: as in `lock_acquired`.
    let (before, nr, mm) = unsafe {
        if (*slot).id != id || (*slot).mm != mm {
            return 0;
        }
        (*slot).id = 0;
        // Volatile: after the compare above the compiler would use the BTF
        // pointer instead (see `lock_acquired`).
        (
            (*slot).total_vm,
            (*slot).nr,
            core::ptr::read_volatile(&(*slot).mm),
        )
    };
    let now = total_vm(mm, control(MEM_TOTAL_VM_OFF_SLOT));
    if now == before {
        return 0;
    }
    bump(&MEM_COUNTERS_MAP, MemCounter::Events as u32);
    let page = control(MEM_PAGE_SIZE_SLOT);
    let grew = now > before;
    let bytes = if grew { now - before } else { before - now } * page;
    let kind = match (nr, grew) {
        (NR_BRK, true) => MemKind::BrkGrow,
        (NR_BRK, false) => MemKind::BrkShrink,
        (NR_MREMAP, true) => MemKind::MremapGrow,
        (NR_MREMAP, false) => MemKind::MremapShrink,
        (_, true) => MemKind::Mmap,
        (_, false) => MemKind::Munmap,
    };
    account(ctx, kind, bytes, 1, true);
    0
}

/// tp_btf `page_fault_user(unsigned long address, struct pt_regs *regs,
/// unsigned long error_code)`: one fault in N per CPU is sampled with its
/// stack; the rest cost an increment and a compare.
#[inline(always)]
pub fn fault_tick(ctx: &BtfTracePointContext) -> u32 {
    let Some(t) = MEM_FAULT_TICK.get_ptr_mut(0) else {
        return 0;
    };
    let every = control(MEM_FAULT_SAMPLE_SLOT).max(1);
    // SAFETY: this CPU's own slot; programs on one CPU do not interleave.
    unsafe {
        *t += 1;
        if *t < every {
            return 0;
        }
        *t = 0;
    }
    bump(&MEM_COUNTERS_MAP, MemCounter::Events as u32);
    let page = control(MEM_PAGE_SIZE_SLOT);
    account(ctx, MemKind::FaultSampled, page * every, every, true);
    0
}

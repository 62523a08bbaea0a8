//! CPU profiler hook: a `perf_event` program on `cpu-clock`, one event per
//! online CPU, that counts (process, user stack, kernel stack, Python stack)
//! in the kernel; the Python stack comes from python.rs's walk, only for
//! processes the agent marked as CPython; the route tag of the request the
//! thread serves comes from route_tag.rs (the HTTP object writes it).
//! [`stack_key`] builds that key, for this program and for offcpu.rs's
//! `sched_switch` program.
//!
//! Two generations of maps let the agent drain one while the other fills:
//! the agent flips [`PROFILE_GEN_SLOT`], and stack ids of the drained
//! generation are cleared before it is used again.

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext},
};
use sonde_common::{
    COMM_LEN,
    profile::{
        PROFILE_CONTROL_ENTRIES, PROFILE_COUNTERS, PROFILE_GEN_SLOT, PROFILE_MAX_KEYS,
        PROFILE_MAX_SEEN, PROFILE_MAX_STACKS, ProfileCounter, StackKey,
    },
};

use crate::counters::bump;

#[map]
static PROFILE_CONTROL: Array<u32> = Array::with_max_entries(PROFILE_CONTROL_ENTRIES, 0);

#[map]
static PROFILE_COUNTS_0: PerCpuHashMap<StackKey, u64> =
    PerCpuHashMap::with_max_entries(PROFILE_MAX_KEYS, 0);
#[map]
static PROFILE_COUNTS_1: PerCpuHashMap<StackKey, u64> =
    PerCpuHashMap::with_max_entries(PROFILE_MAX_KEYS, 0);

#[map]
static PROFILE_STACKS_0: StackTrace = StackTrace::with_max_entries(PROFILE_MAX_STACKS, 0);
#[map]
static PROFILE_STACKS_1: StackTrace = StackTrace::with_max_entries(PROFILE_MAX_STACKS, 0);

/// Processes already announced through `PROFILE_NEW_PIDS`, with the comm
/// they had then: a new comm means an exec (new maps), so it is announced
/// again.
#[map]
static PROFILE_SEEN: LruHashMap<u32, [u8; COMM_LEN]> =
    LruHashMap::with_max_entries(PROFILE_MAX_SEEN, 0);

/// Tgids sampled for the first time. 16 KiB holds 4096 of them.
#[map]
static PROFILE_NEW_PIDS: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);

#[map]
static PROFILE_COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROFILE_COUNTERS, 0);

const EEXIST: i32 = 17;
const ENOMEM: i32 = 12;
const EFAULT: i32 = 14;

/// Why a sample was not recorded.
pub enum ProfileError {
    CountsFull,
}

/// Turns a `bpf_get_stackid` result into a stack id, counting failures.
#[inline(always)]
fn stack_id(r: Result<i64, i32>, missing: ProfileCounter) -> i32 {
    match r {
        Ok(id) => id as i32,
        Err(e) => {
            let why = match -e {
                EEXIST => ProfileCounter::StackCollision,
                ENOMEM => ProfileCounter::StackMapFull,
                _ => missing,
            };
            bump(&PROFILE_COUNTERS_MAP, why as u32);
            e
        }
    }
}

/// The count key of the current thread's stacks: the user stack (the DWARF
/// unwinder when the agent loaded tables for this process, else the
/// kernel's frame-pointer walk), the kernel stack (skipped when `in_user`:
/// a sample that interrupted user mode has none), the Python stack, and
/// `comm`. The CPU sampler and the off-CPU `sched_switch` program both key
/// their counts with it, in the generation's stack maps; `user_regs` says
/// where the unwinder's registers come from.
#[inline(always)]
pub fn stack_key<C: StackIdContext>(
    ctx: &C,
    user_regs: impl FnOnce() -> Option<crate::unwind::UserRegs>,
    in_user: bool,
    tgid: u32,
    comm: [u8; COMM_LEN],
    generation: u32,
) -> StackKey {
    let stacks = stacks(generation);
    let user = match crate::unwind::user_stack(user_regs, tgid, generation) {
        Some(id) => id,
        None => stack_id(
            ctx.get_stackid(stacks, BPF_F_USER_STACK as u64),
            ProfileCounter::UserStackMissing,
        ),
    };
    let kernel = if in_user {
        bump(
            &PROFILE_COUNTERS_MAP,
            ProfileCounter::KernelStackAbsent as u32,
        );
        -EFAULT
    } else {
        stack_id(
            ctx.get_stackid(stacks, 0),
            ProfileCounter::KernelStackAbsent,
        )
    };
    let py = crate::python::python_stack(tgid, generation);
    for (hit, c) in [
        (py.walked, ProfileCounter::PythonWalks),
        (py.fault, ProfileCounter::PythonReadFault),
        (py.truncated, ProfileCounter::PythonTruncated),
        (py.lost, ProfileCounter::PythonStackLost),
    ] {
        if hit {
            bump(&PROFILE_COUNTERS_MAP, c as u32);
        }
    }
    let python_stack_id = py.id;
    let (route_tag, route_src) = crate::route_tag::current(bpf_get_current_pid_tgid());
    StackKey {
        tgid,
        user_stack_id: user,
        kernel_stack_id: kernel,
        python_stack_id,
        comm,
        route_tag,
        route_src,
        _pad: [0; 3],
    }
}

/// The generation the programs write to now (0 or 1).
#[inline(always)]
pub fn generation() -> u32 {
    PROFILE_CONTROL.get(PROFILE_GEN_SLOT).copied().unwrap_or(0) & 1
}

/// The stack trace map of `generation`.
#[inline(always)]
fn stacks(generation: u32) -> &'static StackTrace {
    if generation == 0 {
        &PROFILE_STACKS_0
    } else {
        &PROFILE_STACKS_1
    }
}

/// Adds `n` to this CPU's slot of `key` in a per-CPU counts map.
#[inline(always)]
pub fn add<K>(counts: &PerCpuHashMap<K, u64>, key: &K, n: u64) -> Result<(), ProfileError> {
    if let Some(p) = counts.get_ptr_mut(key) {
        // SAFETY: `p` comes from a successful lookup and points at this
        // CPU's 8-byte value slot, which no other CPU writes and which stays
        // valid for the program's run (a per-CPU map needs no atomics).
        unsafe { *p += n };
        return Ok(());
    }
    match counts.insert(key, n, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        // Another CPU inserted the same key between our lookup and insert;
        // our own per-CPU slot of it is still zero.
        Err(e) if -e == EEXIST => {
            if let Some(p) = counts.get_ptr_mut(key) {
                // SAFETY: as above: this CPU's own slot of a found entry.
                unsafe { *p += n };
            }
            Ok(())
        }
        Err(_) => Err(ProfileError::CountsFull),
    }
}

/// Tells the agent about a process the first time it is sampled, and again
/// after it exec'd (its comm changed).
#[inline(always)]
fn announce(tgid: u32, comm: &[u8; COMM_LEN]) {
    if let Some(p) = PROFILE_SEEN.get_ptr(tgid) {
        // SAFETY: `p` comes from a successful lookup of a 16-byte value;
        // a concurrent update by another CPU can at worst make us announce
        // twice, which the agent tolerates.
        if unsafe { *p } == *comm {
            return;
        }
    }
    if PROFILE_SEEN.insert(tgid, *comm, 0).is_err() {
        return;
    }
    if PROFILE_NEW_PIDS.output::<u32>(tgid, 0).is_err() {
        bump(&PROFILE_COUNTERS_MAP, ProfileCounter::NewPidDropped as u32);
    }
}

/// Tells the agent about a process it has not been told about; unlike
/// [`announce`], a comm other than the remembered one is not taken for an
/// exec: the off-CPU program sees every thread of a process switch, and
/// threads often have names of their own, so it would announce the same
/// process again and again.
#[inline(always)]
pub fn announce_new(tgid: u32, comm: &[u8; COMM_LEN]) {
    if PROFILE_SEEN.get_ptr(tgid).is_some() {
        return;
    }
    if PROFILE_SEEN.insert(tgid, *comm, 0).is_err() {
        return;
    }
    if PROFILE_NEW_PIDS.output::<u32>(tgid, 0).is_err() {
        bump(&PROFILE_COUNTERS_MAP, ProfileCounter::NewPidDropped as u32);
    }
}

/// One sample of whatever runs on this CPU.
#[inline(always)]
pub fn try_sample(ctx: &PerfEventContext) -> Result<(), ProfileError> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 {
        // The idle task: not a process anyone profiles.
        bump(&PROFILE_COUNTERS_MAP, ProfileCounter::Idle as u32);
        return Ok(());
    }
    bump(&PROFILE_COUNTERS_MAP, ProfileCounter::Samples as u32);
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    announce(tgid, &comm);
    let generation = generation();
    // The unwinder starts from the interrupted registers when the sample
    // hit user mode, else from those saved at kernel entry.
    let (in_user, regs) = crate::unwind::perf_regs(ctx);
    let key = stack_key(
        ctx,
        || {
            if in_user {
                Some(regs)
            } else {
                crate::unwind::task_user_regs()
            }
        },
        in_user,
        tgid,
        comm,
        generation,
    );
    let counts = if generation == 0 {
        &PROFILE_COUNTS_0
    } else {
        &PROFILE_COUNTS_1
    };
    add(counts, &key, 1)
}

/// Entry points call this and turn the error into a counted drop.
#[inline(always)]
pub fn sample(ctx: &PerfEventContext) -> u32 {
    if let Err(ProfileError::CountsFull) = try_sample(ctx) {
        bump(&PROFILE_COUNTERS_MAP, ProfileCounter::CountsFull as u32);
    }
    0
}

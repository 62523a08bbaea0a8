//! Process lifecycle hooks: exec and exit of thread-group leaders.
//!
//! Both hooks run in the context of the task concerned, so the pid, comm and
//! cgroup come from helpers rather than from `task_struct` fields; that keeps
//! the program free of kernel-version-specific struct offsets.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use aya_log_ebpf::debug;
use sonde_common::process::{PROCESS_COUNTERS, ProcessCounter, ProcessEvent, ProcessEventKind};

use crate::counters::bump;

/// Exec and exit events for the agent. 256 KiB holds ~6500 events, far more
/// than a burst of forks between two polls of the agent.
#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
static PROCESS_COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROCESS_COUNTERS, 0);

/// Why an event could not be emitted.
pub enum ProcessError {
    RingbufFull,
}

/// Emits one event for the current task. Exit of a non-leader thread is not a
/// process exit, so it is skipped.
#[inline(always)]
pub fn try_emit<C: EbpfContext>(ctx: &C, kind: ProcessEventKind) -> Result<(), ProcessError> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if kind == ProcessEventKind::Exit && tid != tgid {
        return Ok(());
    }
    bump(&PROCESS_COUNTERS_MAP, ProcessCounter::Seen as u32);
    // Compiled in, but gated by AYA_LOG_LEVEL, which the agent patches to 0
    // unless its own log filter asks for debug: one global load by default.
    // The target users filter on (RUST_LOG=sonde_ebpf=debug); the default,
    // the module path, is the object's crate since each object includes
    // this file (see lib.rs).
    debug!(
        ctx,
        target: "sonde_ebpf::process",
        "process event kind={} tgid={}",
        kind as u32,
        tgid
    );
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        return Err(ProcessError::RingbufFull);
    };
    // SAFETY: these helpers take no pointers and are allowed in tracing programs.
    let (ktime_ns, cgroup_id) = unsafe { (bpf_ktime_get_boot_ns(), bpf_get_current_cgroup_id()) };
    entry.write(ProcessEvent {
        kind: kind as u32,
        tgid,
        ktime_ns,
        cgroup_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
    Ok(())
}

/// Entry points call this and turn the error into a counted drop.
#[inline(always)]
pub fn emit<C: EbpfContext>(ctx: &C, kind: ProcessEventKind) -> u32 {
    match try_emit(ctx, kind) {
        Ok(()) => 0,
        Err(ProcessError::RingbufFull) => {
            bump(&PROCESS_COUNTERS_MAP, ProcessCounter::RingbufFull as u32);
            0
        }
    }
}

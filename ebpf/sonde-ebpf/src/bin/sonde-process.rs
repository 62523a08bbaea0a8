//! The process collector's object: exec/exit through tp_btf, with classic
//! tracepoints as a fallback for kernels without BTF-typed tracepoints. The
//! agent loads whichever pair attaches.
#![no_std]
#![no_main]

#[allow(dead_code, reason = "shared by every object; not all use `bump_by`")]
#[path = "../counters.rs"]
mod counters;
#[path = "../process.rs"]
mod process;

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use sonde_common::process::ProcessEventKind;
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

use crate::process::emit;

#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec_btf(ctx: BtfTracePointContext) -> i32 {
    emit(&ctx, ProcessEventKind::Exec) as i32
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn process_exit_btf(ctx: BtfTracePointContext) -> i32 {
    emit(&ctx, ProcessEventKind::Exit) as i32
}

#[tracepoint]
pub fn process_exec_tp(ctx: TracePointContext) -> u32 {
    emit(&ctx, ProcessEventKind::Exec)
}

#[tracepoint]
pub fn process_exit_tp(ctx: TracePointContext) -> u32 {
    emit(&ctx, ProcessEventKind::Exit)
}

//! The HTTP collector's object. Preferred hooks: tp_btf `sys_enter`/
//! `sys_exit` (no tracefs, no perf event, no trace record: the program
//! dispatches on the syscall number; x86_64). Fallback: the per-syscall
//! tracepoints (syscalls:sys_enter_*/sys_exit_*), which build a trace record
//! per hooked syscall before the program runs.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use sonde_ebpf::http::{
    Op, btf_enter, btf_exit, on_accept_exit, on_close, on_enter, on_exit, tp_arg, tp_ret,
};

/// `sys_enter(struct pt_regs *regs, long id)`.
#[btf_tracepoint(function = "sys_enter")]
pub fn http_sys_enter(ctx: BtfTracePointContext) -> i32 {
    btf_enter(ctx.arg(0), ctx.arg(1)) as i32
}

/// `sys_exit(struct pt_regs *regs, long ret)`.
#[btf_tracepoint(function = "sys_exit")]
pub fn http_sys_exit(ctx: BtfTracePointContext) -> i32 {
    btf_exit(ctx.arg(0), ctx.arg(1)) as i32
}

/// Empty programs on the same two hooks (`collectors.http.hook = "floor"`):
/// what hooking every syscall costs before any work, for the benchmark.
#[btf_tracepoint(function = "sys_enter")]
pub fn http_floor_enter(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn http_floor_exit(_ctx: BtfTracePointContext) -> i32 {
    0
}

macro_rules! enter {
    ($name:ident, $op:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_enter(tp_arg(&ctx, 0), tp_arg(&ctx, 1), tp_arg(&ctx, 2), $op)
        }
    };
}

enter!(http_enter_read, Op::ReadBuf);
enter!(http_enter_recvfrom, Op::ReadBuf);
enter!(http_enter_readv, Op::ReadIov);
enter!(http_enter_recvmsg, Op::ReadMsg);
enter!(http_enter_write, Op::WriteBuf);
enter!(http_enter_sendto, Op::WriteBuf);
enter!(http_enter_writev, Op::WriteIov);
enter!(http_enter_sendmsg, Op::WriteMsg);
enter!(http_enter_sendfile, Op::SendFile);
enter!(http_enter_connect, Op::Connect);

/// One exit program serves every data syscall: the stashed op says how.
#[tracepoint]
pub fn http_exit(ctx: TracePointContext) -> u32 {
    on_exit(tp_ret(&ctx))
}

#[tracepoint]
pub fn http_accept_exit(ctx: TracePointContext) -> u32 {
    on_accept_exit(tp_ret(&ctx))
}

#[tracepoint]
pub fn http_close(ctx: TracePointContext) -> u32 {
    on_close(tp_arg(&ctx, 0))
}

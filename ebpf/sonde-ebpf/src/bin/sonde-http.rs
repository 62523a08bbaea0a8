//! The HTTP collector's object (the state machine and front-ends are in
//! ../http/): three hook sets, of which the agent attaches the first that
//! works:
//! 1. socket layer: tp_btf `sock_send_length`/`sock_recv_length` (Linux
//!    6.3+) plus `inet_sock_set_state` for closes: only socket I/O runs a
//!    program, no syscall hook at all (x86_64: the syscall's arguments are
//!    read from the saved user registers);
//! 2. tp_btf `sys_enter`/`sys_exit` with a dispatch on the syscall number
//!    (x86_64);
//! 3. the per-syscall tracepoints (syscalls:sys_enter_*/sys_exit_*).
#![no_std]
#![no_main]

#[allow(
    dead_code,
    reason = "shared by every object; each uses a few of these facts"
)]
#[path = "../arch/mod.rs"]
mod arch;
#[allow(dead_code, reason = "shared by every object; not all use `bump_by`")]
#[path = "../counters.rs"]
mod counters;
#[path = "../http/mod.rs"]
mod http;
#[path = "../route_tag.rs"]
mod route_tag;

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

use crate::http::{
    msg::Op,
    sock::{sock_io, sock_state},
    sys_btf::{btf_enter, btf_exit},
    syscall::{on_accept_exit, on_close, on_enter, on_exit, tp_arg, tp_ret},
};

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn http_sock_send(ctx: BtfTracePointContext) -> i32 {
    sock_io(ctx.arg(0), ctx.arg(1), ctx.arg(2), false) as i32
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn http_sock_recv(ctx: BtfTracePointContext) -> i32 {
    sock_io(ctx.arg(0), ctx.arg(1), ctx.arg(2), true) as i32
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn http_sock_state(ctx: BtfTracePointContext) -> i32 {
    sock_state(ctx.arg(0), ctx.arg(2)) as i32
}

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

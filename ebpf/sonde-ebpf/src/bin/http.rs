//! The HTTP collector's object: syscall tracepoints (syscalls:sys_enter_* /
//! sys_exit_*) for socket data and connection lifecycle. Per-syscall
//! tracepoints cost nothing for the syscalls we do not hook.
#![no_std]
#![no_main]

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sonde_ebpf::http::{Op, on_accept_exit, on_close, on_enter, on_exit};

macro_rules! enter {
    ($name:ident, $op:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_enter(&ctx, $op)
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
    on_exit(&ctx)
}

#[tracepoint]
pub fn http_accept_exit(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx)
}

#[tracepoint]
pub fn http_close(ctx: TracePointContext) -> u32 {
    on_close(&ctx)
}

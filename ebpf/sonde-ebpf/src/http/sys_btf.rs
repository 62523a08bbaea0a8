//! Front-end on tp_btf `sys_enter`/`sys_exit`: every syscall of every task
//! comes here, so the dispatch on the syscall number is a few compares
//! before unrelated syscalls leave (instead of a perf-event tracepoint
//! record per hooked syscall). The arguments are read from the `struct
//! pt_regs` the hook hands over; the work is `syscall`'s.

use crate::{
    arch::{REG_ARG1, REG_ARG2, REG_ARG3, REG_ORIG_AX, nr, reg},
    http::{
        maps::{HttpError, count},
        msg::Op,
        syscall::{try_accept_exit, try_close, try_enter, try_exit},
    },
};

/// tp_btf `sys_enter(struct pt_regs *regs, long id)`.
#[inline(always)]
pub fn btf_enter(regs: *const u8, id: i64) -> u32 {
    count(try_btf_enter(regs, id))
}

#[inline(always)]
fn try_btf_enter(regs: *const u8, id: i64) -> Result<(), HttpError> {
    let op = match id {
        nr::READ | nr::RECVFROM => Op::ReadBuf,
        nr::WRITE | nr::SENDTO => Op::WriteBuf,
        nr::READV => Op::ReadIov,
        nr::WRITEV => Op::WriteIov,
        nr::RECVMSG => Op::ReadMsg,
        nr::SENDMSG => Op::WriteMsg,
        nr::SENDFILE => Op::SendFile,
        nr::CONNECT => Op::Connect,
        nr::CLOSE => return try_close(reg(regs, REG_ARG1)),
        _ => return Ok(()),
    };
    let (fd, buf, len) = if op == Op::SendFile {
        // sendfile(out_fd, in_fd, offset, count): data leaves on out_fd.
        (reg(regs, REG_ARG1), 0, 0)
    } else {
        (
            reg(regs, REG_ARG1),
            reg(regs, REG_ARG2),
            reg(regs, REG_ARG3),
        )
    };
    try_enter(fd, buf, len, op)
}

/// tp_btf `sys_exit(struct pt_regs *regs, long ret)`.
#[inline(always)]
pub fn btf_exit(regs: *const u8, ret: i64) -> u32 {
    count(try_btf_exit(regs, ret))
}

#[inline(always)]
fn try_btf_exit(regs: *const u8, ret: i64) -> Result<(), HttpError> {
    match reg(regs, REG_ORIG_AX) as i64 {
        nr::READ
        | nr::RECVFROM
        | nr::WRITE
        | nr::SENDTO
        | nr::READV
        | nr::WRITEV
        | nr::RECVMSG
        | nr::SENDMSG
        | nr::SENDFILE
        | nr::CONNECT => try_exit(ret),
        nr::ACCEPT | nr::ACCEPT4 => try_accept_exit(ret),
        _ => Ok(()),
    }
}

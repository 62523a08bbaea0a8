//! The content-read floor on the HTTP collector's socket-layer hooks: the
//! work any tracer of HTTP content there does for every message, built
//! from the real programs' own steps (sonde-ebpf's `http/` and `arch/`).

use aya_ebpf::helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs};
use sonde_common::http::{HttpCounter, parse::Head};

use crate::{
    arch::{REG_ARG2, REG_CS, REG_ORIG_AX, nr, reg, user_mode},
    counters::bump,
    http::{
        maps::HTTP_COUNTERS_MAP,
        msg::{Head16, Op, data_ptr},
    },
};

/// Finds the syscall's buffer in the saved registers, reads its first 16
/// bytes from user memory and classifies them, nothing else: no connection
/// state, no clock, no event. A lower bound for the real programs.
#[inline(always)]
pub fn floor_read(ret: i32, incoming: bool) -> u32 {
    if ret <= 0 {
        return 0;
    }
    // SAFETY: helpers; the task pointer is the verifier-trusted current
    // task and the returned registers are a BTF-typed `struct pt_regs *`.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    if !user_mode(reg(regs, REG_CS)) {
        return 0;
    }
    let op = match (reg(regs, REG_ORIG_AX) as i64, incoming) {
        (nr::READ | nr::RECVFROM, true) => Op::ReadBuf,
        (nr::READV, true) => Op::ReadIov,
        (nr::RECVMSG, true) => Op::ReadMsg,
        (nr::WRITE | nr::SENDTO, false) => Op::WriteBuf,
        (nr::WRITEV, false) => Op::WriteIov,
        (nr::SENDMSG, false) => Op::WriteMsg,
        _ => return 0,
    };
    let Ok(buf) = data_ptr(op, reg(regs, REG_ARG2)) else {
        return 0;
    };
    let mut slot = core::mem::MaybeUninit::uninit();
    let head = Head16::zeroed_in(&mut slot);
    // Counted so that the read and the classification are not optimized
    // away.
    if head.read_user(buf, 16).is_ok() && matches!(head.classify(), Head::Request(_)) {
        bump(&HTTP_COUNTERS_MAP, HttpCounter::Started as u32);
    }
    0
}

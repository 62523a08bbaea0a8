//! The syscall front-ends' common half: each data syscall's fd and buffer
//! are stashed per thread at entry ([`on_enter`]) and, once the exit knows
//! the byte count, handed to the state machine ([`on_exit`]);
//! accept/connect exits learn connections, close ends them. Called by the
//! tp_btf `sys_enter`/`sys_exit` dispatch (`sys_btf`) and directly by the
//! per-syscall tracepoint programs, whose records [`tp_arg`]/[`tp_ret`]
//! read.

use aya_ebpf::{
    EbpfContext, helpers::bpf_get_current_pid_tgid, macros::map, maps::Array,
    programs::TracePointContext,
};
use sonde_common::http::{CONN_FROM_SYSCALL, HttpConnKey, HttpCounter, HttpRole, parse::Head};

use crate::{
    arch::EINPROGRESS_RET,
    counters::bump,
    http::{
        maps::{HTTP_CONNS, HTTP_COUNTERS_MAP, HttpError, count, maybe_known, sniffing},
        msg::{Dir, Head16, Op, iov_base, msg_iov},
        state::{close_key, new_conn, on_data},
    },
};

/// Syscall arguments stashed at entry, one slot per thread id modulo
/// ARGS_SLOTS. An array, not a hash: the exit program runs for every hooked
/// syscall, and an array lookup is inlined (a few instructions) where a
/// hash lookup costs ~80 ns. The slot records the full pid_tgid, so a
/// colliding thread is detected (and counted) rather than mismatched.
#[map]
static HTTP_ARGS: Array<SyscallArgs> = Array::with_max_entries(ARGS_SLOTS, 0);
const ARGS_SLOTS: u32 = 1 << 16;

/// One thread's syscall in flight.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    /// pid_tgid of the thread that owns the slot (0: free).
    pub id: u64,
    pub fd: u64,
    pub buf: u64,
    pub op: u32,
    pub _pad: u32,
}

/// Syscall tracepoint argument `n` (the format puts each at 16 + 8n).
#[inline(always)]
pub fn tp_arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscalls:sys_enter_* records have 6 u64 args from offset 16;
    // callers pass n < 6, and the verifier checks ctx accesses are in bounds.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(16 + 8 * n) as *const u64) }
}

/// The syscall return value of a syscalls:sys_exit_* record.
#[inline(always)]
pub fn tp_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: syscalls:sys_exit_* records hold `long ret` at offset 16.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(16) as *const i64) }
}

/// Entry of a data syscall: remember fd and buffer for the exit. `fd`,
/// `buf`, `len` are the syscall's first three arguments.
#[inline(always)]
pub fn on_enter(fd: u64, buf: u64, len: u64, op: Op) -> u32 {
    count(try_enter(fd, buf, len, op))
}

#[inline(always)]
pub(crate) fn try_enter(fd: u64, buf: u64, len: u64, op: Op) -> Result<(), HttpError> {
    // fds above 2^31 are errors the syscall will reject anyway.
    if fd > i32::MAX as u64 {
        return Ok(());
    }
    let id = bpf_get_current_pid_tgid();
    if op != Op::Connect {
        let key = HttpConnKey {
            tgid: (id >> 32) as u32,
            fd: fd as u32,
        };
        if !maybe_known(&key) || HTTP_CONNS.get_ptr(key).is_none() {
            // An fd we do not track: files, pipes, non-HTTP sockets, or a
            // connection opened before the agent started. Content sniffing
            // finds the latter; the agent turns it off after a start-up
            // window, when every new connection is learned from
            // accept/connect, so unrelated I/O then costs one lookup.
            if !sniffing() {
                return Ok(());
            }
            // Writes: the data is already in the buffer, so decide now and
            // skip the per-thread stash unless it starts a request.
            let outgoing = matches!(
                op,
                Op::WriteBuf | Op::WriteIov | Op::WriteMsg | Op::SendFile
            );
            if outgoing && (op == Op::SendFile || !starts_request(op, buf, len)) {
                return Ok(());
            }
        }
    }
    let Some(slot) = HTTP_ARGS.get_ptr_mut(id as u32 & (ARGS_SLOTS - 1)) else {
        return Err(HttpError::ArgsFull);
    };
    // SAFETY: pointer into our own array map. Only threads whose tid is
    // congruent modulo ARGS_SLOTS share a slot; the id check at exit
    // catches that case.
    let slot = unsafe { &mut *slot };
    if slot.id != 0 && slot.id != id {
        // Another live thread's syscall is in flight in this slot.
        bump(&HTTP_COUNTERS_MAP, HttpCounter::ArgsFull as u32);
    }
    slot.id = id;
    slot.fd = fd;
    slot.buf = if op == Op::SendFile { 0 } else { buf };
    slot.op = op as u32;
    Ok(())
}

/// Whether an outgoing message (at syscall entry) begins with a request line.
#[inline(always)]
fn starts_request(op: Op, ptr: u64, count: u64) -> bool {
    let buf = match op {
        Op::WriteBuf => ptr,
        Op::WriteIov => match iov_base(ptr) {
            Ok(b) => b,
            Err(_) => return false,
        },
        _ => match msg_iov(ptr).and_then(iov_base) {
            Ok(b) => b,
            Err(_) => return false,
        },
    };
    let mut slot = core::mem::MaybeUninit::uninit();
    let head = Head16::zeroed_in(&mut slot);
    let len = if op == Op::WriteBuf && count < 16 {
        count as u32
    } else {
        16
    };
    head.read_user(buf, len).is_ok() && matches!(head.classify(), Head::Request(_))
}

/// Exit of a data syscall (or connect) returning `n`: run the state machine.
#[inline(always)]
pub fn on_exit(n: i64) -> u32 {
    count(try_exit(n))
}

#[inline(always)]
pub(crate) fn try_exit(n: i64) -> Result<(), HttpError> {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = HTTP_ARGS.get_ptr_mut(id as u32 & (ARGS_SLOTS - 1)) else {
        return Ok(());
    };
    // SAFETY: pointer into our own array map (see try_enter).
    let slot = unsafe { &mut *slot };
    if slot.id != id {
        return Ok(());
    }
    let args = *slot;
    slot.id = 0;
    let key = HttpConnKey {
        tgid: (id >> 32) as u32,
        fd: args.fd as u32,
    };
    if args.op == Op::Connect as u32 {
        // 0, or -EINPROGRESS for a non-blocking connect.
        if n == 0 || n == EINPROGRESS_RET {
            new_conn(&key, HttpRole::Client, CONN_FROM_SYSCALL)?;
        }
        return Ok(());
    }
    if n <= 0 {
        return Ok(());
    }
    let n = n as u64;
    let (dir, op) = match args.op {
        1 => (Dir::In, Op::ReadBuf),
        2 => (Dir::In, Op::ReadIov),
        3 => (Dir::In, Op::ReadMsg),
        4 => (Dir::Out, Op::WriteBuf),
        5 => (Dir::Out, Op::WriteIov),
        6 => (Dir::Out, Op::WriteMsg),
        _ => (Dir::Out, Op::SendFile),
    };
    on_data(&key, dir, op, args.buf, n, 0, 0)
}

/// accept/accept4 exit: the returned fd is a server-side connection.
#[inline(always)]
pub fn on_accept_exit(fd: i64) -> u32 {
    count(try_accept_exit(fd))
}

#[inline(always)]
pub(crate) fn try_accept_exit(fd: i64) -> Result<(), HttpError> {
    if fd < 0 {
        return Ok(());
    }
    let key = HttpConnKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as u32,
    };
    new_conn(&key, HttpRole::Server, CONN_FROM_SYSCALL)
}

/// close entry: forget the connection, reporting what was in flight.
#[inline(always)]
pub fn on_close(fd: u64) -> u32 {
    count(try_close(fd))
}

#[inline(always)]
pub(crate) fn try_close(fd: u64) -> Result<(), HttpError> {
    let key = HttpConnKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as u32,
    };
    if !maybe_known(&key) {
        return Ok(());
    }
    close_key(&key)
}

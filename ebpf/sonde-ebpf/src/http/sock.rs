//! Front-end on the socket layer: tp_btf `sock_send_length`/
//! `sock_recv_length` (Linux 6.3+) for each message, and
//! `inet_sock_set_state` for new TCP connections and closes. Only socket
//! I/O runs these programs (nothing for files, pipes or any other syscall,
//! and no per-syscall hook that would put every syscall of every task on
//! the slow path).

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid,
    generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
};
use sonde_common::http::{CONN_GONE, HttpConnKey, HttpRole, state};

use crate::{
    arch::{REG_ARG1, REG_ARG2, REG_CS, REG_ORIG_AX, SK_NUM, nr, reg, user_mode},
    http::{
        maps::{HTTP_CONNS, HTTP_FRESH, HTTP_SOCKS, HttpError, count},
        msg::{Dir, Op},
        state::{close_key, on_data},
    },
};

/// `MSG_PEEK`: the data stays queued and will be read again.
const MSG_PEEK: i32 = 2;

/// tp_btf `sock_send_length`/`sock_recv_length(struct sock *sk, int ret,
/// int flags)`: fired by the socket layer after each send/receive. The
/// syscall's own arguments (fd, buffer) come from the
/// task's saved user registers; the syscall number there says how the
/// buffer is laid out. Sockets used from io_uring or by the kernel itself
/// carry another syscall number (or none) and are skipped.
#[inline(always)]
pub fn sock_io(sk: *const u8, ret: i32, flags: i32, incoming: bool) -> u32 {
    count(try_sock_io(sk, ret, flags, incoming))
}

#[inline(always)]
fn try_sock_io(sk: *const u8, ret: i32, flags: i32, incoming: bool) -> Result<(), HttpError> {
    if ret <= 0 || (incoming && flags & MSG_PEEK != 0) {
        return Ok(());
    }
    // SAFETY: helpers; the task pointer is the verifier-trusted current
    // task and the returned registers are a BTF-typed `struct pt_regs *`.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    // Only a task inside a syscall from user mode has its arguments there
    // (kernel threads doing socket I/O, e.g. NFS, have an empty frame).
    if !user_mode(reg(regs, REG_CS)) {
        return Ok(());
    }
    let (op, dir) = match reg(regs, REG_ORIG_AX) as i64 {
        nr::READ | nr::RECVFROM => (Op::ReadBuf, Dir::In),
        nr::READV => (Op::ReadIov, Dir::In),
        nr::RECVMSG => (Op::ReadMsg, Dir::In),
        nr::WRITE | nr::SENDTO => (Op::WriteBuf, Dir::Out),
        nr::WRITEV => (Op::WriteIov, Dir::Out),
        nr::SENDMSG => (Op::WriteMsg, Dir::Out),
        nr::SENDFILE => (Op::SendFile, Dir::Out),
        _ => return Ok(()),
    };
    // The syscall and the hook must agree on the direction.
    if (dir == Dir::In) != incoming {
        return Ok(());
    }
    let fd = reg(regs, REG_ARG1);
    if fd > i32::MAX as u64 {
        return Ok(());
    }
    let arg = reg(regs, REG_ARG2);
    let key = HttpConnKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as u32,
    };
    // Through the stack: otherwise the compiler may pass the raw 64-bit
    // register the tracepoint argument came in (its low half is `ret`) as
    // a helper's length, which the verifier sees as unbounded.
    let n = ret as u32 as u64;
    // SAFETY: a read of a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    on_data(&key, dir, op, arg, n, sk as u64, sk_port(sk))
}

/// `sk->__sk_common.skc_num`: the local port, host order.
#[inline(always)]
fn sk_port(sk: *const u8) -> u16 {
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *`; the
    // verifier checks the field access and makes the load fault-safe.
    unsafe { core::ptr::read_volatile(sk.add(SK_NUM) as *const u16) }
}

/// TCP states (include/net/tcp_states.h) that mean this side closed the
/// connection or it is gone.
const TCP_ESTABLISHED: i32 = 1;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;

/// tp_btf `inet_sock_set_state(const struct sock *sk, int oldstate, int
/// newstate)`: new TCP connections (ESTABLISHED, see HTTP_FRESH) and the
/// close of connections learned by the socket-layer hooks.
/// Only our own close counts (FIN_WAIT1: we closed first; LAST_ACK: we
/// closed after the peer; CLOSE: reset or gone). The peer's FIN alone
/// (CLOSE_WAIT) does not: a client may half-close after its request and
/// still read the response.
#[inline(always)]
pub fn sock_state(sk: *const u8, newstate: i32) -> u32 {
    count(try_sock_state(sk, newstate))
}

#[inline(always)]
fn try_sock_state(sk: *const u8, newstate: i32) -> Result<(), HttpError> {
    if newstate == TCP_ESTABLISHED {
        // Full map: the LRU evicts the oldest instead of failing.
        let _ = HTTP_FRESH.insert(sk as u64, 0u8, 0);
        return Ok(());
    }
    if newstate != TCP_FIN_WAIT1 && newstate != TCP_CLOSE && newstate != TCP_LAST_ACK {
        return Ok(());
    }
    let sk = sk as u64;
    // SAFETY: a value copied out of our own map right after the lookup.
    let Some(key) = (unsafe { HTTP_SOCKS.get(sk) }).copied() else {
        return Ok(());
    };
    if let Some(c) = HTTP_CONNS.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup of our own map; the
        // entry stays valid for this program run (RCU), and a racing update
        // of one connection is at worst a lost state change, which the
        // state machine tolerates.
        let c = unsafe { &mut *c };
        if c.state == state::REQUEST {
            if newstate == TCP_FIN_WAIT1 && c.role == HttpRole::Client as u8 {
                // A client half-closing after its request: the response
                // may still come; the final CLOSE ends it.
                return Ok(());
            }
            if newstate == TCP_CLOSE {
                // Reset with a request in flight: possibly inside the send
                // of its response, whose hook has not run yet (see
                // CONN_GONE). Leave the verdict to that send or the agent.
                c.flags |= CONN_GONE;
                let _ = HTTP_SOCKS.remove(sk);
                return Ok(());
            }
        }
    }
    close_key(&key)
}

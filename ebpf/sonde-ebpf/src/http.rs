//! HTTP/1.x exchanges rebuilt from socket syscalls (tracepoints only: no
//! kprobes, no fentry).
//!
//! Each data syscall stashes its arguments per thread at entry; at exit, with
//! the byte count known, the first bytes of the buffer are read and fed to a
//! small per-connection state machine keyed by (tgid, fd):
//! IDLE -> REQUEST (request line seen) -> RESPONSE (status line seen, event
//! emitted) -> REQUEST (next request on a keep-alive connection, after a
//! ResponseEnd event with the final byte counts). Connections are learned
//! from accept/connect, or lazily from content (a request line on a fd we
//! did not see being accepted, e.g. accepted before the agent started).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use sonde_common::http::{
    CONN_FROM_SYSCALL, CONN_GONE, EVENT_CLOSED, HTTP_COUNTERS, HTTP_PREFIX_LEN, HttpConn,
    HttpConnKey, HttpCounter, HttpEvent, HttpEventKind, HttpRole, state,
};

use crate::{
    counters::bump,
    regs::{REG_CS, REG_DI, REG_DX, REG_ORIG_AX, REG_SI, reg},
};

/// Completed/aborted exchanges. 2 MiB holds ~8000 events (256 B each):
/// ~145 ms of wrk at 55k req/s, more than the agent's longest poll
/// interval (100 ms), and it is woken every 256 KiB besides. Its pages are
/// mapped twice into the agent (the ring's wrap-around view), so every MiB
/// here is 2 MiB of agent RSS once the ring has cycled: 4 MiB cost 8.
#[map]
static HTTP_EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Wake the agent only once this much is queued; otherwise it polls every
/// 100 ms. Waking it per event costs a context switch per request.
const WAKEUP_BYTES: u64 = 256 * 1024;
/// Ring-buffer bytes one event takes (8-byte record header + event).
const EVENT_SLOT: u64 = 8 + core::mem::size_of::<HttpEvent>() as u64;

#[map]
pub(crate) static HTTP_COUNTERS_MAP: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(HTTP_COUNTERS, 0);

/// Per-connection state. LRU: connections whose close we missed age out.
#[map]
static HTTP_CONNS: LruHashMap<HttpConnKey, HttpConn> = LruHashMap::with_max_entries(16384, 0);

/// `struct sock *` -> connection, for connections learned by the
/// socket-layer hooks: a TCP state change to a closing state names the
/// socket, not the fd. LRU like the connection map it indexes.
#[map]
static HTTP_SOCKS: LruHashMap<u64, HttpConnKey> = LruHashMap::with_max_entries(16384, 0);

/// TCP sockets that became ESTABLISHED while the socket-layer hooks are
/// attached, until their first message: their first bytes decide whether
/// they speak HTTP/1.x. Unused entries (sockets that never carry data) age
/// out of the LRU.
#[map]
static HTTP_FRESH: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Syscall arguments stashed at entry, one slot per thread id modulo
/// ARGS_SLOTS. An array, not a hash: the exit program runs for every hooked
/// syscall, and an array lookup is inlined (a few instructions) where a
/// hash lookup costs ~80 ns. The slot records the full pid_tgid, so a
/// colliding thread is detected (and counted) rather than mismatched.
#[map]
static HTTP_ARGS: Array<SyscallArgs> = Array::with_max_entries(ARGS_SLOTS, 0);
const ARGS_SLOTS: u32 = 1 << 16;

/// One bit per hash of (tgid, fd) ever tracked: a cheap, inlined pre-check
/// before the connection-map lookup on every read/write entry. False
/// positives only cost the lookup; bits are never cleared.
#[map]
static HTTP_KNOWN: Array<u64> = Array::with_max_entries(KNOWN_WORDS, 0);
const KNOWN_WORDS: u32 = 1024;

#[inline(always)]
fn known_bit(key: &HttpConnKey) -> (u32, u64) {
    let h = key.tgid.wrapping_mul(0x9e37_79b1) ^ key.fd.wrapping_mul(0x85eb_ca6b);
    let h = h ^ (h >> 16);
    ((h >> 6) & (KNOWN_WORDS - 1), 1u64 << (h & 63))
}

#[inline(always)]
fn maybe_known(key: &HttpConnKey) -> bool {
    let (w, b) = known_bit(key);
    HTTP_KNOWN.get(w).is_some_and(|v| *v & b != 0)
}

#[inline(always)]
fn mark_known(key: &HttpConnKey) {
    let (w, b) = known_bit(key);
    if let Some(v) = HTTP_KNOWN.get_ptr_mut(w) {
        // SAFETY: pointer into our own array map; a racing update from
        // another CPU can at worst drop a bit, which only makes that
        // connection look unknown (then found by content while sniffing).
        unsafe { *v |= b };
    }
}

/// Slot 0: 1 while unknown fds are sniffed for HTTP content (set by the
/// agent; off after its start-up window).
#[map]
static HTTP_SNIFF: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn sniffing() -> bool {
    HTTP_SNIFF.get(0).is_some_and(|v| *v != 0)
}

/// Zeroed template for new connections (keeps 200 B off the 512 B stack).
#[map]
static HTTP_SCRATCH: PerCpuArray<HttpConn> = PerCpuArray::with_max_entries(1, 0);

/// How the data of a syscall is laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// read/recvfrom: `buf` is the data.
    ReadBuf = 1,
    /// readv: `buf` is a `struct iovec *`.
    ReadIov = 2,
    /// recvmsg: `buf` is a `struct msghdr *`.
    ReadMsg = 3,
    WriteBuf = 4,
    WriteIov = 5,
    WriteMsg = 6,
    /// sendfile: no user buffer, only a byte count.
    SendFile = 7,
    /// connect: `fd` becomes a client connection on success.
    Connect = 8,
}

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

pub enum HttpError {
    RingbufFull,
    ReadFailed,
    ArgsFull,
    ConnFull,
}

/// Turns an error into a counted drop.
#[inline(always)]
fn count(r: Result<(), HttpError>) -> u32 {
    if let Err(e) = r {
        let c = match e {
            HttpError::RingbufFull => HttpCounter::RingbufFull,
            HttpError::ReadFailed => HttpCounter::ReadFailed,
            HttpError::ArgsFull => HttpCounter::ArgsFull,
            HttpError::ConnFull => HttpCounter::ConnFull,
        };
        bump(&HTTP_COUNTERS_MAP, c as u32);
    }
    0
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
fn try_enter(fd: u64, buf: u64, len: u64, op: Op) -> Result<(), HttpError> {
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
    // SAFETY: helper read of user memory into a 16-byte stack buffer;
    // `len` <= 16.
    let r =
        unsafe { generated::bpf_probe_read_user(head.0.as_mut_ptr().cast(), len, buf as *const _) };
    r == 0 && classify(&head.0) == Head::Request
}

/// Exit of a data syscall (or connect) returning `n`: run the state machine.
#[inline(always)]
pub fn on_exit(n: i64) -> u32 {
    count(try_exit(n))
}

#[inline(always)]
fn try_exit(n: i64) -> Result<(), HttpError> {
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
        if n == 0 || n == -115 {
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

/// Where the data of a syscall starts, from its buffer argument: one user
/// read for readv/writev, two for recvmsg/sendmsg, none otherwise. Called
/// only once the message is known to matter (each read costs ~100-200 ns).
#[inline(always)]
pub(crate) fn data_ptr(op: Op, arg: u64) -> Result<u64, HttpError> {
    match op {
        Op::ReadBuf | Op::WriteBuf => Ok(arg),
        Op::ReadIov | Op::WriteIov => iov_base(arg),
        Op::ReadMsg | Op::WriteMsg => iov_base(msg_iov(arg)?),
        _ => Ok(0),
    }
}

/// `struct msghdr::msg_iov` (offset 16 on 64-bit).
#[inline(always)]
fn msg_iov(msg: u64) -> Result<u64, HttpError> {
    // SAFETY: reading user memory through the helper, which faults safely.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user((msg + 16) as *const u64) }
        .map_err(|_| HttpError::ReadFailed)
}

/// `iov[0].iov_base`: the first bytes of a vectored message are all the
/// state machine needs (nginx puts the whole header block in iov[0]).
#[inline(always)]
fn iov_base(iov: u64) -> Result<u64, HttpError> {
    // SAFETY: as above.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(iov as *const u64) }
        .map_err(|_| HttpError::ReadFailed)
}

/// The first bytes of a message, on the stack. 8-byte aligned so that
/// zeroing it is two stores: unaligned, the compiler calls a byte-wise
/// `memset` subprogram.
#[repr(C, align(8))]
pub(crate) struct Head16(pub(crate) [u8; 16]);

impl Head16 {
    /// Zeroed in place with two volatile stores. Returned by value (as it
    /// once was), the move out of the `MaybeUninit` became a call to the
    /// byte-wise `memset` subprogram on every message (16 iterations); so
    /// did `[0; 16]`.
    #[inline(always)]
    pub(crate) fn zeroed_in(slot: &mut core::mem::MaybeUninit<Head16>) -> &mut Head16 {
        let p = slot.as_mut_ptr() as *mut u64;
        // SAFETY: two aligned 8-byte stores cover the 16-byte value, which
        // is then fully initialized.
        unsafe {
            core::ptr::write_volatile(p, 0);
            core::ptr::write_volatile(p.add(1), 0);
            &mut *slot.as_mut_ptr()
        }
    }
}

/// What the first bytes of a message are.
#[derive(PartialEq, Eq)]
pub(crate) enum Head {
    Request,
    /// Status line with this code.
    Response(u16),
    /// `PRI * HTTP/2.0`: HTTP/2 prior knowledge, out of scope.
    Http2,
    Other,
}

#[inline(always)]
pub(crate) fn classify(h: &[u8; 16]) -> Head {
    if &h[..5] == b"HTTP/" {
        if h[5] == b'1'
            && h[6] == b'.'
            && h[8] == b' '
            && h[9].is_ascii_digit()
            && h[10].is_ascii_digit()
            && h[11].is_ascii_digit()
        {
            let code =
                (h[9] - b'0') as u16 * 100 + (h[10] - b'0') as u16 * 10 + (h[11] - b'0') as u16;
            return Head::Response(code);
        }
        return Head::Other;
    }
    if &h[..4] == b"GET " || &h[..4] == b"PUT " {
        return Head::Request;
    }
    if &h[..5] == b"POST " || &h[..5] == b"HEAD " {
        return Head::Request;
    }
    if &h[..6] == b"PATCH " || &h[..6] == b"TRACE " {
        return Head::Request;
    }
    if &h[..7] == b"DELETE " {
        return Head::Request;
    }
    if &h[..8] == b"OPTIONS " || &h[..8] == b"CONNECT " {
        return Head::Request;
    }
    if &h[..14] == b"PRI * HTTP/2.0" {
        return Head::Http2;
    }
    Head::Other
}

#[inline(always)]
fn new_conn(key: &HttpConnKey, role: HttpRole, flags: u8) -> Result<(), HttpError> {
    let Some(t) = HTTP_SCRATCH.get_ptr_mut(0) else {
        return Err(HttpError::ConnFull);
    };
    // SAFETY: per-CPU slot from a successful lookup; programs on one CPU do
    // not interleave, so no one else touches it while we fill and copy it.
    let t = unsafe { &mut *t };
    // Volatile: plain stores were merged into a call to the byte-wise
    // `memset` subprogram (48 iterations per new connection).
    // SAFETY: aligned stores to fields of the per-CPU value.
    unsafe {
        core::ptr::write_volatile(&mut t.start_ns, 0);
        core::ptr::write_volatile(&mut t.req_bytes, 0);
        core::ptr::write_volatile(&mut t.resp_bytes, 0);
        core::ptr::write_volatile(&mut t.prev_req_bytes, 0);
        core::ptr::write_volatile(&mut t.prev_resp_bytes, 0);
        core::ptr::write_volatile(&mut t.sk, 0);
    }
    t.lport = 0;
    t.role = role as u8;
    t.state = state::IDLE;
    t.status = 0;
    t.prefix_len = 0;
    t.flags = flags;
    // SAFETY: helper writing at most 16 bytes into the 16-byte field of
    // our per-CPU scratch value; it zero-fills on failure.
    unsafe { generated::bpf_get_current_comm(t.comm.as_mut_ptr().cast(), 16) };
    mark_known(key);
    HTTP_CONNS
        .insert(key, *t, 0)
        .map_err(|_| HttpError::ConnFull)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn on_data(
    key: &HttpConnKey,
    dir: Dir,
    op: Op,
    arg: u64,
    n: u64,
    sk: u64,
    lport: u16,
) -> Result<(), HttpError> {
    let mut conn = HTTP_CONNS.get_ptr_mut(key);
    if let Some(c) = conn {
        // SAFETY: pointer from a successful lookup of our own map.
        let (old_sk, st) = unsafe { ((*c).sk, (*c).state) };
        if sk != 0 && old_sk != sk {
            // The fd now names another socket: the old one closed without
            // a TCP state change we saw (or was learned by the syscall
            // hooks). Start over rather than mix the two.
            if old_sk != 0 {
                let _ = HTTP_SOCKS.remove(old_sk);
            }
            let _ = HTTP_CONNS.remove(key);
            conn = None;
        } else if st == state::NOT_HTTP {
            // Before reading any user memory.
            return Ok(());
        }
    }
    // An untracked fd: decide whether it can matter before reading any
    // user memory. A TCP socket established while we watch (HTTP_FRESH) is
    // classified by its first message; any other is looked at only while
    // the agent sniffs for connections opened before it started (its
    // start-up window). Afterwards non-HTTP socket I/O stops here, after
    // two map lookups and no user-memory read.
    let fresh = conn.is_none() && sk != 0 && HTTP_FRESH.get_ptr(sk).is_some();
    if conn.is_none() && !fresh && !sniffing() {
        return Ok(());
    }
    if let Some(c) = conn {
        // SAFETY: pointer from a successful lookup of our own map.
        let c = unsafe { &mut *c };
        let resp_dir = if c.role == HttpRole::Client as u8 {
            Dir::In
        } else {
            Dir::Out
        };
        if dir == resp_dir && c.state == state::RESPONSE {
            // More of a response already reported (body chunks): only its
            // size matters, so no user-memory read. (A status line here
            // would be a response without a request: counted as body.)
            c.resp_bytes += n;
            return Ok(());
        }
    }
    let buf = data_ptr(op, arg)?;
    let mut slot = core::mem::MaybeUninit::uninit();
    let head = Head16::zeroed_in(&mut slot);
    // A known connection expecting a new request in this direction: read
    // the whole prefix into the connection at once (one user-memory read
    // instead of two; each costs ~100 ns here) and classify its start.
    let mut have_prefix = false;
    if let Some(c) = conn
        && buf != 0
        && n >= 16
    {
        // SAFETY: pointer from a successful lookup of our own map.
        let c = unsafe { &mut *c };
        let req_dir = if c.role == HttpRole::Client as u8 {
            Dir::Out
        } else {
            Dir::In
        };
        if dir == req_dir && c.state != state::REQUEST && c.state != state::NOT_HTTP {
            let len = if n > HTTP_PREFIX_LEN as u64 {
                HTTP_PREFIX_LEN as u32
            } else {
                n as u32
            };
            // SAFETY: `len` <= HTTP_PREFIX_LEN, the size of the destination
            // inside our own map value. The old prefix belongs to an
            // exchange already reported.
            let r = unsafe {
                generated::bpf_probe_read_user(c.prefix.as_mut_ptr().cast(), len, buf as *const _)
            };
            if r != 0 {
                c.prefix_len = 0;
                return Err(HttpError::ReadFailed);
            }
            c.prefix_len = len as u16;
            // SAFETY: 16 bytes from the start of the 160-byte prefix (len
            // >= 16 were just read) into the 16-byte stack buffer.
            unsafe { core::ptr::copy_nonoverlapping(c.prefix.as_ptr(), head.0.as_mut_ptr(), 16) };
            have_prefix = true;
        }
    }
    if buf != 0 && !have_prefix {
        let len = if n < 16 { n as u32 } else { 16 };
        // SAFETY: helper read of user memory into a stack buffer of 16 bytes;
        // `len` is at most 16.
        let r = unsafe {
            generated::bpf_probe_read_user(head.0.as_mut_ptr().cast(), len, buf as *const _)
        };
        if r != 0 {
            return Err(HttpError::ReadFailed);
        }
    }
    let kind = if buf != 0 {
        classify(&head.0)
    } else {
        Head::Other
    };
    if conn.is_none() {
        // A TCP connection established while we watch: its first message
        // decides whether it speaks HTTP/1.x (as accept/connect learning
        // does on the syscall hooks).
        if fresh {
            let _ = HTTP_FRESH.remove(sk);
        }
        // Unknown fd: only a request line makes it a connection of ours.
        // Everything else (file I/O, pipes, non-HTTP sockets) stops here;
        // a fresh socket whose first message is something else is
        // remembered as not-HTTP so that its later I/O stops earlier.
        let role = if kind != Head::Request {
            if !fresh {
                return Ok(());
            }
            HttpRole::Unknown
        } else if dir == Dir::In {
            HttpRole::Server
        } else {
            HttpRole::Client
        };
        // From the socket-layer hooks the fd is certainly a socket.
        let flags = if sk != 0 { CONN_FROM_SYSCALL } else { 0 };
        new_conn(key, role, flags)?;
        conn = HTTP_CONNS.get_ptr_mut(key);
        if sk != 0
            && let Some(c) = conn
        {
            // SAFETY: pointer from a successful lookup of our own map.
            unsafe {
                (*c).sk = sk;
                (*c).lport = lport;
                if role == HttpRole::Unknown {
                    (*c).state = state::NOT_HTTP;
                }
            }
            HTTP_SOCKS
                .insert(sk, key, 0)
                .map_err(|_| HttpError::ConnFull)?;
            if role == HttpRole::Unknown {
                bump(&HTTP_COUNTERS_MAP, HttpCounter::NotHttp as u32);
                return Ok(());
            }
        }
    }
    let Some(c) = conn else {
        return Err(HttpError::ConnFull);
    };
    // SAFETY: pointer from a successful lookup of our own map; concurrent
    // updates of one connection from two threads are at worst a lost
    // update of a counter, which the state machine tolerates.
    let c = unsafe { &mut *c };
    if c.state == state::NOT_HTTP {
        return Ok(());
    }
    let req_dir = if c.role == HttpRole::Client as u8 {
        Dir::Out
    } else {
        Dir::In
    };
    if dir == req_dir {
        match kind {
            Head::Request => {
                if c.state == state::REQUEST {
                    // A new request before the response: pipelining (or a
                    // retry). Drop the earlier one rather than mismatch.
                    bump(&HTTP_COUNTERS_MAP, HttpCounter::Pipelined as u32);
                }
                if c.state == state::RESPONSE {
                    // Sizes of the exchange that just ended ride on the
                    // next event of this connection.
                    c.prev_req_bytes = c.req_bytes;
                    c.prev_resp_bytes = c.resp_bytes;
                } else {
                    c.prev_req_bytes = 0;
                    c.prev_resp_bytes = 0;
                }
                start_request(c, buf, n, have_prefix)?;
            }
            Head::Http2 => {
                c.state = state::NOT_HTTP;
                bump(&HTTP_COUNTERS_MAP, HttpCounter::NotHttp as u32);
            }
            _ => {
                if c.state == state::IDLE {
                    if c.role != HttpRole::Unknown as u8 && c.flags & CONN_FROM_SYSCALL != 0 {
                        // The first message of a socket is not HTTP/1.x.
                        c.state = state::NOT_HTTP;
                        bump(&HTTP_COUNTERS_MAP, HttpCounter::NotHttp as u32);
                    }
                } else {
                    c.req_bytes += n;
                }
            }
        }
    } else {
        match kind {
            Head::Response(code) => {
                if c.state == state::REQUEST {
                    c.resp_bytes += n;
                    // 1xx (100 Continue) is not the final response.
                    if code >= 200 {
                        c.status = code;
                        c.state = state::RESPONSE;
                        // SAFETY: helper without arguments.
                        let now = unsafe { bpf_ktime_get_ns() };
                        emit(key, c, HttpEventKind::Complete, now, 0)?;
                    }
                } else {
                    bump(&HTTP_COUNTERS_MAP, HttpCounter::Orphan as u32);
                }
            }
            _ => {
                if c.state != state::IDLE {
                    c.resp_bytes += n;
                }
            }
        }
    }
    Ok(())
}

#[inline(always)]
fn start_request(c: &mut HttpConn, buf: u64, n: u64, have_prefix: bool) -> Result<(), HttpError> {
    bump(&HTTP_COUNTERS_MAP, HttpCounter::Started as u32);
    c.state = state::REQUEST;
    // SAFETY: helper without arguments.
    c.start_ns = unsafe { bpf_ktime_get_ns() };
    c.req_bytes = n;
    c.resp_bytes = 0;
    c.status = 0;
    if have_prefix {
        return Ok(());
    }
    let mut len = n;
    if len > HTTP_PREFIX_LEN as u64 {
        len = HTTP_PREFIX_LEN as u64;
    }
    // SAFETY: `len` <= HTTP_PREFIX_LEN, the size of the destination, which
    // is inside our own map value.
    let r = unsafe {
        generated::bpf_probe_read_user(c.prefix.as_mut_ptr().cast(), len as u32, buf as *const _)
    };
    if r != 0 {
        c.prefix_len = 0;
        return Err(HttpError::ReadFailed);
    }
    c.prefix_len = len as u16;
    Ok(())
}

#[inline(always)]
fn emit(
    key: &HttpConnKey,
    c: &HttpConn,
    kind: HttpEventKind,
    end_ns: u64,
    flags: u8,
) -> Result<(), HttpError> {
    let Some(mut entry) = HTTP_EVENTS.reserve::<HttpEvent>(0) else {
        return Err(HttpError::RingbufFull);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved ring-buffer slot of the right size;
    // every field is written before submit.
    unsafe {
        (*ev).kind = kind as u32;
        (*ev).tgid = key.tgid;
        (*ev).fd = key.fd;
        (*ev).role = c.role;
        (*ev).flags = flags;
        (*ev).status = c.status;
        (*ev).start_ns = c.start_ns;
        (*ev).end_ns = end_ns;
        (*ev).req_bytes = c.req_bytes;
        (*ev).resp_bytes = c.resp_bytes;
        (*ev).prev_req_bytes = c.prev_req_bytes;
        (*ev).prev_resp_bytes = c.prev_resp_bytes;
        (*ev).prefix_len = c.prefix_len;
        (*ev).lport = c.lport;
        (*ev)._pad1 = [0; 4];
        // The connection's task name, taken once when the entry was made
        // (a helper call per event cost ~25 ns).
        core::ptr::copy_nonoverlapping(c.comm.as_ptr(), (*ev).comm.as_mut_ptr(), 16);
        // Non-overlapping copy: the compiler inlines it as word moves, where
        // a plain assignment through raw pointers became a call to a
        // byte-wise `memmove` subprogram (13 % of this program's time).
        core::ptr::copy_nonoverlapping(
            c.prefix.as_ptr(),
            (*ev).prefix.as_mut_ptr(),
            HTTP_PREFIX_LEN,
        );
    }
    // Wake the agent only on the events that make the backlog cross a
    // multiple of WAKEUP_BYTES: waking on every event above the threshold
    // raised an irq_work (a self-IPI: an MSR write that exits to the
    // hypervisor in a VM) per event until the agent got to run. One wakeup
    // per 256 KiB also covers an agent that was already awake when the
    // first came; a crossing missed in a race with another CPU is caught
    // by the next one or by the agent's 100 ms poll.
    let avail = HTTP_EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if avail >= WAKEUP_BYTES
        && avail / WAKEUP_BYTES != avail.saturating_sub(EVENT_SLOT) / WAKEUP_BYTES
    {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    };
    entry.submit(flags);
    Ok(())
}

/// accept/accept4 exit: the returned fd is a server-side connection.
#[inline(always)]
pub fn on_accept_exit(fd: i64) -> u32 {
    if fd < 0 {
        return 0;
    }
    let key = HttpConnKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as u32,
    };
    count(new_conn(&key, HttpRole::Server, CONN_FROM_SYSCALL))
}

/// close entry: forget the connection, reporting what was in flight.
#[inline(always)]
pub fn on_close(fd: u64) -> u32 {
    let key = HttpConnKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as u32,
    };
    if !maybe_known(&key) {
        return 0;
    }
    count(close_key(&key))
}

/// The connection `key` ended: report what was in flight and forget it.
#[inline(always)]
fn close_key(key: &HttpConnKey) -> Result<(), HttpError> {
    let key = *key;
    let Some(c) = HTTP_CONNS.get_ptr(key) else {
        return Ok(());
    };
    // SAFETY: pointer from a successful lookup; read before the delete.
    let c = unsafe { &*c };
    let r = if c.state == state::RESPONSE {
        emit(&key, c, HttpEventKind::ResponseEnd, 0, EVENT_CLOSED)
    } else if c.state == state::REQUEST && c.flags & CONN_FROM_SYSCALL != 0 {
        // SAFETY: helper without arguments.
        emit(
            &key,
            c,
            HttpEventKind::Aborted,
            unsafe { bpf_ktime_get_ns() },
            EVENT_CLOSED,
        )
    } else {
        Ok(())
    };
    if c.sk != 0 {
        let _ = HTTP_SOCKS.remove(c.sk);
    }
    let _ = HTTP_CONNS.remove(key);
    r
}

/// x86_64 syscall numbers of the hooked syscalls (tp_btf path). The
/// syscall-specific tracepoints carry no number; the generic `sys_enter`/
/// `sys_exit` hooks do, so the dispatch below is a few compares on every
/// syscall instead of a perf-event tracepoint record per hooked one. The
/// agent uses this path only on x86_64.
pub mod nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const CLOSE: i64 = 3;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const SENDFILE: i64 = 40;
    pub const CONNECT: i64 = 42;
    pub const ACCEPT: i64 = 43;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
    pub const ACCEPT4: i64 = 288;
}

/// tp_btf `sys_enter(struct pt_regs *regs, long id)`: every syscall of
/// every task comes here, so unrelated syscalls leave after the compares.
#[inline(always)]
pub fn btf_enter(regs: *const u8, id: i64) -> u32 {
    let op = match id {
        nr::READ | nr::RECVFROM => Op::ReadBuf,
        nr::WRITE | nr::SENDTO => Op::WriteBuf,
        nr::READV => Op::ReadIov,
        nr::WRITEV => Op::WriteIov,
        nr::RECVMSG => Op::ReadMsg,
        nr::SENDMSG => Op::WriteMsg,
        nr::SENDFILE => Op::SendFile,
        nr::CONNECT => Op::Connect,
        nr::CLOSE => return on_close(reg(regs, REG_DI)),
        _ => return 0,
    };
    let (fd, buf, len) = if op == Op::SendFile {
        // sendfile(out_fd, in_fd, offset, count): data leaves on out_fd.
        (reg(regs, REG_DI), 0, 0)
    } else {
        (reg(regs, REG_DI), reg(regs, REG_SI), reg(regs, REG_DX))
    };
    on_enter(fd, buf, len, op)
}

/// tp_btf `sys_exit(struct pt_regs *regs, long ret)`.
#[inline(always)]
pub fn btf_exit(regs: *const u8, ret: i64) -> u32 {
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
        | nr::CONNECT => on_exit(ret),
        nr::ACCEPT | nr::ACCEPT4 => on_accept_exit(ret),
        _ => 0,
    }
}

/// `MSG_PEEK`: the data stays queued and will be read again.
const MSG_PEEK: i32 = 2;

/// tp_btf `sock_send_length`/`sock_recv_length(struct sock *sk, int ret,
/// int flags)`: fired by the socket layer after each send/receive, so only
/// socket I/O runs this (nothing for files, pipes or any other syscall,
/// and no per-syscall hook that would put every syscall of every task on
/// the slow path). The syscall's own arguments (fd, buffer) come from the
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
    if reg(regs, REG_CS) & 3 != 3 {
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
    let fd = reg(regs, REG_DI);
    if fd > i32::MAX as u64 {
        return Ok(());
    }
    let arg = reg(regs, REG_SI);
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

/// `sk->__sk_common.skc_num`: the local port, host order (offset 14 of
/// `struct sock_common` on every kernel since 2.6).
#[inline(always)]
fn sk_port(sk: *const u8) -> u16 {
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *`; the
    // verifier checks the field access and makes the load fault-safe.
    unsafe { core::ptr::read_volatile(sk.add(14) as *const u16) }
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
    if newstate == TCP_ESTABLISHED {
        let _ = HTTP_FRESH.insert(sk as u64, 0u8, 0);
        return 0;
    }
    if newstate != TCP_FIN_WAIT1 && newstate != TCP_CLOSE && newstate != TCP_LAST_ACK {
        return 0;
    }
    let sk = sk as u64;
    // SAFETY: a value copied out of our own map right after the lookup.
    let Some(key) = (unsafe { HTTP_SOCKS.get(sk) }).copied() else {
        return 0;
    };
    if let Some(c) = HTTP_CONNS.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup of our own map.
        let c = unsafe { &mut *c };
        if c.state == state::REQUEST {
            if newstate == TCP_FIN_WAIT1 && c.role == HttpRole::Client as u8 {
                // A client half-closing after its request: the response
                // may still come; the final CLOSE ends it.
                return 0;
            }
            if newstate == TCP_CLOSE {
                // Reset with a request in flight: possibly inside the send
                // of its response, whose hook has not run yet (see
                // CONN_GONE). Leave the verdict to that send or the agent.
                c.flags |= CONN_GONE;
                let _ = HTTP_SOCKS.remove(sk);
                return 0;
            }
        }
    }
    count(close_key(&key))
}

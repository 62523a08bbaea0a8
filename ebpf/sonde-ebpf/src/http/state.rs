//! The per-connection state machine (see the `http` module header): fed
//! one message at a time by the front-ends ([`on_data`]), it tracks each
//! connection's exchange in `HTTP_CONNS` and keeps the request's prefix.
//! When the response starts, an exchange whose path is in the kernel's
//! dictionary is counted in the aggregation map ([`super::red`]); any other
//! is emitted as an event to `HTTP_EVENTS`, as is what is in flight when a
//! connection ends ([`close_key`]).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, generated},
};
use sonde_common::http::{
    CONN_AGG, CONN_FROM_SYSCALL, EVENT_CLOSED, HTTP_PREFIX_LEN, HttpConn, HttpConnKey, HttpCounter,
    HttpEvent, HttpEventKind, HttpRole,
    parse::{Head, is_final_status},
    state,
};

use crate::{
    counters::bump,
    http::{
        maps::{
            HTTP_CONNS, HTTP_COUNTERS_MAP, HTTP_EVENTS, HTTP_FRESH, HTTP_SCRATCH, HTTP_SOCKS,
            HttpError, mark_known, sniffing,
        },
        msg::{Dir, Head16, Op, data_ptr},
        red,
    },
};

/// Wake the agent only once this much is queued; otherwise it polls every
/// 100 ms. Waking it per event costs a context switch per request.
const WAKEUP_BYTES: u64 = 256 * 1024;
/// Ring-buffer bytes one event takes (8-byte record header + event).
const EVENT_SLOT: u64 = 8 + core::mem::size_of::<HttpEvent>() as u64;

/// A new connection entry for `key`, in state IDLE.
#[inline(always)]
pub(crate) fn new_conn(key: &HttpConnKey, role: HttpRole, flags: u8) -> Result<(), HttpError> {
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
        core::ptr::write_volatile(&mut t.route_id, 0);
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

/// One message of `n` bytes on connection `key` going `dir`; `op` and
/// `arg` say where its data is. `sk`/`lport`: the socket and local port
/// when the socket-layer hooks know them (else 0).
#[inline(always)]
pub(crate) fn on_data(
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
            if c.role == HttpRole::Server as u8 {
                crate::route_tag::more();
            }
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
        head.read_user(buf, if n < 16 { n as u32 } else { 16 })?;
    }
    let kind = if buf != 0 {
        head.classify()
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
        let role = if !matches!(kind, Head::Request(_)) {
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
            Head::Request(_) => {
                if c.state == state::REQUEST {
                    // A new request before the response: pipelining (or a
                    // retry). Drop the earlier one rather than mismatch.
                    bump(&HTTP_COUNTERS_MAP, HttpCounter::Pipelined as u32);
                }
                c.prev_req_bytes = 0;
                c.prev_resp_bytes = 0;
                if c.state == state::RESPONSE {
                    // The exchange that just ended has its final sizes:
                    // into its kernel counts, else onto the next event of
                    // this connection.
                    if c.flags & CONN_AGG == 0
                        || !red::count_sizes(c.route_id, c.status, c.req_bytes, c.resp_bytes)
                    {
                        c.prev_req_bytes = c.req_bytes;
                        c.prev_resp_bytes = c.resp_bytes;
                    }
                }
                start_request(c, buf, n, have_prefix)?;
                c.route_id = red::route_id(key, c);
                let mut sent = Ok(());
                if c.route_id != 0 && c.prev_req_bytes != 0 {
                    // This exchange will likely send no event to carry the
                    // previous one's sizes: send them on their own.
                    let (rq, rs) = (c.prev_req_bytes, c.prev_resp_bytes);
                    c.prev_req_bytes = 0;
                    c.prev_resp_bytes = 0;
                    sent = emit(key, c, HttpEventKind::ResponseEnd, 0, 0, rq, rs);
                }
                if c.role == HttpRole::Server as u8 {
                    crate::route_tag::begin(&c.prefix, c.prefix_len, c.start_ns);
                }
                sent?;
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
                    if is_final_status(code) {
                        c.status = code;
                        c.state = state::RESPONSE;
                        // SAFETY: helper without arguments.
                        let now = unsafe { bpf_ktime_get_ns() };
                        if c.role == HttpRole::Server as u8 {
                            crate::route_tag::end();
                        }
                        if c.route_id != 0
                            && red::count(c.route_id, code, now.saturating_sub(c.start_ns))
                        {
                            c.flags |= CONN_AGG;
                        } else {
                            c.flags &= !CONN_AGG;
                            let (rq, rs) = (c.req_bytes, c.resp_bytes);
                            emit(key, c, HttpEventKind::Complete, now, 0, rq, rs)?;
                        }
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
    req_bytes: u64,
    resp_bytes: u64,
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
        (*ev).req_bytes = req_bytes;
        (*ev).resp_bytes = resp_bytes;
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

/// The connection `key` ended: report what was in flight and forget it.
#[inline(always)]
pub(crate) fn close_key(key: &HttpConnKey) -> Result<(), HttpError> {
    let key = *key;
    let Some(c) = HTTP_CONNS.get_ptr(key) else {
        return Ok(());
    };
    // SAFETY: pointer from a successful lookup; read before the delete.
    let c = unsafe { &*c };
    let (rq, rs) = (c.req_bytes, c.resp_bytes);
    let r = if c.state == state::RESPONSE {
        if c.flags & CONN_AGG != 0 && red::count_sizes(c.route_id, c.status, rq, rs) {
            // Counted in the kernel: the agent keeps nothing for this
            // connection (no sizes awaited; its port came from the socket).
            Ok(())
        } else {
            emit(&key, c, HttpEventKind::ResponseEnd, 0, EVENT_CLOSED, rq, rs)
        }
    } else if c.state == state::REQUEST && c.flags & CONN_FROM_SYSCALL != 0 {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        emit(&key, c, HttpEventKind::Aborted, now, EVENT_CLOSED, rq, rs)
    } else {
        Ok(())
    };
    if c.sk != 0 {
        let _ = HTTP_SOCKS.remove(c.sk);
    }
    let _ = HTTP_CONNS.remove(key);
    r
}

//! HTTP/1.x request events, built in the kernel from socket I/O and sent
//! through a ring buffer (see docs/http.md for the state machine), and the
//! wire-format recognition both sides share ([`parse`]).

pub mod parse;
pub mod red;

/// Bytes of each request (server: read; client: written) kept for the agent:
/// enough for the method and a path; the agent strips the query string and
/// never exports anything beyond the normalized route.
pub const HTTP_PREFIX_LEN: usize = 160;

/// What an event reports. Values are part of the ABI; never reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpEventKind {
    /// The response started (server: status line written; client: status
    /// line read). `end_ns - start_ns` is the request duration.
    Complete = 1,
    /// The connection closed with a request in flight and no response.
    Aborted = 2,
    /// The connection closed after a response; carries the final byte
    /// counts of that exchange. (On keep-alive connections the next
    /// `Complete` carries them instead, in `prev_*`, to halve the events.)
    ResponseEnd = 3,
}

impl HttpEventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Complete),
            2 => Some(Self::Aborted),
            3 => Some(Self::ResponseEnd),
            _ => None,
        }
    }
}

/// Which side of the connection the traced process is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRole {
    Unknown = 0,
    Server = 1,
    Client = 2,
}

/// Connection state machine values (`HttpConn::state`).
pub mod state {
    /// No request seen yet, or the last response has ended.
    pub const IDLE: u8 = 0;
    /// Request started, no response yet.
    pub const REQUEST: u8 = 1;
    /// Response started; more response bytes may follow.
    pub const RESPONSE: u8 = 2;
    /// The connection spoke something that is not HTTP/1.x (HTTP/2 preface,
    /// TLS, garbage): ignored until closed.
    pub const NOT_HTTP: u8 = 3;
}

/// Key of the per-connection map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConnKey {
    pub tgid: u32,
    pub fd: u32,
}

const _: () = assert!(core::mem::size_of::<HttpConnKey>() == 8);

/// Per-connection state, one entry per (tgid, fd) in an LRU map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpConn {
    /// `bpf_ktime_get_ns()` at the first byte of the in-flight request.
    pub start_ns: u64,
    /// Request bytes (server: read; client: written) of the current exchange.
    pub req_bytes: u64,
    /// Response bytes of the current exchange.
    pub resp_bytes: u64,
    /// Final sizes of the previous exchange, reported with the next event.
    pub prev_req_bytes: u64,
    pub prev_resp_bytes: u64,
    /// Kernel `struct sock *` of the connection when learned from the
    /// socket-layer hooks (0 from the syscall hooks): detects an fd reused
    /// by a new socket, and keys the close bookkeeping.
    pub sk: u64,
    /// An [`HttpRole`] value.
    pub role: u8,
    /// A [`state`] value.
    pub state: u8,
    /// Status code of the current response (0 before it starts).
    pub status: u16,
    /// Valid bytes in `prefix`.
    pub prefix_len: u16,
    /// [`CONN_FROM_SYSCALL`] and friends.
    pub flags: u8,
    pub _pad: u8,
    /// Local TCP port (host order), from the socket-layer hooks; else 0.
    pub lport: u16,
    pub _pad2: [u8; 2],
    /// Series id of the in-flight request in the kernel's path dictionary
    /// (`red::HttpRouteKey`), looked up when it started; 0: not known
    /// there, its exchange goes to the agent as an event.
    pub route_id: u32,
    /// Task name of the thread that created the entry, copied into every
    /// event of the connection: one `bpf_get_current_comm` per connection
    /// instead of one per event.
    pub comm: [u8; crate::COMM_LEN],
    pub prefix: [u8; HTTP_PREFIX_LEN],
}

/// `HttpConn::flags`: the fd was learned from accept/connect, so it is
/// certainly a socket (not a file that happened to contain a request line).
pub const CONN_FROM_SYSCALL: u8 = 1;

/// `HttpConn::flags`: the socket was reset (TCP CLOSE without our close)
/// while a request was in flight. Kept, not deleted: the reset is often
/// processed inside the very `sendmsg` that writes the response (the
/// socket lock's backlog), before that send's hook runs. The agent reports
/// such entries as aborted and deletes them on its next scan.
pub const CONN_GONE: u8 = 2;

/// `HttpConn::flags`: the last response was counted in the kernel's
/// aggregation map (no event), so its final sizes go there too.
pub const CONN_AGG: u8 = 4;

const _: () = assert!(core::mem::size_of::<HttpConn>() == 64 + crate::COMM_LEN + HTTP_PREFIX_LEN);

/// One event to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpEvent {
    /// An [`HttpEventKind`] value.
    pub kind: u32,
    pub tgid: u32,
    pub fd: u32,
    /// An [`HttpRole`] value.
    pub role: u8,
    /// [`EVENT_CLOSED`] when the event comes from close(2).
    pub flags: u8,
    pub status: u16,
    pub start_ns: u64,
    pub end_ns: u64,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    /// Final request/response bytes of the previous exchange on this
    /// connection (`Complete` only; 0 when there was none).
    pub prev_req_bytes: u64,
    pub prev_resp_bytes: u64,
    pub prefix_len: u16,
    /// Local TCP port of the connection (host order) when the kernel knew
    /// it (socket-layer hooks); 0: the agent resolves it from /proc.
    pub lport: u16,
    pub _pad1: [u8; 4],
    /// Task name of the thread that opened (accepted, connected or first
    /// used) the connection: names the service when the process is gone
    /// before the agent looks it up.
    pub comm: [u8; crate::COMM_LEN],
    pub prefix: [u8; HTTP_PREFIX_LEN],
}

/// `HttpEvent::flags`: the connection was closed (the agent can forget it).
pub const EVENT_CLOSED: u8 = 1;

const _: () = assert!(core::mem::size_of::<HttpEvent>() == 72 + crate::COMM_LEN + HTTP_PREFIX_LEN);
const _: () = assert!(core::mem::align_of::<HttpEvent>() == 8);

crate::counters! {
    /// Indexes into the HTTP collector's per-CPU counter array.
    pub enum HttpCounter [HTTP_COUNTERS] {
        /// An event was dropped because the ring buffer was full.
        RingbufFull = 0 => "ringbuf_full",
        /// A read of user memory failed (buffer unmapped, racing munmap).
        ReadFailed = 1 => "read_failed",
        /// A connection was marked not-HTTP (HTTP/2 preface, non-HTTP bytes
        /// where a request or status line was expected).
        NotHttp = 2 => "not_http",
        /// A second request line arrived before the response (pipelining):
        /// the exchange is dropped rather than mismatched.
        Pipelined = 3 => "pipelined",
        /// A response arrived with no request in flight (unparsed).
        Orphan = 4 => "orphan_response",
        /// Two threads (tids congruent modulo the slot count) were in hooked
        /// syscalls at once and shared an argument slot: one was not traced.
        ArgsFull = 5 => "args_slot_collision",
        /// The connection map insert failed.
        ConnFull = 6 => "conn_full",
        /// Requests started (server and client).
        Started = 7 => "requests_started",
    }
}

crate::user_pod!(HttpConnKey, HttpConn, HttpEvent);

//! HTTP/1.x exchanges rebuilt in the kernel from socket I/O.
//!
//! A small per-connection state machine ([`state`]), keyed by (tgid, fd),
//! is fed the size and first bytes of each message:
//! IDLE -> REQUEST (request line seen) -> RESPONSE (status line seen, event
//! emitted) -> REQUEST (next request on a keep-alive connection, after a
//! ResponseEnd event with the final byte counts). What the first bytes are
//! is decided by `sonde_common::http::parse`, shared with the agent.
//!
//! Three hook front-ends feed it; the agent attaches the first set this
//! kernel accepts (see bin/sonde-http.rs):
//! - [`sock`]: tp_btf `sock_send_length`/`sock_recv_length` (Linux 6.3+),
//!   which only socket I/O runs, with the syscall's arguments read from the
//!   task's saved user registers, plus `inet_sock_set_state` for new
//!   connections and closes;
//! - [`sys_btf`]: tp_btf `sys_enter`/`sys_exit`, dispatching on the syscall
//!   number;
//! - the per-syscall tracepoints (syscalls:sys_enter_*/sys_exit_*), whose
//!   record layout [`syscall`] reads.
//!
//! The two syscall front-ends stash each data syscall's arguments per
//! thread at entry and run the state machine at exit ([`syscall`]), and
//! learn connections from accept/connect. Every front-end also learns
//! connections lazily from content (a request line on a fd we did not see
//! being accepted, e.g. accepted before the agent started) during the
//! agent's start-up window.
//!
//! Kernel-ABI facts (syscall numbers, register and struct offsets) come
//! from `crate::arch`, which the object includes next to this module.

pub mod maps;
pub mod msg;
pub mod red;
pub mod sock;
pub mod state;
pub mod sys_btf;
pub mod syscall;

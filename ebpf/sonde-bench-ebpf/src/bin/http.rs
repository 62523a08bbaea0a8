//! Benchmark-only programs on the HTTP collector's socket-layer hooks (tp_btf
//! `sock_send_length`/`sock_recv_length`), loaded by `cargo xtask bench`
//! through xtask/bench-probes, never by the agent:
//! - `http_floor_send`/`_recv`: empty, what the hooks alone cost;
//! - `http_floor_read_send`/`_recv`: the minimum per-message work of any
//!   tracer of HTTP content there (see `http_floor.rs`).
#![no_std]
#![no_main]

#[allow(
    dead_code,
    reason = "shared by every object; each uses a few of these facts"
)]
#[path = "../../../sonde-ebpf/src/arch/mod.rs"]
mod arch;
#[allow(dead_code, reason = "shared by every object; not all use `bump_by`")]
#[path = "../../../sonde-ebpf/src/counters.rs"]
mod counters;
#[allow(
    dead_code,
    reason = "the benchmark uses a few steps of the real programs"
)]
#[path = "../../../sonde-ebpf/src/http/mod.rs"]
mod http;
#[path = "../http_floor.rs"]
mod http_floor;
#[path = "../../../sonde-ebpf/src/route_tag.rs"]
mod route_tag;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

use crate::http_floor::floor_read;

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn http_floor_send(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn http_floor_recv(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn http_floor_read_send(ctx: BtfTracePointContext) -> i32 {
    floor_read(ctx.arg(1), false) as i32
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn http_floor_read_recv(ctx: BtfTracePointContext) -> i32 {
    floor_read(ctx.arg(1), true) as i32
}

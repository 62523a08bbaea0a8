//! RED counted in the kernel (`sonde_common::http::red`): a request whose
//! method and path the agent has already labelled is found in the path
//! dictionary when it starts ([`route_id`]), and its exchange is added to
//! the per-CPU aggregation map when its response starts ([`count`]) and
//! when its last byte is known ([`count_sizes`]), instead of an event.
//! Every miss (path not in the dictionary, map full, entry gone) leaves the
//! exchange to the event path: nothing is dropped here.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
};
use sonde_common::http::{
    HttpConn, HttpConnKey, HttpRole,
    red::{HttpAgg, HttpAggKey, HttpRouteKey, fill_route_key},
};

/// Path dictionary: raw (process, port, role, method and path) -> series
/// id, filled by the agent after it labelled one such request. LRU: an
/// evicted path only goes back to the event path.
#[map]
pub(crate) static HTTP_ROUTES: LruHashMap<HttpRouteKey, u32> =
    LruHashMap::with_max_entries(16384, 0);

/// (series id, status) -> counts, per CPU (no atomics); only the agent
/// deletes entries, those of exited processes. Sized by the agent at load
/// (its values are ~830 bytes per CPU, preallocated).
#[map]
pub(crate) static HTTP_AGG: PerCpuHashMap<HttpAggKey, HttpAgg> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// The dictionary key being built (104 bytes: kept off the stack).
#[map]
static HTTP_ROUTE_KEY: PerCpuArray<HttpRouteKey> = PerCpuArray::with_max_entries(1, 0);

/// All zeroes, never written: the first value of a new aggregation entry.
#[map]
static HTTP_AGG_ZERO: PerCpuArray<HttpAgg> = PerCpuArray::with_max_entries(1, 0);

/// The dictionary's series id of the request that just started on `c`
/// (its prefix read), or 0.
/// Server requests need the local port (the socket-layer hooks know it;
/// on the syscall fallbacks the agent resolves it, so they use events).
#[inline(always)]
pub(crate) fn route_id(key: &HttpConnKey, c: &HttpConn) -> u32 {
    if c.role == HttpRole::Server as u8 && c.lport == 0 {
        return 0;
    }
    let Some(k) = HTTP_ROUTE_KEY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot; programs do not interleave on a CPU
    // between filling it and the lookup below.
    let k = unsafe { &mut *k };
    k.tgid = key.tgid;
    k.lport = if c.role == HttpRole::Server as u8 {
        c.lport
    } else {
        0
    };
    k.role = c.role;
    if !fill_route_key(k, &c.prefix, usize::from(c.prefix_len)) {
        return 0;
    }
    // By reference: a copy would put the 104-byte key on the stack.
    let k: &HttpRouteKey = k;
    // SAFETY: a read of our own map's value, copied out at once.
    unsafe { HTTP_ROUTES.get(k) }.copied().unwrap_or(0)
}

/// This CPU's counts of (`id`, `status`), created if need be; `None` when
/// the map is full.
#[inline(always)]
fn entry(id: u32, status: u16) -> Option<&'static mut HttpAgg> {
    let k = HttpAggKey {
        id,
        status,
        _pad: 0,
    };
    if let Some(v) = HTTP_AGG.get_ptr_mut(k) {
        // SAFETY: this CPU's value of an entry of our own map; only this
        // CPU writes it, and programs do not interleave on a CPU.
        return Some(unsafe { &mut *v });
    }
    let zero = HTTP_AGG_ZERO.get_ptr(0)?;
    // SAFETY: the per-CPU zero template, never written. By reference: the
    // value (~830 bytes) does not fit on the stack.
    let zero: &HttpAgg = unsafe { &*zero };
    // NOEXIST: another CPU may have created the entry meanwhile (then the
    // update fails and the lookup below finds it; its value for this CPU
    // is zero).
    let _ = HTTP_AGG.insert(k, zero, BPF_NOEXIST as u64);
    // SAFETY: as above.
    HTTP_AGG.get_ptr_mut(k).map(|v| unsafe { &mut *v })
}

/// Counts an exchange of series `id` whose response (`status`) started
/// `ns` after its request; `false`: not counted, send its event.
#[inline(always)]
pub(crate) fn count(id: u32, status: u16, ns: u64) -> bool {
    let Some(v) = entry(id, status) else {
        return false;
    };
    v.add_duration(ns);
    true
}

/// Counts the final sizes of an exchange [`count`] counted; `false`: its
/// entry is gone (the agent deleted it), send them as an event.
#[inline(always)]
pub(crate) fn count_sizes(id: u32, status: u16, req: u64, resp: u64) -> bool {
    let k = HttpAggKey {
        id,
        status,
        _pad: 0,
    };
    let Some(v) = HTTP_AGG.get_ptr_mut(k) else {
        return false;
    };
    // SAFETY: as in `entry`.
    unsafe { (*v).add_sizes(req, resp) };
    true
}

//! The HTTP object's maps, shared by the state machine and the front-ends,
//! and the error type every `try_*` function returns (each error is a
//! counted drop, see [`count`]).

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use sonde_common::http::{HTTP_COUNTERS, HttpConn, HttpConnKey, HttpCounter};

use crate::counters::bump;

/// Completed/aborted exchanges. 2 MiB holds ~8000 events (256 B each):
/// ~145 ms of wrk at 55k req/s, more than the agent's longest poll
/// interval (100 ms), and it is woken every 256 KiB besides. Its pages are
/// mapped twice into the agent (the ring's wrap-around view), so every MiB
/// here is 2 MiB of agent RSS once the ring has cycled: 4 MiB cost 8.
#[map]
pub(crate) static HTTP_EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

#[map]
pub(crate) static HTTP_COUNTERS_MAP: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(HTTP_COUNTERS, 0);

/// Per-connection state. LRU: connections whose close we missed age out.
#[map]
pub(crate) static HTTP_CONNS: LruHashMap<HttpConnKey, HttpConn> =
    LruHashMap::with_max_entries(16384, 0);

/// `struct sock *` -> connection, for connections learned by the
/// socket-layer hooks: a TCP state change to a closing state names the
/// socket, not the fd. LRU like the connection map it indexes.
#[map]
pub(crate) static HTTP_SOCKS: LruHashMap<u64, HttpConnKey> = LruHashMap::with_max_entries(16384, 0);

/// TCP sockets that became ESTABLISHED while the socket-layer hooks are
/// attached, until their first message: their first bytes decide whether
/// they speak HTTP/1.x. Unused entries (sockets that never carry data) age
/// out of the LRU.
#[map]
pub(crate) static HTTP_FRESH: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

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

/// Whether `key` may be tracked (no false negatives).
#[inline(always)]
pub(crate) fn maybe_known(key: &HttpConnKey) -> bool {
    let (w, b) = known_bit(key);
    HTTP_KNOWN.get(w).is_some_and(|v| *v & b != 0)
}

#[inline(always)]
pub(crate) fn mark_known(key: &HttpConnKey) {
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
pub(crate) fn sniffing() -> bool {
    HTTP_SNIFF.get(0).is_some_and(|v| *v != 0)
}

/// Zeroed template for new connections (keeps 200 B off the 512 B stack).
#[map]
pub(crate) static HTTP_SCRATCH: PerCpuArray<HttpConn> = PerCpuArray::with_max_entries(1, 0);

/// Why a message or hook was dropped; each is counted, nothing else.
pub enum HttpError {
    RingbufFull,
    ReadFailed,
    ArgsFull,
    ConnFull,
}

/// Turns an error into a counted drop: what every entry point returns.
#[inline(always)]
pub fn count(r: Result<(), HttpError>) -> u32 {
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

//! The route-tag map shared by the HTTP and profile objects (see
//! `sonde_common::route`): the HTTP object records, for the thread that read
//! a server request, that request's first bytes, and stamps the entry with
//! the time its response's status line was written; the profile object
//! reads the entry of the sampled thread (or its process's hint) and puts
//! its tag into the sample's key, hashing the line the first time an entry
//! is sampled (the writer does not hash: most requests are never sampled,
//! and the hash is a loop over the line). Both objects include this file,
//! so they declare the same map; the agent makes them share one instance
//! (pinned in a private bpffs while they load). Each object uses one side:
//! the other functions are dead code there.

#![allow(dead_code, reason = "each object uses either the writer or the reader")]

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_loop},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use sonde_common::{
    http::HTTP_PREFIX_LEN,
    route::{PROCESS_KEY, ROUTE_TAG_GRACE_NS, ROUTE_TAGS_MAX, RouteTagValue, TagState, src},
};

/// tid (or `PROCESS_KEY | tgid`) -> request line and its tag.
#[map]
static ROUTE_TAGS: LruHashMap<u64, RouteTagValue> = LruHashMap::with_max_entries(ROUTE_TAGS_MAX, 0);

/// Writer: a new entry is built here, per CPU (too big for the stack; the
/// map update copies it from here).
#[map]
static ROUTE_TAG_NEW: PerCpuArray<RouteTagValue> = PerCpuArray::with_max_entries(1, 0);

/// Reader: the tag being computed, a copy of the request's first bytes and
/// the hash state, per CPU (the `bpf_loop` callback reads it; its context
/// argument can only point to the stack).
#[repr(C)]
pub struct TagScratch {
    state: TagState,
    len: u32,
    line: [u8; HTTP_PREFIX_LEN],
}

#[map]
static ROUTE_TAG_SCRATCH: PerCpuArray<TagScratch> = PerCpuArray::with_max_entries(1, 0);

/// `bpf_loop` callback: one byte of the request line per call.
#[inline(never)]
extern "C" fn tag_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = ROUTE_TAG_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's own scratch slot; the programs that use it do not
    // nest on one CPU.
    let s = unsafe { &mut *s };
    let i = i as usize;
    if i >= s.len as usize || i >= HTTP_PREFIX_LEN {
        return 1;
    }
    if s.state.step(s.line[i]) { 0 } else { 1 }
}

/// The tag of entry `v`: cached, else [`sonde_common::route::route_tag`] of
/// its line, computed as a `bpf_loop` (an inline loop made the verifier walk
/// every path through it) and cached in the entry.
#[inline(always)]
fn tag_of(v: *mut RouteTagValue) -> Option<u32> {
    // SAFETY: `v` comes from a successful lookup of ROUTE_TAGS; the entry
    // stays valid for this program run (RCU). A racing writer replaces the
    // element rather than editing it, so a cached tag can at worst land in
    // an element already replaced.
    let v = unsafe { &mut *v };
    if v.tag != 0 {
        return Some(v.tag);
    }
    // SAFETY: a read of a field of the map value; volatile because the
    // writer zeroes it while it rewrites the line (see `fill`), possibly
    // under us (an NMI-time sample of the writing thread, or another CPU
    // for the process hint).
    let len = unsafe { core::ptr::read_volatile(&v.len) };
    if len == 0 {
        return None;
    }
    let s = ROUTE_TAG_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's own scratch slot, as in `tag_step`.
    let s = unsafe { &mut *s };
    s.state = TagState::new();
    s.len = u32::from(len);
    // SAFETY: both are 160-byte arrays in map values; a non-overlapping
    // copy compiles to word moves.
    unsafe {
        core::ptr::copy_nonoverlapping(v.line.as_ptr(), s.line.as_mut_ptr(), HTTP_PREFIX_LEN)
    };
    // SAFETY: the callback has the signature bpf_loop expects and only
    // touches the per-CPU scratch slot.
    unsafe {
        bpf_loop(
            HTTP_PREFIX_LEN as u32,
            tag_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let tag = s.state.finish();
    v.tag = tag;
    Some(tag)
}

/// Patched by the agent at load time: 1 when the other object of the pair
/// runs and the map is shared, so the work is worth doing.
#[unsafe(no_mangle)]
static ROUTE_TAG_ON: u8 = 0;

#[inline(always)]
fn on() -> bool {
    // SAFETY: reading a global the loader patched; volatile so the compiler
    // does not fold the compile-time 0.
    unsafe { core::ptr::read_volatile(&ROUTE_TAG_ON) != 0 }
}

/// Writes request `id`'s line into the entry `v` in place: `len` is 0
/// while the line is incomplete, so that a reader does not hash half of it.
#[inline(always)]
fn fill(v: &mut RouteTagValue, line: &[u8; HTTP_PREFIX_LEN], len: u16, id: u64) {
    // SAFETY: volatile stores to fields of a map value, ordered around the
    // copy (x86 keeps stores in program order for other CPUs).
    unsafe {
        core::ptr::write_volatile(&mut v.len, 0);
        core::ptr::write_volatile(&mut v.tag, 0);
        core::ptr::write_volatile(&mut v.id, id);
        core::ptr::write_volatile(&mut v.end_ns, 0);
        // Both are 160-byte arrays in map values; a non-overlapping copy
        // compiles to word moves.
        core::ptr::copy_nonoverlapping(line.as_ptr(), v.line.as_mut_ptr(), HTTP_PREFIX_LEN);
        core::ptr::write_volatile(&mut v.len, len);
    }
}

/// Sets `key`'s entry to request `id`: rewritten in place when it exists
/// (a thread serves request after request: one lookup instead of an LRU
/// update, which allocates and frees an element), else inserted.
#[inline(always)]
fn put(key: u64, line: &[u8; HTTP_PREFIX_LEN], len: u16, id: u64) {
    if let Some(v) = ROUTE_TAGS.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup of our own map's value.
        fill(unsafe { &mut *v }, line, len, id);
        return;
    }
    let Some(v) = ROUTE_TAG_NEW.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own slot; programs on one CPU do not interleave.
    let v = unsafe { &mut *v };
    v._pad = 0;
    fill(v, line, len, id);
    let v: &RouteTagValue = v;
    let _ = ROUTE_TAGS.insert(key, v, 0);
}

/// Writer (HTTP object): the current thread started serving the request
/// whose first `len` bytes are `line`; `id` tells this request from the
/// thread's next ones (its start time). No hashing here (see the module
/// header).
#[inline(always)]
pub fn begin(line: &[u8; HTTP_PREFIX_LEN], len: u16, id: u64) {
    if !on() || len == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    put(pid_tgid & 0xffff_ffff, line, len, id);
    put(PROCESS_KEY | (pid_tgid >> 32), line, len, id);
}

/// Writer (HTTP object): the current thread wrote the response's status
/// line: its tag now holds only for the grace period, and the process hint
/// ends if it still names this request (another thread may have started
/// one since). The hint is stamped, not deleted, so that the next request
/// rewrites it in place.
#[inline(always)]
pub fn end() {
    if !on() {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(mine) = ROUTE_TAGS.get_ptr_mut(id & 0xffff_ffff) else {
        return;
    };
    // SAFETY: pointers from successful lookups of our own map's values; a
    // racing update can at worst leave or end a hint, or drop the stamp.
    unsafe {
        let now = bpf_ktime_get_ns();
        if let Some(hint) = ROUTE_TAGS.get_ptr_mut(PROCESS_KEY | (id >> 32))
            && (*hint).id == (*mine).id
        {
            (*hint).end_ns = now;
        }
        (*mine).end_ns = now;
    }
}

/// Writer (HTTP object): the current thread sent more of a response's
/// body: the grace starts again (nginx sends a large file in `sendfile`
/// chunks as the client reads). The thread's tag is the latest request it
/// read, which is this response's unless the thread serves several
/// connections at once.
#[inline(always)]
pub fn more() {
    if !on() {
        return;
    }
    let tid = bpf_get_current_pid_tgid() & 0xffff_ffff;
    if let Some(mine) = ROUTE_TAGS.get_ptr_mut(tid) {
        // SAFETY: pointer from a successful lookup of a 16-byte value.
        unsafe {
            if (*mine).end_ns != 0 {
                (*mine).end_ns = bpf_ktime_get_ns();
            }
        }
    }
}

/// Reader (profile object): the tag of the request the current thread
/// serves, else its process's hint: `(tag, route_src)`.
#[inline(always)]
pub fn current(pid_tgid: u64) -> (u32, u8) {
    if !on() {
        return (0, src::NONE);
    }
    if let Some(t) = ROUTE_TAGS.get_ptr_mut(pid_tgid & 0xffff_ffff) {
        // SAFETY: pointer from a successful lookup of our own map's value.
        let end = unsafe { (*t).end_ns };
        // SAFETY: helper without arguments.
        if (end == 0 || unsafe { bpf_ktime_get_ns() }.wrapping_sub(end) < ROUTE_TAG_GRACE_NS)
            && let Some(tag) = tag_of(t)
        {
            return (tag, src::THREAD);
        }
    }
    // A hint holds only while its request is in flight (no grace).
    if let Some(t) = ROUTE_TAGS.get_ptr_mut(PROCESS_KEY | (pid_tgid >> 32))
        // SAFETY: pointer from a successful lookup of our own map's value.
        && unsafe { (*t).end_ns } == 0
        && let Some(tag) = tag_of(t)
    {
        return (tag, src::PROCESS);
    }
    (0, src::NONE)
}

//! The route-tag map shared by the HTTP and profile objects (see
//! `sonde_common::route`): the HTTP object tags the thread that read a
//! server request, and stamps the tag with the time its response's status
//! line was written; the profile object reads the tag of the sampled thread
//! (or its process's hint) into the sample's key. Both objects include this
//! file, so they declare the same map; the agent makes them share one
//! instance (pinned in a private bpffs while they load). Each object uses
//! one side: the other functions are dead code there.

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

/// tid (or `PROCESS_KEY | tgid`) -> route tag.
#[map]
static ROUTE_TAGS: LruHashMap<u64, RouteTagValue> = LruHashMap::with_max_entries(ROUTE_TAGS_MAX, 0);

/// The tag being computed: a copy of the request's first bytes and the
/// hash state, per CPU (the `bpf_loop` callback reads it).
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
    // SAFETY: this CPU's own scratch slot; the HTTP programs do not nest
    // on one CPU.
    let s = unsafe { &mut *s };
    let i = i as usize;
    if i >= s.len as usize || i >= HTTP_PREFIX_LEN {
        return 1;
    }
    if s.state.step(s.line[i]) { 0 } else { 1 }
}

/// [`sonde_common::route::route_tag`] of `line[..len]`, as a `bpf_loop`
/// (an inline loop made the verifier walk every path through it).
#[inline(always)]
fn tag_of(line: &[u8; HTTP_PREFIX_LEN], len: u16) -> Option<u32> {
    let s = ROUTE_TAG_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's own scratch slot, as in `tag_step`.
    let s = unsafe { &mut *s };
    s.state = TagState::new();
    s.len = u32::from(len);
    // SAFETY: both are 160-byte arrays in map values; a non-overlapping
    // copy compiles to word moves.
    unsafe { core::ptr::copy_nonoverlapping(line.as_ptr(), s.line.as_mut_ptr(), HTTP_PREFIX_LEN) };
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
    Some(s.state.finish())
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

/// Writer (HTTP object): the current thread started serving the request
/// whose first `len` bytes are `line`.
#[inline(always)]
pub fn begin(line: &[u8; HTTP_PREFIX_LEN], len: u16) {
    if !on() {
        return;
    }
    let Some(tag) = tag_of(line, len) else {
        return;
    };
    let v = RouteTagValue {
        tag,
        _pad: 0,
        end_ns: 0,
    };
    let id = bpf_get_current_pid_tgid();
    let _ = ROUTE_TAGS.insert(id & 0xffff_ffff, v, 0);
    let _ = ROUTE_TAGS.insert(PROCESS_KEY | (id >> 32), v, 0);
}

/// Writer (HTTP object): the current thread wrote the response's status
/// line: its tag now holds only for the grace period.
#[inline(always)]
pub fn end() {
    if !on() {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(mine) = ROUTE_TAGS.get_ptr_mut(id & 0xffff_ffff) else {
        return;
    };
    let proc_key = PROCESS_KEY | (id >> 32);
    // SAFETY: pointers from successful lookups of 16-byte values; a racing
    // update can at worst leave or drop a hint, or the stamp.
    unsafe {
        // The process hint goes only if it still names this request's
        // route (another thread may have started one since).
        if let Some(hint) = ROUTE_TAGS.get_ptr(proc_key)
            && (*hint).tag == (*mine).tag
        {
            let _ = ROUTE_TAGS.remove(proc_key);
        }
        (*mine).end_ns = bpf_ktime_get_ns();
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
    if let Some(t) = ROUTE_TAGS.get_ptr(pid_tgid & 0xffff_ffff) {
        // SAFETY: pointer from a successful lookup of a 16-byte value.
        let (tag, end) = unsafe { ((*t).tag, (*t).end_ns) };
        // SAFETY: helper without arguments.
        if end == 0 || unsafe { bpf_ktime_get_ns() }.wrapping_sub(end) < ROUTE_TAG_GRACE_NS {
            return (tag, src::THREAD);
        }
    }
    if let Some(t) = ROUTE_TAGS.get_ptr(PROCESS_KEY | (pid_tgid >> 32)) {
        // SAFETY: as above.
        return (unsafe { (*t).tag }, src::PROCESS);
    }
    (0, src::NONE)
}

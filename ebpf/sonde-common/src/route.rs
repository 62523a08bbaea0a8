//! Route tags: the link between a thread serving an HTTP request and the
//! CPU samples taken of it.
//!
//! The HTTP object writes, at a server request's start, `thread -> request
//! line` (and `process -> request line`, a hint for threads that do not
//! touch the socket) into [`ROUTE_TAGS`](ROUTE_TAGS_MAX), and stamps the
//! thread's entry when the response's status line is written; the profile
//! object reads them when it builds a sample's key. The two objects share
//! the one map (the agent pins it in a private bpffs while both load).
//!
//! The writer only copies the request's first bytes: hashing them costs a
//! loop over the line (~0.4 us per request as a `bpf_loop`), which is paid
//! only when a sample lands on the thread, by the reader, and cached in the
//! entry ([`RouteTagValue::tag`]). Most requests are never sampled.
//!
//! The kernel cannot run the agent's route normaliser, so the tag is a hash
//! of the method and a coarsely normalised path ([`route_tag`]): segments
//! that start with a digit, or are long and contain one (hex ids, UUIDs),
//! hash as one placeholder, so `/items/1` and `/items/2` share a tag and
//! the keys stay bounded. The agent computes the same function on the
//! request prefix of each HTTP event it receives and keeps the dictionary
//! tag -> (service, method, route). One copy of the function serves both
//! sides.

use crate::http::HTTP_PREFIX_LEN;

/// Entries of the shared tag map (threads that served a request, and
/// processes with one in flight). LRU: a thread whose response was never
/// seen ages out. Each entry holds a request line (~190 B with the
/// kernel's element header): 8192 of them are ~1.5 MiB of kernel memory.
pub const ROUTE_TAGS_MAX: u32 = 8_192;

/// Key bit of a process-wide hint (`PROCESS_KEY | tgid`); a thread's entry
/// is keyed by its tid alone.
pub const PROCESS_KEY: u64 = 1 << 32;

/// A thread's (or process's) entry in the shared map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTagValue {
    /// [`route_tag`] of `line[..len]`; 0 until a reader first needed it
    /// (the writer does not hash, see the module header).
    pub tag: u32,
    /// Valid bytes in `line`.
    pub len: u16,
    pub _pad: u16,
    /// Which request this is (its start time): the status line removes the
    /// process hint only if the hint is still this request's.
    pub id: u64,
    /// `bpf_ktime_get_ns()` when the response's status line was written, 0
    /// while the request is being handled. The tag still holds for
    /// [`ROUTE_TAG_GRACE_NS`] after it: the response's body and the
    /// request's teardown run after the status line (nginx's `sendfile`).
    pub end_ns: u64,
    /// The request's first bytes, as the HTTP event carries them.
    pub line: [u8; HTTP_PREFIX_LEN],
}

const _: () = assert!(core::mem::size_of::<RouteTagValue>() == 24 + HTTP_PREFIX_LEN);

/// How long after its status line a thread's CPU still counts for the
/// request; later, or once the thread reads another request, it does not.
pub const ROUTE_TAG_GRACE_NS: u64 = 10_000_000;

crate::user_pod!(RouteTagValue);

/// `StackKey::route_src`: where a sample's tag came from.
pub mod src {
    /// No request in flight on the thread or in its process.
    pub const NONE: u8 = 0;
    /// The sampled thread read a request and has not answered it yet.
    pub const THREAD: u8 = 1;
    /// Another thread of the process did: a hint, not an attribution.
    pub const PROCESS: u8 = 2;
}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

#[inline(always)]
fn mix(h: u32, b: u8) -> u32 {
    (h ^ b as u32).wrapping_mul(FNV_PRIME)
}

/// Segments at least this long that contain a digit are ids (hex hashes,
/// UUIDs, tokens).
const LONG_ID: u32 = 16;

/// The tag of a request line's method and path: FNV-1a over the method, a
/// space and the path (query and fragment dropped), with each id-like path
/// segment replaced by `#`. Never 0 (0 means "no tag"). `len` bytes of
/// `line` (the request's first bytes) are valid.
pub fn route_tag(line: &[u8], len: usize) -> u32 {
    let mut s = TagState::new();
    for &b in &line[..len.min(line.len())] {
        if !s.step(b) {
            break;
        }
    }
    s.finish()
}

/// [`route_tag`] one byte at a time, with fixed-size state: the kernel
/// runs [`TagState::step`] as a `bpf_loop` callback (an inline loop over
/// the prefix made the verifier walk every path through it: 1M
/// instructions).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagState {
    pub h: u32,
    /// The current path segment's own hash and length.
    pub seg: u32,
    pub seg_len: u32,
    /// 0: method, 1: path, 2: done.
    pub phase: u8,
    /// The segment's first byte is a digit / it has a digit.
    pub seg_first_digit: u8,
    pub seg_digit: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<TagState>() == 16);

impl Default for TagState {
    fn default() -> Self {
        Self::new()
    }
}

impl TagState {
    pub const fn new() -> Self {
        Self {
            h: FNV_OFFSET,
            seg: FNV_OFFSET,
            seg_len: 0,
            phase: 0,
            seg_first_digit: 0,
            seg_digit: 0,
            _pad: 0,
        }
    }

    /// Feeds one byte; false once the path has ended (the rest of the line
    /// does not matter).
    #[inline(always)]
    pub fn step(&mut self, b: u8) -> bool {
        if self.phase == 0 {
            self.h = mix(self.h, b);
            if b == b' ' {
                self.phase = 1;
            }
            return true;
        }
        if self.phase != 1 {
            return false;
        }
        let end = b == b' ' || b == b'?' || b == b'#' || b == b'\r' || b == b'\n';
        if end || b == b'/' {
            self.close_segment();
            if end {
                self.phase = 2;
                return false;
            }
            self.h = mix(self.h, b'/');
            return true;
        }
        let digit = b.is_ascii_digit() as u8;
        if self.seg_len == 0 {
            self.seg_first_digit = digit;
        }
        self.seg_digit |= digit;
        self.seg_len += 1;
        self.seg = mix(self.seg, b);
        true
    }

    /// The tag of what was fed.
    #[inline(always)]
    pub fn finish(&self) -> u32 {
        let mut s = *self;
        if s.phase == 1 {
            // The path ran to the end of what was captured.
            s.close_segment();
        }
        if s.h == 0 { 1 } else { s.h }
    }

    #[inline(always)]
    fn close_segment(&mut self) {
        if self.seg_len > 0 {
            let h = self.h;
            self.h =
                if self.seg_first_digit != 0 || (self.seg_digit != 0 && self.seg_len >= LONG_ID) {
                    mix(h, b'#')
                } else {
                    // The segment's own hash folded in as four bytes.
                    let seg = self.seg;
                    let h = mix(h, seg as u8);
                    let h = mix(h, (seg >> 8) as u8);
                    let h = mix(h, (seg >> 16) as u8);
                    mix(h, (seg >> 24) as u8)
                };
        }
        self.seg = FNV_OFFSET;
        self.seg_len = 0;
        self.seg_first_digit = 0;
        self.seg_digit = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> u32 {
        let n = s.len().min(HTTP_PREFIX_LEN);
        route_tag(s.as_bytes(), n)
    }

    #[test]
    fn ids_collapse_and_routes_differ() {
        let a = tag("GET /items/1 HTTP/1.1\r\n");
        assert_eq!(a, tag("GET /items/42?x=1 HTTP/1.1\r\nHost: x\r\n"));
        assert_eq!(
            tag("GET /u/0f8fad5b-d9cb-469f-a165-70867728950e HTTP/1.1"),
            tag("GET /u/deadbeefdeadbeef01 HTTP/1.1")
        );
        assert_ne!(a, tag("POST /items/1 HTTP/1.1"));
        assert_ne!(a, tag("GET /items HTTP/1.1"));
        assert_ne!(a, tag("GET /items/x HTTP/1.1"));
        assert_ne!(tag("GET /heavy HTTP/1.1"), tag("GET /cheap HTTP/1.1"));
        // Names with digits that are not ids stay apart.
        assert_ne!(tag("GET /v1/a HTTP/1.1"), tag("GET /v2/a HTTP/1.1"));
        assert_ne!(a, 0);
    }

    #[test]
    fn cut_lines_and_garbage_still_hash() {
        // A path longer than the captured prefix: its tag is that of the
        // part captured, stable from request to request.
        let mut long = [b'a'; 400];
        long[..5].copy_from_slice(b"GET /");
        let long = core::str::from_utf8(&long).unwrap();
        assert_eq!(tag(long), tag(&long[..HTTP_PREFIX_LEN]));
        assert_ne!(tag(long), tag(&long[..HTTP_PREFIX_LEN - 1]));
        assert_ne!(tag(""), 0);
        assert_ne!(tag("GET"), 0);
    }
}

//! HTTP RED aggregated in the kernel: the path dictionary's key, the
//! aggregation map's key and value, and the bucket functions both sides
//! use (the kernel to count, the agent to label), so they cannot disagree.
//!
//! The dictionary maps the raw bytes that decide a request's labels
//! (process, local port, role, method token and path up to the first
//! `' '`, `?`, `#`, CR or LF) to a series id the agent allocated after it
//! labelled one such request from its event. A request found there is
//! counted into `HTTP_AGG[(id, status)]` in the kernel and sends no event.
//!
//! Everything here is pure, loop-bounded and panic-free: the kernel
//! programs inline it.

use super::HTTP_PREFIX_LEN;

/// Bytes of a request line (method token and path) a dictionary key holds:
/// a request whose path ends later stays on the event path.
pub const ROUTE_KEY_LEN: usize = 96;
const ROUTE_KEY_WORDS: usize = ROUTE_KEY_LEN / 8;
const _: () = assert!(ROUTE_KEY_LEN.is_multiple_of(8) && ROUTE_KEY_LEN <= HTTP_PREFIX_LEN);

/// Key of the kernel's path dictionary (`HTTP_ROUTES`): the raw bytes, so
/// two requests share an entry only if everything their labels are made
/// of is equal (no hash to collide).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HttpRouteKey {
    pub tgid: u32,
    /// Local port (server; 0 for clients).
    pub lport: u16,
    /// An `HttpRole` value.
    pub role: u8,
    /// Bytes of `line` in use (method token and path); the rest is zero.
    pub len: u8,
    /// The request line up to the end of its path, as little-endian words.
    pub line: [u64; ROUTE_KEY_WORDS],
}

const _: () = assert!(core::mem::size_of::<HttpRouteKey>() == 8 + ROUTE_KEY_LEN);

/// 0x80 in each byte of `w` that is zero, nothing elsewhere (the exact
/// form: no false positives next to a zero byte).
#[inline(always)]
const fn zero_bytes(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((w & LOW7).wrapping_add(LOW7)) | w | LOW7)
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// 0x80 in each byte of `w` that ends a request target.
#[inline(always)]
const fn target_ends(w: u64) -> u64 {
    zero_bytes(w ^ (ONES * b' ' as u64))
        | zero_bytes(w ^ (ONES * b'?' as u64))
        | zero_bytes(w ^ (ONES * b'#' as u64))
        | zero_bytes(w ^ (ONES * b'\r' as u64))
        | zero_bytes(w ^ (ONES * b'\n' as u64))
}

// Branch-free helpers. BPF has no conditional move: every compare is a
// jump, and the verifier walks the rest of the program once per distinct
// outcome it cannot merge. Bucket searches and the key scan written with
// compares took the socket-layer programs past the 1M-instruction limit.

/// 1 if `x != 0`, else 0.
#[inline(always)]
const fn nonzero(x: u64) -> u64 {
    (x | x.wrapping_neg()) >> 63
}

/// All ones if `x != 0`, else 0.
#[inline(always)]
const fn nonzero_mask(x: u64) -> u64 {
    0u64.wrapping_sub(nonzero(x))
}

/// All ones if `a < b` (both below 2^63), else 0.
#[inline(always)]
const fn lt_mask(a: u64, b: u64) -> u64 {
    0u64.wrapping_sub(a.wrapping_sub(b) >> 63)
}

/// `a` where `mask` is all ones, else `b`.
#[inline(always)]
const fn select(mask: u64, a: u64, b: u64) -> u64 {
    (a & mask) | (b & !mask)
}

#[inline(always)]
fn word(prefix: &[u8; HTTP_PREFIX_LEN], o: usize) -> u64 {
    u64::from_le_bytes([
        prefix[o],
        prefix[o + 1],
        prefix[o + 2],
        prefix[o + 3],
        prefix[o + 4],
        prefix[o + 5],
        prefix[o + 6],
        prefix[o + 7],
    ])
}

/// Fills `key.line`/`key.len` from a request's first bytes (a request
/// line: the method token and its space come first): the method token and
/// the target up to the first byte of `' ' ? # \r \n`, which is where
/// [`super::parse::parse_request_line`] and the route tag stop reading.
/// `false` (key unusable) when that end is not within the first
/// [`ROUTE_KEY_LEN`] bytes of the `prefix_len` valid ones.
#[inline(always)]
pub fn fill_route_key(
    key: &mut HttpRouteKey,
    prefix: &[u8; HTTP_PREFIX_LEN],
    prefix_len: usize,
) -> bool {
    // The method's own space (the first space of the first word) and what
    // precedes it are not the target's end: mask them out of word 0.
    let sp = zero_bytes(word(prefix, 0) ^ (ONES * b' ' as u64));
    let sp = sp & sp.wrapping_neg();
    let mut first = !(sp << 1).wrapping_sub(1);
    // All ones until the word holding the end; then 0.
    let mut alive = u64::MAX;
    // 0: not found (the end is never at byte 0).
    let mut end = 0u64;
    let mut i = 0;
    while i < ROUTE_KEY_WORDS {
        let w = word(prefix, i * 8);
        let hits = target_ends(w) & first;
        first = u64::MAX;
        // The lowest hit is 1 << (8k + 7): `bit` = 1 << 8k (0 if none),
        // `bit - 1` keeps the bytes before it (all of them if none), and a
        // multiply gathers k in the top byte (no ctz in BPF).
        let bit = (hits & hits.wrapping_neg()) >> 7;
        key.line[i] = w & bit.wrapping_sub(1) & alive;
        let k = (bit.wrapping_mul(0x0001_0203_0405_0607) >> 56) & 7;
        end |= nonzero_mask(hits) & alive & ((i * 8) as u64 + k);
        alive &= !nonzero_mask(hits);
        i += 1;
    }
    if end == 0 || end >= prefix_len as u64 {
        return false;
    }
    key.len = end as u8;
    true
}

/// Key of the aggregation map (`HTTP_AGG`): a series id from the
/// dictionary and the response's status code.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HttpAggKey {
    pub id: u32,
    pub status: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<HttpAggKey>() == 8);

/// Upper bounds (inclusive, ns) of the duration buckets: the OTel
/// `http.*.request.duration` boundaries the agent exports, in seconds
/// 0.005 .. 10.
pub const DURATION_BOUNDS_NS: [u64; 14] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    75_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    750_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    7_500_000_000,
    10_000_000_000,
];

/// Upper bounds (inclusive, bytes) of the message-size buckets: 64 B ..
/// 16 MiB in x4 steps.
pub const SIZE_BOUNDS: [u64; 10] = [
    64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216,
];

/// Buckets of the `sonde http` latency summary (see [`log_bucket`]).
pub const LOG_BUCKETS: usize = 128;

/// Index of the bucket of `v` for `bounds` (sorted, each below 2^62):
/// the number of bounds below `v`, so `bounds.len()` is the +Inf bucket.
/// Compares by subtraction, without a jump.
#[inline(always)]
pub fn bucket<const N: usize>(v: u64, bounds: &[u64; N]) -> usize {
    let v = select(nonzero_mask(v >> 62), 1 << 62, v);
    let mut n = 0;
    let mut i = 0;
    while i < N {
        n += (bounds[i].wrapping_sub(v) >> 63) as usize;
        i += 1;
    }
    n
}

/// Latency-summary bucket of a duration: four linear steps per power of
/// two of nanoseconds from 1024 ns (bucket `4e + m` holds
/// [(4+m), (5+m)) x 2^(e+8) ns; shorter durations land in bucket 0), up to
/// 2^42 ns (~73 minutes; longer ones land in the last bucket). Without a
/// jump: halving steps by shifts, clamps by masks.
#[inline(always)]
pub fn log_bucket(ns: u64) -> usize {
    const MAX: u64 = (1 << 42) - 1;
    let x = select(nonzero_mask(ns >> 42), MAX, ns);
    let x = select(lt_mask(x, 1024), 1024, x);
    let (mut y, mut e) = (x, 0u64);
    let mut sh = 32;
    while sh > 0 {
        let s = nonzero(y >> sh) * sh;
        y >>= s;
        e += s;
        sh >>= 1;
    }
    // e in 10..=41.
    let m = (x >> (e - 2)) & 3;
    (4 * (e - 10) + m) as usize
}

/// Upper bound of [`log_bucket`] `i`, in seconds (exclusive; within +25 %
/// of any duration of 1024 ns or more in the bucket).
pub fn log_bucket_upper_secs(i: usize) -> f64 {
    let (e, m) = (i / 4, (i % 4) as f64);
    (5.0 + m) * (1u64 << (e + 8).min(63)) as f64 / 1e9
}

/// One (series, status)'s exchanges counted in the kernel, per CPU; every
/// field only grows (the agent reads differences, never resets them).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpAgg {
    /// Sum of durations (ns) of the exchanges in `dur`.
    pub dur_sum_ns: u64,
    /// Sums of the final request/response sizes of the exchanges in `req`.
    pub req_sum: u64,
    pub resp_sum: u64,
    /// Exchanges per [`DURATION_BOUNDS_NS`] bucket (last: +Inf).
    pub dur: [u64; DURATION_BOUNDS_NS.len() + 1],
    /// Final request / response sizes per [`SIZE_BOUNDS`] bucket (counted
    /// when the exchange's last byte is known: at the next request or the
    /// close).
    pub req: [u64; SIZE_BOUNDS.len() + 1],
    pub resp: [u64; SIZE_BOUNDS.len() + 1],
    /// Exchanges per [`log_bucket`] (wrapping; the agent reads differences).
    pub log: [u32; LOG_BUCKETS],
}

const _: () = assert!(core::mem::size_of::<HttpAgg>() == 8 * (3 + 15 + 11 + 11) + 4 * LOG_BUCKETS);

impl HttpAgg {
    /// Counts an exchange of `ns` nanoseconds.
    #[inline(always)]
    pub fn add_duration(&mut self, ns: u64) {
        self.dur_sum_ns = self.dur_sum_ns.wrapping_add(ns);
        let b = bucket(ns, &DURATION_BOUNDS_NS);
        if b < self.dur.len() {
            self.dur[b] = self.dur[b].wrapping_add(1);
        }
        let l = log_bucket(ns);
        if l < LOG_BUCKETS {
            self.log[l] = self.log[l].wrapping_add(1);
        }
    }

    /// Counts an exchange's final request and response sizes.
    #[inline(always)]
    pub fn add_sizes(&mut self, req: u64, resp: u64) {
        self.req_sum = self.req_sum.wrapping_add(req);
        self.resp_sum = self.resp_sum.wrapping_add(resp);
        let b = bucket(req, &SIZE_BOUNDS);
        if b < self.req.len() {
            self.req[b] = self.req[b].wrapping_add(1);
        }
        let b = bucket(resp, &SIZE_BOUNDS);
        if b < self.resp.len() {
            self.resp[b] = self.resp[b].wrapping_add(1);
        }
    }
}

crate::user_pod!(HttpRouteKey, HttpAggKey, HttpAgg);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::http::parse::{Method, parse_request_line};

    fn prefix(s: &[u8]) -> ([u8; HTTP_PREFIX_LEN], usize) {
        let mut p = [0xAAu8; HTTP_PREFIX_LEN];
        let n = s.len().min(HTTP_PREFIX_LEN);
        p[..n].copy_from_slice(&s[..n]);
        (p, n)
    }

    fn key(s: &[u8]) -> Option<HttpRouteKey> {
        let (p, n) = prefix(s);
        parse_request_line(&p[..n])?;
        let mut k = HttpRouteKey {
            tgid: 1,
            lport: 80,
            role: 1,
            len: 0,
            line: [u64::MAX; ROUTE_KEY_WORDS],
        };
        fill_route_key(&mut k, &p, n).then_some(k)
    }

    fn line(k: &HttpRouteKey) -> Vec<u8> {
        let b: Vec<u8> = k.line.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert!(b[k.len as usize..].iter().all(|&x| x == 0), "{b:?}");
        b[..k.len as usize].to_vec()
    }

    #[test]
    fn key_is_method_and_path() {
        let k = key(b"GET /items/42?token=x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(line(&k), b"GET /items/42");
        let k = key(b"OPTIONS * HTTP/1.1\r\n").unwrap();
        assert_eq!(line(&k), b"OPTIONS *");
        let k = key(b"DELETE /a#frag HTTP/1.1\r\n").unwrap();
        assert_eq!(line(&k), b"DELETE /a");
        // The end falls exactly on a word boundary, and one byte before.
        let k = key(b"GET /abcdefghijk HTTP/1.1\r\n").unwrap();
        assert_eq!(line(&k), b"GET /abcdefghijk");
        let k = key(b"GET /abcdefghij HTTP/1.1\r\n").unwrap();
        assert_eq!(line(&k), b"GET /abcdefghij");
    }

    #[test]
    fn same_key_means_same_labels() {
        // Query, headers and version differ: one key, one parse result.
        let a = key(b"GET /x/1?q=1 HTTP/1.1\r\nUser-Agent: a\r\n").unwrap();
        let b = key(b"GET /x/1 HTTP/1.0\r\nHost: b\r\n").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, key(b"GET /x/2 HTTP/1.1\r\n").unwrap());
        assert_ne!(a, key(b"POST /x/1 HTTP/1.1\r\n").unwrap());
        // Every prefix of a longer request's key region that parses ends
        // where the parser ends.
        let req = b"PATCH /users/7/posts/99?x HTTP/1.1\r\n";
        let (p, n) = prefix(req);
        let (m, path) = parse_request_line(&p[..n]).unwrap();
        assert_eq!(m, Method::Patch);
        let k = key(req).unwrap();
        assert_eq!(&line(&k)[m.token_len()..], path.as_bytes());
    }

    #[test]
    fn long_or_truncated_paths_have_no_key() {
        let mut long = b"GET /".to_vec();
        long.extend(core::iter::repeat_n(b'a', ROUTE_KEY_LEN));
        long.extend(b" HTTP/1.1\r\n");
        assert!(key(&long).is_none());
        // The end just inside the key: usable.
        let mut fits = b"GET /".to_vec();
        fits.extend(core::iter::repeat_n(b'a', ROUTE_KEY_LEN - 6));
        fits.extend(b" HTTP/1.1\r\n");
        assert_eq!(key(&fits).unwrap().len as usize, ROUTE_KEY_LEN - 1);
        // A read that stopped inside the path: the bytes after it are stale.
        assert!(key(b"GET /items/12").is_none());
    }

    #[test]
    fn buckets_match_the_bounds() {
        assert_eq!(bucket(0, &DURATION_BOUNDS_NS), 0);
        assert_eq!(bucket(5_000_000, &DURATION_BOUNDS_NS), 0);
        assert_eq!(bucket(5_000_001, &DURATION_BOUNDS_NS), 1);
        assert_eq!(bucket(300_000_000, &DURATION_BOUNDS_NS), 7);
        assert_eq!(bucket(u64::MAX, &DURATION_BOUNDS_NS), 14);
        assert_eq!(bucket(64, &SIZE_BOUNDS), 0);
        assert_eq!(bucket(65, &SIZE_BOUNDS), 1);
        assert_eq!(bucket(1 << 30, &SIZE_BOUNDS), 10);
        for (i, b) in DURATION_BOUNDS_NS.windows(2).enumerate() {
            assert!(b[0] < b[1], "{i}");
        }
    }

    #[test]
    fn log_buckets_bound_their_values() {
        for ns in [
            1024u64,
            1500,
            3000,
            999_999,
            1_000_000,
            300_000_000,
            10u64.pow(12),
        ] {
            let i = log_bucket(ns);
            let up = log_bucket_upper_secs(i);
            let secs = ns as f64 / 1e9;
            assert!(
                secs < up && up <= secs * 1.25 + 1e-15,
                "{ns}: bucket {i} up {up}"
            );
            if i > 0 {
                assert!(log_bucket_upper_secs(i - 1) <= secs, "{ns}: {i}");
            }
        }
        assert_eq!(log_bucket(0), 0);
        assert_eq!(log_bucket(u64::MAX), LOG_BUCKETS - 1);
        assert!(log_bucket_upper_secs(LOG_BUCKETS - 1) > 4000.0);
    }

    #[test]
    fn buckets_are_the_plain_search() {
        let mut v = 0u64;
        while v < 20_000_000_000 {
            let plain = DURATION_BOUNDS_NS.iter().filter(|b| v > **b).count();
            assert_eq!(bucket(v, &DURATION_BOUNDS_NS), plain, "{v}");
            let plain = SIZE_BOUNDS.iter().filter(|b| v > **b).count();
            assert_eq!(bucket(v, &SIZE_BOUNDS), plain, "{v}");
            v = v * 3 / 2 + 1;
        }
        for b in DURATION_BOUNDS_NS.iter().chain(&SIZE_BOUNDS) {
            for v in [b - 1, *b, b + 1] {
                let plain = DURATION_BOUNDS_NS.iter().filter(|x| v > **x).count();
                assert_eq!(bucket(v, &DURATION_BOUNDS_NS), plain, "{v}");
            }
        }
        assert_eq!(bucket(u64::MAX, &SIZE_BOUNDS), SIZE_BOUNDS.len());
        // Log buckets never go down as durations grow.
        let (mut v, mut last) = (0u64, 0);
        while v < 1 << 43 {
            let b = log_bucket(v);
            assert!(b >= last && b < LOG_BUCKETS, "{v}: {b} after {last}");
            last = b;
            v = v + v / 7 + 1;
        }
    }

    #[test]
    fn agg_adds() {
        // SAFETY: all-integer POD.
        let mut a: HttpAgg = unsafe { core::mem::zeroed() };
        a.add_duration(7_000_000);
        a.add_duration(20_000_000_000);
        a.add_sizes(100, 10);
        assert_eq!(a.dur[1], 1);
        assert_eq!(a.dur[14], 1);
        assert_eq!(a.dur_sum_ns, 20_007_000_000);
        assert_eq!(
            (a.req[1], a.resp[0], a.req_sum, a.resp_sum),
            (1, 1, 100, 10)
        );
        assert_eq!(a.log.iter().sum::<u32>(), 2);
    }
}

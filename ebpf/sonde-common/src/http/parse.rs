//! Recognizing HTTP/1.x on the wire: what the first bytes of a message are
//! (request line, status line, HTTP/2 preface, anything else), and the
//! method and target of a request line.
//!
//! One copy for both sides: the kernel programs classify the first
//! [`HEAD_LEN`] bytes of every message they look at with [`classify_head`],
//! and the agent parses the stored request prefix with
//! [`parse_request_line`], so the two cannot disagree on what a request is.
//!
//! Everything here is pure, never panics and has no loop over the input in
//! the kernel-side function ([`classify_head`] is fixed compares on a
//! fixed-size array, inlined into each program, which the verifier accepts
//! without any bounds proof). The functions taking `&[u8]` of any length are
//! the entry points for host tests and fuzzing.

/// Bytes of a message's start that [`classify_head`] looks at: the longest
/// method token with its space (`OPTIONS `, 8), and the HTTP/2 preface's
/// first line (`PRI * HTTP/2.0`, 14).
pub const HEAD_LEN: usize = 16;

/// Request methods recognized on the wire (RFC 9110 plus PATCH). Anything
/// else is not a request line: the connection is not followed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Get = 0,
    Post = 1,
    Put = 2,
    Delete = 3,
    Head = 4,
    Patch = 5,
    Options = 6,
    Connect = 7,
    Trace = 8,
}

impl Method {
    /// Every method, in declaration order.
    pub const ALL: [Method; 9] = [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Head,
        Method::Patch,
        Method::Options,
        Method::Connect,
        Method::Trace,
    ];

    /// The method token as it appears on the wire (and in metric labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
        }
    }

    /// Bytes the method token and the space after it take at the start of
    /// a request line: where the request target begins.
    pub const fn token_len(self) -> usize {
        self.as_str().len() + 1
    }
}

/// What the first bytes of a message are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// A request line with this method (`GET `, `POST `, ...).
    Request(Method),
    /// An HTTP/1.x status line with this status code (`HTTP/1.1 200`).
    Response(u16),
    /// `PRI * HTTP/2.0`: HTTP/2 with prior knowledge, out of scope.
    Http2,
    /// Anything else: a body chunk, another protocol, garbage.
    Other,
}

/// Classifies the first [`HEAD_LEN`] bytes of a message. A message shorter
/// than that is passed zero-padded: no token recognized here contains a
/// NUL byte, so padding never turns a partial token into a match.
///
/// Kernel-side: compares only, no loop and no index beyond the array, so it
/// inlines into a few dozen instructions the verifier checks at once.
#[inline(always)]
pub fn classify_head(h: &[u8; HEAD_LEN]) -> Head {
    if &h[..5] == b"HTTP/" {
        return match status_line(h) {
            Some(code) => Head::Response(code),
            None => Head::Other,
        };
    }
    match request_method(h) {
        Some(m) => Head::Request(m),
        None if &h[..14] == b"PRI * HTTP/2.0" => Head::Http2,
        None => Head::Other,
    }
}

/// [`classify_head`] of a message of any length: bytes in, classification
/// out (only the first [`HEAD_LEN`] bytes matter).
#[inline]
pub fn classify(msg: &[u8]) -> Head {
    let mut h = [0u8; HEAD_LEN];
    let n = msg.len().min(HEAD_LEN);
    h[..n].copy_from_slice(&msg[..n]);
    classify_head(&h)
}

/// The method of a request line starting `h` (the token and its space).
#[inline(always)]
fn request_method(h: &[u8; HEAD_LEN]) -> Option<Method> {
    // Grouped by token length, so each group compares one prefix of `h`.
    let m = match h[3] {
        b' ' if &h[..3] == b"GET" => Method::Get,
        b' ' if &h[..3] == b"PUT" => Method::Put,
        _ if &h[..5] == b"POST " => Method::Post,
        _ if &h[..5] == b"HEAD " => Method::Head,
        _ if &h[..6] == b"PATCH " => Method::Patch,
        _ if &h[..6] == b"TRACE " => Method::Trace,
        _ if &h[..7] == b"DELETE " => Method::Delete,
        _ if &h[..8] == b"OPTIONS " => Method::Options,
        _ if &h[..8] == b"CONNECT " => Method::Connect,
        _ => return None,
    };
    Some(m)
}

/// The status code of an `HTTP/1.x NNN` status line (`h` starts with
/// `HTTP/`): the minor version is any single character, the code three
/// ASCII digits.
#[inline(always)]
fn status_line(h: &[u8; HEAD_LEN]) -> Option<u16> {
    if h[5] != b'1' || h[6] != b'.' || h[8] != b' ' {
        return None;
    }
    status_code([h[9], h[10], h[11]])
}

/// Three ASCII digits as a status code (100-999 and below: `000` is 0).
#[inline(always)]
pub fn status_code(d: [u8; 3]) -> Option<u16> {
    if !d[0].is_ascii_digit() || !d[1].is_ascii_digit() || !d[2].is_ascii_digit() {
        return None;
    }
    Some((d[0] - b'0') as u16 * 100 + (d[1] - b'0') as u16 * 10 + (d[2] - b'0') as u16)
}

/// Whether a status code ends the exchange: 1xx responses (100 Continue,
/// 103 Early Hints) are followed by the final one.
#[inline(always)]
pub fn is_final_status(code: u16) -> bool {
    code >= 200
}

/// Method and request target of a request line at the start of `prefix`,
/// with the query string and fragment cut off and an absolute-form target
/// (`http://host/path`, sent to proxies) reduced to its path. `None` when
/// `prefix` does not start with a request line of a known method, or the
/// target is not a path (`/...`) or `*`, or is not UTF-8. A truncated
/// prefix (the kernel keeps the first bytes only) yields the target up to
/// the cut.
pub fn parse_request_line(prefix: &[u8]) -> Option<(Method, &str)> {
    let Head::Request(method) = classify(prefix) else {
        return None;
    };
    let rest = prefix.get(method.token_len()..)?;
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'?' || b == b'#' || b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    let raw = &rest[..end];
    let target = match core::str::from_utf8(raw) {
        Ok(t) => t,
        // The kernel's cut fell inside a multi-byte character: the target
        // up to the cut, as for any other truncation.
        Err(e) if end == rest.len() && e.error_len().is_none() => {
            core::str::from_utf8(&raw[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    // Absolute form: keep only the path. (Looked for only when the target
    // is not a path already: the substring search cost ~5 % of the agent's
    // drain CPU when done for every request.)
    let path = if target.starts_with('/') {
        target
    } else {
        match target.find("://") {
            Some(i) => {
                let authority_and_path = &target[i + 3..];
                authority_and_path
                    .find('/')
                    .map_or("/", |j| &authority_and_path[j..])
            }
            None => target,
        }
    };
    if !path.starts_with('/') && path != "*" {
        return None;
    }
    Some((method, path))
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;

    fn head(s: &[u8]) -> [u8; HEAD_LEN] {
        let mut h = [0u8; HEAD_LEN];
        h[..s.len()].copy_from_slice(s);
        h
    }

    #[test]
    fn every_method_is_a_request() {
        for m in Method::ALL {
            let line = [m.as_str().as_bytes(), b" /x HTTP/1.1"].concat();
            assert_eq!(classify(&line), Head::Request(m), "{}", m.as_str());
            assert_eq!(m.token_len(), m.as_str().len() + 1);
            // Without the space it is some other token.
            assert_eq!(classify(m.as_str().as_bytes()), Head::Other);
            // Lower case is not a method.
            let lower = m.as_str().as_bytes().to_ascii_lowercase();
            assert_eq!(
                classify(&[&lower[..], b" / HTTP/1.1"].concat()),
                Head::Other
            );
        }
    }

    #[test]
    fn near_misses_are_not_requests() {
        for s in [
            &b"GETS / HTTP/1.1"[..],
            b"GE",
            b" GET /",
            b"FOO / HTTP/1.1",
            b"POSTX /",
            b"OPTION /",
            b"",
        ] {
            assert_eq!(classify(s), Head::Other, "{:?}", s);
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(classify(b"HTTP/1.1 200 OK\r\n"), Head::Response(200));
        assert_eq!(classify(b"HTTP/1.0 404 Not Found"), Head::Response(404));
        assert_eq!(classify(b"HTTP/1.1 100 Continue"), Head::Response(100));
        // Exactly the 12 bytes a status code needs.
        assert_eq!(classify(b"HTTP/1.1 503"), Head::Response(503));
        assert_eq!(classify_head(&head(b"HTTP/1.1 204")), Head::Response(204));
        // Too short for the code, HTTP/2 status, malformed.
        assert_eq!(classify(b"HTTP/1.1 20"), Head::Other);
        assert_eq!(classify(b"HTTP/2 200 OK"), Head::Other);
        assert_eq!(classify(b"HTTP/1.1  200"), Head::Other);
        assert_eq!(classify(b"HTTP/1.1 2x0"), Head::Other);
        assert_eq!(classify(b"HTTP/11 200"), Head::Other);
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_code(*b"200"), Some(200));
        assert_eq!(status_code(*b"999"), Some(999));
        assert_eq!(status_code(*b"000"), Some(0));
        assert_eq!(status_code(*b"20 "), None);
        assert_eq!(status_code(*b"/00"), None);
        assert_eq!(status_code(*b"2:0"), None);
        assert!(!is_final_status(100));
        assert!(!is_final_status(199));
        assert!(is_final_status(200));
        assert!(is_final_status(500));
    }

    #[test]
    fn http2_preface() {
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Head::Http2);
        assert_eq!(classify(b"PRI * HTTP/2.0"), Head::Http2);
        assert_eq!(classify(b"PRI * HTTP/1.1"), Head::Other);
    }

    #[test]
    fn only_the_head_matters() {
        let mut long: Vec<u8> = b"GET /".into();
        long.resize(4096, b'a');
        assert_eq!(classify(&long), Head::Request(Method::Get));
        assert_eq!(classify(&long[..HEAD_LEN]), Head::Request(Method::Get));
    }

    #[test]
    fn any_bytes_classify_without_panicking() {
        // Every 2-byte start with a method-like or status-like rest, at
        // every length up to past HEAD_LEN.
        let tails: [&[u8]; 3] = [b"T / HTTP/1.1\r\n", b"TP/1.1 200 OK", b"\xff\x00 \r\n"];
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for tail in tails {
                    let msg = [&[a, b][..], tail].concat();
                    for n in 0..=msg.len() {
                        let _ = classify(&msg[..n]);
                        let _ = parse_request_line(&msg[..n]);
                    }
                }
            }
        }
    }

    #[test]
    fn request_lines() {
        fn p(s: &[u8]) -> Option<(&'static str, &str)> {
            parse_request_line(s).map(|(m, path)| (m.as_str(), path))
        }
        assert_eq!(
            p(b"GET /a/b?secret=1 HTTP/1.1\r\nHost: x\r\n"),
            Some(("GET", "/a/b"))
        );
        assert_eq!(p(b"POST /x#f HTTP/1.1"), Some(("POST", "/x")));
        assert_eq!(p(b"DELETE /items/7\r\n"), Some(("DELETE", "/items/7")));
        assert_eq!(p(b"OPTIONS * HTTP/1.1"), Some(("OPTIONS", "*")));
        // Truncated by the kernel's prefix length.
        assert_eq!(p(b"GET /trunc"), Some(("GET", "/trunc")));
        assert_eq!(p(b"GET "), None);
        // Absolute form (proxies).
        assert_eq!(p(b"GET http://h:1/p?q HTTP/1.1"), Some(("GET", "/p")));
        assert_eq!(p(b"GET http://h:1 HTTP/1.1"), Some(("GET", "/")));
        assert_eq!(p(b"FOO / HTTP/1.1"), None);
        assert_eq!(p(b"GET nope HTTP/1.1"), None);
        assert_eq!(p(b"GET /\xff\xfe HTTP/1.1"), None);
        // Cut inside a character: up to the cut. Invalid bytes before the
        // cut, or a cut character that can never be completed, stay refused.
        assert_eq!(
            p("GET /caf\u{e9}".as_bytes()[..9].as_ref()),
            Some(("GET", "/caf"))
        );
        assert_eq!(p(b"GET /a\xffb"), None);
        assert_eq!(p(b"GET /a\xff"), None);
        assert_eq!(p(b"\x00\xff garbage"), None);
        assert_eq!(p(b"HTTP/1.1 200 OK"), None);
    }
}

//! From a request prefix to bounded labels: method, route.
//!
//! The prefix is untrusted bytes from a socket. Only the method token and
//! the path (query string and fragment stripped) are looked at; the path is
//! then normalized, either by a configured pattern (`/items/{id}`) or by a
//! heuristic that folds ids, numbers, uuids and hashes into `{id}`. Nothing
//! else of the request (headers, body, query) ever leaves this module.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sonde_common::http::parse;

/// Label value for routes beyond the per-service cap.
pub const OVERFLOW_ROUTE: &str = "other";
/// Label value when the request line cannot be parsed.
pub const UNPARSED_ROUTE: &str = "unparsed";

/// Method and raw path (without query) of a request line, if it is one.
/// The recognition is sonde-common's, the very code the kernel programs
/// classify messages with.
pub fn parse_request_line(prefix: &[u8]) -> Option<(&'static str, &str)> {
    parse::parse_request_line(prefix).map(|(method, path)| (method.as_str(), path))
}

/// A configured route pattern such as `/items/{id}/parts/{part}`: an
/// entry of `collectors.http.routes`, parsed (and refused) when the config
/// is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern {
    text: String,
    segments: Vec<Option<String>>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("route pattern {text:?} must start with '/'"));
        }
        let segments = text
            .split('/')
            .skip(1)
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                    None
                } else {
                    Some(s.to_owned())
                }
            })
            .collect();
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches(&self, path: &str) -> bool {
        let mut n = 0;
        for (i, seg) in path.split('/').skip(1).enumerate() {
            match self.segments.get(i) {
                None => return false,
                Some(Some(lit)) if lit != seg => return false,
                Some(None) if seg.is_empty() => return false,
                _ => {}
            }
            n = i + 1;
        }
        n == self.segments.len()
    }
}

impl TryFrom<String> for Pattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).map_err(|e| format!("collectors.http.routes: {e}"))
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.text
    }
}

/// Whether a path segment is an identifier rather than a name.
fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    // UUID 8-4-4-4-12.
    if b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
    {
        return true;
    }
    // Hex hashes / object ids (>= 16 hex chars with at least one digit).
    if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) && b.iter().any(u8::is_ascii_digit) {
        return true;
    }
    // Mixed tokens: long, with digits and letters (e.g. base64 ids, "a1b2c3d4e5").
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if b.len() >= 8 && digits * 3 >= b.len() {
        return true;
    }
    // Very long segments are never route names.
    b.len() > 64
}

/// Folds identifier-looking segments into `{id}`.
pub fn heuristic(path: &str) -> String {
    if path == "/" || path == "*" {
        return path.to_owned();
    }
    let mut out = String::with_capacity(path.len().min(128));
    for seg in path.split('/').skip(1) {
        out.push('/');
        if is_id(seg) {
            out.push_str("{id}");
        } else {
            // Bound the label length and keep it printable.
            out.extend(
                seg.chars()
                    .take(64)
                    .map(|c| if c.is_ascii_graphic() { c } else { '_' }),
            );
        }
        if out.len() > 256 {
            break;
        }
    }
    out
}

/// Normalizes paths to routes, with a per-service cap on distinct routes.
#[derive(Debug)]
pub struct RouteTable {
    patterns: Vec<Pattern>,
    max_per_service: usize,
    seen: HashMap<String, HashSet<String>>,
    /// Requests folded into `other`, per service.
    pub overflowed: u64,
}

impl RouteTable {
    pub fn new(patterns: Vec<Pattern>, max_per_service: usize) -> Self {
        Self {
            patterns,
            max_per_service,
            seen: HashMap::new(),
            overflowed: 0,
        }
    }

    /// The route label for `path` of `service`. Returns (route, overflowed).
    pub fn route(&mut self, service: &str, path: &str) -> (String, bool) {
        let route = self
            .patterns
            .iter()
            .find(|p| p.matches(path))
            .map(|p| p.text.clone())
            .unwrap_or_else(|| heuristic(path));
        let set = self.seen.entry(service.to_owned()).or_default();
        if set.contains(&route) {
            return (route, false);
        }
        if set.len() >= self.max_per_service {
            self.overflowed += 1;
            return (OVERFLOW_ROUTE.to_owned(), true);
        }
        set.insert(route.clone());
        (route, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line() {
        assert_eq!(
            parse_request_line(b"GET /a/b?secret=1 HTTP/1.1\r\nHost: x\r\n"),
            Some(("GET", "/a/b"))
        );
        assert_eq!(
            parse_request_line(b"POST /x#f HTTP/1.1"),
            Some(("POST", "/x"))
        );
        assert_eq!(parse_request_line(b"GET /trunc"), Some(("GET", "/trunc")));
        assert_eq!(
            parse_request_line(b"GET http://h:1/p?q HTTP/1.1"),
            Some(("GET", "/p"))
        );
        assert_eq!(parse_request_line(b"FOO / HTTP/1.1"), None);
        assert_eq!(parse_request_line(b"GET nope HTTP/1.1"), None);
        assert_eq!(parse_request_line(b"\x00\xff garbage"), None);
    }

    #[test]
    fn heuristic_folds_ids() {
        assert_eq!(heuristic("/items/123"), "/items/{id}");
        assert_eq!(
            heuristic("/u/550e8400-e29b-41d4-a716-446655440000/x"),
            "/u/{id}/x"
        );
        assert_eq!(heuristic("/c/0123456789abcdef0123"), "/c/{id}");
        assert_eq!(heuristic("/api/v1/users"), "/api/v1/users");
        assert_eq!(heuristic("/"), "/");
        assert_eq!(heuristic("/slow"), "/slow");
    }

    #[test]
    fn patterns_win_over_heuristic() {
        let mut t = RouteTable::new(vec![Pattern::parse("/files/{name}").unwrap()], 10);
        assert_eq!(t.route("s", "/files/report").0, "/files/{name}");
        assert_eq!(t.route("s", "/files/a/b").0, "/files/a/b");
        assert_eq!(t.route("s", "/items/7").0, "/items/{id}");
    }

    #[test]
    fn patterns_parse_from_config_strings() {
        let p: Pattern = serde_json::from_str(r#""/items/{id}""#).unwrap();
        assert_eq!(p.as_str(), "/items/{id}");
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""/items/{id}""#);
        let err = serde_json::from_str::<Pattern>(r#""items/{id}""#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("collectors.http.routes") && err.contains("must start with '/'"),
            "{err}"
        );
    }

    #[test]
    fn cap_folds_overflow() {
        let mut t = RouteTable::new(vec![], 3);
        for r in ["/a", "/b", "/c"] {
            assert_eq!(t.route("s", r), (r.to_owned(), false));
        }
        assert_eq!(t.route("s", "/d"), (OVERFLOW_ROUTE.to_owned(), true));
        assert_eq!(t.route("s", "/a"), ("/a".to_owned(), false));
        assert_eq!(t.route("other-svc", "/d"), ("/d".to_owned(), false));
        assert_eq!(t.overflowed, 1);
    }
}

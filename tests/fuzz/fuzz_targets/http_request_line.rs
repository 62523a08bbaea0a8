//! The request prefix the kernel copies out of any process's socket:
//! request-line parsing, then route normalization (configured patterns
//! first, the id-folding heuristic otherwise) under the per-service cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::collectors::http::route::{
    OVERFLOW_ROUTE, Pattern, RouteTable, heuristic, parse_request_line,
};

const CAP: usize = 4;

fuzz_target!(|data: &[u8]| {
    // The first line, when it is text, doubles as a route pattern.
    let patterns: Vec<Pattern> = data
        .split(|&b| b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|t| Pattern::parse(t).ok())
        .into_iter()
        .collect();
    let mut table = RouteTable::new(patterns, CAP);
    let mut distinct = std::collections::HashSet::new();
    // Every line is a request prefix of its own, all from one service.
    for line in data.split(|&b| b == b'\n') {
        let Some((method, path)) = parse_request_line(line) else {
            continue;
        };
        assert!(!method.is_empty());
        assert!(path.starts_with('/') || path == "*", "{path:?}");
        assert!(!path.contains(['?', '#', ' ', '\r']), "{path:?}");
        let _ = heuristic(path);
        let (route, overflowed) = table.route("svc", path);
        if overflowed {
            assert_eq!(route, OVERFLOW_ROUTE);
        } else {
            distinct.insert(route);
        }
        assert!(distinct.len() <= CAP, "route cap exceeded: {distinct:?}");
    }
});

//! What the kernel programs decide about the first 16 bytes of every
//! message on a socket (request line, status line, HTTP/2 preface, other):
//! `sonde_common::http::parse::classify`, the very function the programs
//! run, checked against the agent's request-line parser. A message the
//! kernel follows as a request must carry a method the agent labels, and the
//! other way round, or events are lost or mislabelled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::collectors::http::route::parse_request_line;
use sonde_common::http::parse::{Head, classify};

fuzz_target!(|data: &[u8]| {
    // The kernel reads at most 16 bytes and zero-fills a shorter message;
    // `classify` does the same.
    let kernel = classify(data);
    if let Head::Response(code) = kernel {
        assert!((0..=999).contains(&code));
    }
    // The agent sees the same bytes (the stored prefix starts there).
    if let Some((m, _)) = parse_request_line(data) {
        assert!(
            matches!(kernel, Head::Request(k) if k.as_str() == m),
            "agent parsed {m} but the kernel would classify it as {kernel:?}"
        );
    }
    if let Head::Request(method) = kernel {
        let token = data.split(|&b| b == b' ').next().unwrap_or_default();
        assert_eq!(
            method.as_str().as_bytes(),
            token,
            "kernel follows a method other than the message's first token"
        );
    }
});

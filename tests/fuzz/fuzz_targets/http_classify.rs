//! What the kernel programs decide about the first 16 bytes of every
//! message on a socket (request line, status line, HTTP/2 preface, other),
//! checked against the agent's request-line parser: a message the kernel
//! follows as a request must carry a method the agent labels, and the
//! other way round, or events are lost or mislabelled.
//!
//! `kernel_classify` below is the function of ebpf/sonde-ebpf/src/http.rs
//! (`classify`), which only builds for the BPF target. It is being moved into
//! ebpf/sonde-common as a pure no_std function; once it is there this target
//! calls that function instead and the transcription goes away.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::collectors::http::route::parse_request_line;

#[derive(Debug, PartialEq, Eq)]
enum Head {
    Request,
    Response(u16),
    Http2,
    Other,
}

fn kernel_classify(h: &[u8; 16]) -> Head {
    if &h[..5] == b"HTTP/" {
        if h[5] == b'1'
            && h[6] == b'.'
            && h[8] == b' '
            && h[9].is_ascii_digit()
            && h[10].is_ascii_digit()
            && h[11].is_ascii_digit()
        {
            let code =
                (h[9] - b'0') as u16 * 100 + (h[10] - b'0') as u16 * 10 + (h[11] - b'0') as u16;
            return Head::Response(code);
        }
        return Head::Other;
    }
    if &h[..4] == b"GET " || &h[..4] == b"PUT " {
        return Head::Request;
    }
    if &h[..5] == b"POST " || &h[..5] == b"HEAD " {
        return Head::Request;
    }
    if &h[..6] == b"PATCH " || &h[..6] == b"TRACE " {
        return Head::Request;
    }
    if &h[..7] == b"DELETE " {
        return Head::Request;
    }
    if &h[..8] == b"OPTIONS " || &h[..8] == b"CONNECT " {
        return Head::Request;
    }
    if &h[..14] == b"PRI * HTTP/2.0" {
        return Head::Http2;
    }
    Head::Other
}

fuzz_target!(|data: &[u8]| {
    // The kernel reads at most 16 bytes and zero-fills a shorter message.
    let mut head = [0u8; 16];
    let n = data.len().min(16);
    head[..n].copy_from_slice(&data[..n]);
    let kernel = kernel_classify(&head);
    if let Head::Response(code) = kernel {
        assert!((0..=999).contains(&code));
    }
    // The agent sees the same bytes (the stored prefix starts there).
    let agent_method = parse_request_line(data).map(|(m, _)| m);
    if let Some(m) = agent_method {
        assert_eq!(
            kernel,
            Head::Request,
            "agent parsed {m} but the kernel would not follow it"
        );
    }
    if kernel == Head::Request {
        let token = data.split(|&b| b == b' ').next().unwrap_or_default();
        assert!(
            [
                "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE"
            ]
            .iter()
            .any(|m| m.as_bytes() == token),
            "kernel follows a method the agent does not label: {token:?}"
        );
    }
});

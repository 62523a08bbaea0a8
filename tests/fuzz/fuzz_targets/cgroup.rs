//! `/proc/PID/cgroup`, whose paths a process in a delegated cgroup subtree
//! (or a container runtime) names freely.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::identity::cgroup::{container_of, container_of_path, strip_runtime_scheme};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(c) = container_of(text) {
        assert_eq!(c.id.len(), 64, "{c:?}");
        assert!(c.id.bytes().all(|b| b.is_ascii_hexdigit()), "{c:?}");
    }
    for line in text.lines() {
        let _ = container_of_path(line);
        let _ = strip_runtime_scheme(line);
    }
});

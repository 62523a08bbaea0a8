//! `/proc/PID/maps` (paths are whatever a process mapped) and the JIT perf
//! map `/tmp/perf-PID.map`, which the profiled process writes itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::collectors::profile::procmaps::{PerfMap, ProcMaps};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Addresses to look up: every 8-byte word of the input, and the edges.
    let addrs: Vec<u64> = data
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .chain([0, 1, u64::MAX - 1, u64::MAX])
        .collect();
    let maps = ProcMaps::parse(1, &text);
    for &a in &addrs {
        if let Some(m) = maps.find(a) {
            assert!(m.start <= a && a < m.end, "{m:?} does not hold {a:#x}");
        }
    }
    for m in &maps.maps {
        let _ = maps.host_path(&m.path);
    }
    let perf = PerfMap::parse(&text);
    for &a in &addrs {
        let _ = perf.find(a);
    }
});

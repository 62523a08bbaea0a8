//! `/proc/PID/stat`, whose comm field any process sets (prctl, exec name)
//! and may fill with spaces and parentheses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::process_table::parse_stat;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((comm, _ppid, _start)) = parse_stat(text) {
        assert!(text.contains(&comm));
    }
});

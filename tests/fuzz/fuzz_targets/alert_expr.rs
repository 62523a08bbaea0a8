//! The alert-rule expression language (`rate(x[5m]) > 0.1`, ...).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::alerts::expr;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = expr::parse(src) {
        for s in e.selectors() {
            let _ = format!("{s:?}");
        }
        let _ = e.max_range();
    }
});

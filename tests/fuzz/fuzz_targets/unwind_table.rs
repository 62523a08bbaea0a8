//! The unwind-table builder on arbitrary (corrupt) ELF files: the profiler
//! opens every executable a sampled process maps, so any user can hand it
//! a crafted one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(table) = sonde_unwind_table::build(data) {
        let _ = format!("{:?}", table.rows.len());
    }
    // A mapping of this file at a few places and offsets.
    for (start, offset) in [
        (0, 0),
        (0x40_0000, 0x1000),
        (u64::MAX & !0xfff, u64::MAX & !0xfff),
    ] {
        let _ = sonde_unwind_table::load_bias(data, start, offset);
    }
    if data.len() >= 11 {
        let _ = sonde_unwind_table::plt_rule(&data[..11]);
    }
});

//! Prints the unwind rows of an ELF file (optionally only those within
//! `[from, to)`, hex file addresses): `cargo run -p sonde-unwind-table
//! --example dump -- FILE [FROM TO]`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: dump FILE [FROM TO]");
        std::process::exit(2);
    };
    let hex = |s: Option<&String>, d: u64| {
        s.and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or(d)
    };
    let (from, to) = (hex(args.get(2), 0), hex(args.get(3), u64::MAX));
    let data = std::fs::read(path).expect("readable file");
    let t = sonde_unwind_table::build(&data[..]).expect("table");
    println!(
        "{} rows, {} FDEs ({} bad), {} unsupported rows",
        t.rows.len(),
        t.fdes,
        t.bad_fdes,
        t.unsupported_rows
    );
    for r in t
        .rows
        .iter()
        .filter(|r| (from..to).contains(&u64::from(r.pc)))
    {
        println!(
            "{:#x} cfa_kind={} cfa_off={} rbp_kind={} rbp_off={}",
            r.pc, r.cfa_kind, r.cfa_offset, r.rbp_kind, r.rbp_offset
        );
    }
}

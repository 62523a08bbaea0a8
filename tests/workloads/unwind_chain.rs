//! The Rust twin of unwind_chain.c, built with `rustc -C opt-level=2` and
//! no forced frame pointers: main -> chain_a -> ... -> chain_e (spins).
//! Usage: unwind_chain_rs SECONDS
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

#[inline(never)]
fn chain_e(n: u64, until: Instant) -> u64 {
    let mut x = n;
    while Instant::now() < until {
        for i in 0..10_000_000u64 {
            x = black_box(x.wrapping_add(i.wrapping_mul(13) ^ (x >> 3)));
        }
    }
    x
}

macro_rules! link {
    ($name:ident, $next:ident) => {
        #[inline(never)]
        fn $name(n: u64, until: Instant) -> u64 {
            let r = $next(black_box(n * 3 + 1), until);
            black_box(r) ^ n
        }
    };
}

link!(chain_d, chain_e);
link!(chain_c, chain_d);
link!(chain_b, chain_c);
link!(chain_a, chain_b);

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    println!("{}", chain_a(black_box(1), until));
}

//! Verifier budget: how many instructions the kernel's verifier processed
//! for each program the agent loaded, against its 1,000,000 limit.
//!
//! The figure moves between kernel builds (one build stopped pruning a loop
//! that an earlier one pruned, and a program that had loaded hit the limit),
//! so every load site records it here: a log line per program and the
//! `sonde_ebpf_program_verified_insns{program}` gauge (0 when the kernel
//! does not report it, before 5.16). The gauge keeps a program's last
//! figure after it is unloaded (e.g. when an alloc session ends).
//!
//! With `SONDE_VERIFY_FALLBACKS=1` in its environment the agent also loads
//! (verifies, never attaches) the programs of the fallback hook sets it did
//! not pick, so their figures are recorded on a kernel that would not use
//! them: tests/tests/budget.rs checks every program this way.

use std::sync::LazyLock;

use aya::programs::{ProgramError, ProgramInfo};
use prometheus::{IntGaugeVec, Opts};

/// The verifier's limit on processed instructions per program.
pub const VERIFIER_LIMIT: u32 = 1_000_000;

/// Above this share of the limit a load is logged as a warning: the next
/// kernel build may not verify it.
const WARN_SHARE: f64 = 0.5;

static VERIFIED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "sonde_ebpf_program_verified_insns",
            "Instructions the verifier processed to load the program (limit 1,000,000).",
        ),
        &["program"],
    )
    .expect("valid metric")
});

/// Whether unused fallback hook sets are loaded too (see the module header).
pub fn verify_fallbacks() -> bool {
    static ON: LazyLock<bool> =
        LazyLock::new(|| std::env::var_os("SONDE_VERIFY_FALLBACKS").is_some_and(|v| v == "1"));
    *ON
}

/// The gauge, for the agent's registry.
pub fn gauge() -> IntGaugeVec {
    VERIFIED.clone()
}

/// Records the figure of `program`, just loaded, from its `info()`.
pub fn record(program: &str, info: Result<ProgramInfo, ProgramError>) {
    let n = match info {
        Ok(i) => i.verified_instruction_count().unwrap_or(0),
        Err(e) => {
            tracing::debug!(program, "no program info: {e}");
            0
        }
    };
    VERIFIED.with_label_values(&[program]).set(i64::from(n));
    let share = f64::from(n) / f64::from(VERIFIER_LIMIT);
    if share > WARN_SHARE {
        tracing::warn!(
            program,
            verified_insns = n,
            "eBPF program is close to the verifier's 1M-instruction limit"
        );
    } else {
        tracing::info!(program, verified_insns = n, "eBPF program verified");
    }
}

//! x86_64 `struct pt_regs` as tp_btf `sys_enter`/`sys_exit` programs (and
//! `bpf_task_pt_regs`) hand it over: the saved user registers of the
//! current syscall. At exit the argument registers still hold the call's
//! arguments (only `ax` has been replaced by the return value), so one exit
//! hook sees both what was asked and what came back.

/// Offsets in `struct pt_regs` (arch/x86/include/asm/ptrace.h, user ABI).
pub(crate) const REG_DX: usize = 96;
pub(crate) const REG_SI: usize = 104;
pub(crate) const REG_DI: usize = 112;
pub(crate) const REG_ORIG_AX: usize = 120;
pub(crate) const REG_CS: usize = 136;

/// One register of a BTF-typed `struct pt_regs *`.
#[inline(always)]
pub(crate) fn reg(regs: *const u8, off: usize) -> u64 {
    // SAFETY: `regs` is a BTF-typed `struct pt_regs *` (a tp_btf argument or
    // `bpf_task_pt_regs`); the verifier checks the load against the BTF
    // layout (off is a field) and turns it into a fault-safe kernel load.
    unsafe { core::ptr::read_volatile(regs.add(off) as *const u64) }
}

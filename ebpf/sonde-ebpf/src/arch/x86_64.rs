//! The x86_64 ABI as the programs see it.

/// Offsets in `struct pt_regs` (arch/x86/include/asm/ptrace.h, user ABI):
/// the saved user registers of the current syscall, as tp_btf
/// `sys_enter`/`sys_exit` and `bpf_task_pt_regs` hand them over, and the
/// interrupted registers of a perf event. At syscall exit the argument
/// registers still hold the call's arguments (only `ax` has been replaced
/// by the return value), so one exit hook sees both what was asked and
/// what came back.
pub(crate) const REG_BP: usize = 32;
pub(crate) const REG_DX: usize = 96;
pub(crate) const REG_SI: usize = 104;
pub(crate) const REG_DI: usize = 112;
/// The syscall number (`ax` holds the return value at exit).
pub(crate) const REG_ORIG_AX: usize = 120;
pub(crate) const REG_IP: usize = 128;
pub(crate) const REG_CS: usize = 136;
pub(crate) const REG_SP: usize = 152;

/// Syscall arguments 1-3 (the System V syscall convention).
pub(crate) const REG_ARG1: usize = REG_DI;
pub(crate) const REG_ARG2: usize = REG_SI;
pub(crate) const REG_ARG3: usize = REG_DX;

/// One register of a BTF-typed `struct pt_regs *`.
#[inline(always)]
pub(crate) fn reg(regs: *const u8, off: usize) -> u64 {
    // SAFETY: `regs` is a BTF-typed `struct pt_regs *` (a tp_btf argument or
    // `bpf_task_pt_regs`); the verifier checks the load against the BTF
    // layout (off is a field) and turns it into a fault-safe kernel load.
    unsafe { core::ptr::read_volatile(regs.add(off) as *const u64) }
}

/// Whether saved registers come from user mode (the privilege level in the
/// low bits of `cs` is 3): only then do they hold a syscall's arguments
/// (kernel threads doing socket I/O, e.g. NFS, have an empty frame).
#[inline(always)]
pub(crate) fn user_mode(cs: u64) -> bool {
    cs & 3 == 3
}

/// Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the calls
/// the programs dispatch on. The generic `sys_enter`/`sys_exit` hooks
/// carry only the number; the syscall-specific tracepoints need none.
pub(crate) mod nr {
    pub(crate) const READ: i64 = 0;
    pub(crate) const WRITE: i64 = 1;
    pub(crate) const CLOSE: i64 = 3;
    pub(crate) const MMAP: i64 = 9;
    pub(crate) const MUNMAP: i64 = 11;
    pub(crate) const BRK: i64 = 12;
    pub(crate) const READV: i64 = 19;
    pub(crate) const WRITEV: i64 = 20;
    pub(crate) const MREMAP: i64 = 25;
    pub(crate) const SENDFILE: i64 = 40;
    pub(crate) const CONNECT: i64 = 42;
    pub(crate) const ACCEPT: i64 = 43;
    pub(crate) const SENDTO: i64 = 44;
    pub(crate) const RECVFROM: i64 = 45;
    pub(crate) const SENDMSG: i64 = 46;
    pub(crate) const RECVMSG: i64 = 47;
    /// exit and exit_group never return.
    pub(crate) const EXIT: i64 = 60;
    pub(crate) const EXIT_GROUP: i64 = 231;
    pub(crate) const ACCEPT4: i64 = 288;
}

/// `-EINPROGRESS` as a syscall returns it (asm-generic errno 115; the
/// number differs on alpha, mips, parisc and sparc).
pub(crate) const EINPROGRESS_RET: i64 = -115;

/// Offsets in the `ucontext_t` a signal trampoline's `rsp` points at
/// (`uc_mcontext.gregs[REG_RBP / REG_RSP / REG_RIP]`).
pub(crate) const UC_RBP: u64 = 120;
pub(crate) const UC_RSP: u64 = 160;
pub(crate) const UC_RIP: u64 = 168;

/// `struct msghdr::msg_iov` (after an 8-byte `msg_name` and a 4-byte
/// `msg_namelen` padded to 8; the same on every 64-bit Linux ABI).
/// `struct iovec::iov_base` is at offset 0.
pub(crate) const MSGHDR_MSG_IOV: u64 = 16;

/// `sk->__sk_common.skc_num`, the local port in host order: after the
/// 8-byte address pair, the 4-byte hash and the 2-byte remote port, on
/// every architecture and every kernel since 2.6. Not an ABI fact of
/// x86_64, but a hand-coded layout all the same, so kept with the others
/// (reading it through BTF from Rust would need generated kernel bindings).
pub(crate) const SK_NUM: usize = 14;

//! Where to put a uprobe on an allocation function so it stays cheap.
//!
//! x86 uprobes either emulate the probed instruction in the kernel (push,
//! jmp, call, conditional jumps, nop: ~0.3–0.6 µs per hit here) or
//! single-step a copy of it out of line (~22 µs here: a trap more and a
//! return to user mode). glibc's `free` starts with `test %rdi,%rdi`, which
//! is single-stepped; the `je` right after it is emulated, and `%rdi` still
//! holds the pointer there. So: skip a short prefix of instructions that
//! write only flags (they leave the argument registers and the stack as
//! they were at entry, which also keeps a return probe valid), and probe
//! the first instruction the kernel emulates. Anything else: the entry,
//! reported as single-stepped.

/// A probe offset inside a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePoint {
    /// Bytes from the function's start.
    pub offset: u64,
    /// Whether the kernel can emulate the instruction there (cheap).
    pub emulated: bool,
}

/// Instructions looked at before giving up.
const MAX_SKIP: usize = 4;

/// Length of an instruction the kernel emulates, if `code` starts with one.
fn emulated(code: &[u8]) -> Option<usize> {
    let b0 = *code.first()?;
    match b0 {
        // push %reg
        0x50..=0x57 => Some(1),
        // push %r8..%r15
        0x41 if matches!(code.get(1), Some(0x50..=0x57)) => Some(2),
        // jcc rel8, jmp rel8
        0x70..=0x7f | 0xeb => Some(2),
        // jmp rel32, call rel32
        0xe9 | 0xe8 => Some(5),
        // nop
        0x90 => Some(1),
        // jcc rel32
        0x0f if matches!(code.get(1), Some(0x80..=0x8f)) => Some(6),
        _ => None,
    }
}

/// Length of an instruction that writes only flags (no register, no
/// memory, no stack), if `code` starts with one we know.
fn flags_only(code: &[u8]) -> Option<usize> {
    let modrm_reg = |b: Option<&u8>| b.is_some_and(|m| m >> 6 == 3);
    match code {
        // endbr64
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => Some(4),
        // test r64, r64 / cmp r64, r64
        [0x48 | 0x49 | 0x4c | 0x4d, 0x85 | 0x39 | 0x3b, m, ..] if modrm_reg(Some(m)) => Some(3),
        // test r32, r32 / cmp r32, r32
        [0x85 | 0x39 | 0x3b, m, ..] if modrm_reg(Some(m)) => Some(2),
        // cmp r64, imm8
        [0x48 | 0x49, 0x83, m, _, ..] if modrm_reg(Some(m)) && (m >> 3) & 7 == 7 => Some(4),
        // cmpb $imm8, disp32(%rip)
        [0x80, 0x3d, _, _, _, _, _, ..] => Some(7),
        _ => None,
    }
}

/// The cheapest safe probe point in a function starting with `code`.
pub fn choose(code: &[u8]) -> ProbePoint {
    let mut at = 0usize;
    for _ in 0..=MAX_SKIP {
        let rest = code.get(at..).unwrap_or_default();
        if emulated(rest).is_some() {
            return ProbePoint {
                offset: at as u64,
                emulated: true,
            };
        }
        match flags_only(rest) {
            Some(n) => at += n,
            None => break,
        }
    }
    ProbePoint {
        offset: 0,
        emulated: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_236_free_is_probed_at_its_je() {
        // test %rdi,%rdi ; je rel32 ; push %rbp
        let free = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55];
        assert_eq!(
            choose(&free),
            ProbePoint {
                offset: 3,
                emulated: true
            }
        );
    }

    #[test]
    fn push_at_entry_is_kept() {
        // malloc: push %r12
        assert_eq!(choose(&[0x41, 0x54, 0x55]).offset, 0);
        assert!(choose(&[0x41, 0x54]).emulated);
    }

    #[test]
    fn rip_relative_cmp_then_jcc() {
        // memalign: cmpb $0,disp(%rip) ; je rel8
        let m = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
        assert_eq!(choose(&m).offset, 7);
        // endbr64 ; push %rbp
        assert_eq!(choose(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]).offset, 4);
    }

    #[test]
    fn unknown_code_falls_back_to_the_entry() {
        // mov %rdi,%rax: writes a register, not emulated.
        let p = choose(&[0x48, 0x89, 0xf8, 0x55]);
        assert_eq!(p.offset, 0);
        assert!(!p.emulated);
        assert!(!choose(&[]).emulated);
        // test then something unknown
        assert!(!choose(&[0x48, 0x85, 0xff, 0x48, 0x89, 0xf8]).emulated);
    }
}

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
//! the first instruction the kernel emulates. For a function whose
//! arguments the program reads are known ([`choose_keeping`]), moves and
//! loads into other scratch registers may be skipped too (CPython's
//! allocator entry points start with `mov %rdi,%rsi` or loads of the
//! allocator's globals). Anything else: the entry, reported as
//! single-stepped.

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
        // cmp $imm32, %rax
        [0x48, 0x3d, _, _, _, _, ..] => Some(6),
        _ => None,
    }
}

/// System V argument registers in order, as x86 register numbers (rdi,
/// rsi, rdx, rcx, r8, r9).
const ARG_REGS: [u8; 6] = [7, 6, 2, 1, 8, 9];

/// Length of an instruction that writes one general register and nothing
/// else (no memory, no stack, flags at most), with that register's number,
/// if `code` starts with one we know.
fn writes_one_register(code: &[u8]) -> Option<(usize, u8)> {
    let rex = *code.first()?;
    if rex & 0xf0 != 0x40 {
        return None;
    }
    let (r, b) = ((rex >> 2) & 1, rex & 1);
    let op = *code.get(1)?;
    let m = *code.get(2)?;
    let (md, reg, rm) = (m >> 6, (m >> 3) & 7, m & 7);
    match (op, md, rm) {
        // mov %reg,%rm
        (0x89, 3, _) => Some((3, rm | b << 3)),
        // mov %rm,%reg
        (0x8b, 3, _) => Some((3, reg | r << 3)),
        // mov disp32(%rip),%reg
        (0x8b, 0, 5) if code.len() >= 7 => Some((7, reg | r << 3)),
        // lea disp8(%base),%reg (no SIB)
        (0x8d, 1, _) if rm != 4 && code.len() >= 4 => Some((4, reg | r << 3)),
        _ => None,
    }
}

/// The cheapest safe probe point in a function starting with `code`,
/// keeping every argument register intact.
#[cfg(test)]
pub fn choose(code: &[u8]) -> ProbePoint {
    choose_keeping(code, ARG_REGS.len())
}

/// The cheapest probe point where the first `args` argument registers, the
/// stack and the frame pointer still hold what they held at entry.
pub fn choose_keeping(code: &[u8], args: usize) -> ProbePoint {
    let kept = &ARG_REGS[..args.min(ARG_REGS.len())];
    let mut at = 0usize;
    for _ in 0..=MAX_SKIP {
        let rest = code.get(at..).unwrap_or_default();
        if emulated(rest).is_some() {
            return ProbePoint {
                offset: at as u64,
                emulated: true,
            };
        }
        if let Some(n) = flags_only(rest) {
            at += n;
            continue;
        }
        // Only for a known arity: libc's functions are probed with every
        // argument register kept and no register write skipped.
        match writes_one_register(rest) {
            // Not %rsp or %rbp: the stack and frame chain stay as at entry.
            Some((n, dest))
                if kept.len() < ARG_REGS.len()
                    && dest != 4
                    && dest != 5
                    && !kept.contains(&dest) =>
            {
                at += n
            }
            _ => break,
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
    fn cpython_allocator_entries_skip_scratch_register_writes() {
        // pyenv 3.11 _PyObject_Malloc(ctx, size): lea -0x1(%rsi),%rax ;
        // push %rbx — keeps rdi and rsi.
        let m = [0x48, 0x8d, 0x46, 0xff, 0x53];
        assert_eq!(choose_keeping(&m, 2).offset, 4);
        assert!(choose_keeping(&m, 2).emulated);
        // PyObject_Malloc(size): mov %rdi,%rsi ; test %rdi,%rdi ; js
        let m = [0x48, 0x89, 0xfe, 0x48, 0x85, 0xff, 0x78, 0x10];
        assert_eq!(choose_keeping(&m, 1).offset, 6);
        // ...but not when rsi is an argument read.
        assert!(!choose_keeping(&m, 2).emulated);
        // Debian PyObject_Free(p): mov disp(%rip),%rax ; mov disp(%rip),%rdx
        // ; cmp $imm32,%rax ; jne
        let f = [
            0x48, 0x8b, 0x05, 1, 2, 3, 4, 0x48, 0x8b, 0x15, 1, 2, 3, 4, 0x48, 0x3d, 1, 2, 3, 4,
            0x75, 0x10,
        ];
        assert_eq!(choose_keeping(&f, 1).offset, 20);
        // mov disp(%rip),%rdi overwrites the pointer: not skipped.
        let f = [0x48, 0x89, 0xfe, 0x48, 0x8b, 0x3d, 1, 2, 3, 4, 0xff, 0x25];
        assert!(!choose_keeping(&f, 1).emulated);
        // Writing %rbp or %rsp is never skipped.
        assert!(!choose_keeping(&[0x48, 0x89, 0xe5, 0x90], 1).emulated);
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

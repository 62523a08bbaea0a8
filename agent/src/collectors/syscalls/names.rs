//! Syscall and errno names from the generated tables (tables.rs).

use std::sync::OnceLock;

use super::tables::{ERRNOS, SYSCALLS_X86_64};

fn syscall_index() -> &'static Vec<Option<&'static str>> {
    static IDX: OnceLock<Vec<Option<&'static str>>> = OnceLock::new();
    IDX.get_or_init(|| {
        let max = SYSCALLS_X86_64.iter().map(|(n, _)| *n).max().unwrap_or(0) as usize;
        let mut v = vec![None; max + 1];
        for (n, name) in SYSCALLS_X86_64 {
            v[*n as usize] = Some(*name);
        }
        v
    })
}

/// The x86_64 name of syscall `nr`, or `sys_<nr>` for numbers newer than
/// the table (the kernel may know syscalls our headers do not).
pub fn syscall_name(nr: u32) -> String {
    syscall_index()
        .get(nr as usize)
        .copied()
        .flatten()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sys_{nr}"))
}

/// The number of a syscall name (`sys_<nr>` accepted too).
pub fn syscall_nr(name: &str) -> Option<u32> {
    if let Some(n) = name.strip_prefix("sys_").and_then(|n| n.parse().ok()) {
        return Some(n);
    }
    SYSCALLS_X86_64
        .iter()
        .find(|(_, s)| *s == name)
        .map(|(n, _)| *n)
}

/// `ENOENT` for 2; `E<n>` for values the table lacks.
pub fn errno_name(errno: u32) -> String {
    ERRNOS
        .iter()
        .find(|(n, _)| *n == errno)
        .map(|(_, s)| (*s).to_owned())
        .unwrap_or_else(|| format!("E{errno}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_numbers() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(110), "getppid");
        assert_eq!(syscall_name(257), "openat");
        assert_eq!(syscall_name(231), "exit_group");
        assert_eq!(syscall_name(999), "sys_999");
        assert_eq!(syscall_nr("getppid"), Some(110));
        assert_eq!(syscall_nr("sys_999"), Some(999));
        assert_eq!(syscall_nr("nope"), None);
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(11), "EAGAIN");
        assert_eq!(errno_name(4000), "E4000");
    }
}

//! Syscall and errno names from the generated tables (tables.rs).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sonde_common::syscalls::MAX_SYSCALL_NR;

use super::tables::{ERRNOS, SYSCALLS_X86_64};

/// A syscall named in `collectors.syscalls.syscalls`, checked against the
/// x86_64 table (and the kernel side's number limit) when the config is
/// read, so `--check-config` and the agent refuse the same names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SyscallName {
    name: String,
    nr: u32,
}

impl SyscallName {
    pub fn nr(&self) -> u32 {
        self.nr
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl TryFrom<String> for SyscallName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match syscall_nr(&name).filter(|nr| *nr < MAX_SYSCALL_NR) {
            Some(nr) => Ok(Self { name, nr }),
            None => Err(format!(
                "collectors.syscalls.syscalls: unknown syscall {name:?} (x86_64 names, e.g. \"openat\")"
            )),
        }
    }
}

impl From<SyscallName> for String {
    fn from(s: SyscallName) -> String {
        s.name
    }
}

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

    #[test]
    fn config_names_are_checked_when_parsed() {
        let ok = SyscallName::try_from("openat".to_owned()).unwrap();
        assert_eq!((ok.as_str(), ok.nr()), ("openat", 257));
        assert_eq!(
            SyscallName::try_from("sys_500".to_owned()).unwrap().nr(),
            500
        );
        let err = SyscallName::try_from("getppidd".to_owned()).unwrap_err();
        assert!(
            err.contains("collectors.syscalls.syscalls") && err.contains("getppidd"),
            "{err}"
        );
        // Beyond what the kernel side counts.
        assert!(SyscallName::try_from(format!("sys_{MAX_SYSCALL_NR}")).is_err());
    }
}

//! Reads another process's memory with `process_vm_readv` (one syscall per
//! read, no ptrace stop), the way the symbolizer and the walker see it.

use std::io::IoSliceMut;

use nix::{
    sys::uio::{RemoteIoVec, process_vm_readv},
    unistd::Pid,
};

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("reading {len} bytes at {addr:#x}: {source}")]
    Read {
        addr: u64,
        len: usize,
        source: nix::Error,
    },
    #[error("short read at {addr:#x}: {got} of {len} bytes")]
    Short { addr: u64, len: usize, got: usize },
}

/// The memory of one process.
#[derive(Clone, Copy, Debug)]
pub struct ProcMem {
    pid: i32,
}

impl ProcMem {
    pub fn new(pid: u32) -> Self {
        Self { pid: pid as i32 }
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Fills `buf` from `addr`; a partial read is an error.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len();
        let remote = [RemoteIoVec {
            base: addr as usize,
            len,
        }];
        let got = process_vm_readv(
            Pid::from_raw(self.pid),
            &mut [IoSliceMut::new(buf)],
            &remote,
        )
        .map_err(|source| MemError::Read { addr, len, source })?;
        if got != len {
            return Err(MemError::Short { addr, len, got });
        }
        Ok(())
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemError> {
        let mut v = vec![0; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    pub fn u64(&self, addr: u64) -> Result<u64, MemError> {
        let mut b = [0; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u32(&self, addr: u64) -> Result<u32, MemError> {
        let mut b = [0; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn i32(&self, addr: u64) -> Result<i32, MemError> {
        Ok(self.u32(addr)? as i32)
    }

    pub fn u8(&self, addr: u64) -> Result<u8, MemError> {
        let mut b = [0; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }
}

/// Little-endian fields out of a buffer read in one go (as the kernel does).
pub(crate) fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

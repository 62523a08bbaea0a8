//! Code objects read out of the target: names, file, first line, the line
//! table and its decoders, and a bounded cache keyed by (pid, address)
//! whose entries are trusted only while the code object's checksum fields
//! still match (code objects are freed and their memory reused).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use sonde_common::python::{PyCodeIdentity, py_code_checksum};

use crate::{
    mem::{MemError, ProcMem},
    offsets::{LineTable, Offsets},
};

/// Line tables larger than this are not read (the anchors cap at 64 KiB).
const MAX_LINETABLE: u64 = 64 << 10;
/// Strings longer than this are cut.
const MAX_STR: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error(transparent)]
    Mem(#[from] MemError),
    #[error("object at {0:#x} is not a code object")]
    NotCode(u64),
    #[error("string object at {0:#x}: {1}")]
    BadString(u64, &'static str),
}

/// What the symbolizer needs from one code object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_qualname` (3.11+), else `co_name`.
    pub qualname: String,
    pub name: String,
    pub filename: String,
    pub first_line: i32,
    pub checksum: u32,
    pub line_table: LineTable,
    pub linetable: Vec<u8>,
}

impl CodeInfo {
    /// The source line of instruction `instr` (code units; negative: not
    /// started, the first line).
    pub fn line(&self, instr: i32) -> Option<i32> {
        if instr < 0 {
            return Some(self.first_line);
        }
        match self.line_table {
            LineTable::Pep626 => pep626_line(&self.linetable, self.first_line, instr as u64 * 2),
            LineTable::Locations => locations_line(&self.linetable, self.first_line, instr as u64),
        }
    }
}

/// 3.10 (Objects/lnotab_notes.txt): each (u8 byte delta, i8 line delta)
/// pair covers `[end, end + delta)`; -128 means no line.
pub fn pep626_line(table: &[u8], first_line: i32, byte_addr: u64) -> Option<i32> {
    let (mut line, mut end) = (first_line, 0u64);
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let current = (delta != -128).then(|| {
            line += i32::from(delta);
            line
        });
        if start <= byte_addr && byte_addr < end {
            return current;
        }
    }
    None
}

/// 3.11+ (Objects/locations.md): entries of `(b & 7) + 1` code units
/// whose kind is `(b >> 3) & 15` on a first byte with bit 7 set.
pub fn locations_line(table: &[u8], first_line: i32, instr: u64) -> Option<i32> {
    let mut it = table.iter().copied().peekable();
    let varint = |it: &mut std::iter::Peekable<std::iter::Copied<std::slice::Iter<u8>>>| {
        let (mut val, mut shift) = (0u32, 0);
        for b in it.by_ref() {
            val |= u32::from(b & 63) << shift;
            shift += 6;
            if b & 64 == 0 || shift > 30 {
                break;
            }
        }
        val
    };
    let signed = |v: u32| {
        if v & 1 != 0 {
            -((v >> 1) as i32)
        } else {
            (v >> 1) as i32
        }
    };
    let (mut line, mut addr) = (first_line, 0u64);
    while let Some(b) = it.next() {
        if b & 0x80 == 0 {
            return None;
        }
        let (code, len) = ((b >> 3) & 15, u64::from(b & 7) + 1);
        let current = match code {
            15 => None,
            14 => {
                line += signed(varint(&mut it));
                for _ in 0..3 {
                    varint(&mut it);
                }
                Some(line)
            }
            13 => {
                line += signed(varint(&mut it));
                Some(line)
            }
            10..=12 => {
                line += i32::from(code) - 10;
                it.next();
                it.next();
                Some(line)
            }
            _ => {
                it.next();
                Some(line)
            }
        };
        if addr <= instr && instr < addr + len {
            return current;
        }
        addr += len;
        // Skip to the next entry start should a malformed entry leave
        // continuation bytes behind.
        while it.peek().is_some_and(|b| b & 0x80 == 0) {
            it.next();
        }
    }
    None
}

/// The checksum of the code object at `code`, as the kernel hashes it.
pub fn read_checksum(mem: &ProcMem, o: &Offsets, code: u64) -> Result<u32, MemError> {
    let name = mem.u64(code + o.code_name)?;
    Ok(py_code_checksum(&PyCodeIdentity {
        argcount: mem.i32(code + o.code_argcount)?,
        kwonly: mem.i32(code + o.code_kwonlyargcount)?,
        flags: mem.i32(code + o.code_flags)?,
        firstlineno: mem.i32(code + o.code_firstlineno)?,
        version: match o.code_version {
            Some(v) => mem.u32(code + v)?,
            None => 0,
        },
        filename: mem.u64(code + o.code_filename)?,
        name_hash: mem.u64(name + o.unicode_hash)?,
    }))
}

/// A `str` object's text (compact objects only, which all code-object
/// strings are). `state`: kind bits 2-4, compact bit 5, ascii bit 6.
pub fn read_str(mem: &ProcMem, o: &Offsets, obj: u64) -> Result<String, CodeError> {
    let len = mem.u64(obj + o.unicode_length)?;
    let state = mem.u32(obj + o.unicode_state)?;
    let (kind, compact, ascii) = (
        (state >> 2) & 7,
        state & (1 << 5) != 0,
        state & (1 << 6) != 0,
    );
    if !compact {
        return Err(CodeError::BadString(obj, "not compact"));
    }
    let n = len.min(MAX_STR);
    if ascii {
        let b = mem.bytes(obj + o.unicode_ascii_size, n as usize)?;
        return Ok(String::from_utf8_lossy(&b).into_owned());
    }
    let width = match kind {
        1 | 2 | 4 => u64::from(kind),
        _ => return Err(CodeError::BadString(obj, "bad kind")),
    };
    let b = mem.bytes(obj + o.unicode_compact_size, (n * width) as usize)?;
    Ok(b.chunks_exact(width as usize)
        .map(|c| {
            let mut v = [0u8; 4];
            v[..c.len()].copy_from_slice(c);
            char::from_u32(u32::from_le_bytes(v)).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect())
}

fn read_bytes_obj(mem: &ProcMem, o: &Offsets, obj: u64) -> Result<Vec<u8>, MemError> {
    let len = mem.u64(obj + o.bytes_size)?.min(MAX_LINETABLE);
    mem.bytes(obj + o.bytes_sval, len as usize)
}

/// Reads the code object at `code`. With `code_type` (`&PyCode_Type`),
/// an object of another type is refused.
pub fn read_code(
    mem: &ProcMem,
    o: &Offsets,
    code_type: Option<u64>,
    code: u64,
) -> Result<CodeInfo, CodeError> {
    if let Some(t) = code_type
        && mem.u64(code + 8)? != t
    {
        return Err(CodeError::NotCode(code));
    }
    let name = read_str(mem, o, mem.u64(code + o.code_name)?)?;
    let qualname = match o.code_qualname {
        Some(q) => read_str(mem, o, mem.u64(code + q)?)?,
        None => name.clone(),
    };
    Ok(CodeInfo {
        qualname,
        name,
        filename: read_str(mem, o, mem.u64(code + o.code_filename)?)?,
        first_line: mem.i32(code + o.code_firstlineno)?,
        checksum: read_checksum(mem, o, code)?,
        line_table: o.line_table,
        linetable: read_bytes_obj(mem, o, mem.u64(code + o.code_linetable)?)?,
    })
}

/// Bounded cache of code objects by (pid, address); the oldest insertion
/// goes first when full.
pub struct CodeCache {
    cap: usize,
    map: HashMap<(u32, u64), Arc<CodeInfo>>,
    order: VecDeque<(u32, u64)>,
    pub hits: u64,
    pub misses: u64,
}

impl CodeCache {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
            misses: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The code object at `code` in `mem`'s process. `checksum` is the
    /// kernel's reading taken with the sample; without it the fields are
    /// read again now. A cached entry whose checksum differs is dropped
    /// and the object read afresh.
    pub fn get(
        &mut self,
        mem: &ProcMem,
        o: &Offsets,
        code_type: Option<u64>,
        code: u64,
        checksum: Option<u32>,
    ) -> Result<Arc<CodeInfo>, CodeError> {
        let key = (mem.pid(), code);
        if let Some(hit) = self.map.get(&key) {
            let now = match checksum {
                Some(c) => c,
                None => read_checksum(mem, o, code)?,
            };
            if hit.checksum == now {
                self.hits += 1;
                return Ok(hit.clone());
            }
            self.map.remove(&key);
            self.order.retain(|k| *k != key);
        }
        self.misses += 1;
        let info = Arc::new(read_code(mem, o, code_type, code)?);
        if checksum.is_some_and(|c| c != info.checksum) {
            // The object changed between the sample and now: not cached,
            // the caller decides whether to use it.
            return Ok(info);
        }
        while self.map.len() >= self.cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
        }
        self.map.insert(key, info.clone());
        self.order.push_back(key);
        Ok(info)
    }

    /// Forgets a process (on exit).
    pub fn forget_pid(&mut self, pid: u32) {
        self.map.retain(|k, _| k.0 != pid);
        self.order.retain(|k| k.0 != pid);
    }
}

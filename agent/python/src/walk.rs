//! The frame walk: [`proc_info`] fills the [`PyProcInfo`] the kernel walks
//! with, [`kernel_walk`] is that walk in userspace (same reads, same
//! steps, from a thread's fsbase), and [`threads`] is an independent
//! walker over every thread of the interpreter (`interpreters.head` →
//! `threads.head` → `next`), field by field from [`Offsets`], for tests,
//! symbolization and a `py-spy dump`-like view.

use sonde_common::python::{
    PY_CODE_CHECK_LEN, PY_FRAME_ENTRY, PY_FRAME_KIND_ENTRY_FLAG, PY_FRAME_KIND_OBJECT,
    PY_FRAME_KIND_OWNER, PY_FRAME_NO_CHECKSUM, PY_FRAME_READ_MAX, PY_FRAMES_MAX,
    PY_PROC_CFRAME_HOP, PyCodeIdentity, PyFrameRecord, PyProcInfo, py_code_checksum,
};

use crate::{
    code::{CodeCache, CodeError},
    detect::{Interpreter, Rejected},
    mem::{MemError, ProcMem, le_u32, le_u64},
    offsets::{FrameKind, GLIBC_PTHREAD_TID},
};

fn u16_of(v: u64, what: &str) -> Result<u16, Rejected> {
    u16::try_from(v).map_err(|_| Rejected::Layout(format!("{what} offset {v} does not fit u16")))
}

/// The kernel's recipe for `interp`'s process. Reads the autoTSSkey,
/// which CPython creates once during start-up.
pub fn proc_info(interp: &Interpreter, mem: &ProcMem) -> Result<PyProcInfo, Rejected> {
    let o = &interp.offsets;
    if mem.i32(interp.tss_key_addr - 4)? != 1 {
        return Err(Rejected::NotReady("autoTSSkey not created"));
    }
    let key = u64::from(mem.u32(interp.tss_key_addr)?);
    let tsd = interp.tsd;
    if key >= tsd.first_block {
        return Err(Rejected::UnsupportedLibc(
            "TSS key beyond glibc's first block",
        ));
    }
    let (kind, owner_cstack) = match o.frame_kind {
        FrameKind::Object => (PY_FRAME_KIND_OBJECT, 0),
        FrameKind::EntryFlag => (PY_FRAME_KIND_ENTRY_FLAG, 0),
        FrameKind::Owner { cstack } => (PY_FRAME_KIND_OWNER, cstack),
    };
    let frame_fields = [
        (o.frame_previous, 8),
        (o.frame_code, 8),
        (
            o.frame_instr,
            if kind == PY_FRAME_KIND_OBJECT { 4 } else { 8 },
        ),
    ];
    let mut read_len = frame_fields
        .iter()
        .map(|(off, len)| off + len)
        .max()
        .unwrap_or(0);
    if kind != PY_FRAME_KIND_OBJECT {
        read_len = read_len.max(o.frame_entry + 1);
    }
    let read_len = read_len.next_multiple_of(8);
    if read_len > PY_FRAME_READ_MAX as u64 {
        return Err(Rejected::Layout(format!("frame read of {read_len} bytes")));
    }
    // (offset, size) of the identity fields in the code object.
    let mut code_fields = vec![
        (o.code_argcount, 4),
        (o.code_kwonlyargcount, 4),
        (o.code_flags, 4),
        (o.code_firstlineno, 4),
        (o.code_filename, 8),
        (o.code_name, 8),
    ];
    code_fields.extend(o.code_version.map(|v| (v, 4)));
    let check = code_fields.iter().map(|f| f.0).min().expect("fields");
    if code_fields
        .iter()
        .any(|(f, len)| f + len > check + PY_CODE_CHECK_LEN as u64 || (f - check) % 4 != 0)
    {
        return Err(Rejected::Layout(
            "code identity fields misaligned or beyond the checksum window".into(),
        ));
    }
    Ok(PyProcInfo {
        tss_key_addr: interp.tss_key_addr,
        none_addr: interp.none_struct,
        tsd_offset: u32::try_from(tsd.base + tsd.stride * key + tsd.value)
            .map_err(|_| Rejected::Layout("tsd offset".into()))?,
        flags: if o.cframe_current_frame.is_some() {
            PY_PROC_CFRAME_HOP
        } else {
            0
        },
        tstate_frame: u16_of(o.tstate_frame, "tstate frame")?,
        cframe_frame: u16_of(o.cframe_current_frame.unwrap_or(0), "cframe")?,
        frame_read_len: read_len as u16,
        frame_previous: u16_of(o.frame_previous, "previous")?,
        frame_code: u16_of(o.frame_code, "code")?,
        frame_instr: u16_of(o.frame_instr, "instr")?,
        frame_entry: u16_of(o.frame_entry, "entry")?,
        code_check: u16_of(check, "check")?,
        code_argcount: u16_of(o.code_argcount, "argcount")?,
        code_kwonly: u16_of(o.code_kwonlyargcount, "kwonly")?,
        code_flags: u16_of(o.code_flags, "flags")?,
        code_firstlineno: u16_of(o.code_firstlineno, "firstlineno")?,
        code_adaptive: u16_of(o.code_adaptive.unwrap_or(0), "adaptive")?,
        code_version: u16_of(o.code_version.unwrap_or(0), "version")?,
        code_filename: u16_of(o.code_filename, "filename")?,
        code_name: u16_of(o.code_name, "name")?,
        str_hash: u16_of(o.unicode_hash, "str hash")?,
        version: ((interp.major << 8) | interp.minor) as u16,
        frame_kind: kind,
        owner_cstack,
        _pad: [0; 2],
    })
}

/// The kernel's walk, step for step, for the thread whose fsbase is
/// `fsbase`: one read per frame (`frame_read_len` bytes) and one of the
/// code object's checksum window. Empty when the thread has no Python state.
pub fn kernel_walk(
    mem: &ProcMem,
    info: &PyProcInfo,
    fsbase: u64,
) -> Result<Vec<PyFrameRecord>, MemError> {
    let tstate = mem.u64(fsbase + u64::from(info.tsd_offset))?;
    if tstate == 0 {
        return Ok(Vec::new());
    }
    let mut frame = mem.u64(tstate + u64::from(info.tstate_frame))?;
    if info.flags & PY_PROC_CFRAME_HOP != 0 && frame != 0 {
        frame = mem.u64(frame + u64::from(info.cframe_frame))?;
    }
    let mut out: Vec<PyFrameRecord> = Vec::new();
    let mut buf = [0u8; PY_FRAME_READ_MAX];
    for _ in 0..PY_FRAMES_MAX {
        if frame == 0 {
            break;
        }
        let b = &mut buf[..usize::from(info.frame_read_len)];
        mem.read(frame, b)?;
        let field = |off: u16| le_u64(b, usize::from(off)).unwrap_or(0);
        let code = field(info.frame_code);
        let previous = field(info.frame_previous);
        let entry_byte = b.get(usize::from(info.frame_entry)).copied().unwrap_or(0);
        let (instr, mut flags) = match info.frame_kind {
            PY_FRAME_KIND_OBJECT => (
                le_u32(b, usize::from(info.frame_instr)).unwrap_or(u32::MAX),
                PY_FRAME_ENTRY,
            ),
            _ => {
                let ip = field(info.frame_instr);
                let bci = (ip
                    .wrapping_sub(code)
                    .wrapping_sub(u64::from(info.code_adaptive)) as i64)
                    >> 1;
                let entry = info.frame_kind == PY_FRAME_KIND_ENTRY_FLAG && entry_byte != 0;
                (bci as u32, if entry { PY_FRAME_ENTRY } else { 0 })
            }
        };
        if info.frame_kind == PY_FRAME_KIND_OWNER
            && (entry_byte == info.owner_cstack || code == info.none_addr)
        {
            if let Some(last) = out.last_mut() {
                last.flags |= PY_FRAME_ENTRY;
            }
            frame = previous;
            continue;
        }
        let mut window = [0u8; PY_CODE_CHECK_LEN];
        let identity = mem
            .read(code + u64::from(info.code_check), &mut window)
            .and_then(|()| {
                let at = |off: u16| usize::from(off - info.code_check);
                let f = |off: u16| le_u32(&window, at(off)).unwrap_or(0) as i32;
                let name = le_u64(&window, at(info.code_name)).unwrap_or(0);
                Ok(PyCodeIdentity {
                    argcount: f(info.code_argcount),
                    kwonly: f(info.code_kwonly),
                    flags: f(info.code_flags),
                    firstlineno: f(info.code_firstlineno),
                    version: if info.code_version != 0 {
                        f(info.code_version) as u32
                    } else {
                        0
                    },
                    filename: le_u64(&window, at(info.code_filename)).unwrap_or(0),
                    name_hash: mem.u64(name + u64::from(info.str_hash))?,
                })
            });
        let checksum = match identity {
            Ok(id) => py_code_checksum(&id),
            Err(_) => {
                flags |= PY_FRAME_NO_CHECKSUM;
                0
            }
        };
        out.push(PyFrameRecord {
            code,
            instr,
            checksum,
            flags,
            _pad: 0,
        });
        frame = previous;
    }
    Ok(out)
}

/// One named Python frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub record: PyFrameRecord,
    pub qualname: String,
    pub filename: String,
    pub line: Option<i32>,
}

/// A thread's Python stack, youngest frame first.
#[derive(Clone, Debug)]
pub struct ThreadStack {
    /// Kernel thread id (3.10: read from glibc's `struct pthread`).
    pub native_tid: Option<u32>,
    /// `pthread_t`, which glibc makes the thread's TCB, i.e. its fsbase.
    pub pthread: u64,
    pub tstate: u64,
    pub frames: Vec<PyFrameRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Mem(#[from] MemError),
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error("more than {0} thread states: a cycle?")]
    TooManyThreads(usize),
}

const MAX_THREADS: usize = 4096;

/// Every thread of the main interpreter, walked field by field.
pub fn threads(interp: &Interpreter, mem: &ProcMem) -> Result<Vec<ThreadStack>, WalkError> {
    let o = &interp.offsets;
    let head = mem.u64(interp.runtime + o.runtime_interpreters_head)?;
    let mut tstate = mem.u64(head + o.interp_threads_head)?;
    let mut out = Vec::new();
    while tstate != 0 {
        if out.len() == MAX_THREADS {
            return Err(WalkError::TooManyThreads(MAX_THREADS));
        }
        let pthread = mem.u64(tstate + o.tstate_thread_id)?;
        let native_tid = match o.tstate_native_thread_id {
            Some(off) => Some(mem.u64(tstate + off)? as u32),
            None => mem.u32(pthread + GLIBC_PTHREAD_TID).ok(),
        };
        out.push(ThreadStack {
            native_tid,
            pthread,
            tstate,
            frames: frames_of(interp, mem, tstate)?,
        });
        tstate = mem.u64(tstate + o.tstate_next)?;
    }
    Ok(out)
}

/// A thread state's frames, field by field.
pub fn frames_of(
    interp: &Interpreter,
    mem: &ProcMem,
    tstate: u64,
) -> Result<Vec<PyFrameRecord>, WalkError> {
    let o = &interp.offsets;
    let mut frame = mem.u64(tstate + o.tstate_frame)?;
    if let (Some(cf), true) = (o.cframe_current_frame, frame != 0) {
        frame = mem.u64(frame + cf)?;
    }
    let mut out: Vec<PyFrameRecord> = Vec::new();
    // Shim frames count against the limit, as in the kernel's loop.
    for _ in 0..PY_FRAMES_MAX {
        if frame == 0 {
            break;
        }
        let code = mem.u64(frame + o.frame_code)?;
        let previous = mem.u64(frame + o.frame_previous)?;
        let (instr, flags) = match o.frame_kind {
            FrameKind::Object => (mem.i32(frame + o.frame_instr)?, PY_FRAME_ENTRY),
            FrameKind::EntryFlag | FrameKind::Owner { .. } => {
                if let FrameKind::Owner { cstack } = o.frame_kind
                    && mem.u8(frame + o.frame_entry)? == cstack
                {
                    if let Some(last) = out.last_mut() {
                        last.flags |= PY_FRAME_ENTRY;
                    }
                    frame = previous;
                    continue;
                }
                let start = code + o.code_adaptive.unwrap_or(0);
                let ip = mem.u64(frame + o.frame_instr)?;
                let entry =
                    o.frame_kind == FrameKind::EntryFlag && mem.u8(frame + o.frame_entry)? != 0;
                (
                    ((ip.wrapping_sub(start)) as i64 >> 1) as i32,
                    if entry { PY_FRAME_ENTRY } else { 0 },
                )
            }
        };
        let checksum = crate::code::read_checksum(mem, o, code)?;
        out.push(PyFrameRecord {
            code,
            instr: instr as u32,
            checksum,
            flags,
            _pad: 0,
        });
        frame = previous;
    }
    Ok(out)
}

/// Names the records of one stack through `cache`.
pub fn symbolize(
    interp: &Interpreter,
    mem: &ProcMem,
    cache: &mut CodeCache,
    records: &[PyFrameRecord],
) -> Result<Vec<Frame>, CodeError> {
    records
        .iter()
        .map(|r| {
            let checksum = (r.flags & PY_FRAME_NO_CHECKSUM == 0).then_some(r.checksum);
            let c = cache.get(mem, &interp.offsets, interp.code_type, r.code, checksum)?;
            Ok(Frame {
                record: *r,
                qualname: c.qualname.clone(),
                filename: c.filename.clone(),
                line: c.line(r.instr as i32),
            })
        })
        .collect()
}

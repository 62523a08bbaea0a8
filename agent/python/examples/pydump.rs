//! `pydump PID`: every thread's Python stack, like `py-spy dump`, and the
//! `PyProcInfo` the kernel would get for the process.

use sonde_python::{ProcMem, code::CodeCache, detect, walk};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pid: u32 = std::env::args()
        .nth(1)
        .ok_or("usage: pydump PID")?
        .parse()?;
    let interp = detect(pid).map_err(|e| format!("{} ({})", e, e.label()))?;
    let mem = ProcMem::new(pid);
    println!(
        "CPython {}.{} in {} (bias {:#x}); eval ranges {:x?}",
        interp.major,
        interp.minor,
        interp.path,
        interp.bias,
        interp.interpreter_ranges()
    );
    println!("{:#?}", walk::proc_info(&interp, &mem)?);
    let mut cache = CodeCache::new(1024);
    for t in walk::threads(&interp, &mem)? {
        println!("Thread {:?} (pthread {:#x})", t.native_tid, t.pthread);
        for f in walk::symbolize(&interp, &mem, &mut cache, &t.frames)? {
            let entry = if f.record.flags & sonde_common::python::PY_FRAME_ENTRY != 0 {
                " [entry]"
            } else {
                ""
            };
            println!(
                "    {} ({}:{}){entry}",
                f.qualname,
                f.filename,
                f.line.unwrap_or(0)
            );
        }
    }
    Ok(())
}

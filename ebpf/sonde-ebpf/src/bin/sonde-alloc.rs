//! `sonde alloc`'s object: malloc-family entry uprobes, one return probe
//! shared by every allocation function, and the `free` probe, plus the
//! Python stack walk (python.rs). The agent attaches them to one process's
//! libc, and to its interpreter's allocator for a CPython process, for one
//! session.
#![no_std]
#![no_main]

#[path = "../alloc.rs"]
mod alloc;
#[allow(dead_code, reason = "shared by every object; not all use `bump_by`")]
#[path = "../counters.rs"]
mod counters;
#[allow(dead_code, reason = "the walk uses a few of the ABI helpers")]
#[path = "../python.rs"]
mod python;

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

#[uprobe]
pub fn alloc_malloc(ctx: ProbeContext) -> u32 {
    alloc::malloc_enter(&ctx, 0)
}

#[uprobe]
pub fn alloc_calloc(ctx: ProbeContext) -> u32 {
    alloc::calloc_enter(&ctx, 0)
}

#[uprobe]
pub fn alloc_realloc(ctx: ProbeContext) -> u32 {
    alloc::realloc_enter(&ctx, 0)
}

#[uprobe]
pub fn alloc_memalign(ctx: ProbeContext) -> u32 {
    alloc::memalign_enter(&ctx)
}

#[uprobe]
pub fn alloc_posix_memalign(ctx: ProbeContext) -> u32 {
    alloc::posix_memalign_enter(&ctx)
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    alloc::alloc_return(&ctx)
}

#[uprobe]
pub fn alloc_free(ctx: ProbeContext) -> u32 {
    alloc::free_enter(&ctx, 0)
}

// CPython's allocator implementations (`_PyObject_Malloc(ctx, size)`, ...):
// the same programs, one argument further.

#[uprobe]
pub fn alloc_py_malloc(ctx: ProbeContext) -> u32 {
    alloc::malloc_enter(&ctx, 1)
}

#[uprobe]
pub fn alloc_py_calloc(ctx: ProbeContext) -> u32 {
    alloc::calloc_enter(&ctx, 1)
}

#[uprobe]
pub fn alloc_py_realloc(ctx: ProbeContext) -> u32 {
    alloc::realloc_enter(&ctx, 1)
}

#[uprobe]
pub fn alloc_py_free(ctx: ProbeContext) -> u32 {
    alloc::free_enter(&ctx, 1)
}

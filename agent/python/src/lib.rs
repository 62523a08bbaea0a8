//! The user side of sonde's Python-aware stacks: detection of CPython
//! processes ([`detect`]), per-version field offsets ([`offsets`]), the
//! [`sonde_common::python::PyProcInfo`] the kernel's frame walk runs on and
//! a userspace rendition of that walk ([`walk`]), and code-object
//! symbolization with a validated cache ([`code`]).

pub mod code;
pub mod detect;
pub mod elf;
pub mod mem;
pub mod offsets;
pub mod walk;

pub use detect::{Detector, Interpreter, Rejected, detect};

/// Where the kernel finds a task's fsbase: `task_struct.thread` plus
/// `thread_struct.fsbase`, to be summed from the kernel's BTF by the agent
/// (3088 + 40 = 3128 on this machine's 6.18 kernel) and handed to the
/// program as a global.
pub const FSBASE_BTF_PATH: [(&str, &str); 2] =
    [("task_struct", "thread"), ("thread_struct", "fsbase")];
pub use mem::ProcMem;

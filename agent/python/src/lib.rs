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

pub use detect::{Interpreter, Rejected, detect};
pub use mem::ProcMem;

//! Task-local storage (`BPF_MAP_TYPE_TASK_STORAGE`): a value that lives in
//! the task itself, found through the task pointer without hashing, and
//! freed by the kernel when the task exits.
//!
//! aya-ebpf 0.2 has no wrapper for this map type and keeps its BTF map
//! definition macro private, so the definition is written here the way
//! libbpf and aya's BTF maps lay it out: a `.maps` section struct whose
//! pointer fields encode the map's type, key, value and flags in BTF (the
//! kernel refuses a task storage map without BTF key and value types).

use core::ptr;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type, task_struct},
    helpers::generated::bpf_task_storage_get,
};

/// A task storage map with values of type `T`. Declare it with
/// `#[btf_map]` and [`TaskStorage::new`].
#[repr(C)]
pub struct TaskStorage<T> {
    // The field names and pointer types are the BTF encoding the loader
    // reads; the fields are never dereferenced.
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader replaces; Rust code never
// reads them, so sharing the static between program runs shares no state.
unsafe impl<T> Sync for TaskStorage<T> {}

#[expect(
    clippy::mut_from_ref,
    reason = "the values live in the tasks, not in the map definition `self`"
)]
impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    #[inline(always)]
    fn get(&self, task: *mut task_struct, flags: u64) -> Option<&mut T> {
        // SAFETY: the helper checks `task` (a trusted BTF pointer for the
        // verifier) and returns this map's value in that task, or null.
        let p = unsafe {
            bpf_task_storage_get(
                ptr::from_ref(self).cast_mut().cast(),
                task,
                ptr::null_mut(),
                flags,
            )
        }
        .cast::<T>();
        // SAFETY: a non-null result points at a live value of type `T`,
        // valid for this program run.
        unsafe { p.as_mut() }
    }

    /// `task`'s value, if it has one.
    #[inline(always)]
    pub fn get_mut(&self, task: *mut task_struct) -> Option<&mut T> {
        self.get(task, 0)
    }

    /// `task`'s value, created zeroed if it has none (None: no memory).
    #[inline(always)]
    pub fn get_or_create(&self, task: *mut task_struct) -> Option<&mut T> {
        self.get(task, BPF_LOCAL_STORAGE_GET_F_CREATE.into())
    }
}

//! Field offsets of kernel structures, read from the kernel's BTF
//! (/sys/kernel/btf/vmlinux), for programs that read a field whose offset
//! depends on the kernel's build (aya's Rust programs carry no CO-RE
//! relocations, so the agent hands the offset over in a map).

use btf_rs::{Btf, Type};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading {VMLINUX}: {0}")]
    Btf(String),
    #[error("struct {0} not in the kernel's BTF")]
    NoStruct(&'static str),
    #[error("no field {1} in struct {0}")]
    NoField(&'static str, &'static str),
    #[error("{0}.{1} is a bitfield")]
    Bitfield(&'static str, &'static str),
}

/// Byte offset of `field` in `struct name`, looking through anonymous
/// struct/union members (most of `struct mm_struct` sits inside one).
pub fn field_offset(name: &'static str, field: &'static str) -> Result<u64, LayoutError> {
    let btf = Btf::from_file(VMLINUX).map_err(|e| LayoutError::Btf(e.to_string()))?;
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|_| LayoutError::NoStruct(name))?;
    for t in types {
        if let Type::Struct(s) = t {
            return match find(&btf, &s, field, 0) {
                Some(bits) if bits.is_multiple_of(8) => Ok(u64::from(bits / 8)),
                Some(_) => Err(LayoutError::Bitfield(name, field)),
                None => Err(LayoutError::NoField(name, field)),
            };
        }
    }
    Err(LayoutError::NoStruct(name))
}

/// Bit offset of `field` in `s` (which starts at bit `base`).
fn find(btf: &Btf, s: &btf_rs::Struct, field: &str, base: u32) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return Some(base + m.bit_offset());
        }
        if name.is_empty()
            && let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
            && let Some(o) = find(btf, &inner, field, base + m.bit_offset())
        {
            return Some(o);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this machine's kernel: `total_vm` lives in the anonymous struct
    /// that holds nearly all of `mm_struct`, after a few hundred bytes of
    /// other fields; `brk` follows it. Unknown names are clear errors.
    #[test]
    fn mm_struct_offsets_from_the_running_kernel() {
        let total_vm = field_offset("mm_struct", "total_vm").expect("total_vm");
        let brk = field_offset("mm_struct", "brk").expect("brk");
        assert!(total_vm > 0 && total_vm.is_multiple_of(8), "{total_vm}");
        assert!(brk > total_vm, "brk {brk} total_vm {total_vm}");
        assert!(matches!(
            field_offset("mm_struct", "no_such_field"),
            Err(LayoutError::NoField(..))
        ));
        assert!(matches!(
            field_offset("no_such_struct_xyz", "x"),
            Err(LayoutError::NoStruct(_))
        ));
    }
}

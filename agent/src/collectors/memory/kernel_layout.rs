//! Field offsets of kernel structures, read from the kernel's BTF
//! (/sys/kernel/btf/vmlinux, read once at start-up: `kit::KernelBtf`), for
//! programs that read a field whose offset
//! depends on the kernel's build (aya's Rust programs carry no CO-RE
//! relocations, so the agent hands the offset over in a map).
//!
//! Why a small scanner instead of a BTF library: the full parse that
//! btf-rs does (every type, with names) peaked at 53 MB of RSS on this
//! machine's 6 MB vmlinux BTF, for one offset, in an always-on agent. This
//! walks the type section once, keeps the start of each type record (4
//! bytes per type), and follows only the types on the way to the field.
//! The tests check it against btf-rs.

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading {VMLINUX}: {0}")]
    Read(#[from] std::io::Error),
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("struct {0} not in the kernel's BTF")]
    NoStruct(String),
    #[error("no field {1} in struct {0}")]
    NoField(String, String),
    #[error("{0}.{1} is a bitfield")]
    Bitfield(String, String),
}

/// Byte offset of `field` in `struct name` of the running kernel, looking
/// through anonymous struct/union members (most of `struct mm_struct` sits
/// inside one). The tests read the file themselves; the agent passes the
/// blob it read once (`field_offset_in`).
#[cfg(test)]
pub fn field_offset(name: &str, field: &str) -> Result<u64, LayoutError> {
    field_offset_in(&std::fs::read(VMLINUX)?, name, field)
}

/// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A parsed view of one BTF blob (little-endian, as on every target we
/// build for).
struct Blob<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Start of each type record in `types`; type id N is `starts[N - 1]`.
    starts: Vec<u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, LayoutError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(LayoutError::Malformed("record past the end"))
}

impl<'a> Blob<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, LayoutError> {
        if data.get(..2) != Some(&0xeb9f_u16.to_le_bytes()[..]) {
            return Err(LayoutError::Malformed("bad magic (or big-endian)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(LayoutError::Malformed("section past the end"))
        };
        let (types, strings) = (section(type_off, type_len)?, section(str_off, str_len)?);
        let mut starts = Vec::with_capacity(types.len() / 24);
        let mut at = 0;
        while at < types.len() {
            starts.push(at as u32);
            let info = u32_at(types, at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            at += 12 + extra;
        }
        Ok(Blob {
            types,
            strings,
            starts,
        })
    }

    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
    }

    /// (start, kind, vlen, kind_flag) of type `id`.
    fn header(&self, id: u32) -> Result<(usize, u32, usize, bool), LayoutError> {
        let start = *self
            .starts
            .get((id as usize).wrapping_sub(1))
            .ok_or(LayoutError::Malformed("type id out of range"))? as usize;
        let info = u32_at(self.types, start + 4)?;
        Ok((
            start,
            (info >> 24) & 0x1f,
            (info & 0xffff) as usize,
            info >> 31 == 1,
        ))
    }

    /// `id` with typedefs and qualifiers stripped.
    fn resolve(&self, mut id: u32) -> Result<u32, LayoutError> {
        for _ in 0..32 {
            let (start, kind, ..) = self.header(id)?;
            match kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = u32_at(self.types, start + 8)?;
                }
                _ => return Ok(id),
            }
        }
        Err(LayoutError::Malformed("type chain too long"))
    }

    /// Bit offset of `field` in struct/union `id`, which starts at `base`.
    fn find(
        &self,
        id: u32,
        field: &[u8],
        base: u32,
        depth: u32,
    ) -> Result<Option<(u32, bool)>, LayoutError> {
        if depth > 8 {
            return Ok(None);
        }
        let (start, _, vlen, kind_flag) = self.header(id)?;
        for i in 0..vlen {
            let m = start + 12 + 12 * i;
            let (name, ty, raw) = (
                u32_at(self.types, m)?,
                u32_at(self.types, m + 4)?,
                u32_at(self.types, m + 8)?,
            );
            let (bits, bitfield) = if kind_flag {
                (raw & 0xff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            let name = self.name(name);
            if name == field {
                return Ok(Some((base + bits, bitfield)));
            }
            if name.is_empty() {
                let inner = self.resolve(ty)?;
                let (_, kind, ..) = self.header(inner)?;
                if (kind == KIND_STRUCT || kind == KIND_UNION)
                    && let Some(found) = self.find(inner, field, base + bits, depth + 1)?
                {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }
}

/// Byte offset of `field` in `struct name` of the BTF blob `data` (see
/// `field_offset`).
pub fn field_offset_in(data: &[u8], name: &str, field: &str) -> Result<u64, LayoutError> {
    let blob = Blob::parse(data)?;
    for id in 1..=blob.starts.len() as u32 {
        let (start, kind, ..) = blob.header(id)?;
        if kind != KIND_STRUCT || blob.name(u32_at(blob.types, start)?) != name.as_bytes() {
            continue;
        }
        return match blob.find(id, field.as_bytes(), 0, 0)? {
            Some((bits, false)) if bits.is_multiple_of(8) => Ok(u64::from(bits / 8)),
            Some(_) => Err(LayoutError::Bitfield(name.into(), field.into())),
            None => Err(LayoutError::NoField(name.into(), field.into())),
        };
    }
    Err(LayoutError::NoStruct(name.into()))
}

#[cfg(test)]
mod tests {
    use btf_rs::{Btf, Type};

    use super::*;

    /// The same offset from btf-rs's full parse (a dev-dependency only).
    fn reference(name: &str, field: &str) -> Option<u64> {
        fn find(btf: &Btf, s: &btf_rs::Struct, field: &str, base: u32) -> Option<u32> {
            for m in &s.members {
                let n = btf.resolve_name(m).unwrap_or_default();
                if n == field {
                    return Some(base + m.bit_offset());
                }
                if n.is_empty()
                    && let Ok(Type::Struct(inner) | Type::Union(inner)) =
                        btf.resolve_chained_type(m)
                    && let Some(o) = find(btf, &inner, field, base + m.bit_offset())
                {
                    return Some(o);
                }
            }
            None
        }
        let btf = Btf::from_file(VMLINUX).ok()?;
        btf.resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => find(&btf, &s, field, 0).map(|b| u64::from(b / 8)),
                _ => None,
            })
    }

    /// On the running kernel, fields at the top level, inside the
    /// anonymous struct that holds nearly all of `mm_struct`, and in other
    /// structs agree with btf-rs; unknown names are clear errors.
    #[test]
    fn offsets_match_a_full_btf_parse() {
        for (s, f) in [
            ("mm_struct", "total_vm"),
            ("mm_struct", "brk"),
            ("mm_struct", "start_brk"),
            ("mm_struct", "mm_users"),
            ("task_struct", "mm"),
            ("task_struct", "tgid"),
            ("sock_common", "skc_num"),
        ] {
            let ours = field_offset(s, f).unwrap_or_else(|e| panic!("{s}.{f}: {e}"));
            assert_eq!(Some(ours), reference(s, f), "{s}.{f}");
        }
        assert!(field_offset("mm_struct", "total_vm").unwrap() > 0);
        assert!(matches!(
            field_offset("mm_struct", "no_such_field"),
            Err(LayoutError::NoField(..))
        ));
        assert!(matches!(
            field_offset("no_such_struct_xyz", "x"),
            Err(LayoutError::NoStruct(_))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            field_offset_in(b"not btf at all", "mm_struct", "brk"),
            Err(LayoutError::Malformed(_))
        ));
        let mut truncated = std::fs::read(VMLINUX).unwrap();
        truncated.truncate(4096);
        assert!(field_offset_in(&truncated, "mm_struct", "brk").is_err());
    }
}

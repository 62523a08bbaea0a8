//! pprof encoding: gzipped `perftools.profiles.Profile` (google/pprof
//! profile.proto), with the messages declared here through prost derives so
//! the build needs no protoc.

use std::{collections::HashMap, io::Write as _, sync::Arc, time::UNIX_EPOCH};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::store::{Frame, Module, Profile};

#[derive(Clone, PartialEq, Message)]
pub struct PProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<PSample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PSample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// (module, address, inlined frames): what makes a location distinct.
type LocKey = (Arc<str>, u64, Vec<(Arc<str>, u32)>);

#[derive(Default)]
struct Builder {
    p: PProfile,
    strings: HashMap<String, i64>,
    mappings: HashMap<Arc<Module>, u64>,
    functions: HashMap<(Arc<str>, Option<Arc<str>>), u64>,
    locations: HashMap<LocKey, u64>,
}

impl Builder {
    fn s(&mut self, v: &str) -> i64 {
        if let Some(&i) = self.strings.get(v) {
            return i;
        }
        let i = self.p.string_table.len() as i64;
        self.p.string_table.push(v.to_owned());
        self.strings.insert(v.to_owned(), i);
        i
    }

    fn mapping(&mut self, m: &Arc<Module>) -> u64 {
        if let Some(&id) = self.mappings.get(m) {
            return id;
        }
        let id = self.p.mapping.len() as u64 + 1;
        let filename = self.s(&m.path);
        let build_id = self.s(m.build_id.as_deref().unwrap_or(""));
        self.p.mapping.push(Mapping {
            id,
            // Addresses are file offsets (user) or kernel addresses, so the
            // mapping spans the whole space: no per-process relocation.
            memory_start: 0,
            memory_limit: u64::MAX,
            file_offset: 0,
            filename,
            build_id,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        self.mappings.insert(m.clone(), id);
        id
    }

    fn function(&mut self, f: &Frame) -> u64 {
        let key = (f.function.clone(), f.file.clone());
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.p.function.len() as u64 + 1;
        let name = self.s(&f.function);
        let filename = self.s(f.file.as_deref().unwrap_or(""));
        self.p.function.push(Function {
            id,
            name,
            system_name: name,
            filename,
        });
        self.functions.insert(key, id);
        id
    }

    /// One location for an address and the inlined frames at it (leaf
    /// first, as pprof's `Location.line` wants).
    fn location(&mut self, group: &[Frame]) -> u64 {
        let head = &group[0];
        let key: LocKey = (
            head.module.path.clone(),
            head.addr,
            group.iter().map(|f| (f.function.clone(), f.line)).collect(),
        );
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.p.location.len() as u64 + 1;
        let mapping_id = self.mapping(&head.module);
        let line = group
            .iter()
            .map(|f| Line {
                function_id: self.function(f),
                line: f.line as i64,
            })
            .collect();
        self.p.location.push(Location {
            id,
            mapping_id,
            address: head.addr,
            line,
        });
        self.locations.insert(key, id);
        id
    }
}

/// Splits a leaf-first stack into per-address groups: inlined frames are
/// followed by the frame they were inlined into, at the same address.
fn groups(stack: &[Frame]) -> Vec<&[Frame]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, f) in stack.iter().enumerate() {
        if !f.inlined {
            out.push(&stack[start..=i]);
            start = i + 1;
        }
    }
    if start < stack.len() {
        out.push(&stack[start..]);
    }
    out
}

/// The profile as an uncompressed `Profile` message.
pub fn build(p: &Profile) -> PProfile {
    let period = p.period_ns;
    let mut out = build_values(
        p,
        &[("samples", "count"), ("cpu", "nanoseconds")],
        |_, s| vec![s.count as i64, (s.count * period) as i64],
    );
    let b_cpu = out
        .string_table
        .iter()
        .position(|x| x == "cpu")
        .unwrap_or(0) as i64;
    let b_nanos = out
        .string_table
        .iter()
        .position(|x| x == "nanoseconds")
        .unwrap_or(0) as i64;
    out.period_type = Some(ValueType {
        r#type: b_cpu,
        unit: b_nanos,
    });
    out.period = period as i64;
    out.default_sample_type = b_cpu;
    out
}

/// A profile whose samples carry the values `values` computes, one per
/// `(type, unit)` of `types` (e.g. memory: `inuse_space`/`bytes`, ...),
/// given the sample's index in `p.samples`. The default sample type is the
/// first.
pub fn build_values(
    p: &Profile,
    types: &[(&str, &str)],
    values: impl Fn(usize, &super::store::Sample) -> Vec<i64>,
) -> PProfile {
    let mut b = Builder::default();
    b.s("");
    for (t, u) in types {
        let (r#type, unit) = (b.s(t), b.s(u));
        b.p.sample_type.push(ValueType { r#type, unit });
    }
    b.p.default_sample_type = b.p.sample_type.first().map(|v| v.r#type).unwrap_or(0);
    b.p.time_nanos = p
        .start
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    b.p.duration_nanos = p.duration.as_nanos() as i64;
    let (k_pid, k_comm, k_service) = (b.s("pid"), b.s("comm"), b.s("service_name"));
    for (i, s) in p.samples.iter().enumerate() {
        let location_id = groups(&s.stack)
            .into_iter()
            .map(|g| b.location(g))
            .collect();
        let mut label = vec![
            Label {
                key: k_pid,
                str: 0,
                num: s.pid as i64,
            },
            Label {
                key: k_comm,
                str: b.s(&s.comm),
                num: 0,
            },
            Label {
                key: k_service,
                str: b.s(&s.service),
                num: 0,
            },
        ];
        if let Some(r) = &s.route {
            // OTel semconv attribute names, as the HTTP metrics use.
            label.push(Label {
                key: b.s("http_route"),
                str: b.s(&r.route),
                num: 0,
            });
            label.push(Label {
                key: b.s("http_request_method"),
                str: b.s(r.method),
                num: 0,
            });
        }
        b.p.sample.push(PSample {
            location_id,
            value: values(i, s),
            label,
        });
    }
    b.p
}

/// Gzips an encoded `Profile` message.
pub fn gzip(p: &PProfile) -> Vec<u8> {
    let raw = p.encode_to_vec();
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 2), Compression::default());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(&raw);
    gz.finish().unwrap_or_default()
}

/// Gzipped protobuf, what `go tool pprof` and Pyroscope read.
pub fn encode(p: &Profile) -> Vec<u8> {
    gzip(&build(p))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::collectors::profile::render::tests::sample_profile;

    #[test]
    fn round_trips_with_names_lines_and_values() {
        let p = sample_profile();
        let gz = encode(&p);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let d = PProfile::decode(&raw[..]).unwrap();
        let st = &d.string_table;
        assert_eq!(st[0], "");
        assert_eq!(st[d.sample_type[0].r#type as usize], "samples");
        assert_eq!(st[d.sample_type[1].unit as usize], "nanoseconds");
        let total: i64 = d.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 10);
        // Leaf of the first sample is `c` with a line number.
        let leaf = d.sample[0].location_id[0];
        let loc = d.location.iter().find(|l| l.id == leaf).unwrap();
        let f = d
            .function
            .iter()
            .find(|f| f.id == loc.line[0].function_id)
            .unwrap();
        assert_eq!(st[f.name as usize], "c");
        assert!(loc.line[0].line > 0);
        let m = d.mapping.iter().find(|m| m.id == loc.mapping_id).unwrap();
        assert_eq!(st[m.build_id as usize], "abcd");
    }

    #[test]
    fn inlined_frames_share_a_location() {
        let mut f1 = crate::collectors::profile::render::tests::frame(
            "inner",
            crate::collectors::profile::store::FrameKind::User,
            3,
        );
        f1.inlined = true;
        let f2 = crate::collectors::profile::render::tests::frame(
            "outer",
            crate::collectors::profile::store::FrameKind::User,
            3,
        );
        let stack = [f1, f2];
        assert_eq!(groups(&stack).len(), 1);
    }
}

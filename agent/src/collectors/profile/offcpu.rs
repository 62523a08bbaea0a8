//! Off-CPU profiles: where threads wait, weighted by the time they were
//! off CPU. The kernel side is the profile object's tp_btf `sched_switch`
//! program (ebpf/sonde-ebpf/src/offcpu.rs): it takes a user thread's stack
//! as it leaves the CPU, with the CPU sampler's key and stack maps, and
//! adds the time away to per-generation counts when it comes back.
//!
//! Here: configuring and attaching that program ([`attach`]), reading its
//! counts at each drain ([`OffCpuMaps`]; the drain keeps the stack ids that
//! threads still parked refer to), and the parts of rendering that differ
//! from a CPU profile (pprof sample type `off_cpu/nanoseconds`, times in
//! the top table). Samples go through the same symbolizer into their own
//! window, [`OffCpuStore`], whose `count` is nanoseconds.

use std::{collections::HashSet, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap},
};
use prometheus::{IntCounterVec, Opts};
use sonde_common::{
    offcpu::{
        OFFCPU_CAP_SLOT, OFFCPU_FLAGS_OFF_SLOT, OFFCPU_MIN_BLOCK_SLOT, OFFCPU_ON_SLOT,
        OffCpuCounter, OffCpuKey, OffCpuPending,
    },
    profile::StackKey,
};

use super::{
    offcpu_demand::Demand,
    pprof::{self, PProfile},
    render,
    store::{Profile, ProfileStore},
};
use crate::{
    collectors::{
        CollectorError,
        kit::{
            attach::{Hook, HookSet, Links, attach_links, load_set},
            counters::KernelCounters,
            take_map,
        },
        memory::kernel_layout::field_offset_in,
    },
    config::ProfileConfig,
    ebpf::KernelBtf,
};

pub const PROGRAM: &str = "profile_offcpu";

const HOOKS: HookSet = HookSet::new(
    Some("tp_btf"),
    "tp_btf sched_switch",
    &[Hook::TpBtf(PROGRAM, "sched_switch")],
);

/// Rate-cap windows per second (`OFFCPU_RATE_WINDOW_NS` is 1/16 s).
const WINDOWS_PER_S: u64 = 16;

/// Parked entries older than this are checked against /proc at each drain,
/// and removed when their thread is gone (it exited while blocked).
const PRUNE_AFTER: Duration = Duration::from_secs(30);

/// The window of off-CPU samples (`count` = blocked nanoseconds), a handle
/// of its own next to the CPU profile's [`ProfileStore`], and, in
/// on-demand mode, the switch a request takes a lease on.
#[derive(Clone)]
pub struct OffCpuStore {
    pub store: ProfileStore,
    /// `None`: always on (`off_cpu = true`).
    pub demand: Option<Demand>,
}

/// The program's maps, owned by the drain thread.
pub struct OffCpuMaps {
    control: Array<MapData, u64>,
    counts: [PerCpuHashMap<MapData, OffCpuKey, u64>; 2],
    pending: BpfHashMap<MapData, u32, OffCpuPending>,
    counters: KernelCounters<OffCpuCounter>,
    events: IntCounterVec,
}

/// Off-CPU rows of one drain, split by the generation holding their stacks.
#[derive(Debug, Default)]
pub struct OffCpuRows {
    /// Stacks in the generation just drained (read with the CPU rows).
    pub idle: Vec<(StackKey, u64)>,
    /// Stacks in the generation now current: threads that were parked
    /// before the previous flip and came back since.
    pub active: Vec<(StackKey, u64)>,
}

/// Sets the program's offsets and limits and loads it, not yet attached
/// ([`OffCpuMaps::switch_on`] attaches it). The maps are taken only once
/// it loaded: an error leaves the CPU profiler as it was.
pub fn prepare(
    obj: &mut Ebpf,
    btf: &KernelBtf,
    config: &ProfileConfig,
    telemetry: &crate::telemetry::Telemetry,
) -> Result<OffCpuMaps, CollectorError> {
    let raw = btf
        .raw()
        .map_err(|e| CollectorError::NoHook(format!("kernel BTF: {e}")))?;
    let offset = |field: &str| {
        field_offset_in(raw, "task_struct", field).map_err(|e| {
            CollectorError::NoHook(format!("task_struct.{field} in the kernel's BTF: {e}"))
        })
    };
    let flags_off = offset("flags")?;
    let mut control: Array<MapData, u64> = take_map(obj, "OFFCPU_CONTROL")?;
    let cap = config.off_cpu_max_rate.get().div_ceil(WINDOWS_PER_S);
    let min_block = config.off_cpu_min_block.get().as_nanos() as u64;
    for (slot, v) in [
        (OFFCPU_FLAGS_OFF_SLOT, flags_off),
        (OFFCPU_MIN_BLOCK_SLOT, min_block),
        (OFFCPU_CAP_SLOT, cap),
    ] {
        control
            .set(slot, v, 0)
            .map_err(|e| CollectorError::NoHook(format!("OFFCPU_CONTROL: {e}")))?;
    }
    load_set(obj, btf, &HOOKS)?;
    let events = telemetry.register(
        IntCounterVec::new(
            Opts::new(
                "sonde_profile_offcpu_events_total",
                "Off-CPU profiler events, by event: taken (a stack taken as a thread \
                 left the CPU), capped (not taken: per-CPU rate cap), short (block under \
                 the threshold), thinned (timed without a stack: the thread's blocks kept \
                 being short), thinned_long (a thinned block proved long: not in the \
                 profile), counted, pending_full, counts_map_full, task_read.",
            ),
            &["event"],
        )
        .expect("valid metric"),
    );
    Ok(OffCpuMaps {
        control,
        counts: [
            take_map(obj, "OFFCPU_COUNTS_0")?,
            take_map(obj, "OFFCPU_COUNTS_1")?,
        ],
        pending: take_map(obj, "OFFCPU_PENDING")?,
        counters: KernelCounters::new(take_map(obj, "OFFCPU_COUNTERS_MAP")?),
        events,
    })
}

/// What the health line says about off-CPU; `attached`: the hook runs.
pub fn describe(config: &ProfileConfig, attached: bool) -> String {
    let limits = format!(
        "blocks >= {}, <= {} stacks/s per CPU",
        crate::duration::format_duration(config.off_cpu_min_block.get()),
        config.off_cpu_max_rate.get()
    );
    match (config.off_cpu, attached) {
        (true, _) => format!("off-CPU on sched_switch ({limits})"),
        (false, true) => format!("off-CPU on sched_switch while a request runs ({limits})"),
        (false, false) => "off-CPU on demand (sched_switch attached only while \
                           `sonde profile --off-cpu` runs)"
            .into(),
    }
}

impl OffCpuMaps {
    /// Turns the program on and attaches it. Blocks parked by an earlier
    /// attachment are not counted: the program ignores blocks that began
    /// before the time written here.
    pub fn switch_on(&mut self, obj: &mut Ebpf) -> Result<Links, CollectorError> {
        let now = crate::collectors::memory::session::monotonic_ns().max(1);
        self.control
            .set(OFFCPU_ON_SLOT, now, 0)
            .map_err(|e| CollectorError::NoHook(format!("OFFCPU_CONTROL: {e}")))?;
        attach_links(obj, &HOOKS).inspect_err(|_| {
            let _ = self.control.set(OFFCPU_ON_SLOT, 0, 0);
        })
    }

    /// Detaches the program and forgets the threads still parked: their
    /// blocks end outside any window, and the stacks they name can go.
    pub fn switch_off(&mut self, obj: &mut Ebpf, links: Links) {
        links.detach(obj);
        let _ = self.control.set(OFFCPU_ON_SLOT, 0, 0);
        let parked: Vec<u32> = self.pending.keys().filter_map(Result::ok).collect();
        for tid in parked {
            let _ = self.pending.remove(&tid);
        }
    }

    /// Reads and clears generation `idle`'s counts (call after the flip).
    pub fn take(&mut self, idle: usize, active: usize) -> OffCpuRows {
        let counts = &mut self.counts[idle];
        let keys: Vec<OffCpuKey> = counts.keys().filter_map(Result::ok).collect();
        let mut out = OffCpuRows::default();
        for k in &keys {
            if let Ok(v) = counts.get(k, 0) {
                let ns: u64 = v.iter().sum();
                if ns > 0 {
                    if k.stack_gen as usize == active {
                        out.active.push((k.stack, ns));
                    } else {
                        out.idle.push((k.stack, ns));
                    }
                }
            }
            let _ = counts.remove(k);
        }
        out
    }

    /// Stack ids of generation `idle` still referred to: by threads parked
    /// off CPU, and by blocks that ended since the flip (counted in the
    /// `active` generation; the kernel adds the count before it removes
    /// the parked entry, so scanning the parked entries first misses
    /// none). Clearing them would leave those blocks without a stack.
    /// Also removes parked entries of threads that no longer exist.
    pub fn referenced_ids(&mut self, idle: usize, active: usize) -> HashSet<i32> {
        let now = crate::collectors::memory::session::monotonic_ns();
        let mut keep = HashSet::new();
        let mut refer = |k: &OffCpuKey| {
            if k.stack_gen as usize == idle {
                let s = &k.stack;
                keep.extend([s.user_stack_id, s.kernel_stack_id, s.python_stack_id]);
            }
        };
        let mut gone = Vec::new();
        for entry in self.pending.iter() {
            let Ok((tid, p)) = entry else { continue };
            let age = now.saturating_sub(p.since_ns());
            if age > PRUNE_AFTER.as_nanos() as u64
                && !std::path::Path::new(&format!("/proc/{}/task/{tid}", p.key.stack.tgid)).exists()
            {
                gone.push(tid);
                continue;
            }
            refer(&p.key);
        }
        for k in self.counts[active].keys().filter_map(Result::ok) {
            refer(&k);
        }
        for tid in gone {
            let _ = self.pending.remove(&tid);
        }
        keep
    }

    /// Exports the kernel's counters.
    pub fn export_counters(&mut self) {
        self.counters.export(&self.events, &[]);
    }
}

/// The off-CPU profile as pprof: one sample type, `off_cpu/nanoseconds`.
pub fn pprof(p: &Profile) -> Vec<u8> {
    let mut out: PProfile = pprof::build_values(p, &[("off_cpu", "nanoseconds")], |_, s| {
        vec![s.count as i64]
    });
    out.period_type = out.sample_type.first().cloned();
    out.period = 1;
    pprof::gzip(&out)
}

/// The route table of `--off-cpu --by route -f top`: time blocked by the
/// route of the request the thread was serving.
pub fn routes_table(p: &Profile) -> String {
    let rows: Vec<Vec<String>> = render::routes(p)
        .into_iter()
        .map(|r| {
            vec![
                format!("{:.1}", r.pct),
                format!("{:.1}", r.samples as f64 / 1e6),
                r.route,
            ]
        })
        .collect();
    crate::cli::output::table(&["SHARE%", "BLOCKED_MS", "ROUTE"], &rows)
}

/// Functions by cumulative blocked time, like the CPU profile's top table
/// but in milliseconds.
pub fn top_table(p: &Profile, limit: usize) -> String {
    let ms = |ns: u64| format!("{:.1}", ns as f64 / 1e6);
    let rows: Vec<Vec<String>> = render::top(p)
        .into_iter()
        .take(limit)
        .map(|r| {
            vec![
                format!("{:.1}", r.total_pct),
                format!("{:.1}", r.self_pct),
                ms(r.total_samples),
                ms(r.self_samples),
                r.function,
                std::path::Path::new(&r.module)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(r.module),
            ]
        })
        .collect();
    let mut out = format!(
        "{:.3}s off CPU over {:.1}s\n",
        p.total() as f64 / 1e9,
        p.duration.as_secs_f64()
    );
    out.push_str(&crate::cli::output::table(
        &[
            "TOTAL%", "SELF%", "TOTAL_MS", "SELF_MS", "FUNCTION", "MODULE",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use prost::Message as _;

    use super::*;
    use crate::collectors::profile::render::tests::sample_profile;

    #[test]
    fn pprof_is_weighted_by_nanoseconds() {
        let gz = pprof(&sample_profile());
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let d = PProfile::decode(&raw[..]).unwrap();
        let st = &d.string_table;
        assert_eq!(d.sample_type.len(), 1);
        assert_eq!(st[d.sample_type[0].r#type as usize], "off_cpu");
        assert_eq!(st[d.sample_type[0].unit as usize], "nanoseconds");
        assert_eq!(d.period_type, Some(d.sample_type[0].clone()));
        let total: i64 = d.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 10, "the counts, unscaled");
    }

    #[test]
    fn top_table_shows_milliseconds() {
        let mut p = sample_profile();
        for s in &mut p.samples {
            s.count *= 1_000_000;
        }
        let t = top_table(&p, 10);
        assert!(t.starts_with("0.010s off CPU over 1.0s"), "{t}");
        assert!(t.contains("TOTAL_MS") && t.contains("10.0"), "{t}");
    }
}

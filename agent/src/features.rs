//! Kernel feature probing at start-up.
//!
//! Each hook type is tested by loading and attaching an empty program from
//! the `sonde-probe` object, never by comparing kernel versions: lockdown,
//! config options and LSMs decide what works, and only trying tells.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf,
    maps::MapType,
    programs::{
        BtfTracePoint, FEntry, KProbe, PerfEvent, RawTracePoint, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::UProbeScope,
    },
};
use serde::Serialize;

use crate::ebpf;

/// Where tracefs is expected (aya also looks under debugfs).
pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    /// Why it is missing, or a note on how it was found.
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Features {
    pub kernel: String,
    pub features: Vec<Feature>,
}

impl Features {
    pub fn has(&self, name: &str) -> bool {
        self.features.iter().any(|f| f.name == name && f.available)
    }

    fn push(&mut self, name: &'static str, r: Result<String, String>) {
        let (available, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.features.push(Feature {
            name,
            available,
            detail,
        });
    }
}

/// A function in our own binary for the uprobe probe to attach to.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sonde_uprobe_probe_target() -> u64 {
    std::hint::black_box(42)
}

/// Probes everything. Mounts tracefs first when asked and allowed, since
/// classic tracepoints need it.
pub fn probe(mount_tracefs: bool, btf: &ebpf::KernelBtf) -> Features {
    let mut f = Features {
        kernel: kernel_release(),
        ..Default::default()
    };
    f.push("btf", probe_btf(btf));
    f.push("tracefs", ensure_tracefs(mount_tracefs));
    f.push(
        "ringbuf",
        match aya::sys::is_map_supported(MapType::RingBuf) {
            Ok(true) => Ok("BPF_MAP_TYPE_RINGBUF".into()),
            Ok(false) => Err("BPF_MAP_TYPE_RINGBUF not supported".into()),
            Err(e) => Err(format!("probe failed: {e}")),
        },
    );
    let mut obj = match ebpf::load(ebpf::PROBE, 0) {
        Ok(o) => o,
        Err(e) => {
            let why = format!("{e:#}");
            for name in [
                "tp_btf",
                "raw_tracepoint",
                "tracepoint",
                "fentry",
                "kprobe",
                "uprobe",
                "perf_event",
            ] {
                f.push(name, Err(why.clone()));
            }
            return f;
        }
    };
    let btf = btf.aya().ok();
    f.push("tp_btf", probe_tp_btf(&mut obj, btf));
    f.push("raw_tracepoint", probe_raw_tp(&mut obj));
    f.push("tracepoint", probe_tracepoint(&mut obj));
    f.push("fentry", probe_fentry(&mut obj, btf));
    f.push("kprobe", probe_kprobe(&mut obj));
    f.push("uprobe", probe_uprobe(&mut obj));
    f.push("perf_event", probe_perf_event(&mut obj));
    // Dropping `obj` detaches and unloads every probe program.
    f
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn probe_btf(btf: &ebpf::KernelBtf) -> Result<String, String> {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    if !path.exists() {
        return Err(
            "/sys/kernel/btf/vmlinux missing (kernel built without CONFIG_DEBUG_INFO_BTF)".into(),
        );
    }
    btf.aya()
        .map(|_| "/sys/kernel/btf/vmlinux".into())
        .map_err(str::to_owned)
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when allowed.
pub fn ensure_tracefs(mount: bool) -> Result<String, String> {
    if let Some(p) = tracefs_path() {
        return Ok(format!("mounted at {}", p.display()));
    }
    if !mount {
        return Err(format!(
            "tracefs is not mounted; run `mount -t tracefs nodev {TRACEFS}` or set agent.mount_tracefs = true"
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "tracefs is not mounted and only root can mount it: `sudo mount -t tracefs nodev {TRACEFS}`"
        ));
    }
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting tracefs at {TRACEFS} failed: {e}"))?;
    tracing::info!("mounted tracefs at {TRACEFS}");
    match tracefs_path() {
        Some(p) => Ok(format!("mounted by sonde at {}", p.display())),
        None => Err(format!(
            "mounted tracefs at {TRACEFS} but it has no events/ directory"
        )),
    }
}

fn tracefs_path() -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

fn err<E: std::error::Error + 'static>(e: E) -> String {
    // The whole source chain: aya's errors carry the verifier log and the
    // errno in their sources.
    crate::error::chain(&e)
}

fn probe_tp_btf(obj: &mut Ebpf, btf: Option<&Btf>) -> Result<String, String> {
    let btf = btf.ok_or("needs kernel BTF")?;
    let p: &mut BtfTracePoint = prog(obj, "probe_tp_btf")?;
    p.load("sched_process_fork", btf).map_err(err)?;
    p.attach().map_err(err)?;
    Ok("sched_process_fork attached".into())
}

fn probe_raw_tp(obj: &mut Ebpf) -> Result<String, String> {
    let p: &mut RawTracePoint = prog(obj, "probe_raw_tp")?;
    p.load().map_err(err)?;
    p.attach("sys_enter").map_err(err)?;
    Ok("sys_enter attached".into())
}

fn probe_tracepoint(obj: &mut Ebpf) -> Result<String, String> {
    let p: &mut TracePoint = prog(obj, "probe_tracepoint")?;
    p.load().map_err(err)?;
    p.attach("sched", "sched_process_fork").map_err(err)?;
    Ok("sched:sched_process_fork attached".into())
}

fn probe_fentry(obj: &mut Ebpf, btf: Option<&Btf>) -> Result<String, String> {
    let btf = btf.ok_or("needs kernel BTF")?;
    let p: &mut FEntry = prog(obj, "probe_fentry")?;
    p.load("do_sys_openat2", btf).map_err(err)?;
    p.attach().map_err(err)?;
    Ok("do_sys_openat2 attached".into())
}

fn probe_kprobe(obj: &mut Ebpf) -> Result<String, String> {
    let p: &mut KProbe = prog(obj, "probe_kprobe")?;
    p.load().map_err(err)?;
    p.attach("do_sys_openat2", 0).map_err(err)?;
    Ok("do_sys_openat2 attached".into())
}

fn probe_uprobe(obj: &mut Ebpf) -> Result<String, String> {
    let p: &mut UProbe = prog(obj, "probe_uprobe")?;
    p.load().map_err(err)?;
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| e.to_string())?;
    let pid = NonZeroU32::new(std::process::id()).ok_or("pid 0")?;
    p.attach(
        "sonde_uprobe_probe_target",
        &exe,
        UProbeScope::OneProcess(pid),
    )
    .map_err(err)?;
    std::hint::black_box(sonde_uprobe_probe_target());
    Ok("attached to a function of the agent itself".into())
}

fn probe_perf_event(obj: &mut Ebpf) -> Result<String, String> {
    let p: &mut PerfEvent = prog(obj, "probe_perf_event")?;
    p.load().map_err(err)?;
    p.attach(
        PerfEventConfig::Software(SoftwareEvent::CpuClock),
        PerfEventScope::AllProcessesOneCpu { cpu: 0 },
        SamplePolicy::Frequency(1),
        false,
    )
    .map_err(err)?;
    Ok("cpu-clock on CPU 0 attached".into())
}

fn prog<'a, T>(obj: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = obj
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from sonde-probe"))?;
    p.try_into().map_err(err)
}

/// What the agent is allowed to do, from the effective capability set.
#[derive(Debug, Clone, Copy)]
pub struct Privileges {
    pub cap_eff: u64,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

impl Privileges {
    pub fn current() -> Self {
        let cap_eff = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(0);
        Self { cap_eff }
    }

    fn has(self, cap: u32) -> bool {
        self.cap_eff & (1 << cap) != 0
    }

    /// Loading tracing programs needs CAP_SYS_ADMIN, or CAP_BPF together with
    /// CAP_PERFMON on kernels since 5.8.
    pub fn can_load_tracing(self) -> bool {
        self.has(CAP_SYS_ADMIN) || (self.has(CAP_BPF) && self.has(CAP_PERFMON))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_logic() {
        assert!(
            Privileges {
                cap_eff: 1 << CAP_SYS_ADMIN
            }
            .can_load_tracing()
        );
        assert!(
            Privileges {
                cap_eff: (1 << CAP_BPF) | (1 << CAP_PERFMON)
            }
            .can_load_tracing()
        );
        assert!(
            !Privileges {
                cap_eff: 1 << CAP_BPF
            }
            .can_load_tracing()
        );
        assert!(!Privileges { cap_eff: 0 }.can_load_tracing());
    }

    #[test]
    fn features_lookup() {
        let mut f = Features::default();
        f.push("a", Ok("x".into()));
        f.push("b", Err("y".into()));
        assert!(f.has("a"));
        assert!(!f.has("b"));
        assert!(!f.has("c"));
    }
}

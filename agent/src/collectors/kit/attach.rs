//! Attaching programs: each collector declares its hooks once, in const
//! [`HookSet`] tables, and attaches them here.
//!
//! A set is attached all or nothing: every program is loaded first (the
//! verifier is what usually fails), then attached in table order, and if
//! one attach fails the ones before it are detached, so a half-attached
//! set never runs next to its fallback (which would count twice). A set
//! marked `partial` (independent per-syscall tracepoints) keeps what
//! attached and reports the rest. [`attach_first`] picks the first set the
//! probed features allow and that attaches, and says why the ones before it
//! were not used.

use aya::{
    Ebpf,
    programs::{
        BtfTracePoint, PerfEvent, RawTracePoint, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy},
        raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};

use super::{CollectorError, budget, chain, program};
use crate::{ebpf::KernelBtf, features::Features};

/// One program on one hook.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// `tp_btf`: (program, BTF tracepoint).
    TpBtf(&'static str, &'static str),
    /// Raw tracepoint: (program, tracepoint).
    Raw(&'static str, &'static str),
    /// Classic tracepoint: (program, category, name). A program may be
    /// listed on several tracepoints; it is loaded once.
    Tp(&'static str, &'static str, &'static str),
}

impl Hook {
    fn program(&self) -> &'static str {
        match *self {
            Hook::TpBtf(p, _) | Hook::Raw(p, _) | Hook::Tp(p, _, _) => p,
        }
    }

    /// The hook as health and errors name it.
    pub fn describe(&self) -> String {
        match self {
            Hook::TpBtf(_, tp) => format!("tp_btf {tp}"),
            Hook::Raw(_, tp) => format!("raw_tracepoint {tp}"),
            Hook::Tp(_, cat, tp) => format!("{cat}:{tp}"),
        }
    }

    fn err(&self, source: aya::programs::ProgramError) -> CollectorError {
        CollectorError::Program {
            what: format!("{} ({})", self.program(), self.describe()),
            source,
        }
    }
}

/// Hooks that are used together.
#[derive(Clone, Copy, Debug)]
pub struct HookSet {
    /// The probed feature (features.rs) the set needs; `None`: always tried.
    pub needs: Option<&'static str>,
    /// How health and logs name the set.
    pub label: &'static str,
    pub hooks: &'static [Hook],
    /// Keep the hooks that attached when others fail (independent hooks);
    /// the set fails only when none attached.
    pub partial: bool,
}

impl HookSet {
    /// An all-or-nothing set.
    pub const fn new(
        needs: Option<&'static str>,
        label: &'static str,
        hooks: &'static [Hook],
    ) -> Self {
        Self {
            needs,
            label,
            hooks,
            partial: false,
        }
    }

    /// A set whose hooks attach independently.
    pub const fn partial(self) -> Self {
        Self {
            partial: true,
            ..self
        }
    }
}

/// The set that attached.
#[derive(Debug)]
pub struct Attached {
    pub label: &'static str,
    /// Hooks of a partial set that did not attach, with why.
    pub failed: Vec<String>,
    /// Why the sets before it were not used (empty when it was the first).
    pub skipped: Vec<String>,
}

enum Link {
    Btf(&'static str, BtfTracePointLinkId),
    Raw(&'static str, RawTracePointLinkId),
    Tp(&'static str, TracePointLinkId),
}

fn detach(obj: &mut Ebpf, link: Link) {
    // Best effort: the program stays loaded but stops running; a failure
    // here leaves a link the object's drop removes.
    let _ = match link {
        Link::Btf(p, id) => program::<BtfTracePoint>(obj, p).map(|p| p.detach(id)),
        Link::Raw(p, id) => program::<RawTracePoint>(obj, p).map(|p| p.detach(id)),
        Link::Tp(p, id) => program::<TracePoint>(obj, p).map(|p| p.detach(id)),
    };
}

fn load(obj: &mut Ebpf, hook: &Hook, btf: &KernelBtf) -> Result<(), CollectorError> {
    let name = hook.program();
    match *hook {
        Hook::TpBtf(_, tp) => {
            let btf = btf
                .aya()
                .map_err(|e| CollectorError::NoHook(format!("kernel BTF: {e}")))?;
            let p: &mut BtfTracePoint = program(obj, name)?;
            if p.fd().is_err() {
                p.load(tp, btf).map_err(|e| hook.err(e))?;
                budget::record(name, p.info());
            }
        }
        Hook::Raw(..) => {
            let p: &mut RawTracePoint = program(obj, name)?;
            if p.fd().is_err() {
                p.load().map_err(|e| hook.err(e))?;
                budget::record(name, p.info());
            }
        }
        Hook::Tp(..) => {
            let p: &mut TracePoint = program(obj, name)?;
            if p.fd().is_err() {
                p.load().map_err(|e| hook.err(e))?;
                budget::record(name, p.info());
            }
        }
    }
    Ok(())
}

fn attach_one(obj: &mut Ebpf, hook: &Hook) -> Result<Link, CollectorError> {
    let name = hook.program();
    Ok(match *hook {
        Hook::TpBtf(..) => {
            let p: &mut BtfTracePoint = program(obj, name)?;
            Link::Btf(name, p.attach().map_err(|e| hook.err(e))?)
        }
        Hook::Raw(_, tp) => {
            let p: &mut RawTracePoint = program(obj, name)?;
            Link::Raw(name, p.attach(tp).map_err(|e| hook.err(e))?)
        }
        Hook::Tp(_, cat, tp) => {
            let p: &mut TracePoint = program(obj, name)?;
            Link::Tp(name, p.attach(cat, tp).map_err(|e| hook.err(e))?)
        }
    })
}

/// Loads and attaches one set (see the module header). Returns the hooks
/// of a partial set that failed.
pub fn attach_set(
    obj: &mut Ebpf,
    btf: &KernelBtf,
    set: &HookSet,
) -> Result<Vec<String>, CollectorError> {
    if set.partial {
        let mut failed = Vec::new();
        let mut attached = 0;
        for hook in set.hooks {
            match load(obj, hook, btf).and_then(|()| attach_one(obj, hook)) {
                Ok(_) => attached += 1,
                Err(e) => failed.push(format!("{}: {}", hook.describe(), chain(&e))),
            }
        }
        if attached == 0 {
            return Err(CollectorError::NoHook(failed.join("; ")));
        }
        return Ok(failed);
    }
    for hook in set.hooks {
        load(obj, hook, btf)?;
    }
    let mut links = Vec::new();
    for hook in set.hooks {
        match attach_one(obj, hook) {
            Ok(l) => links.push(l),
            Err(e) => {
                for l in links {
                    detach(obj, l);
                }
                return Err(e);
            }
        }
    }
    Ok(Vec::new())
}

/// The links of an all-or-nothing set attached with [`attach_links`], to
/// detach later with [`Links::detach`] (on-demand hooks). Dropping it
/// without detaching leaves the links to the object's drop.
#[must_use = "the links are needed to detach"]
pub struct Links(Vec<Link>);

impl Links {
    /// Detaches every link; the programs stay loaded, ready to attach
    /// again.
    pub fn detach(self, obj: &mut Ebpf) {
        for l in self.0 {
            detach(obj, l);
        }
    }
}

/// Loads every program of `set` (once: a loaded program is not loaded
/// again) without attaching it.
pub fn load_set(obj: &mut Ebpf, btf: &KernelBtf, set: &HookSet) -> Result<(), CollectorError> {
    for hook in set.hooks {
        load(obj, hook, btf)?;
    }
    Ok(())
}

/// Attaches the programs of an all-or-nothing `set`, already loaded with
/// [`load_set`], and returns their links; on a failure, detaches the ones
/// attached before it.
pub fn attach_links(obj: &mut Ebpf, set: &HookSet) -> Result<Links, CollectorError> {
    let mut links = Vec::new();
    for hook in set.hooks {
        match attach_one(obj, hook) {
            Ok(l) => links.push(l),
            Err(e) => {
                Links(links).detach(obj);
                return Err(e);
            }
        }
    }
    Ok(Links(links))
}

/// Attaches the first of `sets` that the kernel has the feature for and
/// that attaches. `notes` are reasons the caller already has for passing
/// over preferred sets (configuration, architecture); they lead `skipped`.
pub fn attach_first(
    obj: &mut Ebpf,
    features: &Features,
    btf: &KernelBtf,
    sets: &[&'static HookSet],
    notes: Vec<String>,
) -> Result<Attached, CollectorError> {
    let mut why = notes;
    for (i, set) in sets.iter().enumerate() {
        if let Some(f) = set.needs
            && !features.has(f)
        {
            why.push(format!("{f}: not available on this kernel"));
            continue;
        }
        match attach_set(obj, btf, set) {
            Ok(failed) => {
                verify_unused(obj, features, btf, &sets[i + 1..]);
                return Ok(Attached {
                    label: set.label,
                    failed,
                    skipped: why,
                });
            }
            Err(e) => why.push(format!("{}: {}", set.label, chain(&e))),
        }
    }
    Err(CollectorError::NoHook(why.join("; ")))
}

/// With [`budget::verify_fallbacks`] on, loads (never attaches) the
/// programs of `sets`, fallbacks that were not picked, so the verifier
/// budget of every program is recorded; a set that would not load is
/// logged, not fatal.
pub fn verify_unused(obj: &mut Ebpf, features: &Features, btf: &KernelBtf, sets: &[&HookSet]) {
    if !budget::verify_fallbacks() {
        return;
    }
    for set in sets {
        if set.needs.is_none_or(|f| features.has(f)) {
            load_only(obj, btf, set);
        }
    }
}

/// Loads (never attaches) the programs of `set`, for their verifier budget;
/// failures are logged. Callers check [`budget::verify_fallbacks`].
pub fn load_only(obj: &mut Ebpf, btf: &KernelBtf, set: &HookSet) {
    for hook in set.hooks {
        if let Err(e) = load(obj, hook, btf) {
            tracing::warn!(
                set = set.label,
                "fallback program does not load: {}",
                chain(&e)
            );
        }
    }
}

/// CPUs a perf-event program runs on, and those it could not be attached
/// to, with why.
#[derive(Debug, Default)]
pub struct PerCpu {
    pub ok: Vec<u32>,
    pub failed: Vec<(u32, String)>,
}

impl PerCpu {
    /// The failures, as `cpuN: why; ...`.
    pub fn failures(&self) -> String {
        self.failed
            .iter()
            .map(|(c, e)| format!("cpu{c}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Attaches a loaded perf-event program to every online CPU not yet in
/// `att.ok` (so it also picks up CPUs onlined since). CPUs that fail are
/// recorded in `att.failed` (replacing the previous failures), not fatal.
pub fn attach_per_cpu(
    prog: &mut PerfEvent,
    config: PerfEventConfig,
    policy: SamplePolicy,
    att: &mut PerCpu,
) -> Result<(), CollectorError> {
    let cpus = aya::util::online_cpus()
        .map_err(|(path, e)| CollectorError::NoHook(format!("reading {path}: {e}")))?;
    att.failed.clear();
    for cpu in cpus {
        if att.ok.contains(&cpu) {
            continue;
        }
        match prog.attach(
            config,
            PerfEventScope::AllProcessesOneCpu { cpu },
            policy,
            false,
        ) {
            Ok(_) => att.ok.push(cpu),
            Err(e) => att.failed.push((cpu, chain(&e))),
        }
    }
    Ok(())
}

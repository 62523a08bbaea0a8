//! Process lifecycle collector: exec/exit events keep the process table live.
//!
//! Hook choice: tp_btf `sched_process_exec`/`sched_process_exit` (no tracefs
//! needed), else the classic `sched:` tracepoints. Whichever pair attaches is
//! reported in health.

use std::time::Duration;

use prometheus::IntCounter;
use sonde_common::process::{ProcessCounter, ProcessEvent, ProcessEventKind};

use super::{
    Base, Collector, CollectorError, ComponentHealth, Deps, SharedHealth, StartContext,
    kit::{
        attach::{Hook, HookSet, attach_first},
        comm_str,
        counters::KernelCounters,
        ring::Ring,
        take_map,
    },
};
use crate::{config::ProcessConfig, ebpf, process_table::ProcessTable};

pub const NAME: &str = "process";

/// This collector's eBPF object.
pub const OBJECT: ebpf::Object = ebpf::object!("sonde-process");

const BTF: HookSet = HookSet::new(
    Some("tp_btf"),
    "tp_btf sched_process_exec/exit",
    &[
        Hook::TpBtf("process_exec_btf", "sched_process_exec"),
        Hook::TpBtf("process_exit_btf", "sched_process_exit"),
    ],
);
const TRACEPOINT: HookSet = HookSet::new(
    None,
    "tracepoint sched:sched_process_exec/exit",
    &[
        Hook::Tp("process_exec_tp", "sched", "sched_process_exec"),
        Hook::Tp("process_exit_tp", "sched", "sched_process_exit"),
    ],
);

pub struct ProcessCollector {
    table: ProcessTable,
    base: Base,
}

impl ProcessCollector {
    pub fn new(_config: &ProcessConfig, deps: &Deps) -> Self {
        Self {
            table: deps.processes.clone(),
            base: Base::new(),
        }
    }
}

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn base(&self) -> &Base {
        &self.base
    }

    fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    fn start(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError> {
        let mut obj = ebpf::load(OBJECT, ctx.kernel_log_level)?;
        ebpf::spawn_kernel_logger(&mut obj, OBJECT.name);
        let events = Ring::<ProcessEvent>::new(NAME, take_map(&mut obj, "PROCESS_EVENTS")?)?;
        let counters = KernelCounters::new(take_map(&mut obj, "PROCESS_COUNTERS_MAP")?);
        let hook = attach_first(
            &mut obj,
            ctx.features,
            ctx.btf,
            &[&BTF, &TRACEPOINT],
            Vec::new(),
        )?
        .label;
        let seeded = self.table.seed_from_proc();
        tracing::info!(collector = NAME, hook, seeded, "process collector attached");
        self.base
            .set_health(ComponentHealth::healthy(format!("attached via {hook}")));

        let lost = ctx.telemetry.events_lost.with_label_values(&[NAME]);
        self.base.begin(&ctx);
        // Reads exec/exit events as they arrive, and whenever another
        // collector asks to catch up (see `ProcessTable::catch_up`): the
        // ring buffer may hold events it has not woken us for yet.
        let table = self.table.clone();
        self.base.spawn(events.run_with_requests(
            self.table.serve_catch_up(),
            |r| r.done(),
            move |evs| {
                table.events_arriving();
                for ev in evs {
                    apply(&table, &ev);
                }
                table.events_drained();
            },
        ));
        self.base.spawn(housekeeping(
            counters,
            lost,
            self.table.clone(),
            self.base.shared_health(),
            hook,
        ));
        self.base.keep(obj);
        Ok(())
    }
}

fn apply(table: &ProcessTable, ev: &ProcessEvent) {
    match ProcessEventKind::from_u32(ev.kind) {
        Some(ProcessEventKind::Exec) => table.on_exec(ev.tgid, &comm_str(&ev.comm)),
        Some(ProcessEventKind::Exit) => table.on_exit(ev.tgid),
        None => tracing::debug!(
            collector = NAME,
            kind = ev.kind,
            "unknown process event kind"
        ),
    }
}

/// Once a second: export kernel-side drops, expire exited processes, and
/// mark the collector degraded while it is losing events.
async fn housekeeping(
    mut counters: KernelCounters<ProcessCounter>,
    lost: IntCounter,
    table: ProcessTable,
    health: SharedHealth,
    hook: &'static str,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        table.gc();
        let dropped = counters.deltas().get(ProcessCounter::RingbufFull);
        if dropped > 0 {
            lost.inc_by(dropped);
            health.set(ComponentHealth::degraded(format!(
                "attached via {hook}; {dropped} events lost to a full ring buffer in the last second"
            )));
        } else {
            health.set(ComponentHealth::healthy(format!("attached via {hook}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::kit::decode;

    #[test]
    fn decode_checks_length() {
        assert!(decode::<ProcessEvent>(&[0u8; 8]).is_none());
        let mut b = vec![0u8; size_of::<ProcessEvent>()];
        b[0] = 1;
        b[4..8].copy_from_slice(&1234u32.to_ne_bytes());
        b[24..28].copy_from_slice(b"bash");
        let ev: ProcessEvent = decode(&b).unwrap();
        assert_eq!(ev.kind, 1);
        assert_eq!(ev.tgid, 1234);
        assert_eq!(comm_str(&ev.comm), "bash");
    }
}

//! Process lifecycle collector: exec/exit events keep the process table live.
//!
//! Hook choice: tp_btf `sched_process_exec`/`sched_process_exit` (no tracefs
//! needed), else the classic `sched:` tracepoints. Whichever pair attaches is
//! reported in health.

use std::time::Duration;

use aya::{
    Btf, Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use prometheus::IntCounter;
use sonde_common::process::{PROCESS_COUNTERS, ProcessCounter, ProcessEvent, ProcessEventKind};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;

use super::{Collector, CollectorError, ComponentHealth, SharedHealth, StartContext, chain};
use crate::{
    collectors::take_map,
    config::ProcessConfig,
    ebpf,
    process_table::{CatchUp, ProcessTable},
};

pub const NAME: &str = "process";

pub struct ProcessCollector {
    table: ProcessTable,
    health: SharedHealth,
    ebpf: Option<Ebpf>,
    shutdown: Option<CancellationToken>,
}

impl ProcessCollector {
    pub fn new(_config: &ProcessConfig, table: ProcessTable) -> Self {
        Self {
            table,
            health: SharedHealth::new(ComponentHealth::unhealthy("not started")),
            ebpf: None,
            shutdown: None,
        }
    }

    /// Attaches the tp_btf pair, or the tracepoint pair as fallback.
    fn attach(obj: &mut Ebpf, ctx: &StartContext<'_>) -> Result<&'static str, CollectorError> {
        super::attach_preferred(
            obj,
            ctx.features,
            ("tp_btf", "tp_btf sched_process_exec/exit", attach_btf),
            (
                "tracepoint",
                "tracepoint sched:sched_process_exec/exit",
                attach_tp,
            ),
        )
    }
}

fn attach_btf(obj: &mut Ebpf) -> Result<(), CollectorError> {
    let btf = Btf::from_sys_fs().map_err(|e| CollectorError::NoHook(format!("kernel BTF: {e}")))?;
    for (prog, tp) in [
        ("process_exec_btf", "sched_process_exec"),
        ("process_exit_btf", "sched_process_exit"),
    ] {
        let what = || format!("{prog} ({tp})");
        let p: &mut BtfTracePoint = obj
            .program_mut(prog)
            .ok_or_else(|| CollectorError::NoHook(format!("{prog} missing from object")))?
            .try_into()
            .map_err(|source| CollectorError::Program {
                what: what(),
                source,
            })?;
        p.load(tp, &btf).map_err(|source| CollectorError::Program {
            what: what(),
            source,
        })?;
        p.attach().map_err(|source| CollectorError::Program {
            what: what(),
            source,
        })?;
    }
    Ok(())
}

fn attach_tp(obj: &mut Ebpf) -> Result<(), CollectorError> {
    for (prog, tp) in [
        ("process_exec_tp", "sched_process_exec"),
        ("process_exit_tp", "sched_process_exit"),
    ] {
        let what = || format!("{prog} (sched:{tp})");
        let p: &mut TracePoint = obj
            .program_mut(prog)
            .ok_or_else(|| CollectorError::NoHook(format!("{prog} missing from object")))?
            .try_into()
            .map_err(|source| CollectorError::Program {
                what: what(),
                source,
            })?;
        p.load().map_err(|source| CollectorError::Program {
            what: what(),
            source,
        })?;
        p.attach("sched", tp)
            .map_err(|source| CollectorError::Program {
                what: what(),
                source,
            })?;
    }
    Ok(())
}

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn start(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError> {
        let mut obj = ebpf::load(ebpf::PROCESS, ctx.kernel_log_level)?;
        ebpf::spawn_kernel_logger(&mut obj, ebpf::PROCESS.name);
        let events: RingBuf<MapData> = take_map(&mut obj, "PROCESS_EVENTS")?;
        let counters: PerCpuArray<MapData, u64> = take_map(&mut obj, "PROCESS_COUNTERS_MAP")?;
        let hook = match Self::attach(&mut obj, &ctx) {
            Ok(h) => h,
            Err(e) => {
                self.health.set(ComponentHealth::unhealthy(chain(&e)));
                return Err(e);
            }
        };
        let seeded = self.table.seed_from_proc();
        tracing::info!(collector = NAME, hook, seeded, "process collector attached");
        self.health
            .set(ComponentHealth::healthy(format!("attached via {hook}")));

        let lost = ctx.telemetry.events_lost.with_label_values(&[NAME]);
        let token = ctx.shutdown.child_token();
        let fd = ebpf::async_fd(events)?;
        let catch_up = self.table.serve_catch_up();
        tokio::spawn(drain_events(
            fd,
            self.table.clone(),
            catch_up,
            token.clone(),
        ));
        tokio::spawn(housekeeping(
            counters,
            lost,
            self.table.clone(),
            self.health.clone(),
            hook,
            token.clone(),
        ));
        self.ebpf = Some(obj);
        self.shutdown = Some(token);
        Ok(())
    }

    fn health(&self) -> ComponentHealth {
        self.health.get()
    }

    fn stop(&mut self) {
        if let Some(t) = self.shutdown.take() {
            t.cancel();
        }
        // Dropping the object detaches its links and unloads its programs.
        if self.ebpf.take().is_some() {
            self.health.set(ComponentHealth::unhealthy("stopped"));
        }
    }
}

/// Reads exec/exit events as they arrive, and whenever another collector
/// asks to catch up (see `ProcessTable::catch_up`): the ring buffer may hold
/// events it has not woken us for yet.
async fn drain_events(
    mut fd: AsyncFd<RingBuf<MapData>>,
    table: ProcessTable,
    mut catch_up: mpsc::Receiver<CatchUp>,
    token: CancellationToken,
) {
    let mut requests_open = true;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            r = catch_up.recv(), if requests_open => match r {
                Some(r) => {
                    table.events_arriving();
                    apply_all(fd.get_mut(), &table);
                    table.events_drained();
                    r.done();
                }
                None => requests_open = false,
            },
            g = fd.readable_mut() => match g {
                Ok(mut guard) => {
                    table.events_arriving();
                    apply_all(guard.get_inner_mut(), &table);
                    guard.clear_ready();
                    table.events_drained();
                }
                Err(e) => {
                    tracing::error!(collector = NAME, "ring buffer poll failed: {e}");
                    return;
                }
            },
        }
    }
}

/// Applies every event the ring buffer holds.
fn apply_all(rb: &mut RingBuf<MapData>, table: &ProcessTable) {
    while let Some(item) = rb.next() {
        match decode(&item) {
            Some(ev) => apply(table, &ev),
            None => tracing::debug!(collector = NAME, len = item.len(), "short process event"),
        }
    }
}

/// Copies an event out of ring-buffer bytes after checking the length.
fn decode(bytes: &[u8]) -> Option<ProcessEvent> {
    if bytes.len() < size_of::<ProcessEvent>() {
        return None;
    }
    // SAFETY: the length was checked above, `ProcessEvent` is `Pod` (any bit
    // pattern is valid) and `read_unaligned` imposes no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ProcessEvent>()) })
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

fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// Once a second: export kernel-side drops, expire exited processes, and
/// mark the collector degraded while it is losing events.
async fn housekeeping(
    counters: PerCpuArray<MapData, u64>,
    lost: IntCounter,
    table: ProcessTable,
    health: SharedHealth,
    hook: &'static str,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_lost = 0u64;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        table.gc();
        let total = sum(&counters, ProcessCounter::RingbufFull as u32);
        if total > last_lost {
            lost.inc_by(total - last_lost);
            health.set(ComponentHealth::degraded(format!(
                "attached via {hook}; {} events lost to a full ring buffer in the last second",
                total - last_lost
            )));
        } else {
            health.set(ComponentHealth::healthy(format!("attached via {hook}")));
        }
        last_lost = total;
    }
}

fn sum(map: &PerCpuArray<MapData, u64>, idx: u32) -> u64 {
    debug_assert!(idx < PROCESS_COUNTERS);
    super::counter_total(map, idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_length() {
        assert!(decode(&[0u8; 8]).is_none());
        let mut b = vec![0u8; size_of::<ProcessEvent>()];
        b[0] = 1;
        b[4..8].copy_from_slice(&1234u32.to_ne_bytes());
        b[24..28].copy_from_slice(b"bash");
        let ev = decode(&b).unwrap();
        assert_eq!(ev.kind, 1);
        assert_eq!(ev.tgid, 1234);
        assert_eq!(comm_str(&ev.comm), "bash");
    }
}

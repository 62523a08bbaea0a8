//! The agent's Prometheus registry and its own (`sonde_*`) metrics.
//!
//! Collectors register their metrics on the same registry; everything served
//! at /metrics comes from here.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Metrics every part of the agent shares.
#[derive(Clone)]
pub struct Telemetry {
    pub registry: Registry,
    pub collector_up: IntGaugeVec,
    pub events_lost: IntCounterVec,
}

impl Telemetry {
    pub fn new() -> Self {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sonde_build_info",
                "Build information of the running agent (always 1).",
            ),
            &["version", "rustc"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("SONDE_RUSTC").unwrap_or("unknown"),
            ])
            .set(1);
        let collector_up = IntGaugeVec::new(
            Opts::new(
                "sonde_collector_up",
                "1 when the collector is attached and running, else 0.",
            ),
            &["collector"],
        )
        .expect("valid metric");
        let events_lost = IntCounterVec::new(
            Opts::new(
                "sonde_events_lost_total",
                "Events the kernel side could not deliver (ring buffer full, map full).",
            ),
            &["collector"],
        )
        .expect("valid metric");
        for m in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(collector_up.clone()),
            Box::new(events_lost.clone()),
            Box::new(crate::collectors::kit::budget::gauge()),
        ] {
            registry.register(m).expect("unique metric");
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, ... of the agent.
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        registry.register(Box::new(pc)).expect("unique metric");
        Self {
            registry,
            collector_up,
            events_lost,
        }
    }

    /// Registers a metric, panicking on a duplicate name: that is a
    /// programming error caught by any test that starts the agent.
    pub fn register<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> M {
        self.registry
            .register(Box::new(m.clone()))
            .expect("metric registered twice");
        m
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let families = self.registry.gather();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!("encoding metrics failed: {e}");
        }
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

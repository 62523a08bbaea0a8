//! The `sonde_syscall*` families, rendered from [`Export`] at scrape time.
//!
//! A custom collector rather than prometheus `*Vec`s: the histogram comes
//! from the kernel already bucketed, and `Histogram::observe` per call would
//! cost millions of calls per drain on a busy host.

use std::sync::{Arc, Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use super::aggregate::{Export, prom_bounds_seconds};

const CALLS: &str = "sonde_syscalls_total";
const ERRORS: &str = "sonde_syscall_errors_total";
const DURATION: &str = "sonde_syscall_duration_seconds";

#[derive(Clone)]
pub struct SyscallMetrics {
    export: Arc<Mutex<Export>>,
    descs: Vec<Desc>,
}

impl SyscallMetrics {
    pub fn new(export: Arc<Mutex<Export>>) -> Self {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| (*l).to_owned()).collect(),
                Default::default(),
            )
            .expect("valid metric")
        };
        Self {
            export,
            descs: vec![
                desc(
                    CALLS,
                    "System calls made, per service and syscall.",
                    &["service_name", "syscall"],
                ),
                desc(
                    ERRORS,
                    "System calls that returned an error, per service, syscall and errno.",
                    &["service_name", "syscall", "errno"],
                ),
                desc(
                    DURATION,
                    "Time from syscall entry to return, per service and syscall.",
                    &["service_name", "syscall"],
                ),
            ],
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, t: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(t);
    f.set_metric(metrics);
    f
}

impl Collector for SyscallMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let export = self.export.lock().unwrap_or_else(|e| e.into_inner());
        let bounds = prom_bounds_seconds();
        let mut calls = Vec::new();
        let mut hists = Vec::new();
        for (svc, sys, s) in export.series() {
            let l = labels(&[("service_name", svc), ("syscall", sys)]);
            let mut m = Metric::default();
            m.set_label(l.clone());
            let mut c = Counter::default();
            c.set_value(s.count as f64);
            m.set_counter(c);
            calls.push(m);

            let mut h = Histogram::default();
            h.set_sample_count(s.count);
            h.set_sample_sum(s.sum_ns as f64 / 1e9);
            let mut cum = 0;
            let buckets = bounds
                .iter()
                .zip(s.buckets.iter())
                .map(|(le, n)| {
                    cum += n;
                    let mut b = Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(cum);
                    b
                })
                .collect();
            h.set_bucket(buckets);
            let mut m = Metric::default();
            m.set_label(l);
            m.set_histogram(h);
            hists.push(m);
        }
        let errors = export
            .errors()
            .map(|(svc, sys, e, n)| {
                let mut m = Metric::default();
                m.set_label(labels(&[
                    ("service_name", svc),
                    ("syscall", sys),
                    ("errno", e),
                ]));
                let mut c = Counter::default();
                c.set_value(n as f64);
                m.set_counter(c);
                m
            })
            .collect();
        vec![
            family(
                CALLS,
                self.descs[0].help.as_str(),
                MetricType::COUNTER,
                calls,
            ),
            family(
                ERRORS,
                self.descs[1].help.as_str(),
                MetricType::COUNTER,
                errors,
            ),
            family(
                DURATION,
                self.descs[2].help.as_str(),
                MetricType::HISTOGRAM,
                hists,
            ),
        ]
    }
}

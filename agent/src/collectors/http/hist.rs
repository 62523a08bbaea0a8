//! Prometheus histograms that take whole bucket counts at once: what the
//! kernel's per-(series, status) counts (`sonde_common::http::red`) become.
//!
//! `prometheus::Histogram` only observes one value at a time, so counts
//! read from the kernel could not be added without replaying every
//! exchange. A [`HistVec`] keeps integer bucket counts and an integer sum
//! (nanoseconds, bytes) per label set, exported with the scale of the
//! unit (`_sum` stays exact: no float is accumulated), and bucket
//! boundaries that are the kernel's own (`DURATION_BOUNDS_NS`,
//! `SIZE_BOUNDS`). [`LocalHist`] batches one series' updates between
//! flushes, as `prometheus::local::LocalHistogram` did: the drain takes
//! the family's lock once per batch, not once per event.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use prometheus::{
    core::{Collector, Desc},
    proto::{self, LabelPair, MetricFamily, MetricType},
};

use super::FastMap;

struct Cell {
    labels: Vec<LabelPair>,
    /// Per bucket, not cumulative; the last is +Inf.
    counts: Vec<u64>,
    sum: u64,
}

struct Family {
    cells: Vec<Cell>,
    index: FastMap<Vec<String>, usize>,
}

/// A labelled histogram family with integer bounds.
#[derive(Clone)]
pub struct HistVec {
    desc: Arc<Desc>,
    /// Upper bounds in the unit of observations (ns, bytes), sorted.
    bounds: &'static [u64],
    /// Exported value of one unit (1e-9 for ns exported as seconds).
    scale: f64,
    family: Arc<Mutex<Family>>,
}

impl HistVec {
    pub fn new(
        name: &str,
        help: &str,
        labels: &[&str],
        bounds: &'static [u64],
        scale: f64,
    ) -> Result<Self, prometheus::Error> {
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            labels.iter().map(|l| (*l).to_owned()).collect(),
            HashMap::new(),
        )?;
        Ok(Self {
            desc: Arc::new(desc),
            bounds,
            scale,
            family: Arc::new(Mutex::new(Family {
                cells: Vec::new(),
                index: FastMap::default(),
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Family> {
        self.family.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batching handle on the series of `values` (in label order),
    /// created empty if new.
    pub fn local(&self, values: &[&str]) -> LocalHist {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let mut f = self.lock();
        let cell = match f.index.get(&key) {
            Some(&i) => i,
            None => {
                let mut labels: Vec<LabelPair> = self
                    .desc
                    .variable_labels
                    .iter()
                    .zip(&key)
                    .map(|(n, v)| {
                        let mut p = LabelPair::default();
                        p.set_name(n.clone());
                        p.set_value(v.clone());
                        p
                    })
                    .collect();
                labels.sort_by(|a, b| a.name().cmp(b.name()));
                f.cells.push(Cell {
                    labels,
                    counts: vec![0; self.bounds.len() + 1],
                    sum: 0,
                });
                let i = f.cells.len() - 1;
                f.index.insert(key, i);
                i
            }
        };
        drop(f);
        LocalHist {
            vec: self.clone(),
            cell,
            counts: vec![0; self.bounds.len() + 1],
            sum: 0,
            dirty: false,
        }
    }

    /// (count, sum in units) of the series of `values`, if any.
    #[cfg(test)]
    pub fn sample(&self, values: &[&str]) -> Option<(u64, u64)> {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let f = self.lock();
        let c = &f.cells[*f.index.get(&key)?];
        Some((c.counts.iter().sum(), c.sum))
    }
}

impl Collector for HistVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = self.lock();
        let metrics = f
            .cells
            .iter()
            .map(|c| {
                let mut h = proto::Histogram::default();
                let mut seen = 0u64;
                let buckets = self
                    .bounds
                    .iter()
                    .zip(&c.counts)
                    .map(|(b, n)| {
                        seen += n;
                        let mut p = proto::Bucket::default();
                        p.set_upper_bound(*b as f64 * self.scale);
                        p.set_cumulative_count(seen);
                        p
                    })
                    .collect();
                h.set_bucket(buckets);
                h.set_sample_count(c.counts.iter().sum());
                h.set_sample_sum(c.sum as f64 * self.scale);
                let mut m = proto::Metric::from_label(c.labels.clone());
                m.set_histogram(h);
                m
            })
            .collect();
        let mut mf = MetricFamily::default();
        mf.set_name(self.desc.fq_name.clone());
        mf.set_help(self.desc.help.clone());
        mf.set_field_type(MetricType::HISTOGRAM);
        mf.set_metric(metrics);
        vec![mf]
    }
}

/// One series' updates since its last [`LocalHist::flush`].
pub struct LocalHist {
    vec: HistVec,
    cell: usize,
    counts: Vec<u64>,
    sum: u64,
    dirty: bool,
}

impl LocalHist {
    /// One observation of `v` units.
    pub fn observe(&mut self, v: u64) {
        let b = bucket_of(v, self.vec.bounds);
        self.counts[b] += 1;
        self.sum = self.sum.wrapping_add(v);
        self.dirty = true;
    }

    /// Many observations at once: `counts` per bucket (the kernel's
    /// layout, +Inf last) and the sum of their values.
    pub fn add(&mut self, counts: &[u64], sum: u64) {
        for (a, b) in self.counts.iter_mut().zip(counts) {
            *a += b;
        }
        self.sum = self.sum.wrapping_add(sum);
        self.dirty = true;
    }

    /// Moves the batch to the exported series.
    pub fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        let mut f = self.vec.lock();
        if let Some(c) = f.cells.get_mut(self.cell) {
            for (a, b) in c.counts.iter_mut().zip(&mut self.counts) {
                *a += std::mem::take(b);
            }
            c.sum = c.sum.wrapping_add(std::mem::take(&mut self.sum));
        }
        self.dirty = false;
    }
}

/// The bucket of `v`: the number of bounds below it, as the kernel's
/// [`sonde_common::http::red::bucket`] counts.
fn bucket_of(v: u64, bounds: &[u64]) -> usize {
    bounds.iter().filter(|b| v > **b).count()
}

#[cfg(test)]
mod tests {
    use sonde_common::http::red::DURATION_BOUNDS_NS;

    use super::*;

    #[test]
    fn whole_buckets_export_like_observations() {
        let v = HistVec::new("d_seconds", "h", &["a"], &DURATION_BOUNDS_NS, 1e-9).unwrap();
        let mut l = v.local(&["x"]);
        l.observe(300_000_000);
        let mut counts = [0u64; 15];
        counts[0] = 2;
        counts[14] = 1;
        l.add(&counts, 2 + 11_000_000_000);
        assert_eq!(v.sample(&["x"]), Some((0, 0)), "not flushed yet");
        l.flush();
        assert_eq!(v.sample(&["x"]), Some((4, 11_300_000_002)));
        let r = prometheus::Registry::new();
        r.register(Box::new(v.clone())).unwrap();
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&r.gather(), &mut out)
            .unwrap();
        for line in [
            "d_seconds_bucket{a=\"x\",le=\"0.005\"} 2",
            "d_seconds_bucket{a=\"x\",le=\"0.25\"} 2",
            "d_seconds_bucket{a=\"x\",le=\"0.5\"} 3",
            "d_seconds_bucket{a=\"x\",le=\"10\"} 3",
            "d_seconds_bucket{a=\"x\",le=\"+Inf\"} 4",
            "d_seconds_sum{a=\"x\"} 11.300000002",
            "d_seconds_count{a=\"x\"} 4",
        ] {
            assert!(out.contains(line), "{line} not in\n{out}");
        }
    }
}

//! A bounded ring of timestamped samples per series, fed from the agent's
//! own registry, for the metric series the rules reference (and only those).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::Duration,
};

use prometheus::proto::{MetricFamily, MetricType};

pub type Labels = BTreeMap<String, String>;

/// Samples of one series: (seconds since the engine started, value).
pub type Points = VecDeque<(f64, f64)>;

pub struct Store {
    /// Series names to keep (histograms as `x_bucket`, `x_sum`, `x_count`).
    wanted: HashSet<String>,
    series: HashMap<String, HashMap<Labels, Points>>,
    retention: f64,
    max_points: usize,
    max_series: usize,
    n_series: usize,
    /// Time of the latest ingest: instant selectors read series updated then.
    pub now: f64,
    /// Series refused because `max_series` was reached, since the last call
    /// to `take_dropped`.
    dropped: u64,
}

impl Store {
    /// `retention`: the longest rule range; `interval`: the evaluation period
    /// (sets how many points a series can hold).
    pub fn new(
        wanted: impl IntoIterator<Item = String>,
        retention: Duration,
        interval: Duration,
        max_series: usize,
    ) -> Self {
        // Keep one interval more than the range so a full window always has a
        // point at (or before) its start.
        let retention = retention.as_secs_f64() + 2.0 * interval.as_secs_f64();
        let max_points =
            ((retention / interval.as_secs_f64().max(0.001)).ceil() as usize + 2).clamp(3, 100_000);
        Self {
            wanted: wanted.into_iter().collect(),
            series: HashMap::new(),
            retention,
            max_points,
            max_series,
            n_series: 0,
            now: 0.0,
            dropped: 0,
        }
    }

    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    pub fn series_count(&self) -> usize {
        self.n_series
    }

    /// Records one sample per wanted series at time `t` (seconds, monotonic).
    pub fn ingest(&mut self, t: f64, families: &[MetricFamily]) {
        self.now = t;
        for f in families {
            let name = f.name();
            match f.get_field_type() {
                MetricType::HISTOGRAM => {
                    let (b, s, c) = (
                        format!("{name}_bucket"),
                        format!("{name}_sum"),
                        format!("{name}_count"),
                    );
                    let (wb, ws, wc) = (
                        self.wanted.contains(&b),
                        self.wanted.contains(&s),
                        self.wanted.contains(&c),
                    );
                    if !(wb || ws || wc) {
                        continue;
                    }
                    for m in f.get_metric() {
                        let labels = labels_of(m);
                        let h = m.get_histogram();
                        if wb {
                            for bucket in h.get_bucket() {
                                let mut l = labels.clone();
                                l.insert("le".into(), format_le(bucket.upper_bound()));
                                self.push(&b, l, t, bucket.cumulative_count() as f64);
                            }
                            let mut l = labels.clone();
                            l.insert("le".into(), "+Inf".into());
                            self.push(&b, l, t, h.get_sample_count() as f64);
                        }
                        if ws {
                            self.push(&s, labels.clone(), t, h.get_sample_sum());
                        }
                        if wc {
                            self.push(&c, labels, t, h.get_sample_count() as f64);
                        }
                    }
                }
                ty => {
                    if !self.wanted.contains(name) {
                        continue;
                    }
                    for m in f.get_metric() {
                        let v = match ty {
                            MetricType::COUNTER => m.get_counter().get_value(),
                            MetricType::GAUGE => m.get_gauge().get_value(),
                            // Summaries and untyped metrics are not used by sonde.
                            _ => continue,
                        };
                        self.push(name, labels_of(m), t, v);
                    }
                }
            }
        }
        self.expire(t);
    }

    fn push(&mut self, name: &str, labels: Labels, t: f64, v: f64) {
        let by_labels = self.series.entry(name.to_owned()).or_default();
        let points = match by_labels.get_mut(&labels) {
            Some(p) => p,
            None => {
                if self.n_series >= self.max_series {
                    self.dropped += 1;
                    return;
                }
                self.n_series += 1;
                by_labels.entry(labels).or_default()
            }
        };
        points.push_back((t, v));
        while points.len() > self.max_points {
            points.pop_front();
        }
    }

    /// Drops points older than the retention, and series left empty (a
    /// process that exited, a label value gone).
    fn expire(&mut self, t: f64) {
        let horizon = t - self.retention;
        let mut removed = 0;
        for by_labels in self.series.values_mut() {
            by_labels.retain(|_, p| {
                while p.front().is_some_and(|(pt, _)| *pt < horizon) {
                    p.pop_front();
                }
                let keep = !p.is_empty();
                if !keep {
                    removed += 1;
                }
                keep
            });
        }
        self.n_series -= removed;
    }

    /// Series of `name` with their points.
    pub fn series(&self, name: &str) -> impl Iterator<Item = (&Labels, &Points)> {
        self.series.get(name).into_iter().flat_map(|m| m.iter())
    }
}

fn labels_of(m: &prometheus::proto::Metric) -> Labels {
    m.get_label()
        .iter()
        .map(|l| (l.name().to_owned(), l.value().to_owned()))
        .collect()
}

/// Bucket bounds as Prometheus prints them (`0.005`, `1`, `+Inf`).
fn format_le(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

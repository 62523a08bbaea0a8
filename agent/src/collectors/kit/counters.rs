//! One exporter for the kernel's per-CPU counter arrays. The counters, their
//! slots and their labels are declared once, with `sonde_common::counters!`.

use std::marker::PhantomData;

use aya::maps::{MapData, PerCpuArray};
use prometheus::IntCounterVec;
use sonde_common::CounterSet;

/// A per-CPU `u64` array of the counters `C`, read as totals or as what
/// each gained since the last read.
pub struct KernelCounters<C> {
    map: PerCpuArray<MapData, u64>,
    last: Vec<u64>,
    _set: PhantomData<C>,
}

impl<C: CounterSet> KernelCounters<C> {
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self {
            map,
            last: vec![0; C::ALL.len()],
            _set: PhantomData,
        }
    }

    /// Total of one counter over the CPUs (0 when unreadable: a counter
    /// read must never stop a drain).
    pub fn total(&self, c: C) -> u64 {
        self.map
            .get(&c.index(), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Every counter's total, in slot order.
    pub fn totals(&self) -> impl Iterator<Item = (C, u64)> + '_ {
        C::ALL.iter().map(|&c| (c, self.total(c)))
    }

    /// What each counter gained since the last call, in slot order.
    pub fn deltas(&mut self) -> Deltas<C> {
        let mut out = Vec::with_capacity(C::ALL.len());
        for &c in C::ALL {
            let now = self.total(c);
            let last = &mut self.last[c.index() as usize];
            out.push((c, now.saturating_sub(*last)));
            *last = now;
        }
        Deltas(out)
    }

    /// Adds what each counter gained to `metric` under its label, except
    /// the counters in `skip` (exported elsewhere, or not at all); returns
    /// every delta for the collector's own use (health, other metrics).
    pub fn export(&mut self, metric: &IntCounterVec, skip: &[C]) -> Deltas<C>
    where
        C: PartialEq,
    {
        let d = self.deltas();
        for &(c, n) in &d.0 {
            if n > 0 && !skip.contains(&c) {
                metric.with_label_values(&[c.label()]).inc_by(n);
            }
        }
        d
    }
}

/// What each counter gained since the previous read.
pub struct Deltas<C>(Vec<(C, u64)>);

impl<C: CounterSet + PartialEq> Deltas<C> {
    pub fn get(&self, c: C) -> u64 {
        self.0.iter().find(|(x, _)| *x == c).map_or(0, |&(_, n)| n)
    }
}

//! User-side aggregation of the kernel's cumulative per-(tgid, syscall)
//! counters: deltas per drain, Prometheus series with bounded labels, and a
//! rolling window for `sonde syscalls`. Pure logic, no eBPF: unit-tested here.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sonde_common::syscalls::{
    ErrnoKey, HIST_BUCKETS, SyscallKey, SyscallStats, hist_lower_ns, hist_upper_ns,
};
use sonde_wire::syscalls::{ProcessRef, Report, Row, SortBy};

use super::names::{errno_name, syscall_name};

/// Label value that takes what a cap leaves out.
pub const OTHER: &str = "other";

/// One key's cumulative counters, summed over CPUs. Histogram sums wrap at
/// 2^32 like the kernel's buckets; deltas are taken with wrapping arithmetic.
///
/// The histogram is kept sparse: the tracker holds one reading per live
/// (process, syscall) pair, and a host that forks short-lived processes
/// has thousands of pairs with a handful of non-empty buckets each. Dense
/// (106 buckets, 448 bytes a pair) the readings, their deltas and the
/// per-drain maps held ~20 MiB transiently at ~5,000 pairs; sparse they
/// take a few hundred KiB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    /// (bucket, calls) of the non-zero buckets, in bucket order.
    pub hist: Box<[(u8, u32)]>,
}

const _: () = assert!(HIST_BUCKETS <= u8::MAX as usize + 1);

impl Reading {
    pub fn sum_cpus(values: &[SyscallStats]) -> Self {
        let (mut count, mut errors, mut total_ns) = (0u64, 0u64, 0u64);
        let mut dense = [0u32; HIST_BUCKETS];
        for v in values {
            count = count.wrapping_add(v.count);
            errors = errors.wrapping_add(v.errors);
            total_ns = total_ns.wrapping_add(v.total_ns);
            for (a, b) in dense.iter_mut().zip(v.hist.iter()) {
                *a = a.wrapping_add(*b);
            }
        }
        Self {
            count,
            errors,
            total_ns,
            hist: dense
                .iter()
                .enumerate()
                .filter(|(_, n)| **n != 0)
                .map(|(i, n)| (i as u8, *n))
                .collect(),
        }
    }
}

/// What happened to one key between two drains.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    /// Calls per histogram bucket (see sonde_common::syscalls), up to the
    /// last non-empty one (shorter vectors are zero beyond their end).
    pub hist: Vec<u64>,
}

impl Delta {
    fn between(now: &Reading, last: Option<&Reading>) -> Self {
        let len = |r: &Reading| r.hist.last().map_or(0, |(i, _)| *i as usize + 1);
        match last {
            // A key recreated after deletion starts again from zero.
            Some(l) if now.count >= l.count => {
                // Same arithmetic as on dense arrays: a bucket missing on
                // one side is zero there (a bucket can wrap to exactly 0).
                let mut hist = vec![0u32; len(now).max(len(l))];
                for (i, n) in now.hist.iter() {
                    hist[*i as usize] = *n;
                }
                for (i, n) in l.hist.iter() {
                    hist[*i as usize] = hist[*i as usize].wrapping_sub(*n);
                }
                let mut hist: Vec<u64> = hist.into_iter().map(u64::from).collect();
                while hist.last() == Some(&0) {
                    hist.pop();
                }
                Self {
                    count: now.count - l.count,
                    errors: now.errors.saturating_sub(l.errors),
                    total_ns: now.total_ns.saturating_sub(l.total_ns),
                    hist,
                }
            }
            _ => {
                let mut hist = vec![0u64; len(now)];
                for (i, n) in now.hist.iter() {
                    hist[*i as usize] = u64::from(*n);
                }
                Self {
                    count: now.count,
                    errors: now.errors,
                    total_ns: now.total_ns,
                    hist,
                }
            }
        }
    }

    pub fn add(&mut self, o: &Delta) {
        self.count += o.count;
        self.errors += o.errors;
        self.total_ns += o.total_ns;
        if self.hist.len() < o.hist.len() {
            self.hist.resize(o.hist.len(), 0);
        }
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a += b;
        }
    }

    /// Upper bound (ns) of the bucket holding quantile `q` (HdrHistogram's
    /// convention: the true value is at most this, and at least 80 % of it
    /// since buckets are at most 25 % wider than their lower bound). The open last bucket reports its
    /// lower bound.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let total: u64 = self.hist.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(if i + 1 >= HIST_BUCKETS {
                    hist_lower_ns(i)
                } else {
                    hist_upper_ns(i)
                });
            }
        }
        None
    }
}

/// Non-zero deltas of one drain: per (tgid, nr), and failures per errno.
pub type Deltas = (Vec<(SyscallKey, Delta)>, Vec<(ErrnoKey, u64)>);

/// Remembers the last reading of every key to turn cumulative kernel
/// counters into deltas.
#[derive(Default)]
pub struct Tracker {
    last: HashMap<SyscallKey, Reading>,
    last_err: HashMap<ErrnoKey, u64>,
}

impl Tracker {
    /// Takes a full reading of both maps; returns the non-zero deltas.
    /// Keys of `deferred` processes are left for a later reading: no delta
    /// now, and their previous reading is kept.
    pub fn update(
        &mut self,
        cur: HashMap<SyscallKey, Reading>,
        cur_err: HashMap<ErrnoKey, u64>,
        deferred: &HashSet<u32>,
    ) -> Deltas {
        let mut out = Vec::new();
        let mut last = HashMap::with_capacity(cur.len());
        for (k, r) in cur {
            if deferred.contains(&k.tgid) {
                if let Some(old) = self.last.remove(&k) {
                    last.insert(k, old);
                }
                continue;
            }
            let d = Delta::between(&r, self.last.get(&k));
            if d.count > 0 {
                out.push((k, d));
            }
            last.insert(k, r);
        }
        let mut errs = Vec::new();
        let mut last_err = HashMap::with_capacity(cur_err.len());
        for (k, v) in cur_err {
            let prev = self.last_err.get(&k).copied();
            if deferred.contains(&k.tgid) {
                if let Some(old) = prev {
                    last_err.insert(k, old);
                }
                continue;
            }
            let prev = prev.unwrap_or(0);
            let d = if v >= prev { v - prev } else { v };
            if d > 0 {
                errs.push((k, d));
            }
            last_err.insert(k, v);
        }
        self.last = last;
        self.last_err = last_err;
        (out, errs)
    }

    /// Thread-group ids with counters in the kernel maps.
    pub fn tgids(&self) -> HashSet<u32> {
        self.last.keys().map(|k| k.tgid).collect()
    }

    pub fn keys_of(&self, tgids: &HashSet<u32>) -> (Vec<SyscallKey>, Vec<ErrnoKey>) {
        (
            self.last
                .keys()
                .filter(|k| tgids.contains(&k.tgid))
                .copied()
                .collect(),
            self.last_err
                .keys()
                .filter(|k| tgids.contains(&k.tgid))
                .copied()
                .collect(),
        )
    }

    /// Forgets keys deleted from the kernel maps.
    pub fn forget(&mut self, tgids: &HashSet<u32>) {
        self.last.retain(|k, _| !tgids.contains(&k.tgid));
        self.last_err.retain(|k, _| !tgids.contains(&k.tgid));
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// The last cumulative reading of every key.
    pub fn readings(&self) -> impl Iterator<Item = (&SyscallKey, &Reading)> {
        self.last.iter()
    }
}

/// Prometheus histogram bounds: powers of two of nanoseconds, so each is a
/// bucket edge of the kernel histogram and no interpolation is needed.
pub const PROM_BUCKET_SHIFTS: [u32; 13] = [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34];

pub fn prom_bounds_seconds() -> Vec<f64> {
    PROM_BUCKET_SHIFTS
        .iter()
        .map(|s| (1u64 << s) as f64 / 1e9)
        .collect()
}

/// One (service, syscall) histogram and counter.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub count: u64,
    pub errors: u64,
    pub sum_ns: u128,
    /// Non-cumulative calls per Prometheus bucket; the last is +Inf only.
    pub buckets: [u64; PROM_BUCKET_SHIFTS.len() + 1],
}

impl Series {
    fn add(&mut self, d: &Delta) {
        self.count += d.count;
        self.errors += d.errors;
        self.sum_ns += u128::from(d.total_ns);
        for (i, n) in d.hist.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            // Bucket i's values are all below hist_upper_ns(i), an edge.
            let up = hist_upper_ns(i);
            let j = PROM_BUCKET_SHIFTS
                .iter()
                .position(|s| up <= 1u64 << s)
                .unwrap_or(PROM_BUCKET_SHIFTS.len());
            self.buckets[j] += n;
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub top_syscalls: usize,
    pub top_errnos: usize,
    pub max_services: usize,
}

#[derive(Default)]
struct Service {
    syscalls: HashMap<String, Series>,
    /// (syscall label, errno label) -> failures.
    errors: HashMap<(String, String), u64>,
}

/// Everything exported as `sonde_syscall*` series. Labels once admitted stay
/// (counters must never go backwards); new ones beyond a cap fold into
/// `other`, and the folded calls are counted.
pub struct Export {
    limits: Limits,
    services: HashMap<String, Service>,
    /// Calls whose service, syscall or errno label was folded into `other`.
    pub folded: u64,
}

/// Per-service input of one drain.
#[derive(Default)]
pub struct ServiceDelta {
    pub by_nr: HashMap<u32, Delta>,
    pub errnos: HashMap<(u32, u32), u64>,
}

impl Export {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            services: HashMap::new(),
            folded: 0,
        }
    }

    pub fn apply(&mut self, service: &str, d: &ServiceDelta) {
        let service = if self.services.contains_key(service)
            || self.services.len() < self.limits.max_services
        {
            service
        } else {
            self.folded += d.by_nr.values().map(|x| x.count).sum::<u64>();
            OTHER
        };
        let top = self.limits.top_syscalls;
        let top_err = self.limits.top_errnos;
        let svc = self.services.entry(service.to_owned()).or_default();
        // Admit new syscalls busiest first, so the first drain that sees a
        // service gives its labels to its heaviest syscalls.
        let mut rows: Vec<(&u32, &Delta)> = d.by_nr.iter().collect();
        rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let mut label_of: HashMap<u32, String> = HashMap::new();
        for (nr, delta) in rows {
            let name = syscall_name(*nr);
            let label = if svc.syscalls.contains_key(&name)
                || svc.syscalls.keys().filter(|k| *k != OTHER).count() < top
            {
                name
            } else {
                self.folded += delta.count;
                OTHER.to_owned()
            };
            svc.syscalls.entry(label.clone()).or_default().add(delta);
            label_of.insert(*nr, label);
        }
        let mut errs: Vec<(&(u32, u32), &u64)> = d.errnos.iter().collect();
        errs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for ((nr, errno), n) in errs {
            let sys = label_of
                .get(nr)
                .cloned()
                .unwrap_or_else(|| syscall_name(*nr));
            let en = errno_name(*errno);
            let known = svc.errors.keys().filter(|(s, e)| *s == sys && e != OTHER);
            let en =
                if svc.errors.contains_key(&(sys.clone(), en.clone())) || known.count() < top_err {
                    en
                } else {
                    self.folded += n;
                    OTHER.to_owned()
                };
            *svc.errors.entry((sys, en)).or_default() += n;
        }
    }

    /// (service, syscall, series) for every exported series.
    pub fn series(&self) -> impl Iterator<Item = (&str, &str, &Series)> {
        self.services.iter().flat_map(|(svc, s)| {
            s.syscalls
                .iter()
                .map(move |(sys, series)| (svc.as_str(), sys.as_str(), series))
        })
    }

    /// (service, syscall, errno, failures).
    pub fn errors(&self) -> impl Iterator<Item = (&str, &str, &str, u64)> {
        self.services.iter().flat_map(|(svc, s)| {
            s.errors
                .iter()
                .map(move |((sys, e), n)| (svc.as_str(), sys.as_str(), e.as_str(), *n))
        })
    }
}

/// One process's activity on one syscall during one drain interval. Kept
/// compact (names shared, histogram sparse): a fork storm puts one entry per
/// (process, syscall) in the window.
#[derive(Clone, Debug)]
pub struct WindowEntry {
    pub tgid: u32,
    pub comm: Arc<str>,
    pub service: Arc<str>,
    pub nr: u32,
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    /// (bucket, calls) for non-empty buckets.
    pub hist: Box<[(u16, u64)]>,
    pub errnos: Box<[(u32, u64)]>,
}

impl WindowEntry {
    pub fn new(
        tgid: u32,
        comm: Arc<str>,
        service: Arc<str>,
        nr: u32,
        d: &Delta,
        errnos: Vec<(u32, u64)>,
    ) -> Self {
        Self {
            tgid,
            comm,
            service,
            nr,
            count: d.count,
            errors: d.errors,
            total_ns: d.total_ns,
            hist: d
                .hist
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (i as u16, *n))
                .collect(),
            errnos: errnos.into_boxed_slice(),
        }
    }

    fn add_to(&self, d: &mut Delta) {
        d.count += self.count;
        d.errors += self.errors;
        d.total_ns += self.total_ns;
        if d.hist.len() < HIST_BUCKETS {
            d.hist.resize(HIST_BUCKETS, 0);
        }
        for (i, n) in self.hist.iter() {
            if let Some(b) = d.hist.get_mut(*i as usize) {
                *b += n;
            }
        }
    }
}

/// The last `span` of drains, for `sonde syscalls`, each numbered so a
/// lease can ask for the drains since it began.
pub struct Window {
    span: Duration,
    /// Number of the last drain pushed.
    seq: u64,
    /// Drains after this one are kept past `span` (a lease still needs
    /// them).
    hold: Option<u64>,
    slots: VecDeque<(u64, Instant, Vec<WindowEntry>)>,
}

/// Where a lease's window begins: after drain `seq`, read at `at`.
#[derive(Clone, Copy, Debug)]
pub struct Since {
    pub seq: u64,
    pub at: Instant,
}

/// Which processes a query covers.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Filter {
    pub pid: Option<u32>,
    /// Matches the comm or the service name.
    pub name: Option<String>,
}

impl Window {
    pub fn new(span: Duration) -> Self {
        Self {
            span,
            seq: 0,
            hold: None,
            slots: VecDeque::new(),
        }
    }

    /// The number of the last drain pushed.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Keeps the drains after `seq` past the span (None: no lease needs
    /// any).
    pub fn hold(&mut self, seq: Option<u64>) {
        self.hold = seq;
    }

    pub fn push(&mut self, at: Instant, entries: Vec<WindowEntry>) {
        self.seq += 1;
        self.slots.push_back((self.seq, at, entries));
        while let Some((seq, t, _)) = self.slots.front() {
            let held = self.hold.is_some_and(|h| *seq > h);
            if !held && at.duration_since(*t) > self.span {
                self.slots.pop_front();
            } else {
                break;
            }
        }
    }

    /// The drains of the last `span` or, with `since`, every drain after
    /// `since.seq` (the window of a lease).
    pub fn report(&self, f: &Filter, sort: SortBy, now: Instant, since: Option<Since>) -> Report {
        let mut by_nr: BTreeMap<u32, (Delta, BTreeMap<String, u64>)> = BTreeMap::new();
        let mut procs: BTreeMap<u32, ProcessRef> = BTreeMap::new();
        let mut oldest = now;
        for (seq, at, entries) in &self.slots {
            match since {
                Some(s) if *seq <= s.seq => continue,
                None if now.duration_since(*at) > self.span => continue,
                _ => {}
            }
            oldest = oldest.min(*at);
            for e in entries {
                if f.pid.is_some_and(|p| p != e.tgid)
                    || f.name
                        .as_deref()
                        .is_some_and(|n| n != &*e.comm && n != &*e.service)
                {
                    continue;
                }
                procs.entry(e.tgid).or_insert_with(|| ProcessRef {
                    pid: e.tgid,
                    comm: e.comm.to_string(),
                    service: e.service.to_string(),
                });
                let slot = by_nr.entry(e.nr).or_default();
                e.add_to(&mut slot.0);
                for (errno, n) in e.errnos.iter() {
                    *slot.1.entry(errno_name(*errno)).or_default() += n;
                }
            }
        }
        let mut total = Delta::default();
        let mut rows: Vec<Row> = by_nr
            .iter()
            .map(|(nr, (d, errnos))| {
                total.add(d);
                row(syscall_name(*nr), d, errnos.clone())
            })
            .collect();
        match sort {
            SortBy::Time => rows.sort_by(|a, b| b.total_seconds.total_cmp(&a.total_seconds)),
            SortBy::Count => rows.sort_by_key(|r| std::cmp::Reverse(r.calls)),
            SortBy::Errors => {
                rows.sort_by(|a, b| b.errors.cmp(&a.errors).then(b.calls.cmp(&a.calls)))
            }
        }
        let window_seconds = match since {
            Some(s) => now.duration_since(s.at).as_secs_f64(),
            None => now
                .duration_since(oldest)
                .as_secs_f64()
                .min(self.span.as_secs_f64()),
        };
        Report {
            window_seconds,
            processes: procs.into_values().collect(),
            rows,
            total: row("total".into(), &total, BTreeMap::new()),
        }
    }
}

fn row(syscall: String, d: &Delta, errnos: BTreeMap<String, u64>) -> Row {
    let secs = |ns: u64| ns as f64 / 1e9;
    Row {
        syscall,
        calls: d.count,
        errors: d.errors,
        total_seconds: secs(d.total_ns),
        avg_seconds: if d.count > 0 {
            secs(d.total_ns) / d.count as f64
        } else {
            0.0
        },
        p50_seconds: d.quantile_ns(0.5).map(secs),
        p99_seconds: d.quantile_ns(0.99).map(secs),
        errnos,
    }
}

#[cfg(test)]
mod tests {
    use sonde_common::syscalls::hist_bucket;

    use super::*;

    fn stats(count: u64, ns_each: u64, errors: u64) -> SyscallStats {
        let mut s = SyscallStats::ZERO;
        s.count = count;
        s.errors = errors;
        s.total_ns = count * ns_each;
        s.hist[hist_bucket(ns_each)] = count as u32;
        s
    }

    fn key(tgid: u32, nr: u32) -> SyscallKey {
        SyscallKey { tgid, nr }
    }

    #[test]
    fn deltas_sum_cpus_and_survive_wrapping_buckets() {
        let mut t = Tracker::default();
        let r = Reading::sum_cpus(&[stats(10, 1000, 1), stats(5, 1000, 0)]);
        assert_eq!(r.count, 15);
        let none = HashSet::new();
        let (d, _) = t.update(
            HashMap::from([(key(1, 0), r.clone())]),
            HashMap::new(),
            &none,
        );
        assert_eq!(d[0].1.count, 15);
        // A deferred process yields nothing now and everything later.
        let mut t2 = Tracker::default();
        let (d, _) = t2.update(
            HashMap::from([(key(1, 0), r.clone())]),
            HashMap::new(),
            &HashSet::from([1]),
        );
        assert!(d.is_empty());
        let (d, _) = t2.update(HashMap::from([(key(1, 0), r)]), HashMap::new(), &none);
        assert_eq!(d[0].1.count, 15);
        assert_eq!(d[0].1.errors, 1);
        // Bucket wraps at 2^32 on one CPU: the delta is still right.
        let mut a = stats(10, 1000, 1);
        a.count = 10 + 7;
        a.hist[hist_bucket(1000)] = 3u32.wrapping_sub(0); // 10 + 7 + (2^32 - 10) wrapped
        let mut p = stats(10, 1000, 1);
        p.hist[hist_bucket(1000)] = u32::MAX - 3;
        let prev = Reading::sum_cpus(&[p]);
        let mut t = Tracker::default();
        t.update(HashMap::from([(key(1, 0), prev)]), HashMap::new(), &none);
        let (d, _) = t.update(
            HashMap::from([(key(1, 0), Reading::sum_cpus(&[a]))]),
            HashMap::new(),
            &none,
        );
        assert_eq!(d[0].1.count, 7);
        assert_eq!(d[0].1.hist[hist_bucket(1000)], 7);
    }

    #[test]
    fn sparse_deltas_match_dense_arithmetic() {
        // Buckets only in the new reading, only in the old one (wrapped to
        // exactly zero), in both, and a key recreated with fewer calls.
        let mut old = SyscallStats::ZERO;
        old.count = 10;
        old.hist[3] = 4;
        old.hist[40] = 6;
        let mut new = SyscallStats::ZERO;
        new.count = 10 + 9;
        new.hist[3] = 5;
        new.hist[7] = 8;
        new.hist[40] = 6u32.wrapping_add(u32::MAX).wrapping_add(1); // wrapped to 6
        let mut t = Tracker::default();
        let none = HashSet::new();
        let k = || HashMap::from([(key(1, 0), Reading::sum_cpus(&[old]))]);
        t.update(k(), HashMap::new(), &none);
        let (d, _) = t.update(
            HashMap::from([(key(1, 0), Reading::sum_cpus(&[new]))]),
            HashMap::new(),
            &none,
        );
        assert_eq!(d[0].1.hist, vec![0, 0, 0, 1, 0, 0, 0, 8]);
        let mut gone_to_zero = new;
        gone_to_zero.hist[40] = 0; // 6 + (2^32 - 6) calls: wrapped to 0
        let mut t = Tracker::default();
        t.update(k(), HashMap::new(), &none);
        let (d, _) = t.update(
            HashMap::from([(key(1, 0), Reading::sum_cpus(&[gone_to_zero]))]),
            HashMap::new(),
            &none,
        );
        assert_eq!(d[0].1.hist[40], u64::from(u32::MAX - 5));
        let mut fewer = SyscallStats::ZERO;
        fewer.count = 2;
        fewer.hist[5] = 2;
        let (d, _) = t.update(
            HashMap::from([(key(1, 0), Reading::sum_cpus(&[fewer]))]),
            HashMap::new(),
            &none,
        );
        assert_eq!(d[0].1.hist, vec![0, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn quantiles_report_bucket_upper_bounds() {
        let mut d = Delta {
            hist: vec![0; HIST_BUCKETS],
            ..Default::default()
        };
        d.hist[hist_bucket(10_080_000)] = 50;
        let p50 = d.quantile_ns(0.5).unwrap();
        assert!((10_000_000..=12_000_000).contains(&p50), "{p50}");
        d.hist[hist_bucket(300)] = 50;
        assert_eq!(d.quantile_ns(0.5).unwrap(), hist_upper_ns(hist_bucket(300)));
        assert_eq!(d.quantile_ns(0.99).unwrap(), p50);
    }

    #[test]
    fn export_caps_syscalls_and_services() {
        let mut e = Export::new(Limits {
            top_syscalls: 2,
            top_errnos: 1,
            max_services: 1,
        });
        let delta = |n: u64| Delta {
            count: n,
            hist: {
                let mut h = vec![0; HIST_BUCKETS];
                h[hist_bucket(2000)] = n;
                h
            },
            total_ns: n * 2000,
            ..Default::default()
        };
        let mut d = ServiceDelta::default();
        d.by_nr.insert(0, delta(5));
        d.by_nr.insert(1, delta(50));
        d.by_nr.insert(110, delta(500));
        d.errnos.insert((0, 2), 3);
        d.errnos.insert((0, 13), 1);
        e.apply("svc", &d);
        let mut s: Vec<(String, u64)> = e
            .series()
            .map(|(_, sys, x)| (sys.to_owned(), x.count))
            .collect();
        s.sort();
        // The two busiest get labels; read folds into other.
        assert_eq!(
            s,
            vec![
                ("getppid".into(), 500),
                ("other".into(), 5),
                ("write".into(), 50)
            ]
        );
        let mut errs: Vec<(String, String, u64)> = e
            .errors()
            .map(|(_, s, en, n)| (s.into(), en.into(), n))
            .collect();
        errs.sort();
        // One errno label per syscall: the most frequent; the rest fold.
        assert_eq!(
            errs,
            vec![
                ("other".into(), "ENOENT".into(), 3),
                ("other".into(), "other".into(), 1)
            ]
        );
        // A second service folds into `other`.
        e.apply("svc2", &d);
        assert!(e.series().any(|(svc, _, _)| svc == OTHER));
        assert!(e.folded >= 555);
        // Prometheus buckets: 2 µs falls under le=4.096e-6.
        let g = e.series().find(|(_, s, _)| *s == "getppid").unwrap().2;
        assert_eq!(g.buckets[1], 500);
    }

    #[test]
    fn window_filters_sorts_and_expires() {
        let mut w = Window::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let entry = |tgid, nr, n| {
            let d = Delta {
                count: n,
                errors: if nr == 257 { n } else { 0 },
                total_ns: n * 1000,
                hist: {
                    let mut h = vec![0; HIST_BUCKETS];
                    h[hist_bucket(1000)] = n;
                    h
                },
            };
            let errnos = if nr == 257 { vec![(2, n)] } else { vec![] };
            WindowEntry::new(
                tgid,
                format!("c{tgid}").into(),
                "svc".into(),
                nr,
                &d,
                errnos,
            )
        };
        w.push(t0, vec![entry(1, 110, 100), entry(2, 110, 7)]);
        w.push(
            t0 + Duration::from_secs(5),
            vec![entry(1, 257, 10), entry(1, 110, 100)],
        );
        let r = w.report(
            &Filter {
                pid: Some(1),
                name: None,
            },
            SortBy::Count,
            t0 + Duration::from_secs(6),
            None,
        );
        assert_eq!(r.rows[0].syscall, "getppid");
        assert_eq!(r.rows[0].calls, 200);
        assert_eq!(r.rows[1].errnos.get("ENOENT"), Some(&10));
        assert_eq!(r.total.calls, 210);
        let r = w.report(
            &Filter::default(),
            SortBy::Errors,
            t0 + Duration::from_secs(6),
            None,
        );
        assert_eq!(r.rows[0].syscall, "openat");
        assert_eq!(r.processes.len(), 2);
        // 62 s later the first slot is out of the window, the second in.
        w.push(t0 + Duration::from_secs(62), vec![]);
        let r = w.report(
            &Filter::default(),
            SortBy::Count,
            t0 + Duration::from_secs(62),
            None,
        );
        assert_eq!(r.total.calls, 110);
    }

    #[test]
    fn a_lease_sees_the_drains_since_it_began_even_past_the_span() {
        let mut w = Window::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let d = |n| Delta {
            count: n,
            ..Delta::default()
        };
        let e = |n| WindowEntry::new(1, "c".into(), "s".into(), 110, &d(n), vec![]);
        w.push(t0, vec![e(1)]);
        let since = Since {
            seq: w.seq(),
            at: t0,
        };
        w.hold(Some(since.seq));
        for i in 1..=3 {
            w.push(t0 + Duration::from_secs(10 * i), vec![e(10)]);
        }
        let at = t0 + Duration::from_secs(30);
        let r = w.report(&Filter::default(), SortBy::Count, at, Some(since));
        assert_eq!(r.total.calls, 30, "the drain before the lease is not in it");
        assert_eq!(r.window_seconds, 30.0);
        // Without the lease, the window is the last 10 s only.
        let r = w.report(&Filter::default(), SortBy::Count, at, None);
        assert_eq!(r.total.calls, 20);
        // Released: old drains go at the next push.
        w.hold(None);
        w.push(t0 + Duration::from_secs(40), vec![]);
        let r = w.report(&Filter::default(), SortBy::Count, at, Some(since));
        assert_eq!(r.total.calls, 10);
    }
}

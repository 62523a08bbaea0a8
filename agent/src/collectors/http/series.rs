//! The drain's cache of resolved series: for each (group, raw path), the
//! labels and histograms an exchange feeds, and for each connection whose
//! last exchange awaits its final sizes, the series they belong to.
//!
//! Observations (one per event, or the kernel's counts of many exchanges,
//! [`SeriesCache::add`]) go to [`LocalHist`]s, plain counters owned by the
//! cache (the drain holds the collector's lock), and reach the exported
//! histograms once per drained batch ([`SeriesCache::flush`]): updating a
//! shared histogram per observation was the largest item of the agent's
//! CPU under wrk (perf, release build).

use std::collections::hash_map::Entry;

use super::{FastMap, agg::Delta, hist::LocalHist, stats::StatKey};

/// (client, tgid, server port or 0, status, method): with the raw path,
/// what determines an exchange's series.
pub(super) type Group = (bool, u32, u16, u16, &'static str);

/// Resolved labels and metric handles of one (group, raw path): resolving
/// them (route normalization, label hashing) once per path instead of once
/// per request keeps the agent's cost per event low.
pub(super) struct Series {
    pub duration: LocalHist,
    /// Request and response sizes (server exchanges).
    pub sizes: Option<(LocalHist, LocalHist)>,
    pub overflow: bool,
    pub stat: StatKey,
    /// Index of `stat`'s summary (none past the cap on summaries).
    pub stat_slot: Option<usize>,
}

impl Series {
    fn flush(&mut self) {
        self.duration.flush();
        if let Some((req, resp)) = &mut self.sizes {
            req.flush();
            resp.flush();
        }
    }
}

struct Slot {
    series: Series,
    /// Observed since the last flush (listed in `dirty`).
    dirty: bool,
}

/// Bounds of the cache (it is only a cache: clearing is harmless).
const MAX_SERIES_GROUPS: usize = 10_000;
const MAX_PATHS_PER_GROUP: usize = 1_000;
/// Most exchanges awaiting their final sizes.
const MAX_PENDING: usize = 65_536;

/// Series by (group, raw path), as indexes into `slots`.
#[derive(Default)]
pub(super) struct SeriesCache {
    index: FastMap<Group, FastMap<String, usize>>,
    slots: Vec<Slot>,
    dirty: Vec<usize>,
    /// (tgid, fd) -> slot of the exchange last completed there, whose
    /// final sizes arrive with the next event of that connection.
    pending: FastMap<(u32, u32), usize>,
}

impl SeriesCache {
    /// The cached series of (group, path).
    pub fn find(&self, group: &Group, path: &str) -> Option<usize> {
        self.index.get(group)?.get(path).copied()
    }

    /// Caches `s` for (group, path); past the bounds the cache starts over.
    pub fn insert(&mut self, group: Group, path: &str, s: Series) -> usize {
        if self.index.len() >= MAX_SERIES_GROUPS
            || self
                .index
                .get(&group)
                .is_some_and(|p| p.len() >= MAX_PATHS_PER_GROUP)
        {
            self.clear();
        }
        let i = self.slots.len();
        self.slots.push(Slot {
            series: s,
            dirty: false,
        });
        self.index
            .entry(group)
            .or_default()
            .insert(path.to_owned(), i);
        i
    }

    pub fn get(&self, i: usize) -> &Series {
        &self.slots[i].series
    }

    /// Marks slot `i` as observed since the last flush.
    fn touch(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(i);
        }
    }

    /// Observes an exchange's duration on slot `i`, and remembers the slot
    /// for the connection's final sizes when it has size histograms.
    pub fn observe(&mut self, i: usize, ns: u64, conn: (u32, u32)) {
        self.slots[i].series.duration.observe(ns);
        self.touch(i);
        if self.slots[i].series.sizes.is_some() {
            if self.pending.len() >= MAX_PENDING {
                self.pending.clear();
            }
            self.pending.insert(conn, i);
        }
    }

    /// Final sizes of the exchange last completed on `conn`.
    pub fn sizes(&mut self, conn: (u32, u32), req: u64, resp: u64) {
        let Some(i) = self.pending.remove(&conn) else {
            return;
        };
        if let Some((rq, rs)) = &mut self.slots[i].series.sizes {
            rq.observe(req);
            rs.observe(resp);
            self.touch(i);
        }
    }

    /// Exchanges counted in the kernel: durations, and the sizes of those
    /// whose last byte is known.
    pub fn add(&mut self, i: usize, d: &Delta) {
        let s = &mut self.slots[i].series;
        s.duration.add(&d.dur, d.dur_sum_ns);
        if let Some((rq, rs)) = &mut s.sizes {
            rq.add(&d.req, d.req_sum);
            rs.add(&d.resp, d.resp_sum);
        }
        self.touch(i);
    }

    /// The connection closed: no sizes will come for it.
    pub fn forget(&mut self, conn: (u32, u32)) {
        self.pending.remove(&conn);
    }

    /// Moves what was observed since the last flush to the shared
    /// histograms (once per drained batch).
    pub fn flush(&mut self) {
        for i in self.dirty.drain(..) {
            let s = &mut self.slots[i];
            s.series.flush();
            s.dirty = false;
        }
    }

    /// Forgets every cached series (labels may have changed: services
    /// re-resolved, new route patterns) after flushing them. Series that
    /// a connection's final sizes still wait for are kept until those
    /// arrive.
    pub fn clear(&mut self) {
        self.flush();
        self.index.clear();
        let mut old: Vec<Option<Slot>> = self.slots.drain(..).map(Some).collect();
        let mut moved: FastMap<usize, usize> = FastMap::default();
        let slots = &mut self.slots;
        self.pending.retain(|_, i| {
            let new = match moved.entry(*i) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    let Some(slot) = old.get_mut(*i).and_then(Option::take) else {
                        return false;
                    };
                    slots.push(slot);
                    *e.insert(slots.len() - 1)
                }
            };
            *i = new;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use sonde_common::http::red::SIZE_BOUNDS;

    use super::{super::hist::HistVec, *};

    fn hist() -> HistVec {
        HistVec::new("h", "h", &[], &SIZE_BOUNDS, 1.0).unwrap()
    }

    fn series(d: &HistVec, sizes: Option<(&HistVec, &HistVec)>) -> Series {
        Series {
            duration: d.local(&[]),
            sizes: sizes.map(|(a, b)| (a.local(&[]), b.local(&[]))),
            overflow: false,
            stat: StatKey {
                client: false,
                pid: 1,
                service: "s".into(),
                method: "GET",
                route: "/".into(),
            },
            stat_slot: None,
        }
    }

    #[test]
    fn flush_and_clear_keep_every_observation() {
        let (d, rq, rs) = (hist(), hist(), hist());
        let mut c = SeriesCache::default();
        let g: Group = (false, 1, 80, 200, "GET");
        let i = c.insert(g, "/a", series(&d, Some((&rq, &rs))));
        assert_eq!(c.find(&g, "/a"), Some(i));
        c.observe(i, 500, (1, 3));
        c.observe(i, 500, (1, 4));
        assert_eq!(d.sample(&[]).unwrap().0, 0, "not flushed yet");
        c.flush();
        assert_eq!(d.sample(&[]).unwrap().0, 2);
        // The cache starts over while two connections wait for sizes: their
        // series survive until the sizes come.
        c.clear();
        assert_eq!(c.find(&g, "/a"), None);
        c.sizes((1, 3), 10, 20);
        c.sizes((1, 4), 11, 21);
        c.sizes((1, 5), 1, 1);
        c.flush();
        assert_eq!(rq.sample(&[]).unwrap().0, 2);
        assert_eq!(rs.sample(&[]).unwrap().1, 41);
        // A closed connection's sizes are not awaited.
        let j = c.insert(g, "/a", series(&d, Some((&rq, &rs))));
        c.observe(j, 100, (1, 6));
        c.forget((1, 6));
        c.sizes((1, 6), 1, 1);
        c.flush();
        assert_eq!(rq.sample(&[]).unwrap().0, 2);
        assert_eq!(d.sample(&[]).unwrap().0, 3);
    }
}

//! The agent's side of RED counted in the kernel (`sonde_common::http::red`,
//! docs/http.md "Counted in the kernel").
//!
//! - The drain labels a request from its event as before; the second time
//!   it sees the same raw key (process, port, role, method and path), it
//!   puts the key into the kernel's dictionary (`HTTP_ROUTES`) with the id
//!   of its series group (client, process, port, method, route), so later
//!   requests of that path are counted in the kernel and send no event.
//!   (Not the first time: a path seen once, e.g. with an id in it, would
//!   cost a map update per request.)
//! - [`Agg::poll`] reads the per-CPU counts of every (id, status)
//!   (`HTTP_AGG`) every 250 ms, sums the CPUs, and hands the difference
//!   from the last read to the caller, which adds it to the same series
//!   and summaries the events feed. Counts only grow, so nothing is lost
//!   between a read and a reset.
//! - [`Agg::release`] forgets exited processes: a last read, then their
//!   dictionary and aggregation entries are deleted.

use std::collections::HashSet;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap};
use sonde_common::http::{
    HTTP_PREFIX_LEN, HttpEvent, HttpRole,
    red::{
        DURATION_BOUNDS_NS, HttpAgg, HttpAggKey, HttpRouteKey, LOG_BUCKETS, ROUTE_KEY_LEN,
        SIZE_BOUNDS, fill_route_key,
    },
};

use super::FastMap;

const DUR: usize = DURATION_BOUNDS_NS.len() + 1;
const SIZE: usize = SIZE_BOUNDS.len() + 1;

/// Counts of one (id, status) summed over CPUs, or the difference of two
/// such reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    pub dur: [u64; DUR],
    pub dur_sum_ns: u64,
    pub req: [u64; SIZE],
    pub req_sum: u64,
    pub resp: [u64; SIZE],
    pub resp_sum: u64,
    /// Wrapping `u32` in the kernel: kept as such here, widened in deltas.
    pub log: [u32; LOG_BUCKETS],
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            dur: [0; DUR],
            dur_sum_ns: 0,
            req: [0; SIZE],
            req_sum: 0,
            resp: [0; SIZE],
            resp_sum: 0,
            log: [0; LOG_BUCKETS],
        }
    }
}

impl Counts {
    /// The sum of the per-CPU values of an entry.
    pub fn sum(cpus: &[HttpAgg]) -> Self {
        let mut c = Self::default();
        for v in cpus {
            c.dur_sum_ns = c.dur_sum_ns.wrapping_add(v.dur_sum_ns);
            c.req_sum = c.req_sum.wrapping_add(v.req_sum);
            c.resp_sum = c.resp_sum.wrapping_add(v.resp_sum);
            add(&mut c.dur, &v.dur);
            add(&mut c.req, &v.req);
            add(&mut c.resp, &v.resp);
            for (a, b) in c.log.iter_mut().zip(&v.log) {
                *a = a.wrapping_add(*b);
            }
        }
        c
    }

    /// `self - old`, and whether anything moved.
    pub fn since(&self, old: &Counts) -> Option<Delta> {
        let mut d = Delta {
            dur: [0; DUR],
            dur_sum_ns: self.dur_sum_ns.wrapping_sub(old.dur_sum_ns),
            req: [0; SIZE],
            req_sum: self.req_sum.wrapping_sub(old.req_sum),
            resp: [0; SIZE],
            resp_sum: self.resp_sum.wrapping_sub(old.resp_sum),
            log: vec![0; LOG_BUCKETS],
        };
        sub(&mut d.dur, &self.dur, &old.dur);
        sub(&mut d.req, &self.req, &old.req);
        sub(&mut d.resp, &self.resp, &old.resp);
        for ((d, a), b) in d.log.iter_mut().zip(&self.log).zip(&old.log) {
            *d = u64::from(a.wrapping_sub(*b));
        }
        (d.exchanges() > 0 || d.sized() > 0).then_some(d)
    }
}

fn add<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a = a.wrapping_add(*b);
    }
}

fn sub<const N: usize>(d: &mut [u64; N], a: &[u64; N], b: &[u64; N]) {
    for ((d, a), b) in d.iter_mut().zip(a).zip(b) {
        *d = a.wrapping_sub(*b);
    }
}

/// What one (id, status) gained since the last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub dur: [u64; DUR],
    pub dur_sum_ns: u64,
    pub req: [u64; SIZE],
    pub req_sum: u64,
    pub resp: [u64; SIZE],
    pub resp_sum: u64,
    pub log: Vec<u64>,
}

impl Delta {
    /// Exchanges whose response started.
    pub fn exchanges(&self) -> u64 {
        self.dur.iter().sum()
    }

    /// Exchanges whose final sizes were counted.
    pub fn sized(&self) -> u64 {
        self.req.iter().sum()
    }
}

/// (client, tgid, server port or 0, method, route): what one id stands for.
pub type IdKey = (bool, u32, u16, &'static str, String);

/// What the drain needs to label an id's counts: one raw path of it (the
/// route table maps it to the id's route), the task name of its first
/// event, and the route tags of its paths (re-learned for the profiler).
pub struct IdInfo {
    pub key: IdKey,
    pub path: String,
    pub comm: [u8; 16],
    pub tags: Vec<u32>,
}

/// Most route tags remembered per id.
const MAX_TAGS_PER_ID: usize = 64;
/// Most raw keys remembered as seen once (then the set starts over).
const MAX_SEEN_ONCE: usize = 65_536;

/// The agent's half of the dictionary: ids, what they stand for, and which
/// raw keys are in the kernel.
#[derive(Default)]
pub struct RouteIds {
    ids: FastMap<IdKey, u32>,
    pub info: FastMap<u32, IdInfo>,
    /// Raw keys put into the kernel's dictionary, with their id and the
    /// second (unix) they were last put there.
    known: FastMap<HttpRouteKey, (u32, u64)>,
    seen_once: HashSet<HttpRouteKey, foldhash::fast::RandomState>,
    next_id: u32,
}

/// One labelled request, as the drain knows it from its event.
pub struct Labelled<'a> {
    pub ev: &'a HttpEvent,
    pub method: &'static str,
    pub path: &'a str,
    pub port: u16,
    pub route: &'a str,
    pub tag: Option<u32>,
}

impl RouteIds {
    /// The dictionary key of `ev`'s request, if it can have one: the path
    /// must end within the key, and a server's port must come from the
    /// socket (the kernel keys by it).
    pub fn key_of(ev: &HttpEvent) -> Option<HttpRouteKey> {
        let client = ev.role == HttpRole::Client as u8;
        if !client && ev.lport == 0 {
            return None;
        }
        let mut k = HttpRouteKey {
            tgid: ev.tgid,
            lport: if client { 0 } else { ev.lport },
            role: ev.role,
            len: 0,
            line: [0; ROUTE_KEY_LEN / 8],
        };
        let prefix: &[u8; HTTP_PREFIX_LEN] = &ev.prefix;
        let len = usize::from(ev.prefix_len).min(HTTP_PREFIX_LEN);
        fill_route_key(&mut k, prefix, len).then_some(k)
    }

    /// A request labelled from its event: the (key, id) to put into the
    /// kernel's dictionary now, if any. `now`: unix seconds (a key already
    /// put there is put again at most once a second: it was evicted, or
    /// the aggregation map is full and its requests keep coming as events).
    pub fn learn(&mut self, l: &Labelled<'_>, now: u64) -> Option<(HttpRouteKey, u32)> {
        let key = Self::key_of(l.ev)?;
        if let Some((id, at)) = self.known.get_mut(&key) {
            if *at == now {
                return None;
            }
            *at = now;
            return Some((key, *id));
        }
        if !self.seen_once.contains(&key) {
            if self.seen_once.len() >= MAX_SEEN_ONCE {
                self.seen_once.clear();
            }
            self.seen_once.insert(key);
            return None;
        }
        self.seen_once.remove(&key);
        let client = l.ev.role == HttpRole::Client as u8;
        let idk: IdKey = (client, l.ev.tgid, l.port, l.method, l.route.to_owned());
        let id = match self.ids.get(&idk) {
            Some(&id) => id,
            None => {
                self.next_id = self.next_id.wrapping_add(1).max(1);
                let id = self.next_id;
                self.ids.insert(idk.clone(), id);
                self.info.insert(
                    id,
                    IdInfo {
                        key: idk,
                        path: l.path.to_owned(),
                        comm: l.ev.comm,
                        tags: Vec::new(),
                    },
                );
                id
            }
        };
        if let (Some(t), Some(info)) = (l.tag, self.info.get_mut(&id))
            && !info.tags.contains(&t)
            && info.tags.len() < MAX_TAGS_PER_ID
        {
            info.tags.push(t);
        }
        self.known.insert(key, (id, now));
        Some((key, id))
    }

    /// Labels changed (new route patterns): new requests get new ids;
    /// the old ids keep labelling what the kernel already counted under
    /// them. Returns the raw keys to delete from the kernel.
    pub fn relabel(&mut self) -> Vec<HttpRouteKey> {
        self.ids.clear();
        self.seen_once.clear();
        self.known.drain().map(|(k, _)| k).collect()
    }

    /// Forgets the processes in `dead`; returns their raw keys and ids.
    pub fn release(&mut self, dead: &HashSet<u32>) -> (Vec<HttpRouteKey>, HashSet<u32>) {
        let ids: HashSet<u32> = self
            .info
            .iter()
            .filter(|(_, i)| dead.contains(&i.key.1))
            .map(|(id, _)| *id)
            .collect();
        self.info.retain(|id, _| !ids.contains(id));
        self.ids.retain(|_, id| !ids.contains(id));
        self.seen_once.retain(|k| !dead.contains(&k.tgid));
        let mut keys = Vec::new();
        self.known.retain(|k, _| {
            let d = dead.contains(&k.tgid);
            if d {
                keys.push(*k);
            }
            !d
        });
        (keys, ids)
    }

    /// Processes that own ids.
    pub fn tgids(&self) -> HashSet<u32> {
        self.info.values().map(|i| i.key.1).collect()
    }
}

/// The kernel maps and what was last read from them.
pub struct Agg {
    pub ids: RouteIds,
    routes: BpfHashMap<MapData, HttpRouteKey, u32>,
    agg: PerCpuHashMap<MapData, HttpAggKey, HttpAgg>,
    last: FastMap<HttpAggKey, Counts>,
}

impl Agg {
    pub fn new(
        routes: BpfHashMap<MapData, HttpRouteKey, u32>,
        agg: PerCpuHashMap<MapData, HttpAggKey, HttpAgg>,
    ) -> Self {
        Self {
            ids: RouteIds::default(),
            routes,
            agg,
            last: FastMap::default(),
        }
    }

    /// Puts a learned key into the kernel's dictionary. A failure only
    /// leaves that path on the event path.
    pub fn insert(&mut self, key: &HttpRouteKey, id: u32) {
        if let Err(e) = self.routes.insert(key, id, 0) {
            tracing::debug!(collector = super::NAME, "path dictionary insert: {e}");
        }
    }

    /// What every (id, status) gained since the last poll.
    pub fn poll(&mut self) -> Vec<(HttpAggKey, Delta)> {
        let mut out = Vec::new();
        for item in self.agg.iter() {
            let Ok((k, v)) = item else {
                // Entries deleted while we iterate: fine, next poll.
                break;
            };
            let now = Counts::sum(&v);
            let old = self.last.entry(k).or_default();
            if let Some(d) = now.since(old) {
                *old = now;
                out.push((k, d));
            }
        }
        out
    }

    /// Deletes the kernel entries of `keys` (dictionary) and `ids` (every
    /// status); call after a last [`Agg::poll`].
    pub fn delete(&mut self, keys: &[HttpRouteKey], ids: &HashSet<u32>) {
        for k in keys {
            let _ = self.routes.remove(k);
        }
        if ids.is_empty() {
            return;
        }
        let gone: Vec<HttpAggKey> = self
            .agg
            .keys()
            .filter_map(Result::ok)
            .filter(|k| ids.contains(&k.id))
            .collect();
        for k in gone {
            let _ = self.agg.remove(&k);
            self.last.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero() -> HttpAgg {
        // SAFETY: all-integer POD.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn deltas_sum_cpus_and_survive_wrapping() {
        let (mut a, mut b) = (zero(), zero());
        a.add_duration(1_000_000);
        b.add_duration(20_000_000);
        b.add_sizes(100, 2000);
        let first = Counts::sum(&[a, b]);
        let d = first.since(&Counts::default()).unwrap();
        assert_eq!(d.exchanges(), 2);
        assert_eq!(d.sized(), 1);
        assert_eq!(d.dur_sum_ns, 21_000_000);
        assert_eq!((d.dur[0], d.dur[2]), (1, 1));
        assert_eq!(d.log.iter().sum::<u64>(), 2);
        // Nothing new: no delta.
        assert!(Counts::sum(&[a, b]).since(&first).is_none());
        // The u32 log buckets wrap in the kernel; the difference does not.
        let i = sonde_common::http::red::log_bucket(1_000_000);
        a.log[i] = u32::MAX;
        let before = Counts::sum(&[a, b]);
        a.log[i] = a.log[i].wrapping_add(3);
        a.dur[0] += 3;
        a.dur_sum_ns += 3_000_000;
        let d = Counts::sum(&[a, b]).since(&before).unwrap();
        assert_eq!((d.exchanges(), d.log[i], d.dur_sum_ns), (3, 3, 3_000_000));
    }

    fn event(tgid: u32, lport: u16, line: &[u8]) -> HttpEvent {
        // SAFETY: all-integer POD.
        let mut ev: HttpEvent = unsafe { std::mem::zeroed() };
        ev.tgid = tgid;
        ev.lport = lport;
        ev.role = HttpRole::Server as u8;
        ev.prefix[..line.len()].copy_from_slice(line);
        ev.prefix_len = line.len() as u16;
        ev
    }

    #[test]
    fn a_path_is_learned_the_second_time_and_shares_its_routes_id() {
        let mut ids = RouteIds::default();
        let l = |ev| Labelled {
            ev,
            method: "GET",
            path: "/items/1",
            port: 80,
            route: "/items/{id}",
            tag: Some(7),
        };
        let a = event(10, 80, b"GET /items/1?x HTTP/1.1\r\n\r\n");
        let b = event(10, 80, b"GET /items/2 HTTP/1.1\r\n\r\n");
        assert!(ids.learn(&l(&a), 1).is_none(), "first sight");
        let (ka, ida) = ids.learn(&l(&a), 1).expect("second sight");
        assert!(ids.learn(&l(&a), 1).is_none(), "already put this second");
        assert_eq!(ids.learn(&l(&a), 2), Some((ka, ida)), "put again later");
        ids.learn(&l(&b), 2);
        let (kb, idb) = ids.learn(&l(&b), 2).unwrap();
        assert_ne!(ka, kb);
        assert_eq!(ida, idb, "one id per route");
        // No port from the socket, or a path past the key: no key.
        assert!(RouteIds::key_of(&event(10, 0, b"GET / HTTP/1.1\r\n")).is_none());
        let mut long = b"GET /".to_vec();
        long.extend([b'a'; ROUTE_KEY_LEN]);
        long.extend(b" HTTP/1.1\r\n");
        assert!(RouteIds::key_of(&event(10, 80, &long)).is_none());
        // Another process: another id; releasing it leaves the first.
        let c = event(11, 80, b"GET /items/1 HTTP/1.1\r\n\r\n");
        ids.learn(&l(&c), 3);
        let (_, idc) = ids.learn(&l(&c), 3).unwrap();
        assert_ne!(idc, ida);
        let (keys, gone) = ids.release(&HashSet::from([11]));
        assert_eq!((keys.len(), gone), (1, HashSet::from([idc])));
        assert_eq!(ids.tgids(), HashSet::from([10]));
        assert_eq!(ids.info[&ida].tags, vec![7]);
    }
}

//! CPU by HTTP route, on the profile side: which route each sample of a
//! drained batch belongs to.
//!
//! Two sources, per server model (docs/profiling.md):
//! - **The thread's tag** (thread-per-request servers): the kernel key
//!   carries the tag of the request the sampled thread read and has not
//!   answered yet (`route_src = THREAD`); the HTTP drain's dictionary
//!   (`collectors::routes`) names it. A tag the dictionary does not know is
//!   left unattributed.
//! - **The handler frame** (asyncio servers, whose sync handlers run in
//!   worker threads that never touch the socket, and whose event-loop
//!   thread interleaves requests): the first application Python frame
//!   called from library code (site-packages, the standard library) is
//!   the handler. Which route a handler serves is learned per process from
//!   co-occurrence: each sample in that handler that carries a tag, the
//!   thread's or, for threads without one, the process's latest open
//!   request (`route_src = PROCESS`), is a vote. A handler is mapped once
//!   it has [`MIN_VOTES`] votes and one route holds [`CLEAR_SHARE`] of
//!   them; then samples in it that have no tag of their thread's (worker
//!   threads) are that route's. A handler whose votes stay split (one
//!   function serving several routes) is never mapped.
//!
//! A sample with its thread's tag keeps that tag's route: on a
//! thread-per-request server it is exact, and there one function often
//! serves every route (`do_GET`), so its votes follow the CPU-heavy one.
//!
//! Attributed samples add to `sonde_http_server_cpu_seconds_total` and to
//! the CPU column of `sonde http`.

use std::{collections::HashMap, sync::Arc};

use prometheus::{CounterVec, Opts};
use sonde_common::route::src;

use super::store::{Frame, FrameKind, RouteLabel, Sample};
use crate::collectors::routes::{Lookup, RouteShare};

/// Votes a handler needs before it is mapped.
pub const MIN_VOTES: u64 = 8;
/// Share of its votes one route needs for the handler to be mapped.
pub const CLEAR_SHARE: f64 = 0.8;
/// Votes kept per handler before they are halved (recent behaviour wins).
const MAX_VOTES: u64 = 10_000;
/// Handlers remembered (all processes).
const MAX_HANDLERS: usize = 4_096;

/// A handler: process, function, source file.
type HandlerKey = (u32, Arc<str>, Arc<str>);

#[derive(Default)]
struct Votes {
    by_route: HashMap<RouteLabel, u64>,
    total: u64,
}

impl Votes {
    fn add(&mut self, l: &RouteLabel, n: u64) {
        *self.by_route.entry(l.clone()).or_default() += n;
        self.total += n;
        if self.total > MAX_VOTES {
            self.by_route.values_mut().for_each(|v| *v /= 2);
            self.by_route.retain(|_, v| *v > 0);
            self.total = self.by_route.values().sum();
        }
    }

    /// The route, when the votes are clear.
    fn clear(&self) -> Option<&RouteLabel> {
        if self.total < MIN_VOTES {
            return None;
        }
        let (l, n) = self.by_route.iter().max_by_key(|(_, n)| **n)?;
        (*n as f64 >= CLEAR_SHARE * self.total as f64).then_some(l)
    }
}

/// A sample's tag as the kernel recorded it.
#[derive(Clone, Copy, Default)]
pub struct Tag {
    pub tag: u32,
    pub src: u8,
}

pub struct Attribution {
    share: RouteShare,
    cpu: CounterVec,
    period_s: f64,
    handlers: HashMap<HandlerKey, Votes>,
}

/// Whether a Python source file is library code (the standard library,
/// installed packages, frozen modules) rather than the application's.
pub fn is_library(file: &str) -> bool {
    file.starts_with('<')
        || file.contains("/site-packages/")
        || file.contains("/dist-packages/")
        || file.contains("/lib/python3")
        || file.contains("/lib/python2")
}

/// The handler frame of a stack (leaf first): the first application frame,
/// going from the root, whose Python caller is library code.
pub fn handler(stack: &[Frame]) -> Option<&Frame> {
    let mut lib_seen = false;
    for f in stack.iter().rev().filter(|f| f.kind == FrameKind::Python) {
        let file = f.file.as_deref().unwrap_or("<unknown>");
        if is_library(file) {
            lib_seen = true;
        } else if lib_seen {
            return Some(f);
        }
    }
    None
}

/// The route a sample's own kernel tag names, if the dictionary knows it.
fn own_label(d: &Lookup<'_>, s: &Sample, t: &Tag) -> Option<RouteLabel> {
    (t.src != src::NONE).then(|| d.get(s.pid, t.tag)).flatten()
}

fn handler_key(pid: u32, f: &Frame) -> HandlerKey {
    (
        pid,
        f.function.clone(),
        f.file.clone().unwrap_or_else(|| Arc::from("")),
    )
}

/// Whether a stack waits in `epoll_wait` (any of its syscalls: they all
/// go through `do_epoll_wait`).
fn in_epoll_wait(stack: &[Frame]) -> bool {
    stack
        .iter()
        .any(|f| f.kind == FrameKind::Kernel && f.function.starts_with("do_epoll_wait"))
}

/// Adds each sample's vote, `weight(sample)`, for its own tag's route to
/// its handler.
fn learn(
    handlers: &mut HashMap<HandlerKey, Votes>,
    dict: &Lookup<'_>,
    samples: &[Sample],
    tags: &[Tag],
    weight: impl Fn(&Sample) -> u64,
) {
    for (s, t) in samples.iter().zip(tags) {
        let (Some(h), Some(l)) = (handler(&s.stack), own_label(dict, s, t)) else {
            continue;
        };
        let key = handler_key(s.pid, h);
        if !handlers.contains_key(&key) && handlers.len() >= MAX_HANDLERS {
            handlers.clear();
        }
        handlers.entry(key).or_default().add(&l, weight(s));
    }
}

impl Attribution {
    pub fn new(share: RouteShare, t: &crate::telemetry::Telemetry, frequency_hz: u64) -> Self {
        let cpu = t.register(
            CounterVec::new(
                Opts::new(
                    "sonde_http_server_cpu_seconds_total",
                    "CPU time of the threads serving HTTP requests, by route \
                     (sampled by the profiler: samples x period).",
                ),
                &["service_name", "http_route", "http_request_method"],
            )
            .expect("valid metric"),
        );
        Self {
            share,
            cpu,
            period_s: 1.0 / frequency_hz.max(1) as f64,
            handlers: HashMap::new(),
        }
    }

    /// Sets `route` on each sample of a batch (`tags[i]` is `samples[i]`'s
    /// kernel tag): first learns from the batch's votes, then attributes,
    /// then counts the routed CPU.
    pub fn assign(&mut self, samples: &mut [Sample], tags: &[Tag]) {
        let dict = self.share.lookup_all();
        learn(&mut self.handlers, &dict, samples, tags, |s| s.count);
        self.attribute(&dict, samples, tags, false);
        drop(dict);
        for s in samples.iter() {
            if let Some(l) = &s.route {
                let secs = s.count as f64 * self.period_s;
                self.cpu
                    .with_label_values(&[&s.service, &l.route, l.method])
                    .inc_by(secs);
                self.share.add_cpu(&s.service, l, secs);
            }
        }
    }

    /// Sets `route` on off-CPU samples (weighted by time blocked), which
    /// are not counted as CPU. They vote too, one vote per row: a handler
    /// that only waits (`time.sleep`, a socket) is rarely on CPU, so CPU
    /// samples alone would never map it. A row is one stack key of one
    /// drain, so at least one switch: the kernel adds nanoseconds per key,
    /// not switches, and nanoseconds would let one long block outvote
    /// hundreds of CPU samples.
    ///
    /// A block in `epoll_wait` is not its thread's tag's: a thread waiting
    /// there (an event loop: asyncio's, nginx's) waits for any of its
    /// connections, not for the request it read last, and while a sync
    /// FastAPI handler sleeps in a worker thread the loop's wait would
    /// count the request's time a second time. Such a block keeps only a
    /// handler's route (an event loop's wait has no handler frame).
    pub fn label(&mut self, samples: &mut [Sample], tags: &[Tag]) {
        let dict = self.share.lookup_all();
        learn(&mut self.handlers, &dict, samples, tags, |_| 1);
        self.attribute(&dict, samples, tags, true);
    }

    fn attribute(&self, dict: &Lookup<'_>, samples: &mut [Sample], tags: &[Tag], off_cpu: bool) {
        for (s, t) in samples.iter_mut().zip(tags) {
            let by_handler = handler(&s.stack)
                .and_then(|h| self.handlers.get(&handler_key(s.pid, h)))
                .and_then(Votes::clear)
                .cloned();
            // The thread's own tag first: it is exact on a thread-per-request
            // server, where one handler function often serves every route
            // (`do_GET`) and its votes follow the CPU-heavy one.
            s.route = if t.src == src::THREAD && !(off_cpu && in_epoll_wait(&s.stack)) {
                own_label(dict, s, t).or(by_handler)
            } else {
                by_handler
            };
        }
    }
}

/// Whether `route` matches `pattern`: `METHOD ROUTE` or `ROUTE`, where `*`
/// stands for any run of characters (`/items/*`, `GET /api/*`); `-`
/// matches unattributed samples.
pub fn route_matches(pattern: &str, route: Option<&RouteLabel>) -> bool {
    let Some(l) = route else {
        return pattern == "-";
    };
    glob(pattern, &l.route) || glob(pattern, &format!("{} {}", l.method, l.route))
}

fn glob(p: &str, s: &str) -> bool {
    match p.split_once('*') {
        None => p == s,
        Some((head, rest)) => {
            let Some(tail) = s.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// The frame `--by route` puts at the root: `METHOD ROUTE`, or
/// `[no route]`.
pub fn root_frame(route: Option<&RouteLabel>) -> String {
    route.map_or_else(
        || "[no route]".to_owned(),
        |l| format!("{} {}", l.method, l.route),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::profile::{render::tests::frame, store::Module};

    fn py(name: &str, file: &str) -> Frame {
        let mut f = frame(name, FrameKind::Python, 1);
        f.file = Some(file.into());
        f.module = Arc::new(Module {
            path: "[python]".into(),
            build_id: None,
        });
        f
    }

    const LIB: &str = "/usr/lib/python3.11/site-packages/starlette/routing.py";
    const STD: &str = "/root/.pyenv/versions/3.11.7/lib/python3.11/threading.py";

    fn sample(stack: Vec<Frame>, count: u64) -> Sample {
        Sample {
            pid: 7,
            comm: "python3".into(),
            service: "app".into(),
            stack: stack.into(),
            count,
            route: None,
        }
    }

    fn label(r: &str) -> RouteLabel {
        RouteLabel {
            method: "GET",
            route: r.into(),
        }
    }

    #[test]
    fn handler_is_the_first_app_frame_called_from_library_code() {
        // Leaf first: app helper <- handler <- framework <- app main.
        let stack = vec![
            py("helper", "/srv/app.py"),
            py("heavy", "/srv/app.py"),
            py("run_endpoint_function", LIB),
            py("<module>", "/srv/app.py"),
        ];
        assert_eq!(&*handler(&stack).unwrap().function, "heavy");
        let worker = vec![py("heavy", "/srv/app.py"), py("_bootstrap", STD)];
        assert_eq!(&*handler(&worker).unwrap().function, "heavy");
        assert!(handler(&[py("<module>", "/srv/app.py")]).is_none());
        assert!(handler(&[frame("main", FrameKind::User, 1)]).is_none());
    }

    fn attribution() -> (Attribution, RouteShare) {
        let share = RouteShare::default();
        let t = crate::telemetry::Telemetry::new();
        (Attribution::new(share.clone(), &t, 100), share)
    }

    #[test]
    fn clear_votes_map_a_handler_and_split_ones_never_do() {
        let (mut a, share) = attribution();
        share.learn(7, 1, "GET", "/heavy");
        share.learn(7, 2, "GET", "/cheap");
        let heavy = || vec![py("heavy", "/srv/app.py"), py("_bootstrap", STD)];
        let shared = || vec![py("both", "/srv/app.py"), py("_bootstrap", STD)];
        let hint = |tag| Tag {
            tag,
            src: src::PROCESS,
        };
        // Worker-thread samples: only the process hint; 9 of 10 votes heavy.
        let mut batch = vec![
            sample(heavy(), 9),
            sample(heavy(), 1),
            sample(shared(), 5),
            sample(shared(), 5),
        ];
        a.assign(&mut batch, &[hint(1), hint(2), hint(1), hint(2)]);
        assert_eq!(batch[0].route, Some(label("/heavy")));
        assert_eq!(
            batch[1].route,
            Some(label("/heavy")),
            "the handler decides, not the hint"
        );
        assert_eq!(batch[2].route, None, "split votes: not mapped");
        // A hint alone never attributes; the thread's own tag does.
        let mut b = vec![sample(shared(), 1), sample(shared(), 1)];
        a.assign(
            &mut b,
            &[
                hint(1),
                Tag {
                    tag: 2,
                    src: src::THREAD,
                },
            ],
        );
        assert_eq!(b[0].route, None);
        assert_eq!(b[1].route, Some(label("/cheap")));
        // An unknown tag is never guessed.
        let mut c = vec![sample(vec![frame("main", FrameKind::User, 1)], 3)];
        a.assign(
            &mut c,
            &[Tag {
                tag: 99,
                src: src::THREAD,
            }],
        );
        assert_eq!(c[0].route, None);
        // The thread's own tag wins over a mapped handler (a shared do_GET
        // whose votes follow the heavy route).
        let mut d = vec![sample(heavy(), 1)];
        a.assign(
            &mut d,
            &[Tag {
                tag: 2,
                src: src::THREAD,
            }],
        );
        assert_eq!(d[0].route, Some(label("/cheap")));
        assert!((share.cpu("app", "GET", "/heavy") - 0.10).abs() < 1e-9);
    }

    #[test]
    fn off_cpu_rows_vote_one_each_and_are_not_cpu() {
        let (mut a, share) = attribution();
        share.learn(7, 3, "GET", "/sleep");
        let sleeper = || vec![py("sleepy", "/srv/app.py"), py("_bootstrap", STD)];
        let hint = Tag {
            tag: 3,
            src: src::PROCESS,
        };
        // 7 rows of 50 ms each: 7 votes, not 350 million; not mapped yet.
        let mut batch: Vec<Sample> = (0..7).map(|_| sample(sleeper(), 50_000_000)).collect();
        a.label(&mut batch, &[hint; 7]);
        assert!(batch.iter().all(|s| s.route.is_none()));
        let mut batch = vec![sample(sleeper(), 50_000_000)];
        a.label(&mut batch, &[hint]);
        assert_eq!(
            batch[0].route,
            Some(label("/sleep")),
            "the 8th vote maps it"
        );
        assert_eq!(
            share.cpu("app", "GET", "/sleep"),
            0.0,
            "blocked time is not CPU"
        );
        // A CPU sample in the same handler is now attributed by it.
        let mut cpu = vec![sample(sleeper(), 1)];
        a.assign(&mut cpu, &[Tag::default()]);
        assert_eq!(cpu[0].route, Some(label("/sleep")));
        // The event loop's thread tag names the request it read last; its
        // wait in epoll_wait is not that request's, a read's is.
        let own = Tag {
            tag: 3,
            src: src::THREAD,
        };
        let waiting = |k: &str| {
            let f = |n| frame(n, FrameKind::Kernel, 0);
            sample(vec![f("schedule"), f(k), py("select", LIB)], 1_000_000)
        };
        let mut off = vec![waiting("do_epoll_wait"), waiting("pipe_read")];
        a.label(&mut off, &[own; 2]);
        assert_eq!(off[0].route, None);
        assert_eq!(off[1].route, Some(label("/sleep")));
    }

    #[test]
    fn patterns() {
        let l = label("/items/{item_id}");
        assert!(route_matches("/items/*", Some(&l)));
        assert!(route_matches("GET /items/{item_id}", Some(&l)));
        assert!(route_matches("*", Some(&l)));
        assert!(!route_matches("POST *", Some(&l)));
        assert!(!route_matches("/items", Some(&l)));
        assert!(route_matches("-", None));
        assert!(!route_matches("*", None));
    }
}

//! CPU by HTTP route: what the HTTP and profile collectors share.
//!
//! - **The kernel map.** Both objects declare `ROUTE_TAGS` (the HTTP object
//!   writes thread -> route tag, the profile object reads it into each
//!   sample's key; ebpf/sonde-ebpf/src/route_tag.rs). aya creates a map per
//!   object unless it is pinned, so while the two collectors load, the map
//!   is pinned in a bpffs mounted for that purpose in a private directory;
//!   once both have loaded (or failed) the pin is unlinked and the bpffs
//!   unmounted, so the map lives exactly as long as the objects holding it
//!   and an agent killed later leaves nothing behind. A bpffs left by an
//!   agent killed during start-up is removed by the next one.
//! - **The dictionary** (tgid, tag) -> (method, route): the HTTP drain
//!   computes each request's tag with the kernel's own function
//!   (`sonde_common::route::route_tag`) and records the route its
//!   normaliser gave. A tag the dictionary does not know is unattributed.
//! - **CPU per route**, accumulated by the profile drain, read by
//!   `sonde http`'s CPU column.
//!
//! Registered in the handle registry only when both collectors are enabled.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use crate::ebpf;

/// Name of the shared map in both objects.
pub const MAP: &str = "ROUTE_TAGS";
/// Global patched to 1 in both objects when the map is shared.
pub const ON: &str = "ROUTE_TAG_ON";

/// Collectors that load the shared map.
const HOLDERS: u32 = 2;
/// Most (process, tag) entries remembered; then the oldest half goes.
const MAX_TAGS: usize = 65_536;
/// Most (service, method, route) CPU totals.
const MAX_CPU: usize = 20_000;

/// Loads `obj` like [`ebpf::load_with`], sharing the route-tag map through
/// `share` (both collectors enabled) or shrinking it to nothing (not).
/// Releases the pin whatever the outcome.
pub fn load_with<'a>(
    share: Option<&RouteShare>,
    obj: ebpf::Object,
    log_level: &'a u8,
    configure: impl FnOnce(&mut aya::EbpfLoader<'a>),
) -> Result<aya::Ebpf, ebpf::LoadError> {
    static ONE: u8 = 1;
    let pin = share.and_then(RouteShare::pin_path);
    let r = ebpf::load_with(obj, log_level, |l| {
        match pin {
            Some(p) => {
                l.map_pin_path(MAP, p).override_global(ON, &ONE, true);
            }
            // Unused: the smallest map the kernel takes.
            None => {
                l.map_max_entries(MAP, 1);
            }
        }
        configure(l);
    });
    if let Some(s) = share {
        s.released(r.is_ok());
    }
    r
}

/// The route a tag stands for in one process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteLabel {
    pub method: &'static str,
    pub route: Arc<str>,
}

#[derive(Default)]
struct Inner {
    /// (tgid, tag) -> label, with a generation for eviction.
    tags: HashMap<(u32, u32), (RouteLabel, u64)>,
    tick: u64,
    /// (service, method, route) -> CPU seconds sampled.
    cpu: HashMap<(Arc<str>, &'static str, Arc<str>), f64>,
    pin: Option<Pin>,
    released: u32,
    /// A collector of the pair failed to load: the other need not tag.
    failed: bool,
}

/// The bpffs mounted for the pin, and the pin's path.
struct Pin {
    dir: PathBuf,
    path: PathBuf,
}

impl Pin {
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        unmount(&self.dir);
    }
}

fn unmount(dir: &Path) {
    let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(dir);
}

/// Shared handle. Cheap to clone.
#[derive(Clone, Default)]
pub struct RouteShare(Arc<Mutex<Inner>>);

/// Where the private bpffs goes: `/run` when it exists.
fn base_dir() -> PathBuf {
    let run = Path::new("/run");
    if run.is_dir() {
        run.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

const DIR_PREFIX: &str = "sonde-bpffs-";

impl RouteShare {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mounts the private bpffs (once) and returns the path both loaders
    /// pin the map at; `None` when it cannot be mounted (not root, no
    /// bpffs): then each object gets its own map and route tags stay off.
    pub fn pin_path(&self) -> Option<PathBuf> {
        let mut g = self.lock();
        if let Some(p) = &g.pin {
            return Some(p.path.clone());
        }
        if g.released > 0 || g.failed {
            // One collector already loaded without it, or failed to load:
            // tags would have no reader (or no writer).
            return None;
        }
        let base = base_dir();
        sweep_stale(&base);
        let dir = base.join(format!("{DIR_PREFIX}{}", std::process::id()));
        let mounted = std::fs::create_dir_all(&dir).is_ok()
            && nix::mount::mount(
                Some("bpf"),
                &dir,
                Some("bpf"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .is_ok();
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            tracing::info!(
                dir = %dir.display(),
                "cannot mount a bpffs for the route-tag map: CPU by route is off"
            );
            return None;
        }
        let path = dir.join(MAP);
        g.pin = Some(Pin {
            dir,
            path: path.clone(),
        });
        Some(path)
    }

    /// A collector is done loading its object (`ok`) or gave up: once both
    /// are, the pin and the bpffs go (the map lives on in the objects). A
    /// failure also removes them at once, so the other collector loads
    /// with tagging off.
    pub fn released(&self, ok: bool) {
        let mut g = self.lock();
        g.released += 1;
        g.failed |= !ok;
        if (g.released >= HOLDERS || g.failed)
            && let Some(p) = g.pin.take()
        {
            p.remove();
        }
    }

    /// The HTTP drain saw a request of `tag` in `tgid` that it labelled
    /// (`method`, `route`).
    pub fn learn(&self, tgid: u32, tag: u32, method: &'static str, route: &str) {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        if let Some(e) = g.tags.get_mut(&(tgid, tag)) {
            e.1 = tick;
            if &*e.0.route != route || e.0.method != method {
                e.0 = RouteLabel {
                    method,
                    route: route.into(),
                };
            }
            return;
        }
        if g.tags.len() >= MAX_TAGS {
            let cut = tick - (MAX_TAGS as u64 / 2);
            g.tags.retain(|_, (_, t)| *t > cut);
        }
        g.tags.insert(
            (tgid, tag),
            (
                RouteLabel {
                    method,
                    route: route.into(),
                },
                tick,
            ),
        );
    }

    /// What `tag` stands for in `tgid`, if the HTTP drain has seen it.
    pub fn lookup(&self, tgid: u32, tag: u32) -> Option<RouteLabel> {
        if tag == 0 {
            return None;
        }
        self.lock().tags.get(&(tgid, tag)).map(|(l, _)| l.clone())
    }

    /// Many lookups under one lock (the profile drain's batch).
    pub fn lookup_all(&self) -> Lookup<'_> {
        Lookup(self.lock())
    }

    /// CPU seconds sampled in requests of (service, method, route).
    pub fn add_cpu(&self, service: &Arc<str>, label: &RouteLabel, secs: f64) {
        let mut g = self.lock();
        let key = (service.clone(), label.method, label.route.clone());
        if let Some(v) = g.cpu.get_mut(&key) {
            *v += secs;
        } else if g.cpu.len() < MAX_CPU {
            g.cpu.insert(key, secs);
        }
    }

    /// CPU seconds sampled in (service, method, route) so far.
    pub fn cpu(&self, service: &str, method: &str, route: &str) -> f64 {
        let g = self.lock();
        g.cpu
            .iter()
            .filter(|((s, m, r), _)| &**s == service && *m == method && &**r == route)
            .map(|(_, v)| v)
            .sum()
    }
}

/// The dictionary held for a batch of lookups.
pub struct Lookup<'a>(MutexGuard<'a, Inner>);

impl Lookup<'_> {
    pub fn get(&self, tgid: u32, tag: u32) -> Option<RouteLabel> {
        if tag == 0 {
            return None;
        }
        self.0.tags.get(&(tgid, tag)).map(|(l, _)| l.clone())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(p) = self.pin.take() {
            p.remove();
        }
    }
}

/// Removes bpffs mounts of agents that died during start-up (their pid is
/// gone).
fn sweep_stale(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let dir = e.path();
            let _ = std::fs::remove_file(dir.join(MAP));
            unmount(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_learns_and_forgets_unknown_tags() {
        let s = RouteShare::default();
        s.learn(7, 42, "GET", "/items/{id}");
        assert_eq!(
            s.lookup(7, 42),
            Some(RouteLabel {
                method: "GET",
                route: "/items/{id}".into()
            })
        );
        assert_eq!(s.lookup(8, 42), None, "per process");
        assert_eq!(s.lookup(7, 0), None);
        let svc: Arc<str> = "api".into();
        let l = s.lookup(7, 42).unwrap();
        s.add_cpu(&svc, &l, 0.5);
        s.add_cpu(&svc, &l, 0.25);
        assert!((s.cpu("api", "GET", "/items/{id}") - 0.75).abs() < 1e-9);
        assert_eq!(s.cpu("api", "POST", "/items/{id}"), 0.0);
    }

    #[test]
    fn dictionary_is_bounded() {
        let s = RouteShare::default();
        for t in 0..(MAX_TAGS as u32 + 10) {
            s.learn(1, t + 1, "GET", "/x");
        }
        assert!(s.lock().tags.len() <= MAX_TAGS);
        assert!(s.lookup(1, MAX_TAGS as u32 + 10).is_some(), "newest kept");
    }

    #[test]
    fn a_failed_load_turns_tagging_off_for_the_other_collector() {
        let s = RouteShare::default();
        s.released(false);
        assert_eq!(s.pin_path(), None, "no mount after the first failed");
    }
}

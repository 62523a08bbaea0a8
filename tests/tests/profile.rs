//! The CPU profiler end to end: real perf_event sampling of real workloads,
//! symbolized and served through `sonde profile`.

use std::{
    collections::HashMap,
    io::Read as _,
    process::{Command, Output},
    time::{Duration, SystemTime},
};

use sonde_tests::{
    Agent, exclusive, metric_value,
    stacks::{cli_ok, folded},
    workload::{Workload, build_c},
};

const FLAGS: &[&str] = &["-O1", "-g", "-fno-omit-frame-pointer"];

/// Built once per test binary: tests run in parallel, and rebuilding the
/// file under a running workload would swap its code under the profiler.
fn workload(mode: &str, secs: &str) -> Workload {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let bin = BIN.get_or_init(|| build_c("profile_abc", FLAGS));
    Workload::spawn(Command::new(bin).args([mode, secs]))
}

/// The service name the agent gives the workload (its executable's name).
const SERVICE: &str = "profile_abc-O1gfnoomitframepointer";

#[test]
fn folded_shows_the_call_chain_and_pprof_decodes_with_lines() {
    let agent = Agent::start("");
    let wl = workload("cpu", "30");
    let stacks = folded(&agent, wl.pid(), "5s");
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let chain: u64 = stacks
        .iter()
        .filter(|(f, _)| f.join(";").contains("sonde_wl_a;sonde_wl_b;sonde_wl_c"))
        .map(|s| s.1)
        .sum();
    assert!(total >= 5, "too few samples ({total}): {stacks:?}");
    assert!(
        chain * 100 >= total * 80,
        "a;b;c in {chain} of {total} samples (< 80%): {stacks:?}"
    );
    assert!(
        stacks.iter().all(|(f, _)| f[0] == "profile_abc-O1g"),
        "process name is the root frame: {stacks:?}"
    );

    // The same samples as pprof (the retained window holds them).
    let file = agent.dir.path().join("p.pb.gz");
    let p = wl.pid().to_string();
    cli_ok(
        &agent,
        &[
            "profile",
            "--pid",
            &p,
            "--last",
            "--format",
            "pprof",
            "-o",
            file.to_str().unwrap(),
        ],
    );
    let prof = pprof::decode(&std::fs::read(&file).expect("pprof file"));
    assert_eq!(prof.string(prof.sample_types[0].0), "samples");
    assert_eq!(prof.string(prof.sample_types[0].1), "count");
    assert_eq!(prof.string(prof.sample_types[1].0), "cpu");
    assert_eq!(prof.string(prof.sample_types[1].1), "nanoseconds");
    let mut chain_pprof = 0;
    let mut total_pprof = 0;
    let mut leaf_line = None;
    for s in &prof.samples {
        total_pprof += s.values[0];
        // location ids are leaf first; each location may hold inlined lines.
        let names: Vec<(String, i64)> = s
            .locations
            .iter()
            .flat_map(|id| prof.lines_of(*id))
            .collect();
        let n: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        // Kernel frames (an interrupt taken in c) may precede the chain.
        if let Some(i) = n
            .windows(3)
            .position(|w| w == ["sonde_wl_c", "sonde_wl_b", "sonde_wl_a"])
        {
            chain_pprof += s.values[0];
            leaf_line = Some(names[i].clone());
        }
    }
    assert!(
        total_pprof >= total as i64,
        "pprof of the window has fewer samples ({total_pprof}) than the 5s folded cut ({total})"
    );
    assert!(
        chain_pprof * 100 >= total_pprof * 80,
        "pprof: a;b;c in {chain_pprof} of {total_pprof}"
    );
    let (leaf, line) = leaf_line.expect("a pprof sample with a;b;c");
    assert_eq!(leaf, "sonde_wl_c");
    assert!(line > 0, "leaf has no line number in pprof");
    assert!(
        prof.has_file_ending("profile_abc.c"),
        "no function points at profile_abc.c"
    );

    // svg and top render the same profile.
    let svg = cli_ok(
        &agent,
        &["profile", "--pid", &p, "--last", "--format", "svg"],
    );
    let svg = String::from_utf8_lossy(&svg);
    assert!(
        svg.contains("<svg") && svg.contains("sonde_wl_b"),
        "svg: {svg:.300}"
    );
    let top = cli_ok(
        &agent,
        &["profile", "--pid", &p, "--last", "--format", "top"],
    );
    let top = String::from_utf8_lossy(&top);
    assert!(
        top.contains("sonde_wl_c") && top.contains("TOTAL%"),
        "{top}"
    );

    let m = agent.metrics();
    assert!(
        metric_value(
            &m,
            &format!("sonde_profile_samples_total{{service_name=\"{SERVICE}\"}}")
        )
        .unwrap_or(0.0)
            >= total as f64,
        "samples metric"
    );
    assert!(metric_value(&m, "sonde_profile_cpus_attached").unwrap_or(0.0) >= 1.0);
}

/// Nanoseconds `pid` (its main thread) has run: /proc/PID/schedstat,
/// exact, where /proc/PID/stat counts whole clock ticks.
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .expect("schedstat")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("run time in schedstat")
}

/// Readings of (wall clock, `cpu_ns`) every 5 ms until `stop` is set.
fn record_cpu(
    pid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(SystemTime, u64)>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            v.push((SystemTime::now(), cpu_ns(pid)));
            std::thread::sleep(Duration::from_millis(5));
        }
        v
    })
}

/// CPU time at `t`, interpolated between the readings around it.
fn cpu_at(series: &[(SystemTime, u64)], t: SystemTime) -> f64 {
    let i = series.partition_point(|(at, _)| *at <= t);
    assert!(
        i > 0 && i < series.len(),
        "no CPU readings around {t:?} (readings from {:?} to {:?})",
        series.first().map(|r| r.0),
        series.last().map(|r| r.0)
    );
    let ((t0, c0), (t1, c1)) = (series[i - 1], series[i]);
    let span = t1.duration_since(t0).unwrap_or_default().as_secs_f64();
    let part = t.duration_since(t0).unwrap_or_default().as_secs_f64();
    c0 as f64 + (c1 as f64 - c0 as f64) * if span > 0.0 { part / span } else { 0.0 }
}

#[test]
fn sample_count_matches_cpu_time_at_19_hz() {
    let _x = exclusive();
    let agent = Agent::start("");
    let wl = workload("cpu", "30");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readings = record_cpu(wl.pid(), stop.clone());
    let file = agent.dir.path().join("window.pb.gz");
    let p = wl.pid().to_string();
    cli_ok(
        &agent,
        &[
            "profile",
            "--pid",
            &p,
            "--duration",
            "5s",
            "--format",
            "pprof",
            "-o",
            file.to_str().expect("utf-8 path"),
        ],
    );
    // The window ends at the agent's last flip, which can fall after the
    // last 5 ms reading taken before the CLI returned: read past it.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let readings = readings.join().expect("CPU readings");
    let prof = pprof::decode(&std::fs::read(&file).expect("pprof file"));
    let samples: i64 = prof.samples.iter().map(|s| s.values[0]).sum();
    // The profile's own window (from one generation flip to the next, in
    // the pprof header) and the CPU time the workload had in exactly that
    // window: on a shared machine it gets less than a CPU, and the CLI's
    // start and the final flush, outside the window, take longer.
    let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(prof.time_nanos as u64);
    let end = start + Duration::from_nanos(prof.duration_nanos as u64);
    assert!(
        prof.duration_nanos >= 5_000_000_000,
        "window of {} ns",
        prof.duration_nanos
    );
    let used = (cpu_at(&readings, end) - cpu_at(&readings, start)) / 1e9;
    // 95 ± 15 for 5 s fully on a CPU; the expectation follows the CPU time
    // the workload really had (the tolerance stays the issue's ±15).
    let expected = used * 19.0;
    eprintln!(
        "window {:.3}s, workload used {used:.3}s CPU in it, {samples} samples, expected {expected:.1}",
        prof.duration_nanos as f64 / 1e9
    );
    assert!(
        (samples as f64 - expected).abs() <= 15.0,
        "{samples} samples for {used:.3}s of CPU at 19 Hz (expected {expected:.1})"
    );
}

#[test]
fn kernel_frames_for_a_syscall_workload() {
    let agent = Agent::start("");
    let wl = workload("sys", "30");
    let stacks = folded(&agent, wl.pid(), "3s");
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let kernel: u64 = stacks
        .iter()
        .filter(|(f, _)| f.iter().any(|x| x.ends_with("_[k]")))
        .map(|s| s.1)
        .sum();
    assert!(total >= 5, "too few samples: {stacks:?}");
    assert!(
        kernel * 2 >= total,
        "kernel frames in only {kernel} of {total} samples: {stacks:?}"
    );
    assert!(
        stacks
            .iter()
            .flat_map(|(f, _)| f)
            .any(|x| x.contains("read") && x.ends_with("_[k]")),
        "no kernel read frame: {stacks:?}"
    );
}

/// Leaf shares (percent) from folded stacks.
fn leaf_shares(stacks: &[(Vec<String>, u64)]) -> HashMap<String, f64> {
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let mut m = HashMap::new();
    for (f, n) in stacks {
        // perf attributes a sample to the function owning the address, not
        // to what DWARF says was inlined there: skip `_[i]` frames.
        let leaf = f
            .iter()
            .rev()
            .find(|x| !x.ends_with("_[i]"))
            .cloned()
            .unwrap_or_default();
        *m.entry(leaf).or_insert(0.0) += 100.0 * *n as f64 / total.max(1) as f64;
    }
    m
}

/// `perf report` leaf shares: lines like `  52.38%  [.] sonde_wl_leaf5`.
fn perf_shares(report: &str) -> HashMap<String, f64> {
    report
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let pct: f64 = it.next()?.strip_suffix('%')?.parse().ok()?;
            let _kind = it.next()?;
            Some((it.collect::<Vec<_>>().join(" "), pct))
        })
        .collect()
}

fn top3(m: &HashMap<String, f64>) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(3);
    v
}

#[test]
fn top_leaves_agree_with_perf() {
    let _x = exclusive();
    // Same rate as the peer. Each share is a binomial estimate: at 19 Hz,
    // 5 s give too few samples for shares to be within 10 points of
    // anything (noise alone is ~9); at 99 Hz a workload that a loaded
    // machine gives a third of a CPU still has only ~165 samples, and two
    // independent estimates of a 50 % share then differ by 10 points one
    // time in ten. 499 Hz keeps the noise (SD of the difference ~2.5
    // points at a third of a CPU) well under the 10 points allowed.
    let agent = Agent::start("[collectors.profile]\nfrequency_hz = 499\n");
    let wl = workload("mix", "30");
    let pid = wl.pid().to_string();
    let data = agent.dir.path().join("perf.data");
    let perf = {
        let data = data.clone();
        let pid = pid.clone();
        std::thread::spawn(move || {
            Command::new("perf")
                .args(["record", "-F", "499", "-g", "-o"])
                .arg(&data)
                .args(["-p", &pid, "--", "sleep", "5"])
                .output()
                .expect("perf is installed (linux-perf)")
        })
    };
    let ours = folded(&agent, wl.pid(), "5s");
    let rec: Output = perf.join().expect("perf thread");
    assert!(
        rec.status.success(),
        "perf record: {}",
        String::from_utf8_lossy(&rec.stderr)
    );
    let rep = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "sym",
            "-q",
            "-g",
            "none",
            "-i",
        ])
        .arg(&data)
        .output()
        .expect("perf report");
    let theirs = perf_shares(&String::from_utf8_lossy(&rep.stdout));
    let ours = leaf_shares(&ours);
    let (t3_ours, t3_perf) = (top3(&ours), top3(&theirs));
    eprintln!("sonde top-3 leaves: {t3_ours:?}\nperf top-3 leaves: {t3_perf:?}");
    for (name, pct) in &t3_perf {
        let mine = ours.get(name).copied().unwrap_or(0.0);
        assert!(
            (mine - pct).abs() <= 10.0,
            "{name}: perf {pct:.1}% vs sonde {mine:.1}%\nsonde: {ours:?}\nperf: {theirs:?}"
        );
    }
    let names = |v: &[(String, f64)]| {
        let mut n: Vec<String> = v.iter().map(|x| x.0.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&t3_ours), names(&t3_perf), "top-3 leaf sets differ");
}

#[test]
fn exited_target_and_missing_pid_give_clean_answers() {
    let agent = Agent::start("");
    // Exits 2 s into a 4 s profile: its samples are still there, symbolized.
    let wl = workload("cpu", "2");
    let stacks = folded(&agent, wl.pid(), "4s");
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    assert!(total > 0, "no samples of the exited target");
    assert!(
        stacks
            .iter()
            .any(|(f, _)| f.join(";").contains("sonde_wl_a;sonde_wl_b;sonde_wl_c")),
        "exited target's stacks not symbolized (pid {}): {stacks:?}\n{}",
        wl.pid(),
        agent.log()
    );

    let out = agent.cli(&["profile", "--pid", "999999999", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process with pid 999999999"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = agent.cli(&["profile", "--duration", "10parsecs"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = agent.cli(&[
        "profile",
        "--pid",
        "1",
        "--duration",
        "1s",
        "--format",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A small protobuf wire decoder for pprof, independent of the agent's
/// encoder, following google/pprof's profile.proto field numbers.
mod pprof {
    use super::*;

    enum V {
        Int(u64),
        Bytes(Vec<u8>),
    }

    fn varint(b: &[u8], i: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let x = b[*i];
            *i += 1;
            v |= u64::from(x & 0x7f) << shift;
            if x & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }

    fn fields(b: &[u8]) -> Vec<(u64, V)> {
        let mut i = 0;
        let mut out = Vec::new();
        while i < b.len() {
            let tag = varint(b, &mut i);
            let (num, wt) = (tag >> 3, tag & 7);
            let v = match wt {
                0 => V::Int(varint(b, &mut i)),
                2 => {
                    let n = varint(b, &mut i) as usize;
                    let v = b[i..i + n].to_vec();
                    i += n;
                    V::Bytes(v)
                }
                1 => {
                    i += 8;
                    V::Int(0)
                }
                5 => {
                    i += 4;
                    V::Int(0)
                }
                _ => panic!("bad wire type {wt}"),
            };
            out.push((num, v));
        }
        out
    }

    /// Repeated integers, packed or not.
    fn ints(fs: &[(u64, V)], num: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for (n, v) in fs {
            if *n != num {
                continue;
            }
            match v {
                V::Int(x) => out.push(*x),
                V::Bytes(b) => {
                    let mut i = 0;
                    while i < b.len() {
                        out.push(varint(b, &mut i));
                    }
                }
            }
        }
        out
    }

    fn int(fs: &[(u64, V)], num: u64) -> u64 {
        ints(fs, num).first().copied().unwrap_or(0)
    }

    fn msgs(fs: &[(u64, V)], num: u64) -> Vec<Vec<(u64, V)>> {
        fs.iter()
            .filter(|(n, _)| *n == num)
            .filter_map(|(_, v)| match v {
                V::Bytes(b) => Some(fields(b)),
                V::Int(_) => None,
            })
            .collect()
    }

    pub struct Sample {
        pub locations: Vec<u64>,
        pub values: Vec<i64>,
    }

    pub struct Profile {
        /// Start of the profile's window (ns since the epoch) and its length.
        pub time_nanos: i64,
        pub duration_nanos: i64,
        pub strings: Vec<String>,
        pub sample_types: Vec<(u64, u64)>,
        pub samples: Vec<Sample>,
        /// location id -> [(function id, line)], leaf first.
        locations: HashMap<u64, Vec<(u64, i64)>>,
        /// function id -> (name, filename) string indexes.
        functions: HashMap<u64, (u64, u64)>,
    }

    impl Profile {
        pub fn string(&self, i: u64) -> &str {
            &self.strings[i as usize]
        }
        pub fn lines_of(&self, loc: u64) -> Vec<(String, i64)> {
            self.locations[&loc]
                .iter()
                .map(|(f, line)| (self.string(self.functions[f].0).to_owned(), *line))
                .collect()
        }
        pub fn has_file_ending(&self, suffix: &str) -> bool {
            self.functions
                .values()
                .any(|(_, file)| self.string(*file).ends_with(suffix))
        }
    }

    pub fn decode(gz: &[u8]) -> Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .expect("pprof is gzipped");
        let top = fields(&raw);
        let strings = top
            .iter()
            .filter(|(n, _)| *n == 6)
            .map(|(_, v)| match v {
                V::Bytes(b) => String::from_utf8(b.clone()).expect("utf-8 string"),
                V::Int(_) => panic!("string_table entry is not bytes"),
            })
            .collect();
        Profile {
            time_nanos: int(&top, 9) as i64,
            duration_nanos: int(&top, 10) as i64,
            strings,
            sample_types: msgs(&top, 1)
                .iter()
                .map(|m| (int(m, 1), int(m, 2)))
                .collect(),
            samples: msgs(&top, 2)
                .iter()
                .map(|m| Sample {
                    locations: ints(m, 1),
                    values: ints(m, 2).into_iter().map(|v| v as i64).collect(),
                })
                .collect(),
            locations: msgs(&top, 4)
                .iter()
                .map(|m| {
                    let lines = msgs(m, 4)
                        .iter()
                        .map(|l| (int(l, 1), int(l, 2) as i64))
                        .collect();
                    (int(m, 1), lines)
                })
                .collect(),
            functions: msgs(&top, 5)
                .iter()
                .map(|m| (int(m, 1), (int(m, 2), int(m, 4))))
                .collect(),
        }
    }
}

/// A kernel build that stopped pruning the unwinder's searches pushed this
/// program to the verifier's 1M-instruction limit (profiler down, every
/// agent start 40 s late). Keep a wide margin so the next drift shows here
/// first, not as a collector that fails to load.
#[test]
fn profiler_program_stays_well_inside_the_verifier_budget() {
    let agent = Agent::start("");
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("profiler attached"))
        .unwrap_or_else(|| panic!("no 'profiler attached' line:\n{log}"));
    let n: u64 = line
        .split("\"verified_insns\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| panic!("no verified_insns count in: {line}"));
    eprintln!("profile_cpu: {n} verified instructions");
    assert!(
        n <= 250_000,
        "profile_cpu took {n} verified instructions (limit 1,000,000; 77,820 on 6.18.44 with the Python walk, 63,084 before it)"
    );
}

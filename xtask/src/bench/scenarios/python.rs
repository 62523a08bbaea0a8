//! `python`: profiling one busy CPython process at 99 Hz. The kernel's
//! time per sample without and with the Python walk (the same process,
//! `collectors.profile.python` off and on), and sonde's whole CPU (agent
//! plus its BPF program) next to py-spy sampling the same process at the
//! same rate.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{alternate, finish};
use crate::bench::{
    Ctx,
    agent::{Agent, BpfStats, CpuMeter, bpf_run_stats, get, signal},
    report::ScenarioResult,
};

/// 30 Python frames deep (a web request's depth), spinning in the leaf.
const WORKLOAD: &str = "\
def leaf():
    x = 0
    while True:
        for i in range(1000):
            x += i


def down(n):
    if n == 0:
        leaf()
    down(n - 1)


down(29)
";

/// The interpreter `python3` on PATH runs (pyenv's shim resolved), and the
/// py-spy installed next to it (tests/requirements.txt), else on PATH.
fn interpreter() -> Result<(PathBuf, PathBuf)> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!("python3 does not run");
    }
    let python = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let sibling = python.with_file_name("py-spy");
    let py_spy = if sibling.exists() {
        sibling
    } else {
        "py-spy".into()
    };
    let ok = Command::new(&py_spy)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "py-spy is not installed: `python3 -m pip install -r tests/requirements.txt` \
             (or `cargo xtask test`, which does)"
        );
    }
    Ok((python, py_spy))
}

/// The busy Python process, killed on drop.
struct Target(Child);

impl Target {
    fn start(python: &PathBuf, script: &PathBuf) -> Result<Target> {
        Ok(Target(Command::new(python).arg(script).spawn()?))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const NATIVE: &str = "sonde profiler only, 99 Hz, native only";
const BOTH: &str = "sonde profiler only, 99 Hz, native + Python";
const PEER: &str = "py-spy 99 Hz --nonblocking (peer)";
const STOPPED: &str = "sonde profiler only, native + Python, target stopped";
const DEFAULT: &str = "sonde default collectors, 99 Hz, native + Python";

/// The collectors switched off for the like-for-like variants: py-spy only
/// profiles, so sonde is measured with only its profiler on too (the
/// default agent, with HTTP, memory and process collectors, is a variant of
/// its own).
const ONLY_PROFILER: [&str; 3] = [
    "SONDE_COLLECTORS__HTTP__ENABLED",
    "SONDE_COLLECTORS__MEMORY__ENABLED",
    "SONDE_COLLECTORS__PROCESS__ENABLED",
];

/// Time from readiness to the measured window. The first drains symbolize
/// every stack the machine shows for the first time (blazesym parses each
/// file's symbols and DWARF once). In 10 s windows of one release agent
/// (default collectors, this workload): ~0.85 % of a core from 12 to 22 s
/// after start, ~0.5 % in every window after. sonde is meant to stay
/// running, so steady state is what is compared.
fn warm_up(ctx: &Ctx) -> Duration {
    Duration::from_secs(if ctx.quick { 5 } else { 30 })
}

fn metric(port: u16, name: &str) -> f64 {
    get(port, "/metrics")
        .ok()
        .and_then(|(_, body)| {
            body.lines().find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == name).then(|| v.parse().ok()).flatten()
            })
        })
        .unwrap_or(0.0)
}

/// sonde at 99 Hz with the Python walk on or off, the target running:
/// agent CPU, BPF CPU, their sum (% of one core) and BPF time per sample.
fn sonde_cost(
    ctx: &Ctx,
    python: bool,
    target: bool,
    profiler_only: bool,
    secs: u64,
) -> Result<Vec<(&'static str, f64)>> {
    let mut env = vec![
        ("SONDE_COLLECTORS__PROFILE__FREQUENCY_HZ", "99".to_owned()),
        ("SONDE_COLLECTORS__PROFILE__PYTHON", python.to_string()),
    ];
    if profiler_only {
        env.extend(ONLY_PROFILER.iter().map(|k| (*k, "false".to_owned())));
    }
    let a = Agent::start(&ctx.sonde, ctx.work.path(), &env)?;
    std::thread::sleep(warm_up(ctx));
    let walks = "sonde_profile_python_walks_total";
    let w0 = metric(a.port, walks);
    let stats = BpfStats::enable()?;
    let (ns0, n0) = bpf_run_stats(a.pid(), "perf_event")?;
    let meter = CpuMeter::start(a.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = meter.seconds()?;
    let (ns1, n1) = bpf_run_stats(a.pid(), "perf_event")?;
    let elapsed = t0.elapsed().as_secs_f64();
    drop(stats);
    let walked = metric(a.port, walks) - w0;
    a.stop()?;
    if n1 <= n0 {
        bail!("the profiler's perf_event program never ran");
    }
    // The variant must be what it says: walks only with the walk on, and
    // then some (how many depends on the CPU the rest of the machine
    // leaves the target: reported as `samples walked`).
    let samples = (n1 - n0) as f64;
    if python && target && walked == 0.0 {
        bail!("none of {samples} samples walked Python frames: target not detected?");
    }
    if !python && walked > 0.0 {
        bail!("{walked} Python walks with collectors.profile.python = false");
    }
    let agent = cpu / elapsed * 100.0;
    let bpf = (ns1 - ns0) as f64 / 1e9 / elapsed * 100.0;
    Ok(vec![
        ("agent CPU", agent),
        ("BPF CPU", bpf),
        ("total CPU", agent + bpf),
        ("BPF time per sample", (ns1 - ns0) as f64 / samples / 1000.0),
        ("samples walked", walked / samples * 100.0),
    ])
}

/// py-spy sampling the target at 99 Hz without stopping it (its cheapest
/// mode), until SIGINT: its own CPU over `secs` after it attached.
fn py_spy_cost(
    ctx: &Ctx,
    py_spy: &PathBuf,
    target: u32,
    secs: u64,
) -> Result<Vec<(&'static str, f64)>> {
    let mut spy = Command::new(py_spy)
        .args(["record", "--rate", "99", "--nonblocking", "--format", "raw"])
        .arg("--output")
        .arg(ctx.work.path().join("py-spy.txt"))
        .arg("--pid")
        .arg(target.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting py-spy")?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = spy.id();
    let meter = CpuMeter::start(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = meter.seconds()?;
    let elapsed = t0.elapsed().as_secs_f64();
    signal(pid, 2);
    let st = spy.wait()?;
    if !st.success() {
        bail!("py-spy exited with {st}");
    }
    let samples = std::fs::read_to_string(ctx.work.path().join("py-spy.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum::<u64>();
    if samples == 0 {
        bail!("py-spy recorded no sample");
    }
    Ok(vec![("total CPU", cpu / elapsed * 100.0)])
}

pub fn python(ctx: &Ctx) -> ScenarioResult {
    let name = "python";
    let what = "Profiling one busy CPython process (python3 on PATH, 30 Python frames deep) at \
                99 Hz: the kernel's run time per sample of the profiler's perf_event program \
                with the Python walk off (native frames only) and on (native + Python), and \
                sonde's whole CPU (the agent's, from its threads' schedstat, ns, plus its BPF \
                program's run time; % of one core) next to py-spy 0.4 recording the same \
                process at the same rate without stopping it (--nonblocking, its cheapest \
                mode). py-spy only profiles, so the compared agent runs only its profiler; \
                the default agent (HTTP, memory and process collectors too) is a variant of \
                its own. Both are measured in steady state, after the warm-up in which the \
                agent symbolizes the machine's stacks for the first time. sonde samples every \
                process of the machine, so its CPU is also measured with the Python process \
                stopped (SIGSTOP): the difference is what profiling that process adds.";
    let secs = if ctx.quick { 4 } else { 20 };
    let run = || -> Result<ScenarioResult> {
        let (python, py_spy) = interpreter()?;
        let script = ctx.work.path().join("busy.py");
        std::fs::write(&script, WORKLOAD)?;
        // Killed when this closure returns, figures or error.
        let target = Target::start(&python, &script)?;
        let pid = target.0.id();
        let metrics = alternate(
            if ctx.quick { 1 } else { ctx.reps.min(3) },
            &[
                ("BPF time per sample", "µs"),
                ("agent CPU", "% of one core"),
                ("BPF CPU", "% of one core"),
                ("total CPU", "% of one core"),
                ("samples walked", "%"),
            ],
            vec![
                (
                    NATIVE,
                    Box::new(|| sonde_cost(ctx, false, true, true, secs)),
                ),
                (BOTH, Box::new(|| sonde_cost(ctx, true, true, true, secs))),
                (PEER, Box::new(|| py_spy_cost(ctx, &py_spy, pid, secs))),
                (
                    STOPPED,
                    Box::new(|| {
                        // The rest of the machine alone: what sonde costs
                        // without the Python process (SIGSTOP: it keeps its
                        // pid and state for the next repetition).
                        signal(pid, 19);
                        let r = sonde_cost(ctx, true, false, true, secs);
                        signal(pid, 18);
                        r
                    }),
                ),
                (
                    DEFAULT,
                    Box::new(|| sonde_cost(ctx, true, true, false, secs)),
                ),
            ],
        )?;
        let mut r = ScenarioResult {
            metrics,
            ..Default::default()
        };
        let added = r.median_added("BPF time per sample", BOTH, NATIVE);
        r.derive(
            "BPF time per sample added by the Python walk",
            added,
            "µs",
            None,
        );
        let ratio = r.paired_ratio("total CPU", BOTH, PEER);
        r.derive_paired(
            "sonde CPU (agent + BPF, profiler only) / py-spy CPU",
            ratio,
            Some(("≤ 0.33", |x| x <= 1.0 / 3.0)),
        );
        let ratio = r.paired_ratio("total CPU", DEFAULT, PEER);
        r.derive_paired(
            "sonde CPU (agent + BPF, default collectors) / py-spy CPU",
            ratio,
            None,
        );
        // sonde profiles every process of the machine, py-spy one: what
        // profiling the Python process adds to sonde, next to py-spy.
        let added = r.median_added("total CPU", BOTH, STOPPED);
        r.derive(
            "sonde CPU added by the Python process",
            added,
            "% of one core",
            None,
        );
        let peer = r.median("total CPU", PEER);
        r.derive(
            "sonde CPU added by the Python process / py-spy CPU",
            added.zip(peer).map(|(a, p)| a / p),
            "×",
            added.zip(peer).map(|(a, p)| ("≤ 0.33", a / p <= 1.0 / 3.0)),
        );
        r.commands = vec![
            format!(
                "{} busy.py (a 30-deep recursion spinning in its leaf), one process",
                python.display()
            ),
            format!(
                "SONDE_COLLECTORS__PROFILE__FREQUENCY_HZ=99 SONDE_COLLECTORS__PROFILE__PYTHON=false|true \
                 [SONDE_COLLECTORS__{{HTTP,MEMORY,PROCESS}}__ENABLED=false: profiler only] sonde agent; \
                 after {} s of warm-up, over {secs} s: agent CPU from its threads' schedstat (ns), BPF \
                 run_time_ns/run_cnt of its perf_event program (kernel.bpf_stats_enabled, bpftool)",
                warm_up(ctx).as_secs()
            ),
            format!(
                "{} record --rate 99 --nonblocking --format raw --pid PID; its CPU from \
                 schedstat (ns) over {secs} s after 2 s of attaching",
                py_spy.display()
            ),
        ];
        Ok(r)
    };
    finish(name, what, run())
}

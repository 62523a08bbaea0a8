//! Folded stacks from `sonde profile`, shared by the profiler's tests.

use std::time::{Duration, Instant};

use crate::Agent;

/// A folded profile: (frames root first, count or nanoseconds).
pub type Folded = Vec<(Vec<String>, u64)>;

/// Parses folded stacks (`a;b;c COUNT` lines, root first).
pub fn parse_folded(text: &str) -> Folded {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (stack, n) = l.rsplit_once(' ').expect("folded line has a count");
            (
                stack.split(';').map(str::to_owned).collect(),
                n.parse().expect("count"),
            )
        })
        .collect()
}

/// `sonde ARGS`' standard output; fails the test, with the agent's log,
/// when the command fails.
pub fn cli_ok(agent: &Agent, args: &[&str]) -> Vec<u8> {
    let out = agent.cli(args);
    assert!(
        out.status.success(),
        "sonde {args:?} failed ({}): {}\nagent log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    out.stdout
}

/// `sonde ARGS` (a `--format folded` profile), parsed.
pub fn folded_of(agent: &Agent, args: &[&str]) -> Folded {
    parse_folded(&String::from_utf8(cli_ok(agent, args)).expect("utf-8 folded output"))
}

/// `sonde profile --pid PID --duration D --format folded`, parsed.
pub fn folded(agent: &Agent, pid: u32, duration: &str) -> Folded {
    let p = pid.to_string();
    folded_of(
        agent,
        &[
            "profile",
            "--pid",
            &p,
            "--duration",
            duration,
            "--format",
            "folded",
        ],
    )
}

/// (samples whose stack satisfies `ok`, all samples).
pub fn share(stacks: &[(Vec<String>, u64)], ok: impl Fn(&[String]) -> bool) -> (u64, u64) {
    let total = stacks.iter().map(|s| s.1).sum();
    let good = stacks.iter().filter(|s| ok(&s.0)).map(|s| s.1).sum();
    (good, total)
}

/// Profiles `pid` in 1 s slices until `ok` holds for most samples, then
/// for `duration`. A process's unwind tables are built after it is first
/// sampled, in the background: on a busy machine that takes seconds, and
/// until then its stacks end where frame pointers do. Fails after 40 s.
pub fn settled(agent: &Agent, pid: u32, duration: &str, ok: impl Fn(&[String]) -> bool) -> Folded {
    let start = Instant::now();
    loop {
        let s = folded(agent, pid, "1s");
        let (g, t) = share(&s, &ok);
        if t > 0 && g * 2 > t {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "unwind tables not in use after 40 s: {s:?}\n{}",
            agent.log()
        );
    }
    folded(agent, pid, duration)
}

#!/usr/bin/env python3
"""By-hand A/B for docs/syscalls.md "Cost": CPU ns per getppid (or per pipe
ping-pong round trip with MODE=pingpong) pinned to CPU 1, variants
alternating, and a run counts only if no other eBPF tracing program is
loaded before and after it (on a shared machine, other agents would add
their own cost). Usage, from the repository root, as root:

  gcc -O2 -o /tmp/sysw/getppid_loop tests/workloads/getppid_loop.c
  gcc -O2 -o /tmp/sysw/pingpong xtask/bench/pipe_pingpong.c
  REPS=5 [MODE=pingpong] python3 xtask/bench/syscalls_quiet_ab.py [OLD_SONDE_BINARY]

NEW is target/release/sonde; OLD (optional) is another build to compare.
"""
import json, os, subprocess, sys, tempfile, time, statistics, signal
NEW = os.path.abspath("target/release/sonde"); OLD = sys.argv[1] if len(sys.argv) > 1 else None
REPS = int(os.environ.get("REPS", "5"))
MODE = os.environ.get("MODE", "getppid")
def loop(n=1000000):
    if MODE == "pingpong":
        out = subprocess.run(["taskset", "-c", "1", "/tmp/sysw/pingpong", "50000"], capture_output=True, text=True).stdout
        return float(out.split()[3])
    out = subprocess.run(["taskset", "-c", "1", "/tmp/sysw/getppid_loop", str(n)], capture_output=True, text=True).stdout
    return float(out.split()[2])
def ids_of(pid):
    ids = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fdinfo"):
            try:
                for l in open(f"/proc/{pid}/fdinfo/{fd}"):
                    if l.startswith("prog_id:"): ids.add(int(l.split()[1]))
            except OSError: pass
    except OSError: pass
    return ids
def tracing_ids():
    return {p["id"] for p in json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout) if p["type"] in ("raw_tracepoint","tracepoint","tracing","perf_event")}
def quiet_loop(mine, tries=200):
    while tries:
        tries -= 1
        f0 = tracing_ids() - mine()
        v = loop()
        f1 = tracing_ids() - mine()
        if not f0 and not f1: return v
        time.sleep(1)
    return None
def agent(binary):
    d = tempfile.mkdtemp()
    env = dict(os.environ, SONDE_API__LISTEN="127.0.0.1:0", SONDE_API__SOCKET=d+"/s.sock", SONDE_AGENT__LOG_LEVEL="warn",
        SONDE_COLLECTORS__PROCESS__ENABLED="false", SONDE_COLLECTORS__PROFILE__ENABLED="false", SONDE_COLLECTORS__HTTP__ENABLED="false")
    p = subprocess.Popen([binary, "agent"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(d+"/s.sock") and len(ids_of(p.pid)) >= 2: break
        time.sleep(0.2)
    time.sleep(1)
    return p
def floor():
    p = subprocess.Popen([NEW, "bench-floor"], stdout=subprocess.PIPE)
    p.stdout.readline(); return p
def bpftrace(script):
    p = subprocess.Popen(["bpftrace", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.readline(); time.sleep(0.5); return p
variants = [("bare", None), ("floor raw_tp", floor), ("sonde new (syscalls only)", lambda: agent(NEW))]
if OLD: variants.append(("sonde old (syscalls only)", lambda: agent(OLD)))
variants.append(("bpftrace peer", lambda: bpftrace(os.path.abspath("xtask/bench/syscalls_syscount_hist.bt"))))
res = {n: [] for n, _ in variants}
for r in range(REPS):
    for n, start in variants:
        p = start() if start else None
        mine = (lambda: ids_of(p.pid)) if p else (lambda: set())
        v = quiet_loop(mine)
        if p: p.send_signal(signal.SIGINT if "bpftrace" in n else signal.SIGTERM); p.wait()
        if v: res[n].append(v)
    print(r, {n: round(v[-1],1) if v else None for n, v in res.items()}, flush=True)
b = statistics.median(res["bare"])
for n, v in res.items():
    if v: print(f"{n:30s} median {statistics.median(v):7.1f} ns  added {statistics.median(v)-b:7.1f}  (n={len(v)}, min {min(v):.1f}, max {max(v):.1f})")

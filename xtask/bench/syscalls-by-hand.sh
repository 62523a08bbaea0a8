#!/bin/sh
# Measures CPU ns per getppid(2) (see tests/workloads/getppid_loop.c) with: nothing attached, empty raw_syscalls
# tracepoints (bpftrace), sonde's syscall collector, and the bpftrace
# equivalent of it; ROUNDS rounds, alternating, so drift hits all alike.
# Until `cargo xtask bench syscalls` exists, this is how the figures in
# docs/syscalls.md were taken. Run as root from the workspace root after
# `cargo build -p sonde`.
set -eu
ROUNDS=${ROUNDS:-5}
N=${N:-2000000}
SONDE=${SONDE:-target/debug/sonde}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
gcc -O2 -o "$DIR/getppid_loop" tests/workloads/getppid_loop.c
run() { "$DIR/getppid_loop" "$N" | awk '/^getppid/ {print $NF}'; }
with_bpftrace() {
    bpftrace "$1" > "$DIR/bt.log" 2>&1 &
    bt=$!
    # Wait until its probes are attached.
    for _ in $(seq 100); do grep -q Attaching "$DIR/bt.log" && break; sleep 0.1; done
    sleep 1
    run
    kill -INT "$bt"; wait "$bt" 2>/dev/null || true
}
with_sonde() {
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    printf '[api]\nlisten = "127.0.0.1:%s"\nsocket = "%s/sonde.sock"\n[collectors.process]\nenabled = false\n' "$port" "$DIR" > "$DIR/sonde.toml"
    "$SONDE" agent --config "$DIR/sonde.toml" > "$DIR/sonde.log" 2>&1 &
    sp=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health/ready" > /dev/null && break; sleep 0.1; done
    run
    kill -TERM "$sp"; wait "$sp" || true
}
echo "round bare empty_tp sonde bpftrace"
for r in $(seq "$ROUNDS"); do
    b=$(run)
    e=$(with_bpftrace xtask/bench/syscalls_empty.bt)
    s=$(with_sonde)
    t=$(with_bpftrace xtask/bench/syscalls_syscount_hist.bt)
    echo "$r $b $e $s $t"
done

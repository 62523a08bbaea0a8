"""Python allocation loop for the `alloc` benchmark's CPython rows.

Usage: py_alloc_loop.py plain|tracemalloc N

Prints "ready" once started (tracemalloc, when asked, is on by then),
waits for a line on stdin, runs N iterations that each make and drop one
bytearray(100): two CPython allocations (the object, from pymalloc, and
its 101-byte buffer) and their two frees, then prints the loop's CPU time
per iteration in ns and waits for end of input.
"""

import itertools
import sys
import time

mode, n = sys.argv[1], int(sys.argv[2])
if mode == "tracemalloc":
    import tracemalloc

    tracemalloc.start()
elif mode != "plain":
    sys.exit(f"unknown mode {mode}")


def allocate(n):
    # itertools.repeat: no int object per iteration.
    for _ in itertools.repeat(None, n):
        bytearray(100)


print("ready", flush=True)
sys.stdin.readline()
t0 = time.process_time_ns()
allocate(n)
t1 = time.process_time_ns()
print(f"ns per iteration: {(t1 - t0) / n:.1f}", flush=True)
sys.stdin.read()

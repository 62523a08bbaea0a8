"""FastAPI app for sonde's by-route tests: a CPU-heavy sync route (run
in a worker thread, which never touches the socket), a cheap async route
(on the event loop), /cputime: the CPU each route's handlers measured
themselves with time.thread_time(); a sync route that sleeps 50 ms and
does nothing else (off-CPU by route), and /served: how many requests it
has served."""
import threading
import time

from fastapi import FastAPI

app = FastAPI()
_cpu = {"heavy": 0.0, "cheap": 0.0}
_lock = threading.Lock()
_served = {"sleep": 0}


def burn(seconds):
    """Spins for `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for i in range(500):
            x += i * i
    return x


def account(route, t0):
    with _lock:
        _cpu[route] += time.thread_time() - t0


@app.get("/heavy/{n}")
def heavy(n: int):
    t0 = time.thread_time()
    burn(0.04)
    account("heavy", t0)
    return {"n": n}


@app.get("/cheap")
async def cheap():
    t0 = time.thread_time()
    burn(0.002)
    account("cheap", t0)
    return {"ok": True}


@app.get("/cputime")
def cputime():
    with _lock:
        return dict(_cpu)


@app.get("/sleep/{n}")
def sleep(n: int):
    time.sleep(0.05)
    with _lock:
        _served["sleep"] += 1
    return {"n": n}


@app.get("/served")
def served():
    with _lock:
        return dict(_served)

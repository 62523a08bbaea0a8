"""Thread-per-request server (http.server.ThreadingHTTPServer) for sonde's
CPU-by-route test: GET /heavy/N burns 40 ms of CPU, GET /cheap 2 ms, and
GET /cputime answers the CPU each route's handlers measured themselves
with time.thread_time(). Usage: route_threads.py PORT"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CPU = {"heavy": 0.0, "cheap": 0.0}
LOCK = threading.Lock()


def burn(seconds):
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for i in range(500):
            x += i * i
    return x


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/cputime":
            with LOCK:
                body = json.dumps(CPU).encode()
        else:
            route, secs = ("heavy", 0.04) if self.path.startswith("/heavy/") else ("cheap", 0.002)
            t0 = time.thread_time()
            burn(secs)
            with LOCK:
                CPU[route] += time.thread_time() - t0
            body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

"""A raw HTTP/1.1 server that misbehaves on request, for tests/tests/hostile.rs.

Usage: hostile_server.py PORT TALK_FIRST_PORT COMM_HEX

- Sets its own comm (prctl PR_SET_NAME) to the bytes COMM_HEX decodes to:
  control characters, quotes, invalid UTF-8.
- PORT: keep-alive server. Reads a request head of any size (64 KiB request
  lines included), then the body its Content-Length announces when that is
  a sane number (a negative or huge one reads nothing), and answers by path:
  /neg   200 with `Content-Length: -5`, then closes
  /huge  200 with a Content-Length of 30 digits and a short body, then closes
  /double  200, then a second, unsolicited 200 (a response without a request)
  /burn  200 after a second of CPU (so the profiler samples this comm)
  else   200 echoing the request's X-Marker header in a header and the body
- TALK_FIRST_PORT: writes a response as soon as a client connects, before
  any request (a response without a request), then serves as PORT does.

Prints "ready" once both ports listen.
"""

import ctypes
import socket
import sys
import threading
import time

MAX_HEAD = 1 << 20


def set_comm(name: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NAME = 15
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def read_head(conn: socket.socket, buf: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            return None
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf.extend(chunk)
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    del buf[:end]
    return head


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            try:
                n = int(v.strip())
            except ValueError:
                return 0
            return n if 0 <= n <= MAX_HEAD else 0
    return 0


def header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return b""


def respond(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra)
        + body
    )


def serve(conn: socket.socket) -> None:
    buf = bytearray()
    with conn:
        while True:
            head = read_head(conn, buf)
            if head is None:
                return
            n = content_length(head)
            while len(buf) < n:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf.extend(chunk)
            body = bytes(buf[:n])
            del buf[:n]
            parts = head.split(b" ", 2)
            path = parts[1] if len(parts) > 1 else b""
            marker = header(head, b"x-marker")
            if path.startswith(b"/neg"):
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\nConnection: close\r\n\r\n"
                    + marker
                )
                return
            if path.startswith(b"/burn"):
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    pass
            if path.startswith(b"/huge"):
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999999999999999\r\n"
                    b"Connection: close\r\n\r\n" + marker
                )
                return
            conn.sendall(respond(marker + body, b"X-Echo: " + marker + b"\r\n"))
            if path.startswith(b"/double"):
                # A write of its own, so the kernel sees it as a message.
                time.sleep(0.05)
                conn.sendall(respond(b"unsolicited " + marker))


def listen(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def accept_loop(s: socket.socket, talk_first: bool) -> None:
    while True:
        conn, _ = s.accept()

        def run(c=conn):
            try:
                if talk_first:
                    c.sendall(respond(b"nobody asked"))
                serve(c)
            except OSError:
                pass

        threading.Thread(target=run, daemon=True).start()


def main() -> None:
    port, talk_first_port, comm_hex = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    a, b = listen(port), listen(talk_first_port)
    set_comm(bytes.fromhex(comm_hex))
    threading.Thread(target=accept_loop, args=(b, True), daemon=True).start()
    print("ready", flush=True)
    accept_loop(a, False)


if __name__ == "__main__":
    main()

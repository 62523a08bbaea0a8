"""Drives PATH_A and PATH_B alternately, 1:1, over one keep-alive
connection for SECONDS (whole pairs); `{i}` in a path is the pair index.
Usage: alternate.py PORT SECONDS PATH_A PATH_B. Prints the pairs sent."""
import http.client
import sys
import time

port, seconds, a, b = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
end = time.monotonic() + seconds
pairs = 0
while time.monotonic() < end:
    for path in (a, b):
        conn.request("GET", path.replace("{i}", str(pairs)))
        r = conn.getresponse()
        r.read()
        assert r.status == 200, (path, r.status)
    pairs += 1
print(pairs)

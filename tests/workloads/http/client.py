"""HTTP client for sonde's tests: sends a plan of requests and checks each
status. Usage: client.py PORT KEEPALIVE(0|1) PLAN_JSON
PLAN_JSON: list of [method, path, expected_status, count]."""
import http.client
import json
import sys

port = int(sys.argv[1])
keepalive = sys.argv[2] == "1"
plan = json.loads(sys.argv[3])
conn = None
conns = 0
for method, path, want, count in plan:
    for i in range(count):
        if conn is None or not keepalive:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conns += 1
        p = path.replace("{i}", str(i))
        body = None
        headers = {"X-Secret": "HSECRET456"}
        if method == "POST":
            body = b"BSECRET789" * 10
        conn.request(method, p, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != want:
            sys.exit(f"{method} {p}: got {r.status}, want {want}")
        if r.will_close:
            conn.close()
            conn = None
if conn is not None:
    conn.close()
print(json.dumps({"connections": conns}))

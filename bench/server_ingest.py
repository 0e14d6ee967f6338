"""Ingest throughput: beacons/s into durable SQLite over keep-alive HTTP, next to a bare HTTP server.

Both servers run as separate processes on loopback; the same keep-alive client (http.client) posts
the same beacons to each. The bare server is the standard library's http.server answering a
constant, so the difference is what validation, grouping, counting and a durable commit cost.

    python bench/server_ingest.py [--quick] [--clients N]
Bar: >= 1,000 beacons/s.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Client, environment, start, stop  # noqa: E402

_BARE = r'''
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        sys.stderr.write("log\n")
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
server.daemon_threads = True
sys.stderr.write("listening on http://127.0.0.1:%d\n" % server.server_address[1]); sys.stderr.flush()
server.serve_forever()
'''

_TRACE = ("Traceback (most recent call last):\n  File \"/srv/jobs/etl.py\", line 42, in main\n    load()\n"
          "  File \"/venv/lib/python3.11/site-packages/packaging/version.py\", line 7, in parse\n" * 3)


def _beacons(count: int, envs: int, seed: int):
    rng = random.Random(seed)
    for i in range(count):
        sig = "ValueError: bad record in table %s @ etl.load < etl.main" % rng.choice("abcdefghij")
        yield {"kind": "error" if i % 10 else "success", "env_hash": "%012x" % rng.randrange(envs),
               "script_id": "s%05d" % rng.randrange(500), "ts": time.time(), "trace": _TRACE + sig.split(" @ ")[0],
               "error_sig": sig, "event_id": "%032x" % rng.getrandbits(128), "agent": "corp-error-agent/0.5.0"}


def _drive(host: str, port: int, count: int, clients: int, seed: int) -> float:
    """Beacons per second over ``clients`` keep-alive connections, each posting count/clients."""
    batches = [list(_beacons(count // clients, 200, seed + c)) for c in range(clients)]
    errors = []

    def run(batch):
        client = Client(host, port)
        for beacon in batch:
            status, _ = client.post("/beacon", beacon)
            if status not in (200, 204):
                errors.append(status)

    threads = [threading.Thread(target=run, args=(batch,)) for batch in batches]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit("errors: %s" % errors[:5])
    return sum(len(b) for b in batches) / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    count = 2000 if args.quick else 20000
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "ingest.db")
        proc, host, port = start([sys.executable, "-m", "corp_error_server", "--port", "0", "--db", db])
        try:
            client = Client(host, port)
            rng = random.Random(0)
            for index in range(200):
                client.post("/env", environment(rng, index))
            ours = {n: _drive(host, port, count, n, seed=n) for n in sorted({1, args.clients})}
        finally:
            stop(proc)
        bare_proc, host, port = start([sys.executable, "-c", _BARE])
        try:
            bare = {n: _drive(host, port, count, n, seed=n) for n in sorted({1, args.clients})}
        finally:
            stop(bare_proc)
    print("beacons per run: %d; 200 environments of 30 packages; SQLite WAL, synchronous=FULL" % count)
    for n in sorted(ours):
        print("%d keep-alive client(s): corp-error-server %7.0f beacons/s   bare http.server %7.0f req/s   (%.0f%%)"
              % (n, ours[n], bare[n], 100 * ours[n] / bare[n]))
    best = max(ours.values())
    print("bar (>= 1,000 beacons/s): %s" % ("met" if best >= 1000 else "MISSED"))
    return 0 if best >= 1000 else 1


if __name__ == "__main__":
    sys.exit(main())

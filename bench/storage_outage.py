"""PostgreSQL outage under load: how soon ingest resumes after the database is back, and what is lost.

A throw-away PostgreSQL cluster (tests/pgsupport.py), one server process on it, 6 threads posting
error beacons with unique event ids over keep-alive connections. PostgreSQL is stopped for
--outage seconds and started again; the figure is the time from "PostgreSQL accepts connections
again" to the first acknowledged beacon, and acknowledged vs stored over the whole run.

    python bench/storage_outage.py [--quick] [--outage SECONDS]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from typing import Dict, List, Set

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import pgsupport  # noqa: E402
from _common import start, stop  # noqa: E402

_THREADS = 6


class _Load:
    def __init__(self, host: str, port: int) -> None:
        self.acked: Set[str] = set()
        self.statuses: Dict[int, int] = {}
        self.first_ack_after: Dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(host, port, n)) for n in range(_THREADS)]
        for thread in self._threads:
            thread.start()

    def _run(self, host: str, port: int, n: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        i = 0
        while not self._stop.is_set():
            event_id = "o%d-%d" % (n, i)
            i += 1
            body = json.dumps(
                {
                    "kind": "error",
                    "env_hash": "e1",
                    "script_id": "s%d" % n,
                    "ts": 1.7e9,
                    "error_sig": "ValueError: outage @ app.main",
                    "event_id": event_id,
                }
            )
            try:
                conn.request("POST", "/beacon", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
                continue
            with self._lock:
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                if response.status < 300:
                    self.acked.add(event_id)
                    self.first_ack_after.setdefault("now", time.monotonic())
        conn.close()

    def reset_first_ack(self) -> None:
        with self._lock:
            self.first_ack_after.clear()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 10 s outage")
    parser.add_argument("--outage", type=float, default=40.0, help="seconds PostgreSQL is down (default 40)")
    args = parser.parse_args(argv)
    outage = 10.0 if args.quick else args.outage
    reason = pgsupport.unavailable()
    if reason:
        print("bench/storage_outage.py: " + reason, file=sys.stderr)
        return 2
    cluster = pgsupport.Cluster()
    try:
        target = cluster.database()
        proc, host, port = start([sys.executable, "-m", "corp_error_server", "--port", "0", "--db", target])
        load = _Load(host, port)
        while len(load.acked) < 200:
            time.sleep(0.05)  # warm-up: poll interval
        cluster.stop("fast")
        time.sleep(outage)  # the outage itself
        cluster.start()  # returns once PostgreSQL accepts connections
        back = time.monotonic()
        load.reset_first_ack()
        while "now" not in load.first_ack_after:
            time.sleep(0.01)
        resumed = load.first_ack_after["now"] - back
        time.sleep(2)  # some ingest after the recovery
        load.stop()
        stop(proc)
        stored = {e for (e,) in pgsupport.db_rows(target, "SELECT event_id FROM beacons")}
    finally:
        cluster.destroy()
    print(
        "PostgreSQL down %.0f s under %d clients: first beacon acknowledged %.1f s after it is back"
        % (outage, _THREADS, resumed)
    )
    print(
        "statuses %s; acknowledged %d, stored %d, acknowledged but lost %d"
        % (dict(sorted(load.statuses.items())), len(load.acked), len(stored), len(load.acked - stored))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

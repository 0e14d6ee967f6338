"""Load: N concurrent keep-alive clients posting beacons for a fixed time to the real server, with
its SQLite database on disk. Counts errors, acknowledged vs stored rows (lost), and beacons/s.

    python bench/server_load.py [--quick] [--clients 10] [--seconds 30]
--quick: 5 seconds. Bar: 0 errors, 0 lost rows.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Client, environment, start, stop  # noqa: E402

_TRACE = (
    "Traceback (most recent call last):\n  File \"/srv/jobs/etl.py\", line 42, in main\n    load()\n"
    "  File \"/srv/jobs/etl.py\", line 7, in load\n    parse(row)\n"
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 seconds instead of 30")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "load.db")
        proc, host, port = start([sys.executable, "-m", "corp_error_server", "--port", "0", "--db", db])
        acked = [[] for _ in range(args.clients)]
        errors = []
        stop_at = threading.Event()
        try:
            setup = Client(host, port)
            rng = random.Random(1)
            for index in range(50):
                setup.post("/env", environment(rng, index))

            def client(slot: int) -> None:
                rng = random.Random(100 + slot)
                conn = Client(host, port)
                n = 0
                while not stop_at.is_set():
                    n += 1
                    event_id = "%08x%024x" % (slot, n)
                    sig = "ValueError: bad record in table %s @ etl.load < etl.main" % rng.choice("abcdefghij")
                    beacon = {
                        "kind": "error" if n % 10 else "success",
                        "env_hash": "%012x" % rng.randrange(60),
                        "script_id": "s%05d" % rng.randrange(300),
                        "ts": time.time(),
                        "trace": _TRACE + sig.split(" @ ")[0],
                        "error_sig": sig,
                        "event_id": event_id,
                        "agent": "corp-error-agent/0.5.0",
                    }
                    try:
                        status, body = conn.post("/beacon", beacon)
                    except Exception as error:  # counted, then a fresh connection
                        errors.append("%s: %s" % (type(error).__name__, error))
                        conn = Client(host, port)
                        continue
                    if status in (200, 204):
                        acked[slot].append(event_id)
                    else:
                        errors.append("HTTP %d %r" % (status, body[:100]))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            stop_at.wait(seconds)  # the measurement window
            stop_at.set()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - began
        finally:
            stop(proc)
        conn = sqlite3.connect(db)
        stored_ids = {row[0] for row in conn.execute("SELECT event_id FROM beacons")}
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
    acknowledged = {e for ids in acked for e in ids}
    lost = len(acknowledged - stored_ids)
    print(
        "%d keep-alive clients for %.0f s, SQLite (WAL) on disk; server stopped (SIGTERM) before counting"
        % (args.clients, seconds)
    )
    print("errors: %d%s" % (len(errors), (" (first: %s)" % errors[0]) if errors else ""))
    print(
        "acknowledged: %d   stored: %d   lost: %d   integrity_check: %s"
        % (len(acknowledged), len(stored_ids & acknowledged), lost, integrity)
    )
    print("throughput: %.0f beacons/s" % (len(acknowledged) / elapsed))
    ok = not errors and lost == 0 and integrity == "ok"
    print("bar (0 errors, 0 lost): %s" % ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

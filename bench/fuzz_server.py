"""Property-based fuzzing (hypothesis) of every route of a real corp-error-server process.

    python bench/fuzz_server.py [--requests 12000] [--quick]
Needs hypothesis (the tooling venv of tests/run_tests.sh has it). Prints requests sent, statuses,
failures (responses >= 500, missing or non-JSON error answers), and the database checks afterwards.
Bar: >= 10,000 requests, 0 failures, server alive, database consistent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "bench"), os.path.join(ROOT, "tests", "reliability")]
import server_fuzz  # noqa: E402
from _common import start, stop  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12000)
    parser.add_argument("--quick", action="store_true", help="2,000 requests")
    args = parser.parse_args(argv)
    wanted = 2000 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "fuzz.db")
        proc, host, port = start([sys.executable, "-m", "corp_error_server", "--port", "0", "--db", db])
        target = server_fuzz.Target(host, port)
        began = time.monotonic()
        try:
            server_fuzz.fuzz(target, wanted)
            alive = proc.poll() is None
            problems = server_fuzz.check_database(db, target)
        finally:
            stop(proc)
    print("requests sent: %d in %.0f s" % (target.sent, time.monotonic() - began))
    print("statuses: %s" % ", ".join("%d: %d" % item for item in sorted(target.statuses.items())))
    print("responses >= 500: %d" % sum(n for s, n in target.statuses.items() if s >= 500))
    print("failures: %d%s" % (len(target.failures), "".join("\n  " + f[:200] for f in target.failures[:5])))
    print("server alive: %s; database: %s" % (alive, "; ".join(problems) or "integrity ok, /api/errors consistent"))
    ok = target.sent >= min(wanted, 10000) and not target.failures and alive and not problems
    print("bar: %s" % ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of a failing script with the backend refusing connections, with and without the agent.

Two throw-away venvs (no agent / agent copied in by `install`), a script that raises, and
ERROR_AGENT_URL pointing at a closed loopback port. Three agent cases, each against the no-agent
run in the same round:
  first    fresh cache dir: environment scanned, beacon spooled, connection refused
  again    same cache dir: snapshot cached, circuit breaker open, so no network at all
  hints    breaker removed before each run: the refused connection is tried every time
Budget: <= +100 ms wall vs. no agent.

    python bench/failure.py [--quick]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def timed(python: str, script: str, env: dict) -> float:
    # no timeout=: with one, subprocess polls with growing sleeps and rounds the time up to ~50 ms
    started = time.perf_counter()
    subprocess.run([python, script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 8 if args.quick else 40
    with tempfile.TemporaryDirectory(prefix="cea-failure-") as workdir:
        pythons = {}
        for name in ("bare", "agent"):
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", os.path.join(workdir, name)], check=True)
            pythons[name] = os.path.join(workdir, name, "bin", "python")
        subprocess.run(
            [pythons["agent"], os.path.join(ROOT, "corp_error_agent.py"), "install"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        script = os.path.join(workdir, "fails.py")
        with open(script, "w") as f:
            f.write("def main():\n    raise ValueError('boom')\n\nmain()\n")
        env = dict(
            os.environ,
            ERROR_AGENT_URL="http://127.0.0.1:%d" % closed_port(),
            HOME=workdir,
            XDG_CACHE_HOME=os.path.join(workdir, "xdg"),
        )
        deltas = {"first": [], "again": [], "hints": []}
        for i in range(rounds):
            cache = os.path.join(workdir, "cache-%d" % i)
            case_env = dict(env, ERROR_AGENT_CACHE_DIR=cache)
            bare = timed(pythons["bare"], script, case_env)
            deltas["first"].append(timed(pythons["agent"], script, case_env) - bare)
            deltas["again"].append(timed(pythons["agent"], script, case_env) - bare)
            for breaker in glob.glob(os.path.join(cache, "breaker-*.json")):
                os.unlink(breaker)
            deltas["hints"].append(timed(pythons["agent"], script, case_env) - bare)
            shutil.rmtree(cache, ignore_errors=True)
        print("failing script, backend refusing connections, %d rounds (median extra wall time vs. no agent):" % rounds)
        for case, values in deltas.items():
            print("  %-6s %+7.1f ms" % (case, statistics.median(values) * 1e3))
        print("  budget: +100 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

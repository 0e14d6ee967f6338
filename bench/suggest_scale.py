"""/suggest latency at fleet scale: 1M beacons over 20k environments, SQLite and PostgreSQL.

The population is written in bulk into SQLite (bench/_bulk.py: the rows storage derives for these
beacons, a table at a time; storing a million beacons one by one takes far longer than reading
them), and PostgreSQL gets a copy of it by COPY, so both backends hold the same rows. 200 error
groups of Zipf-like sizes (the busiest holds ~20% of the beacons, as a bad release would), half of
them with a cause (one version of one package fails); one run in eight is a success after a
failure. Then a server process per backend answers /suggest over a keep-alive connection for
(group, environment) pairs drawn with the same weights, and the client measures each round trip.

    python bench/suggest_scale.py [--quick] [--beacons N] [--envs N]
Bar: p99 <= 20 ms on both backends. psycopg comes from PyPI into the venv server_ingest.py makes.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import corp_error_agent  # noqa: E402
from _bulk import Population  # noqa: E402
from _common import PACKAGES, REPO, Client, environment, percentile, postgres, start, stop  # noqa: E402
from corp_error_server.app import parse_env  # noqa: E402
from corp_error_server.storage import Beacon  # noqa: E402

_GROUPS = 200


def _signature(group: int) -> str:
    return "KeyError: 'column_%d' @ etl.load_%d < etl.main" % (group, group % 7)


def populate(path: str, beacons: int, envs: int, seed: int = 0):
    """Store the population; return the group weights and, per group with a cause, its failing envs."""
    rng = random.Random(seed)
    population = Population(path, time.time())
    packages = []
    for index in range(envs):
        env = environment(rng, index, minors=2)
        packages.append(env["packages"])
        population.add_env(parse_env(env))
    weights = [1.0 / (g + 1) for g in range(_GROUPS)]  # Zipf: the first group ~17% of all beacons
    failing, working = {}, {}
    for group in range(0, _GROUPS, 2):
        cause = PACKAGES[group % len(PACKAGES)]
        failing[group] = [i for i, p in enumerate(packages) if p[cause] == "3.1"]
        working[group] = [i for i, p in enumerate(packages) if p[cause] != "3.1"]
    keys = [corp_error_agent.group_key(_signature(g)) for g in range(_GROUPS)]
    traces = [
        "Traceback (most recent call last):\n  File \"/srv/etl.py\", line 3, in load\n" + _signature(g).split(" @ ")[0]
        for g in range(_GROUPS)
    ]
    mentions = frozenset({"pandas"})
    groups = rng.choices(range(_GROUPS), weights, k=beacons)
    now = time.time()
    for i in range(beacons):
        group = groups[i]
        success = i % 8 == 0
        if group in failing:
            env_index = rng.choice(working[group] if success else failing[group])
            previous = rng.choice(failing[group])
        else:
            env_index, previous = rng.randrange(envs), rng.randrange(envs)
        population.add(
            Beacon(
                kind="success" if success else "error",
                env_hash="%012x" % env_index,
                script_id="s%05d" % rng.randrange(20000),
                group_key=None if success else keys[group],
                signature=None if success else _signature(group),
                trace=None if success else traces[group],
                ts=now,
                event_id="b%d" % i,
                script_name=None,
                agent=None,
                test=False,
                prev_env_hash="%012x" % previous if success else None,
                prev_group_key=keys[group] if success else None,
                mentions=mentions,
            )
        )
    population.close()
    return weights, failing


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far (Linux /proc)."""
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(db: str, queries: int, envs: int, weights, failing, python: str) -> Tuple[list, float]:
    """(latency in ms and whether it was a hint, per query; the server's CPU ms per query)."""
    proc, host, port = start(
        [python, "-m", "corp_error_server", "--port", "0", "--db", db], env=dict(os.environ, PYTHONPATH=REPO)
    )
    try:
        client = Client(host, port)
        rng = random.Random(1)
        latencies = []
        cpu = 0.0
        for i in range(queries + 50):
            if i == 50:  # the first answers warm the caches
                cpu = _cpu_seconds(proc.pid)
            group = rng.choices(range(_GROUPS), weights)[0]
            env_index = rng.choice(failing[group]) if group in failing else rng.randrange(envs)
            body = {"error_sig": _signature(group), "env_hash": "%012x" % env_index}
            started = time.perf_counter()
            status, payload = client.post("/suggest", body)
            elapsed = (time.perf_counter() - started) * 1000
            if status != 200:
                raise SystemExit("/suggest answered %d: %r" % (status, payload[:300]))
            if i >= 50:
                latencies.append((elapsed, b'"match": true' in payload))
        return latencies, (_cpu_seconds(proc.pid) - cpu) * 1000 / queries
    finally:
        stop(proc)


def _psycopg_python() -> str:
    """A Python that has psycopg: this one, or the bench venv of server_ingest.py (made if missing)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401

        return sys.executable
    except ImportError:
        from server_ingest import _bench_venv

        return _bench_venv()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k beacons over 5k environments, 300 queries")
    parser.add_argument("--beacons", type=int)
    parser.add_argument("--envs", type=int)
    args = parser.parse_args(argv)
    beacons, envs, queries = (100_000, 5_000, 300) if args.quick else (1_000_000, 20_000, 1000)
    beacons, envs = args.beacons or beacons, args.envs or envs
    load = os.getloadavg()
    figures: List[Tuple[str, Any]] = []
    loads: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "suggest.db")
        started = time.perf_counter()
        weights, failing = populate(db, beacons, envs)
        print(
            "populated %d beacons over %d environments, %d groups in %.0f s (%.0f MB); load average %.1f"
            % (beacons, envs, _GROUPS, time.perf_counter() - started, os.path.getsize(db) / 1e6, load[0]),
            flush=True,
        )
        figures.append(("SQLite", _measure(db, queries, envs, weights, failing, sys.executable)))
        loads["SQLite"] = os.getloadavg()[0]
        python = _psycopg_python()
        with postgres(tmp) as (url, reason):
            if reason:
                figures.append(("PostgreSQL", reason))
            else:
                started = time.perf_counter()
                subprocess.run(
                    [python, os.path.join(REPO, "bench", "_bulk.py"), db, url],
                    cwd=REPO,
                    check=True,
                    env=dict(os.environ, PYTHONPATH=REPO),
                )
                print("copied into PostgreSQL by COPY in %.0f s" % (time.perf_counter() - started), flush=True)
                figures.append(("PostgreSQL", _measure(url, queries, envs, weights, failing, python)))
                loads["PostgreSQL"] = os.getloadavg()[0]
    met = True
    for backend, measured in figures:
        if isinstance(measured, str):
            print("%-10s SKIPPED: %s" % (backend, measured))
            continue
        latencies, cpu = measured
        times = [t for t, _ in latencies]
        p99 = percentile(times, 99)
        met = met and p99 <= 20
        print(
            "%-10s /suggest over HTTP keep-alive, %d queries: p50 %.2f ms  p99 %.2f ms  max %.2f ms  "
            "(%d answered with a hint); server process CPU %.2f ms a query; load average %.1f"
            % (
                backend,
                len(times),
                percentile(times, 50),
                p99,
                max(times),
                sum(m for _, m in latencies),
                cpu,
                loads[backend],
            )
        )
    print("bar (p99 <= 20 ms on both backends): %s" % ("met" if met else "MISSED"))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Environment snapshot cost with many installed distributions: cold (nothing cached) and cached.

Builds a site-packages directory with N fake distributions (real *.dist-info directories with
METADATA, as pip leaves them), then, in fresh interpreters with that directory on sys.path, times
corp_error_agent.snapshot() with an empty cache dir (cold) and again with the cache written by the
first call (cached). Budgets: <= 10 ms cold, <= 1 ms cached with 300 distributions. What the
error path pays once whatever the environment (compiling the agent, importing json/hashlib/re)
is not the snapshot's: bench/failure.py measures the whole path.

    python bench/snapshot.py [--quick] [--dists 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import sys, time
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])
import corp_error_agent as agent
# What the whole error path pays once anyway (bench/failure.py measures it end to end): compiling
# the agent, the modules it shares with signature and transport, and the scrubbing patterns.
agent._load()
import json, hashlib, re, platform
agent.scrub("")
started = time.perf_counter()
env = agent.snapshot(sys.argv[3])
print((time.perf_counter() - started) * 1e3, len(env["packages"]))
"""


def make_site(path: str, count: int) -> None:
    os.makedirs(path)
    for i in range(count):
        name = "package_%03d" % i
        info = os.path.join(path, "%s-1.%d.0.dist-info" % (name, i))
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write("Metadata-Version: 2.1\nName: %s\nVersion: 1.%d.0\n" % (name.replace("_", "-"), i))
        os.makedirs(os.path.join(path, name))


def probe(site: str, cache: str):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, ROOT, site, cache], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dists", type=int, default=300)
    args = parser.parse_args()
    runs = 5 if args.quick else 30
    with tempfile.TemporaryDirectory(prefix="cea-snapshot-") as workdir:
        site = os.path.join(workdir, "site-packages")
        make_site(site, args.dists)
        cold, cached = [], []
        for run in range(runs):
            cache = os.path.join(workdir, "cache-%d" % run)
            os.makedirs(cache)
            ms, found = probe(site, cache)
            cold.append(ms)
            cached.append(probe(site, cache)[0])
        print(
            "snapshot of %d distributions (%d found on sys.path), median of %d fresh interpreters:"
            % (args.dists, found, runs)
        )
        print("  cold   %.2f ms   (budget 10 ms)" % statistics.median(cold))
        print("  cached %.2f ms   (budget 1 ms)" % statistics.median(cached))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Backend faults x host scripts: host-behaviour changes and beacons generated / delivered / duplicated.

For each fault (refused, silent, slow, 500, 429, garbage, huge, reset, https->http, http->TLS,
untrusted TLS, unresolvable host) and each failing host script (main thread, thread, child process),
run the script with the agent against the fault, compare exit status/stdout/stderr with the agent
disabled, then `flush` to a recovered backend and count beacons by event_id (tests/reliability/faults.py).

    python bench/reliability.py [--quick]
--quick: CPython 3.11 only; otherwise every CPython 3.8-3.13 found under pyenv.
Bar: 0 host-behaviour changes; delivered == generated; 0 duplicated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "reliability")]

import faults  # noqa: E402
import support  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPython 3.11 only")
    args = parser.parse_args(argv)
    found = support.find_interpreters()
    versions = ["3.11"] if args.quick else [v for v in support.VERSIONS if isinstance(found[v], Path)]
    totals = {"cells": 0, "changed": 0, "generated": 0, "delivered": 0, "duplicated": 0}
    bad = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if faults.make_cert(tmp / "tls") is None:
            print("no openssl CLI: TLS faults skipped")
        for version in versions:
            if not isinstance(found[version], Path):
                print("CPython %s: %s" % (version, found[version]))
                continue
            venv = support.make_venv(found[version], tmp / ("venv-" + version), version, "copy")
            scripts = faults.write_scripts(tmp / ("scripts-" + version))
            bases = {
                n: faults.baseline(venv.python, p, support.Sandbox(tmp / ("base-%s-%s" % (version, n))))
                for n, p in scripts.items()
            }
            jobs = [
                (f, n)
                for f in faults.FAULTS
                for n in scripts
                if f not in faults.TLS_FAULTS or (tmp / "tls" / "cert.pem").exists()
            ]
            cell_args = [
                (venv.python, f, scripts[n], bases[n], tmp / ("cell-%s-%s-%s" % (version, f, n))) for f, n in jobs
            ]
            with ThreadPoolExecutor(4) as pool:
                cells = list(pool.map(lambda args: faults.run_cell(*args), cell_args))
            for cell in cells:
                totals["cells"] += 1
                totals["changed"] += not cell["same"]
                for key in ("generated", "delivered", "duplicated"):
                    totals[key] += cell[key]
                if not faults.cell_ok(cell):
                    bad.append(
                        "%s %s x %s: same=%s generated=%d delivered=%d duplicated=%d left=%s"
                        % (
                            version,
                            cell["fault"],
                            cell["script"],
                            cell["same"],
                            cell["generated"],
                            cell["delivered"],
                            cell["duplicated"],
                            cell["left_in_spool"],
                        )
                    )
    print("interpreters: %s" % ", ".join(versions))
    print(
        "faults x scripts tried: %d (%d faults x %d scripts x %d interpreter(s))"
        % (totals["cells"], len(faults.FAULTS), len(faults.SCRIPTS), len(versions))
    )
    print("host-behaviour changes: %d" % totals["changed"])
    print(
        "beacons generated / delivered / duplicated: %d / %d / %d"
        % (totals["generated"], totals["delivered"], totals["duplicated"])
    )
    print("wall time: %.1f s" % (time.monotonic() - started))
    for line in bad:
        print("  NOT OK: " + line)
    ok = totals["changed"] == 0 and totals["generated"] == totals["delivered"] and totals["duplicated"] == 0
    print("bar (0 changes, N / N / 0): %s" % ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Dashboard render time: the error list with 10k groups, and one group with 100k beacons.

The store is populated in bulk (bench/_bulk.py: the rows storage derives) with 10k error groups over 200
environments of 30 packages (a tenth of them with an observed fix), plus one group with 100k error
beacons and 2k successes over the same environments. Then the WSGI application answers page requests
in this process -- queries, engine and HTML, without the socket -- and each answer is timed.
Each page is timed as shown again (the engine's answers kept since the groups did not move), and
with every group on it changed since: a run posted to each through /beacon, after which the
server computes their suggestions ahead, off the request path (corp_error_server/ahead.py), and the
page is asked for once that thread is idle; and as when that thread has not got to them yet (every
kept answer dropped: the page computes them all). For reference, the JSON list (/api/errors: the
same queries and engine, no HTML) is timed too.

    python bench/dashboard.py [--quick]
Bar: p99 <= 100 ms for both pages. Wall time and the CPU time of this process are both printed: on
a shared machine the wall time includes waiting for a core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time
from typing import Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import corp_error_agent  # noqa: E402
from _bulk import Population  # noqa: E402
from _common import environment, percentile  # noqa: E402
from corp_error_server import create_app  # noqa: E402
from corp_error_server.app import parse_env  # noqa: E402
from corp_error_server.storage import Beacon, SQLiteStorage  # noqa: E402

BAR_MS = 100.0
_ENVS = 200


def _beacon(
    kind: str, env: str, script: str, sig: str = "", prev_env: str = "", prev_sig: str = "", host: str = ""
) -> Beacon:
    key = corp_error_agent.group_key(sig) if sig else None
    prev = corp_error_agent.group_key(prev_sig) if prev_sig else None
    trace = "Traceback (most recent call last):\n  File \"/srv/app/etl.py\", line 12, in load\n" + sig.split(" @ ")[0]
    return Beacon(
        kind=kind,
        env_hash=env,
        script_id=script,
        group_key=key,
        signature=sig or None,
        trace=trace if sig else None,
        ts=time.time(),
        event_id=None,
        script_name=script + ".py",
        agent="corp-error-agent/0.5.0",
        test=False,
        prev_env_hash=prev_env or None,
        prev_group_key=prev,
        mentions=frozenset(),
        handled=False,
        host=host or None,
    )


def populate(path: str, groups: int, big: int) -> int:
    """Store the population; return the id of the big group."""
    rng = random.Random(0)
    population = Population(path, time.time())
    envs = [parse_env(environment(rng, i)) for i in range(_ENVS)]
    for env in envs:
        population.add_env(env)
    for g in range(groups):
        sig = "KeyError: 'column_%05d' @ etl.load < etl.main" % g
        env = envs[g % _ENVS].env_hash
        population.add(_beacon("error", env, "s%05d" % g, sig, host="host-%03d" % (g % 300)))
        if g % 10 == 0:
            population.add(
                _beacon(
                    "success",
                    envs[(g + 1) % _ENVS].env_hash,
                    "s%05d" % g,
                    prev_env=env,
                    prev_sig=sig,
                    host="host-%03d" % ((g + 1) % 300),
                )
            )
    big_sig = "AttributeError: module 'tinylib' has no attribute 'frobnicate' @ report.main"
    for i in range(big):
        population.add(
            _beacon(
                "error", envs[i % (_ENVS // 2)].env_hash, "big%02d" % (i % 40), big_sig, host="host-%03d" % (i % 300)
            )
        )
        if i % 50 == 0:
            population.add(
                _beacon(
                    "success",
                    envs[_ENVS // 2 + i % (_ENVS // 2)].env_hash,
                    "big%02d" % (i % 40),
                    prev_env=envs[i % (_ENVS // 2)].env_hash,
                    prev_sig=big_sig,
                )
            )
    population.close()
    storage = SQLiteStorage(path)
    big_id = storage.group_id_of(corp_error_agent.group_key(big_sig))
    storage.close()
    assert big_id is not None
    return big_id


def _get(app, path: str) -> Tuple[float, float]:
    """One request through the WSGI app: (wall, CPU) time in ms (the page must come back 200)."""
    route, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": route,
        "QUERY_STRING": query,
        "wsgi.input": io.BytesIO(),
        "HTTP_ACCEPT": "text/html",
        "wsgi.errors": sys.stderr,
    }
    status = []
    started, cpu = time.perf_counter(), time.process_time()
    body = b"".join(app(environ, lambda s, h: status.append(s)))
    elapsed = ((time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000)
    assert status[0].startswith("200") and body, (path, status)
    return elapsed


def measure(app, paths, rounds: int, cold: bool = False):
    """Times of ``rounds`` requests; ``cold``: every group's suggestion computed again, as when every
    group on the page received runs since it was last shown."""
    for path in paths:
        _get(app, path)  # warm the page cache and the features cache
    times = []
    for i in range(rounds):
        if cold:
            app._states.clear()
            app._suggested.clear()
            app._compared.clear()
        times.append(_get(app, paths[i % len(paths)]))
    return times


def _call(app, method: str, path: str, body: bytes = b"") -> bytes:
    route, _, query = path.partition("?")
    status = []
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": route,
        "QUERY_STRING": query,
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "wsgi.errors": sys.stderr,
    }
    answer = b"".join(app(environ, lambda s, h: status.append(s)))
    assert status[0].startswith(("200", "204")), (path, status, answer[:300])
    return answer


def _listed(app, path: str) -> list:
    """The groups a list page shows, by the JSON API's same query."""
    return json.loads(_call(app, "GET", "/api/errors?" + path.partition("?")[2]))["groups"]


def measure_ahead(app, paths, rounds: int, env_hash: str):
    """Times of ``rounds`` requests, each after every group on the page received a run through
    /beacon and the server's ahead thread went idle again (it computed what the page shows)."""
    for path in paths:
        _get(app, path)
    times = []
    for i in range(rounds):
        path = paths[i % len(paths)]
        shown = _listed(app, path)
        for group in shown:  # the exception line alone: the key the population gave the group
            body = {
                "kind": "error",
                "env_hash": env_hash,
                "script_id": "changed",
                "ts": time.time(),
                "error_sig": group["signature"].split(" @ ")[0],
            }
            _call(app, "POST", "/beacon", json.dumps(body).encode())
        if not app._ahead.wait_idle(120):
            raise SystemExit("the ahead thread did not catch up within 2 minutes")
        times.append(_get(app, path))
        changed = {g["id"] for g in shown}
        assert {g["id"] for g in _listed(app, path)} == changed, "the page shows groups that did not change"
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k groups, 10k beacons in the big group, fewer rounds")
    args = parser.parse_args()
    groups, big, rounds = (1000, 10_000, 60) if args.quick else (10_000, 100_000, 300)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        started = time.perf_counter()
        big_id = populate(path, groups, big)
        print("populated %d groups + one of %d beacons in %.0f s" % (groups, big, time.perf_counter() - started))
        app = create_app(path, storage=SQLiteStorage(path, synchronous="OFF"))
        lists = [
            "/",
            "/?sort=count",
            "/?offset=5000" if not args.quick else "/?offset=500",
            "/?package=requests==2.1",
            "/?python=3.11",
            "/?q=column_00",
        ]
        # groups that receive a run move to the top of the last-seen order: a page further down is
        # one of groups in first-seen order (the same for every group here), which stays put
        stable = [p.replace("/?offset=", "/?sort=first_seen&offset=") for p in lists]
        results = {
            "list page (%d groups)" % groups: measure(app, lists, rounds),
            "list, changed, not yet ahead": measure(app, lists, rounds, cold=True),
            # last of the list pages: it posts runs, the others time the population as it was stored
            "list page, all changed": measure_ahead(app, stable, rounds // 3, "%012x" % 0),
            "JSON list, same queries": measure(app, ["/api/errors"], rounds),
            "group page (%d beacons)" % big: measure(app, ["/group/%d" % big_id], rounds),
            "group page, changed": measure(app, ["/group/%d" % big_id], rounds, cold=True),
        }
        app.close()
    ok = True
    print("load average (1 min) during the run: %.1f on %d CPUs" % (os.getloadavg()[0], os.cpu_count() or 1))
    for name, times in results.items():
        wall, cpu = [t[0] for t in times], [t[1] for t in times]
        p99 = percentile(wall, 99)
        bar = (
            ""
            if name.startswith("JSON")
            else "  (bar %.0f ms: %s, %.2fx of it)" % (BAR_MS, "ok" if p99 <= BAR_MS else "MISSED", p99 / BAR_MS)
        )
        ok = ok and (p99 <= BAR_MS or name.startswith("JSON"))
        print(
            "%-28s p50 %6.1f ms  p99 %6.1f ms   CPU p50 %6.1f ms  p99 %6.1f ms%s"
            % (name, percentile(wall, 50), p99, percentile(cpu, 50), percentile(cpu, 99), bar)
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

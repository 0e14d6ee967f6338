"""Ingest throughput under wrk: beacons/s acknowledged durably, next to bare servers, same run.

wrk (a C load generator, keep-alive connections) posts real error beacons, each with its own
event_id, for a fixed time per run, over 1/4/16/64 connections, to:

  bare http.server      the standard library's ThreadingHTTPServer answering a constant
  bare WSGI, gunicorn   a WSGI app answering a constant, gunicorn -w 4 --threads 16
  embedded, SQLite      `corp-error-server` (SQLite WAL, synchronous=FULL: a 2xx is on disk)
  gunicorn -w 4, SQLite `gunicorn -w 4 --threads 16 corp_error_server:app`, one SQLite file
  gunicorn -w 4, PG     the same on a throw-away PostgreSQL cluster (skipped, with the reason, when
                        PostgreSQL or the server's PostgreSQL storage is not there)

Then every acknowledged (2xx) beacon is looked for in the database: acknowledged vs stored.
gunicorn (and psycopg) come from PyPI into a venv under .cache/ that this script makes.

A 2xx waits for a flush to disk, and a keep-alive connection has one request in flight, so N
connections get at most N beacons per flush: the run times a durable one-row commit where the
databases are and prints that ceiling next to the figures (a disk shared with busy neighbours can
take milliseconds per flush where an idle one takes a fraction of one).

    python bench/server_ingest.py [--quick] [--seconds N]
Bar: the embedded server at 16 connections >= 50% of the bare http.server; its throughput not
falling from 1 to 64 connections (each step >= 90% of the one before); 0 acknowledged lost.
wrk: `apt-get install -y wrk` (Debian/Ubuntu), `brew install wrk` (macOS).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, Client, environment, free_port, postgres, start, stop  # noqa: E402

CONNECTIONS = (1, 4, 16, 64)
_ENVS = 200
_BENCH_VENV_REQS = ["gunicorn>=22", "psycopg[binary]>=3.1", "psycopg_pool>=3.2"]

_BARE_HTTP = r'''
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
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
server.daemon_threads = True
sys.stderr.write("listening on http://127.0.0.1:%d\n" % server.server_address[1]); sys.stderr.flush()
server.serve_forever()
'''

_BARE_WSGI = r'''
def app(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    body = b'{"ok": true}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''

# Each wrk thread numbers its own beacons; the run tag keeps event ids unique across runs.
_LUA = r'''
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local trace = 'Traceback (most recent call last):\n  File \\"/srv/jobs/etl.py\\", line 42, in main\n' ..
  '    load()\n  File \\"/venv/lib/python3.11/site-packages/packaging/version.py\\", line 7, in parse\n' ..
  '    raise InvalidVersion(version)\n'
trace = trace:gsub('\n', '\\n')
local tables = "abcdefghij"
function request()
  counter = counter + 1
  local t = tables:sub(counter % 10 + 1, counter % 10 + 1)
  local body = '{"kind": "error", "env_hash": "' .. string.format("%012x", (counter * 7 + tid) % ENVS) ..
    '", "script_id": "' .. string.format("s%05d", counter % 500) .. '", "ts": 1700000000.0, "trace": "' ..
    trace .. 'ValueError: bad record in table ' .. t .. '", "error_sig": "ValueError: bad record in table ' ..
    t .. ' @ etl.load < etl.main", "event_id": "' .. string.format("TAG-%02d-%d", tid, counter) ..
    '", "agent": "corp-error-agent/0.5.0"}'
  return wrk.format("POST", "/beacon", {["Content-Type"] = "application/json"}, body)
end
'''


class Target:
    def __init__(self, name: str, kind: str, db: Optional[str] = None) -> None:
        self.name, self.kind, self.db = name, kind, db
        self.rates: Dict[int, float] = {}
        self.acked = 0
        self.stored: Optional[int] = None
        self.tags: List[str] = []
        self.skipped = ""
        self.batches: Dict[int, float] = {}  # connections -> writes per commit (the embedded server)


def _wrk(url: str, connections: int, seconds: float, script: str) -> Tuple[int, int, float]:
    """(requests answered, answers that were not 2xx/3xx, seconds) of one wrk run."""
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(connections, 2)),
            "-c",
            str(connections),
            "-d",
            "%ds" % seconds,
            "--timeout",
            "10s",
            "-s",
            script,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    answered = int(re.search(r"(\d+) requests in ([\d.]+)(m?s)", out).group(1))
    elapsed = re.search(r"requests in ([\d.]+)(m?s)", out)
    duration = float(elapsed.group(1)) / (1000 if elapsed.group(2) == "ms" else 1)
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return answered, int(failed.group(1)) if failed else 0, duration


def _commit_ms(directory: str, warm: int = 150, samples: int = 100) -> float:
    """Median milliseconds of a durable one-row commit (WAL, synchronous=FULL) in ``directory``, once the
    WAL has grown to its steady size (a flush that grows a file flushes the file system's journal too;
    checkpoints every 50 pages get the probe there within its warm-up)."""
    path = os.path.join(directory, "commit-probe.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA wal_autocheckpoint=50")
        conn.execute("CREATE TABLE t(x)")
        times = []
        for index in range(warm + samples):
            started = time.perf_counter()
            conn.execute("INSERT INTO t VALUES(?)", (index,))
            times.append(time.perf_counter() - started)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
    return 1000 * sorted(times[warm:])[samples // 2]


def _bench_venv() -> str:
    """A venv with gunicorn and psycopg (PyPI), cached under .cache/ by what is in it."""
    cache = os.environ.get("CEA_CACHE") or os.path.join(REPO, ".cache")
    venv = os.path.join(cache, "bench-venv-py%d%d" % sys.version_info[:2])
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".requirements")
    wanted = " ".join(_BENCH_VENV_REQS)
    if not os.path.exists(stamp) or open(stamp).read() != wanted:
        print("making %s (gunicorn, psycopg from PyPI) ..." % venv, flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"] + _BENCH_VENV_REQS, check=True
        )
        with open(stamp, "w") as handle:
            handle.write(wanted)
    return python


def _start_gunicorn(
    python: str, app: str, env: Dict[str, str], chdir: str, log: str
) -> Tuple[subprocess.Popen, str, int]:
    port = free_port()
    with open(log, "a") as errors:
        proc = subprocess.Popen(
            [
                python,
                "-m",
                "gunicorn",
                "-w",
                "4",
                "--threads",
                "16",
                "-b",
                "127.0.0.1:%d" % port,
                "--chdir",
                chdir,
                "--graceful-timeout",
                "5",
                "--log-level",
                "warning",
                app,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, "127.0.0.1", port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("gunicorn did not start:\n" + open(log).read()[-2000:]) from None
            time.sleep(0.05)  # polling a bounded start-up


def _stored_sqlite(db: str, tags: List[str]) -> int:
    with sqlite3.connect(db) as conn:
        return sum(
            conn.execute("SELECT COUNT(*) FROM beacons WHERE event_id LIKE ?", (tag + "-%",)).fetchone()[0]
            for tag in tags
        )


def _stored_pg(python: str, url: str, tags: List[str]) -> int:
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1]) as c:\n"
        "    print(sum(c.execute(\"SELECT COUNT(*) FROM beacons WHERE event_id LIKE %s\", (t + '-%',))"
        ".fetchone()[0] for t in sys.argv[2:]))\n"
    )
    return int(subprocess.run([python, "-c", code, url] + tags, capture_output=True, text=True, check=True).stdout)


def _drive(target: Target, host: str, port: int, connections, seconds: float, tmp: str) -> None:
    if target.kind != "bare":
        client, rng = Client(host, port), random.Random(0)
        for index in range(_ENVS):
            status, payload = client.post("/env", environment(rng, index))
            if status not in (200, 201):
                raise SystemExit("%s: /env answered %d: %r" % (target.name, status, payload[:200]))
    # a warm-up, not timed (its beacons are looked for all the same): a new database's WAL grows on its
    # first commits, and a flush that grows a file also flushes the file system's journal, several
    # times slower than the steady state's flush over the WAL's earlier frames
    _run(target, host, port, max(connections), min(2.0, seconds), tmp)
    for n in connections:
        before = _ingest(host, port) if target.name.startswith("embedded") else {}
        target.rates[n] = _run(target, host, port, n, seconds, tmp)
        if before:
            after = _ingest(host, port)
            target.batches[n] = (after["writes"] - before["writes"]) / max(
                1, after["transactions"] - before["transactions"]
            )


def _run(target: Target, host: str, port: int, connections: int, seconds: float, tmp: str) -> float:
    """One wrk run of beacons tagged for it: the acknowledged per second."""
    tag = "%s%d%x" % (re.sub(r"\W", "", target.name)[:12], connections, int(time.time() * 1000) % 0xFFFFFF)
    script = os.path.join(tmp, "%s.lua" % tag)
    with open(script, "w") as handle:
        handle.write(_LUA.replace("TAG", tag).replace("ENVS", str(_ENVS)))
    answered, failed, duration = _wrk("http://%s:%d/beacon" % (host, port), connections, seconds, script)
    target.acked += answered - failed
    target.tags.append(tag)
    return (answered - failed) / duration


def _ingest(host: str, port: int) -> Dict[str, int]:
    """/healthz's ingest figures (per process: under gunicorn, of whichever worker answers)."""
    connection = socket.create_connection((host, port), timeout=30)
    connection.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    answer = b"".join(iter(lambda: connection.recv(65536), b""))
    connection.close()
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["ingest"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per run, 4 and 16 connections")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run (default 8, --quick 2)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print(
            "server_ingest: wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu) or "
            "`brew install wrk` (macOS)",
            file=sys.stderr,
        )
        return 2
    seconds = args.seconds or (2 if args.quick else 8)
    connections = (4, 16) if args.quick else CONNECTIONS
    python = _bench_venv()
    load = os.getloadavg()
    targets: List[Target] = []
    with tempfile.TemporaryDirectory() as tmp:
        flush = [_commit_ms(tmp)]
        with open(os.path.join(tmp, "bare_wsgi.py"), "w") as handle:
            handle.write(_BARE_WSGI)
        runs = [
            ("bare http.server", "bare"),
            ("bare WSGI, gunicorn -w 4", "bare"),
            ("embedded, SQLite", "ours"),
            ("gunicorn -w 4, SQLite", "ours"),
            ("gunicorn -w 4, PostgreSQL", "ours"),
        ]
        with postgres(tmp) as (pg_url, pg_reason):
            for name, kind in runs:
                target = Target(name, kind, os.path.join(tmp, re.sub(r"\W", "", name) + ".db"))
                targets.append(target)
                env = dict(os.environ, PYTHONPATH=REPO, CORP_ERROR_SERVER_DB=target.db or "")
                env.pop("CORP_ERROR_SERVER_TOKEN", None)
                log = os.path.join(tmp, "gunicorn.log")
                if name == "bare http.server":
                    proc, host, port = start([sys.executable, "-c", _BARE_HTTP])
                elif name.startswith("bare WSGI"):
                    proc, host, port = _start_gunicorn(python, "bare_wsgi:app", env, tmp, log)
                elif name.startswith("embedded"):
                    proc, host, port = start(
                        [sys.executable, "-m", "corp_error_server", "--port", "0", "--db", target.db], env=env
                    )
                elif name.endswith("SQLite"):
                    proc, host, port = _start_gunicorn(python, "corp_error_server:app", env, REPO, log)
                else:
                    reason = pg_reason or _pg_storage_missing(python, pg_url, env)
                    if reason:
                        target.skipped = reason
                        continue
                    target.db = pg_url
                    env["CORP_ERROR_SERVER_DB"] = pg_url
                    proc, host, port = _start_gunicorn(python, "corp_error_server:app", env, REPO, log)
                try:
                    _drive(target, host, port, connections, seconds, tmp)
                finally:
                    stop(proc)
                if kind == "ours":
                    target.stored = (
                        _stored_pg(python, pg_url, target.tags)
                        if target.db == pg_url
                        else _stored_sqlite(target.db, target.tags)
                    )
        flush.append(_commit_ms(tmp))
    return _report(targets, connections, seconds, load, flush)


def _pg_storage_missing(python: str, url: str, env: Dict[str, str]) -> str:
    """Why the server cannot store into PostgreSQL here, or "" when it can."""
    check = subprocess.run(
        [
            python,
            "-c",
            "import sys; from corp_error_server import create_app; "
            "storage = create_app(sys.argv[1]).storage; storage.close(); "
            "sys.exit('this server stores into SQLite only' if 'SQLite' in type(storage).__name__ "
            "else 0)",
            url,
        ],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    return (
        ""
        if check.returncode == 0
        else "the server cannot store into %s: %s" % (url, (check.stderr.strip().splitlines() or ["?"])[-1][:200])
    )


def _report(targets: List[Target], connections, seconds: float, load, commit_ms: List[float]) -> int:
    print(
        "wrk, %g s per run, keep-alive, error beacons with unique event ids over %d environments; "
        "load average before: %.1f %.1f %.1f, after: %.1f %.1f %.1f on %d CPUs"
        % (seconds, _ENVS, *load, *os.getloadavg(), os.cpu_count() or 0)
    )
    slowest = max(commit_ms)
    print(
        "disk: a durable one-row SQLite commit takes %s ms (median, before / after the runs); a 2xx waits for a "
        "commit, so N connections get at most N / %.2f ms beacons/s:"
        % (" / ".join("%.2f" % ms for ms in commit_ms), slowest)
    )
    print("%-28s" % "durable ceiling" + "".join("%10.0f" % (1000 * n / slowest) for n in connections))
    print("%-28s" % "beacons/s (req/s for bare)" + "".join("%10s" % ("%d conn" % n) for n in connections))
    for target in targets:
        if target.skipped:
            print("%-28s SKIPPED: %s" % (target.name, target.skipped))
            continue
        print("%-28s" % target.name + "".join("%10.0f" % target.rates[n] for n in connections))
    bare, ours = targets[0], targets[2]
    print(
        "%-28s" % "embedded / bare http.server"
        + "".join("%9.0f%%" % (100 * ours.rates[n] / bare.rates[n]) for n in connections)
    )
    lost_any = False
    for target in targets:
        if target.stored is not None:
            lost = max(0, target.acked - target.stored)
            lost_any = lost_any or lost > 0
            print(
                "%-28s acknowledged %d, stored %d, acknowledged but lost %d%s"
                % (
                    target.name,
                    target.acked,
                    target.stored,
                    lost,
                    "; writes per commit " + " / ".join("%.1f" % target.batches[n] for n in connections)
                    if target.batches
                    else "",
                )
            )
    share = ours.rates[16] / bare.rates[16] if 16 in ours.rates else 0.0
    steps = [ours.rates[b] >= 0.9 * ours.rates[a] for a, b in zip(connections, connections[1:])]
    print(
        "bar: embedded at 16 connections %.0f%% of bare (>= 50%%): %s; not falling 1->64: %s; 0 lost: %s"
        % (
            100 * share,
            "met" if share >= 0.5 else "MISSED",
            "met" if all(steps) else "MISSED",
            "met" if not lost_any else "MISSED",
        )
    )
    return 0 if share >= 0.5 and all(steps) and not lost_any else 1


if __name__ == "__main__":
    sys.exit(main())

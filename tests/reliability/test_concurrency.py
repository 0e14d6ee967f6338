"""Fifty processes failing at once with the backend down, then up: all fifty beacons delivered once,
and no file in the spool is ever torn (every *.json parses whenever we look)."""

from __future__ import annotations

import json
import subprocess
import threading
import time

from support import PROC_TIMEOUT, RecordingBackend, closed_port_url, run

N = 50


class SpoolWatcher(threading.Thread):
    """Reads every *.json in the spool over and over until stopped; records any that does not parse."""

    def __init__(self, spool):
        super().__init__(daemon=True)
        self.spool = spool
        self.stop_event = threading.Event()
        self.torn = []
        self.reads = 0

    def run(self):
        while not self.stop_event.is_set():
            if not self.spool.is_dir():
                self.stop_event.wait(0.005)
                continue
            for path in list(self.spool.glob("*.json")):
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue  # claimed or delivered between listdir and open
                try:
                    json.loads(data.decode("utf-8"))["beacon"]["event_id"]
                    self.reads += 1
                except (ValueError, KeyError, TypeError):
                    self.torn.append((path.name, data[:200]))


def _popen_all(python, script, env, cwd, count):
    return [
        subprocess.Popen(
            [str(python), str(script), str(i)],
            env=env,
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(count)
    ]


def _wait_all(procs):
    deadline = time.monotonic() + PROC_TIMEOUT * 2
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        results.append((proc.returncode, err))
    return results


def test_fifty_failing_processes_then_concurrent_flushes(venv311, sandbox):
    script = sandbox.script("burst.py", "import sys\nraise ValueError('boom-burst-%s' % sys.argv[1])\n")
    watcher = SpoolWatcher(sandbox.cache / "spool")
    watcher.start()
    try:
        results = _wait_all(_popen_all(venv311.python, script, sandbox.env(closed_port_url()), sandbox.work, N))
        assert all(rc == 1 for rc, _ in results), results[:3]
        assert all(err.rstrip().endswith(b"ValueError: boom-burst-%d" % i) for i, (_, err) in enumerate(results))
        spooled = {json.loads(p.read_text())["beacon"]["event_id"] for p in sandbox.spool()}
        assert len(spooled) == N
        with RecordingBackend() as backend:
            flushes = [
                subprocess.Popen(
                    [str(venv311.python), "-m", "corp_error_agent", "flush", "--json"],
                    env=sandbox.env(backend.url),
                    cwd=str(sandbox.work),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                )
                for _ in range(4)
            ]
            outs = [json.loads(p.communicate(timeout=PROC_TIMEOUT)[0]) for p in flushes]
            backend.settle()
            ids = [b["event_id"] for b in backend.bodies("/beacon")]
    finally:
        watcher.stop_event.set()
        watcher.join(timeout=30)
    assert watcher.torn == [], watcher.torn[:3]
    assert watcher.reads > 0
    assert sum(o["delivered"] for o in outs) == N, outs
    assert sorted(ids) == sorted(spooled), "duplicated: %s" % sorted({i for i in ids if ids.count(i) > 1})
    assert sandbox.spool() == [] and not list((sandbox.cache / "spool").iterdir())


def test_fifty_failing_processes_while_the_backend_comes_back(venv311, sandbox):
    """Half fail with the backend down, half with it up (they deliver the spool as they go): each
    beacon still arrives exactly once."""
    script = sandbox.script("burst.py", "import sys\nraise ValueError('boom-mixed-%s' % sys.argv[1])\n")
    down = _popen_all(venv311.python, script, sandbox.env(closed_port_url()), sandbox.work, N // 2)
    _wait_all(down)
    assert sandbox.reset_breakers() == 1
    with RecordingBackend() as backend:
        env = sandbox.env(backend.url, {"ERROR_AGENT_SUGGEST_TIMEOUT": "30"})
        results = _wait_all(_popen_all(venv311.python, script, env, sandbox.work, N // 2))
        assert all(rc == 1 for rc, _ in results)
        flush = run(
            venv311.python, ["-m", "corp_error_agent", "flush", "--json"], sandbox.env(backend.url), cwd=sandbox.work
        )
        assert json.loads(flush.stdout)["remaining"] == 0, flush.stdout
        backend.settle()
        ids = [b["event_id"] for b in backend.bodies("/beacon") if b.get("kind") == "error"]
    messages = {b["trace"].strip().rsplit(" ", 1)[-1] for b in backend.bodies("/beacon") if b.get("kind") == "error"}
    assert len(ids) == len(set(ids)) == N, sorted({i for i in ids if ids.count(i) > 1})
    assert len(messages) == N // 2  # each index ran twice: once down, once up

"""Storage under faults, with real server processes under load: PostgreSQL stopped and started again,
a server SIGKILLed, two servers on one PostgreSQL, concurrent purges. The invariant everywhere: a
beacon the server acknowledged (2xx) is stored."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

import support
from corp_error_server.storage import Beacon, Env, open_storage
from e2e.server_proc import ServerProcess
from pgsupport import db_rows

SIG = "ValueError: burst of a bad release @ app.main"
_THREADS = 6


class Load:
    """Threads posting error beacons with unique event ids over keep-alive connections to the given
    servers, round robin, until stopped; they record what was acknowledged and every status seen."""

    def __init__(self, urls: List[str], prefix: str = "b") -> None:
        self._urls = urls
        self._prefix = prefix
        self.acked: Set[str] = set()
        self.statuses: Dict[int, int] = {}
        self.retry_after: Set[Optional[str]] = set()
        self.failures = 0  # connections refused or dropped
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(_THREADS)]
        for thread in self._threads:
            thread.start()

    def _run(self, n: int) -> None:
        conn: Optional[http.client.HTTPConnection] = None
        i = 0
        while not self._stop.is_set():
            url = self._urls[(n + i) % len(self._urls)]
            host, port = url[len("http://") :].rsplit(":", 1)
            event_id = "%s%d-%d" % (self._prefix, n, i)
            body = json.dumps(
                {
                    "kind": "error",
                    "env_hash": "env%d" % (i % 3),
                    "script_id": "s%d" % n,
                    "ts": 1.7e9,
                    "error_sig": SIG,
                    "trace": "Traceback:\nValueError: burst",
                    "event_id": event_id,
                    "handled": i % 5 == 0,
                }
            )
            i += 1
            try:
                if conn is None or len(self._urls) > 1:
                    if conn is not None:
                        conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=30)
                conn.request("POST", "/beacon", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                with self._changed:
                    self.failures += 1
                    self._changed.notify_all()
                continue
            with self._changed:
                if 200 <= status < 300:
                    self.acked.add(event_id)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 503:
                    self.retry_after.add(response.getheader("Retry-After"))
                self._changed.notify_all()
        if conn is not None:
            conn.close()

    def wait_for(self, predicate, what: str, timeout: float = 120) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout=timeout):
                raise AssertionError("load: %s did not happen within %.0f s: %s" % (what, timeout, self.statuses))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def _stored(target: str) -> Set[str]:
    return {e for (e,) in db_rows(target, "SELECT event_id FROM beacons WHERE event_id IS NOT NULL")}


def _consistent(target: str) -> None:
    """The group's totals are what its beacons say."""
    ((errors, handled, stored, stored_handled),) = db_rows(
        target,
        "SELECT g.errors, g.handled, (SELECT COUNT(*) FROM beacons b WHERE b.group_id = g.id), "
        "(SELECT COUNT(*) FROM beacons b WHERE b.group_id = g.id AND b.handled = 1) FROM groups g",
    )
    assert (errors, handled) == (stored, stored_handled)


def test_postgresql_stopped_and_started_under_load(own_cluster):
    target = own_cluster.database()
    server = ServerProcess(target)
    load = Load([server.url])
    try:
        load.wait_for(lambda: len(load.acked) >= 200, "200 beacons acknowledged")
        own_cluster.stop("fast")
        acked_before = len(load.acked)
        load.wait_for(lambda: load.statuses.get(503, 0) >= _THREADS, "503s while PostgreSQL is down")
        own_cluster.start()
        load.wait_for(lambda: len(load.acked) >= acked_before + 200, "acknowledgements after the restart")
    finally:
        load.stop()
        server.stop()
    assert load.retry_after == {"1"}
    assert set(load.statuses) <= {200, 204, 503}, load.statuses
    assert load.failures == 0  # the server stayed up and answered every request
    assert load.acked <= _stored(target)
    _consistent(target)
    assert any("storage unavailable: PostgreSQL" in line for line in server.log)


def test_sigkill_of_a_server_under_load_loses_nothing_acknowledged(db_target):
    server = ServerProcess(db_target)
    load = Load([server.url])
    try:
        load.wait_for(lambda: len(load.acked) >= 300, "300 beacons acknowledged")
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        load.wait_for(lambda: load.failures >= _THREADS, "every client losing its connection")
    finally:
        load.stop()
    assert load.acked <= _stored(db_target)
    _consistent(db_target)
    again = ServerProcess(db_target)  # and the database opens and takes beacons after the crash
    try:
        (group,) = again.get("/api/errors")["groups"]
        assert group["count"] >= len(load.acked)
    finally:
        again.stop()


def test_two_servers_on_one_postgresql_behave_as_one(pg_cluster, tmp_path):
    target = pg_cluster.database()
    first, second = ServerProcess(target), ServerProcess(target)
    try:
        # the same event ids sent to both servers at once by two loads: each stored once
        loads = [Load([first.url, second.url], prefix="x"), Load([second.url, first.url], prefix="x")]
        for load in loads:
            load.wait_for(lambda load=load: len(load.acked) >= 150, "150 beacons acknowledged")
        for env in ("env0", "env1", "env2"):  # environments arrive while beacons of them keep coming
            status = _post(first.url if env != "env1" else second.url, "/env", _env_body(env))
            assert status in (200, 201), "".join(first.log[-30:] + second.log[-30:])
        for load in loads:
            acked = len(load.acked)
            load.wait_for(
                lambda load=load, acked=acked: len(load.acked) >= acked + 150, "more beacons after the environments"
            )
    finally:
        for load in loads:
            load.stop()
    try:
        acked = loads[0].acked | loads[1].acked
        stored = _stored(target)
        assert acked <= stored
        assert db_rows(target, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM beacons") == [(len(stored),) * 2]
        assert first.get("/api/errors") == second.get("/api/errors")
        (group,) = first.get("/api/errors")["groups"]
        assert group["count"] == len(stored)
        _consistent(target)
        # every beacon whose environment is known is counted, in whichever process either arrived
        assert db_rows(target, "SELECT COUNT(*) FROM beacons WHERE counted = 0") == [(0,)]
        assert group["failing_runs"] == len(stored)
        ((python_fails,),) = db_rows(
            target,
            "SELECT (SELECT SUM(fails) FROM counts WHERE feature = 'python') "
            "+ (SELECT COALESCE(SUM(fails), 0) FROM pending_counts)",
        )
        assert python_fails == len(stored)
    finally:
        first.stop()
        second.stop()


def _env_body(env_hash: str) -> dict:
    return {
        "env_hash": env_hash,
        "packages": ["six==1.16"],
        "python_ver": "3.11.7",
        "os_info": "Linux",
        "machine_arch": "x86_64",
    }


def _post(url: str, path: str, body: dict) -> int:
    host, port = url[len("http://") :].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_concurrent_purges_delete_each_beacon_once(db_target):
    storages = [open_storage(db_target) for _ in range(3)]
    storages[0].add_env(Env("e1", {"packages": {}}, {"python": "3.11", "pkg:a": "1"}))
    beacon = Beacon(
        kind="error",
        env_hash="e1",
        script_id="s1",
        group_key="valueerror: x",
        signature="ValueError: x",
        trace=None,
        ts=1.7e9,
        event_id=None,
        script_name=None,
        agent=None,
        test=False,
        prev_env_hash=None,
        prev_group_key=None,
        mentions=frozenset(),
    )
    storages[0].add_beacons([(beacon._replace(event_id="p%d" % i), None) for i in range(1500)])  # 2 batches
    deleted: List[int] = []
    barrier = threading.Barrier(len(storages))

    def purge(storage) -> None:
        barrier.wait()
        deleted.append(storage.purge(time.time() + 86400))

    threads = [threading.Thread(target=purge, args=(s,)) for s in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for storage in storages:
        storage.close()
    assert sum(deleted) == 1500
    assert db_rows(db_target, "SELECT COUNT(*) FROM beacons") == [(0,)]
    # counts taken out exactly once: none left over, none below zero
    assert db_rows(db_target, "SELECT COUNT(*) FROM counts") == [(0,)]
    assert db_rows(db_target, "SELECT fails, oks FROM groups") == [(0, 0)]


def test_pool_opened_after_fork(pg_cluster):
    storage = open_storage(pg_cluster.database())
    storage.add_env(Env("e1", {"packages": {}}, {"python": "3.11"}))  # the parent's pool is in use
    pid = os.fork()
    if pid == 0:  # the child uses the storage it inherited: it must open connections of its own
        try:
            storage.add_env(Env("e2", {"packages": {}}, {"python": "3.12"}))
            os._exit(0 if storage.env_features("e1") == {"python": "3.11"} else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    # the parent's connections survived the child
    assert storage.env_features("e2") == {"python": "3.12"}
    storage.add_env(Env("e3", {"packages": {}}, {"python": "3.13"}))
    storage.close()


def _children(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def test_gunicorn_with_four_workers_on_postgresql(pg_cluster, tmp_path):
    python = support.find_interpreters()["3.11"]
    if not isinstance(python, Path):
        pytest.skip("CPython 3.11 %s" % python)
    venv = support.package_venv(python, "3.11", ["gunicorn", "psycopg[binary]", "psycopg_pool"])
    target = pg_cluster.database()
    env = support.clean_env(
        {"PYTHONPATH": str(support.ROOT), "ERROR_AGENT_ENABLED": "0", "CORP_ERROR_SERVER_DB": target}
    )
    proc = subprocess.Popen(
        [str(venv.python), "-m", "gunicorn", "-w", "4", "-b", "127.0.0.1:0", "corp_error_server:app"],
        cwd=str(tmp_path),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: List[str] = []
    try:
        url = None
        for line in proc.stderr:
            log.append(line)
            if "Listening at: " in line:
                url = line.split("Listening at: ")[1].split()[0]
                break
        assert url, "".join(log)
        threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
        loads = [Load([url], prefix="g"), Load([url], prefix="g")]  # the same event ids, twice at once
        for load in loads:
            load.wait_for(lambda load=load: len(load.acked) >= 200, "200 beacons acknowledged")
        workers = _children(proc.pid)
        assert len(workers) == 4, workers
        os.kill(workers[0], signal.SIGKILL)  # gunicorn starts another; its clients reconnect
        for load in loads:
            acked = len(load.acked)
            load.wait_for(lambda load=load, acked=acked: len(load.acked) >= acked + 200, "beacons after the kill")
        for load in loads:
            load.stop()
        acked = loads[0].acked | loads[1].acked
        stored = _stored(target)
        assert acked <= stored
        assert db_rows(target, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM beacons") == [(len(stored),) * 2]
        _consistent(target)
        answers = {json.dumps(_get(url, "/api/errors"), sort_keys=True) for _ in range(8)}  # whichever worker
        assert len(answers) == 1
        (group,) = json.loads(answers.pop())["groups"]
        assert group["count"] == len(stored)
    finally:
        for load in loads:
            load.stop()
        proc.terminate()
        proc.wait(timeout=60)


def _get(url: str, path: str):
    host, port = url[len("http://") :].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _health(url: str):
    host, port = url[len("http://") :].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, response.getheader("Retry-After"), json.loads(response.read())
    finally:
        conn.close()


def test_healthz_says_503_while_postgresql_is_down(own_cluster):
    server = ServerProcess(own_cluster.database())
    try:
        assert _health(server.url)[0] == 200
        own_cluster.stop("fast")
        status, retry_after, body = _health(server.url)
        assert (status, retry_after) == (503, "1") and "storage unavailable" in body["error"]
        own_cluster.start()
        assert _health(server.url)[0] == 200
    finally:
        server.stop()


def test_gunicorn_started_with_postgresql_down_answers_503_then_serves(own_cluster, tmp_path):
    from gunicorn_support import Gunicorn

    target = own_cluster.database()
    own_cluster.stop("fast")
    server = Gunicorn(["--workers", "1"], {"CORP_ERROR_SERVER_DB": target}, tmp_path / "gunicorn.log")
    try:
        status, retry_after, body = _health(server.url)
        assert (status, retry_after) == (503, "1") and "storage unavailable" in body["error"]
        own_cluster.start()
        assert _health(server.url)[0] == 200
    finally:
        server.stop()

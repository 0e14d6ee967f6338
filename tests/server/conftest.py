"""A real corp-error-server process on a free loopback port, on each backend (``db_target``)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, db: str, *args: str) -> None:
        self.db = db
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("CORP_ERROR_SERVER_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corp_error_server", "--port", "0", "--db", str(self.db), *args],
            cwd=str(REPO),
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_for_address()

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line.startswith("listening on "):
                return line.split()[-1]
        self.stop()
        raise RuntimeError("server did not start: %s" % "".join(self.log))

    def request(
        self,
        method: str,
        path: str,
        body=None,
        *,
        raw: Optional[bytes] = None,
        token: Optional[str] = None,
        headers: Optional[dict] = None,
    ):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", "Bearer " + token)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        return status, (json.loads(payload) if payload else None)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=20)


@pytest.fixture
def server(db_target):
    srv = Server(db_target)
    yield srv
    srv.stop()


@pytest.fixture
def make_server(db_target):
    started = []

    def start(*args: str) -> Server:
        srv = Server(db_target, *args)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def env_body(env_hash: str, packages: dict, python: str = "3.11.7", **env_vars) -> dict:
    return {
        "env_hash": env_hash,
        "packages": ["%s==%s" % kv for kv in packages.items()],
        "python_ver": python,
        "os_info": "Linux-6.1.0-x86_64-with-glibc2.36",
        "machine_arch": "x86_64",
        "env_vars": env_vars or {"LANG": "C.UTF-8"},
    }


def error_beacon(env_hash: str, script_id: str, sig: str, **extra) -> dict:
    body = {
        "kind": "error",
        "env_hash": env_hash,
        "script_id": script_id,
        "ts": 1700000000.0,
        "trace": "Traceback (most recent call last):\n  File \"x.py\", line 1\n" + sig.split(" @ ")[0],
        "error_sig": sig,
    }
    body.update(extra)
    return body

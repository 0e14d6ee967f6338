"""Shared by the server benchmarks: start a server process, a keep-alive JSON client, populations."""
from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import threading
import time
from typing import List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ["requests", "urllib3", "idna", "certifi", "six", "attrs", "click", "jinja2", "markupsafe", "pyyaml",
            "numpy", "pandas", "pytz", "tzdata", "python-dateutil", "setuptools", "wheel", "pip", "packaging",
            "pyparsing", "charset-normalizer", "typing-extensions", "filelock", "colorama", "tqdm", "toml",
            "rich", "pygments", "cryptography", "cffi"]


def start(argv: List[str]) -> Tuple[subprocess.Popen, str, int]:
    """Start a server process that prints `listening on http://HOST:PORT` on stderr; (process, host, port)."""
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith("listening on http://"):
            host, port = line.split("http://", 1)[1].strip().rsplit(":", 1)
            # the request log goes on stderr: drain it so the server never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, host, int(port)
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


class Client:
    """One keep-alive HTTP/1.1 connection posting JSON."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=30)

    def post(self, path: str, body: dict) -> Tuple[int, bytes]:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, response.read()


def environment(rng: random.Random, index: int, n_packages: int = 30, minors: int = 5) -> dict:
    packages = {name: "%d.%d" % (rng.randint(1, 3), rng.randint(0, minors - 1)) for name in PACKAGES[:n_packages]}
    return {"env_hash": "%012x" % index, "packages": packages,
            "python_ver": rng.choice(["3.10.13", "3.11.7", "3.12.1"]), "os_info": "Linux-6.1.0-x86_64",
            "machine_arch": "x86_64", "python_impl": "CPython",
            "env_vars": {"LANG": rng.choice(["C.UTF-8", "C", "MISSING"]), "TZ": "MISSING"}}


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

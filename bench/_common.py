"""Shared by the server benchmarks: start a server process, a keep-alive JSON client, populations."""

from __future__ import annotations

import contextlib
import glob
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = [
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "six",
    "attrs",
    "click",
    "jinja2",
    "markupsafe",
    "pyyaml",
    "numpy",
    "pandas",
    "pytz",
    "tzdata",
    "python-dateutil",
    "setuptools",
    "wheel",
    "pip",
    "packaging",
    "pyparsing",
    "charset-normalizer",
    "typing-extensions",
    "filelock",
    "colorama",
    "tqdm",
    "toml",
    "rich",
    "pygments",
    "cryptography",
    "cffi",
]


def start(argv: List[str], env: Optional[Dict[str, str]] = None) -> Tuple[subprocess.Popen, str, int]:
    """Start a server process that prints `listening on http://HOST:PORT` on stderr; (process, host, port)."""
    proc = subprocess.Popen(
        argv, cwd=REPO, stderr=subprocess.PIPE, text=True, env=env or dict(os.environ, PYTHONPATH=REPO)
    )
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
    return {
        "env_hash": "%012x" % index,
        "packages": packages,
        "python_ver": rng.choice(["3.10.13", "3.11.7", "3.12.1"]),
        "os_info": "Linux-6.1.0-x86_64",
        "machine_arch": "x86_64",
        "python_impl": "CPython",
        "env_vars": {"LANG": rng.choice(["C.UTF-8", "C", "MISSING"]), "TZ": "MISSING"},
    }


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres(tmp: str) -> Iterator[Tuple[str, str]]:
    """A throw-away PostgreSQL cluster on a free port: (URL, "") or ("", why there is none).

    Debian's binaries; initdb and postgres refuse root, so they run as the postgres user then."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not bins:
        yield "", "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres; apt-get install -y postgresql)"
        return
    bindir = os.path.dirname(bins[-1])
    data = os.path.join(tmp, "pgdata")
    as_user: List[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(tmp, 0o755)
    os.makedirs(data)
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        as_user + [os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        as_user
        + [
            os.path.join(bindir, "postgres"),
            "-D",
            data,
            "-p",
            str(port),
            "-k",
            data,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [os.path.join(bindir, "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.1)  # polling a bounded start-up
        yield "postgresql://postgres@127.0.0.1:%d/postgres" % port, ""
    finally:
        proc.terminate()
        proc.wait(timeout=60)

"""Fault backends and the fault x script matrix, shared by tests/reliability and bench/reliability.py.

Everything is real: the faults are loopback servers (support.RecordingBackend in a fault mode, a
TLS-only listener with a certificate made by the openssl CLI, a port where nothing listens, a name
that cannot resolve), the host scripts run in real subprocesses, and "recovered" is a fresh
RecordingBackend that `python -m corp_error_agent flush` delivers to.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from support import RecordingBackend, Sandbox, closed_port_url, run

# Faults answered by a RecordingBackend fault mode, plus the ones made here.
BACKEND_FAULTS = ("silent", "slow", "500", "429", "garbage", "huge", "reset")
FAULTS = ("refused",) + BACKEND_FAULTS + ("https-to-http", "http-to-tls", "tls-untrusted", "dns")
# A fault server that answers /beacon with a complete 2xx took the beacon: it counts as delivered there.
ACCEPTING = ("garbage", "huge")
TLS_FAULTS = ("http-to-tls", "tls-untrusted")

CELL_TIMEOUT = float(os.environ.get("CEA_CELL_TIMEOUT", "60"))

SCRIPTS: Dict[str, str] = {
    "main": (
        "def load(path):\n"
        "    raise FileNotFoundError(2, 'No such file or directory', path)\n"
        "\n"
        "load('/srv/data/input-main.csv')\n"
    ),
    "thread": (
        "import threading\n"
        "\n"
        "def work():\n"
        "    raise RuntimeError('boom-in-thread')\n"
        "\n"
        "t = threading.Thread(target=work, name='worker')\n"
        "t.start()\n"
        "t.join()\n"
        "print('main thread finished')\n"
    ),
    "child": (
        "import subprocess, sys, os\n"
        "child = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'child_fails.py')\n"
        "rc = subprocess.call([sys.executable, child])\n"
        "print('child exited with', rc)\n"
        "sys.exit(rc)\n"
    ),
}
CHILD = "import sys\nsys.stdout.write('child running\\n')\nraise KeyError('boom-in-child')\n"


def write_scripts(directory: Path) -> Dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "child_fails.py").write_text(CHILD)
    paths = {}
    for name, source in SCRIPTS.items():
        paths[name] = directory / ("host_%s.py" % name)
        paths[name].write_text(source)
    return paths


###############################################################################
# TLS ##########################################################################
###############################################################################


def make_cert(directory: Path) -> Optional[tuple]:
    """(certfile, keyfile) of a self-signed cert for 127.0.0.1 made by the openssl CLI, or None."""
    openssl = shutil.which("openssl")
    if not openssl:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not cert.exists():
        directory.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            capture_output=True,
            timeout=60,
        )
        if proc.returncode != 0:
            return None
    return cert, key


def _read_request(conn) -> None:
    """Read one HTTP request whole (headers, then Content-Length bytes): answering and closing while
    the client still sends would make it see a reset instead of the answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while length and len(body) < int(length.group(1)):
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


class TLSListener:
    """Accepts TCP on 127.0.0.1, insists on a TLS handshake, answers HTTPS requests with 200 {}.

    A plain-HTTP client gets a failed handshake (a TLS alert and a close); a client that checks
    certificates refuses the self-signed one. Every accepted connection is handled in a thread."""

    def __init__(self, cert: Path, key: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                _read_request(tls)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()


@contextlib.contextmanager
def fault_backend(fault: str, tmp: Path) -> Iterator[tuple]:
    """(url, recording backend or None) for ``fault``; the servers stop on exit."""
    if fault == "refused":
        yield closed_port_url(), None
    elif fault == "dns":
        yield "http://nonexistent.invalid", None
    elif fault in BACKEND_FAULTS or fault == "https-to-http":
        backend = RecordingBackend()
        try:
            if fault in BACKEND_FAULTS:
                backend.set_fault(fault)
            url = backend.url.replace("http://", "https://") if fault == "https-to-http" else backend.url
            yield url, backend
        finally:
            backend.stop()
    elif fault in TLS_FAULTS:
        pair = make_cert(tmp / "tls")
        if pair is None:
            raise RuntimeError("no openssl CLI: cannot make a certificate")
        listener = TLSListener(*pair)
        try:
            scheme = "http" if fault == "http-to-tls" else "https"
            yield "%s://127.0.0.1:%d" % (scheme, listener.port), None
        finally:
            listener.stop()
    else:
        raise ValueError(fault)


###############################################################################
# The matrix ###################################################################
###############################################################################


def spool_ids(cache: Path) -> List[str]:
    """event_ids of every beacon in the spool, claimed ones included."""
    ids = []
    spool = cache / "spool"
    if spool.is_dir():
        for path in sorted(spool.iterdir()):
            if ".json" in path.name and not path.name.endswith(".tmp"):
                data = json.loads(path.read_text(encoding="utf-8"))
                ids.append(data["beacon"]["event_id"])
    return ids


def beacon_ids(backend: RecordingBackend) -> List[str]:
    return [b.get("event_id") for b in backend.bodies("/beacon") if isinstance(b, dict) and b.get("kind") == "error"]


def baseline(python: Path, script: Path, sandbox: Sandbox) -> subprocess.CompletedProcess:
    """The same script in the same venv with the agent disabled: what the host does on its own."""
    env = sandbox.env(closed_port_url(), {"ERROR_AGENT_ENABLED": "0"})
    return run(python, [script], env, cwd=script.parent, timeout=CELL_TIMEOUT)


def run_cell(
    python: Path, fault: str, script: Path, base: subprocess.CompletedProcess, tmp: Path, expected: int = 1
) -> dict:
    """Run ``script`` against ``fault``, then flush to a recovered backend, and account for every beacon.

    A beacon is delivered when a backend answered its POST with a 2xx status line: the recovered
    backend, or the fault server itself for ``garbage``/``huge`` (complete 200 answers with an
    unreadable body) and ``reset`` (a 200 status line, then a reset). After a reset the agent may
    fairly keep the beacon and send it again: the same event_id twice is one beacon to a server
    (it stores an event_id once), so that is not a duplicate. A duplicate is the same event_id
    received twice by the recovered backend, or by it after a complete 2xx answer of the fault server.
    """
    sandbox = Sandbox(tmp)
    extra = {"ERROR_AGENT_SUGGEST_TIMEOUT": "1"}
    with fault_backend(fault, tmp) as (url, fault_server):
        proc = run(python, [script], sandbox.env(url, extra), cwd=script.parent, timeout=CELL_TIMEOUT)
        at_fault = beacon_ids(fault_server) if fault_server is not None else []
    waiting = spool_ids(sandbox.cache)
    with RecordingBackend() as recovered:
        flush = run(
            python,
            ["-m", "corp_error_agent", "flush", "--json"],
            sandbox.env(recovered.url),
            cwd=sandbox.work,
            timeout=CELL_TIMEOUT,
        )
        recovered.settle()
        arrived = beacon_ids(recovered)
    accepted = set(at_fault) if fault in ACCEPTING + ("reset",) else set()
    delivered = accepted | set(arrived)
    duplicated = len(arrived) - len(set(arrived))
    if fault in ACCEPTING:
        duplicated += len(accepted & set(arrived))
    seen = set(waiting) | set(at_fault) | set(arrived)
    same = (proc.returncode, proc.stdout, proc.stderr) == (base.returncode, base.stdout, base.stderr)
    return {
        "fault": fault,
        "script": script.name,
        "same": same,
        "expected": expected,
        "generated": len(seen),
        "delivered": len(delivered),
        "duplicated": duplicated,
        "ids": sorted(seen),
        "left_in_spool": sorted(p.name for p in (sandbox.cache / "spool").glob("*"))
        if (sandbox.cache / "spool").is_dir()
        else [],
        "proc": proc,
        "flush": flush,
    }


def cell_ok(cell: dict) -> bool:
    return (
        cell["same"]
        and cell["generated"] == cell["expected"] == cell["delivered"]
        and cell["duplicated"] == 0
        and not cell["left_in_spool"]
    )


def describe(cell: dict, base: subprocess.CompletedProcess) -> str:
    proc, flush = cell["proc"], cell["flush"]
    return (
        "fault=%s script=%s\n exit %s (baseline %s)\n stderr:\n%s\n baseline stderr:\n%s\n"
        " flush exit %s: %s %s\n ids=%s left_in_spool=%s"
        % (
            cell["fault"],
            cell["script"],
            proc.returncode,
            base.returncode,
            proc.stderr.decode("utf-8", "replace")[-3000:],
            base.stderr.decode("utf-8", "replace")[-3000:],
            flush.returncode,
            flush.stdout.decode("utf-8", "replace"),
            flush.stderr.decode("utf-8", "replace"),
            cell["ids"],
            cell["left_in_spool"],
        )
    )

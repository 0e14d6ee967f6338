"""Test support: interpreters, venvs, a recording HTTP backend, and a runner for scripts in venvs.

Nothing here is mocked: venvs are real, the backend is a real HTTP server on 127.0.0.1, and every
script runs in a real subprocess (always with a timeout).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CEA_CACHE") or ROOT / ".cache")
AGENT_FILES = ("corp_error_agent.py", "corp_error_agent.pth", "corp_error_agent.start")
MINORS = (8, 9, 10, 11, 12, 13)
VERSIONS = tuple("3.%d" % m for m in MINORS)

# Every subprocess gets a timeout; this is the bound for "the process finishes", not a timing claim.
PROC_TIMEOUT = float(os.environ.get("CEA_PROC_TIMEOUT", "90"))
WAIT_TIMEOUT = float(os.environ.get("CEA_WAIT_TIMEOUT", "15"))


###############################################################################
# Interpreters ################################################################
###############################################################################


def pyenv_root() -> Path:
    root = os.environ.get("CEA_PYENV_ROOT") or os.environ.get("PYENV_ROOT")
    if not root:
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = ""
    return Path(root or os.path.expanduser("~/.pyenv"))


def find_interpreters() -> Dict[str, Any]:
    """{"3.X": Path to python | "reason it is missing"} for CPython 3.8-3.13 (highest patch)."""
    versions = pyenv_root() / "versions"
    found: Dict[str, Any] = {}
    for minor in MINORS:
        best = None
        if versions.is_dir():
            for entry in versions.iterdir():
                m = re.fullmatch(r"3\.%d\.(\d+)" % minor, entry.name)
                exe = entry / "bin" / "python"
                if m and exe.exists() and (best is None or int(m.group(1)) > best[0]):
                    best = (int(m.group(1)), exe)
        found["3.%d" % minor] = best[1] if best else ("not installed (no %s/3.%d.*/bin/python)" % (versions, minor))
    return found


###############################################################################
# Venvs #######################################################################
###############################################################################


class Venv:
    """A real venv: its interpreter, its site-packages, and how the agent got in (if it did)."""

    def __init__(self, path: Path, version: str, kind: str):
        self.path = Path(path)
        self.version = version
        self.kind = kind
        self.python = self.path / "bin" / "python"
        self.bin = self.path / "bin"
        libs = sorted((self.path / "lib").glob("python3.*/site-packages"))
        self.site_packages = libs[0]

    def __repr__(self) -> str:
        return "Venv(%s, %s, %s)" % (self.version, self.kind, self.path)


def wheel_path() -> Path:
    env = os.environ.get("CEA_WHEEL")
    if env and Path(env).is_file():
        return Path(env)
    wheels = sorted((CACHE / "dist").glob("corp_error_agent-*.whl"))
    if not wheels:
        raise RuntimeError("no wheel in %s: run the suite through tests/run_tests.sh" % (CACHE / "dist"))
    return wheels[-1]


def _check(cmd: List[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", PROC_TIMEOUT * 2)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%s):\n%s\n%s" % (cmd, proc.returncode, proc.stdout, proc.stderr))
    return proc


def make_venv(interpreter: Path, path: Path, version: str, kind: str = "none", with_pip: bool = False) -> Venv:
    """Create a venv; kind "wheel" installs the built wheel with the venv's own pip, "copy" copies
    the three agent files into site-packages, "none" leaves the agent out."""
    cmd = [interpreter, "-m", "venv"] + ([] if with_pip or kind == "wheel" else ["--without-pip"])
    _check(cmd + [path], env=clean_env())
    venv = Venv(path, version, kind)
    if kind != "none":
        measure_agent(venv)
    if kind == "wheel":
        _check(
            [
                venv.python,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-index",
                "--no-deps",
                wheel_path(),
            ],
            env=clean_env(),
        )
    elif kind == "copy":
        copy_agent(venv.site_packages)
    elif kind != "none":
        raise ValueError(kind)
    return venv


def package_venv(interpreter: Path, version: str, packages: Iterable[str]) -> Venv:
    """A venv of `interpreter` with `packages` from the registry, cached under $CEA_CACHE keyed by
    the interpreter and the packages, shared by every test that asks for the same ones; the agent's
    files are copied in afresh each time, so that it runs the agent of this checkout."""
    import fcntl
    import hashlib

    packages = sorted(packages)
    key = hashlib.sha256(("%s\n%s" % (Path(interpreter).resolve(), "\n".join(packages))).encode()).hexdigest()[:12]
    path = CACHE / "venvs" / ("%s-%s" % (version, key))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test sessions build it once
        if not (path / ".complete").exists():
            shutil.rmtree(path, ignore_errors=True)
            make_venv(interpreter, path, version, with_pip=True)
            _check(
                [path / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"] + packages,
                env=clean_env(),
                timeout=1800,
            )
            (path / ".complete").write_text("\n".join(packages) + "\n")
        venv = Venv(path, version, "copy")
        copy_agent(venv.site_packages)
        measure_agent(venv)
    return venv


def measure_agent(venv: Venv) -> None:
    """Under run_tests.sh's coverage the venv's interpreter measures the agent (tests/coverage_agent.py);
    otherwise a venv kept from such a run stops."""
    from coverage_agent import install_hook, remove_hook  # (coverage.py is in the tooling venv)

    if os.environ.get("COVERAGE_PROCESS_START"):
        install_hook(venv.site_packages, venv.version)
    else:
        remove_hook(venv.site_packages)


def copy_agent(directory: Path) -> None:
    for name in AGENT_FILES:
        shutil.copy2(ROOT / name, Path(directory) / name)


def tree(path: Path) -> List[str]:
    """Every file and directory below path, relative, sorted."""
    path = Path(path)
    return sorted(str(p.relative_to(path)) + ("/" if p.is_dir() else "") for p in path.rglob("*"))


###############################################################################
# Running scripts #############################################################
###############################################################################


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """os.environ without anything that would change how the agent or Python behaves."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ERROR_AGENT_", "PYTHON", "VIRTUAL_ENV", "XDG_", "CEA_", "PIP_"))
        and k
        not in (
            "NO_COLOR",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "CONDA_PREFIX",
        )
    }
    if "PYTHONDONTWRITEBYTECODE" in os.environ:
        env["PYTHONDONTWRITEBYTECODE"] = os.environ["PYTHONDONTWRITEBYTECODE"]
    env.update(extra or {})
    return env


class Sandbox:
    """Per-test HOME, XDG dirs and agent cache dir under one tmp dir, and the env built from them."""

    def __init__(self, tmp: Path):
        self.tmp = Path(tmp)
        self.home = self.tmp / "home"
        self.cache = self.tmp / "agent-cache"
        self.config_home = self.tmp / "xdg-config"
        self.cache_home = self.tmp / "xdg-cache"
        self.work = self.tmp / "work"
        for d in (self.home, self.config_home, self.cache_home, self.work):
            d.mkdir(parents=True, exist_ok=True)

    def env(
        self, url: Optional[str] = None, extra: Optional[Dict[str, str]] = None, cache_dir: bool = True
    ) -> Dict[str, str]:
        env = clean_env(
            {
                "HOME": str(self.home),
                "XDG_CONFIG_HOME": str(self.config_home),
                "XDG_CACHE_HOME": str(self.cache_home),
                "XDG_DATA_HOME": str(self.tmp / "xdg-data"),
                "XDG_STATE_HOME": str(self.tmp / "xdg-state"),
                "LANG": "C.UTF-8",
                "PYTHONIOENCODING": "utf-8",
            }
        )
        if cache_dir:
            env["ERROR_AGENT_CACHE_DIR"] = str(self.cache)
        if url is not None:
            env["ERROR_AGENT_URL"] = url
        env.update(extra or {})
        return {k: v for k, v in env.items() if v is not None}

    def script(self, name: str, source: str, directory: Optional[Path] = None) -> Path:
        path = Path(directory or self.work) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        return path

    def spool(self) -> List[Path]:
        return sorted((self.cache / "spool").glob("*.json"))

    def breakers(self) -> List[Path]:
        """The agent's circuit breakers, one per backend URL that failed."""
        return sorted(self.cache.glob("breaker-*.json"))

    def reset_breakers(self) -> int:
        breakers = self.breakers()
        for path in breakers:
            path.unlink()
        return len(breakers)


def run(
    python,
    args: Iterable,
    env: Dict[str, str],
    cwd=None,
    input: Optional[bytes] = None,
    timeout: Optional[float] = None,
) -> subprocess.CompletedProcess:
    """Run `python *args`; bytes stdout/stderr; always bounded by a timeout."""
    return subprocess.run(
        [str(python)] + [str(a) for a in args],
        env=env,
        cwd=str(cwd) if cwd else None,
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout or PROC_TIMEOUT,
    )


###############################################################################
# The recording backend #######################################################
###############################################################################


class Request:
    def __init__(self, method: str, path: str, headers: Dict[str, str], body: bytes):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body.decode("utf-8")) if body else None
        except ValueError:
            self.json = None

    def __repr__(self) -> str:
        return "<%s %s %r>" % (self.method, self.path, self.body[:300])


class Reply:
    def __init__(
        self,
        status: int = 200,
        json_body: Any = None,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
    ):
        self.status = status
        self.headers = dict(headers or {})
        if body is None and json_body is not None:
            body = json.dumps(json_body).encode()
            self.headers.setdefault("Content-Type", "application/json")
        self.body = body or b""


FAULTS = ("silent", "slow", "500", "429", "garbage", "huge", "reset")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64


class RecordingBackend:
    """Threaded HTTP server on 127.0.0.1:0 that records every request and answers per path.

    Defaults: /beacon -> 204 the first time an env_hash is seen, then 200 {"ok": true};
    /env -> 200 {"ok": true}; /suggest -> {"match": false}; anything else -> 404.
    set_reply(path, Reply | callable(Request) -> Reply) overrides a path; set_fault(mode) makes
    every answer (or those for `paths`) misbehave: silent, slow, 500, 429, garbage, huge, reset.
    """

    def __init__(self):
        self.requests: List[Request] = []
        self.cond = threading.Condition()
        self.known_envs: set = set()
        self.replies: Dict[str, Any] = {}
        self.fault: Optional[str] = None
        self.fault_paths: Optional[set] = None
        self.slow_seconds = 3.0
        self.stopping = threading.Event()
        self.inflight = 0
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._handle()

            def do_POST(self):
                self._handle()

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                backend._record(req)
                backend._answer(self, req)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        orig_process = self.server.process_request
        orig_shutdown = self.server.shutdown_request

        def process_request(request, client_address):
            with self.cond:
                self.inflight += 1
            orig_process(request, client_address)

        def shutdown_request(request):
            try:
                orig_shutdown(request)
            finally:
                with self.cond:
                    self.inflight -= 1
                    self.cond.notify_all()

        self.server.process_request = process_request
        self.server.shutdown_request = shutdown_request
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    # -- programming -------------------------------------------------------------------------
    def set_reply(self, path: str, reply) -> None:
        self.replies[path] = reply

    def set_fault(self, mode: Optional[str], paths: Optional[Iterable[str]] = None) -> None:
        assert mode is None or mode in FAULTS, mode
        self.fault = mode
        self.fault_paths = set(paths) if paths else None

    # -- recording ---------------------------------------------------------------------------
    def _record(self, req: Request) -> None:
        with self.cond:
            self.requests.append(req)
            self.cond.notify_all()

    def of(self, path: str) -> List[Request]:
        with self.cond:
            return [r for r in self.requests if r.path == path]

    def bodies(self, path: str) -> List[Any]:
        return [r.json for r in self.of(path)]

    def wait_for(
        self, path: str, count: int = 1, where: Optional[Callable[[Any], bool]] = None, timeout: float = WAIT_TIMEOUT
    ) -> List[Request]:
        """Block until `count` requests to `path` (whose JSON satisfies `where`) arrived."""

        def matching():
            return [r for r in self.requests if r.path == path and (where is None or where(r.json))]

        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = matching()
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "expected %d request(s) to %s, got %d; all requests: %r"
                        % (count, path, len(found), self.requests)
                    )
                self.cond.wait(left)

    def settle(self, timeout: float = WAIT_TIMEOUT) -> List[Request]:
        """Wait until every connection made before this call has been handled; return requests.

        A sync connection is accepted after all earlier ones (the accept queue is FIFO), so once it
        is recorded and nothing is in flight, every earlier request is in self.requests.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(b"GET /__settle__ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sock.settimeout(timeout)
            while sock.recv(65536):
                pass
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return [r for r in self.requests if r.path != "/__settle__"]

    def agent_requests(self) -> List[Request]:
        return [r for r in self.settle()]

    # -- answering ---------------------------------------------------------------------------
    def _default(self, req: Request) -> Reply:
        if req.path == "/__settle__":
            return Reply(200, body=b"")
        if req.path == "/beacon":
            env_hash = (req.json or {}).get("env_hash") if isinstance(req.json, dict) else None
            with self.cond:
                known = env_hash in self.known_envs
            return Reply(200, {"ok": True}) if known else Reply(204)
        if req.path == "/env":
            env_hash = req.json.get("env_hash") if isinstance(req.json, dict) else None
            with self.cond:
                self.known_envs.add(env_hash)
            return Reply(200, {"ok": True})
        if req.path == "/suggest":
            return Reply(200, {"match": False})
        return Reply(404, {"error": "not found"})

    def _answer(self, handler, req: Request) -> None:
        fault = self.fault if (self.fault_paths is None or req.path in self.fault_paths) else None
        if req.path == "/__settle__":
            fault = None
        wfile = handler.wfile
        try:
            if fault == "silent":
                self.stopping.wait()
                handler.close_connection = True
                return
            if fault == "slow":
                self.stopping.wait(self.slow_seconds)
            if fault == "500":
                reply = Reply(500, body=b"Internal Server Error")
            elif fault == "429":
                reply = Reply(429, {"error": "slow down"}, headers={"Retry-After": "120"})
            elif fault == "garbage":
                reply = Reply(200, body=b"<html>\x00\xff not json {{{", headers={"Content-Type": "application/json"})
            elif fault == "huge":
                reply = Reply(
                    200,
                    body=b'{"match": true, "confidence": 0.99, "hint": "' + b"A" * (8 << 20) + b'"}',
                    headers={"Content-Type": "application/json"},
                )
            else:
                custom = self.replies.get(req.path)
                if callable(custom):
                    reply = custom(req)
                elif custom is not None:
                    reply = custom
                else:
                    reply = self._default(req)
            if fault == "reset":
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", "100000")
                handler.end_headers()
                wfile.write(b'{"match": true, "confidence": 0.9, "hi')
                wfile.flush()
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                handler.close_connection = True
                return
            handler.send_response(reply.status)
            for key, value in reply.headers.items():
                handler.send_header(key, value)
            if reply.status not in (204, 304):
                handler.send_header("Content-Length", str(len(reply.body)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.close_connection = True
            if reply.body and reply.status not in (204, 304):
                wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            handler.close_connection = True

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> RecordingBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def serving(cmd: List[str], env: Dict[str, str], cwd: Path, started: str):
    """Run a web server (uvicorn, flask run, ...) that picks its own port; yield the URL it prints on
    stderr once the regular expression ``started`` (one group: the URL) matches; stop it at the end."""
    import queue

    server = subprocess.Popen(
        cmd,
        env=env,
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stderr] + [lines.put("")], daemon=True).start()
    try:
        url = None
        while url is None:
            line = lines.get(timeout=PROC_TIMEOUT)
            assert line, "%s did not start" % Path(cmd[0]).name
            found = re.search(started, line)
            url = found.group(1) if found else None
        yield url
    finally:
        server.terminate()
        server.wait(timeout=PROC_TIMEOUT)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return "http://127.0.0.1:%d" % port


###############################################################################
# Assertions about events #####################################################
###############################################################################

HEX12 = re.compile(r"[0-9a-f]{1,12}")
HEX32 = re.compile(r"[0-9a-f]{32}")


def error_beacons(backend: RecordingBackend, text: Optional[str] = None) -> List[dict]:
    """The error beacons received, those whose trace contains ``text`` when given."""
    return [
        b
        for b in backend.bodies("/beacon")
        if isinstance(b, dict) and b.get("kind") == "error" and (text is None or text in str(b.get("trace", "")))
    ]


def events(beacons: List[dict]) -> set:
    """The distinct reports among ``beacons``: delivery is at least once (a process killed between
    the server's answer and the spool's unlink sends its beacon again, with its event_id, which the
    server stores once)."""
    return {b.get("event_id") for b in beacons}


def success_beacons(backend: RecordingBackend) -> List[dict]:
    return [b for b in backend.bodies("/beacon") if isinstance(b, dict) and b.get("kind") == "success"]


def wait_error(backend: RecordingBackend, text: Optional[str] = None, count: int = 1) -> List[dict]:
    """Wait for `count` error beacons whose trace contains `text`; return their bodies."""
    reqs = backend.wait_for(
        "/beacon",
        count,
        where=lambda b: (
            isinstance(b, dict) and b.get("kind") == "error" and (text is None or text in str(b.get("trace", "")))
        ),
    )
    return [r.json for r in reqs]


###############################################################################
# Scripts used by many tests ##################################################
###############################################################################


def failing_source(message: str = "boom-main", exc: str = "ValueError") -> str:
    return "def main():\n    raise %s(%r)\n\n\nmain()\n" % (exc, message)


def same_outcome(a: subprocess.CompletedProcess, b: subprocess.CompletedProcess) -> None:
    """Exit status, stdout and stderr byte for byte equal (with a readable diff when not)."""
    assert (a.returncode, a.stdout.decode("utf-8", "replace"), a.stderr.decode("utf-8", "replace")) == (
        b.returncode,
        b.stdout.decode("utf-8", "replace"),
        b.stderr.decode("utf-8", "replace"),
    )
    assert a.stderr == b.stderr and a.stdout == b.stdout

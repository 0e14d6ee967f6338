"""The real server process under hostile input: generated requests on every route, SQL-shaped values,
oversized bodies, idle and trickling connections, the token on every route, loopback-only binding."""

from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reliability import server_fuzz
from support import PROC_TIMEOUT, ROOT, WAIT_TIMEOUT, clean_env


class Server:
    """``python -m corp_error_server --port 0 --db DB [args]``; its log lines (stderr) are kept."""

    def __init__(self, db: Path, *args: str, env=None):
        self.db = db
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corp_error_server", "--port", "0", "--db", str(db)] + list(args),
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(dict({"PYTHONPATH": str(ROOT), "ERROR_AGENT_ENABLED": "0"}, **(env or {}))),
        )
        self.log = []
        lines: queue.Queue[str] = queue.Queue()

        def pump():
            for line in self.proc.stderr:
                self.log.append(line)
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line.startswith("listening on "):
                self.host, port = line.split("http://")[1].strip().rsplit(":", 1)
                self.port = int(port)
                break
            if line == "":
                raise RuntimeError("server did not start: %s" % "".join(self.log))
        self.target = server_fuzz.Target(self.host, self.port)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=30)


@pytest.fixture
def start(tmp_path):
    servers = []

    def make(*args, env=None):
        servers.append(Server(tmp_path / ("db%d.sqlite" % len(servers)), *args, env=env))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def test_generated_requests_on_every_route(start):
    server = start()
    wanted = server_fuzz.requests_wanted(2000)
    server_fuzz.fuzz(server.target, wanted)
    print("fuzz: %d requests, statuses %s" % (server.target.sent, sorted(server.target.statuses.items())))
    assert server.target.failures == [], server.target.failures[:5]
    assert server.target.sent >= wanted * 0.9
    assert server.proc.poll() is None, "".join(server.log[-20:])
    assert server.target.statuses.get(200, 0) + server.target.statuses.get(204, 0) > wanted // 20
    assert server_fuzz.check_database(str(server.db), server.target) == []
    assert not [line for line in server.log if "Traceback" in line], "".join(server.log)[-3000:]


def test_sql_shaped_values_are_stored_verbatim_and_inert(start):
    server = start()
    t = server.target
    evil = server_fuzz.SQLI
    env = {
        "env_hash": "5e11",
        "packages": ["numpy==1.0"],
        "python_ver": "3.11.7",
        "os_info": evil[0][:120],
        "machine_arch": "x86_64",
        "env_vars": {"LANG": evil[1], "X'); DROP TABLE envs;--": evil[2]},
    }
    assert t.send("POST", "/env", json.dumps(env).encode(), [("Content-Type", "application/json")])[0] in (200, 201)
    for i, value in enumerate(evil):
        beacon = {
            "kind": "error",
            "env_hash": "5e11",
            "script_id": "s%d" % i,
            "ts": 1.7e9,
            "script_name": value[:100],
            "event_id": "%032x" % i,
            "error_sig": "ValueError: %s @ m.f" % value,
            "trace": "Traceback (most recent call last):\nValueError: %s\n" % value,
        }
        status, payload = t.send("POST", "/beacon", json.dumps(beacon).encode(), [("Content-Type", "application/json")])
        assert status in (200, 204), payload
        status, payload = t.send(
            "POST",
            "/suggest",
            json.dumps({"error_sig": value, "env_hash": "5e11"}).encode(),
            [("Content-Type", "application/json")],
        )
        assert status == 200, payload
    groups = json.loads(t.send("GET", "/api/errors?limit=500")[1])["groups"]
    assert sum(g["count"] for g in groups) == len(evil)
    traces, names = set(), set()
    for group in groups:
        detail = json.loads(t.send("GET", "/api/errors/%d" % group["id"])[1])
        traces |= {r["trace"] for r in detail["recent"]}
        names |= {r["script_name"] for r in detail["recent"]}
    assert traces == {"Traceback (most recent call last):\nValueError: %s\n" % v for v in evil}
    assert names == {v[:100] for v in evil}
    assert server_fuzz.check_database(str(server.db), t) == []


def _raw(port, data: bytes, timeout: float = WAIT_TIMEOUT) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Content-Length" in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        return b"".join(chunks)


@pytest.mark.parametrize("route", ["/beacon", "/env", "/suggest"])
def test_body_over_the_limit_is_refused_without_waiting_for_it(route, start):
    """Content-Length of 1 GB and 10 bytes sent: a 413 comes back while the client still holds the
    rest (the server's own read timeout is 120 s; the client gives up after WAIT_TIMEOUT)."""
    server = start("--timeout", "120")
    answer = _raw(
        server.port,
        (
            "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000000000\r\n\r\n{\"kind\": " % route
        ).encode(),
        timeout=min(WAIT_TIMEOUT, 60),
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert server.proc.poll() is None


def test_idle_connections_cannot_hold_every_worker(start):
    server = start("--timeout", "2")
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        assert _answer_eventually(server.port).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in idle:
            sock.close()


def test_trickling_connections_cannot_hold_every_worker(start):
    """Slowloris: 300 connections each sending one header byte every 0.2 s, forever. Per-read
    timeouts never fire; the server must still answer a new client (within the wait bound)."""
    server = start("--timeout", "2")
    stop = threading.Event()
    rounds = [0]
    established = threading.Event()
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(300)]

    def trickle():
        for sock in socks:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            except OSError:
                pass
        while not stop.wait(0.2):  # the attacker's pace, not a synchronisation
            for sock in socks:
                try:
                    sock.sendall(b"a")
                except OSError:
                    pass
            rounds[0] += 1
            if rounds[0] >= 20:  # 4 s: twice the server's per-read timeout
                established.set()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        assert established.wait(WAIT_TIMEOUT)
        assert _answer_eventually(server.port, 20).startswith(b"HTTP/1.1 200 "), "the server stopped answering"
    finally:
        stop.set()
        thread.join(timeout=30)
        for sock in socks:
            sock.close()


def _answer_eventually(port, timeout: float = WAIT_TIMEOUT) -> bytes:
    """GET /healthz until an HTTP answer comes back or the bound passes (closed connections retried)."""
    deadline = time.monotonic() + timeout
    last = b""
    while time.monotonic() < deadline:
        try:
            last = _raw(
                port,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                timeout=max(0.5, deadline - time.monotonic()),
            )
        except OSError as error:
            last = repr(error).encode()
        if last.startswith(b"HTTP/1.1 "):
            return last
        threading.Event().wait(0.05)  # poll interval of a bounded retry
    return last


ROUTES = [
    ("POST", "/beacon"),
    ("POST", "/env"),
    ("POST", "/suggest"),
    ("GET", "/api/errors"),
    ("GET", "/api/errors/1"),
    ("GET", "/openapi.json"),
    ("PUT", "/beacon"),
    ("DELETE", "/api/errors"),
]


def test_token_is_enforced_on_every_route_and_never_logged(start):
    token = "tok-Sekr1t-%s" % os.urandom(6).hex()
    server = start(env={"CORP_ERROR_SERVER_TOKEN": token})
    t = server.target
    body = json.dumps(
        {"kind": "error", "env_hash": "a1", "script_id": "b2", "ts": 1.7e9, "error_sig": "ValueError: x"}
    ).encode()
    for method, path in ROUTES:
        for auth in (
            None,
            "Bearer wrong",
            "Bearer " + token.upper(),
            "Basic " + token,
            token,
            "Bearer",
            "Bearer " + token + "x",
            "Bearer  " + token[:-1],
        ):
            headers = [("Content-Type", "application/json")] + ([("Authorization", auth)] if auth else [])
            status, _ = t.send(method, path, body if method == "POST" else b"", headers)
            assert status == 401, (method, path, auth, status)
        status, _ = t.send(
            method,
            path,
            body if method == "POST" else b"",
            [("Content-Type", "application/json"), ("Authorization", "Bearer " + token)],
        )
        assert status != 401, (method, path)
    assert t.send("GET", "/healthz")[0] == 200
    server.stop()
    log = "".join(server.log)
    assert token not in log and token[4:] not in log
    assert t.failures == []


def _listening(port: int):
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.append(address)
    return found


def test_listens_on_loopback_only_by_default(start):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this system")
    server = start()
    addresses = _listening(server.port)
    assert addresses, "server port not found in /proc/net/tcp"
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
    assert set(addresses) <= loopback, addresses
    assert server.host == "127.0.0.1"


def test_a_log_stream_nobody_reads_neither_grows_nor_holds_the_shutdown(tmp_path):
    """stderr a pipe whose reader reads the first line and stops: the log's writer blocks in write,
    requests are still answered, and SIGTERM still ends the process."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "corp_error_server", "--port", "0", "--db", str(tmp_path / "e.db")],
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
        env=clean_env({"PYTHONPATH": str(ROOT), "ERROR_AGENT_ENABLED": "0"}),
    )
    os.close(write_end)
    try:
        first = b""
        while not first.endswith(b"\n"):
            first += os.read(read_end, 1)
        host, port = first.decode().split()[-1][len("http://") :].rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        for _ in range(3000):  # ~200 KB of access-log lines: more than a pipe holds
            connection.request("GET", "/healthz?" + "x" * 40)
            assert connection.getresponse().read()
        connection.close()
        proc.terminate()
        assert proc.wait(timeout=PROC_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(read_end)

"""The embedded server's event loop, in process over real sockets: what answering beacons from the
committing thread, and everything else from a worker pool, could get wrong.

The storage's write (``add_beacons``) or a page's read is held on a gate the test opens, so each
test knows where a request is without timing: an answer is looked for while its commit is held,
then after the gate opened.
"""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import threading
from typing import List, Optional, Tuple

import pytest

from conftest import error_beacon
from corp_error_server import create_app
from corp_error_server.app import INLINE_PATHS
from corp_error_server.server import _WORKERS, DEFER, make_server
from corp_error_server.storage import open_storage

SIG = "ValueError: bad record @ etl.load < etl.main"
WAIT = 30  # seconds any one step may take before the test fails, not a synchronisation


class _Gate:
    """Wraps a storage method: each call announces itself (``entered``), then waits for ``open``."""

    def __init__(self, method) -> None:
        self._method = method
        self.entered = threading.Semaphore(0)
        self._open = threading.Event()

    def __call__(self, *args, **kwargs):
        self.entered.release()
        assert self._open.wait(WAIT)
        return self._method(*args, **kwargs)

    def open(self) -> None:
        self._open.set()


class _Served:
    def __init__(self, db: str, max_waiting: int = 64) -> None:
        self.db = db
        self.storage = open_storage(db)
        self.app = create_app(db, storage=self.storage, max_waiting=max_waiting)
        self.log = io.StringIO()
        self.server = make_server(self.app, port=0, inline=INLINE_PATHS, log_stream=self.log, request_timeout=WAIT)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def gate(self, name: str) -> _Gate:
        gate = _Gate(getattr(self.storage, name))
        setattr(self.storage, name, gate)
        return gate

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.app.close()


@pytest.fixture
def served(tmp_path):
    started: List[_Served] = []

    def start(**kwargs) -> _Served:
        started.append(_Served(str(tmp_path / ("db%d.sqlite" % len(started))), **kwargs))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def _request(method: str, path: str, body: Optional[dict] = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = "%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return (head % (method, path, len(data))).encode() + data


def _beacon(n: int) -> bytes:
    return _request("POST", "/beacon", error_beacon("e1", "s1", SIG, event_id="ev-%d" % n))


class _Reader:
    """Answers off one connection, in the order they come."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def answer(self) -> Tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers.get("Content-Length", "0"))
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), headers, body

    def _more(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        self.buffer += data

    def nothing_yet(self) -> bool:
        """No byte of an answer has come (nor the connection's end)."""
        if self.buffer:
            return False
        self.sock.setblocking(False)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(WAIT)
        return False


def _stored(served: _Served, event_id: str) -> bool:
    with sqlite3.connect(served.db) as conn:
        return conn.execute("SELECT count(*) FROM beacons WHERE event_id = ?", (event_id,)).fetchone()[0] == 1


def test_a_beacon_is_answered_only_after_its_commit_and_a_held_commit_blocks_nothing_else(served):
    server = served()
    commit = server.gate("add_beacons")
    beacon = server.connect()
    beacon.sendall(_beacon(1))
    assert commit.entered.acquire(timeout=WAIT)  # the commit holding it runs, and is held
    other = server.connect()
    other.sendall(_request("GET", "/healthz"))
    status, _, body = _Reader(other).answer()  # the loop and the workers serve on meanwhile
    assert status == 200 and json.loads(body)["ingest"]["waiting"] == 1
    reader = _Reader(beacon)
    assert reader.nothing_yet(), "answered before its transaction committed"
    commit.open()
    status, _, body = reader.answer()
    assert status == 204 and _stored(server, "ev-1")  # (204: its environment is not known yet)


def test_pipelined_requests_are_answered_in_order_behind_a_slow_page(served):
    server = served()
    page = server.gate("find_groups")
    sock = server.connect()
    sock.sendall(
        _request("GET", "/api/errors")
        + _beacon(1)
        + _request("GET", "/healthz")
        + _request("POST", "/beacon", {"kind": "error"})
        + _beacon(2)
    )
    assert page.entered.acquire(timeout=WAIT)
    reader = _Reader(sock)
    assert reader.nothing_yet()  # nothing after the page overtakes it
    page.open()
    answers = [reader.answer() for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 204, 200, 400, 204]
    assert "groups" in json.loads(answers[0][2]) and "ingest" in json.loads(answers[2][2])


def test_a_slow_page_does_not_hold_up_beacons(served):
    server = served()
    page = server.gate("find_groups")
    slow = server.connect()
    slow.sendall(_request("GET", "/api/errors"))
    assert page.entered.acquire(timeout=WAIT)
    fast = server.connect()
    reader = _Reader(fast)
    for n in range(20):
        fast.sendall(_beacon(n))
        assert reader.answer()[0] == 204
    page.open()
    assert _Reader(slow).answer()[0] == 200


def test_past_the_bound_a_beacon_is_refused_at_once_with_retry_after(served):
    server = served(max_waiting=1)
    commit = server.gate("add_beacons")
    first = server.connect()
    first.sendall(_beacon(1))
    assert commit.entered.acquire(timeout=WAIT)
    second = server.connect()
    second.sendall(_beacon(2))
    status, headers, body = _Reader(second).answer()  # while the first still waits on its commit
    assert status == 503 and headers["Retry-After"] == "1" and "busy" in json.loads(body)["error"]
    commit.open()
    assert _Reader(first).answer()[0] == 204


def test_a_failing_app_answers_500_and_the_loop_serves_on(tmp_path):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("boom")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    log = io.StringIO()
    server = make_server(app, port=0, inline=frozenset(["/boom", "/ok"]), log_stream=log)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for path in ("/boom", "/ok"):
            with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=WAIT) as sock:
                sock.sendall(_request("GET", path))
                status, _, body = _Reader(sock).answer()
            assert (status, body) == ((500, b'{"error": "internal error"}') if path == "/boom" else (200, b"ok"))
    finally:
        server.shutdown()
        server.server_close()
    assert "RuntimeError: boom" in log.getvalue()


def test_expect_100_continue_then_the_body(served):
    server = served()
    sock = server.connect()
    body = json.dumps(error_beacon("e1", "s1", SIG, event_id="ev-c")).encode()
    sock.sendall(
        b"POST /beacon HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    reader = _Reader(sock)
    status, _, _ = reader.answer()
    assert status == 100
    sock.sendall(body)
    assert reader.answer()[0] == 204


def test_a_large_answer_reaches_a_client_that_reads_late(served):
    """An answer bigger than the socket buffers: the loop writes the rest as the client reads, and the
    next pipelined request is answered after it."""
    server = served()
    sock = server.connect()
    sock.sendall(_request("GET", "/openapi.json") * 200 + _request("GET", "/healthz"))  # ~7 MB of answers
    reader = _Reader(sock)
    first = reader.answer()
    assert first[0] == 200 and all(reader.answer()[2] == first[2] for _ in range(199))
    assert "ingest" in json.loads(reader.answer()[2])


class _Own:
    """The embedded server around a test's own app; ``/held`` is answered (deferred) only when the
    test says so, in the order the requests came."""

    def __init__(self, app=None, request_timeout: float = WAIT) -> None:
        self.events: List[str] = []
        self.entered = threading.Semaphore(0)
        self._held: List = []
        self.log = io.StringIO()
        self.server = make_server(
            app or self._app, port=0, inline=frozenset(["/held"]), log_stream=self.log, request_timeout=request_timeout
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _app(self, environ, start_response):
        body = environ["wsgi.input"].read()
        if environ["PATH_INFO"] == "/held":
            self.events.append("enter %d" % len(body))
            self._held.append((environ[DEFER](), len(body)))
            self.entered.release()
            return []
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"x" * int(environ["QUERY_STRING"] or "2")]

    def release(self) -> None:
        respond, length = self._held.pop(0)
        self.events.append("answer %d" % length)
        respond("200 OK", [("Content-Type", "text/plain")], b"%d" % length)

    def connect(self, receive_buffer: int = 0) -> socket.socket:
        sock = socket.socket()
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", self.server.server_address[1]))
        return sock

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def own():
    started: List[_Own] = []

    def start(**kwargs) -> _Own:
        started.append(_Own(**kwargs))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def _held(length: int) -> bytes:
    return b"POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length + b"b" * length


def test_after_an_answer_written_in_parts_the_next_requests_go_to_the_app_one_at_a_time(own):
    # the rest of a large answer is written as the client reads; then the loop must stop waiting to
    # write, or a writable socket takes the next pipelined requests to the app before their turn
    server = own()
    sock = server.connect(receive_buffer=4096)
    sock.sendall(_request("GET", "/big?%d" % (4 << 20)) + b"".join(_held(n) for n in (1, 2, 3, 4)))
    reader = _Reader(sock)
    assert reader.answer()[2] == b"x" * (4 << 20)
    for n in (1, 2, 3, 4):
        assert server.entered.acquire(timeout=WAIT)
        server.release()
        assert reader.answer()[2] == b"%d" % n
    assert server.events == ["enter 1", "answer 1", "enter 2", "answer 2", "enter 3", "answer 3", "enter 4", "answer 4"]


def test_a_pipelined_body_larger_than_a_head_is_read_once_the_request_before_is_answered(own):
    # reading stops while a request is in the app and over a head's worth is buffered; it resumes after
    server = own()
    sock = server.connect()
    sock.sendall(_held(1) + _held(200_000))
    reader = _Reader(sock)
    assert server.entered.acquire(timeout=WAIT)
    server.release()
    assert reader.answer()[2] == b"1"
    assert server.entered.acquire(timeout=WAIT)  # (the bug: a 408 once the body timed out)
    server.release()
    assert reader.answer()[:3:2] == (200, b"200000")


def test_an_answer_that_is_not_sendable_as_http_is_a_500_and_the_workers_serve_on():
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/euro":
            start_response("303 See Other", [("Location", "/\u20ac")])  # outside latin-1
            return [b""]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = _Own(app)
    try:
        for _ in range(_WORKERS + 1):  # more than there are workers: none may have died of it
            with server.connect() as sock:
                sock.sendall(_request("GET", "/euro"))
                assert _Reader(sock).answer()[0] == 500
        with server.connect() as sock:
            sock.sendall(_request("GET", "/ok"))
            assert _Reader(sock).answer()[:3:2] == (200, b"ok")
    finally:
        server.stop()
    assert "UnicodeEncodeError" in server.log.getvalue()


def test_the_group_a_success_follows_is_read_off_the_loop(served):
    """A success naming its failure (prev_error_sig) is counted for that failure's group, read from
    storage: while that read is held (a slow database), the loop still serves other requests."""
    server = served()
    failure = _Reader(server.connect())
    failure.sock.sendall(_beacon(1))
    assert failure.answer()[0] == 204  # (the group exists; its environment was never posted)
    heads = server.gate("group_heads")
    success = _Reader(server.connect())
    body = {"kind": "success", "env_hash": "e2", "script_id": "s1", "ts": 1700000100.0, "event_id": "ok-1"}
    success.sock.sendall(_request("POST", "/beacon", dict(body, prev_error_sig=SIG, prev_env_hash="e1")))
    assert heads.entered.acquire(timeout=WAIT)
    other = _Reader(server.connect())
    other.sock.sendall(_request("GET", "/openapi.json"))
    assert other.answer()[0] == 200
    assert success.nothing_yet()
    heads.open()
    assert success.answer()[0] == 204
    with sqlite3.connect(server.db) as conn:
        (group,) = conn.execute("SELECT prev_group_id FROM beacons WHERE event_id = 'ok-1'").fetchone()
        assert group == conn.execute("SELECT group_id FROM beacons WHERE event_id = 'ev-1'").fetchone()[0]

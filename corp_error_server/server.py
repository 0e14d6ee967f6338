"""The embedded HTTP/1.1 server: one event-loop thread owns the sockets, a lean parser, bounded clients.

Beacons arrive in bursts over keep-alive connections, and each request's own work (validation and
a share of a group commit) is small, so what the gateway costs per request matters. A thread per
connection, each waiting on its commit, spent about half the CPU of a beacon on waking threads
and handing the GIL between them: a commit woke a dozen request threads at once, and each woke
again in ``recv`` for its next request. Here one thread (the one calling ``serve_forever``) owns
every socket through ``selectors``: it reads, splits the request head by hand, buffers the body
and calls the WSGI app. The app may take the answer off that thread: the server offers
``environ["corp_error_server.defer"]``, a callable returning ``respond(status, headers, body)``;
once the app called it, what the app call returns is ignored and the request is answered when
``respond`` is called, once, from any thread. The app does that for beacons (app.py): the thread
that committed a batch hands its answers over, the loop sends them, and a commit wakes no request
thread at all.

Paths named ``inline`` (quick to answer: the app's beacon and environment writes) are called on
the loop thread. Every other request (pages, ``/suggest``, anything that may read for a while) is
called on a small pool of worker threads, so it never holds up the loop, and a slow page holds one
worker, not the beacons.

A connection has one request at a time in the app: its next (pipelined) request is parsed only
once the answer before it is sent, so answers leave in request order. An answer leaves in one
``send`` where the socket takes it (the loop writes the rest when a socket's buffer is full), the
Date header is formatted once a second, and the access log is written by a thread of its own in
one call per 50 ms.

What a slow or hostile client can hold is bounded: the whole request head must arrive within the
timeout (trickling bytes does not reset it), a body waits at most the timeout per read (then the
app reads a stalled body and answers 408), heads and header counts are limited, a body over
``max_body`` is not read at all (the app, seeing its Content-Length, answers 413), and past a cap
on connections new ones are closed at once. A client that stops reading holds its own answer's
bytes, not a thread; one that pipelines ahead is not read beyond a bound until it is answered. A
connection closed after an answer first reads and discards what its client still sends, for a
bounded time and amount, so that the client reads the answer rather than a reset.
"""

from __future__ import annotations

import json
import queue
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple
from urllib.parse import unquote

DEFER = "corp_error_server.defer"
_LOG_GATHER = 0.05  # seconds the access log gathers lines for one write (a write per line is a system call)
_LOG_QUEUED = 10_000  # access-log lines kept waiting for a slow log stream; more are counted, not kept
_LINGER_BYTES = 1024 * 1024  # what a closing connection still reads and discards, at most ...
_LINGER_TIME = 2.0  # ... for this many seconds at most
_MAX_BODY = 1024 * 1024  # default body limit: larger bodies are not read
_MAX_CONNECTIONS = 256  # beyond this, new connections are closed at once
_MAX_HEAD = 64 * 1024  # request line and headers
_MAX_HEADERS = 100
_ACCEPT_BURST = 64  # connections accepted per pass of the loop: a burst of them does not starve the others
_RECV = 65536
_WORKERS = 4  # threads calling the app for requests not answered on the loop
_SWEEP = 0.1  # seconds between the loop's checks of the deadlines (their precision)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Body:
    """The request body, received before the app is called; a read past what was received raises
    OSError (the client stalled, or the body was over the limit and never read)."""

    def __init__(self, data: bytes, complete: bool) -> None:
        self._data = data
        self._complete = complete  # the client sent all it will: a short body ends the stream

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = len(self._data) if self._complete else len(self._data) + 1
        if size > len(self._data) and not self._complete:
            raise OSError("the request body was not received")
        data, self._data = self._data[:size], self._data[size:]
        return data

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)  # bodies here are JSON documents, read whole

    def __iter__(self):
        return iter(lambda: self.read(_RECV), b"")


class _Request:
    __slots__ = ("method", "path", "query", "version", "fields", "length", "keep_alive", "started")

    def __init__(self, method, path, query, version, fields, length, keep_alive, started) -> None:
        self.method, self.path, self.query, self.version = method, path, query, version
        self.fields: Dict[str, str] = fields
        self.length: int = length
        self.keep_alive: bool = keep_alive
        self.started: float = started


class _Connection:
    """One client connection's state; only the loop thread changes it, but for ``answer``, which the
    thread answering its request sets before handing the connection back to the loop."""

    __slots__ = (
        "sock",
        "address",
        "buffer",
        "eof",
        "deadline",
        "request",
        "busy",
        "answer",
        "out",
        "close_after",
        "lingering",
        "events",
    )

    def __init__(self, sock: socket.socket, address, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.buffer = b""
        self.eof = False
        self.deadline = deadline  # for the whole head, or for the body's next bytes
        self.request: Optional[_Request] = None  # its head parsed, its body being received
        self.busy = False  # a request of it is in the app, or its answer still being sent
        self.answer: Tuple[bytes, bool] = (b"", False)  # (an answer to send, close after it)
        self.out = b""  # the loop's: answer bytes still to write
        self.close_after = False
        self.lingering = 0  # bytes still to discard after the last answer (closing, see _linger)
        self.events = 0


def _printable(text: str, limit: int = 200) -> str:
    # request lines are attacker-controlled: no terminal escapes into the operator's log
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


_date_cache: List = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _parse(head: bytes) -> Tuple[str, str, str, List[Tuple[str, str]]]:
    lines = head.decode("iso-8859-1").split("\n")
    words = lines[0].rstrip("\r").split()
    if not words:
        raise _BadRequest(400, "empty request line")
    if len(words) == 3:
        command, path, version = words
        if not version.startswith("HTTP/1.") or not version[7:].isdigit():
            if version.startswith("HTTP/") and version[5:6].isdigit() and version[5:6] != "0":
                raise _BadRequest(505, "HTTP version %s not supported" % _printable(version, 20))
            raise _BadRequest(400, "bad request version %s" % _printable(version, 20))
    elif len(words) == 2:
        # a request line without a version reads as HTTP/0.9; nobody speaks it: a status line all the same
        command, path = words
        if command != "GET":
            raise _BadRequest(400, "bad HTTP/0.9 request type %s" % _printable(command, 20))
        version = "HTTP/0.9"
    else:
        raise _BadRequest(400, "bad request syntax %s" % _printable(lines[0], 100))
    headers: List[Tuple[str, str]] = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if line[:1] in (" ", "\t") and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(400, "bad header line %s" % _printable(line, 100))
        headers.append((name, value.strip()))
    if len(headers) > _MAX_HEADERS:
        raise _BadRequest(431, "more than %d headers" % _MAX_HEADERS)
    return command, path, version, headers


class _Server:
    """Listens on ``address`` and serves ``app`` from one loop thread (``serve_forever``)."""

    def __init__(
        self,
        address,
        app: Callable,
        request_timeout: float,
        log_stream: TextIO,
        inline: frozenset = frozenset(),
        max_body: int = _MAX_BODY,
    ) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.log_stream = log_stream
        self.inline = inline
        self.max_body = max_body
        self._log_ready = threading.Condition(threading.Lock())
        self._log_lines: List[str] = []
        self._log_dropped = 0
        self._log_writer: Optional[threading.Thread] = None
        self._log_write_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(1024)  # a burst of new connections waits in the kernel, not refused
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)
        self._selector = selectors.DefaultSelector()
        self._connections: Dict[int, _Connection] = {}
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._answered: List[_Connection] = []  # handed back by the threads that answered them
        self._answered_lock = threading.Lock()
        self._wake_owed = False  # answers were handed over since the loop last found none
        self._loop_thread: Optional[threading.Thread] = None
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._workers: List[threading.Thread] = []
        self._stopping = False
        self._stopped = threading.Event()

    # -- the loop ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until ``shutdown``: the loop wakes for what it waits on, and checks the deadlines
        every ``_SWEEP`` seconds."""
        self._loop_thread = threading.current_thread()
        self._stopped.clear()
        selector = self._selector
        selector.register(self.socket, selectors.EVENT_READ, None)
        selector.register(self._wake_read, selectors.EVENT_READ, self._wake_read)
        next_sweep = time.monotonic() + _SWEEP
        try:
            while not self._stopping:
                for key, mask in selector.select(max(0.0, next_sweep - time.monotonic())):
                    connection = key.data
                    if connection is None:
                        self._accept()
                    elif connection is self._wake_read:
                        self._drain_wake()
                    else:
                        self._guarded(self._ready, connection, mask)
                self._take_answered()
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + _SWEEP
                    self._sweep(now)
                    self._take_answered()  # what the sweep answered on the loop (a stalled body's 408)
        finally:
            selector.unregister(self.socket)
            selector.unregister(self._wake_read)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the loop (from another thread) and wait until it stopped."""
        self._stopping = True
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        for connection in list(self._connections.values()):
            self._close(connection)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    def _wake(self) -> None:
        try:
            self._wake_write.send(b"\0")
        except OSError:  # its buffer full: the loop is woken already
            pass

    def _drain_wake(self) -> None:
        try:
            self._wake_read.recv(4096)  # (any left wake the next select at once)
        except OSError:
            pass

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                sock, address = self.socket.accept()
            except OSError:  # none waiting (or the client gave up already)
                return
            if len(self._connections) >= _MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, address, time.monotonic() + self.request_timeout)
            self._connections[sock.fileno()] = connection
            self._interest(connection)

    def _interest(self, connection: _Connection) -> None:
        """Wait for what the connection can do next: read unless it is done or pipelining ahead of its
        answers, write while an answer's bytes wait."""
        if connection.sock.fileno() < 0:  # closed already
            return
        events = 0
        if not connection.eof and not (connection.busy and len(connection.buffer) > _MAX_HEAD):
            events |= selectors.EVENT_READ
        if connection.out:
            events |= selectors.EVENT_WRITE
        if events == connection.events:
            return
        if not connection.events:
            self._selector.register(connection.sock, events, connection)
        elif not events:
            self._selector.unregister(connection.sock)
        else:
            self._selector.modify(connection.sock, events, connection)
        connection.events = events

    def _linger(self, connection: _Connection) -> None:
        """Close after an answer, but read what the client still sends first (for a while, and up to
        a bound): closing a socket with unread bytes resets it, and the client may then lose the
        answer before it read it (a 413 or 411 for a body it is still sending)."""
        if connection.eof:
            self._close(connection)
            return
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection)
            return
        connection.lingering = _LINGER_BYTES
        connection.deadline = time.monotonic() + min(self.request_timeout, _LINGER_TIME)
        connection.buffer = b""
        self._interest(connection)

    def _close(self, connection: _Connection) -> None:
        if self._connections.pop(connection.sock.fileno(), None) is None:
            return
        if connection.events:
            self._selector.unregister(connection.sock)
            connection.events = 0
        connection.sock.close()

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if connection.lingering:
            connection.lingering -= len(data)
            if not data or connection.lingering <= 0:
                self._close(connection)
            return
        if data:
            connection.buffer += data
            if connection.request is not None:  # a body's next bytes: the per-read timeout starts again
                connection.deadline = time.monotonic() + self.request_timeout
        else:
            connection.eof = True
        if connection.busy:
            self._interest(connection)  # the rest once it is answered
        else:
            self._advance(connection)

    def _ready(self, connection: _Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._write(connection)
        if mask & selectors.EVENT_READ and connection.events:  # (not closed by the write)
            self._read(connection)

    def _write(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.out)
        except BlockingIOError:
            return
        except OSError:  # the client went away
            self._close(connection)
            return
        connection.out = connection.out[sent:]
        if not connection.out:
            self._next(connection)

    def _sweep(self, now: float) -> None:
        for connection in list(self._connections.values()):
            if now >= connection.deadline and not (connection.busy and not connection.lingering):
                self._guarded(self._expire, connection)

    def _expire(self, connection: _Connection) -> None:
        if connection.lingering:
            self._close(connection)
        elif connection.request is not None:  # a stalled body: the app reads what came and answers
            self._dispatch(connection, connection.buffer[: connection.request.length], False)
        else:  # the head did not arrive in time (or the connection idled)
            self._close(connection)

    # -- requests ---------------------------------------------------------------------------

    def _advance(self, connection: _Connection) -> None:
        """Take the next request out of the buffer to the app, if it arrived."""
        while not connection.busy:
            request = connection.request
            if request is None:
                request = self._head(connection)
                if request is None:
                    return
            if request.length > self.max_body:  # not read: the app answers 413 before reading it
                self._dispatch(connection, b"", False)
            elif len(connection.buffer) >= request.length:
                self._dispatch(connection, connection.buffer[: request.length], True)
            elif connection.eof:  # the client ended the stream short of its body
                self._dispatch(connection, connection.buffer, True)
            else:
                return

    def _head(self, connection: _Connection) -> Optional[_Request]:
        """The next request head parsed (None: not all of it here yet, or the connection closed)."""
        buffer = connection.buffer
        end, cut = buffer.find(b"\r\n\r\n"), 4
        if end < 0:
            end, cut = buffer.find(b"\n\n"), 2
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                self._refuse(connection, 431, "request head over %d bytes" % _MAX_HEAD)
            elif connection.eof:
                self._close(connection)
            else:
                if not buffer.strip(b"\r\n"):
                    connection.buffer = b""  # blank lines between requests are allowed (RFC 9112 2.2)
                self._interest(connection)
            return None
        head, connection.buffer = buffer[:end], buffer[end + cut :]
        started = time.perf_counter()
        try:
            method, target, version, headers = _parse(head)
        except _BadRequest as error:
            self._refuse(connection, error.status, str(error), started)
            return None
        fields: Dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            fields[key] = fields[key] + "," + value if key in fields else value
        token = fields.get("connection", "").lower()
        keep_alive = (version == "HTTP/1.1" and "close" not in token) or (
            version == "HTTP/1.0" and "keep-alive" in token
        )
        path, _, query = target.partition("?")
        if path.startswith("//"):
            path = "/" + path.lstrip("/")  # as http.server: no scheme-relative path reaches the app
        if "transfer-encoding" in fields:
            self._refuse(
                connection, 411, "chunked request bodies are not supported; send Content-Length", started, method, path
            )
            return None
        declared = fields.get("content-length", "0")  # several headers were joined by "," above
        if not (declared.isascii() and declared.isdigit()):
            # where the body ends is in doubt (a proxy may read it otherwise): no next request on this connection
            self._refuse(connection, 400, "Content-Length must be one header of digits", started, method, path)
            return None
        length = int(declared)
        request = _Request(method, path, query, version, fields, length, keep_alive, started)
        connection.request = request
        connection.deadline = time.monotonic() + self.request_timeout
        if (
            version == "HTTP/1.1"
            and fields.get("expect", "").lower() == "100-continue"
            and len(connection.buffer) < length <= self.max_body
        ):
            # the client waits for this before it sends the body; 25 bytes into an idle socket's buffer
            try:
                continued = connection.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                continued = 0
            if continued != 25:
                self._close(connection)
                return None
        return request

    def _refuse(self, connection: _Connection, code: int, message: str, started=None, method="", path="") -> None:
        # malformed requests: the same JSON error shape as the application's, and the connection closes
        connection.request = None
        connection.busy = True
        payload = json.dumps({"error": message}).encode()
        self._answer(
            connection,
            "",
            code,
            [("Content-Type", "application/json")],
            payload,
            False,
            time.perf_counter() if started is None else started,
            method,
            path,
        )

    def _dispatch(self, connection: _Connection, body: bytes, complete: bool) -> None:
        request = connection.request
        assert request is not None
        connection.request = None
        connection.busy = True
        connection.buffer = connection.buffer[len(body) :] if complete else b""
        keep_alive = request.keep_alive and complete and len(body) == request.length
        environ = self._environ(connection, request, _Body(body, complete))
        if request.path in self.inline:
            self._call(connection, request, environ, keep_alive)
        else:
            if not self._workers:
                for number in range(_WORKERS):
                    worker = threading.Thread(target=self._work_loop, name="worker-%d" % number, daemon=True)
                    worker.start()
                    self._workers.append(worker)
            self._work.put((connection, request, environ, keep_alive))

    def _work_loop(self) -> None:
        while True:
            self._call(*self._work.get())

    def _call(self, connection: _Connection, request: _Request, environ: dict, keep_alive: bool) -> None:
        """Call the app for one request (on the loop or a worker) and answer it, now or once the app
        responds through the defer extension."""
        deferred = []

        def respond(status: str, headers, body: bytes) -> None:
            try:
                code = int(status.split(" ", 1)[0])
                self._answer(
                    connection, status, code, headers, body, keep_alive, request.started, request.method, request.path
                )
            except Exception:  # not sendable as HTTP (a header outside latin-1): a worker or the committer
                self._log_error(traceback.format_exc())  # must live on, and the connection be answered
                self._answer(
                    connection,
                    "",
                    500,
                    [("Content-Type", "application/json")],
                    b'{"error": "internal error"}',
                    False,
                    request.started,
                    request.method,
                    request.path,
                )

        def defer():
            deferred.append(True)
            return respond

        environ[DEFER] = defer
        response: List = []

        def start_response(status: str, response_headers, exc_info=None):
            response[:] = [status, response_headers]
            return lambda data: None

        try:
            result = self.app(environ, start_response)
            try:
                payload = b"".join(result)
            finally:
                getattr(result, "close", lambda: None)()
        except Exception:  # a failing app fails its request, not the loop
            self._log_error(traceback.format_exc())
            if not deferred:
                payload = b'{"error": "internal error"}'
                response[:] = ["500 Internal Server Error", [("Content-Type", "application/json")]]
                keep_alive = False
        if not deferred:
            respond(response[0], response[1], payload)

    def _environ(self, connection: _Connection, request: _Request, body: _Body) -> dict:
        fields = request.fields
        environ: Dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(request.path, "iso-8859-1"),
            "QUERY_STRING": request.query,
            "SERVER_NAME": self.server_name,
            "SERVER_PORT": str(self.server_port),
            "SERVER_PROTOCOL": request.version,
            "REMOTE_ADDR": connection.address[0],
            "CONTENT_TYPE": fields.get("content-type", ""),
            "CONTENT_LENGTH": fields.get("content-length", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": body,
            "wsgi.errors": self.log_stream,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in fields.items():
            if name not in ("content-type", "content-length"):
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ

    # -- answering --------------------------------------------------------------------------

    def _answer(
        self,
        connection: _Connection,
        status: str,
        code: int,
        headers,
        payload: bytes,
        keep_alive: bool,
        started: float,
        method: str,
        path: str,
    ) -> None:
        """Hand an answer over to the loop, from whichever thread has it. The loop sends it: a send
        from the committing thread would release the GIL once per answer, and take it back from the
        loop each time, where the loop sends a whole batch of answers in one go."""
        lines = [
            "HTTP/1.1 " + (status or "%d %s" % (code, _reason(code))),
            "Server: corp-error-server",
            "Date: " + _http_date(),
        ]
        has_length = False
        for name, value in headers:
            has_length = has_length or name.lower() == "content-length"
            lines.append("%s: %s" % (name, value))
        if not has_length and code != 204:
            lines.append("Content-Length: %d" % len(payload))
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        answer = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if method != "HEAD" and code != 204:
            answer += payload
        connection.answer = (answer, not keep_alive)
        self.log(
            "%s \"%s %s\" %d %d %.1fms"
            % (
                connection.address[0],
                _printable(method or "-", 20),
                _printable(path),
                code,
                len(payload),
                (time.perf_counter() - started) * 1000,
            )
        )
        with self._answered_lock:
            self._answered.append(connection)
            wake, self._wake_owed = not self._wake_owed, True
        if wake and threading.current_thread() is not self._loop_thread:
            self._wake()

    def _take_answered(self) -> None:
        """(The loop.) Take back the connections answered since; their next requests may be answered
        on the loop at once, and are taken back in the next round (not by recursion)."""
        while True:
            with self._answered_lock:
                answered, self._answered = self._answered, []
                if not answered:
                    # answers handed over from now on wake the loop; until now it was taking them anyway
                    # (a wake-up per answer would hand the GIL to the loop and back for each one)
                    self._wake_owed = False
                    return
            for connection in answered:
                self._guarded(self._send_answer, connection)

    def _send_answer(self, connection: _Connection) -> None:
        connection.out, connection.close_after = connection.answer
        connection.answer = (b"", False)
        try:
            connection.out = connection.out[connection.sock.send(connection.out) :]
        except BlockingIOError:
            pass
        except OSError:  # the client went away
            self._close(connection)
            return
        if connection.out:
            self._interest(connection)
        else:
            self._next(connection)

    def _guarded(self, work: Callable[..., None], connection: _Connection, *args: Any) -> None:
        """(The loop.) ``work(connection, *args)``: a fault with one connection closes it, not the loop."""
        try:
            work(connection, *args)
        except Exception:
            self._log_error(traceback.format_exc())
            self._close(connection)

    def _next(self, connection: _Connection) -> None:
        """(The loop.) An answer is written: the connection's next request."""
        if connection.close_after:
            self._linger(connection)
            return
        connection.busy = False
        connection.deadline = time.monotonic() + self.request_timeout
        self._advance(connection)
        # no longer writing (a writable socket would wake the loop for nothing, again and again),
        # and reading again if it stopped while the answer was in the app
        self._interest(connection)

    # -- the access log ---------------------------------------------------------------------

    def _log_error(self, text: str) -> None:
        try:
            self.log_stream.write(text)
        except (OSError, ValueError):
            pass

    def log(self, line: str) -> None:
        """Queue a line for the log stream: written within _LOG_GATHER with the lines queued meanwhile."""
        with self._log_ready:
            if len(self._log_lines) >= _LOG_QUEUED:  # a log stream nobody reads must not eat the memory
                self._log_dropped += 1
                return
            self._log_lines.append(line)
            if self._log_writer is None:
                self._log_writer = threading.Thread(target=self._write_log, name="access-log", daemon=True)
                self._log_writer.start()
            elif len(self._log_lines) == 1:
                self._log_ready.notify()

    def _write_log(self) -> None:
        while True:
            with self._log_ready:
                while not self._log_lines:
                    self._log_ready.wait()
            time.sleep(_LOG_GATHER)  # the lines of a burst's other requests join this write
            self.flush_log()

    def flush_log(self) -> None:
        """Write every queued line now (the log's thread, and close_log)."""
        with self._log_write_lock:
            with self._log_ready:
                lines, self._log_lines = self._log_lines, []
                if self._log_dropped:
                    lines.append("%d access-log lines dropped: the log stream did not keep up" % self._log_dropped)
                    self._log_dropped = 0
            if not lines:
                return
            try:
                self.log_stream.write("\n".join(lines) + "\n")
                self.log_stream.flush()
            except (OSError, ValueError):
                pass

    def close_log(self, wait: float) -> bool:
        """At shutdown: write what is queued, waiting ``wait`` seconds at most. False when the log stream
        did not take it (a pipe nobody reads): the process must then not wait for it either."""
        writer = threading.Thread(target=self.flush_log, name="access-log-last", daemon=True)
        writer.start()
        writer.join(wait)
        return not writer.is_alive()


def make_server(
    app: Callable,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    request_timeout: float = 10.0,
    log_stream: Optional[TextIO] = None,
    inline: frozenset = frozenset(),
    max_body: int = _MAX_BODY,
) -> _Server:
    """A bound, not yet serving, server for ``app`` (``port=0`` picks a free port). Requests for the
    ``inline`` paths are called on the loop thread (they must not block); bodies over ``max_body``
    bytes are not read."""
    return _Server((host, port), app, request_timeout, log_stream or sys.stderr, inline, max_body)


def serve(server: _Server) -> bool:
    """Serve until SIGINT or SIGTERM, then stop accepting and return whether the log was written."""

    def stop(signum, frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host, port = str(server.server_address[0]), server.server_address[1]
    server.log("listening on http://%s:%d" % ("[%s]" % host if ":" in host else host, port))
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return server.close_log(wait=1.0)

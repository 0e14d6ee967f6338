"""The embedded HTTP/1.1 server: a thread per keep-alive connection, a lean parser, bounded clients.

Beacons arrive in bursts over keep-alive connections, and each request's own work (validation and
a share of a group commit) is small, so what the gateway costs per request matters:
``http.server`` parses every header block with the ``email`` package and writes a response in
several system calls. Here a request head is split by hand, the answer leaves in one ``sendall``,
the Date header is formatted once a second, and the access log is written by a thread of its own
in one call per 50 ms. A thread per connection keeps the WSGI app
synchronous while its requests wait together on one commit (see ingest.py); the threads sleep in
``recv`` or on that commit, so adding connections adds waiting, not work.

What a slow or hostile client can hold is bounded: the whole request head must arrive within the
timeout (trickling bytes does not reset it), a body read waits at most the timeout per read, heads
and header counts are limited, and past a cap on connections new ones are closed at once.
"""

from __future__ import annotations

import json
import signal
import socket
import socketserver
import sys
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple
from urllib.parse import unquote

_DRAIN_LIMIT = 64 * 1024  # unread request body we still skip to keep a connection alive
_LOG_GATHER = 0.05  # seconds the access log gathers lines for one write (a write per line is a system call)
_LOG_QUEUED = 10_000  # access-log lines kept waiting for a slow log stream; more are counted, not kept
_MAX_CONNECTIONS = 256  # beyond this, new connections are closed at once
_MAX_HEAD = 64 * 1024  # request line and headers
_MAX_HEADERS = 100
_RECV = 65536


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Body:
    """The request body: what is buffered of it first, never more than Content-Length bytes."""

    def __init__(self, connection: _Connection, length: int, expect_continue: bool) -> None:
        self._connection = connection
        self.remaining = length
        self._expect_continue = expect_continue

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        if size <= 0:
            return b""
        if self._expect_continue:  # the client waits for this before it sends the body
            self._expect_continue = False
            self._connection.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        data = self._connection.take(size)
        self.remaining -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)  # bodies here are JSON documents, read whole

    def __iter__(self):
        return iter(lambda: self.read(_RECV), b"")


def _printable(text: str, limit: int = 200) -> str:
    # request lines are attacker-controlled: no terminal escapes into the operator's log
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


_date_cache: List = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


class _Connection(socketserver.BaseRequestHandler):
    """One client connection: requests in order until either side closes or the client idles."""

    server: _Server

    def setup(self) -> None:
        self.sock: socket.socket = self.request
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.eof = False

    # -- reading ----------------------------------------------------------------------------

    def _fill(self, timeout: float) -> bool:
        """One recv into the buffer; False at end of stream."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(_RECV)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def take(self, size: int) -> bytes:
        """Up to ``size`` body bytes; short only at end of stream. Raises OSError on a timeout."""
        while len(self.buffer) < size and not self.eof:
            try:
                self._fill(self.server.request_timeout)
            except OSError:
                self.eof = True  # a stalled body: answer, then close rather than wait again
                raise
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _read_head(self) -> Optional[bytes]:
        """The next request head (without its blank line), or None when the client is done or too slow."""
        deadline = time.monotonic() + self.server.request_timeout
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            cut = 4
            if end < 0:
                end, cut = self.buffer.find(b"\n\n"), 2
            if end >= 0:
                head, self.buffer = self.buffer[:end], self.buffer[end + cut :]
                return head
            if len(self.buffer) > _MAX_HEAD:
                raise _BadRequest(431, "request head over %d bytes" % _MAX_HEAD)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                return None
            try:
                if not self._fill(remaining):
                    return None
            except OSError:
                return None
            if not self.buffer.strip(b"\r\n"):
                self.buffer = b""  # blank lines between requests are allowed (RFC 9112 2.2)

    # -- one request ------------------------------------------------------------------------

    def handle(self) -> None:
        self.command, self.path = "", ""
        while True:
            started = time.perf_counter()
            try:
                head = self._read_head()
                if head is None:
                    return
                keep_alive = self._serve(head, started)
            except _BadRequest as error:
                self._error(error.status, str(error), started)
                return
            except OSError:  # the client went away or stalled mid-write
                return
            if not keep_alive:
                return

    def _parse(self, head: bytes) -> Tuple[str, str, str, List[Tuple[str, str]]]:
        lines = head.decode("iso-8859-1").split("\n")
        words = lines[0].rstrip("\r").split()
        if not words:
            raise _BadRequest(400, "empty request line")
        if len(words) == 3:
            self.command, self.path, version = words
            if not version.startswith("HTTP/1.") or not version[7:].isdigit():
                if version.startswith("HTTP/") and version[5:6].isdigit() and version[5:6] != "0":
                    raise _BadRequest(505, "HTTP version %s not supported" % _printable(version, 20))
                raise _BadRequest(400, "bad request version %s" % _printable(version, 20))
        elif len(words) == 2:
            # a request line without a version reads as HTTP/0.9; nobody speaks it: a status line all the same
            self.command, self.path = words
            if self.command != "GET":
                raise _BadRequest(400, "bad HTTP/0.9 request type %s" % _printable(self.command, 20))
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
        return self.command, self.path, version, headers

    def _serve(self, head: bytes, started: float) -> bool:
        method, target, version, headers = self._parse(head)
        fields: Dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            fields[key] = fields[key] + "," + value if key in fields else value
        connection = fields.get("connection", "").lower()
        keep_alive = (version == "HTTP/1.1" and "close" not in connection) or (
            version == "HTTP/1.0" and "keep-alive" in connection
        )
        path, _, query = target.partition("?")
        if path.startswith("//"):
            path = "/" + path.lstrip("/")  # as http.server: no scheme-relative path reaches the app
        if "transfer-encoding" in fields:
            self._respond(
                411,
                [("Content-Type", "application/json")],
                b'{"error": "chunked request bodies are not supported; send Content-Length"}',
                False,
                started,
                method,
                path,
            )
            return False
        declared = fields.get("content-length", "0")  # several headers were joined by "," above
        if not (declared.isascii() and declared.isdigit()):
            # where the body ends is in doubt (a proxy may read it otherwise): no next request on this connection
            self._respond(
                400,
                [("Content-Type", "application/json")],
                b'{"error": "Content-Length must be one header of digits"}',
                False,
                started,
                method,
                path,
            )
            return False
        length = int(declared)
        body = _Body(self, length, version == "HTTP/1.1" and fields.get("expect", "").lower() == "100-continue")
        environ = self._environ(method, path, query, version, fields, body)
        response: List = []

        def start_response(status: str, response_headers, exc_info=None):
            response[:] = [status, response_headers]
            return lambda data: None

        result = self.server.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        code = int(response[0].split(" ", 1)[0])
        if body.remaining:
            keep_alive = keep_alive and self._skip(body)
        self._respond(code, response[1], payload, keep_alive, started, method, path, response[0])
        return keep_alive

    def _skip(self, body: _Body) -> bool:
        """Read what the app left of the body, to reach the next request; False: close instead."""
        if body.remaining > _DRAIN_LIMIT or self.eof:
            return False
        try:
            body.read()
        except OSError:
            return False
        return not self.eof

    def _environ(self, method: str, path: str, query: str, version: str, fields: Dict[str, str], body: _Body) -> dict:
        environ: Dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "iso-8859-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": self.server.server_name,
            "SERVER_PORT": str(self.server.server_port),
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": fields.get("content-type", ""),
            "CONTENT_LENGTH": fields.get("content-length", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": body,
            "wsgi.errors": self.server.log_stream,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in fields.items():
            if name not in ("content-type", "content-length"):
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ

    # -- answering --------------------------------------------------------------------------

    def _respond(
        self,
        code: int,
        headers,
        payload: bytes,
        keep_alive: bool,
        started: float,
        method: str,
        path: str,
        status: str = "",
    ) -> None:
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
        self.sock.sendall(answer)
        self.server.log(
            "%s \"%s %s\" %d %d %.1fms"
            % (
                self.client_address[0],
                _printable(method or "-", 20),
                _printable(path),
                code,
                len(payload),
                (time.perf_counter() - started) * 1000,
            )
        )

    def _error(self, code: int, message: str, started: float) -> None:
        # malformed request lines and headers: the same JSON error shape as the application's
        payload = json.dumps({"error": message}).encode()
        try:
            self._respond(
                code, [("Content-Type", "application/json")], payload, False, started, self.command, self.path
            )
        except OSError:
            pass


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # a burst of new connections waits in the kernel, not refused

    def __init__(self, address, app: Callable, request_timeout: float, log_stream: TextIO) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.request_timeout = request_timeout
        self.log_stream = log_stream
        self._log_ready = threading.Condition(threading.Lock())
        self._log_lines: List[str] = []
        self._log_dropped = 0
        self._log_writer: Optional[threading.Thread] = None
        self._log_write_lock = threading.Lock()
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, _Connection)
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)

    def process_request(self, request, client_address) -> None:
        with self._active_lock:
            if self._active >= _MAX_CONNECTIONS:
                self.shutdown_request(request)
                return
            self._active += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

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
) -> _Server:
    """A bound, not yet serving, server for ``app`` (``port=0`` picks a free port)."""
    return _Server((host, port), app, request_timeout, log_stream or sys.stderr)


def serve(server: _Server) -> bool:
    """Serve until SIGINT or SIGTERM, then stop accepting and return whether the log was written."""

    def stop(signum, frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host, port = str(server.server_address[0]), server.server_address[1]
    server.log("listening on http://%s:%d" % ("[%s]" % host if ":" in host else host, port))
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return server.close_log(wait=1.0)

"""The embedded HTTP/1.1 server: threads, keep-alive, per-connection timeouts, one log line a request.

``wsgiref.simple_server`` answers one request per connection; beacons arrive in bursts from the
same clients, so this small WSGI gateway keeps connections open, and bounds what a slow or hostile
client can hold: a socket timeout per connection and a cap on concurrent connections.
"""
from __future__ import annotations

import io
import json
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Dict, List, Optional, TextIO
from urllib.parse import unquote

_DRAIN_LIMIT = 64 * 1024        # unread request body we still skip to keep a connection alive
_MAX_CONNECTIONS = 256          # beyond this, new connections are closed at once


class _Body(io.RawIOBase):
    """The request body: never more than Content-Length bytes of the connection."""

    def __init__(self, stream, length: int) -> None:
        super().__init__()
        self._stream = stream
        self.remaining = length

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self._stream.read(size) if size else b""
        self.remaining -= len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _printable(text: str, limit: int = 200) -> str:
    # request lines are attacker-controlled: no terminal escapes into the operator's log
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "corp-error-server"
    sys_version = ""
    # headers and body leave in two writes; with Nagle, a keep-alive client waits on a delayed ACK
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # type: ignore[misc]  # per connection, on purpose
        super().setup()

    def _run(self) -> None:
        started = time.perf_counter()
        path, _, query = self.path.partition("?")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._respond(411, [("Content-Type", "application/json")],
                          b'{"error": "chunked request bodies are not supported; send Content-Length"}', started, path)
            return
        try:
            length = max(int(self.headers.get("Content-Length") or 0), 0)
        except ValueError:
            length = 0
        body = _Body(self.rfile, length)
        environ = self._environ(path, query, body)
        response: List = []

        def start_response(status: str, headers, exc_info=None):
            response[:] = [status, headers]
            return lambda data: None

        result = self.server.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        code = int(response[0].split(" ", 1)[0])
        if body.remaining:
            self._skip(body)
        self._respond(code, response[1], payload, started, path)

    def _skip(self, body: _Body) -> None:
        if body.remaining > _DRAIN_LIMIT:
            self.close_connection = True
            return
        try:
            body.read()
        except OSError:
            self.close_connection = True

    def _respond(self, code: int, headers, payload: bytes, started: float, path: str) -> None:
        if getattr(self, "request_version", None) == "HTTP/0.9":
            # a request line without a version ("GET  HTTP/1.1" with the path missing) is not HTTP/0.9
            # spoken by anyone: answer with a status line all the same
            self.request_version = self.protocol_version
            self.close_connection = True
        self.send_response_only(code)
        self.send_header("Date", self.date_time_string())
        names = set()
        for name, value in headers:
            names.add(name.lower())
            self.send_header(name, value)
        if "content-length" not in names and code != 204:
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code != 204:
            self.wfile.write(payload)
        self.wfile.flush()
        self.server.log("%s \"%s %s\" %d %d %.1fms" % (
            self.client_address[0], _printable(self.command or "-", 20), _printable(path), code, len(payload),
            (time.perf_counter() - started) * 1000))

    def _environ(self, path: str, query: str, body: _Body) -> dict:
        environ: Dict[str, Any] = {
            "REQUEST_METHOD": self.command, "SCRIPT_NAME": "", "PATH_INFO": unquote(path, "iso-8859-1"),
            "QUERY_STRING": query, "SERVER_NAME": self.server.server_name,
            "SERVER_PORT": str(self.server.server_port), "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0], "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": self.headers.get("Content-Length", ""),
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": body,
            "wsgi.errors": self.server.log_stream, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = environ[key] + "," + value if key in environ else value
        return environ

    def __getattr__(self, name: str):
        # every method, even one made up, reaches the application, which answers 405 (not 501)
        if name.startswith("do_"):
            return self._run
        raise AttributeError(name)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        # malformed request lines and headers: the same JSON error shape as the application's
        self.close_connection = True
        payload = json.dumps({"error": message or self.responses.get(code, ("error",))[0]}).encode()
        if not hasattr(self, "command") or self.command is None:
            self.command = ""
        try:
            self._respond(code, [("Content-Type", "application/json")], payload, time.perf_counter(),
                          getattr(self, "path", "") or "")
        except OSError:
            pass

    def log_request(self, code="-", size="-") -> None:
        pass   # _respond logs, with the timing

    def log_message(self, format: str, *args) -> None:
        self.server.log("%s %s" % (self.client_address[0], _printable(format % args)))


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, app: Callable, request_timeout: float, log_stream: TextIO) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.request_timeout = request_timeout
        self.log_stream = log_stream
        self._log_lock = threading.Lock()
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on machines without DNS
        socketserver.TCPServer.server_bind(self)
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
        with self._log_lock:
            try:
                self.log_stream.write(line + "\n")
                self.log_stream.flush()
            except (OSError, ValueError):
                pass


def make_server(app: Callable, host: str = "127.0.0.1", port: int = 8000, *, request_timeout: float = 10.0,
                log_stream: Optional[TextIO] = None) -> _Server:
    """A bound, not yet serving, server for ``app`` (``port=0`` picks a free port)."""
    return _Server((host, port), app, request_timeout, log_stream or sys.stderr)


def serve(server: _Server) -> None:
    """Serve until SIGINT or SIGTERM, then stop accepting and return."""
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

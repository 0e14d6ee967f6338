"""Dashboard test helpers: a browser-like HTTP client (cookies, forms, no redirects) and a webhook receiver."""

from __future__ import annotations

import http.server
import json
import re
import socketserver
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

from support import WAIT_TIMEOUT

SIG = "AttributeError: module 'tinylib' has no attribute 'frobnicate' @ __main__.main"


def env_body(env_hash: str, packages: dict, python: str = "3.11.7") -> dict:
    return {
        "env_hash": env_hash,
        "packages": ["%s==%s" % kv for kv in packages.items()],
        "python_ver": python,
        "os_info": "Linux-6.1.0-x86_64-with-glibc2.36",
        "machine_arch": "x86_64",
        "env_vars": {"LANG": "C.UTF-8"},
    }


def error_beacon(env_hash: str, script_id: str, sig: str = SIG, **extra) -> dict:
    body = {
        "kind": "error",
        "env_hash": env_hash,
        "script_id": script_id,
        "ts": time.time(),
        "trace": "Traceback (most recent call last):\n  File \"x.py\", line 1\n" + sig.split(" @ ")[0],
        "error_sig": sig,
    }
    body.update(extra)
    return body


def success_beacon(env_hash: str, script_id: str, prev_env: str, sig: str = SIG, **extra) -> dict:
    body = {
        "kind": "success",
        "env_hash": env_hash,
        "script_id": script_id,
        "ts": time.time(),
        "prev_env_hash": prev_env,
        "prev_error_sig": sig,
    }
    body.update(extra)
    return body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Browser:
    """Keeps cookies like a browser, sends forms, shows redirects instead of following them."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies: Dict[str, str] = {}
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def request(
        self,
        method: str,
        path: str,
        *,
        form: Optional[dict] = None,
        json_body: Optional[dict] = None,
        headers: Optional[dict] = None,
        token: Optional[str] = None,
    ) -> Tuple[int, Dict[str, str], str]:
        data = None
        request = urllib.request.Request(self.base + path, method=method)
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            request.add_header("Content-Type", "application/json")
        request.data = data
        request.add_header("Accept", "text/html,application/json")
        if self.cookies:
            request.add_header("Cookie", "; ".join("%s=%s" % kv for kv in self.cookies.items()))
        if token:
            request.add_header("Authorization", "Bearer " + token)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with self._opener.open(request, timeout=30) as response:
                status, head, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, head, body = error.code, error.headers, error.read()
        for cookie in head.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return (
            status,
            {k.lower(): v for k, v in head.items()} | {"set-cookie": "\n".join(head.get_all("Set-Cookie") or [])},
            body.decode("utf-8"),
        )

    def get(self, path: str, **kw) -> Tuple[int, Dict[str, str], str]:
        return self.request("GET", path, **kw)

    def api(self, path: str, **kw):
        status, _, body = self.request("GET", path, **kw)
        assert status == 200, (status, body)
        return json.loads(body)

    def post_json(self, path: str, body: dict, token: Optional[str] = None) -> int:
        return self.request("POST", path, json_body=body, token=token)[0]


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{32})"', page)
    assert match, "no CSRF field in the page"
    return match.group(1)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False


class WebhookReceiver:
    """A real HTTP endpoint for alerts: answers 200, 500, or holds every request until released."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.bodies: List[dict] = []
        self.cond = threading.Condition()
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.cond:
                    receiver.bodies.append(json.loads(body))
                    receiver.cond.notify_all()
                if receiver.mode == "hang":
                    receiver.release.wait(60)
                status = 500 if receiver.mode == "500" else (400 if receiver.mode == "400" else 200)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def wait(self, count: int, where=lambda body: True, timeout: float = WAIT_TIMEOUT) -> List[dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [b for b in self.bodies if where(b)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("expected %d webhook call(s), got %r" % (count, self.bodies))
                self.cond.wait(left)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

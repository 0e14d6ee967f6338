"""Alerts: webhooks on a new error group, a regression, and a fix becoming available.

Ingest must never wait on a webhook, so the app only drops a note into a bounded in-memory queue
(a dict of group keys, coalesced); one thread turns notes into events (it reads storage and asks
the engine, off the request path), and each webhook has its own thread and bounded queue, so a
webhook that hangs delays only itself. Each POST has a timeout and is retried a bounded number of
times with backoff on a 5xx, a 429 or a network error; what still fails is dropped with a log line.
Alerts are best effort by design: a full queue drops the event rather than holding ingest.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, TextIO, Tuple

STYLES = ("json", "slack")
_QUEUE = 1000  # events waiting per webhook before new ones are dropped
_PENDING = 10000  # groups waiting to be looked at before new notes are dropped


class Webhook(NamedTuple):
    url: str
    style: str  # "slack": {"text": ...}; "json": the event with its group


def parse_webhook(spec: str) -> Webhook:
    """``URL`` (generic JSON), ``json=URL`` or ``slack=URL``; ValueError naming the problem."""
    style, sep, url = spec.strip().partition("=")
    if not sep or style not in STYLES:
        style, url = "json", spec.strip()
    if not url.startswith(("http://", "https://")):
        # the URL is a secret (a Slack webhook's path is its token): the message shows its scheme at most
        scheme, has_scheme, _ = url.partition("://")
        given = "scheme %r" % scheme[:20] if has_scheme else "no scheme"
        raise ValueError("webhook with %s: expected http(s)://..., optionally prefixed by slack= or json=" % given)
    return Webhook(url, style)


def body_of(style: str, event: dict) -> bytes:
    if style == "slack":  # Slack reads &, < and > as its own markup: a signature must not become a link
        text = event["text"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return json.dumps({"text": text}).encode("utf-8")
    return json.dumps(event).encode("utf-8")


class _Sender:
    """One webhook: a bounded queue and the thread that posts its events, retrying a bounded number of times."""

    def __init__(
        self,
        hook: Webhook,
        attempts: int,
        timeout: float,
        backoff: float,
        stop: threading.Event,
        log: Callable[[str], None],
    ) -> None:
        self.hook = hook
        parts = urllib.parse.urlsplit(hook.url)  # a webhook's path and query are its secret: never logged
        self._where = "%s://%s" % (parts.scheme, parts.netloc.rpartition("@")[2])
        self._attempts, self._timeout, self._backoff = attempts, timeout, backoff
        self._stop, self._log = stop, log
        self.queue: queue.Queue[Optional[dict]] = queue.Queue(_QUEUE)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self.thread.start()

    def put(self, event: dict) -> None:
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self._log("webhook %s: queue full, dropped a %s alert" % (self._where, event["event"]))

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self.queue.get()
            if event is None:
                return
            self._deliver(event)

    def _deliver(self, event: dict) -> None:
        data = body_of(self.hook.style, event)
        for attempt in range(self._attempts):
            request = urllib.request.Request(
                self.hook.url,
                data=data,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "corp-error-server"},
            )
            try:
                with self._opener.open(request, timeout=self._timeout) as response:
                    response.read(65536)
                return
            except urllib.error.HTTPError as error:
                if error.code < 500 and error.code != 429:
                    self._log(
                        "webhook %s: refused the %s alert (%d), not retried" % (self._where, event["event"], error.code)
                    )
                    return
                reason = "HTTP %d" % error.code
            except (OSError, ValueError) as error:  # refused, reset, timed out, bad URL
                reason = str(error) or type(error).__name__
            if attempt + 1 < self._attempts and self._stop.wait(self._backoff * 2**attempt):
                return
        self._log(
            "webhook %s: gave up on the %s alert after %d attempts (%s)"
            % (self._where, event["event"], self._attempts, reason)
        )


class Alerts:
    """Notes from ingest in, events out to every webhook; ``check(key, new, regressed)`` builds the events."""

    def __init__(
        self,
        hooks: Sequence[Webhook],
        check: Callable[[str, bool, bool], List[dict]],
        *,
        attempts: int = 4,
        timeout: float = 5.0,
        backoff: float = 1.0,
        log: Optional[TextIO] = None,
    ) -> None:
        self._stop = threading.Event()
        self._log_stream = log
        self._check = check
        self._senders = [_Sender(h, attempts, timeout, backoff, self._stop, self._log) for h in hooks]
        self._pending: Dict[str, Tuple[bool, bool]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()

    def _log(self, line: str) -> None:
        stream = self._log_stream or sys.stderr
        try:
            stream.write("alerts: %s\n" % line)
            stream.flush()
        except Exception:
            pass

    def note(self, group_key: str, new_group: bool = False, regressed: bool = False) -> None:
        """Called by ingest: never blocks on anything but a dict update."""
        with self._lock:
            was_new, was_regressed = self._pending.get(group_key, (False, False))
            if group_key not in self._pending and len(self._pending) >= _PENDING:
                return
            self._pending[group_key] = (was_new or new_group, was_regressed or regressed)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                pending, self._pending = self._pending, {}
            for key, (new_group, regressed) in pending.items():
                if self._stop.is_set():
                    return
                try:
                    events = self._check(key, new_group, regressed)
                except Exception as error:  # storage briefly unavailable: this note is lost, not ingest
                    self._log("could not look at group %r: %s" % (key[:80], error))
                    continue
                for event in events:
                    for sender in self._senders:
                        sender.put(event)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for sender in self._senders:
            try:
                sender.queue.put_nowait(None)
            except queue.Full:
                pass

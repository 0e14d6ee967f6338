"""Suggestions computed ahead of the pages: after ingest, off the request path, one group at a time.

The list page shows the engine's suggestion for each of its groups, kept under the group's
revision; a page whose groups all moved since it was last shown would otherwise run the engine
for each of them while the browser waits. Ingest only drops a note (the group's key) into a
bounded, coalescing set; one thread takes the notes in order and has the app compute what the
pages will ask for. It stays small next to ingest: it rests ``_REST`` times as long as it worked
(it holds the GIL a sixth of the time at most), and a full set drops new notes -- such a group's
suggestion is computed by the page that shows it, as without this thread.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Dict

_PENDING = 10000         # groups waiting before new notes are dropped
_REST = 5.0              # rest after each group, in multiples of the time it took


class Ahead:
    """``note(key)`` from ingest; a thread runs ``compute(key)`` for each noted group, one at a time."""

    def __init__(self, compute: Callable[[str], None]) -> None:
        self._compute = compute
        self._pending: Dict[str, None] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="suggest-ahead", daemon=True)
        self._thread.start()

    def note(self, group_key: str) -> None:
        """Called by ingest: never blocks on more than a dict update."""
        with self._lock:
            if group_key not in self._pending and len(self._pending) < _PENDING:
                self._pending[group_key] = None
                self._wake.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every note so far was computed within ``timeout`` seconds (for benchmarks and tests)."""
        with self._lock:
            return self._wake.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._pending or self._stop.is_set())
                if self._stop.is_set():
                    return
                key = next(iter(self._pending))
                del self._pending[key]
                self._busy = True
            started = time.perf_counter()
            try:
                self._compute(key)
            except Exception as error:   # storage briefly unavailable: the page computes it when shown
                _log("could not compute ahead for group %r: %s" % (key[:80], error))
            with self._lock:
                self._busy = False
                self._wake.notify_all()
            if self._stop.wait((time.perf_counter() - started) * _REST):
                return

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        self._thread.join(timeout=10)


def _log(line: str) -> None:
    try:
        sys.stderr.write("suggest-ahead: %s\n" % line)
    except Exception:
        pass

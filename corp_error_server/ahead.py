"""Suggestions computed ahead of the pages: after ingest, off the request path, one group at a time.

The list page shows the engine's suggestion for each of its groups, kept under the group's
revision; a page whose groups all moved since it was last shown would otherwise run the engine
for each of them while the browser waits. Ingest only drops a note (the group's key) into a
bounded, coalescing set; one thread has the app compute what the pages will ask for, a group at a
time, once the group has been quiet for ``_QUIET`` seconds (or ``_LATEST`` after its first note):
during a burst a group's answer would be stale again at once, and ingest keeps the machine. It rests
``_REST`` times as long as it worked, and a full set drops new notes -- such a group's suggestion
is computed by the page that shows it, as without this thread.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Dict, Optional, Tuple

_PENDING = 10000  # groups waiting before new notes are dropped
_QUIET = 0.5  # seconds without a note after which a group is computed ...
_LATEST = 5.0  # ... or seconds after its first note, whichever comes first
_REST = 5.0  # rest after each group, in multiples of the time it took


class Ahead:
    """``note(key)`` from ingest; a thread runs ``compute(key)`` for each noted group, one at a time."""

    def __init__(self, compute: Callable[[str], None]) -> None:
        self._compute = compute
        self._pending: Dict[str, Tuple[float, float]] = {}  # key -> (first, last) note, monotonic
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="suggest-ahead", daemon=True)
        self._thread.start()

    def note(self, group_key: str) -> None:
        """Called by ingest: never blocks on more than a dict update."""
        now = time.monotonic()
        with self._lock:
            noted = self._pending.get(group_key)
            if noted is None and len(self._pending) >= _PENDING:
                return
            self._pending[group_key] = (noted[0] if noted else now, now)
            if noted is None:  # a group noted again is due no sooner than before: the thread knows when
                self._wake.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every note so far was computed within ``timeout`` seconds (for benchmarks and tests)."""
        with self._lock:
            return self._wake.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _due(self) -> Tuple[Optional[str], Optional[float]]:
        """A group due now, else None and how long until one is (None: nothing is waiting)."""
        now = time.monotonic()
        wait: Optional[float] = None
        for key, (first, last) in self._pending.items():
            due = min(last + _QUIET, first + _LATEST)
            if due <= now:
                return key, 0.0
            wait = due - now if wait is None else min(wait, due - now)
        return None, wait

    def _run(self) -> None:
        while True:
            with self._lock:
                key, wait = self._due()
                while key is None and not self._stop:
                    self._wake.wait(wait)
                    key, wait = self._due()
                if key is None or self._stop:
                    return
                del self._pending[key]
                self._busy = True
            started = time.monotonic()
            try:
                self._compute(key)
            except Exception as error:  # storage briefly unavailable: the page computes it when shown
                _log("could not compute ahead for group %r: %s" % (key[:80], error))
            worked = time.monotonic() - started
            with self._lock:
                self._busy = False
                self._wake.notify_all()
                self._wake.wait_for(lambda: self._stop, worked * _REST)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout=10)


def _log(line: str) -> None:
    try:
        sys.stderr.write("suggest-ahead: %s\n" % line)
    except Exception:
        pass

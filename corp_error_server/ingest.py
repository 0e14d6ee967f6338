"""Group commit: the writes of concurrent requests share one transaction.

A durable commit costs a flush to disk (SQLite's fsync, PostgreSQL's WAL flush) whatever it holds,
so one transaction per request caps ingest at the disk's flush rate, and clients added in a burst
only queue on the database lock. Here a request hands its beacon (or environment) to the committer
and waits; the committer stores everything waiting in one ``Storage.add_beacons`` call and wakes
each request only after that transaction committed, so a 2xx still means durable. While one
transaction runs, the next batch gathers: the busier the server, the more each commit carries.

What waits is bounded: past ``max_waiting`` a request is refused at once with ``Busy`` (the app
answers 503 with Retry-After, the agent keeps the beacon in its spool) rather than queueing without
bound. The committer's thread is started by the first write of each process, so a server that forks
its workers (gunicorn) gets one committer per worker, none inherited half-way from the parent.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import List, Optional, Tuple

from .storage import Beacon, BeaconResult, Env, Storage

DEFAULT_MAX_WAITING = 1024      # writes accepted and not yet committed, per process
_MAX_BATCH = 256                # writes in one transaction: bounds how long one commit holds the lock
_ANSWER_TIMEOUT = 60.0          # a request waits no longer for its commit (then 503: not acknowledged)
RETRY_AFTER = 1                 # seconds a refused client waits; one batch commits in milliseconds


class Busy(Exception):
    """More writes are waiting than the bound allows: try again after ``RETRY_AFTER`` seconds."""


class _Write:
    __slots__ = ("item", "result", "error", "done")

    def __init__(self, item: Tuple[Optional[Beacon], Optional[Env]]) -> None:
        self.item = item
        self.result: Optional[BeaconResult] = None
        self.error: Optional[BaseException] = None
        self.done = threading.Lock()    # held until committed: a bare lock wakes a waiter cheaper than an Event
        self.done.acquire()


class Committer:
    """Batches the writes of concurrent requests into shared transactions of ``storage``."""

    def __init__(self, storage: Storage, max_waiting: int = DEFAULT_MAX_WAITING) -> None:
        self._storage = storage
        self._max_waiting = max_waiting
        self._reset()
        this = weakref.WeakMethod(self._reset)
        os.register_at_fork(after_in_child=lambda: (this() or (lambda: None))())

    def _reset(self) -> None:
        # also in a forked child: the parent's lock, queue and thread are not this process's
        self._ready = threading.Condition(threading.Lock())
        self._queue: List[_Write] = []
        self._waiting = 0               # queued + in the transaction running now
        self._thread: Optional[threading.Thread] = None
        self.transactions = 0
        self.stored = 0

    def stats(self) -> dict:
        with self._ready:
            return {"waiting": self._waiting, "transactions": self.transactions, "writes": self.stored}

    def add(self, beacon: Optional[Beacon], env: Optional[Env] = None) -> BeaconResult:
        """Store one beacon (or, without one, an environment); return once it is committed."""
        write = _Write((beacon, env))
        with self._ready:
            if self._waiting >= self._max_waiting:
                raise Busy("%d writes are waiting for the database" % self._waiting)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="corp-error-committer", daemon=True)
                self._thread.start()
            self._queue.append(write)
            self._waiting += 1
            self._ready.notify()
        if not write.done.acquire(timeout=_ANSWER_TIMEOUT):
            # it may still commit: unacknowledged, the agent sends it again and the event id dedupes it
            raise Busy("the database did not commit within %.0f s" % _ANSWER_TIMEOUT)
        if write.error is not None:
            raise write.error
        assert write.result is not None
        return write.result

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch = self._queue[:_MAX_BATCH]
                del self._queue[:len(batch)]
            try:
                self._commit(batch)
            finally:
                with self._ready:
                    self._waiting -= len(batch)
                for write in batch:
                    write.done.release()

    def _commit(self, batch: List[_Write]) -> None:
        try:
            results = self._storage.add_beacons([write.item for write in batch])
        except Exception as error:   # nothing of this transaction is stored: each request fails with it
            for write in batch:
                write.error = error
            return
        for write, result in zip(batch, results):
            if result.error is not None:
                write.error = result.error
            else:
                write.result = result
        with self._ready:
            self.transactions += 1
            self.stored += len(batch)

"""Group commit: the writes of concurrent requests share one transaction.

A durable commit costs a flush to disk (SQLite's fsync, PostgreSQL's WAL flush) whatever it holds,
so one transaction per request caps ingest at the disk's flush rate, and clients added in a burst
only queue on the database lock. Here a request hands its beacon (or environment) to the committer
and waits; everything waiting is stored in one ``Storage.add_beacons`` call and each request is
woken only after that transaction committed, so a 2xx still means durable. While one transaction
runs, the next batch gathers: the busier the server, the more each commit carries.

For requests that wait (``add``), no thread of its own does the committing: the request that
finds nobody committing commits the batch holding its write, then passes the lead to a request of
the next batch, which is woken anyway. A lone request thus commits on its own thread with no
hand-off at all, and a busy server wakes each request once.

Keep-alive clients send their next beacon as soon as the last one is answered, so the requests a
commit releases come back a moment after the next commit has started, and would split into two
cohorts taking turns at half the batch each. A leader therefore holds its batch back until as many
writes wait as were in flight during the last commit, for at most half that commit's time (and
never more than ``_GATHER_MAX``): a lone client never waits, and a burst fills each commit.

Every ``_FOLD_EVERY`` seconds (or ``_FOLD_WRITES`` writes, so that what a reader adds up stays
small), a request whose batch committed also has the storage fold the counts its bursts left
pending (``Storage.fold_counts``): after its own answer is decided, and while the next batch gathers.

A server that answers requests from an event loop (server.py) must not block its one thread on
a commit: it hands a write over with ``submit`` and a callback instead. Such a write never leads:
a committer thread of its own (started on the first one) commits for it, and the callback, on
that thread, answers the request once the transaction committed. So no thread is woken per
request.

What waits is bounded: past ``max_waiting`` a request is refused at once with ``Busy`` (the app
answers 503 with Retry-After, the agent keeps the beacon in its spool) rather than queueing without
bound. A forked child (a gunicorn worker) starts with an empty queue of its own.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Callable, List, Optional, Tuple

from .storage import Beacon, BeaconResult, Env, Storage, StorageError

DEFAULT_MAX_WAITING = 1024  # writes accepted and not yet committed, per process
_MAX_BATCH = 256  # writes in one transaction: bounds how long one commit holds the lock
_ANSWER_TIMEOUT = 60.0  # a request waits no longer for its commit (then 503: not acknowledged)
RETRY_AFTER = 1  # seconds a refused client waits; one batch commits in milliseconds
_GATHER_MAX = 0.002  # seconds a leader waits, at most, for the last commit's writes to come back
_FOLD_EVERY = 0.5  # seconds between folds of the pending counts: a fold writes each count row once
_FOLD_WRITES = 1000  # ... or writes committed since the last fold, whichever comes first


class Busy(Exception):
    """More writes are waiting than the bound allows: try again after ``RETRY_AFTER`` seconds."""


Done = Callable[[Optional[BeaconResult], Optional[BaseException]], None]


Prepare = Callable[[], Beacon]


class _Write:
    __slots__ = ("item", "prepare", "result", "error", "done", "lead", "abandoned", "callback")

    def __init__(
        self,
        item: Tuple[Optional[Beacon], Optional[Env]],
        callback: Optional[Done] = None,
        prepare: Optional[Prepare] = None,
    ) -> None:
        self.item = item
        self.prepare = prepare  # gives the beacon to store in place of item's, on the committing thread
        self.callback = callback  # submitted: called once committed, where a blocking add is woken
        self.result: Optional[BeaconResult] = None
        self.error: Optional[BaseException] = None
        self.done = threading.Lock()  # held until committed (or led): a bare lock wakes cheaper than an Event
        self.done.acquire()
        self.lead = False  # woken to commit the next batch, not with its own result
        self.abandoned = False  # its request gave up waiting: never to be woken to lead


class Committer:
    """Batches the writes of concurrent requests into shared transactions of ``storage``."""

    def __init__(self, storage: Storage, max_waiting: int = DEFAULT_MAX_WAITING) -> None:
        self._storage = storage
        self._max_waiting = max_waiting
        self._reset()
        this = weakref.WeakMethod(self._reset)
        os.register_at_fork(after_in_child=lambda: (this() or (lambda: None))())

    def _reset(self) -> None:
        # also in a forked child: the parent's lock and queue are not this process's
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: List[_Write] = []
        self._waiting = 0  # queued + in the transaction running now
        self._leading = False  # a request is committing a batch now
        self._in_flight = 0  # the most writes waiting at once since the last batch was taken
        self._gather_for = 0  # a leader holding its batch back waits for this many queued writes
        self._last_commit = 0.0  # seconds the last commit took
        self._next_fold = 0.0  # monotonic time of the next fold of the pending counts
        self._fold_at = 0  # ... or the count of stored writes at which it is due
        self._thread_wanted = threading.Condition(self._lock)
        self._thread_leads = False  # the committer thread is to commit the next batch
        self._thread: Optional[threading.Thread] = None
        self.transactions = 0
        self.stored = 0

    def stats(self) -> dict:
        with self._lock:
            return {"waiting": self._waiting, "transactions": self.transactions, "writes": self.stored}

    def add(
        self, beacon: Optional[Beacon], env: Optional[Env] = None, prepare: Optional[Prepare] = None
    ) -> BeaconResult:
        """Store one beacon (or, without one, an environment); return once it is committed.
        ``prepare()``, when given, is called just before the batch is written and gives the beacon
        to store (what it reads is then read where the writing is done); what it raises fails this
        write alone."""
        write = _Write((beacon, env), prepare=prepare)
        with self._lock:
            self._enqueue(write)
            write.lead, self._leading = not self._leading, True
        if not write.lead:
            self._wait(write)
        if write.lead:
            self._lead(write)
        if write.error is not None:
            raise write.error
        assert write.result is not None
        return write.result

    def _enqueue(self, write: _Write) -> None:
        """With the lock held: queue ``write`` for the next batch, or raise ``Busy`` past the bound."""
        if self._waiting >= self._max_waiting:
            raise Busy("%d writes are waiting for the database" % self._waiting)
        self._queue.append(write)
        self._waiting += 1
        self._in_flight = max(self._in_flight, self._waiting)
        if self._gather_for and len(self._queue) >= self._gather_for:
            self._arrived.notify()

    def submit(
        self, beacon: Optional[Beacon], env: Optional[Env], callback: Done, prepare: Optional[Prepare] = None
    ) -> None:
        """Store one beacon (or environment) without waiting: ``callback(result, error)`` is called,
        on the committing thread, once its transaction committed (or failed). Raises ``Busy`` at once
        past the bound, as ``add`` does; ``prepare`` as in ``add``."""
        write = _Write((beacon, env), callback, prepare)
        with self._lock:
            self._enqueue(write)
            if not self._leading:
                self._leading = True
                self._lead_on_thread()

    def _lead_on_thread(self) -> None:
        """With the lock held: the committer thread commits the next batch (a submitted write has
        no thread of its own to lead with)."""
        self._thread_leads = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._committer_thread, name="committer", daemon=True)
            self._thread.start()
        else:
            self._thread_wanted.notify()

    def _committer_thread(self) -> None:
        while True:
            with self._lock:
                while not self._thread_leads:
                    self._thread_wanted.wait()
                self._thread_leads = False
            self._lead(None)

    def _wait(self, write: _Write) -> None:
        if write.done.acquire(timeout=_ANSWER_TIMEOUT):
            return
        with self._lock:
            write.abandoned = not write.lead
        if write.abandoned:
            # it may still commit: unacknowledged, the agent sends it again and the event id dedupes it
            raise Busy("the database did not commit within %.0f s" % _ANSWER_TIMEOUT)
        write.done.acquire()  # given the lead as the wait ran out: released at once

    def _lead(self, own: Optional[_Write]) -> None:
        """Commit batches until one carried ``own`` (the committer thread: one batch), then pass the
        lead on (or leave nobody leading)."""
        carried = False
        while not carried:
            with self._lock:
                self._gather()
                batch = self._queue[:_MAX_BATCH]
                del self._queue[: len(batch)]
                self._in_flight = self._waiting
            carried = own is None or own in batch
            started = time.monotonic()
            try:
                self._commit(batch)
            except BaseException:
                if own is not None:
                    own.abandoned = True  # its request leaves with the exception: not to be given the lead
                for write in batch:  # (a gevent timeout, SystemExit): the others are not stored either
                    if write.result is None and write.error is None:
                        write.error = Busy("the commit was interrupted")
                self._finish(batch, own, True)
                raise
            self._last_commit = time.monotonic() - started
            self._finish(batch, own, carried)
        self._fold()

    def _fold(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_fold and self.stored < self._fold_at:
                return
            self._next_fold, self._fold_at = now + _FOLD_EVERY, self.stored + _FOLD_WRITES
        try:
            self._storage.fold_counts()
        except StorageError:  # readers add what is pending: the next fold takes it
            pass

    def _gather(self) -> None:
        """With the lock held: wait (boundedly) until as many writes are queued as were in flight."""
        wanted = min(self._in_flight, _MAX_BATCH)
        if len(self._queue) >= wanted:
            return
        deadline = time.monotonic() + min(_GATHER_MAX, self._last_commit / 2)
        self._gather_for = wanted
        try:
            while len(self._queue) < wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
        finally:
            self._gather_for = 0

    def _finish(self, batch: List[_Write], own: Optional[_Write], pass_lead: bool) -> None:
        successor = None
        with self._lock:
            self._waiting -= len(batch)
            if pass_lead:
                successor = next((write for write in self._queue if not write.abandoned), None)
                if successor is None:
                    self._leading = False
                elif successor.callback is not None:
                    successor = None
                    self._lead_on_thread()
                else:
                    successor.lead = True
        if successor is not None:  # first: the next commit starts while this batch's requests wake
            successor.done.release()
        for write in batch:
            if write.callback is not None:
                try:
                    write.callback(write.result, write.error)
                except Exception:  # the app's callback answers its own errors; the others' answers still go
                    pass
            elif write is not own:
                write.done.release()

    def _commit(self, batch: List[_Write]) -> None:
        ready = []
        for write in batch:
            if write.prepare is not None:
                try:
                    write.item = (write.prepare(), write.item[1])
                except Exception as error:
                    write.error = error
                    continue
            ready.append(write)
        if not ready:
            return
        try:
            results = self._storage.add_beacons([write.item for write in ready])
        except Exception as error:  # nothing of this transaction is stored: each request fails with it
            for write in ready:
                write.error = error
            return
        for write, result in zip(ready, results):
            if result.error is not None:
                write.error = result.error
            else:
                write.result = result
        with self._lock:
            self.transactions += 1
            self.stored += len(ready)

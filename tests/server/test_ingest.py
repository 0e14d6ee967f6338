"""Group commit through the real server: concurrent beacons share a transaction, each is answered
only once it is committed, and past --max-waiting a request gets 503 with Retry-After.

The database is held still by the test itself — on SQLite a second connection takes the write lock
(BEGIN IMMEDIATE), on PostgreSQL it locks the beacons table against writes — so the server's
committer waits on it and the requests pile up behind it: their number is read from /healthz, no
timing involved. Both backends.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request

from conftest import error_beacon
from pgsupport import db_rows

SIG = "ValueError: bad record @ etl.load < etl.main"


def _post(url: str, body: dict):
    request = urllib.request.Request(
        url + "/beacon", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _ingest(server) -> dict:
    return server.request("GET", "/healthz")[1]["ingest"]


def _wait_waiting(server, count: int) -> None:
    """Until `count` writes wait on the committer (bounded poll of /healthz)."""
    deadline = time.monotonic() + 30
    while _ingest(server)["waiting"] < count:
        assert time.monotonic() < deadline, _ingest(server)
        time.sleep(0.01)  # poll interval of a bounded wait


class _Locked:
    """The server's database, where beacons cannot be written until ``release``."""

    def __init__(self, db: str) -> None:
        if "://" in db:
            import psycopg

            self.conn = psycopg.connect(db)
            self.conn.execute("LOCK TABLE beacons IN EXCLUSIVE MODE")  # reads pass, writes wait
        else:
            self.conn = sqlite3.connect(db, isolation_level=None, timeout=30)
            self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def _send_all(url: str, bodies) -> tuple:
    answers: dict = {}
    threads = [threading.Thread(target=lambda b=b: answers.__setitem__(b["event_id"], _post(url, b))) for b in bodies]
    for thread in threads:
        thread.start()
    return threads, answers


def test_concurrent_beacons_share_one_transaction_and_are_answered_after_it(make_server):
    server = make_server("--max-waiting", "64")
    before = _ingest(server)
    locked = _Locked(server.db)
    bodies = [error_beacon("e%d" % i, "s1", SIG, event_id="ev-%02d" % i) for i in range(12)]
    threads, answers = _send_all(server.url, bodies)
    _wait_waiting(server, len(bodies))
    assert answers == {}  # nothing is acknowledged before its commit
    locked.release()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(status for status, _, _ in answers.values()) == [204] * 12  # stored; environments unknown
    after = _ingest(server)
    # the first beacon's transaction waited on the lock alone; the other 11 gathered behind it: 2 commits
    assert after["writes"] - before["writes"] == 12
    assert after["transactions"] - before["transactions"] <= 2
    assert db_rows(server.db, "SELECT COUNT(*), COUNT(DISTINCT received) FROM beacons")[0] in ((12, 1), (12, 2))


def test_past_the_bound_a_request_gets_503_with_retry_after_and_nothing_is_lost(make_server):
    server = make_server("--max-waiting", "2")
    locked = _Locked(server.db)
    threads, answers = _send_all(server.url, [error_beacon("e1", "s1", SIG, event_id="ev-%d" % i) for i in (1, 2)])
    _wait_waiting(server, 2)
    status, headers, payload = _post(server.url, error_beacon("e1", "s1", SIG, event_id="ev-3"))
    assert status == 503, payload
    assert int(headers["Retry-After"]) >= 1 and "busy" in json.loads(payload)["error"]
    locked.release()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(a[0] for a in answers.values()) == [204, 204]
    assert sorted(db_rows(server.db, "SELECT event_id FROM beacons")) == [("ev-1",), ("ev-2",)]
    # what the agent does next: it kept the beacon, and sends it again once the burst is over
    assert _post(server.url, error_beacon("e1", "s1", SIG, event_id="ev-3"))[0] == 204
    assert server.request("GET", "/api/errors")[1]["groups"][0]["count"] == 3

"""gunicorn -w 4 on one database behaves as one server: dedupe by event_id across workers, the same
groups and counts as the embedded server given the same beacons. Both backends."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

from conftest import Server, env_body, error_beacon
from gunicorn_support import Gunicorn
from pgsupport import db_rows

SIGS = ["ValueError: bad record in table %s @ etl.load < etl.main" % t for t in "abc"]


def _post(url: str, path: str, body: dict) -> int:
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # one connection a request: any worker
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _load(url: str) -> list:
    """3 environments, then 60 error beacons over 3 groups and 12 successes, each sent twice, from 8 threads."""
    for i in range(3):
        assert _post(url, "/env", env_body("env%d" % i, {"numpy": "1.%d.0" % i, "pandas": "2.1.0"})) == 201
    bodies = [error_beacon("env%d" % (i % 3), "s%d" % (i % 4), SIGS[i % 3], event_id="err-%03d" % i) for i in range(60)]
    bodies += [
        {
            "kind": "success",
            "env_hash": "env%d" % (i % 3),
            "script_id": "s%d" % (i % 4),
            "ts": 1700000000.0,
            "event_id": "ok-%03d" % i,
        }
        for i in range(12)
    ]
    statuses: list = []
    work = bodies + bodies

    def send(share: list) -> None:
        for body in share:
            statuses.append(_post(url, "/beacon", body))

    threads = [threading.Thread(target=send, args=(work[k::8],)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return statuses


def _groups(url: str) -> list:
    with urllib.request.urlopen(url + "/api/errors", timeout=60) as response:
        groups = json.loads(response.read())["groups"]
    return sorted((g["group_key"], g["count"], g["failing_runs"], g["succeeding_runs"]) for g in groups)


def test_four_workers_on_one_database_answer_as_one_server(db_target, tmp_path):
    server = Gunicorn(
        ["--workers", "4", "--threads", "4"], {"CORP_ERROR_SERVER_DB": db_target}, tmp_path / "gunicorn.log"
    )
    try:
        statuses = _load(server.url)
        seen = _groups(server.url)
    finally:
        server.stop()
    assert sorted(set(statuses)) == [200] and len(statuses) == 144
    assert db_rows(db_target, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM beacons") == [(72, 72)]
    reference = Server(str(tmp_path / "reference.db"))
    try:
        _load(reference.url)
        assert seen == _groups(reference.url)
    finally:
        reference.stop()
    assert [count for _, count, _, _ in seen] == [20, 20, 20]

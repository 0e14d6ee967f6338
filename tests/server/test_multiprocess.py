"""Two server processes on one PostgreSQL: concurrent batches (group commit) over the same environments
and groups must neither deadlock into a 4xx (the agent deletes a beacon answered 4xx) nor lose a beacon
acknowledged 200."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

from conftest import Server, env_body, error_beacon
from pgsupport import db_rows

ENVS = ["env%d" % i for i in range(6)]
SIGS = ["KeyError: 'col%d' @ etl.load < etl.main" % i for i in range(6)]


def _post(url: str, path: str, body: dict) -> int:
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_two_servers_on_one_postgresql_never_refuse_nor_lose_a_beacon(pg_cluster):
    target = pg_cluster.database()
    servers = [Server(target), Server(target)]
    try:
        for i, env in enumerate(ENVS):
            assert _post(servers[i % 2].url, "/env", env_body(env, {"numpy": "1.%d.0" % i})) == 201
        acknowledged: list = []
        statuses: list = []

        def send(client: int) -> None:
            # each client walks the environments and groups in its own order, so batches of the two
            # processes hold the same rows in opposite orders unless storage orders its locks
            order = list(range(90)) if client % 2 else list(reversed(range(90)))
            for n, i in enumerate(order):
                event_id = "c%d-%d" % (client, n)
                body = error_beacon(ENVS[i % 6], "s%d" % (i % 3), SIGS[(i // 6 + client) % 6], event_id=event_id)
                status = _post(servers[(client + n) % 2].url, "/beacon", body)
                statuses.append(status)
                if status == 200:
                    acknowledged.append(event_id)

        threads = [threading.Thread(target=send, args=(c,)) for c in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        for server in servers:
            server.stop()
    assert not [s for s in statuses if 400 <= s < 500]
    assert set(statuses) <= {200, 503}
    stored = {row[0] for row in db_rows(target, "SELECT event_id FROM beacons")}
    assert set(acknowledged) <= stored
    assert len(acknowledged) > len(statuses) // 2


def test_beacons_are_answered_while_the_retention_purge_waits(pg_cluster):
    import psycopg

    from corp_error_server.storage import open_storage

    target = pg_cluster.database()
    open_storage(target).close()
    db_rows(target, "INSERT INTO envs(env_hash, received, snapshot, features) VALUES('old', 0, '{}', '{}')")
    db_rows(
        target,
        "INSERT INTO beacons(event_id, kind, env_hash, script_id, ts, received, counted, test, handled)"
        " VALUES('old-1', 'success', 'old', 's0', 0, 0, 1, 0, 0)",
    )
    with psycopg.connect(target) as holder:
        holder.execute("SELECT id FROM beacons WHERE event_id = 'old-1' FOR UPDATE")  # the purge queues on it
        server = Server(target)
        try:
            assert _post(server.url, "/env", env_body(ENVS[0], {"numpy": "1.0.0"})) == 201
            assert _post(server.url, "/beacon", error_beacon(ENVS[0], "s1", SIGS[0], event_id="new-1")) == 200
            waiting = db_rows(target, "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            assert any("FROM beacons WHERE received <" in query for (query,) in waiting), waiting
        finally:
            holder.rollback()
            server.stop()

"""Migration 3 on a database written before it: the dashboard's rollups are filled from the stored beacons."""

from __future__ import annotations

import sqlite3

from corp_error_server.storage import Dialect, GroupQuery, SQLiteStorage
from corp_error_server.storage_schema import MIGRATIONS

DAY = 86400


def test_rollups_are_backfilled_from_existing_beacons(tmp_path):
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as db:
        for migration in MIGRATIONS[:2]:
            for statement in Dialect().schema(migration.sql):
                db.execute(statement)
        db.execute("CREATE TABLE schema_version(version INTEGER PRIMARY KEY, description TEXT, applied REAL)")
        db.executemany(
            "INSERT INTO schema_version VALUES(?, ?, 0)", [(m.version, m.description) for m in MIGRATIONS[:2]]
        )
        db.execute(
            "INSERT INTO groups(id, key, signature, first_seen, last_seen, errors, fails, oks) "
            "VALUES(1, 'k', 'KeyError: x', ?, ?, 3, 3, 1)",
            (100 * DAY, 101 * DAY + 5),
        )
        rows = [
            (1, "error", "e1", "s1", 1, 100 * DAY + 10, "a.py"),
            (2, "error", "e1", "s1", 1, 100 * DAY + 20, "a.py"),
            (3, "error", "e2", "s2", 1, 101 * DAY + 5, "b.py"),
            (4, "success", "e3", "s1", None, 101 * DAY + 9, "a.py"),
        ]
        db.executemany(
            "INSERT INTO beacons(id, kind, env_hash, script_id, group_id, received, script_name, "
            "counted) VALUES(?, ?, ?, ?, ?, ?, ?, 1)",
            rows,
        )
        db.execute("INSERT INTO contributions(beacon_id, group_id) VALUES(4, 1)")
    storage = SQLiteStorage(path)
    try:
        assert storage.schema_version() == MIGRATIONS[-1].version >= 3
        assert storage.daily_runs([1], 100, 3) == {1: [(2, 0), (1, 1), (0, 0)]}
        scripts, envs = storage.group_sources(1, 100)
        assert {s["script_id"]: (s["failing"], s["succeeding"]) for s in scripts} == {"s1": (2, 1), "s2": (1, 0)}
        assert {e["env_hash"]: (e["failing"], e["succeeding"]) for e in envs} == {
            "e1": (2, 0),
            "e2": (1, 0),
            "e3": (0, 1),
        }
        total, groups = storage.find_groups(GroupQuery())
        assert total == 1 and groups[0]["status"] == "new" and groups[0]["scripts"] == 2
        assert groups[0]["envs_affected"] == 2 and groups[0]["script_names"] == ["a.py", "b.py"]
        assert groups[0]["latest_env"] == "e2"
    finally:
        storage.close()

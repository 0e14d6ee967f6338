"""The benchmarks' bulk population (bench/_bulk.py) holds the rows storage derives for the same beacons.

Otherwise the read benchmarks would time a database no server could have written."""

from __future__ import annotations

import random
import sqlite3

from _bulk import Population  # (bench/ is on pytest's pythonpath)
from corp_error_server.app import parse_env
from corp_error_server.storage import Beacon, SQLiteStorage

# the columns that hold the arrival time, which differs between the two databases
_TABLES = {
    "envs": "env_hash, snapshot, features",
    "groups": "id, key, signature, errors, fails, oks, mentions, handled, latest_env, revision, status",
    "beacons": "id, event_id, kind, env_hash, script_id, group_id, error_sig, trace, ts, script_name, agent, test, "
    "prev_env_hash, prev_group_id, counted, handled, host",
    "group_scripts": "script_id, group_id",
    "contributions": "beacon_id, group_id",
    "counts": "group_id, feature, value, fails, oks",
    "group_days": "group_id, fails, oks",
    "group_sources": "group_id, script_id, env_hash, host, script_name, fails, oks",
}


def _population(seed: int):
    rng = random.Random(seed)
    envs = [
        parse_env(
            {
                "env_hash": "env%d" % i,
                "python_ver": rng.choice(["3.11.7", "3.12.1"]),
                "os_info": "Linux",
                "machine_arch": "x86_64",
                "env_vars": {"LANG": rng.choice(["C", "MISSING"])},
                "packages": {"lib%d" % p: "1.%d" % rng.randrange(3) for p in range(rng.randrange(2, 6))},
            }
        )
        for i in range(12)
    ]
    beacons = []
    for i in range(400):
        group = rng.randrange(9)
        env = rng.choice(envs).env_hash
        script = "s%d" % rng.randrange(15)
        if rng.random() < 0.25:  # a success, often after a failure of a group that may not exist yet
            beacons.append(
                Beacon(
                    kind="success",
                    env_hash=env,
                    script_id=script,
                    group_key=None,
                    signature=None,
                    trace=None,
                    ts=1.0,
                    event_id="e%d" % i,
                    script_name=None,
                    agent=None,
                    test=False,
                    prev_env_hash=rng.choice(envs).env_hash if group < 6 else None,
                    prev_group_key="key %d" % group if group < 6 else None,
                    mentions=frozenset(),
                    host=rng.choice([None, "h1"]),
                )
            )
        else:
            beacons.append(
                Beacon(
                    kind="error",
                    env_hash=env,
                    script_id=script,
                    group_key="key %d" % group,
                    signature="Error %d @ m.f" % group,
                    trace="trace %d" % i,
                    ts=2.0,
                    event_id="e%d" % i,
                    script_name=rng.choice([None, script + ".py"]),
                    agent="agent/1",
                    test=False,
                    prev_env_hash=None,
                    prev_group_key=None,
                    mentions=frozenset(rng.sample(["numpy", "lib1", "pandas"], rng.randrange(3))),
                    handled=rng.random() < 0.3,
                    host=rng.choice([None, "h1", "h2"]),
                )
            )
    return envs, beacons


def _rows(path: str) -> dict:
    db = sqlite3.connect(path)
    rows = {
        table: sorted(db.execute("SELECT %s FROM %s" % (columns, table)).fetchall(), key=repr)
        for table, columns in _TABLES.items()
    }
    db.close()
    return rows


def test_bulk_rows_are_the_rows_storage_derives(tmp_path):
    envs, beacons = _population(3)
    stored = SQLiteStorage(str(tmp_path / "stored.db"), synchronous="OFF")
    for env in envs:
        stored.add_env(env)
    for beacon in beacons:
        stored.add_beacon(beacon)
    stored.close()
    bulk = Population(str(tmp_path / "bulk.db"), 1e9)
    for env in envs:
        bulk.add_env(env)
    for beacon in beacons:
        bulk.add(beacon)
    bulk.close()
    expected, got = _rows(str(tmp_path / "stored.db")), _rows(str(tmp_path / "bulk.db"))
    assert expected["contributions"] and expected["counts"] and any(row[3] > 0 for row in expected["groups"])
    for table in _TABLES:
        assert got[table] == expected[table], table

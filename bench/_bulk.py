"""Bulk population for the read-path benchmarks: the rows storage derives, inserted table by table.

Storing a million beacons through ``Storage.add_beacons`` takes many minutes (a dozen statements a
beacon, thirty-odd count rows each); these benchmarks measure reading, so ``Population`` derives in
memory the rows storage would hold after the same beacons arrived one by one -- beacons, groups,
contributions, counts and the dashboard's rollups -- and writes each table in one pass: SQLite by
executemany in one transaction, PostgreSQL by COPY from that file. It covers what the benchmarks
send: every environment stored before its beacons, unique event ids, no test beacons.
tests/server/test_bench_population.py checks the rows against storage's own for the same beacons.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from typing import Dict, List, Tuple

from corp_error_server.storage import Beacon, Env, SQLiteStorage
from corp_error_server.storage_schema import COPIED_TABLES

_BEACON_COLUMNS = (
    "id",
    "event_id",
    "kind",
    "env_hash",
    "script_id",
    "group_id",
    "error_sig",
    "trace",
    "ts",
    "received",
    "script_name",
    "agent",
    "test",
    "prev_env_hash",
    "prev_group_id",
    "counted",
    "handled",
    "host",
)
_GROUP_COLUMNS = (
    "id",
    "key",
    "signature",
    "first_seen",
    "last_seen",
    "errors",
    "fails",
    "oks",
    "mentions",
    "handled",
    "latest_env",
    "revision",
)
_MENTIONS_KEPT = 40  # as storage keeps them
_FLUSH = 20_000  # beacon rows written at a time


class Population:
    """Beacons as they arrive at ``now``, written into a new SQLite database at ``path``."""

    def __init__(self, path: str, now: float) -> None:
        SQLiteStorage(path, synchronous="OFF").close()  # the schema, every migration
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")  # one transaction into a new file: nothing to roll back to
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("BEGIN")
        self._now = now
        self._features: Dict[str, Dict[str, str]] = {}
        self._groups: Dict[str, list] = {}  # key -> a groups row (mentions as a list)
        self._group_rows: Dict[int, list] = {}  # id -> the same row
        self._group_scripts: Dict[str, List[int]] = {}  # script -> the groups it failed in, in order
        self._beacons: List[tuple] = []
        self._contributions: List[Tuple[int, int]] = []
        # group -> env -> [failing, succeeding, succeeding without variables] runs
        self._runs: Dict[int, Dict[str, List[int]]] = {}
        self._days: Dict[Tuple[int, int], List[int]] = {}
        self._sources: Dict[Tuple[int, str, str, str], list] = {}
        self._next_beacon = 1

    def add_env(self, env: Env) -> None:
        self._features[env.env_hash] = env.features
        self._db.execute(
            "INSERT INTO envs(env_hash, received, snapshot, features) VALUES(?, ?, ?, ?)",
            (env.env_hash, self._now, json.dumps(env.snapshot, sort_keys=True), json.dumps(env.features)),
        )

    def _group(self, key: str, signature: str) -> list:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = [
                len(self._groups) + 1,
                key,
                signature,
                self._now,
                self._now,
                0,
                0,
                0,
                [],
                0,
                None,
                0,
            ]
            self._group_rows[group[0]] = group
        return group

    def add(self, beacon: Beacon) -> None:
        if beacon.env_hash not in self._features or beacon.test:
            raise ValueError("the bulk population takes beacons of stored environments, not test beacons")
        group = self._group(beacon.group_key, beacon.signature or beacon.group_key) if beacon.group_key else None
        previous = self._group(beacon.prev_group_key, beacon.prev_group_key) if beacon.prev_group_key else None
        beacon_id, self._next_beacon = self._next_beacon, self._next_beacon + 1
        # a 0.4.2 success (no agent) of a stored environment counts without its variables, as storage counts it
        partial = beacon.kind == "success" and beacon.agent is None
        self._beacons.append(
            (
                beacon_id,
                beacon.event_id,
                beacon.kind,
                beacon.env_hash,
                beacon.script_id,
                group[0] if group else None,
                beacon.signature,
                beacon.trace,
                beacon.ts,
                self._now,
                beacon.script_name,
                beacon.agent,
                0,
                beacon.prev_env_hash,
                previous[0] if previous else None,
                2 if partial else 1,
                int(beacon.handled),
                beacon.host,
            )
        )
        if len(self._beacons) >= _FLUSH:
            self._flush()
        if group is not None:
            group[5] += 1
            group[9] += int(beacon.handled)
            group[8] = (group[8] + sorted(set(beacon.mentions) - set(group[8])))[:_MENTIONS_KEPT]
            group[10] = beacon.env_hash
            group[11] += 1
            scripts = self._group_scripts.setdefault(beacon.script_id, [])
            if group[0] not in scripts:
                scripts.append(group[0])
            self._roll_up(group[0], beacon, 0)
        if beacon.kind == "error":
            counted = [group[0]] if group else []
        else:
            counted = list(self._group_scripts.get(beacon.script_id, []))
            if previous is not None and previous[0] not in counted:
                counted.append(previous[0])
        column = 0 if beacon.kind == "error" else 1
        for group_id in counted:
            row = self._group_rows[group_id]
            row[6 + column] += 1
            row[11] += 1
            runs = self._runs.setdefault(group_id, {}).setdefault(beacon.env_hash, [0, 0, 0])
            runs[column] += 1
            runs[2] += partial
            if column:
                self._roll_up(group_id, beacon, 1)
            self._contributions.append((beacon_id, group_id))

    def _roll_up(self, group_id: int, beacon: Beacon, column: int) -> None:
        day = self._days.setdefault((group_id, int(self._now // 86400)), [0, 0])
        day[column] += 1
        source = self._sources.setdefault(
            (group_id, beacon.script_id, beacon.env_hash, beacon.host or ""), [None, 0, 0, self._now]
        )
        source[0] = beacon.script_name or source[0]
        source[1 + column] += 1

    def _flush(self) -> None:
        self._db.executemany(
            "INSERT INTO beacons(%s) VALUES(%s)" % (", ".join(_BEACON_COLUMNS), ", ".join("?" * len(_BEACON_COLUMNS))),
            self._beacons,
        )
        self._beacons.clear()

    def close(self) -> None:
        """Write the derived tables and commit."""
        self._flush()
        db = self._db
        db.executemany(
            "INSERT INTO groups(%s) VALUES(%s)" % (", ".join(_GROUP_COLUMNS), ", ".join("?" * len(_GROUP_COLUMNS))),
            [g[:8] + [json.dumps(g[8])] + g[9:] for g in self._groups.values()],
        )
        db.executemany(
            "INSERT INTO group_scripts(script_id, group_id) VALUES(?, ?)",
            [(script, g) for script, groups in self._group_scripts.items() for g in groups],
        )
        db.executemany("INSERT INTO contributions(beacon_id, group_id) VALUES(?, ?)", self._contributions)
        db.executemany(
            "INSERT INTO counts(group_id, feature, value, fails, oks) VALUES(?, ?, ?, ?, ?)",
            ((g, f, v, a, b) for g, (f, v), (a, b) in self._counts()),
        )
        db.executemany(
            "INSERT INTO group_days(group_id, day, fails, oks) VALUES(?, ?, ?, ?)",
            [(g, day, f, o) for (g, day), (f, o) in self._days.items()],
        )
        db.executemany(
            "INSERT INTO group_sources(group_id, script_id, env_hash, host, script_name, fails, oks, "
            "last_seen) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            [key + tuple(value) for key, value in self._sources.items()],
        )
        db.execute("COMMIT")
        db.close()

    def _counts(self):
        for group_id, envs in self._runs.items():
            totals: Dict[Tuple[str, str], List[int]] = {}
            for env_hash, (fails, oks, partial) in envs.items():
                for item in self._features[env_hash].items():
                    total = totals.setdefault(item, [0, 0])
                    total[0] += fails
                    total[1] += oks - partial if item[0].startswith("env:") else oks
            for item, total in totals.items():
                if total != [0, 0]:
                    yield group_id, item, total


def copy_to_postgres(sqlite_path: str, url: str) -> None:
    """Every table of the SQLite file into the empty database at ``url`` by COPY; the planner's
    statistics gathered after, as autovacuum would have on a database filled over weeks."""
    import psycopg

    from corp_error_server.storage_postgres import PostgresStorage

    PostgresStorage(url).close()  # the schema
    source = sqlite3.connect(sqlite_path)
    with psycopg.connect(url) as conn:
        for table, _ in COPIED_TABLES:
            rows = source.execute("SELECT * FROM %s" % table)
            columns = ", ".join(column[0] for column in rows.description)
            with conn.cursor() as cur, cur.copy("COPY %s (%s) FROM STDIN" % (table, columns)) as copy:
                for row in rows:
                    copy.write_row(row)
        with conn.cursor() as cur:
            for table in ("groups", "beacons"):
                cur.execute(
                    "SELECT setval(pg_get_serial_sequence(%%s, 'id'), (SELECT MAX(id) FROM %s))" % table, (table,)
                )
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")
    source.close()


if __name__ == "__main__":  # python bench/_bulk.py SQLITE_FILE POSTGRESQL_URL, by a Python that has psycopg
    copy_to_postgres(*sys.argv[1:])

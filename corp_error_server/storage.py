"""Storage: beacons, environments, and the per-group counts the engine reads.

The interface is ``Storage``; ``SQLiteStorage`` implements it. Counts per (group, feature, value)
are updated when a run becomes countable (its beacon and its environment are both known), so
``/suggest`` reads a few hundred rows instead of rescanning beacons. Every public write is one
transaction: a request stores everything or nothing.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from . import engine

SCHEMA_VERSION = 1
_PAIRS_READ = 50          # most recent observed fixes the engine looks at per group
_MENTIONS_KEPT = 40       # package names remembered per group from its traces
_FEATURE_CACHE = 8192     # environments whose features stay in memory (they never change)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS envs(
    env_hash TEXT PRIMARY KEY, received REAL NOT NULL, snapshot TEXT NOT NULL, features TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups(
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, signature TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, errors INTEGER NOT NULL DEFAULT 0,
    fails INTEGER NOT NULL DEFAULT 0, oks INTEGER NOT NULL DEFAULT 0, mentions TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS beacons(
    id INTEGER PRIMARY KEY, event_id TEXT UNIQUE, kind TEXT NOT NULL, env_hash TEXT NOT NULL,
    script_id TEXT NOT NULL, group_id INTEGER, error_sig TEXT, trace TEXT, ts REAL, received REAL NOT NULL,
    script_name TEXT, agent TEXT, test INTEGER NOT NULL DEFAULT 0, prev_env_hash TEXT, prev_group_id INTEGER,
    counted INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS beacons_group ON beacons(group_id, id);
CREATE INDEX IF NOT EXISTS beacons_waiting ON beacons(env_hash) WHERE counted = 0;
CREATE INDEX IF NOT EXISTS beacons_received ON beacons(received);
CREATE INDEX IF NOT EXISTS beacons_fixes ON beacons(prev_group_id, id) WHERE prev_group_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS group_scripts(
    script_id TEXT NOT NULL, group_id INTEGER NOT NULL, PRIMARY KEY(script_id, group_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contributions(
    beacon_id INTEGER NOT NULL, group_id INTEGER NOT NULL, PRIMARY KEY(beacon_id, group_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counts(
    group_id INTEGER NOT NULL, feature TEXT NOT NULL, value TEXT NOT NULL,
    fails INTEGER NOT NULL DEFAULT 0, oks INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(group_id, feature, value)) WITHOUT ROWID;
"""

# The dashboard's part of the schema: host and triage status, and two rollups kept at ingest so a
# group's pages read a few rows whatever its number of beacons. (To become entries of the migration
# list; the ALTERs run once, when the column is missing.)
_DASH_SCHEMA = """
CREATE TABLE IF NOT EXISTS group_days(
    group_id INTEGER NOT NULL, day INTEGER NOT NULL, fails INTEGER NOT NULL DEFAULT 0,
    oks INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(group_id, day));
CREATE TABLE IF NOT EXISTS group_sources(
    group_id INTEGER NOT NULL, script_id TEXT NOT NULL, env_hash TEXT NOT NULL, host TEXT NOT NULL,
    script_name TEXT, fails INTEGER NOT NULL DEFAULT 0, oks INTEGER NOT NULL DEFAULT 0, last_seen REAL NOT NULL,
    PRIMARY KEY(group_id, script_id, env_hash, host));
CREATE INDEX IF NOT EXISTS beacons_env ON beacons(env_hash, id);
"""
_DASH_COLUMNS = (("beacons", "host", "TEXT"), ("groups", "status", "TEXT NOT NULL DEFAULT 'new'"),
                 ("groups", "status_at", "REAL"), ("groups", "alerted_solution", "TEXT"))

_UPSERT_DAY = (
    "INSERT INTO group_days(group_id, day, fails, oks) VALUES(?, ?, ?, ?) "
    "ON CONFLICT(group_id, day) DO UPDATE SET fails = group_days.fails + excluded.fails, "
    "oks = group_days.oks + excluded.oks")
_UPSERT_SOURCE = (
    "INSERT INTO group_sources(group_id, script_id, env_hash, host, script_name, fails, oks, last_seen) "
    "VALUES(?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(group_id, script_id, env_hash, host) DO UPDATE SET "
    "fails = group_sources.fails + excluded.fails, oks = group_sources.oks + excluded.oks, "
    "last_seen = excluded.last_seen, script_name = COALESCE(excluded.script_name, group_sources.script_name)")

_UPSERT_COUNT = (
    "INSERT INTO counts(group_id, feature, value, fails, oks) VALUES(?, ?, ?, ?, ?) "
    "ON CONFLICT(group_id, feature, value) DO UPDATE SET fails = fails + excluded.fails, oks = oks + excluded.oks")


GROUP_STATUSES = ("new", "regressed", "resolved", "ignored")
GROUP_SORTS = {"last_seen": "g.last_seen DESC", "first_seen": "g.first_seen DESC", "count": "g.errors DESC"}


class GroupQuery(NamedTuple):
    """A filtered, sorted page of error groups (the list page and /api/errors)."""
    search: str = ""
    status: str = ""
    script: str = ""
    features: Tuple[Tuple[str, str], ...] = ()   # (feature, value) the failing runs had: pkg:x==1, python
    sort: str = "last_seen"
    limit: int = 50
    offset: int = 0


class SchemaError(RuntimeError):
    """The database was written by a newer server."""


class Env(NamedTuple):
    env_hash: str
    snapshot: dict
    features: Dict[str, str]


class Beacon(NamedTuple):
    kind: str
    env_hash: str
    script_id: str
    group_key: Optional[str]        # the error's group (error beacons)
    signature: Optional[str]
    trace: Optional[str]
    ts: Optional[float]
    event_id: Optional[str]
    script_name: Optional[str]
    agent: Optional[str]
    test: bool
    prev_env_hash: Optional[str]
    prev_group_key: Optional[str]   # the failure a success follows (our agent)
    mentions: frozenset
    host: Optional[str] = None      # the machine's host name, when the agent sends it


class BeaconResult(NamedTuple):
    env_known: bool
    duplicate: bool
    new_group: bool = False         # this beacon opened its error group
    regressed: bool = False         # ... or reopened a resolved one


class Storage:
    """What the application needs from a store; one implementation below."""

    def add_env(self, env: Env) -> bool:
        raise NotImplementedError

    def add_beacon(self, beacon: Beacon, env: Optional[Env] = None) -> BeaconResult:
        raise NotImplementedError

    def env_features(self, env_hash: str) -> Optional[Dict[str, str]]:
        raise NotImplementedError

    def group_data(self, group_key: str, script_id: Optional[str] = None) -> Optional[engine.GroupData]:
        raise NotImplementedError

    def list_groups(self, limit: int, offset: int) -> List[dict]:
        raise NotImplementedError

    def get_group(self, group_id: int, traces: int = 5) -> Optional[dict]:
        raise NotImplementedError

    def purge(self, older_than: float) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteStorage(Storage):
    """SQLite in WAL mode; one connection guarded by a lock (SQLite serialises writers anyway)."""

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._features: Dict[str, Dict[str, str]] = {}
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=" + {"FULL": "FULL", "NORMAL": "NORMAL", "OFF": "OFF"}[synchronous])
        self._conn.execute("PRAGMA foreign_keys=OFF")
        self._migrate()

    def _migrate(self) -> None:
        with self._transaction() as cur:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            for table, column, declaration in _DASH_COLUMNS:
                if column not in [r[1] for r in cur.execute("PRAGMA table_info(%s)" % table)]:
                    cur.execute("ALTER TABLE %s ADD COLUMN %s %s" % (table, column, declaration))
            for statement in _DASH_SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            row = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                cur.execute("INSERT INTO meta(key, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise SchemaError("database schema %s is newer than this server (%d)" % (row[0], SCHEMA_VERSION))

    def _transaction(self):
        return _Transaction(self._conn, self._lock, self._features.clear)

    # -- environments -----------------------------------------------------------------------

    def _features_of(self, cur, env_hash: str) -> Optional[Dict[str, str]]:
        cached = self._features.get(env_hash)
        if cached is not None:
            return cached
        row = cur.execute("SELECT features FROM envs WHERE env_hash = ?", (env_hash,)).fetchone()
        if row is None:
            return None
        features = json.loads(row[0])
        if len(self._features) >= _FEATURE_CACHE:
            self._features.clear()
        self._features[env_hash] = features
        return features

    def env_features(self, env_hash: str) -> Optional[Dict[str, str]]:
        with self._lock:
            return self._features_of(self._conn.cursor(), env_hash)

    def _insert_env(self, cur, env: Env, now: float) -> bool:
        cur.execute("INSERT OR IGNORE INTO envs(env_hash, received, snapshot, features) VALUES(?, ?, ?, ?)",
                    (env.env_hash, now, json.dumps(env.snapshot, sort_keys=True), json.dumps(env.features)))
        if cur.rowcount == 0:
            return False
        waiting = cur.execute("SELECT id, kind, script_id, group_id, prev_group_id FROM beacons "
                              "WHERE env_hash = ? AND counted = 0 ORDER BY id", (env.env_hash,)).fetchall()
        for beacon_id, kind, script_id, group_id, prev_group_id in waiting:
            self._count(cur, beacon_id, kind, script_id, group_id, prev_group_id, env.features)
        return True

    def add_env(self, env: Env) -> bool:
        with self._transaction() as cur:
            return self._insert_env(cur, env, time.time())

    # -- beacons ----------------------------------------------------------------------------

    def _group_id(self, cur, key: str, signature: str, now: float) -> int:
        cur.execute("INSERT OR IGNORE INTO groups(key, signature, first_seen, last_seen) VALUES(?, ?, ?, ?)",
                    (key, signature, now, now))
        return cur.execute("SELECT id FROM groups WHERE key = ?", (key,)).fetchone()[0]

    def _note_error(self, cur, group_id: int, beacon: Beacon, now: float) -> Tuple[bool, bool]:
        """Count the error in its group; (the group is new, a resolved group regressed)."""
        mentions_text, errors, status = cur.execute("SELECT mentions, errors, status FROM groups WHERE id = ?",
                                                    (group_id,)).fetchone()
        mentions = json.loads(mentions_text)
        new = sorted(set(beacon.mentions) - set(mentions))
        if new:
            mentions = (mentions + new)[:_MENTIONS_KEPT]
        cur.execute("UPDATE groups SET errors = errors + 1, last_seen = max(last_seen, ?), mentions = ? "
                    "WHERE id = ?", (now, json.dumps(mentions), group_id))
        regressed = status == "resolved"
        if regressed:
            cur.execute("UPDATE groups SET status = 'regressed', status_at = ? WHERE id = ?", (now, group_id))
        cur.execute("INSERT OR IGNORE INTO group_scripts(script_id, group_id) VALUES(?, ?)",
                    (beacon.script_id, group_id))
        self._roll_up(cur, group_id, "error", beacon.script_id, beacon.env_hash, beacon.host, beacon.script_name,
                      now)
        return errors == 0, regressed

    @staticmethod
    def _roll_up(cur, group_id: int, kind: str, script_id: str, env_hash: str, host: Optional[str],
                 script_name: Optional[str], received: float) -> None:
        fail, ok = (1, 0) if kind == "error" else (0, 1)
        cur.execute(_UPSERT_DAY, (group_id, int(received // 86400), fail, ok))
        cur.execute(_UPSERT_SOURCE, (group_id, script_id, env_hash, host or "", script_name, fail, ok, received))

    def _count(self, cur, beacon_id: int, kind: str, script_id: str, group_id: Optional[int],
               prev_group_id: Optional[int], features: Dict[str, str]) -> None:
        """Fold one run into the counts of the group(s) it is evidence for."""
        if kind == "error":
            groups = [group_id]
        else:
            groups = [g for (g,) in cur.execute("SELECT group_id FROM group_scripts WHERE script_id = ?",
                                                (script_id,))]
            if prev_group_id is not None and prev_group_id not in groups:
                groups.append(prev_group_id)
        self._apply(cur, groups, kind, features, +1)
        if kind == "success":
            env_hash, host, script_name, received = cur.execute(
                "SELECT env_hash, host, script_name, received FROM beacons WHERE id = ?", (beacon_id,)).fetchone()
            for group in groups:
                self._roll_up(cur, group, kind, script_id, env_hash, host, script_name, received)
        cur.executemany("INSERT OR IGNORE INTO contributions(beacon_id, group_id) VALUES(?, ?)",
                        [(beacon_id, g) for g in groups])
        cur.execute("UPDATE beacons SET counted = 1 WHERE id = ?", (beacon_id,))

    @staticmethod
    def _apply(cur, groups: Iterable[int], kind: str, features: Dict[str, str], sign: int) -> None:
        fail, ok = (sign, 0) if kind == "error" else (0, sign)
        column = "fails" if kind == "error" else "oks"
        for group in groups:
            cur.executemany(_UPSERT_COUNT, [(group, f, v, fail, ok) for f, v in features.items()])
            cur.execute("UPDATE groups SET %s = %s + ? WHERE id = ?" % (column, column), (sign, group))

    def add_beacon(self, beacon: Beacon, env: Optional[Env] = None) -> BeaconResult:
        now = time.time()
        with self._transaction() as cur:
            if env is not None:
                self._insert_env(cur, env, now)
            group_id = (self._group_id(cur, beacon.group_key, beacon.signature or beacon.group_key, now)
                        if beacon.group_key else None)
            prev_group_id = (self._group_id(cur, beacon.prev_group_key, beacon.prev_group_key, now)
                             if beacon.prev_group_key else None)
            cur.execute(
                "INSERT OR IGNORE INTO beacons(event_id, kind, env_hash, script_id, group_id, error_sig, trace, ts,"
                " received, script_name, agent, test, prev_env_hash, prev_group_id, counted, host)"
                " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (beacon.event_id, beacon.kind, beacon.env_hash, beacon.script_id, group_id, beacon.signature,
                 beacon.trace, beacon.ts, now, beacon.script_name, beacon.agent, int(beacon.test),
                 beacon.prev_env_hash, prev_group_id, int(beacon.test), beacon.host))
            inserted, beacon_id = cur.rowcount, cur.lastrowid
            features = self._features_of(cur, beacon.env_hash)
            if not inserted:   # a repeated event id: stored once, answered as usual
                return BeaconResult(features is not None, True)
            new_group = regressed = False
            if group_id is not None and not beacon.test:   # `corp-error-agent test` is no error of anyone's
                new_group, regressed = self._note_error(cur, group_id, beacon, now)
            if features is not None and not beacon.test:
                self._count(cur, beacon_id, beacon.kind, beacon.script_id, group_id, prev_group_id, features)
            return BeaconResult(features is not None, False, new_group, regressed)

    # -- reading ----------------------------------------------------------------------------

    def group_data(self, group_key: str, script_id: Optional[str] = None) -> Optional[engine.GroupData]:
        with self._lock:
            cur = self._conn.cursor()
            row = cur.execute("SELECT id FROM groups WHERE key = ?", (group_key,)).fetchone()
            return None if row is None else self._group_data(cur, row[0], script_id)

    def _group_data(self, cur, group_id: int, script_id: Optional[str]) -> engine.GroupData:
        fails, oks, mentions = cur.execute("SELECT fails, oks, mentions FROM groups WHERE id = ?",
                                           (group_id,)).fetchone()
        counts: engine.Counts = {}
        for feature, value, a, b in cur.execute("SELECT feature, value, fails, oks FROM counts WHERE group_id = ?",
                                                (group_id,)):
            counts.setdefault(feature, {})[value] = (a, b)
        pairs = []
        for failing, fixed, sid in cur.execute(
                "SELECT prev_env_hash, env_hash, script_id FROM beacons WHERE prev_group_id = ? "
                "AND kind = 'success' AND prev_env_hash IS NOT NULL AND test = 0 ORDER BY id DESC LIMIT ?",
                (group_id, _PAIRS_READ)).fetchall():
            failing_features = self._features_of(cur, failing)
            fixed_features = self._features_of(cur, fixed)
            if failing_features is not None and fixed_features is not None and failing != fixed:
                pairs.append(engine.FixPair(failing_features, fixed_features, sid == script_id))
        return engine.GroupData(fails, oks, counts, set(json.loads(mentions)), pairs)

    _GROUP_COLUMNS = "id, key, signature, first_seen, last_seen, errors, fails, oks"

    def _group_row(self, cur, row) -> dict:
        group_id, key, signature, first_seen, last_seen, errors, fails, oks = row
        scripts, envs = cur.execute("SELECT COUNT(DISTINCT script_id), COUNT(DISTINCT env_hash) FROM beacons "
                                    "WHERE group_id = ?", (group_id,)).fetchone()
        latest = cur.execute("SELECT env_hash FROM beacons WHERE group_id = ? ORDER BY id DESC LIMIT 1",
                             (group_id,)).fetchone()
        data = self._group_data(cur, group_id, None)
        requester = self._features_of(cur, latest[0]) if latest else None
        return {"id": group_id, "group_key": key, "signature": signature, "count": errors,
                "scripts": scripts, "envs_affected": envs, "first_seen": first_seen, "last_seen": last_seen,
                "failing_runs": fails, "succeeding_runs": oks,
                "suggestion": engine.suggest(data, requester), "_data": data}

    def list_groups(self, limit: int, offset: int) -> List[dict]:
        with self._lock:
            cur = self._conn.cursor()
            rows = cur.execute("SELECT %s FROM groups WHERE errors > 0 ORDER BY last_seen DESC, id DESC "
                               "LIMIT ? OFFSET ?" % self._GROUP_COLUMNS, (limit, offset)).fetchall()
            groups = [self._group_row(cur, row) for row in rows]
        for group in groups:
            del group["_data"]
        return groups

    def get_group(self, group_id: int, traces: int = 5) -> Optional[dict]:
        with self._lock:
            cur = self._conn.cursor()
            row = cur.execute("SELECT %s FROM groups WHERE id = ?" % self._GROUP_COLUMNS, (group_id,)).fetchone()
            if row is None:
                return None
            group = self._group_row(cur, row)
            group["recent"] = [
                {"script_id": s, "script_name": n, "env_hash": e, "ts": ts, "error_sig": sig, "trace": t}
                for s, n, e, ts, sig, t in cur.execute(
                    "SELECT script_id, script_name, env_hash, ts, error_sig, trace FROM beacons "
                    "WHERE group_id = ? ORDER BY id DESC LIMIT ?", (group_id, traces))]
            group["mentions"] = sorted(group["_data"].mentions)
        group["comparison"] = engine.comparison(group.pop("_data"))
        return group

    def counts_total(self) -> Tuple[int, int]:
        """(beacons, environments) stored: for health checks and tests."""
        with self._lock:
            cur = self._conn.cursor()
            return (cur.execute("SELECT COUNT(*) FROM beacons").fetchone()[0],
                    cur.execute("SELECT COUNT(*) FROM envs").fetchone()[0])

    ###########################################################################
    # Queries of the dashboard and the JSON API ###############################
    ###########################################################################
    # The pages and /api/errors read through these methods only, so a filter means the same in both.
    # Plain SQL that PostgreSQL runs as well (no SQLite functions; `?` placeholders), reading the
    # rollups kept at ingest (group_days, group_sources) rather than a group's beacons, which may be
    # a hundred thousand.

    def _select(self, sql: str, params: Iterable = ()) -> List[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def find_groups(self, query: "GroupQuery") -> Tuple[int, List[dict]]:
        """(how many groups match, the page of them asked for)."""
        where: List[str] = ["g.errors > 0"]
        params: List[object] = []
        if query.search:
            like = "%" + query.search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(LOWER(g.signature) LIKE ? ESCAPE '\\' OR g.key LIKE ? ESCAPE '\\')")
            params += [like, like]
        if query.status:
            where.append("g.status = ?")
            params.append(query.status)
        if query.script:
            where.append("EXISTS (SELECT 1 FROM group_scripts s WHERE s.group_id = g.id AND s.script_id = ?)")
            params.append(query.script)
        for feature, value in query.features:
            where.append("EXISTS (SELECT 1 FROM counts c WHERE c.group_id = g.id AND c.feature = ? AND c.value = ? "
                         "AND c.fails > 0)")
            params += [feature, value]
        condition = " AND ".join(where)
        total = self._select("SELECT COUNT(*) FROM groups g WHERE " + condition, params)[0][0]
        rows = self._select(
            "SELECT g.id, g.key, g.signature, g.first_seen, g.last_seen, g.errors, g.fails, g.oks, g.status, "
            "g.status_at FROM groups g WHERE %s ORDER BY %s, g.id DESC LIMIT ? OFFSET ?"
            % (condition, GROUP_SORTS[query.sort]), params + [query.limit, query.offset])
        return total, [self._group_summary(row) for row in rows]

    _SUMMARY_COLUMNS = ("id", "group_key", "signature", "first_seen", "last_seen", "count", "failing_runs",
                        "succeeding_runs", "status", "status_at")

    def _group_summary(self, row: tuple) -> dict:
        group = dict(zip(self._SUMMARY_COLUMNS, row))
        sources = self._select("SELECT script_id, script_name, env_hash, host, fails, oks, last_seen "
                               "FROM group_sources WHERE group_id = ?", (group["id"],))
        failing = [s for s in sources if s[4] > 0]
        names: Dict[str, str] = {}
        for script_id, name, *_ in failing:
            names[script_id] = name or names.get(script_id) or script_id
        group["scripts"] = len(names)
        group["script_names"] = sorted(set(names.values()))[:5]
        group["envs_affected"] = len({s[2] for s in failing})
        latest = max(failing, key=lambda s: s[6], default=None)
        group["latest_env"] = latest[2] if latest else None
        return group

    def group_by_id(self, group_id: int) -> Optional[dict]:
        rows = self._select(
            "SELECT g.id, g.key, g.signature, g.first_seen, g.last_seen, g.errors, g.fails, g.oks, g.status, "
            "g.status_at FROM groups g WHERE g.id = ? AND g.errors > 0", (group_id,))
        return self._group_summary(rows[0]) if rows else None

    def group_data_by_id(self, group_id: int) -> engine.GroupData:
        with self._lock:
            return self._group_data(self._conn.cursor(), group_id, None)

    def daily_runs(self, group_ids: Sequence[int], first_day: int, days: int) -> Dict[int, List[Tuple[int, int]]]:
        """group id -> [(failing, succeeding) runs] for each day from ``first_day`` (days since the epoch)."""
        series = {g: [(0, 0)] * days for g in group_ids}
        if not group_ids:
            return series
        marks = ", ".join("?" * len(group_ids))
        for group_id, day, fails, oks in self._select(
                "SELECT group_id, day, fails, oks FROM group_days WHERE group_id IN (%s) AND day >= ? AND day < ?"
                % marks, list(group_ids) + [first_day, first_day + days]):
            series[group_id][day - first_day] = (fails, oks)
        return series

    def group_sources(self, group_id: int) -> List[dict]:
        """Who ran into the group: one row per (script, environment, host) with its runs."""
        keys = ("script_id", "script_name", "env_hash", "host", "failing", "succeeding", "last_seen")
        return [dict(zip(keys, row)) for row in self._select(
            "SELECT script_id, script_name, env_hash, host, fails, oks, last_seen FROM group_sources "
            "WHERE group_id = ? ORDER BY last_seen DESC", (group_id,))]

    def recent_errors(self, group_id: int, limit: int) -> List[dict]:
        keys = ("script_id", "script_name", "env_hash", "host", "ts", "received", "error_sig", "trace")
        return [dict(zip(keys, row)) for row in self._select(
            "SELECT script_id, script_name, env_hash, host, ts, received, error_sig, trace FROM beacons "
            "WHERE group_id = ? ORDER BY id DESC LIMIT ?", (group_id, limit))]

    def observed_fixes(self, group_id: int, limit: int) -> List[dict]:
        """Successes that followed a failure of the group in another environment: (from, to, when)."""
        keys = ("failing_env", "fixed_env", "script_id", "script_name", "host", "received")
        return [dict(zip(keys, row)) for row in self._select(
            "SELECT prev_env_hash, env_hash, script_id, script_name, host, received FROM beacons "
            "WHERE prev_group_id = ? AND kind = 'success' AND prev_env_hash IS NOT NULL AND test = 0 "
            "AND prev_env_hash <> env_hash ORDER BY id DESC LIMIT ?", (group_id, limit))]

    def set_status(self, group_id: int, status: str) -> bool:
        with self._transaction() as cur:
            cur.execute("UPDATE groups SET status = ?, status_at = ? WHERE id = ? AND errors > 0",
                        (status, time.time(), group_id))
            return cur.rowcount > 0

    def alerted_solution(self, group_id: int) -> Optional[str]:
        rows = self._select("SELECT alerted_solution FROM groups WHERE id = ?", (group_id,))
        return rows[0][0] if rows else None

    def set_alerted_solution(self, group_id: int, solution: str) -> None:
        with self._transaction() as cur:
            cur.execute("UPDATE groups SET alerted_solution = ? WHERE id = ?", (solution, group_id))

    def group_id_of(self, group_key: str) -> Optional[int]:
        rows = self._select("SELECT id FROM groups WHERE key = ?", (group_key,))
        return rows[0][0] if rows else None

    def environment(self, env_hash: str) -> Optional[dict]:
        rows = self._select("SELECT received, snapshot FROM envs WHERE env_hash = ?", (env_hash,))
        if not rows:
            return None
        env = {"env_hash": env_hash, "received": rows[0][0], "snapshot": json.loads(rows[0][1])}
        keys = ("group_id", "signature", "script_id", "script_name", "host", "failing", "succeeding", "last_seen")
        env["groups"] = [dict(zip(keys, row)) for row in self._select(
            "SELECT s.group_id, g.signature, s.script_id, s.script_name, s.host, s.fails, s.oks, s.last_seen "
            "FROM group_sources s JOIN groups g ON g.id = s.group_id WHERE s.env_hash = ? "
            "ORDER BY s.last_seen DESC LIMIT 200", (env_hash,))]
        return env

    def fleet(self, since: float) -> List[dict]:
        """Per (host, agent, environment): beacons and last contact since ``since``."""
        keys = ("host", "agent", "env_hash", "beacons", "errors", "last_seen")
        rows = [dict(zip(keys, row)) for row in self._select(
            "SELECT COALESCE(host, ''), COALESCE(agent, ''), env_hash, COUNT(*), "
            "SUM(CASE WHEN kind = 'error' THEN 1 ELSE 0 END), MAX(received) FROM beacons "
            "WHERE received >= ? AND test = 0 GROUP BY COALESCE(host, ''), COALESCE(agent, ''), env_hash",
            (since,))]
        return rows

    def fleet_days(self, first_day: int, days: int) -> List[Tuple[int, int]]:
        """[(error, success) beacons] per day from ``first_day``, test beacons left out."""
        columns = ", ".join("SUM(CASE WHEN received >= %d AND received < %d THEN 1 ELSE 0 END)"
                            % ((first_day + i) * 86400, (first_day + i + 1) * 86400) for i in range(days))
        rows = {kind: row for kind, *row in self._select(
            "SELECT kind, %s FROM beacons WHERE received >= ? AND test = 0 GROUP BY kind" % columns,
            (first_day * 86400,))}
        errors, oks = rows.get("error") or [0] * days, rows.get("success") or [0] * days
        return [(e or 0, o or 0) for e, o in zip(errors, oks)]

    def env_snapshots(self, env_hashes: Iterable[str]) -> Dict[str, dict]:
        hashes = sorted(set(env_hashes))
        found: Dict[str, dict] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            for env_hash, snapshot in self._select("SELECT env_hash, snapshot FROM envs WHERE env_hash IN (%s)"
                                                   % ", ".join("?" * len(chunk)), chunk):
                found[env_hash] = json.loads(snapshot)
        return found

    # -- retention --------------------------------------------------------------------------

    def purge(self, older_than: float) -> int:
        """Delete beacons received before ``older_than`` and take them out of the counts."""
        with self._transaction() as cur:
            old = cur.execute("SELECT id, kind, env_hash, counted FROM beacons WHERE received < ?",
                              (older_than,)).fetchall()
            for beacon_id, kind, env_hash, counted in old:
                features = self._features_of(cur, env_hash) if counted else None
                groups = [g for (g,) in cur.execute("SELECT group_id FROM contributions WHERE beacon_id = ?",
                                                    (beacon_id,))]
                if features is not None and groups:
                    self._apply(cur, groups, kind, features, -1)
                cur.execute("DELETE FROM contributions WHERE beacon_id = ?", (beacon_id,))
            cur.execute("DELETE FROM beacons WHERE received < ?", (older_than,))
            cur.execute("DELETE FROM counts WHERE fails <= 0 AND oks <= 0")
            cur.execute("DELETE FROM group_days WHERE day < ?", (int(older_than // 86400),))
            cur.execute("DELETE FROM group_sources WHERE last_seen < ?", (older_than,))
            cur.execute("DELETE FROM envs WHERE received < ? AND env_hash NOT IN (SELECT env_hash FROM beacons) "
                        "AND env_hash NOT IN (SELECT prev_env_hash FROM beacons WHERE prev_env_hash IS NOT NULL)",
                        (older_than,))
            self._features.clear()
            return len(old)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Transaction:
    """BEGIN IMMEDIATE .. COMMIT under the lock; ROLLBACK when the body raises."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock, on_rollback) -> None:
        self._conn = conn
        self._lock = lock
        self._on_rollback = on_rollback

    def __enter__(self) -> sqlite3.Cursor:
        self._lock.acquire()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._conn.cursor()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._conn.execute("COMMIT")
            else:
                self._conn.execute("ROLLBACK")
                self._on_rollback()
        finally:
            self._lock.release()

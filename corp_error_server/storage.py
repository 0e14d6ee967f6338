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

_UPSERT_ROWS = 190       # rows in one multi-row upsert of counts: 5 parameters each, under SQLite's old limit of 999


def _upsert_counts(rows: int) -> str:
    # one statement for many rows: each statement run is a round through the driver (and sqlite3
    # gives the GIL up at each), so a beacon's 30-odd counts go in one, not 30
    return ("INSERT INTO counts(group_id, feature, value, fails, oks) VALUES" + ", ".join(["(?, ?, ?, ?, ?)"] * rows)
            + " ON CONFLICT(group_id, feature, value) DO UPDATE SET fails = counts.fails + excluded.fails,"
            " oks = counts.oks + excluded.oks")


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


class BeaconResult(NamedTuple):
    env_known: bool
    duplicate: bool                     # an environment-only item: the environment was already stored
    error: Optional[Exception] = None   # add_beacons: this item failed and was rolled back alone


class Storage:
    """What the application needs from a store; one implementation below."""

    def add_env(self, env: Env) -> bool:
        raise NotImplementedError

    def add_beacon(self, beacon: Beacon, env: Optional[Env] = None) -> BeaconResult:
        raise NotImplementedError

    def add_beacons(self, items: Sequence[Tuple[Optional[Beacon], Optional[Env]]]) -> List[BeaconResult]:
        """Store every item in ONE transaction, each isolated: an item that fails is rolled back alone
        and its result carries the error. An item without a beacon stores its environment only."""
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
        self._group_ids: Dict[str, int] = {}     # a group's id never changes once committed
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=" + {"FULL": "FULL", "NORMAL": "NORMAL", "OFF": "OFF"}[synchronous])
        self._conn.execute("PRAGMA foreign_keys=OFF")
        self._migrate()

    def _migrate(self) -> None:
        with self._transaction() as cur:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            row = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                cur.execute("INSERT INTO meta(key, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise SchemaError("database schema %s is newer than this server (%d)" % (row[0], SCHEMA_VERSION))

    def _transaction(self):
        return _Transaction(self._conn, self._lock, self._forget)

    def _forget(self) -> None:
        """Drop what may come from a rolled-back write."""
        self._features.clear()
        self._group_ids.clear()

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
        group_id = self._group_ids.get(key)
        if group_id is None:
            cur.execute("INSERT OR IGNORE INTO groups(key, signature, first_seen, last_seen) VALUES(?, ?, ?, ?)",
                        (key, signature, now, now))
            group_id = cur.execute("SELECT id FROM groups WHERE key = ?", (key,)).fetchone()[0]
            if len(self._group_ids) >= _FEATURE_CACHE:
                self._group_ids.clear()
            self._group_ids[key] = group_id
        return group_id

    def _note_error(self, cur, group_id: int, beacon: Beacon, now: float) -> None:
        mentions = json.loads(cur.execute("SELECT mentions FROM groups WHERE id = ?", (group_id,)).fetchone()[0])
        new = sorted(set(beacon.mentions) - set(mentions))
        if new:
            mentions = (mentions + new)[:_MENTIONS_KEPT]
        cur.execute("UPDATE groups SET errors = errors + 1, last_seen = max(last_seen, ?), mentions = ? "
                    "WHERE id = ?", (now, json.dumps(mentions), group_id))
        cur.execute("INSERT OR IGNORE INTO group_scripts(script_id, group_id) VALUES(?, ?)",
                    (beacon.script_id, group_id))

    def _count(self, cur, beacon_id: int, kind: str, script_id: str, group_id: Optional[int],
               prev_group_id: Optional[int], features: Dict[str, str], mark: bool = True) -> None:
        """Fold one run into the counts of the group(s) it is evidence for (``mark``: and note it counted)."""
        if kind == "error":
            groups = [group_id]
        else:
            groups = [g for (g,) in cur.execute("SELECT group_id FROM group_scripts WHERE script_id = ?",
                                                (script_id,))]
            if prev_group_id is not None and prev_group_id not in groups:
                groups.append(prev_group_id)
        self._apply(cur, groups, kind, features, +1)
        cur.executemany("INSERT OR IGNORE INTO contributions(beacon_id, group_id) VALUES(?, ?)",
                        [(beacon_id, g) for g in groups])
        if mark:
            cur.execute("UPDATE beacons SET counted = 1 WHERE id = ?", (beacon_id,))

    @staticmethod
    def _apply(cur, groups: Iterable[int], kind: str, features: Dict[str, str], sign: int) -> None:
        fail, ok = (sign, 0) if kind == "error" else (0, sign)
        column = "fails" if kind == "error" else "oks"
        for group in groups:
            rows = [(group, f, v, fail, ok) for f, v in features.items()]
            for start in range(0, len(rows), _UPSERT_ROWS):
                chunk = rows[start:start + _UPSERT_ROWS]
                cur.execute(_upsert_counts(len(chunk)), [value for row in chunk for value in row])
            cur.execute("UPDATE groups SET %s = %s + ? WHERE id = ?" % (column, column), (sign, group))

    def add_beacon(self, beacon: Beacon, env: Optional[Env] = None) -> BeaconResult:
        with self._transaction() as cur:
            return self._store(cur, beacon, env, time.time())

    def add_beacons(self, items: Sequence[Tuple[Optional[Beacon], Optional[Env]]]) -> List[BeaconResult]:
        now = time.time()
        results = []
        with self._transaction() as cur:
            for beacon, env in items:
                cur.execute("SAVEPOINT item")
                try:
                    results.append(self._store(cur, beacon, env, now))
                except Exception as error:
                    if not self._conn.in_transaction:   # SQLite gave the whole transaction up (disk full, I/O)
                        raise
                    cur.execute("ROLLBACK TO SAVEPOINT item")
                    self._forget()
                    results.append(BeaconResult(False, False, error))
                cur.execute("RELEASE SAVEPOINT item")
        return results

    def _store(self, cur, beacon: Optional[Beacon], env: Optional[Env], now: float) -> BeaconResult:
        if beacon is None:
            if env is None:
                raise ValueError("an item needs a beacon or an environment")
            return BeaconResult(True, not self._insert_env(cur, env, now))
        if env is not None:
            self._insert_env(cur, env, now)
        group_id = (self._group_id(cur, beacon.group_key, beacon.signature or beacon.group_key, now)
                    if beacon.group_key else None)
        prev_group_id = (self._group_id(cur, beacon.prev_group_key, beacon.prev_group_key, now)
                         if beacon.prev_group_key else None)
        features = self._features_of(cur, beacon.env_hash)
        cur.execute(
            "INSERT OR IGNORE INTO beacons(event_id, kind, env_hash, script_id, group_id, error_sig, trace, ts,"
            " received, script_name, agent, test, prev_env_hash, prev_group_id, counted)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (beacon.event_id, beacon.kind, beacon.env_hash, beacon.script_id, group_id, beacon.signature,
             beacon.trace, beacon.ts, now, beacon.script_name, beacon.agent, int(beacon.test),
             beacon.prev_env_hash, prev_group_id, int(beacon.test or features is not None)))
        inserted, beacon_id = cur.rowcount, cur.lastrowid
        if not inserted:   # a repeated event id: stored once, answered as usual
            return BeaconResult(features is not None, True)
        if group_id is not None and not beacon.test:   # `corp-error-agent test` is no error of anyone's
            self._note_error(cur, group_id, beacon, now)
        if features is not None and not beacon.test:
            self._count(cur, beacon_id, beacon.kind, beacon.script_id, group_id, prev_group_id, features, False)
        return BeaconResult(features is not None, False)

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

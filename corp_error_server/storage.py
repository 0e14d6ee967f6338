"""Storage: beacons, environments, and the per-group counts the engine reads.

``Storage`` holds every query, written once in the SQL that SQLite and PostgreSQL both take; a
backend supplies connections, transactions and a small ``Dialect`` for what differs (placeholders,
column types, locks, fetching a new row's id). ``SQLiteStorage`` is below; ``PostgresStorage`` is in
``storage_postgres`` (it needs psycopg). ``open_storage`` picks one from a path or a URL.

Counts per (group, feature, value) are updated when a run becomes countable (its beacon and its
environment are both known), so ``/suggest`` reads a few hundred rows instead of rescanning beacons.
A burst's errors are counted per (group, environment) in ``pending_counts`` instead, and folded
into the counts later (``fold_counts``): the few values a fleet has make each count row move many
times a second in a burst, and a fold writes it once. Readers add what is pending, so what they
see is the same either way.
Every public write is one transaction: a request stores everything or nothing. Storage answers
queries and never decides: the engine turns what it returns into suggestions, the app joins them.
Storage raises only its own exceptions, never its driver's.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple, TypeVar

from .engine import Counts, FixPair, GroupData
from .storage_schema import MIGRATIONS

SCHEMA_VERSION = MIGRATIONS[-1].version
_PAIRS_READ = 20  # most recent observed fixes the engine looks at per group
_FAIL_ENVS_READ = 100  # latest failing runs whose distinct environments estimate the repeat rate
_GOOD_ENVS_READ = 50  # succeeding environments read when packages that move together need a combination
_MENTIONS_KEPT = 40  # package names remembered per group from its traces
_FEATURE_CACHE = 8192  # environments whose features stay in memory (they never change)
_PURGE_BATCH = 1000  # beacons deleted per transaction, so a purge never holds writers up for long
_ATTEMPTS = 5  # a transaction the database aborted for a conflict (deadlock) is run again

# Lock name spaces for backends whose writers run concurrently (PostgreSQL advisory locks).
LOCK_ENV, LOCK_PURGE, LOCK_SCHEMA, LOCK_FOLD = 1, 2, 3, 4

_MAX_PARAMS = 999  # parameters in one statement: SQLite's oldest limit
_UPSERT_ROWS = 190  # count rows in one upsert: 5 parameters each, within _MAX_PARAMS


def _upsert_counts(rows: int) -> str:
    # a run's 30-odd counts in one statement, not one each: every statement is a round through the
    # driver (sqlite3 gives the GIL up at each, PostgreSQL answers each) while the batch holds the lock
    return (
        "INSERT INTO counts(group_id, feature, value, fails, oks) VALUES"
        + ", ".join(["(?, ?, ?, ?, ?)"] * rows)
        + _COUNTS_CONFLICT
    )


_COUNTS_CONFLICT = (
    " ON CONFLICT(group_id, feature, value) DO UPDATE"
    " SET fails = counts.fails + excluded.fails, oks = counts.oks + excluded.oks"
)
_PENDING_CONFLICT = " ON CONFLICT(group_id, env_hash) DO UPDATE SET fails = pending_counts.fails + excluded.fails"
_DAYS_CONFLICT = (
    " ON CONFLICT(group_id, day) DO UPDATE SET fails = group_days.fails + excluded.fails, "
    "oks = group_days.oks + excluded.oks"
)
_SOURCES_CONFLICT = (
    " ON CONFLICT(group_id, script_id, env_hash, host) DO UPDATE SET "
    "fails = group_sources.fails + excluded.fails, oks = group_sources.oks + excluded.oks, "
    "last_seen = excluded.last_seen, script_name = COALESCE(excluded.script_name, group_sources.script_name)"
)
_BEACON_COLUMNS = (
    "INSERT INTO beacons(id, event_id, kind, env_hash, script_id, group_id, error_sig, trace, ts, "
    "received, script_name, agent, test, prev_env_hash, prev_group_id, counted, handled, host)"
)


_UPSERT_DAY = "INSERT INTO group_days(group_id, day, fails, oks) VALUES(?, ?, ?, ?)" + _DAYS_CONFLICT
_UPSERT_SOURCE = (
    "INSERT INTO group_sources(group_id, script_id, env_hash, host, script_name, fails, oks, last_seen) "
    "VALUES(?, ?, ?, ?, ?, ?, ?, ?)" + _SOURCES_CONFLICT
)
GROUP_STATUSES = ("new", "regressed", "resolved", "ignored")
GROUP_SORTS = {"last_seen": "g.last_seen DESC", "first_seen": "g.first_seen DESC", "count": "g.errors DESC"}

T = TypeVar("T")


def _without_variables(features: Dict[str, str]) -> Dict[str, str]:
    """A run's features when its variables are unknown.

    The published 0.4.2 client (it sends no ``agent`` nor ``script_name``) hashes its environment over
    the package list only and posts /env only when the server does not know that hash: its success
    on a known hash names an environment some earlier run of those packages posted, whose
    variables this run may not have had (the fix may have been exactly setting one). This run did
    not collect them, so they are unknown, not counted.
    """
    return {f: v for f, v in features.items() if not f.startswith("env:")}


###############################################################################
# What storage raises #########################################################
###############################################################################


class StorageError(Exception):
    """Base of everything storage raises; the message is fit for a one-line answer."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or cannot write now (down, locked, disk full): try again later."""


class StorageConflict(StorageError):
    """The write contradicts what is stored, or kept colliding with concurrent writes."""


class SchemaError(StorageError):
    """The database was written by a newer server."""


class UnsupportedDatabase(StorageError):
    """``--db`` names a kind of database this server cannot use (unknown scheme, missing driver)."""


class _Retry(Exception):
    """Raised by a backend when the database rolled a transaction back for a conflict worth retrying."""


###############################################################################
# What is stored ##############################################################
###############################################################################


class Env(NamedTuple):
    env_hash: str
    snapshot: dict
    features: Dict[str, str]


class Beacon(NamedTuple):
    kind: str
    env_hash: str
    script_id: str
    group_key: Optional[str]  # the error's group (error beacons)
    signature: Optional[str]
    trace: Optional[str]
    ts: Optional[float]
    event_id: Optional[str]
    script_name: Optional[str]
    agent: Optional[str]
    test: bool
    prev_env_hash: Optional[str]
    prev_group_key: Optional[str]  # the failure a success follows (our agent)
    mentions: frozenset
    handled: bool = False  # a logged or captured error rather than an uncaught one
    host: Optional[str] = None  # the machine's host name, when the agent sends it


class BeaconResult(NamedTuple):
    env_known: bool
    duplicate: bool
    error: Optional[Exception] = None  # add_beacons: this item failed and was rolled back alone
    new_group: bool = False  # this beacon opened its error group
    regressed: bool = False  # ... or reopened a resolved one


class _Tally:
    """A group's row while a burst of its errors is folded into it: what each one finds, what is written."""

    __slots__ = ("mentions", "errors", "status", "runs", "handled", "latest_env", "regressed")

    def __init__(self, mentions: List[str], errors: int, status: str) -> None:
        self.mentions, self.errors, self.status = mentions, errors, status
        self.runs = self.handled = 0
        self.latest_env = ""
        self.regressed = False

    def note(self, beacon: Beacon) -> BeaconResult:
        """One more error, as storing it alone would have counted it."""
        new_group, regressed = self.errors == 0, self.status == "resolved"
        if regressed:
            self.status, self.regressed = "regressed", True
        added = sorted(set(beacon.mentions) - set(self.mentions))
        if added:
            self.mentions = (self.mentions + added)[:_MENTIONS_KEPT]
        self.errors += 1
        self.runs += 1
        self.handled += int(beacon.handled)
        self.latest_env = beacon.env_hash
        return BeaconResult(True, False, None, new_group, regressed)


class GroupHead(NamedTuple):
    """What tells whether something computed from a group still holds (a suggestion: for which run)."""

    key: str
    id: int
    revision: int
    latest_env: Optional[str]  # the environment of the group's latest error


_HEAD_SELECT = "SELECT key, id, revision, latest_env FROM groups"


class GroupState(NamedTuple):
    """What the engine reads of a group at one revision, whichever script asks. The revision moves
    with every change of it (a run counted or purged, an error noted), so what is computed from
    ``data`` may be kept under (group_id, revision)."""

    group_id: int
    revision: int
    data: GroupData


def _once(read: Callable[[], T]) -> Callable[[], T]:
    """``read`` run on the first call only: a kept GroupState reads its succeeding sample once."""
    kept: List[T] = []

    def first() -> T:
        if not kept:
            kept.append(read())
        return kept[0]

    return first


class GroupQuery(NamedTuple):
    """A filtered, sorted page of error groups (the list page and /api/errors)."""

    search: str = ""
    status: str = ""
    script: str = ""
    features: Tuple[Tuple[str, str], ...] = ()  # (feature, value) the failing runs had: pkg:x==1, python
    sort: str = "last_seen"
    limit: int = 50
    offset: int = 0


###############################################################################
# Dialects ####################################################################
###############################################################################


class Dialect:
    """SQLite's SQL; a backend whose SQL differs subclasses this (see storage_postgres)."""

    types = {"{ID}": "INTEGER PRIMARY KEY", "{BIGINT}": "INTEGER", "{FLOAT}": "REAL", "{NOROWID}": " WITHOUT ROWID"}
    for_update = ""  # row locks: SQLite's writers are serialised by the database lock

    def translate(self, error: Exception) -> Exception:
        """The storage exception for a driver's (a programming error stays itself: the app answers 500)."""
        if isinstance(error, (sqlite3.IntegrityError, sqlite3.DataError)):
            return StorageConflict("refused by the database: %s" % error)
        if isinstance(error, (sqlite3.OperationalError, sqlite3.DatabaseError)):
            return StorageUnavailable("SQLite: %s" % error)
        return error

    def retryable(self, error: Exception) -> bool:
        """Whether the database gave the transaction up for a conflict, so that running it again may work."""
        return False

    def schema(self, sql: str) -> List[str]:
        for word, replacement in self.types.items():
            sql = sql.replace(word, replacement)
        return [statement for statement in sql.split(";") if statement.strip()]

    def sql(self, text: str) -> str:
        return text

    def params(self, params: Sequence[Any]) -> Sequence[Any]:
        return params

    def insert_id(self, raw, sql: str, params: Sequence[Any]) -> Optional[int]:
        raw.execute(sql, params)
        return raw.lastrowid if raw.rowcount else None

    def new_ids(self, raw, table: str, count: int) -> List[int]:
        """``count`` ids for rows about to be inserted into ``table`` with explicit ids, in this transaction."""
        # SQLite's write lock is held from BEGIN IMMEDIATE: nobody else takes ids until commit
        raw.execute("SELECT COALESCE(MAX(id), 0) FROM %s" % table)
        last = raw.fetchone()[0]
        return list(range(last + 1, last + 1 + count))

    def lock(self, raw, space: int, key: str) -> None:
        """Serialise transactions on (space, key) until commit; SQLite writes one transaction at a time."""

    def try_lock(self, raw, space: int) -> bool:
        return True

    def ids_copied(self, raw, table: str) -> None:
        """Rows with explicit ids went into ``table``: new rows must get ids after them (SQLite does so)."""


class Cursor:
    """A driver's cursor speaking ``?`` placeholders, plus the environments and groups this transaction read."""

    def __init__(self, raw, dialect: Dialect) -> None:
        self._raw = raw
        self._dialect = dialect
        self.seen: Dict[str, Dict[str, str]] = {}
        self.group_ids: Dict[str, int] = {}
        self.for_update = dialect.for_update

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        self._raw.execute(self._dialect.sql(sql), self._dialect.params(params))
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [self._dialect.params(row) for row in rows]
        if rows:
            self._raw.executemany(self._dialect.sql(sql), rows)

    def fetchone(self):
        return self._raw.fetchone()

    def fetchall(self) -> list:
        return self._raw.fetchall()

    def fetchmany(self, size: int) -> list:
        return self._raw.fetchmany(size)

    @property
    def columns(self) -> List[str]:
        return [column[0] for column in self._raw.description]

    def __iter__(self) -> Iterator:
        return iter(self._raw.fetchall())

    @property
    def rowcount(self) -> int:
        return self._raw.rowcount

    def insert_id(self, sql: str, params: Sequence[Any]) -> Optional[int]:
        """INSERT .. ON CONFLICT DO NOTHING of a row with an {ID}: its id, or None when it existed."""
        return self._dialect.insert_id(self._raw, self._dialect.sql(sql), self._dialect.params(params))

    def new_ids(self, table: str, count: int) -> List[int]:
        return self._dialect.new_ids(self._raw, table, count)

    def insert_rows(self, head: str, width: int, rows: Sequence[Sequence[Any]], tail: str = "") -> None:
        """``head VALUES (..), (..) tail`` over ``rows`` of ``width`` values: one statement per chunk
        rather than one per row (each statement is a round through the driver, and a GIL hand-off)."""
        per_statement = _MAX_PARAMS // width
        marks = "(" + ", ".join("?" * width) + ")"
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            self.execute(
                head + " VALUES" + ", ".join([marks] * len(chunk)) + tail, [value for row in chunk for value in row]
            )

    def lock(self, space: int, key: str = "") -> None:
        self._dialect.lock(self._raw, space, self._dialect.params([key])[0])

    def try_lock(self, space: int) -> bool:
        return self._dialect.try_lock(self._raw, space)

    def ids_copied(self, table: str) -> None:
        self._dialect.ids_copied(self._raw, table)


###############################################################################
# The queries #################################################################
###############################################################################


class Storage:
    """Everything the application stores and asks. A backend implements the three hooks at the top."""

    dialect = Dialect()

    def __init__(self) -> None:
        self._features: Dict[str, Dict[str, str]] = {}
        self._group_ids: Dict[str, int] = {}

    # -- backend hooks ----------------------------------------------------------------------

    def _transaction(self):
        """Context manager: a raw cursor in a write transaction, committed on leaving; driver errors
        come out as StorageUnavailable / StorageConflict / _Retry."""
        raise NotImplementedError

    def _snapshot(self):
        """Context manager: a raw cursor for reading, errors translated as in ``_transaction``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- running work -----------------------------------------------------------------------

    def _write(self, work: Callable[[Cursor], T]) -> T:
        for _ in range(_ATTEMPTS):
            try:
                with self._transaction() as raw:
                    cur = Cursor(raw, self.dialect)
                    result = work(cur)
            except _Retry:
                continue
            self._remember(cur.seen)  # only once committed: a rolled-back env or group was never stored
            if len(self._group_ids) + len(cur.group_ids) > _FEATURE_CACHE:
                self._group_ids.clear()
            self._group_ids.update(cur.group_ids)
            return result
        # nothing the client sent is wrong: a 4xx would make the agent drop the beacon, so try again later
        raise StorageUnavailable("the database kept aborting the write for concurrent conflicts; try again")

    def _read(self, work: Callable[[Cursor], T]) -> T:
        with self._snapshot() as raw:
            cur = Cursor(raw, self.dialect)
            result = work(cur)
        self._remember(cur.seen)
        return result

    def _remember(self, features: Dict[str, Dict[str, str]]) -> None:
        if len(self._features) + len(features) > _FEATURE_CACHE:
            self._features.clear()
        self._features.update(features)

    def _migrate(self) -> None:
        self._write(self._apply_migrations)

    def _apply_migrations(self, cur: Cursor) -> None:
        cur.lock(LOCK_SCHEMA)
        cur.execute(
            self.dialect.schema(
                "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied {FLOAT} NOT NULL)"
            )[0]
        )
        current = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        if current > SCHEMA_VERSION:
            raise SchemaError("database schema %d is newer than this server (%d)" % (current, SCHEMA_VERSION))
        for migration in MIGRATIONS:
            if migration.version > current:
                for statement in self.dialect.schema(migration.sql):
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO schema_version(version, description, applied) VALUES(?, ?, ?)",
                    (migration.version, migration.description, time.time()),
                )
        # The 0.5.0 server reads its version here: it refuses a database migrated past what it knows.
        cur.execute(
            "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )

    def ping(self) -> None:
        """Raises StorageUnavailable unless the database answers a trivial query."""
        self._read(lambda cur: cur.execute("SELECT 1").fetchone())

    def schema_version(self) -> int:
        return self._read(lambda cur: cur.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    # -- environments -----------------------------------------------------------------------

    def _features_of(self, cur: Cursor, env_hash: str) -> Optional[Dict[str, str]]:
        known = self._features.get(env_hash)
        if known is None:
            known = cur.seen.get(env_hash)
        if known is not None:
            return known
        row = cur.execute("SELECT features FROM envs WHERE env_hash = ?", (env_hash,)).fetchone()
        if row is None:
            return None
        cur.seen[env_hash] = features = json.loads(row[0])
        return features

    def _read_features(self, cur: Cursor, env_hashes: Iterable[str]) -> None:
        """Those of these environments' features not in memory yet into ``cur.seen``, in one query:
        a group's observed fixes name up to 40 environments, each a round trip on PostgreSQL."""
        missing = sorted({e for e in env_hashes if e not in self._features and e not in cur.seen})
        if missing:
            for env_hash, features in cur.execute(
                "SELECT env_hash, features FROM envs WHERE env_hash IN (%s)" % ", ".join("?" * len(missing)), missing
            ).fetchall():
                cur.seen[env_hash] = json.loads(features)

    def env_features(self, env_hash: str) -> Optional[Dict[str, str]]:
        known = self._features.get(env_hash)
        return known if known is not None else self._read(lambda cur: self._features_of(cur, env_hash))

    def _insert_env(self, cur: Cursor, env: Env, now: float) -> bool:
        cur.lock(LOCK_ENV, env.env_hash)  # with a beacon of this env stored concurrently, one sees the other
        cur.execute(
            "INSERT INTO envs(env_hash, received, snapshot, features) VALUES(?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (env.env_hash, now, json.dumps(env.snapshot, sort_keys=True), json.dumps(env.features)),
        )
        if cur.rowcount == 0:
            return False
        cur.seen[env.env_hash] = env.features
        waiting = cur.execute(
            "SELECT id, kind, script_id, group_id, prev_group_id FROM beacons "
            "WHERE env_hash = ? AND counted = 0 ORDER BY id" + cur.for_update,
            (env.env_hash,),
        ).fetchall()
        for beacon_id, kind, script_id, group_id, prev_group_id in waiting:
            self._count(cur, beacon_id, kind, script_id, group_id, prev_group_id, env.features, own_env=True)
        return True

    def add_env(self, env: Env) -> bool:
        return self._write(lambda cur: self._insert_env(cur, env, time.time()))

    # -- beacons ----------------------------------------------------------------------------

    def _group_id(self, cur: Cursor, key: str, signature: str, now: float) -> int:
        known = self._group_ids.get(key)
        if known is None:
            known = cur.group_ids.get(key)
        if known is not None:  # a group's row, once committed, is never deleted nor renumbered
            return known
        cur.execute(
            "INSERT INTO groups(key, signature, first_seen, last_seen) VALUES(?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (key, signature, now, now),
        )
        cur.group_ids[key] = group_id = cur.execute("SELECT id FROM groups WHERE key = ?", (key,)).fetchone()[0]
        return group_id

    def _note_error(self, cur: Cursor, group_id: int, beacon: Beacon, now: float) -> Tuple[bool, bool]:
        """Count the error in its group; (the group is new, a resolved group regressed)."""
        mentions_text, errors, status = cur.execute(
            "SELECT mentions, errors, status FROM groups WHERE id = ?" + cur.for_update, (group_id,)
        ).fetchone()
        mentions = json.loads(mentions_text)
        new = sorted(set(beacon.mentions) - set(mentions))
        if new:
            mentions = (mentions + new)[:_MENTIONS_KEPT]
        cur.execute(
            "UPDATE groups SET errors = errors + 1, handled = handled + ?, mentions = ?, latest_env = ?, "
            "last_seen = CASE WHEN last_seen < ? THEN ? ELSE last_seen END, revision = revision + 1 "
            "WHERE id = ?",
            (int(beacon.handled), json.dumps(mentions), beacon.env_hash, now, now, group_id),
        )
        cur.execute(
            "INSERT INTO group_scripts(script_id, group_id) VALUES(?, ?) ON CONFLICT DO NOTHING",
            (beacon.script_id, group_id),
        )
        regressed = status == "resolved"
        if regressed:
            cur.execute("UPDATE groups SET status = 'regressed', status_at = ? WHERE id = ?", (now, group_id))
        self._roll_up(cur, group_id, "error", beacon.script_id, beacon.env_hash, beacon.host, beacon.script_name, now)
        return errors == 0, regressed

    @staticmethod
    def _roll_up(
        cur: Cursor,
        group_id: int,
        kind: str,
        script_id: str,
        env_hash: str,
        host: Optional[str],
        script_name: Optional[str],
        received: float,
    ) -> None:
        """The dashboard's rollups: runs per group and day, and per (script, environment, host)."""
        fail, ok = (1, 0) if kind == "error" else (0, 1)
        cur.execute(_UPSERT_DAY, (group_id, int(received // 86400), fail, ok))
        cur.execute(_UPSERT_SOURCE, (group_id, script_id, env_hash, host or "", script_name, fail, ok, received))

    def _count(
        self,
        cur: Cursor,
        beacon_id: int,
        kind: str,
        script_id: str,
        group_id: Optional[int],
        prev_group_id: Optional[int],
        features: Dict[str, str],
        own_env: bool = False,
    ) -> None:
        """Fold one run into the counts of the group(s) it is evidence for (``own_env``: the environment
        was posted for this run; counted = 2: without its variables, _without_variables)."""
        groups: List[int]
        if kind == "error":
            groups = [group_id] if group_id is not None else []
        else:
            groups = [g for (g,) in cur.execute("SELECT group_id FROM group_scripts WHERE script_id = ?", (script_id,))]
            if prev_group_id is not None and prev_group_id not in groups:
                groups.append(prev_group_id)
        agent = None
        if kind == "success":
            env_hash, host, script_name, received, agent = cur.execute(
                "SELECT env_hash, host, script_name, received, agent FROM beacons WHERE id = ?", (beacon_id,)
            ).fetchone()
        partial = kind == "success" and agent is None and not own_env
        self._apply(cur, groups, kind, _without_variables(features) if partial else features, +1)
        if kind == "success":
            for group in sorted(g for g in groups if g is not None):
                self._roll_up(cur, group, kind, script_id, env_hash, host, script_name, received)
        cur.executemany(
            "INSERT INTO contributions(beacon_id, group_id) VALUES(?, ?) ON CONFLICT DO NOTHING",
            [(beacon_id, g) for g in groups],
        )
        cur.execute("UPDATE beacons SET counted = ? WHERE id = ?", (2 if partial else 1, beacon_id))

    @staticmethod
    def _apply(cur: Cursor, groups: Iterable[int], kind: str, features: Dict[str, str], sign: int) -> None:
        fail, ok = (sign, 0) if kind == "error" else (0, sign)
        column = "fails" if kind == "error" else "oks"
        # rows locked in one order everywhere (a group's row, then its counts by feature), so concurrent
        # writers queue instead of deadlocking
        for group in sorted(groups):
            cur.execute(
                "UPDATE groups SET %s = %s + ?, revision = revision + 1 WHERE id = ?" % (column, column), (sign, group)
            )
            rows = [(group, f, v, fail, ok) for f, v in sorted(features.items())]
            for start in range(0, len(rows), _UPSERT_ROWS):
                chunk = rows[start : start + _UPSERT_ROWS]
                cur.execute(_upsert_counts(len(chunk)), [value for row in chunk for value in row])

    def _store_beacon(self, cur: Cursor, beacon: Beacon, env: Optional[Env], now: float) -> BeaconResult:
        if env is not None:
            self._insert_env(cur, env, now)
        else:
            cur.lock(LOCK_ENV, beacon.env_hash)
        group_id = (
            self._group_id(cur, beacon.group_key, beacon.signature or beacon.group_key, now)
            if beacon.group_key
            else None
        )
        prev_group_id = (
            self._group_id(cur, beacon.prev_group_key, beacon.prev_group_key, now) if beacon.prev_group_key else None
        )
        beacon_id = cur.insert_id(
            "INSERT INTO beacons(event_id, kind, env_hash, script_id, group_id, error_sig, trace, ts,"
            " received, script_name, agent, test, prev_env_hash, prev_group_id, counted, handled, host)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                beacon.event_id,
                beacon.kind,
                beacon.env_hash,
                beacon.script_id,
                group_id,
                beacon.signature,
                beacon.trace,
                beacon.ts,
                now,
                beacon.script_name,
                beacon.agent,
                int(beacon.test),
                beacon.prev_env_hash,
                prev_group_id,
                int(beacon.test),
                int(beacon.handled),
                beacon.host,
            ),
        )
        features = self._features_of(cur, beacon.env_hash)
        if beacon_id is None:  # a repeated event id: stored once, answered as usual
            return BeaconResult(features is not None, True)
        new_group = regressed = False
        if group_id is not None and not beacon.test:  # `corp-error-agent test` is no error of anyone's
            new_group, regressed = self._note_error(cur, group_id, beacon, now)
        if features is not None and not beacon.test:
            self._count(cur, beacon_id, beacon.kind, beacon.script_id, group_id, prev_group_id, features)
        return BeaconResult(features is not None, False, None, new_group, regressed)

    def add_beacon(self, beacon: Beacon, env: Optional[Env] = None) -> BeaconResult:
        return self._write(lambda cur: self._store_beacon(cur, beacon, env, time.time()))

    def add_beacons(self, items: Sequence[Tuple[Optional[Beacon], Optional[Env]]]) -> List[BeaconResult]:
        """Store every item in ONE transaction (group commit), each isolated: an item that fails is
        rolled back alone and its result carries the error. An item without a beacon stores its
        environment only (``duplicate``: it was stored already)."""

        def work(cur: Cursor) -> List[BeaconResult]:
            now = time.time()
            results: List[Optional[BeaconResult]] = [None] * len(items)
            # an error of an environment already stored races with no one: it takes no environment lock
            burst = [
                (i, beacon)
                for i, (beacon, env) in enumerate(items)
                if beacon is not None
                and env is None
                and _plain_error(beacon)
                and self._features_of(cur, beacon.env_hash) is not None
            ]
            in_burst = {i for i, _ in burst}
            # locks taken in one order by every batch, so batches of several processes queue, not deadlock:
            # the environments' of the items stored one by one first, sorted, then the group rows (the
            # burst's, then each item's), as the one-by-one path takes them
            locked = sorted({_env_of(items[i]) for i in range(len(items)) if i not in in_burst})
            for env_hash in locked:
                cur.lock(LOCK_ENV, env_hash)
            if burst:
                stored = self._store_errors(cur, [beacon for _, beacon in burst], now)
                for (index, _), result in zip(burst, stored):
                    results[index] = result
            rest = [i for i in range(len(items)) if results[i] is None]
            for env_hash in sorted({_env_of(items[i]) for i in rest} - set(locked)):  # a burst that fell back
                cur.lock(LOCK_ENV, env_hash)
            # by environment, a stable sort: within one environment the sent order stays (a beacon
            # before or after its environment's snapshot)
            for index in sorted(rest, key=lambda i: _env_of(items[i])):
                results[index] = self._store_isolated(cur, items[index], now)
            return [result for result in results if result is not None]

        return self._write(work)

    def _store_isolated(self, cur: Cursor, item: Tuple[Optional[Beacon], Optional[Env]], now: float) -> BeaconResult:
        """One item under its own savepoint: a failure rolls back this item alone and is its result."""
        seen, group_ids = dict(cur.seen), dict(cur.group_ids)
        cur.execute("SAVEPOINT item")
        try:
            result = self._store_item(cur, item[0], item[1], now)
        except Exception as error:
            if self.dialect.retryable(error):
                raise
            try:
                cur.execute("ROLLBACK TO SAVEPOINT item")
            except Exception:  # the database gave the whole transaction up (connection lost, disk full)
                raise error from None
            cur.seen, cur.group_ids = seen, group_ids
            result = BeaconResult(False, False, self.dialect.translate(error))
        cur.execute("RELEASE SAVEPOINT item")
        return result

    def _store_errors(self, cur: Cursor, beacons: List[Beacon], now: float) -> List[Optional[BeaconResult]]:
        """Error beacons of known environments -- what a burst is made of -- with a few statements per
        table for all of them instead of a dozen per beacon. Should any statement fail, none of it stays
        and each beacon's result is None: the caller stores those one by one, isolated."""
        seen, group_ids = dict(cur.seen), dict(cur.group_ids)
        cur.execute("SAVEPOINT burst")
        try:
            results = self._store_burst(cur, beacons, now)
        except Exception as error:
            if self.dialect.retryable(error):
                raise
            try:
                cur.execute("ROLLBACK TO SAVEPOINT burst")
            except Exception:
                raise error from None
            cur.seen, cur.group_ids = seen, group_ids
            return [None] * len(beacons)
        cur.execute("RELEASE SAVEPOINT burst")
        return results

    def _store_burst(self, cur: Cursor, beacons: List[Beacon], now: float) -> List[Optional[BeaconResult]]:
        results: List[Optional[BeaconResult]] = [BeaconResult(True, True)] * len(beacons)
        fresh = self._not_stored(cur, beacons)
        if not fresh:
            return results
        signatures: Dict[str, str] = {}  # a new group's signature: its first beacon's, as one by one
        for i in fresh:
            signatures.setdefault(beacons[i].group_key or "", beacons[i].signature or beacons[i].group_key or "")
        groups = {key: self._group_id(cur, key, signatures[key], now) for key in sorted(signatures)}
        rows = [
            (
                beacon_id,
                b.event_id,
                b.kind,
                b.env_hash,
                b.script_id,
                groups[b.group_key or ""],
                b.signature,
                b.trace,
                b.ts,
                now,
                b.script_name,
                b.agent,
                0,
                b.prev_env_hash,
                None,
                1,
                int(b.handled),
                b.host,
            )
            for beacon_id, b in zip(cur.new_ids("beacons", len(fresh)), (beacons[i] for i in fresh))
        ]
        cur.insert_rows(_BEACON_COLUMNS, 18, rows)
        cur.insert_rows("INSERT INTO contributions(beacon_id, group_id)", 2, [(row[0], row[5]) for row in rows])
        # the rows every writer updates come last, locked in id order: held from here to the commit only
        ids = sorted(set(groups.values()))
        tallies = {
            row[0]: _Tally(json.loads(row[1]), row[2], row[3])
            for row in cur.execute(
                "SELECT id, mentions, errors, status FROM groups WHERE id IN (%s) ORDER BY id%s"
                % (", ".join("?" * len(ids)), cur.for_update),
                ids,
            ).fetchall()
        }
        for index in fresh:
            results[index] = tallies[groups[beacons[index].group_key or ""]].note(beacons[index])
        for group_id in ids:  # (the revision moves: so do the group's counts, in this transaction)
            tally = tallies[group_id]
            cur.execute(
                "UPDATE groups SET errors = errors + ?, fails = fails + ?, handled = handled + ?, "
                "mentions = ?, latest_env = ?, last_seen = CASE WHEN last_seen < ? THEN ? ELSE last_seen END,"
                " revision = revision + 1 WHERE id = ?",
                (
                    tally.runs,
                    tally.runs,
                    tally.handled,
                    json.dumps(tally.mentions),
                    tally.latest_env,
                    now,
                    now,
                    group_id,
                ),
            )
            if tally.regressed:
                cur.execute("UPDATE groups SET status = 'regressed', status_at = ? WHERE id = ?", (now, group_id))
        self._roll_up_burst(cur, rows, int(now // 86400), now)
        return results

    def _not_stored(self, cur: Cursor, beacons: List[Beacon]) -> List[int]:
        """Indexes of the beacons to store: not one whose event id is stored, or repeated in ``beacons``."""
        event_ids = sorted({b.event_id for b in beacons if b.event_id is not None})
        stored: Set[Optional[str]] = set()
        for start in range(0, len(event_ids), 500):
            chunk = event_ids[start : start + 500]
            stored.update(
                e
                for (e,) in cur.execute(
                    "SELECT event_id FROM beacons WHERE event_id IN (%s)" % ", ".join("?" * len(chunk)), chunk
                ).fetchall()
            )
        fresh: List[int] = []
        for index, beacon in enumerate(beacons):
            if beacon.event_id is None or beacon.event_id not in stored:
                fresh.append(index)
                stored.add(beacon.event_id)
        return fresh

    def _roll_up_burst(self, cur: Cursor, rows: List[tuple], day: int, now: float) -> None:
        """Counts and rollups of the burst's beacon ``rows``: one row per key, each summed over the burst."""
        pending: Dict[Tuple[int, str], int] = {}
        sources: Dict[Tuple[int, str, str, str], List] = {}
        days: Dict[int, int] = {}
        scripts: Set[Tuple[str, int]] = set()
        for row in rows:
            env_hash, script_id, group_id, script_name, host = row[3], row[4], row[5], row[10], row[17]
            pending[(group_id, env_hash)] = pending.get((group_id, env_hash), 0) + 1
            source = sources.setdefault((group_id, script_id, env_hash, host or ""), [0, None])
            source[0] += 1
            source[1] = script_name or source[1]
            days[group_id] = days.get(group_id, 0) + 1
            scripts.add((script_id, group_id))
        cur.insert_rows("INSERT INTO group_scripts(script_id, group_id)", 2, sorted(scripts), " ON CONFLICT DO NOTHING")
        cur.insert_rows(
            "INSERT INTO group_days(group_id, day, fails, oks)",
            4,
            [(g, day, runs, 0) for g, runs in sorted(days.items())],
            _DAYS_CONFLICT,
        )
        cur.insert_rows(
            "INSERT INTO group_sources(group_id, script_id, env_hash, host, script_name, fails, oks, last_seen)",
            8,
            [key + (name, runs, 0, now) for key, (runs, name) in sorted(sources.items())],
            _SOURCES_CONFLICT,
        )
        cur.insert_rows(
            "INSERT INTO pending_counts(group_id, env_hash, fails)",
            3,
            [key + (runs,) for key, runs in sorted(pending.items())],
            _PENDING_CONFLICT,
        )

    def fold_counts(self) -> None:
        """Move the runs waiting in pending_counts into the counts. One process at a time, the others
        waiting rather than skipping: a caller that folds before reading the counts alone (a filter, a
        purge) must find nothing pending that another process was folding."""
        self._write(self._fold)

    def _fold(self, cur: Cursor) -> None:
        cur.lock(LOCK_FOLD)
        rows = cur.execute(
            "SELECT group_id, env_hash, fails FROM pending_counts ORDER BY group_id, env_hash" + cur.for_update
        ).fetchall()
        if not rows:
            return
        self._read_features(cur, [env_hash for _, env_hash, _ in rows])
        counts: Dict[int, Counter] = {}  # per group, runs by (feature, value)
        for group_id, env_hash, runs in rows:
            tally = counts.setdefault(group_id, Counter())
            for item in (self._features_of(cur, env_hash) or {}).items():
                tally[item] += runs
        cur.insert_rows(
            "INSERT INTO counts(group_id, feature, value, fails, oks)",
            5,
            [(g, f, v, runs, 0) for g in sorted(counts) for (f, v), runs in sorted(counts[g].items())],
            _COUNTS_CONFLICT,
        )
        # by key, not all: a process's burst may have added a row since the SELECT
        cur.executemany("DELETE FROM pending_counts WHERE group_id = ? AND env_hash = ?", [(g, e) for g, e, _ in rows])

    def _store_item(self, cur: Cursor, beacon: Optional[Beacon], env: Optional[Env], now: float) -> BeaconResult:
        if beacon is not None:
            return self._store_beacon(cur, beacon, env, now)
        if env is None:
            raise ValueError("an item needs a beacon or an environment")
        return BeaconResult(True, not self._insert_env(cur, env, now))

    # -- reading ----------------------------------------------------------------------------

    def group_data(self, group_key: str) -> Optional[GroupData]:
        """The group of that key; given only an exception line, the busiest group of that line."""

        def work(cur: Cursor) -> Optional[GroupData]:
            head = self._head_of(cur, group_key)
            return None if head is None else self._group_state(cur, head.id).data

        return self._read(work)

    def group_head(self, group_key: str) -> Optional[GroupHead]:
        """The revision and latest failing environment of the group ``group_data`` reads for that key."""
        return self._read(lambda cur: self._head_of(cur, group_key))

    def _head_of(self, cur: Cursor, group_key: str) -> Optional[GroupHead]:
        row = cur.execute(_HEAD_SELECT + " WHERE key = ?", (group_key,)).fetchone()
        if row is not None:
            return GroupHead(*row)
        heads = self._heads_of_message(cur, group_key)
        return heads[0] if heads else None

    @staticmethod
    def _heads_of_message(cur: Cursor, message: str) -> List[GroupHead]:
        # a group's key is "<exception line>" or "<exception line> @ <place>" (substr: no collation involved)
        prefix = message + " @ "
        return [
            GroupHead(*row)
            for row in cur.execute(
                _HEAD_SELECT + " WHERE key = ? OR substr(key, 1, ?) = ? ORDER BY errors DESC, id",
                (message, len(prefix), prefix),
            ).fetchall()
        ]

    def group_heads(self, message: str) -> List[GroupHead]:
        """The groups of one exception line, busiest first."""
        return self._read(lambda cur: self._heads_of_message(cur, message))

    @staticmethod
    def _of_keys(cur: Cursor, sql: str, args: Tuple, keys: List[str]) -> List[tuple]:
        """``sql``, whose last condition is ``g.key IN ({keys})``, over ``keys`` in as many statements
        as SQLite's oldest parameter limit needs."""
        rows: List[tuple] = []
        room = _MAX_PARAMS - len(args)
        for start in range(0, len(keys), room):
            chunk = keys[start : start + room]
            rows += cur.execute(sql.format(keys=", ".join("?" * len(chunk))), args + tuple(chunk)).fetchall()
        return rows

    def last_error_group(self, keys: List[str], env_hash: str, script_id: Optional[str] = None) -> Optional[str]:
        """Of these groups, the one an error from this environment (and script) went to last.

        The sources' rollup, read through its environment index, says which of them it failed in at
        all; only those groups' beacons are searched for the latest (a line many groups share would
        otherwise have each group's beacons scanned for an environment that never failed in it)."""

        def work(cur: Cursor) -> Optional[str]:
            args: Tuple = (env_hash, script_id) if script_id else (env_hash,)

            def scoped(alias: str) -> str:
                return " AND %s.script_id = ?" % alias if script_id else ""

            failed_in = {
                row[0]
                for row in self._of_keys(
                    cur,
                    "SELECT DISTINCT g.key FROM group_sources s JOIN groups g ON g.id = s.group_id "
                    "WHERE s.env_hash = ? AND s.fails > 0" + scoped("s") + " AND g.key IN ({keys})",
                    args,
                    keys,
                )
            }
            latest: Tuple[int, Optional[str]] = (0, None)
            for key in failed_in:
                row = cur.execute(
                    "SELECT b.id FROM beacons b JOIN groups g ON g.id = b.group_id WHERE g.key = ? "
                    "AND b.env_hash = ? AND b.kind = 'error'" + scoped("b") + " ORDER BY b.id DESC LIMIT 1",
                    (key,) + args,
                ).fetchone()
                if row is not None and row[0] > latest[0]:
                    latest = (row[0], key)
            return latest[1]

        return self._read(work)

    def script_groups(self, keys: List[str], script_id: str) -> List[str]:
        """Of these groups, those an error of this script went to, from any environment (in their order)."""

        def work(cur: Cursor) -> List[str]:
            sql = "SELECT g.key FROM group_scripts s JOIN groups g ON g.id = s.group_id WHERE s.script_id = ?"
            found = {row[0] for row in self._of_keys(cur, sql + " AND g.key IN ({keys})", (script_id,), keys)}
            return [key for key in keys if key in found]

        return self._read(work)

    def _group_state(self, cur: Cursor, group_id: int) -> GroupState:
        key, fails, oks, mentions, revision = cur.execute(
            "SELECT key, fails, oks, mentions, revision FROM groups WHERE id = ?", (group_id,)
        ).fetchone()
        counts: Counts = {}
        for feature, value, a, b in cur.execute(
            "SELECT feature, value, fails, oks FROM counts WHERE group_id = ?", (group_id,)
        ):
            counts.setdefault(feature, {})[value] = (a, b)
        pending = cur.execute("SELECT env_hash, fails FROM pending_counts WHERE group_id = ?", (group_id,)).fetchall()
        self._read_features(cur, [env_hash for env_hash, _ in pending])
        for env_hash, runs in pending:
            for feature, value in (self._features_of(cur, env_hash) or {}).items():
                values = counts.setdefault(feature, {})
                a, b = values.get(value, (0, 0))
                values[value] = (a + runs, b)
        pairs = []
        observed = cur.execute(
            "SELECT prev_env_hash, env_hash FROM beacons WHERE prev_group_id = ? "
            "AND kind = 'success' AND prev_env_hash IS NOT NULL AND test = 0 ORDER BY id DESC LIMIT ?",
            (group_id, _PAIRS_READ),
        ).fetchall()
        # (failing, fixed, script): the script only tells a rerun's client (below)
        fixes: List[Tuple[str, str, Optional[str]]] = [
            (failing, fixed, None) for failing, fixed in observed if failing != fixed
        ]
        # a pass of a failing environment itself, whichever client sent it (0.4.2 names no previous
        # environment, and its env_hash covers packages only): a fix that changed nothing visible,
        # evidence against every feature it shows; once per script, environment and host (the first
        # found: sorting a busy group's thousands of sources costs more than which ones says). A
        # source without a script name is the 0.4.2 client's (ours always sends one): what variables
        # its passing run had is unknown (_without_variables)
        reruns = cur.execute(
            "SELECT env_hash, script_id, script_name FROM group_sources WHERE group_id = ? AND fails > 0 AND oks > 0 "
            "LIMIT ?",
            (group_id, _PAIRS_READ),
        ).fetchall()
        fixes += [(env_hash, env_hash, sid) for env_hash, sid, _ in reruns]
        unnamed = {(env_hash, sid) for env_hash, sid, name in reruns if name is None}
        self._read_features(cur, [env for failing, fixed, _ in fixes for env in (failing, fixed)])
        for failing, fixed, sid in fixes:
            failing_features = self._features_of(cur, failing)
            fixed_features = self._features_of(cur, fixed)
            if fixed_features is not None and failing == fixed and (fixed, sid) in unnamed:
                fixed_features = _without_variables(fixed_features)
            if failing_features is not None and fixed_features is not None:
                pairs.append(FixPair(failing_features, fixed_features))
        # distinct environments among the latest failing runs, scaled to all of them (bounded work)
        recent = cur.execute(
            "SELECT COUNT(*), COUNT(DISTINCT env_hash) FROM (SELECT env_hash FROM beacons "
            "WHERE group_id = ? AND kind = 'error' AND test = 0 AND counted = 1 "
            "ORDER BY id DESC LIMIT ?) AS latest",
            (group_id, _FAIL_ENVS_READ),
        ).fetchone()
        fail_envs = round(fails * recent[1] / recent[0]) if recent[0] else 0
        data = GroupData(
            fails,
            oks,
            counts,
            set(json.loads(mentions)),
            pairs,
            key.split(" @ ")[0],
            fail_envs,
            _once(lambda: self._succeeding_envs(group_id)),
        )
        return GroupState(group_id, revision, data)

    def _succeeding_envs(self, group_id: int) -> List[Dict[str, str]]:
        def work(cur: Cursor) -> List[Dict[str, str]]:
            rows = cur.execute(
                "SELECT DISTINCT b.env_hash FROM contributions c JOIN beacons b ON b.id = c.beacon_id "
                "WHERE c.group_id = ? AND b.kind = 'success' LIMIT ?",
                (group_id, _GOOD_ENVS_READ),
            ).fetchall()
            self._read_features(cur, [env_hash for (env_hash,) in rows])
            return [f for f in (self._features_of(cur, env_hash) for (env_hash,) in rows) if f is not None]

        return self._read(work)

    ###########################################################################
    # Queries of the dashboard and the JSON API ###############################
    ###########################################################################
    # The pages and /api/errors read through these methods only, so a filter means the same in both.
    # Plain SQL that PostgreSQL runs as well (no SQLite functions; `?` placeholders), reading the
    # rollups kept at ingest (group_days, group_sources) rather than a group's beacons, which may be
    # a hundred thousand.

    def _select(self, sql: str, params: Iterable = ()) -> List[tuple]:
        return self._read(lambda cur: cur.execute(sql, tuple(params)).fetchall())

    def find_groups(self, query: GroupQuery) -> Tuple[int, List[dict]]:
        """(how many groups match, the page of them asked for)."""
        if query.features:
            self.fold_counts()  # the filter reads the counts in SQL: nothing of them may be pending
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
            where.append(
                "EXISTS (SELECT 1 FROM counts c WHERE c.group_id = g.id AND c.feature = ? AND c.value = ? "
                "AND c.fails > 0)"
            )
            params += [feature, value]
        condition = " AND ".join(where)

        def work(cur: Cursor) -> Tuple[int, List[dict]]:
            # one pass of the filter: the ids in order give the total and the page
            ids = [
                g
                for (g,) in cur.execute(
                    "SELECT g.id FROM groups g WHERE %s ORDER BY %s, g.id DESC" % (condition, GROUP_SORTS[query.sort]),
                    params,
                ).fetchall()
            ]
            page = ids[query.offset : query.offset + query.limit]
            if not page:
                return len(ids), []
            rows = {
                row[0]: row
                for row in cur.execute(
                    self._SUMMARY_SELECT + " WHERE g.id IN (%s)" % ", ".join("?" * len(page)), page
                ).fetchall()
            }
            return len(ids), self._summaries(cur, [rows[g] for g in page])

        return self._read(work)

    _SUMMARY_SELECT = (
        "SELECT g.id, g.key, g.signature, g.first_seen, g.last_seen, g.errors, g.fails, g.oks, "
        "g.status, g.status_at, g.handled, g.latest_env, g.revision FROM groups g"
    )
    _SUMMARY_COLUMNS = (
        "id",
        "group_key",
        "signature",
        "first_seen",
        "last_seen",
        "count",
        "failing_runs",
        "succeeding_runs",
        "status",
        "status_at",
        "handled",
        "latest_env",
        "revision",
    )

    def _summaries(self, cur: Cursor, rows: Sequence[tuple]) -> List[dict]:
        """Groups with who ran into them (scripts, environments) from the rollup."""
        groups = {
            row[0]: dict(zip(self._SUMMARY_COLUMNS, row), scripts=0, envs_affected=0, script_names=[]) for row in rows
        }
        for group in groups.values():  # the key is "<exception line> @ <where it is raised>"
            group["group_key"], _, group["where"] = group["group_key"].partition(" @ ")
        if not groups:
            return []
        ids = list(groups)
        marks = ", ".join("?" * len(ids))
        for group_id, scripts, envs in cur.execute(
            "SELECT group_id, COUNT(DISTINCT script_id), COUNT(DISTINCT env_hash) FROM group_sources "
            "WHERE group_id IN (%s) AND fails > 0 GROUP BY group_id" % marks,
            ids,
        ).fetchall():
            groups[group_id].update(scripts=scripts, envs_affected=envs)
        names: Dict[int, Dict[str, str]] = {}
        for group_id, script_id, name in cur.execute(
            "SELECT DISTINCT group_id, script_id, script_name FROM group_sources "
            "WHERE group_id IN (%s) AND fails > 0" % marks,
            ids,
        ).fetchall():
            known = names.setdefault(group_id, {})
            known[script_id] = name or known.get(script_id) or script_id
        for group_id, known in names.items():
            groups[group_id]["script_names"] = sorted(set(known.values()))[:5]
        return [groups[row[0]] for row in rows]

    def group_by_id(self, group_id: int) -> Optional[dict]:
        def work(cur: Cursor) -> List[dict]:
            rows = cur.execute(self._SUMMARY_SELECT + " WHERE g.id = ? AND g.errors > 0", (group_id,)).fetchall()
            return self._summaries(cur, rows)

        found = self._read(work)
        return found[0] if found else None

    def group_states(self, group_ids: Sequence[int]) -> Dict[int, GroupState]:
        """The engine's input for each group at its current revision, in one read."""
        return self._read(lambda cur: {g: self._group_state(cur, g) for g in group_ids})

    def daily_runs(self, group_ids: Sequence[int], first_day: int, days: int) -> Dict[int, List[Tuple[int, int]]]:
        """group id -> [(failing, succeeding) runs] for each day from ``first_day`` (days since the epoch)."""
        series = {g: [(0, 0)] * days for g in group_ids}
        if not group_ids:
            return series
        marks = ", ".join("?" * len(group_ids))
        for group_id, day, fails, oks in self._select(
            "SELECT group_id, day, fails, oks FROM group_days WHERE group_id IN (%s) AND day >= ? AND day < ?" % marks,
            list(group_ids) + [first_day, first_day + days],
        ):
            series[group_id][day - first_day] = (fails, oks)
        return series

    def group_sources(self, group_id: int, limit: int) -> Tuple[List[dict], List[dict]]:
        """Who ran into the group, latest first: (scripts, environments), each with its runs and hosts
        (how many, and one of them), at most ``limit`` of each."""

        def work(cur: Cursor) -> Tuple[List[dict], List[dict]]:
            scripts = [
                dict(zip(("script_id", "script_name", "failing", "succeeding", "last_seen", "hosts", "host"), row))
                for row in cur.execute(
                    "SELECT script_id, MAX(script_name), SUM(fails), SUM(oks), MAX(last_seen), "
                    "COUNT(DISTINCT NULLIF(host, '')), MAX(host) FROM group_sources WHERE group_id = ? "
                    "GROUP BY script_id ORDER BY MAX(last_seen) DESC LIMIT ?",
                    (group_id, limit),
                ).fetchall()
            ]
            envs = [
                dict(zip(("env_hash", "failing", "succeeding", "last_seen", "hosts", "host"), row))
                for row in cur.execute(
                    "SELECT env_hash, SUM(fails), SUM(oks), MAX(last_seen), COUNT(DISTINCT NULLIF(host, '')), "
                    "MAX(host) FROM group_sources WHERE group_id = ? GROUP BY env_hash ORDER BY MAX(last_seen) DESC "
                    "LIMIT ?",
                    (group_id, limit),
                ).fetchall()
            ]
            return scripts, envs

        return self._read(work)

    def recent_errors(self, group_id: int, limit: int) -> List[dict]:
        keys = ("script_id", "script_name", "env_hash", "host", "ts", "received", "error_sig", "trace")
        return [
            dict(zip(keys, row[:-1]), handled=bool(row[-1]))
            for row in self._select(
                "SELECT script_id, script_name, env_hash, host, ts, received, error_sig, trace, handled FROM beacons "
                "WHERE group_id = ? ORDER BY id DESC LIMIT ?",
                (group_id, limit),
            )
        ]

    def observed_fixes(self, group_id: int, limit: int) -> List[dict]:
        """Successes that followed a failure of the group in another environment: (from, to, when)."""
        keys = ("failing_env", "fixed_env", "script_id", "script_name", "host", "received")
        return [
            dict(zip(keys, row))
            for row in self._select(
                "SELECT prev_env_hash, env_hash, script_id, script_name, host, received FROM beacons "
                "WHERE prev_group_id = ? AND kind = 'success' AND prev_env_hash IS NOT NULL AND test = 0 "
                "AND prev_env_hash <> env_hash ORDER BY id DESC LIMIT ?",
                (group_id, limit),
            )
        ]

    def set_status(self, group_id: int, status: str) -> bool:
        return self._write(
            lambda cur: (
                cur.execute(
                    "UPDATE groups SET status = ?, status_at = ? WHERE id = ? AND errors > 0",
                    (status, time.time(), group_id),
                ).rowcount
                > 0
            )
        )

    def alerted_solution(self, group_id: int) -> Optional[str]:
        rows = self._select("SELECT alerted_solution FROM groups WHERE id = ?", (group_id,))
        return rows[0][0] if rows else None

    def set_alerted_solution(self, group_id: int, solution: str) -> None:
        self._write(
            lambda cur: cur.execute("UPDATE groups SET alerted_solution = ? WHERE id = ?", (solution, group_id))
        )

    def group_id_of(self, group_key: str) -> Optional[int]:
        rows = self._select("SELECT id FROM groups WHERE key = ?", (group_key,))
        return rows[0][0] if rows else None

    def environment(self, env_hash: str) -> Optional[dict]:
        rows = self._select("SELECT received, snapshot FROM envs WHERE env_hash = ?", (env_hash,))
        if not rows:
            return None
        env = {"env_hash": env_hash, "received": rows[0][0], "snapshot": json.loads(rows[0][1])}
        keys = ("group_id", "signature", "script_id", "script_name", "host", "failing", "succeeding", "last_seen")
        env["groups"] = [
            dict(zip(keys, row))
            for row in self._select(
                "SELECT s.group_id, g.signature, s.script_id, s.script_name, s.host, s.fails, s.oks, s.last_seen "
                "FROM group_sources s JOIN groups g ON g.id = s.group_id WHERE s.env_hash = ? "
                "ORDER BY s.last_seen DESC LIMIT 200",
                (env_hash,),
            )
        ]
        return env

    def fleet(self, since: float) -> List[dict]:
        """Per (host, agent, environment): beacons and last contact since ``since``."""
        keys = ("host", "agent", "env_hash", "beacons", "errors", "last_seen")
        rows = [
            dict(zip(keys, row))
            for row in self._select(
                "SELECT COALESCE(host, ''), COALESCE(agent, ''), env_hash, COUNT(*), "
                "SUM(CASE WHEN kind = 'error' THEN 1 ELSE 0 END), MAX(received) FROM beacons "
                "WHERE received >= ? AND test = 0 GROUP BY COALESCE(host, ''), COALESCE(agent, ''), env_hash",
                (since,),
            )
        ]
        return rows

    def fleet_days(self, first_day: int, days: int) -> List[Tuple[int, int]]:
        """[(error, success) beacons] per day from ``first_day``, test beacons left out."""
        columns = ", ".join(
            "SUM(CASE WHEN received >= %d AND received < %d THEN 1 ELSE 0 END)"
            % ((first_day + i) * 86400, (first_day + i + 1) * 86400)
            for i in range(days)
        )
        rows = {
            kind: row
            for kind, *row in self._select(
                "SELECT kind, %s FROM beacons WHERE received >= ? AND test = 0 GROUP BY kind" % columns,
                (first_day * 86400,),
            )
        }
        errors, oks = rows.get("error") or [0] * days, rows.get("success") or [0] * days
        return [(e or 0, o or 0) for e, o in zip(errors, oks)]

    def env_snapshots(self, env_hashes: Iterable[str]) -> Dict[str, dict]:
        hashes = sorted(set(env_hashes))
        found: Dict[str, dict] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            for env_hash, snapshot in self._select(
                "SELECT env_hash, snapshot FROM envs WHERE env_hash IN (%s)" % ", ".join("?" * len(chunk)), chunk
            ):
                found[env_hash] = json.loads(snapshot)
        return found

    def counts_total(self) -> Tuple[int, int]:
        """(beacons, environments) stored: for health checks and tests."""
        return self._read(
            lambda cur: (
                cur.execute("SELECT COUNT(*) FROM beacons").fetchone()[0],
                cur.execute("SELECT COUNT(*) FROM envs").fetchone()[0],
            )
        )

    # -- retention --------------------------------------------------------------------------

    def purge(self, older_than: float) -> int:
        """Delete beacons received before ``older_than`` and take them out of the counts, a batch per
        transaction; returns how many this process deleted. One process purges at a time: a batch
        another process is purging makes this one stop (it would find nothing left to do)."""
        # runs are taken out of the counts: none of them may still be pending there
        self.fold_counts()
        deleted = 0
        while True:
            batch = self._write(lambda cur: self._purge_batch(cur, older_than))
            if batch is None:
                break
            deleted += batch
            if batch < _PURGE_BATCH:
                self._write(lambda cur: self._purge_leftovers(cur, older_than))
                break
        self._features.clear()
        return deleted

    def _purge_batch(self, cur: Cursor, older_than: float) -> Optional[int]:
        if not cur.try_lock(LOCK_PURGE):
            return None
        old = cur.execute(
            "SELECT id, kind, env_hash, counted FROM beacons WHERE received < ? ORDER BY id LIMIT ?" + cur.for_update,
            (older_than, _PURGE_BATCH),
        ).fetchall()
        for beacon_id, kind, env_hash, counted in old:
            features = self._features_of(cur, env_hash) if counted else None
            if features is not None and counted == 2:
                features = _without_variables(features)
            groups = [g for (g,) in cur.execute("SELECT group_id FROM contributions WHERE beacon_id = ?", (beacon_id,))]
            if features is not None and groups:
                self._apply(cur, groups, kind, features, -1)
        cur.executemany("DELETE FROM contributions WHERE beacon_id = ?", [(row[0],) for row in old])
        cur.executemany("DELETE FROM beacons WHERE id = ?", [(row[0],) for row in old])
        return len(old)

    @staticmethod
    def _purge_leftovers(cur: Cursor, older_than: float) -> None:
        cur.execute("DELETE FROM counts WHERE fails <= 0 AND oks <= 0")
        cur.execute("DELETE FROM group_days WHERE day < ?", (int(older_than // 86400),))
        cur.execute("DELETE FROM group_sources WHERE last_seen < ?", (older_than,))
        cur.execute(
            "DELETE FROM envs WHERE received < ? "
            "AND NOT EXISTS (SELECT 1 FROM beacons b WHERE b.env_hash = envs.env_hash) "
            "AND NOT EXISTS (SELECT 1 FROM beacons b WHERE b.prev_env_hash = envs.env_hash)",
            (older_than,),
        )


###############################################################################
# SQLite ######################################################################
###############################################################################


class SQLiteStorage(Storage):
    """SQLite in WAL mode; one connection per process guarded by a lock (SQLite serialises writers
    anyway), opened again in a forked child (a connection must not cross a fork)."""

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        super().__init__()
        if path != ":memory:" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise StorageError("no directory %s for the database file" % os.path.dirname(os.path.abspath(path)))
        self._path = path
        self._synchronous = {"FULL": "FULL", "NORMAL": "NORMAL", "OFF": "OFF"}[synchronous]
        self._pid = -1
        self._conn: Optional[sqlite3.Connection] = None
        self._lock = threading.RLock()
        self._migrate()

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            try:
                conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=" + self._synchronous)
                # a batch's savepoint journal past 64 KB would be a temporary file created per commit
                conn.execute("PRAGMA temp_store=MEMORY")
            except sqlite3.Error as error:
                raise self.dialect.translate(error) from None
            self._conn, self._pid, self._lock = conn, os.getpid(), threading.RLock()
            self._features.clear()
        assert self._conn is not None
        return self._conn

    def ping(self) -> None:
        """Nothing to reach: the file is open in this process, and a query would queue behind the
        committer's lock (a stalled write must not make the server look dead)."""

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        conn = self._connection()
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn.cursor()
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise self.dialect.translate(error) from None

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Cursor]:
        conn = self._connection()
        with self._lock:
            try:
                conn.execute("BEGIN")  # one snapshot for all the reads
                try:
                    yield conn.cursor()
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.Error as error:
                raise self.dialect.translate(error) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn, self._pid = None, -1


###############################################################################
# Choosing a backend ##########################################################
###############################################################################


def open_storage(target: str) -> Storage:
    """``postgresql://...`` (or ``postgres://``) -> PostgreSQL; anything without a scheme -> a SQLite file."""
    scheme, sep, _ = target.partition("://")
    if not sep:
        return SQLiteStorage(target)
    if scheme.lower() in ("postgresql", "postgres"):
        from .storage_postgres import PostgresStorage

        return PostgresStorage(target)
    raise UnsupportedDatabase(
        "unsupported database URL scheme %r: give a file path (SQLite) or a postgresql:// URL" % scheme[:40]
    )


def _plain_error(beacon: Beacon) -> bool:
    """An error that needs nothing but its own rows and its group's (``Storage._store_burst``)."""
    return beacon.kind == "error" and bool(beacon.group_key) and beacon.prev_group_key is None and not beacon.test


def _env_of(item: Tuple[Optional[Beacon], Optional[Env]]) -> str:
    beacon, env = item
    return beacon.env_hash if beacon is not None else env.env_hash if env is not None else ""


def describe(target: str) -> str:
    """``target`` fit for a log line: a URL's password masked, in its user part or its query (libpq
    takes ``?password=`` and ``?sslpassword=`` too)."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        return target
    rest, question, query = rest.partition("?")
    query = re.sub(r"((?:^|&)[^=&]*password=)[^&]*", r"\1***", query, flags=re.IGNORECASE)
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        rest = "%s:***@%s" % (credentials.split(":", 1)[0], host)
    return "%s://%s%s%s" % (scheme, rest, question, query)

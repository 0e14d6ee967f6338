"""The database schema as an ordered list of migrations, the same list for every backend.

A database records in its ``schema_version`` table the migrations it has had; opening it applies
the missing ones in order, in one transaction under a lock, so no server sees a half-migrated
schema and several processes starting at once migrate once. A server refuses a database that has a
version it does not know (written by a newer server).

To change the schema, append a ``Migration`` with the next version number; never edit one that has
shipped, since databases out there already have it. Statements are separated by ``;`` and written in
the SQL that SQLite and PostgreSQL both take, with these words filled in per backend:

  {ID}       an auto-assigned 64-bit integer primary key
  {BIGINT}   a 64-bit integer (for columns holding an {ID})
  {FLOAT}    a double-precision number (PostgreSQL's REAL is single precision: too coarse for epochs)
  {NOROWID}  SQLite's WITHOUT ROWID for tables keyed by their primary key; nothing on PostgreSQL
"""

from __future__ import annotations

from typing import List, NamedTuple


class Migration(NamedTuple):
    version: int
    description: str
    sql: str


MIGRATIONS: List[Migration] = [
    # Written with IF NOT EXISTS throughout: databases of the 0.5.0 server have exactly this schema
    # (versioned in meta only), and apply it again harmlessly.
    Migration(
        1,
        "beacons, environments, error groups and their counts",
        """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS envs(
    env_hash TEXT PRIMARY KEY, received {FLOAT} NOT NULL, snapshot TEXT NOT NULL, features TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups(
    id {ID}, key TEXT NOT NULL UNIQUE, signature TEXT NOT NULL,
    first_seen {FLOAT} NOT NULL, last_seen {FLOAT} NOT NULL, errors INTEGER NOT NULL DEFAULT 0,
    fails INTEGER NOT NULL DEFAULT 0, oks INTEGER NOT NULL DEFAULT 0, mentions TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS beacons(
    id {ID}, event_id TEXT UNIQUE, kind TEXT NOT NULL, env_hash TEXT NOT NULL,
    script_id TEXT NOT NULL, group_id {BIGINT}, error_sig TEXT, trace TEXT, ts {FLOAT}, received {FLOAT} NOT NULL,
    script_name TEXT, agent TEXT, test INTEGER NOT NULL DEFAULT 0, prev_env_hash TEXT, prev_group_id {BIGINT},
    counted INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS beacons_group ON beacons(group_id, id);
CREATE INDEX IF NOT EXISTS beacons_waiting ON beacons(env_hash) WHERE counted = 0;
CREATE INDEX IF NOT EXISTS beacons_received ON beacons(received);
CREATE INDEX IF NOT EXISTS beacons_fixes ON beacons(prev_group_id, id) WHERE prev_group_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS group_scripts(
    script_id TEXT NOT NULL, group_id {BIGINT} NOT NULL, PRIMARY KEY(script_id, group_id)){NOROWID};
CREATE TABLE IF NOT EXISTS contributions(
    beacon_id {BIGINT} NOT NULL, group_id {BIGINT} NOT NULL, PRIMARY KEY(beacon_id, group_id)){NOROWID};
CREATE TABLE IF NOT EXISTS counts(
    group_id {BIGINT} NOT NULL, feature TEXT NOT NULL, value TEXT NOT NULL,
    fails INTEGER NOT NULL DEFAULT 0, oks INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(group_id, feature, value)){NOROWID}
""",
    ),
    Migration(
        2,
        "handled errors (logged or captured, not uncaught): per beacon and counted per group",
        """
ALTER TABLE beacons ADD COLUMN handled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE groups ADD COLUMN handled INTEGER NOT NULL DEFAULT 0
""",
    ),
    Migration(
        3,
        "dashboard: the beacon's host; per group its triage status, alert state and latest failing "
        "environment; two rollups "
        "(runs per group and day; per group, script, environment and host) so pages read a few rows",
        """
ALTER TABLE beacons ADD COLUMN host TEXT;
ALTER TABLE groups ADD COLUMN status TEXT NOT NULL DEFAULT 'new';
ALTER TABLE groups ADD COLUMN status_at {FLOAT};
ALTER TABLE groups ADD COLUMN alerted_solution TEXT;
ALTER TABLE groups ADD COLUMN latest_env TEXT;
UPDATE groups SET latest_env = (SELECT b.env_hash FROM beacons b WHERE b.group_id = groups.id AND b.test = 0
                                ORDER BY b.id DESC LIMIT 1);
CREATE TABLE group_days(
    group_id {BIGINT} NOT NULL, day INTEGER NOT NULL, fails INTEGER NOT NULL DEFAULT 0,
    oks INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(group_id, day)){NOROWID};
CREATE TABLE group_sources(
    group_id {BIGINT} NOT NULL, script_id TEXT NOT NULL, env_hash TEXT NOT NULL, host TEXT NOT NULL,
    script_name TEXT, fails INTEGER NOT NULL DEFAULT 0, oks INTEGER NOT NULL DEFAULT 0, last_seen {FLOAT} NOT NULL,
    PRIMARY KEY(group_id, script_id, env_hash, host)){NOROWID};
CREATE INDEX group_sources_env ON group_sources(env_hash);
CREATE INDEX groups_last_seen ON groups(last_seen);
CREATE INDEX groups_first_seen ON groups(first_seen);
CREATE INDEX groups_errors ON groups(errors);
INSERT INTO group_days(group_id, day, fails, oks)
SELECT group_id, day, SUM(f), SUM(o) FROM (
    SELECT group_id, (CAST(received AS BIGINT) - CAST(received AS BIGINT) % 86400) / 86400 AS day, 1 AS f, 0 AS o
    FROM beacons WHERE kind = 'error' AND group_id IS NOT NULL AND test = 0
    UNION ALL
    SELECT c.group_id, (CAST(b.received AS BIGINT) - CAST(b.received AS BIGINT) % 86400) / 86400, 0, 1
    FROM contributions c JOIN beacons b ON b.id = c.beacon_id WHERE b.kind = 'success') runs
GROUP BY group_id, day;
INSERT INTO group_sources(group_id, script_id, env_hash, host, script_name, fails, oks, last_seen)
SELECT group_id, script_id, env_hash, '', MAX(script_name), SUM(f), SUM(o), MAX(received) FROM (
    SELECT group_id, script_id, env_hash, script_name, received, 1 AS f, 0 AS o
    FROM beacons WHERE kind = 'error' AND group_id IS NOT NULL AND test = 0
    UNION ALL
    SELECT c.group_id, b.script_id, b.env_hash, b.script_name, b.received, 0, 1
    FROM contributions c JOIN beacons b ON b.id = c.beacon_id WHERE b.kind = 'success') runs
GROUP BY group_id, script_id, env_hash
""",
    ),
    Migration(
        4,
        "a revision per group, moved by every change of what the engine reads of it: what is computed "
        "from a group is kept under its revision",
        """
ALTER TABLE groups ADD COLUMN revision {BIGINT} NOT NULL DEFAULT 0
""",
    ),
    Migration(
        5,
        "a burst's errors wait per group and environment until folded into the counts (a commit wrote some "
        "35 count rows per error; a fold of many bursts writes each row once)",
        """
CREATE TABLE pending_counts(
    group_id {BIGINT} NOT NULL, env_hash TEXT NOT NULL, fails INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(group_id, env_hash)){NOROWID}
""",
    ),
]


# What `corp-error-server migrate SRC DST` copies, table by table in this order, with each table's
# primary key. A migration that adds a table adds it here too.
COPIED_TABLES = [
    ("envs", ("env_hash",)),
    ("groups", ("id",)),
    ("beacons", ("id",)),
    ("group_scripts", ("script_id", "group_id")),
    ("contributions", ("beacon_id", "group_id")),
    ("counts", ("group_id", "feature", "value")),
    ("pending_counts", ("group_id", "env_hash")),
    ("group_days", ("group_id", "day")),
    ("group_sources", ("group_id", "script_id", "env_hash", "host")),
]

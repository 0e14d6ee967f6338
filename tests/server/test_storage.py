"""Storage on its own: schema versions and migrations, its own exceptions, choosing a backend."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO
from corp_error_server.storage import (
    SCHEMA_VERSION,
    Beacon,
    Env,
    GroupQuery,
    SchemaError,
    SQLiteStorage,
    UnsupportedDatabase,
    describe,
    open_storage,
)
from corp_error_server.storage_schema import MIGRATIONS
from pgsupport import db_rows

# The schema the 0.5.0 server created, versioned in meta only.
_SCHEMA_050 = [
    statement
    for statement in MIGRATIONS[0]
    .sql.replace("{ID}", "INTEGER PRIMARY KEY")
    .replace("{BIGINT}", "INTEGER")
    .replace("{FLOAT}", "REAL")
    .replace("{NOROWID}", " WITHOUT ROWID")
    .split(";")
    if statement.strip()
]


def _serve(*args: str, cwd=None, python=(sys.executable,)) -> subprocess.CompletedProcess:
    """The server's command line, for runs that end before it listens."""
    return subprocess.run(
        [*python, "-m", "corp_error_server", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(cwd or REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_migrations_are_numbered_in_order():
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_VERSION == len(MIGRATIONS)


def test_a_new_database_has_every_migration(db_target):
    storage = open_storage(db_target)
    assert storage.schema_version() == SCHEMA_VERSION
    storage.close()
    open_storage(db_target).close()  # opening again applies nothing twice
    assert db_rows(db_target, "SELECT version FROM schema_version ORDER BY version") == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)
    ]
    assert db_rows(db_target, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]


def test_the_storage_page_lists_every_schema_version():
    page = (REPO / "docs" / "storage.md").read_text()
    listed = [int(number) for number in re.findall(r"^\| (\d+) \|", page, re.M)]
    assert listed == [migration.version for migration in MIGRATIONS]


def test_a_050_database_is_migrated_keeping_its_rows(tmp_path):
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    for statement in _SCHEMA_050:
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES('schema_version', '1')")
    db.execute("INSERT INTO beacons(event_id, kind, env_hash, script_id, received) VALUES('x', 'error', 'e', 's', 1)")
    db.commit()
    db.close()
    storage = SQLiteStorage(path)
    assert storage.schema_version() == SCHEMA_VERSION
    assert storage.counts_total() == (1, 0)
    storage.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT event_id, handled FROM beacons").fetchall() == [("x", 0)]
    # opening again applies nothing twice
    SQLiteStorage(path).close()
    assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_sqlite_keeps_a_batch_savepoint_journal_in_memory(tmp_path):
    # a batch past 64 KB of savepoint journal would otherwise create a temporary file on every commit
    storage = SQLiteStorage(str(tmp_path / "errors.db"))
    assert storage._connection().execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    storage.close()


def test_a_database_from_a_newer_server_is_refused(db_target):
    open_storage(db_target).close()
    db_rows(db_target, "INSERT INTO schema_version VALUES(%d, 'from the future', 0)" % (SCHEMA_VERSION + 1))
    with pytest.raises(SchemaError, match="newer than this server"):
        open_storage(db_target)
    result = _serve("--db", db_target)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "newer than this server" in result.stderr


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite+foo://x"])
def test_an_unsupported_scheme_is_one_line_and_exit_2(tmp_path, url):
    with pytest.raises(UnsupportedDatabase):
        open_storage(url)
    result = _serve("--db", url, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unsupported database URL scheme" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no directory named after the scheme


def test_postgresql_without_its_driver_is_one_line_and_exit_2(tmp_path):
    result = _serve("--db", "postgresql://app:s3cret@127.0.0.1:1/errors", python=(sys.executable, "-S"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "pip install" in result.stderr and "psycopg" in result.stderr
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(
    "url, python",
    [("mysql://u@h/db", (sys.executable,)), ("postgresql://app:s3cret@127.0.0.1:1/errors", (sys.executable, "-S"))],
)
def test_the_wsgi_app_on_an_unusable_database_url_answers_503_json_and_logs_it_once(tmp_path, url, python):
    # gunicorn's workers load `corp_error_server:app`, which opens its database on the first request
    script = """
import io, json, sys
from wsgiref.util import setup_testing_defaults
import corp_error_server
log = io.StringIO()
for _ in range(2):
    environ = {"wsgi.errors": log}
    setup_testing_defaults(environ)
    answer = []
    body = b"".join(corp_error_server.app(environ, lambda status, headers: answer.append((status, dict(headers)))))
    print(json.dumps([answer[0][0], answer[0][1]["Content-Type"], answer[0][1]["Retry-After"], json.loads(body)]))
print(json.dumps(log.getvalue()))
"""
    result = subprocess.run(
        [*python, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=str(REPO), CORP_ERROR_SERVER_DB=url),
    )
    assert result.returncode == 0, result.stderr
    *answers, log = [json.loads(line) for line in result.stdout.splitlines()]
    for status, content_type, retry_after, body in answers:
        assert (status, content_type, retry_after) == ("503 Service Unavailable", "application/json", "1")
        assert body["error"].startswith("the server cannot open its database: ")
        assert "s3cret" not in body["error"]
    assert log.count("\n") == 1 and log.startswith("corp-error-server: the server cannot open its database: ")
    assert list(tmp_path.iterdir()) == []


def test_a_database_path_in_a_missing_directory_is_one_line_and_makes_no_directory(tmp_path):
    result = _serve("--db", str(tmp_path / "typo" / "errors.db"))
    assert result.returncode == 1
    assert result.stderr == "corp-error-server: cannot open database %s: no directory %s for the database file\n" % (
        tmp_path / "typo" / "errors.db",
        tmp_path / "typo",
    )
    assert list(tmp_path.iterdir()) == []


def test_the_default_database_directory_is_made_for_the_user(tmp_path):
    script = "import corp_error_server; print(corp_error_server.default_db_path())"
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_DATA_HOME=str(tmp_path / "data"))
    env.pop("CORP_ERROR_SERVER_DB", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.stdout == "%s\n" % (tmp_path / "data" / "corp_error_server" / "errors.db")
    assert (tmp_path / "data" / "corp_error_server").is_dir()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "argument --port: 70000 is not a port number (0 to 65535)"),
        (["--port", "eighty"], "argument --port: 'eighty' is not an integer"),
        (["--timeout", "0"], "argument --timeout: 0 is not more than 0"),
        (["--retention-days", "inf"], "argument --retention-days: 'inf' is not a finite number"),
        (["--max-body", "-1"], "argument --max-body: -1 is not more than 0"),
        (["--max-waiting", "1.5"], "argument --max-waiting: '1.5' is not an integer"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_bad_usage_of_the_server_is_one_line_naming_the_option_and_exit_2(tmp_path, args, message):
    result = _serve("--db", str(tmp_path / "errors.db"), *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "corp-error-server: error: %s (see --help)\n" % message
    assert list(tmp_path.iterdir()) == []


def test_bad_usage_of_migrate_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "corp_error_server", "migrate", "only-one"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "corp-error-server migrate: error: the following arguments are required: dst (see --help)\n"


def test_an_unreachable_postgresql_is_one_line_and_exit_1(pg_cluster):
    result = _serve("--db", "postgresql://app:s3cret@127.0.0.1:%d/errors" % _closed_port())
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot open database" in result.stderr
    assert "s3cret" not in result.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_password_of_a_url_is_never_printed():
    assert describe("postgresql://app:s3cret@db.example:5432/errors") == "postgresql://app:***@db.example:5432/errors"
    assert describe("postgresql://app@db/errors") == "postgresql://app@db/errors"
    assert describe("/var/lib/errors.db") == "/var/lib/errors.db"
    assert (
        describe("postgresql://app@db/errors?sslmode=require&password=s3cret&PassWord=x")
        == "postgresql://app@db/errors?sslmode=require&password=***&PassWord=***"
    )
    assert (
        describe("postgresql:///errors?host=/run/pg&sslpassword=k3y")
        == "postgresql:///errors?host=/run/pg&sslpassword=***"
    )
    assert (
        describe("postgresql://app:s3cret@db/errors?sslmode=require")
        == "postgresql://app:***@db/errors?sslmode=require"
    )


def _beacon(event_id, env_hash="e1", sig="ValueError: boom", **fields) -> Beacon:
    import corp_error_agent

    values = dict(
        kind="error",
        env_hash=env_hash,
        script_id="s1",
        group_key=corp_error_agent.group_key(sig),
        signature=sig,
        trace=None,
        ts=1.7e9,
        event_id=event_id,
        script_name=None,
        agent=None,
        test=False,
        prev_env_hash=None,
        prev_group_key=None,
        mentions=frozenset(),
    )
    values.update(fields)
    return Beacon(**values)


def test_add_beacons_stores_a_batch_in_one_go_each_item_isolated(db_target):
    storage = open_storage(db_target)
    env = Env("e1", {"packages": {}}, {"python": "3.11", "pkg:a": "1"})
    results = storage.add_beacons(
        [
            (_beacon("a"), None),
            (_beacon("a"), None),
            (None, None),
            (_beacon("b"), env),
            (_beacon(None, handled=True), None),
            (None, env),
        ]
    )
    assert [(r.env_known, r.duplicate, type(r.error)) for r in results] == [
        (False, False, type(None)),
        (False, True, type(None)),
        (False, False, ValueError),
        (True, False, type(None)),
        (True, False, type(None)),
        (True, True, type(None)),
    ]
    total, (group,) = storage.find_groups(GroupQuery())
    data = storage.group_states([group["id"]])[group["id"]].data
    # the beacon stored before its environment in the same batch is counted when the environment arrives
    assert (total, group["count"], group["handled"], data.fails) == (1, 3, 1, 3)
    assert data.counts["pkg:a"] == {"1": (3, 0)}
    storage.close()


def _ingest_state(target: str) -> dict:
    """What ingest wrote, by group key rather than row id (ids differ between two databases); a group
    row without errors (one-by-one storing makes one for a repeated beacon's group) is no group."""
    key = "(SELECT key FROM groups WHERE id = %s)"
    return {
        name: sorted(db_rows(target, query), key=repr)
        for name, query in {
            "groups": "SELECT key, signature, errors, fails, oks, handled, mentions, status, latest_env FROM groups "
            "WHERE errors > 0",
            "beacons": "SELECT event_id, %s, env_hash, script_id, counted, handled, host, trace FROM beacons"
            % (key % "group_id"),
            "counts": "SELECT %s, feature, value, fails, oks FROM counts" % (key % "group_id"),
            "days": "SELECT %s, day, fails, oks FROM group_days" % (key % "group_id"),
            "sources": "SELECT %s, script_id, env_hash, host, script_name, fails, oks FROM group_sources"
            % (key % "group_id"),
            "scripts": "SELECT %s, script_id FROM group_scripts" % (key % "group_id"),
            "contributions": "SELECT b.event_id, %s FROM contributions c JOIN beacons b ON b.id = c.beacon_id"
            % (key % "c.group_id"),
        }.items()
    }


def test_the_counts_a_burst_leaves_pending_are_read_as_if_folded(db_target):
    """A burst's errors wait in pending_counts: the engine's input is the same before and after the fold."""
    storage = open_storage(db_target)
    for i in range(3):
        storage.add_env(Env("e%d" % i, {"packages": {}}, {"python": "3.1%d" % (i % 2), "pkg:a": "1"}))
    storage.add_beacon(_beacon("alone", "e0"))  # counted at once
    storage.add_beacons([(_beacon("k%d" % i, "e%d" % (i % 3)), None) for i in range(7)])
    group_id = storage.group_id_of(_beacon("x", "e0").group_key or "")
    assert group_id is not None
    pending = storage.group_states([group_id])[group_id].data
    assert db_rows(db_target, "SELECT SUM(fails) FROM pending_counts") == [(7,)]
    storage.fold_counts()
    assert db_rows(db_target, "SELECT COUNT(*) FROM pending_counts") == [(0,)]
    folded = storage.group_states([group_id])[group_id].data
    assert pending.counts == folded.counts
    assert folded.counts["pkg:a"] == {"1": (8, 0)} and folded.counts["python"] == {"3.10": (6, 0), "3.11": (2, 0)}
    assert pending.fails == folded.fails == 8
    # a filter on a feature sees the pending runs too
    storage.add_beacons([(_beacon("late", "e1", "OSError: late"), None)])
    total, _ = storage.find_groups(GroupQuery(features=(("python", "3.11"),)))
    assert total == 2
    storage.close()


def test_a_burst_of_errors_is_stored_as_one_by_one(db_target, tmp_path):
    """add_beacons stores a batch of plain errors with a few statements per table: what it stores and
    answers is what storing each beacon alone stores and answers."""
    envs = [
        Env("e%d" % i, {"packages": {}}, {"python": "3.1%d" % (i % 2), "pkg:a": str(i), "pkg:b": "2"}) for i in range(3)
    ]
    before = [_beacon("old", "e0", "KeyError: 'x'"), _beacon("gone", "e1", "OSError: disk")]
    burst = [
        _beacon(
            "k%d" % i,
            "e%d" % (i % 3),
            ("KeyError: 'x'", "TypeError: t", "OSError: disk")[i % 3],
            script_id="s%d" % (i % 2),
            script_name=("a.py", None)[i % 2],
            host=("h1", None)[i % 3 > 1],
            handled=i % 4 == 0,
            trace="Traceback %d" % i,
            mentions=frozenset({"pkg%d" % (i % 5)}),
        )
        for i in range(12)
    ]
    burst += [_beacon("old", "e0"), _beacon("k3", "e0"), _beacon(None, "e2", "TypeError: t")]
    alone_target = str(tmp_path / "alone.db")
    answers = []
    for target in (db_target, alone_target):
        storage = open_storage(target)
        for env in envs:
            storage.add_env(env)
        storage.add_beacons([(b, None) for b in before])
        resolved = storage.group_id_of(before[1].group_key or "")
        assert resolved is not None and storage.set_status(resolved, "resolved")
        if target == db_target:
            results = storage.add_beacons([(b, None) for b in burst])
        else:
            results = [storage.add_beacon(b) for b in burst]
        answers.append([(r.env_known, r.duplicate, r.new_group, r.regressed, r.error) for r in results])
        storage.fold_counts()  # the burst's counts wait to be folded; one by one counts them at once
        storage.close()
    assert answers[0] == answers[1]
    assert [a[:4] for a in answers[0][:3]] == [
        (True, False, False, False),
        (True, False, True, False),
        (True, False, False, True),
    ]
    assert answers[0][-3:] == [(True, True, False, False, None)] * 2 + [(True, False, False, False, None)]
    burst_state, alone_state = _ingest_state(db_target), _ingest_state(alone_target)
    assert burst_state == alone_state
    assert len(burst_state["beacons"]) == 2 + 12 + 1


def test_the_group_an_environment_failed_in_last_is_its_last_failure_not_its_last_run(db_target):
    """A success updates its script's source rows in every group it failed in; which group the
    environment's last *error* went to is still the beacons' to say (a 0.4.2 asker names no script)."""
    storage = open_storage(db_target)
    storage.add_env(Env("E", {"packages": {}}, {"python": "3.11"}))
    first, second = "KeyError: 'id' @ a.load", "KeyError: 'id' @ b.load"
    keys = {}
    for event_id, script, sig in (("1", "S1", first), ("2", "S2", second)):
        storage.add_beacon(_beacon(event_id, env_hash="E", sig=sig, script_id=script, group_key=sig.lower()))
        keys[sig] = sig.lower()
    storage.add_beacon(_beacon("3", env_hash="E", kind="success", script_id="S1", group_key=None, signature=None))
    both = [keys[first], keys[second]]
    assert storage.last_error_group(both, "E") == keys[second]
    assert storage.last_error_group(both, "E", "S1") == keys[first]
    assert storage.last_error_group(both, "other") is None and storage.last_error_group([], "E") is None
    # more groups than one statement may name (SQLite's oldest limit is 999 parameters)
    many = ["keyerror: 'id' @ x%d.load" % i for i in range(1200)] + both
    assert storage.last_error_group(many, "E") == keys[second]
    assert storage.script_groups(many, "S2") == [keys[second]]
    storage.close()

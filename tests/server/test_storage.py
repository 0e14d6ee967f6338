"""Storage on its own: schema versions and migrations, its own exceptions, choosing a backend."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO
from corp_error_server.storage import (
    SCHEMA_VERSION,
    SchemaError,
    SQLiteStorage,
    UnsupportedDatabase,
    describe,
    open_storage,
)
from corp_error_server.storage_schema import MIGRATIONS

# The schema the 0.5.0 server created, versioned in meta only.
_SCHEMA_050 = [statement for statement in MIGRATIONS[0].sql.replace("{ID}", "INTEGER PRIMARY KEY")
               .replace("{BIGINT}", "INTEGER").replace("{FLOAT}", "REAL").replace("{NOROWID}", " WITHOUT ROWID")
               .split(";") if statement.strip()]


def _serve(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The server's command line, for runs that end before it listens."""
    return subprocess.run([sys.executable, "-m", "corp_error_server", "--port", "0", *args], capture_output=True,
                          text=True, timeout=60, cwd=str(cwd or REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_migrations_are_numbered_in_order():
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_VERSION == len(MIGRATIONS)


def test_a_new_database_has_every_migration(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "new.db"))
    assert storage.schema_version() == SCHEMA_VERSION
    storage.close()
    db = sqlite3.connect(str(tmp_path / "new.db"))
    assert [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")] == \
        list(range(1, SCHEMA_VERSION + 1))
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)


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


def test_a_database_from_a_newer_server_is_refused(tmp_path):
    path = str(tmp_path / "newer.db")
    SQLiteStorage(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_version VALUES(?, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaError, match="newer than this server"):
        SQLiteStorage(path)
    result = _serve("--db", path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "newer than this server" in result.stderr


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite+foo://x"])
def test_an_unsupported_scheme_is_one_line_and_exit_2(tmp_path, url):
    with pytest.raises(UnsupportedDatabase):
        open_storage(url)
    result = _serve("--db", url, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unsupported database URL scheme" in result.stderr
    assert list(tmp_path.iterdir()) == []   # no directory named after the scheme


def test_the_password_of_a_url_is_never_printed():
    assert describe("postgresql://app:s3cret@db.example:5432/errors") == "postgresql://app:***@db.example:5432/errors"
    assert describe("postgresql://app@db/errors") == "postgresql://app@db/errors"
    assert describe("/var/lib/errors.db") == "/var/lib/errors.db"

"""A throw-away PostgreSQL cluster for the tests: Debian's binaries, a temp dir, a free loopback port.

``initdb`` and ``postgres`` refuse to run as root, so as root they run as the ``postgres`` user
(``runuser``) in a temp dir that user owns; the unix socket goes into that dir too, so nothing of
the machine's own PostgreSQL is touched. ``unavailable()`` says why the tests cannot have one.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from typing import List, Optional


def _bindir() -> Optional[str]:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(found[-1]) if found else None


def unavailable() -> Optional[str]:
    """Why no cluster can be started here, or None."""
    if _bindir() is None:
        return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres)"
    missing = [name for name in ("psycopg", "psycopg_pool") if importlib.util.find_spec(name) is None]
    if missing:
        return "%s not installed (the server's [postgres] extra)" % " and ".join(missing)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the cluster as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """One PostgreSQL server; ``database()`` gives a fresh, empty database's URL."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        # as root, under /tmp: $TMPDIR may be in a home the postgres user cannot enter
        self.dir = tempfile.mkdtemp(prefix="cea-pg-", dir="/tmp" if os.geteuid() == 0 else None)
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self._as_postgres: List[str] = []
        if os.geteuid() == 0:
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
            record = pwd.getpwnam("postgres")
            os.chown(self.dir, record.pw_uid, record.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            self._as_postgres + [os.path.join(self.bindir, tool), *args],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError("%s failed: %s%s" % (tool, result.stdout, result.stderr))

    def start(self) -> None:
        options = (
            "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
            "-c max_connections=200" % (self.port, self.dir)
        )
        self._run(
            "pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60", "-o", options, "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres") -> str:
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, database)

    def database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE %s" % name)
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def db_rows(target: str, query: str) -> list:
    """Rows of a statement (no parameters) run and committed straight on a server's database, either backend."""
    if "://" in target:
        import psycopg

        with psycopg.connect(target) as conn:
            cursor = conn.execute(query)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
    import sqlite3

    conn = sqlite3.connect(target)
    try:
        rows = conn.execute(query).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def db_tables(target: str) -> set:
    query = (
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        if "://" in target
        else "SELECT name FROM sqlite_master WHERE type = 'table'"
    )
    return {name for (name,) in db_rows(target, query)}

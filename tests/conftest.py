"""Shared fixtures: one param per CPython 3.8-3.13, session venvs, the recording backend, sandboxes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import support

_INTERPRETERS = support.find_interpreters()


class Interpreter:
    def __init__(self, version: str, exe: Path):
        self.version = version  # "3.X"
        self.exe = exe
        self.full_version = exe.parent.parent.name  # "3.X.Y" (the pyenv directory name)
        self.minor = int(version.split(".")[1])

    def __repr__(self) -> str:
        return "Interpreter(%s, %s)" % (self.version, self.exe)


@pytest.fixture(scope="session", params=support.VERSIONS, ids=["py" + v for v in support.VERSIONS])
def py(request) -> Interpreter:
    """Each CPython 3.8-3.13 under $(pyenv root)/versions; skipped (with the reason) when missing."""
    found = _INTERPRETERS[request.param]
    if not isinstance(found, Path):
        pytest.skip("CPython %s %s" % (request.param, found))
    return Interpreter(request.param, found)


class VenvFactory:
    """Session venvs, one per (interpreter, kind), created on first use and reused."""

    def __init__(self, base: Path):
        self.base = base
        self.cache = {}
        self.lock = threading.Lock()

    def get(self, interp: Interpreter, kind: str) -> support.Venv:
        key = (interp.version, kind)
        with self.lock:
            if key not in self.cache:
                path = self.base / ("%s-%s" % (kind, interp.version))
                try:
                    self.cache[key] = support.make_venv(interp.exe, path, interp.version, kind)
                except Exception as exc:  # remember the failure, report it in every test that needs it
                    self.cache[key] = exc
            value = self.cache[key]
        if isinstance(value, Exception):
            raise value
        return value


@pytest.fixture(scope="session")
def venvs(tmp_path_factory) -> VenvFactory:
    return VenvFactory(tmp_path_factory.mktemp("venvs"))


@pytest.fixture
def agent_venv(py, venvs) -> support.Venv:
    """A venv of this interpreter with the agent installed from the built wheel (by the venv's pip)."""
    return venvs.get(py, "wheel")


@pytest.fixture
def copy_venv(py, venvs) -> support.Venv:
    """A venv with the three agent files copied into site-packages (the bare-file deployment)."""
    return venvs.get(py, "copy")


@pytest.fixture
def plain_venv(py, venvs) -> support.Venv:
    """The same interpreter in a venv without the agent: the reference for 'unchanged'."""
    return venvs.get(py, "none")


@pytest.fixture
def fresh_venv(py, tmp_path):
    """Factory for a new venv (without pip) of this interpreter, for tests that change the venv."""
    counter = [0]

    def make(kind: str = "none") -> support.Venv:
        counter[0] += 1
        return support.make_venv(py.exe, tmp_path / ("venv%d" % counter[0]), py.version, kind)

    return make


@pytest.fixture
def backend():
    server = support.RecordingBackend()
    yield server
    server.stop()


@pytest.fixture
def sandbox(tmp_path) -> support.Sandbox:
    return support.Sandbox(tmp_path)


def _throwaway_cluster():
    """A PostgreSQL server under a temp dir, destroyed at the end; skipped with the reason where none can run."""
    import pgsupport

    reason = pgsupport.unavailable()
    if reason:
        print("skipping: " + reason)
        pytest.skip(reason)
    cluster = pgsupport.Cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's PostgreSQL, shared by the tests that only need a database of their own on it."""
    yield from _throwaway_cluster()


@pytest.fixture
def own_cluster():
    """A PostgreSQL of this test's own (for tests that stop it)."""
    yield from _throwaway_cluster()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request, tmp_path) -> str:
    """Each backend's --db: a SQLite file under tmp_path, a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "errors.db")
    return request.getfixturevalue("pg_cluster").database()

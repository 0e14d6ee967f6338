"""Fixtures of the reliability suite: the 3.11 agent venv the fault matrix runs on."""

from __future__ import annotations

from pathlib import Path

import pytest

import support

MATRIX_VERSION = "3.11"


class _Interp:
    def __init__(self, version: str, exe: Path):
        self.version, self.exe = version, exe


def interpreter(version: str) -> _Interp:
    found = support.find_interpreters()[version]
    if not isinstance(found, Path):
        pytest.skip("CPython %s %s" % (version, found))
    return _Interp(version, found)


@pytest.fixture(scope="session")
def venv311(venvs) -> support.Venv:
    """A 3.11 venv with the agent installed from the wheel: the one interpreter of the fault matrix."""
    return venvs.get(interpreter(MATRIX_VERSION), "wheel")


@pytest.fixture(scope="session")
def plain311(venvs) -> support.Venv:
    return venvs.get(interpreter(MATRIX_VERSION), "none")

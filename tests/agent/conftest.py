"""Venvs with packages from the registry, shared by the agent tests that need real frameworks.

One cached venv per interpreter and package set (support.package_venv), the agent copied in; each
set runs on a few interpreters only, to keep the suite's time: the others are skipped, saying why.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import support

WEB = ("flask", "django", "fastapi", "uvicorn", "pytest")
WEB_PYTHONS = ("3.9", "3.12")
JUPYTER = ("ipykernel", "nbclient", "nbformat", "nbconvert", "ipython")
JUPYTER_PYTHONS = ("3.10", "3.12")  # IPython 8 and 9


def _package_venv(version: str, packages) -> support.Venv:
    found = support.find_interpreters()[version]
    if not isinstance(found, Path):
        print("skipping tests needing %s on CPython %s: %s" % (", ".join(packages), version, found))
        pytest.skip("CPython %s %s" % (version, found))
    return support.package_venv(found, version, packages)


@pytest.fixture(scope="session", params=WEB_PYTHONS, ids=["py" + v for v in WEB_PYTHONS])
def web(request) -> support.Venv:
    """Flask, Django, FastAPI, uvicorn and pytest."""
    return _package_venv(request.param, WEB)


@pytest.fixture(scope="session", params=JUPYTER_PYTHONS, ids=["py" + v for v in JUPYTER_PYTHONS])
def jupyter(request) -> support.Venv:
    """ipykernel, nbclient, nbformat, nbconvert and IPython."""
    return _package_venv(request.param, JUPYTER)

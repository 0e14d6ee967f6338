"""Venvs with packages from the registry, shared by the agent tests that need real frameworks.

One cached venv per interpreter and package set (support.package_venv), the agent copied in; each
set runs on every interpreter found, but for those whose install takes too long for the suite:
those are skipped, saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import support

PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
WEB = ("flask", "django", "fastapi", "uvicorn", "pytest")
JUPYTER = ("ipykernel", "nbclient", "nbformat", "nbconvert", "ipython")
# Measured on this project's machine: pip needs over 10 minutes to pick and fetch the Jupyter stack
# for 3.8 and 3.9 (their newest compatible releases are found by backtracking), ~30 s on the others.
JUPYTER_SKIPPED = {
    "3.8": "pip takes over 10 minutes to resolve the Jupyter stack for 3.8 (suite time)",
    "3.9": "pip takes over 10 minutes to resolve the Jupyter stack for 3.9 (suite time)",
}


def _package_venv(version: str, packages) -> support.Venv:
    found = support.find_interpreters()[version]
    if not isinstance(found, Path):
        print("skipping tests needing %s on CPython %s: %s" % (", ".join(packages), version, found))
        pytest.skip("CPython %s %s" % (version, found))
    return support.package_venv(found, version, packages)


@pytest.fixture(scope="session", params=PYTHONS, ids=["py" + v for v in PYTHONS])
def web(request) -> support.Venv:
    """Flask, Django, FastAPI, uvicorn and pytest: the newest releases pip finds for each interpreter."""
    return _package_venv(request.param, WEB)


@pytest.fixture(scope="session", params=PYTHONS, ids=["py" + v for v in PYTHONS])
def jupyter(request) -> support.Venv:
    """ipykernel, nbclient, nbformat, nbconvert and IPython (8 or 9, by interpreter)."""
    if request.param in JUPYTER_SKIPPED:
        print("skipping notebook tests on CPython %s: %s" % (request.param, JUPYTER_SKIPPED[request.param]))
        pytest.skip(JUPYTER_SKIPPED[request.param])
    return _package_venv(request.param, JUPYTER)

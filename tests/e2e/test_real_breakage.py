"""A real breakage, end to end: packaging 22 removed packaging.version.LegacyVersion.

Two real venvs of CPython 3.11 that differ in that one package (packaging==21.3 and a current one,
from PyPI, cached as wheels under .cache/wheels), the agent installed from the built wheel in both,
the reference server as a subprocess. The script fails in the new venv, runs clean in the old one
(a success beacon after the failure), fails again in the new venv -- and the hint under that
traceback names packaging, a version that works, and the evidence.
"""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

import support
from support import CACHE, run

from .server_proc import ServerProcess

WHEELS = CACHE / "wheels"
GROUP = "has no attribute 'legacyversion'"
SCRIPT = '''import packaging.version


def main():
    print("parsed", repr(packaging.version.LegacyVersion("2013b")))


main()
'''


def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=10):
            return True
    except OSError:
        return False


def _pip(venv: support.Venv, *args: str) -> subprocess.CompletedProcess:
    return run(
        venv.python,
        ["-m", "pip", *args, "-q", "--disable-pip-version-check"],
        support.clean_env(),
        timeout=support.PROC_TIMEOUT * 3,
    )


def install(venv: support.Venv, *requirements: str) -> None:
    """Install from the wheel cache; fill the cache from PyPI first when it cannot satisfy the pins."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    offline = ("install", "--no-index", "--find-links", str(WHEELS), *requirements)
    if _pip(venv, *offline).returncode == 0:
        return
    fetched = _pip(venv, "download", "--only-binary", ":all:", "--dest", str(WHEELS), *requirements)
    if fetched.returncode != 0:
        wanted = " ".join(requirements)
        if not _pypi_reachable():
            pytest.skip("PyPI is unreachable, and %s is not in the wheel cache %s" % (wanted, WHEELS))
        raise AssertionError("pip download %s failed:\n%s" % (wanted, fetched.stderr.decode(errors="replace")))
    done = _pip(venv, *offline)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def _version(venv: support.Venv, dist: str) -> str:
    proc = run(venv.python, ["-c", "import importlib.metadata as m; print(m.version(%r))" % dist], support.clean_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip()


@pytest.mark.parametrize("py", ["3.11"], indirect=True)
def test_packaging_legacyversion_breakage(py, tmp_path, sandbox):
    old = support.make_venv(py.exe, tmp_path / "venv-old", py.version, "wheel")
    new = support.make_venv(py.exe, tmp_path / "venv-new", py.version, "wheel")
    install(old, "packaging==21.3")
    install(new, "packaging>=22")
    new_version = _version(new, "packaging")
    assert _version(old, "packaging") == "21.3" and int(new_version.split(".")[0]) >= 22

    server = ServerProcess(tmp_path / "errors.db")
    try:
        env = sandbox.env(server.url)
        script = sandbox.script("check_versions.py", SCRIPT)

        # 1. fails in the new venv: the traceback, the beacon, no hint (nothing has worked yet)
        first = run(new.python, [script], env, cwd=sandbox.work)
        err1 = first.stderr.decode("utf-8", "replace")
        assert first.returncode == 1, err1
        assert "AttributeError: module 'packaging.version' has no attribute 'LegacyVersion'" in err1
        assert "[corp-error-agent]" not in err1
        server.wait_group(GROUP, lambda g: g["failing_runs"] >= 1)

        # 2. runs clean in the old venv: the agent reports the success that follows the failure
        second = run(old.python, [script], env, cwd=sandbox.work)
        assert second.returncode == 0, second.stderr
        assert b"parsed <LegacyVersion('2013b')>" in second.stdout
        group = server.wait_group(GROUP, lambda g: g["succeeding_runs"] >= 1)
        assert group["failing_runs"] >= 1

        # 3. fails again in the new venv, and now the hint says what works
        third = run(new.python, [script], env, cwd=sandbox.work)
        err3 = third.stderr.decode("utf-8", "replace")
        assert third.returncode == 1, err3
        print(err3)  # shown with -s / on failure: the traceback and the hint a user would see
        lines = err3.splitlines()
        exc_line = next(
            i for i, line in enumerate(lines) if line.startswith("AttributeError: module 'packaging.version'")
        )
        hint_at = [i for i, line in enumerate(lines) if line.startswith("[corp-error-agent] ")]
        assert hint_at and hint_at[0] > exc_line, "no hint under the traceback:\n" + err3
        hint = lines[hint_at[0]]
        fix = next((line for line in lines[hint_at[0] :] if line.startswith("  fix:")), "")
        works = re.compile(r'packaging==21\.3|packaging\s*<\s*22')
        assert "packaging" in hint and ("21.3" in hint or "<22" in hint.replace(" ", "")), err3
        assert works.search(fix), "the fix does not pin a working packaging:\n" + err3
        assert 'pip install "packaging==21.3"' in fix or "pip install" in fix
        assert new_version in hint  # what this env has ...
        assert "observed fix" in hint or "succeeds in" in hint  # ... and the evidence
        assert re.search(r"confidence: \d+%", err3)

        # the server's view agrees: both runs counted, the observed fix is the evidence
        group = server.wait_group(GROUP, lambda g: g["failing_runs"] >= 2)
        suggestion = group["suggestion"]
        assert suggestion["match"] is True and works.search(suggestion["solution"]), suggestion
        assert suggestion["evidence"]["observed_fixes"] >= 1
        candidate = suggestion["evidence"]["candidates"][0]
        assert candidate["feature"] == "pkg:packaging" and candidate["named_in_trace"] is True
    finally:
        server.stop()

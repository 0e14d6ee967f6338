"""Jupyter and IPython: a real ipykernel driven by nbclient over notebooks the tests write, real
`jupyter nbconvert --execute`, real `ipython`, against the recording backend.

The Jupyter packages go into one cached venv per interpreter (the `jupyter` fixture, conftest.py);
the agent is copied into it.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

import support
from support import Reply, error_beacons, events, success_beacons, wait_error

HINT = Reply(
    200,
    {
        "match": True,
        "confidence": 0.9,
        "hint": "\x1b[31mdemo-pkg is missing\x1b[0m",
        "solution": 'pip install "demo-pkg==2.0"',
    },
)
FAILING_CELL = "import demo_pkg\nprint(demo_pkg.VERSION)"
RUN_NOTEBOOK = """
import json, sys
import nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, kernel_name="python3", allow_errors=True, timeout=120).execute()
print(json.dumps([cell.get("outputs", []) for cell in notebook.cells]))
"""


def write_notebook(path: Path, *cells: str, kernel: str = "python3") -> Path:
    path.write_text(
        json.dumps(
            {
                "cells": [
                    {
                        "cell_type": "code",
                        "execution_count": None,
                        "id": "cell%d" % i,
                        "metadata": {},
                        "outputs": [],
                        "source": source,
                    }
                    for i, source in enumerate(cells)
                ],
                "metadata": {"kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    return path


def execute(venv: support.Venv, sandbox: support.Sandbox, notebook: Path, env: dict) -> list:
    """Run every cell on a fresh kernel (nbclient); the outputs of each cell."""
    runner = sandbox.script("run_notebook.py", RUN_NOTEBOOK)
    proc = support.run(venv.python, [runner, notebook.name], env, cwd=notebook.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout.decode().splitlines()[-1])


def assert_one_report(backend, text: str) -> None:
    """The cell's error was reported once. Only the reports of that error count: the launcher and
    the kernel are hosts of their own and may log errors of their own, which the agent reports too
    (the suspected cause of rare failures on a loaded machine, not seen); all are shown on failure."""
    backend.settle()
    every = [(b.get("error_sig"), b.get("script_name"), b.get("event_id")) for b in error_beacons(backend)]
    assert len(events(error_beacons(backend, text))) == 1, every


def demo_wheel(directory: Path, version: str) -> Path:
    """A real wheel of a tiny package, built by hand (no build backend needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / ("demo_pkg-%s-py3-none-any.whl" % version)
    info = "demo_pkg-%s.dist-info/" % version
    files = {
        "demo_pkg/__init__.py": "VERSION = %r\n" % version,
        info + "METADATA": "Metadata-Version: 2.1\nName: demo-pkg\nVersion: %s\n" % version,
        info + "WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(info + "RECORD", "".join("%s,,\n" % n for n in list(files) + [info + "RECORD"]))
    return wheel


def test_cell_error_reported_with_the_hint_under_the_traceback(jupyter, backend, sandbox):
    backend.set_reply("/suggest", HINT)
    notebook = write_notebook(
        sandbox.work / "analysis.ipynb", "x = 1", "def load():\n    raise KeyError('nb-cell')\nload()", "print('never')"
    )
    outputs = execute(jupyter, sandbox, notebook, sandbox.env(backend.url))
    error, hint = outputs[1]
    assert error["output_type"] == "error" and error["ename"] == "KeyError"
    assert hint["output_type"] == "stream" and hint["name"] == "stderr"
    assert "[corp-error-agent] demo-pkg is missing" in hint["text"]
    assert 'fix:        %s -m pip install "demo-pkg==2.0"' % jupyter.python in hint["text"]  # the kernel's pip
    assert "\x1b" not in hint["text"]
    [beacon] = wait_error(backend, "nb-cell")
    assert beacon["error_sig"] == "KeyError: 'nb-cell' @ __main__.load < __main__.<module>"
    assert beacon["script_name"] == "analysis.ipynb" and "handled" not in beacon
    assert "\x1b" not in beacon["trace"] and "interactiveshell.py" not in beacon["trace"]
    assert beacon["trace"].rstrip().endswith("KeyError: 'nb-cell'")


def test_a_kernel_told_its_notebook_by_the_server_reports_under_that_name(jupyter, backend, sandbox):
    notebook = write_notebook(sandbox.work / "copy-run-by-nbclient.ipynb", "raise KeyError('nb-named')")
    env = sandbox.env(backend.url, {"JPY_SESSION_NAME": "reports/named-by-the-server.ipynb"})
    execute(jupyter, sandbox, notebook, env)
    [beacon] = wait_error(backend, "nb-named")
    assert beacon["script_name"] == "named-by-the-server.ipynb"


def test_pip_install_and_restart_is_the_fix(jupyter, backend, sandbox):
    """A cell fails; the user adds `%pip install` and restarts the kernel; the cell succeeds: the
    success names the failing environment, and the snapshot has what %pip installed into the
    running kernel. A clean run of another notebook with the same cell is not that fix."""
    wheels = demo_wheel(sandbox.tmp / "wheels", "2.0").parent
    target = sandbox.tmp / "kernel-packages"
    target.mkdir()
    env = sandbox.env(backend.url, {"PYTHONPATH": str(target)})
    notebook = write_notebook(sandbox.work / "report.ipynb", FAILING_CELL)
    outputs = execute(jupyter, sandbox, notebook, env)
    assert outputs[0][0]["ename"] in ("ModuleNotFoundError", "ImportError")
    [failure] = wait_error(backend, "demo_pkg")

    elsewhere = sandbox.tmp / "installed-elsewhere"
    zipfile.ZipFile(demo_wheel(sandbox.tmp / "wheels", "2.0")).extractall(elsewhere)
    other = write_notebook(sandbox.work / "other.ipynb", FAILING_CELL)
    outputs = execute(jupyter, sandbox, other, sandbox.env(backend.url, {"PYTHONPATH": str(elsewhere)}))
    assert outputs[0][0]["text"] == "2.0\n"

    write_notebook(
        notebook,
        '%%pip install -q --no-index --find-links %s --target %s "demo-pkg==2.0"' % (wheels, target),
        FAILING_CELL,
    )
    outputs = execute(jupyter, sandbox, notebook, env)
    assert any("2.0" in o.get("text", "") for o in outputs[1]), outputs
    [success] = backend.wait_for("/beacon", where=lambda b: b.get("kind") == "success")
    assert success.json["prev_env_hash"] == failure["env_hash"]
    assert success.json["prev_error_sig"] == failure["error_sig"]
    assert success.json["script_id"] == failure["script_id"]
    assert success.json["env_hash"] != failure["env_hash"]
    envs = {e["env_hash"]: e for e in backend.bodies("/env")}
    assert "demo-pkg==2.0" in envs[success.json["env_hash"]]["packages"]
    assert "demo-pkg==2.0" not in envs[failure["env_hash"]]["packages"]
    backend.settle()
    assert len(events(success_beacons(backend))) == 1
    assert_one_report(backend, "demo_pkg")


def test_notebooks_the_kernel_cannot_name_are_not_each_others_fix(jupyter, backend, sandbox):
    """nbclient over notebooks read from files that do not say .ipynb: the kernel is told no path,
    so it cannot tell two notebooks in one directory apart; the same cell succeeding in another
    such notebook is no success after the failure (the failure is still reported)."""
    failing = write_notebook(sandbox.work / "first.json", FAILING_CELL)
    outputs = execute(jupyter, sandbox, failing, sandbox.env(backend.url))
    assert outputs[0][0]["ename"] in ("ModuleNotFoundError", "ImportError")
    wait_error(backend, "demo_pkg")

    elsewhere = sandbox.tmp / "installed-elsewhere"
    zipfile.ZipFile(demo_wheel(sandbox.tmp / "wheels", "2.0")).extractall(elsewhere)
    other = write_notebook(sandbox.work / "second.json", FAILING_CELL, "x = 1")
    outputs = execute(jupyter, sandbox, other, sandbox.env(backend.url, {"PYTHONPATH": str(elsewhere)}))
    assert outputs[0][0]["text"] == "2.0\n"
    backend.settle()
    assert success_beacons(backend) == []
    assert_one_report(backend, "demo_pkg")


def test_nbconvert_execute_is_one_report_of_the_cells_own_error(jupyter, backend, sandbox):
    backend.set_reply("/suggest", HINT)
    notebook = write_notebook(sandbox.work / "daily.ipynb", "import os", "def compute():\n    return 1 / 0\ncompute()")
    proc = subprocess.run(
        [str(jupyter.bin / "jupyter-nbconvert"), "--to", "notebook", "--execute", notebook.name],
        env=sandbox.env(backend.url),
        cwd=str(sandbox.work),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode != 0 and b"CellExecutionError" in proc.stderr
    assert b"[corp-error-agent] demo-pkg is missing" in proc.stderr  # the launcher's terminal gets the hint
    [beacon] = wait_error(backend, "ZeroDivisionError")
    assert beacon["error_sig"] == "ZeroDivisionError: division by zero @ __main__.compute < __main__.<module>"
    assert beacon["script_name"] == "daily.ipynb"
    assert_one_report(backend, "ZeroDivisionError")
    assert all("\x1b" not in json.dumps(r.json) for r in backend.settle() if r.json)


def test_nbconvert_with_a_kernel_without_the_agent_reports_the_cells_own_error(jupyter, backend, sandbox):
    """Another interpreter as the kernel (here: the agent disabled in it by its kernel spec): the
    launcher reports the cell's exception from what the kernel sent, escape codes stripped."""
    spec = sandbox.tmp / "jupyter" / "kernels" / "noagent"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(jupyter.python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "no agent",
                "language": "python",
                "env": {"ERROR_AGENT_ENABLED": "0"},
            }
        )
    )
    notebook = write_notebook(
        sandbox.work / "daily.ipynb", "def compute():\n    return 1 / 0\ncompute()", kernel="noagent"
    )
    proc = subprocess.run(
        [str(jupyter.bin / "jupyter-nbconvert"), "--to", "notebook", "--execute", notebook.name],
        env=sandbox.env(backend.url, {"JUPYTER_PATH": str(sandbox.tmp / "jupyter")}),
        cwd=str(sandbox.work),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode != 0 and b"CellExecutionError" in proc.stderr
    [beacon] = wait_error(backend, "ZeroDivisionError")
    assert beacon["error_sig"] == "ZeroDivisionError: division by zero @ __main__.<module>"
    assert beacon["script_name"] == "daily.ipynb"
    assert "compute()" in beacon["trace"] and "\x1b" not in beacon["trace"]
    assert_one_report(backend, "ZeroDivisionError")


def test_ipython_script(jupyter, backend, sandbox):
    backend.set_reply("/suggest", HINT)
    script = sandbox.script("etl.py", "def extract():\n    raise ValueError('ipython-script')\nextract()\n")
    proc = subprocess.run(
        [str(jupyter.bin / "ipython"), script.name],
        env=sandbox.env(backend.url),
        cwd=str(sandbox.work),
        capture_output=True,
        timeout=120,
    )
    assert b"ipython-script" in proc.stdout
    assert b"[corp-error-agent] demo-pkg is missing" in proc.stderr
    [beacon] = wait_error(backend, "ipython-script")
    assert beacon["error_sig"] == "ValueError: ipython-script @ __main__.extract < __main__.<module>"
    assert beacon["script_name"] == "etl.py"
    plain = support.run(jupyter.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    wait_error(backend, "ipython-script", count=2)
    assert len({b["script_id"] for b in error_beacons(backend)}) == 1  # the same script as `python etl.py`
    assert plain.returncode == 1


@pytest.mark.parametrize("interactive", ["", "1"])
def test_ipython_prompt_follows_the_interactive_rule(jupyter, backend, sandbox, interactive):
    proc = subprocess.run(
        [str(jupyter.bin / "ipython"), "--simple-prompt"],
        input=b"1/0\nprint('after')\n",
        env=sandbox.env(backend.url, {"ERROR_AGENT_INTERACTIVE": interactive}),
        cwd=str(sandbox.work),
        capture_output=True,
        timeout=120,
    )
    assert b"ZeroDivisionError" in proc.stdout + proc.stderr and b"after" in proc.stdout
    if interactive:
        wait_error(backend, "ZeroDivisionError")
    else:
        assert not backend.settle()

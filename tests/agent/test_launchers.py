"""Who the script is when a tool runs other code: the run is what the tool runs (the test files, the
app, the files a ``python -m tool`` is given), never the tool's entry point, so that a clean run of
one never counts as the fix of another. Real pytest and `flask run` from the registry (the cached
web venv of test_frameworks), real ``python -m`` runs on every CPython present.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request

import pytest

import support
from support import error_beacons, run, success_beacons, wait_error

LOGGING_TEST = """
import logging


def test_logs_an_error():
    try:
        raise OSError("boom-in-%s")
    except OSError:
        logging.getLogger("suite").exception("the test logged it")
"""


def test_pytest_runs_are_the_test_files(web, backend, sandbox):
    sandbox.script("test_a.py", LOGGING_TEST % "a")
    sandbox.script("test_b.py", LOGGING_TEST % "b")
    env = sandbox.env(backend.url)
    for args in (
        [web.bin / "pytest", "-q", "test_a.py"],
        [web.bin / "pytest", "-q", "test_b.py"],
        [web.python, "-m", "pytest", "-q", "test_a.py"],
    ):
        proc = subprocess.run(
            [str(a) for a in args], env=env, cwd=str(sandbox.work), capture_output=True, timeout=support.PROC_TIMEOUT
        )
        assert proc.returncode == 0, proc.stdout
    first, second = wait_error(backend, "boom-in-a", count=2)
    [other] = wait_error(backend, "boom-in-b")
    assert first["script_name"] == second["script_name"] == "pytest test_a.py"
    assert other["script_name"] == "pytest test_b.py"
    assert first["script_id"] == second["script_id"] != other["script_id"]  # `python -m pytest` is pytest too


def test_flask_run_is_the_app(web, backend, sandbox):
    sandbox.script(
        "hello.py",
        "from flask import Flask\napp = Flask(__name__)\n\n\n@app.route('/')\n"
        "def index_view():\n    raise TimeoutError('boom-flask-run')\n",
    )
    command = [str(web.bin / "flask"), "--app", "hello", "run", "--port", "0"]
    started = r"Running on (http://127\.0\.0\.1:\d+)"
    with support.serving(command, sandbox.env(backend.url), sandbox.work, started) as url:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "/", timeout=30)
        assert answer.value.code == 500
        [beacon] = wait_error(backend, "boom-flask-run")
        assert beacon["handled"] is True and ", in index_view\n" in beacon["trace"]
        assert beacon["script_name"] == "flask . hello"


TOOL = "import sys\nif open(sys.argv[1]).read() == 'bad':\n    raise ValueError('boom-tool')\n"


def test_python_m_tool_runs_are_told_apart_by_their_files(agent_venv, backend, sandbox):
    """`python -m tool a.txt` failed; `python -m tool b.txt` running cleanly is not its fix, and
    `python -m tool a.txt` running cleanly is."""
    sandbox.script("tool/__init__.py", "")
    sandbox.script("tool/__main__.py", TOOL)
    a, b = sandbox.script("a.txt", "bad"), sandbox.script("b.txt", "good")
    env = sandbox.env(backend.url)
    assert run(agent_venv.python, ["-m", "tool", "a.txt"], env, cwd=sandbox.work).returncode == 1
    [failure] = wait_error(backend, "boom-tool")
    assert run(agent_venv.python, ["-m", "tool", "b.txt"], env, cwd=sandbox.work).returncode == 0
    backend.settle()
    assert not success_beacons(backend)
    a.write_text("good")
    assert run(agent_venv.python, ["-m", "tool", "a.txt"], env, cwd=sandbox.work).returncode == 0
    [success] = backend.wait_for("/beacon", where=lambda body: body.get("kind") == "success")
    assert success.json["script_id"] == failure["script_id"] and success.json["prev_error_sig"] == failure["error_sig"]
    assert failure["script_name"] == "-m tool a.txt"
    assert len(error_beacons(backend)) == 1 and b.read_text() == "good"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-A", "proj", "worker"], "celery {cwd} proj"),
        (["--app=proj.tasks", "worker", "-l", "info"], "celery {cwd} proj.tasks"),
        (["-Aother", "beat"], "celery {cwd} other"),
    ],
)
def test_celery_is_the_app_it_is_given(args, expected, monkeypatch, tmp_path):
    import corp_error_agent

    monkeypatch.chdir(tmp_path)
    assert corp_error_agent._launched("celery", args) == ("run", expected.format(cwd=tmp_path))

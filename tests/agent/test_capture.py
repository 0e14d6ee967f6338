"""What the agent captures: main thread, threads, asyncio, chained/grouped, SyntaxError, -m, -c, children.

Every test runs real interpreters (each CPython 3.8-3.13 present) in venvs with the agent installed,
against the recording backend.
"""

from __future__ import annotations

import re

import pytest

from support import HEX32, failing_source, run, same_outcome, success_beacons, wait_error

PACKAGE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?==\S+$")


@pytest.fixture(params=["wheel", "copy"])
def installed_venv(request, py, venvs):
    """The agent installed from the wheel, and from the bare files copied into site-packages."""
    return venvs.get(py, request.param)


def test_main_thread_error_reaches_backend(installed_venv, py, backend, sandbox):
    script = sandbox.script("app.py", failing_source("boom-main"))
    proc = run(installed_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1
    assert b"ValueError: boom-main" in proc.stderr

    [beacon] = wait_error(backend, "boom-main")
    assert beacon["kind"] == "error"
    assert "Traceback (most recent call last)" in beacon["trace"]
    assert beacon["trace"].rstrip().endswith("ValueError: boom-main")
    assert beacon["error_sig"] == "ValueError: boom-main @ __main__.main < __main__.<module>"
    assert re.fullmatch(r"[0-9a-f]{12}", beacon["script_id"])
    assert beacon.get("script_name") == "app.py"
    assert HEX32.fullmatch(beacon["event_id"])
    assert isinstance(beacon["ts"], (int, float, str)) and beacon["ts"]
    assert 0 < len(beacon["env_hash"]) <= 12

    env_req = backend.wait_for("/env")[0]
    env = env_req.json
    assert env["env_hash"] == beacon["env_hash"]
    assert isinstance(env["packages"], list)
    assert all(isinstance(p, str) and PACKAGE.match(p) for p in env["packages"]), env["packages"]
    if installed_venv.kind == "wheel":
        assert "corp-error-agent==0.5.0" in env["packages"]
    assert env["python_ver"] == py.full_version
    assert env.get("python_impl") == "CPython"
    assert 0 < len(env["os_info"]) <= 120 and 0 < len(env["machine_arch"]) <= 20
    assert env["env_vars"]["PYTHONPATH"] == "MISSING"
    assert env["env_vars"]["LANG"] == "C.UTF-8"

    [suggest] = backend.wait_for("/suggest")
    assert suggest.json["error_sig"] == beacon["error_sig"]
    assert suggest.json["env_hash"] == beacon["env_hash"]
    assert suggest.json.get("script_id") == beacon["script_id"]
    for req in backend.settle():
        if req.path in ("/beacon", "/env", "/suggest"):
            assert req.method == "POST"
            assert req.headers["content-type"].startswith("application/json")
            assert "authorization" not in req.headers


def test_token_sent_as_bearer(agent_venv, backend, sandbox):
    script = sandbox.script("app.py", failing_source("boom-token"))
    run(agent_venv.python, [script], sandbox.env(backend.url, {"ERROR_AGENT_TOKEN": "tok-123"}), cwd=sandbox.work)
    wait_error(backend, "boom-token")
    backend.wait_for("/suggest")
    reqs = [r for r in backend.settle() if r.path in ("/beacon", "/env", "/suggest")]
    assert reqs and all(r.headers.get("authorization") == "Bearer tok-123" for r in reqs)


def test_thread_error(agent_venv, backend, sandbox):
    script = sandbox.script(
        "threaded.py",
        (
            "import threading\n"
            "def worker():\n"
            "    raise RuntimeError('boom-thread')\n"
            "t = threading.Thread(target=worker)\n"
            "t.start()\n"
            "t.join()\n"
            "print('main done')\n"
        ),
    )
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 0 and proc.stdout == b"main done\n"
    assert b"RuntimeError: boom-thread" in proc.stderr
    [beacon] = wait_error(backend, "boom-thread")
    assert beacon["error_sig"].startswith("RuntimeError: boom-thread @ __main__.worker")


def test_asyncio_run_error(agent_venv, backend, sandbox):
    script = sandbox.script(
        "aio.py",
        ("import asyncio\nasync def main():\n    raise LookupError('boom-asyncio-run')\nasyncio.run(main())\n"),
    )
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1
    [beacon] = wait_error(backend, "boom-asyncio-run")
    assert beacon["error_sig"].startswith("LookupError: boom-asyncio-run @ __main__.main")


def test_asyncio_task_exception_never_retrieved(agent_venv, backend, sandbox):
    script = sandbox.script(
        "aio_task.py",
        (
            "import asyncio, gc\n"
            "async def boom():\n"
            "    raise KeyError('boom-task')\n"
            "async def main():\n"
            "    task = asyncio.ensure_future(boom())\n"
            "    await asyncio.wait([task])\n"
            "    del task\n"
            "    gc.collect()\n"
            "asyncio.run(main())\n"
            "print('clean exit')\n"
        ),
    )
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 0 and proc.stdout == b"clean exit\n"
    assert b"Task exception was never retrieved" in proc.stderr
    [beacon] = wait_error(backend, "boom-task")
    assert beacon["error_sig"].startswith("KeyError: 'boom-task' @ __main__.boom")
    assert "handled" not in beacon  # asyncio logs it, but nobody handled it: not a logged error


def test_chained_exception(agent_venv, backend, sandbox):
    script = sandbox.script(
        "chained.py",
        (
            "def load():\n"
            "    try:\n"
            "        {}['missing-key']\n"
            "    except KeyError as e:\n"
            "        raise RuntimeError('boom-chained') from e\n"
            "load()\n"
        ),
    )
    run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    [beacon] = wait_error(backend, "boom-chained")
    trace = beacon["trace"]
    assert "KeyError: 'missing-key'" in trace
    assert "direct cause of the following exception" in trace
    assert trace.index("missing-key") < trace.index("RuntimeError: boom-chained")
    assert beacon["error_sig"].startswith("RuntimeError: boom-chained @ __main__.load")


def test_exception_group(py, agent_venv, backend, sandbox):
    if py.minor < 11:
        pytest.skip("ExceptionGroup is new in Python 3.11")
    script = sandbox.script(
        "group.py",
        (
            "def main():\n"
            "    raise ExceptionGroup('boom-group', [ValueError('inner-one'), TypeError('inner-two')])\n"
            "main()\n"
        ),
    )
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1
    [beacon] = wait_error(backend, "boom-group")
    assert "ValueError: inner-one" in beacon["trace"] and "TypeError: inner-two" in beacon["trace"]
    assert beacon["error_sig"].startswith("ExceptionGroup: boom-group")


def test_syntax_error_in_script(agent_venv, backend, sandbox):
    script = sandbox.script("broken.py", "x = 1\ndef f(:\n    pass\n")
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1 and b"SyntaxError" in proc.stderr
    [beacon] = wait_error(backend, "SyntaxError")
    assert beacon["error_sig"].startswith("SyntaxError: ")
    assert beacon.get("script_name") == "broken.py"


def test_dash_m(agent_venv, backend, sandbox):
    sandbox.script("pkgx/__init__.py", "")
    sandbox.script("pkgx/mod.py", failing_source("boom-module"))
    env = sandbox.env(backend.url)
    proc = run(agent_venv.python, ["-m", "pkgx.mod"], env, cwd=sandbox.work)
    assert proc.returncode == 1
    [first] = wait_error(backend, "boom-module")
    run(agent_venv.python, ["-m", "pkgx.mod"], env, cwd=sandbox.work)
    second = wait_error(backend, "boom-module", count=2)[1]
    assert re.fullmatch(r"[0-9a-f]{12}", first["script_id"])
    assert first["script_id"] == second["script_id"]  # stable across runs
    assert first["event_id"] != second["event_id"]


def test_dash_m_error_importing_the_package(py, agent_venv, backend, sandbox):
    """Before 3.10 nothing tells which module ``-m`` runs while it imports the module's package."""
    sandbox.script("pkgy/__init__.py", "raise ValueError('boom-package-init')\n")
    sandbox.script("pkgy/mod.py", "")
    proc = run(agent_venv.python, ["-m", "pkgy.mod"], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1 and b"boom-package-init" in proc.stderr
    [beacon] = wait_error(backend, "boom-package-init")
    assert beacon["script_name"] == ("-m" if py.minor < 10 else "-m pkgy.mod")


def test_dash_c(agent_venv, backend, sandbox):
    proc = run(agent_venv.python, ["-c", "raise ValueError('boom-c')"], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1
    [beacon] = wait_error(backend, "boom-c")
    assert re.fullmatch(r"[0-9a-f]{12}", beacon["script_id"])
    assert beacon["error_sig"].startswith("ValueError: boom-c")


def test_a_script_from_stdin_is_named_stdin(agent_venv, backend, sandbox):
    source = failing_source("boom-stdin").encode()
    proc = run(agent_venv.python, ["-"], sandbox.env(backend.url), cwd=sandbox.work, input=source)
    assert proc.returncode == 1
    [beacon] = wait_error(backend, "boom-stdin")
    assert beacon["script_name"] == "<stdin>"


def test_a_script_that_removed_itself_keeps_its_name(agent_venv, backend, sandbox):
    script = sandbox.script("cleanup.py", "import os\nos.remove(__file__)\nraise ValueError('boom-gone')\n")
    assert run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work).returncode == 1
    [beacon] = wait_error(backend, "boom-gone")
    assert beacon["script_name"] == "cleanup.py"


def test_subprocess_child(agent_venv, backend, sandbox):
    sandbox.script("child.py", failing_source("boom-subprocess-child"))
    parent = sandbox.script(
        "parent.py",
        (
            "import subprocess, sys\n"
            "r = subprocess.run([sys.executable, 'child.py'], timeout=120)\n"
            "print('child exit', r.returncode)\n"
        ),
    )
    proc = run(agent_venv.python, [parent], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 0 and proc.stdout == b"child exit 1\n"
    [beacon] = wait_error(backend, "boom-subprocess-child")
    assert beacon.get("script_name") == "child.py"


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_multiprocessing_child(agent_venv, backend, sandbox, method):
    script = sandbox.script(
        "mp.py",
        (
            "import multiprocessing as mp\n"
            "def work():\n"
            "    raise ValueError('boom-mp-child')\n"
            "if __name__ == '__main__':\n"
            "    p = mp.get_context(%r).Process(target=work)\n"
            "    p.start()\n"
            "    p.join(120)\n"
            "    print('child exitcode', p.exitcode)\n" % method
        ),
    )
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 0 and proc.stdout == b"child exitcode 1\n"
    assert b"ValueError: boom-mp-child" in proc.stderr
    assert b"corp_error_agent" not in proc.stderr  # no frame of ours in the child's traceback
    [beacon] = wait_error(backend, "boom-mp-child")
    assert beacon["error_sig"].startswith("ValueError: boom-mp-child")


def test_multiprocessing_child_that_handles_its_error_is_not_reported(agent_venv, backend, sandbox):
    script = sandbox.script(
        "mp_handled.py",
        (
            "import multiprocessing as mp, sys, traceback\n"
            "def work():\n"
            "    try:\n"
            "        raise ValueError('handled-in-child')\n"
            "    except ValueError:\n"
            "        traceback.print_exc()\n"
            "    sys.exit(3)\n"
            "if __name__ == '__main__':\n"
            "    p = mp.get_context('spawn').Process(target=work)\n"
            "    p.start()\n"
            "    p.join(120)\n"
            "    print('child exitcode', p.exitcode)\n"
        ),
    )
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.stdout == b"child exitcode 3\n" and b"ValueError: handled-in-child" in proc.stderr
    assert backend.settle() == [] and sandbox.spool() == []


def test_multiprocessing_child_failures_take_no_part_in_success_tracking(agent_venv, backend, sandbox):
    # A forked child inherits the parent's idea of "this script"; its failure must not become a
    # failure of the parent script, whose next clean exit would then report a fix that never was.
    script = sandbox.script(
        "mp_twice.py",
        (
            "import multiprocessing as mp\n"
            "def work():\n"
            "    raise ValueError('boom-mp-tracking')\n"
            "if __name__ == '__main__':\n"
            "    p = mp.get_context('fork').Process(target=work)\n"
            "    p.start()\n"
            "    p.join(120)\n"
        ),
    )
    for _ in range(2):
        assert run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work).returncode == 0
    assert len(wait_error(backend, "boom-mp-tracking", count=2)) == 2
    backend.settle()
    assert success_beacons(backend) == []
    pending = sandbox.cache / "pending"
    assert not pending.exists() or list(pending.iterdir()) == []


def test_print_exc_called_from_c_is_left_alone(agent_venv, backend, sandbox):
    # With multiprocessing imported the agent wraps traceback.print_exc; called with no Python
    # frame above it (as an atexit callback), it must behave as the original.
    script = sandbox.script(
        "exit_print.py", ("import atexit, multiprocessing, traceback\natexit.register(traceback.print_exc)\n")
    )
    env = sandbox.env(backend.url)
    same_outcome(
        run(agent_venv.python, [script], env, cwd=sandbox.work),
        run(agent_venv.python, [script], dict(env, ERROR_AGENT_ENABLED="0"), cwd=sandbox.work),
    )

"""Hostile exceptions: the host behaves exactly as with the agent disabled, and a bounded beacon still
arrives — at the recording backend, and stored by the real server."""

from __future__ import annotations

import json

import pytest

from e2e.server_proc import ServerProcess
from support import run

HOSTILE = {
    "str-raises": (
        "class Hostile(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no str for you')\n"
        "raise Hostile('boom-hostile-str')\n"
    ),
    "str-and-repr-raise": (
        "class Hostile(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no str')\n"
        "    def __repr__(self):\n"
        "        raise RuntimeError('no repr')\n"
        "raise Hostile()\n"
    ),
    "str-returns-non-str": ("class Hostile(Exception):\n    def __str__(self):\n        return 42\nraise Hostile()\n"),
    "ten-mb-message": "raise ValueError('boom-huge ' + 'x' * (10 * 1024 * 1024))\n",
    "ten-mb-one-word-per-line": "raise ValueError('boom-lines\\n' + 'ab 12 /x/y\\n' * (1024 * 1024))\n",
    "bytes-message": "raise ValueError(b'boom-bytes \\xff\\xfe\\x00\\x80 binary')\n",
    "surrogates-and-controls": "raise ValueError('boom-surrogate \\udcff\\udc80 \\x00\\x1b[2J \\u202e end')\n",
    "recursion": ("import sys\nsys.setrecursionlimit(1000)\ndef down(n):\n    return down(n + 1)\ndown(0)\n"),
    "excepthook-raises": (
        "import sys\n"
        "previous = sys.excepthook\n"
        "def hook(*args):\n"
        "    previous(*args)\n"
        "    raise RuntimeError('the user hook broke too')\n"
        "sys.excepthook = hook\n"
        "raise ValueError('boom-userhook')\n"
    ),
    "excepthook-replaced-and-raises": (
        "import sys\n"
        "def hook(*args):\n"
        "    raise RuntimeError('the user hook broke')\n"
        "sys.excepthook = hook\n"
        "raise ValueError('boom-replaced-hook')\n"
    ),
    "chained-cycle": (
        "a = ValueError('boom-cycle-a')\nb = KeyError('b')\na.__context__ = b\nb.__context__ = a\nraise a\n"
    ),
}
# The user's hook replaced the agent's and never calls it: nothing can be reported.
NO_BEACON = {"excepthook-replaced-and-raises"}


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("server") / "errors.db")
    yield server
    server.stop()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_exception(case, venv311, sandbox, backend):
    script = sandbox.script("hostile.py", HOSTILE[case])
    env = sandbox.env(backend.url)
    base = run(venv311.python, [script], dict(env, ERROR_AGENT_ENABLED="0"), cwd=sandbox.work)
    proc = run(venv311.python, [script], env, cwd=sandbox.work)
    assert (proc.returncode, proc.stdout, proc.stderr) == (base.returncode, base.stdout, base.stderr), (
        proc.stderr[-3000:],
        base.stderr[-3000:],
    )
    requests = backend.settle()
    beacons = [r.json for r in requests if r.path == "/beacon"]
    if case in NO_BEACON:
        assert beacons == []
        return
    [beacon] = beacons
    assert 0 < len(beacon["trace"]) <= 25_000
    assert 0 < len(beacon["error_sig"]) <= 400
    for request in requests:  # what went over the wire is valid UTF-8 JSON
        json.loads(request.body.decode("utf-8"))


@pytest.mark.parametrize("case", sorted(set(HOSTILE) - NO_BEACON))
def test_hostile_exception_is_stored_by_the_real_server(case, venv311, sandbox, real_server):
    """The real server takes the beacon (no 4xx that would drop it): it is in an error group."""
    script = sandbox.script("hostile_%s.py" % case.replace("-", "_"), HOSTILE[case])
    proc = run(venv311.python, [script], sandbox.env(real_server.url), cwd=sandbox.work)
    assert proc.returncode == 1
    status = run(
        venv311.python, ["-m", "corp_error_agent", "status", "--json"], sandbox.env(real_server.url), cwd=sandbox.work
    )
    spool = json.loads(status.stdout)["spool"]
    assert spool["dropped"] == {} and spool["count"] == 0, spool

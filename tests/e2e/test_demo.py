"""`corp-error-server demo --quick`: the whole loop offline, ending with the command that fixes it,
without touching the user's own agent configuration or spool, and leaving nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import support
from support import ROOT, tree

FIX = '/bin/python -m pip install "tinylib==1.0"'  # (the pip of the demo's failing venv)
TIMEOUT = support.PROC_TIMEOUT * 4


def _user(sandbox):
    """A user with their own agent configuration (another backend, hints off) and an empty TMPDIR."""
    config = sandbox.config_home / "corp_error_agent" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"backend_url": support.closed_port_url(), "hints": False}))
    tmp = sandbox.tmp / "tmpdir"
    tmp.mkdir()
    env = sandbox.env(
        support.closed_port_url(),
        cache_dir=False,
        extra={"TMPDIR": str(tmp), "ERROR_AGENT_HINT": "0", "ERROR_AGENT_CACHE_DIR": str(sandbox.cache)},
    )
    return env, tmp


def _demo(cmd, env, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd],
        env=env,
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, "demo failed (%d):\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_demo_quick(sandbox):
    env, tmp = _user(sandbox)
    before = tree(sandbox.tmp)
    env["PYTHONPATH"] = str(ROOT)
    proc = _demo([sys.executable, "-m", "corp_error_server", "demo", "--quick"], env, sandbox.work)
    out = proc.stdout
    assert FIX in out
    # the story, in order: failure, success elsewhere, the hint, the fix applied
    steps = [
        out.index(s)
        for s in (
            "AttributeError: module 'tinylib' has no attribute 'frobnicate'",
            "frobnicated the quarterly report",
            "[corp-error-agent] tinylib 2.0 -> 1.0",
            FIX,
            "Exit status 0: fixed.",
        )
    ]
    assert steps == sorted(steps), out
    assert "1 failing run(s), 1 succeeding run(s)" in out
    assert "suggest-ahead" not in proc.stderr  # its thread stopped with the server, not after the removal
    # nothing of the user's was read or written, nothing was left behind
    assert tree(sandbox.tmp) == before
    assert not sandbox.cache.exists()
    assert list(tmp.iterdir()) == []


def test_demo_keep(sandbox):
    env, tmp = _user(sandbox)
    env["PYTHONPATH"] = str(ROOT)
    proc = _demo([sys.executable, "-m", "corp_error_server", "demo", "--quick", "--keep"], env, sandbox.work)
    assert FIX in proc.stdout
    kept = [p for p in tmp.iterdir()]
    assert len(kept) == 1 and str(kept[0]) in proc.stdout
    for name in ("errors.db", "env-new", "env-old", "server.log", "agent-cache"):
        assert (kept[0] / name).exists(), name


def test_demo_from_installed_wheel(agent_venv, sandbox):
    """The newcomer's path: the console script of the installed wheel, on every interpreter."""
    env, tmp = _user(sandbox)
    script = Path(agent_venv.bin) / "corp-error-server"
    proc = _demo([script, "demo", "--quick"], env, sandbox.work)
    assert FIX in proc.stdout
    assert list(tmp.iterdir()) == []


def test_demo_with_no_such_interpreter_is_one_line_and_exit_2(sandbox):
    env, tmp = _user(sandbox)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "corp_error_server", "demo", "--python", str(tmp / "no-such-python")],
        env=env,
        cwd=str(sandbox.work),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "corp-error-server demo: error: --python %s: no such interpreter" % (tmp / "no-such-python")
    ]
    assert list(tmp.iterdir()) == []  # nothing made before the check

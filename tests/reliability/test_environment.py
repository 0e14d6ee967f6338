"""The disk and the environment: unwritable or missing HOME and cache dir, a full spool, a non-UTF-8
locale, sys.stderr = None, -S, -I, PYTHONSAFEPATH, a read-only script directory.

The tests run as whatever user CI uses (often root, for whom permission bits do not stop writes), so
"cannot be written" is made with a path that goes through a regular file: no user can create that.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from support import closed_port_url, error_beacons, failing_source, run, tree, wait_error


def _pair(venv, sandbox, args, env, cwd):
    """(baseline with the agent disabled, run with the agent) of the same command."""
    base = run(venv.python, args, dict(env, ERROR_AGENT_ENABLED="0"), cwd=cwd)
    proc = run(venv.python, args, env, cwd=cwd)
    return base, proc


def _same(base, proc):
    assert (proc.returncode, proc.stdout, proc.stderr) == (base.returncode, base.stdout, base.stderr), (
        proc.stderr.decode("utf-8", "replace")[-2000:],
        base.stderr.decode("utf-8", "replace")[-2000:],
    )


def _blocked(sandbox, name):
    """A directory path nobody can create: its parent is a regular file."""
    blocker = sandbox.tmp / ("%s-is-a-file" % name)
    blocker.write_text("not a directory\n")
    return blocker / "sub"


def test_unwritable_cache_dir_falls_back_to_temp_and_delivers(venv311, sandbox, backend):
    tmpdir = sandbox.tmp / "tmpdir"
    tmpdir.mkdir()
    env = sandbox.env(backend.url, {"ERROR_AGENT_CACHE_DIR": str(_blocked(sandbox, "cache")), "TMPDIR": str(tmpdir)})
    script = sandbox.script("app.py", failing_source("boom-nocache"))
    base, proc = _pair(venv311, sandbox, [script], env, sandbox.work)
    _same(base, proc)
    wait_error(backend, "boom-nocache")
    assert list(tmpdir.glob("corp_error_agent-*/spool")), tree(tmpdir)


@pytest.mark.parametrize("home", ["missing", "file", "readonly"])
def test_home_missing_or_unwritable(home, venv311, sandbox, backend):
    """No HOME, HOME that is a file, a read-only HOME (no XDG dirs): the host is unchanged,
    the beacon arrives, and nothing is written into the working directory."""
    tmpdir = sandbox.tmp / "tmpdir"
    tmpdir.mkdir()
    env = sandbox.env(backend.url, {"TMPDIR": str(tmpdir)}, cache_dir=False)
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        env.pop(name)
    if home == "missing":
        env.pop("HOME")
        env["XDG_CACHE_HOME"] = str(sandbox.cache_home)  # keep the real user's home out of it
        env["XDG_CONFIG_HOME"] = str(sandbox.config_home)
    elif home == "file":
        env["HOME"] = str(_blocked(sandbox, "home").parent)
    elif home == "readonly":
        ro = sandbox.tmp / "ro-home"
        ro.mkdir()
        ro.chmod(0o555)
        env["HOME"] = str(ro) if os.geteuid() != 0 else str(_blocked(sandbox, "ro-home"))
    script = sandbox.script("app.py", failing_source("boom-home-%s" % home))
    work_before = tree(sandbox.work)
    base, proc = _pair(venv311, sandbox, [script], env, sandbox.work)
    _same(base, proc)
    wait_error(backend, "boom-home-%s" % home)
    assert tree(sandbox.work) == work_before, "the agent wrote into the working directory"


def _fake_entries(spool, template, count, start_ts, prefix):
    spool.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        entry = json.loads(json.dumps(template))
        entry["beacon"]["event_id"] = "%s%030x" % (prefix, i)
        entry["beacon"]["ts"] = start_ts + i
        name = "%020d-%s.json" % (int(entry["beacon"]["ts"] * 1e6), entry["beacon"]["event_id"])
        (spool / name).write_text(json.dumps(entry))
        ids.append(entry["beacon"]["event_id"])
    return ids


def _status(venv, sandbox):
    proc = run(
        venv.python, ["-m", "corp_error_agent", "status", "--json"], sandbox.env(closed_port_url()), cwd=sandbox.work
    )
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr  # 1: the backend is down
    return json.loads(proc.stdout)["spool"]


def test_full_spool_keeps_the_bound_drops_the_oldest_and_counts(venv311, sandbox):
    script = sandbox.script("app.py", failing_source("boom-full"))
    env = sandbox.env(closed_port_url())
    assert run(venv311.python, [script], env, cwd=sandbox.work).returncode == 1
    [first] = sandbox.spool()
    template = json.loads(first.read_text())
    now = template["beacon"]["ts"]
    spool = sandbox.cache / "spool"
    expired = _fake_entries(spool, template, 3, now - 9 * 86400, "ee")
    kept = _fake_entries(spool, template, 520, now - 3600, "aa")
    assert run(venv311.python, [script], env, cwd=sandbox.work).returncode == 1
    entries = sandbox.spool()
    ids = [json.loads(p.read_text())["beacon"]["event_id"] for p in entries]
    assert len(entries) == 500
    newest = [i for i in ids if not i.startswith(("aa", "ee"))]
    assert len(newest) == 2 and template["beacon"]["event_id"] in newest  # both real failures kept
    assert not set(expired) & set(ids)
    assert ids[:498] == kept[-498:]  # the oldest were dropped
    summary = _status(venv311, sandbox)
    assert summary["count"] == 500
    assert sum(summary["dropped"].values()) == 3 + 520 - 498, summary
    lines = (sandbox.cache / "dropped.log").read_text().splitlines()
    assert {line.split()[2] for line in lines} == set(expired) | set(kept[:22])


def test_expired_entries_are_dropped_and_counted(venv311, sandbox):
    script = sandbox.script("app.py", failing_source("boom-expire"))
    env = sandbox.env(closed_port_url())
    run(venv311.python, [script], env, cwd=sandbox.work)
    template = json.loads(sandbox.spool()[0].read_text())
    expired = _fake_entries(sandbox.cache / "spool", template, 4, template["beacon"]["ts"] - 8 * 86400, "ee")
    run(venv311.python, [script], env, cwd=sandbox.work)
    assert len(sandbox.spool()) == 2
    assert _status(venv311, sandbox)["dropped"] == {"expired": 4}
    assert {line.split()[2] for line in (sandbox.cache / "dropped.log").read_text().splitlines()} == set(expired)


def test_non_utf8_locale(venv311, sandbox, backend):
    script = sandbox.script("app.py", "raise ValueError('na\u00efve \u2603 \u65e5\u672c boom-locale')\n")
    env = sandbox.env(backend.url, {"LANG": "C", "LC_ALL": "C", "PYTHONIOENCODING": "latin-1"})
    base, proc = _pair(venv311, sandbox, [script], env, sandbox.work)
    _same(base, proc)
    [beacon] = wait_error(backend, "boom-locale")
    assert "na\u00efve \u2603 \u65e5\u672c boom-locale" in beacon["trace"]


def test_stderr_set_to_none(venv311, sandbox, backend):
    script = sandbox.script("app.py", "import sys\nsys.stderr = None\nraise ValueError('boom-nostderr')\n")
    base, proc = _pair(venv311, sandbox, [script], sandbox.env(backend.url), sandbox.work)
    _same(base, proc)
    wait_error(backend, "boom-nostderr")


def test_no_site_means_no_agent(venv311, sandbox, backend):
    script = sandbox.script("app.py", failing_source("boom-nosite"))
    base, proc = _pair(venv311, sandbox, ["-S", script], sandbox.env(backend.url), sandbox.work)
    _same(base, proc)
    assert backend.settle() == []
    assert not (sandbox.cache / "spool").exists() or sandbox.spool() == []


@pytest.mark.parametrize(
    "flags, extra",
    [(["-I"], {}), ([], {"PYTHONSAFEPATH": "1"}), (["-E", "-s"], {})],
    ids=["isolated", "safepath", "E-s"],
)
def test_isolated_and_safe_path(flags, extra, venv311, sandbox, backend):
    script = sandbox.script("app.py", failing_source("boom-flags"))
    base, proc = _pair(venv311, sandbox, flags + [script], sandbox.env(backend.url, extra), sandbox.work)
    _same(base, proc)
    wait_error(backend, "boom-flags")


def test_script_in_read_only_directory(venv311, sandbox, backend):
    ro = sandbox.tmp / "readonly"
    script = sandbox.script("app.py", "import helper\nhelper.fail()\n", directory=ro)
    (ro / "helper.py").write_text("def fail():\n    raise OSError('boom-readonly')\n")
    ro.chmod(0o555)
    try:
        before = tree(ro)
        base, proc = _pair(venv311, sandbox, [script], sandbox.env(backend.url), ro)
        _same(base, proc)
        wait_error(backend, "boom-readonly")
        assert tree(ro) == before
    finally:
        ro.chmod(stat.S_IRWXU)
    assert len(error_beacons(backend)) == 1

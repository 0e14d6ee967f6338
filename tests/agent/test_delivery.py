"""Never lose a beacon: the spool, its delivery exactly once, and success tracking."""
from __future__ import annotations

import json

from support import closed_port_url, error_beacons, failing_source, run, success_beacons, wait_error


def _event_ids(backend):
    return [b.get("event_id") for b in backend.bodies("/beacon") if isinstance(b, dict)]


def _spool_down(venv, sandbox, message="boom-spooled"):
    """Fail once with the backend down: the beacon waits in <cache>/spool."""
    script = sandbox.script("app.py", failing_source(message))
    proc = run(venv.python, [script], sandbox.env(closed_port_url()), cwd=sandbox.work)
    assert proc.returncode == 1 and message.encode() in proc.stderr
    [entry] = sandbox.spool()
    data = json.loads(entry.read_text())
    event_id = data["beacon"]["event_id"] if "beacon" in data else data["event_id"]
    return event_id


def test_spool_flushed_exactly_once(agent_venv, backend, sandbox):
    event_id = _spool_down(agent_venv, sandbox)
    flush = run(agent_venv.python, ["-m", "corp_error_agent", "flush"], sandbox.env(backend.url), cwd=sandbox.work)
    assert flush.returncode == 0, flush.stderr
    [beacon] = wait_error(backend, "boom-spooled")
    assert beacon["event_id"] == event_id
    assert sandbox.spool() == []
    again = run(agent_venv.python, ["-m", "corp_error_agent", "flush"], sandbox.env(backend.url), cwd=sandbox.work)
    assert again.returncode == 0
    backend.settle()
    assert _event_ids(backend).count(event_id) == 1


def test_spool_delivered_by_next_event(agent_venv, backend, sandbox):
    """The backend that was down is replaced by one that works (new URL): the next error delivers
    the old beacon too, oldest first, and only once."""
    event_id = _spool_down(agent_venv, sandbox)
    script = sandbox.script("second.py", failing_source("boom-next"))
    run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    wait_error(backend, "boom-next")
    wait_error(backend, "boom-spooled")
    run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    wait_error(backend, "boom-next", count=2)
    backend.settle()
    assert _event_ids(backend).count(event_id) == 1
    assert sandbox.spool() == []


def test_success_after_failure_reported_once(agent_venv, backend, sandbox):
    flag = sandbox.work / "FAIL"
    script = sandbox.script("flaky.py", (
        "import os\n"
        "if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'FAIL')):\n"
        "    raise RuntimeError('boom-until-fixed')\n"
        "print('ok')\n"))
    env = sandbox.env(backend.url)
    flag.write_text("")
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    [error] = wait_error(backend, "boom-until-fixed")
    flag.unlink()
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).stdout == b"ok\n"
    [success] = [r.json for r in backend.wait_for("/beacon", where=lambda b: b.get("kind") == "success")]
    assert success["script_id"] == error["script_id"]
    assert success["prev_env_hash"] == error["env_hash"]
    assert success["prev_error_sig"] == error["error_sig"]
    assert 0 < len(success["env_hash"]) <= 12
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).stdout == b"ok\n"
    backend.settle()
    assert len(success_beacons(backend)) == 1 and len(error_beacons(backend)) == 1


def test_clean_run_sends_nothing(agent_venv, backend, sandbox):
    script = sandbox.script("fine.py", "print('fine')\n")
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.stdout == b"fine\n" and proc.stderr == b""
    assert backend.settle() == []
    assert sandbox.spool() == []

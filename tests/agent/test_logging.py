"""Logged errors and capture(): handled reports, on every CPython 3.8-3.13 present.

A record at ERROR or above that carries exception info is one report with ``handled: true``; nothing
else logged is; an exception logged and then raised uncaught is one report; nothing the agent's
own threads log is reported; handled errors print no hint. Real interpreters in venvs with the
agent installed, against the recording backend.
"""

from __future__ import annotations

from e2e.server_proc import ServerProcess
from support import Reply, error_beacons, run, same_outcome, wait_error

HINT = Reply(200, {"match": True, "confidence": 0.95, "hint": "handled-hint-text", "solution": 'pip install "a==1"'})

SERVICE = """
import logging
logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
log = logging.getLogger("svc")


def handle_request():
    raise ValueError("boom-logged")


try:
    handle_request()
except ValueError:
    log.exception("request failed")
log.error("an error without an exception")
log.warning("a warning with one", exc_info=True)
print("carried on")
"""


def test_logged_exception_is_one_handled_report(agent_venv, plain_venv, backend, sandbox):
    backend.set_reply("/suggest", HINT)
    script = sandbox.script("service.py", SERVICE)
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    # handled: no hint in the service's output, which is the same as without the agent
    same_outcome(proc, run(plain_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work))
    assert b"carried on" in proc.stdout and b"handled-hint-text" not in proc.stderr
    [beacon] = wait_error(backend, "boom-logged")
    assert beacon["handled"] is True
    # within the published Django server's columns (PROTOCOL-NOTES); it ignores `handled`
    assert len(beacon["env_hash"]) <= 12 and len(beacon["script_id"]) <= 12 and beacon["kind"] == "error"
    assert beacon["error_sig"] == "ValueError: boom-logged @ __main__.handle_request < __main__.<module>"
    assert "in handle_request" in beacon["trace"]
    backend.settle()
    assert len(error_beacons(backend)) == 1  # the error without exception info and the warning are not reports
    assert not backend.of("/suggest")  # nobody waits for a hint


def test_logged_then_raised_is_one_report_with_its_hint(agent_venv, backend, sandbox):
    backend.set_reply("/suggest", HINT)
    script = sandbox.script(
        "job.py",
        (
            "import logging\n"
            "def step():\n"
            "    raise KeyError('boom-twice')\n"
            "try:\n"
            "    step()\n"
            "except KeyError:\n"
            "    logging.getLogger('job').exception('step failed')\n"
            "    logging.getLogger('outer').error('again', exc_info=True)\n"
            "    raise\n"
        ),
    )
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1
    assert b"handled-hint-text" in proc.stderr  # it ended the program: the user gets the hint
    wait_error(backend, "boom-twice")
    backend.wait_for("/suggest")
    backend.settle()
    assert len(error_beacons(backend)) == 1


def test_logging_off(agent_venv, backend, sandbox):
    script = sandbox.script("service.py", SERVICE)
    proc = run(agent_venv.python, [script], sandbox.env(backend.url, {"ERROR_AGENT_LOGGING": "0"}), cwd=sandbox.work)
    assert b"carried on" in proc.stdout
    assert not backend.settle()


def test_nothing_logged_by_the_agents_own_threads(agent_venv, backend, sandbox):
    """A host whose audit hook logs every connection made: the agent's deliveries make them too."""
    script = sandbox.script(
        "audited.py",
        (
            "import logging, sys, threading\n"
            "def audit(event, args):\n"
            "    if event == 'socket.connect':\n"
            "        try:\n"
            "            raise RuntimeError('audit-in-' + threading.current_thread().name)\n"
            "        except RuntimeError:\n"
            "            logging.getLogger('audit').exception('audited')\n"
            "sys.addaudithook(audit)\n"
            "raise SystemError('boom-audited')\n"
        ),
    )
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert b"audit-in-corp_error_agent" in proc.stderr  # the handler did log in the agent's threads
    wait_error(backend, "boom-audited")
    backend.wait_for("/suggest")
    backend.settle()
    assert [b["error_sig"].split(":")[0] for b in error_beacons(backend)] == ["SystemError"]


CAPTURE = """
import corp_error_agent
print("outside:", corp_error_agent.capture())
def charge():
    raise ConnectionError("boom-captured")
try:
    charge()
except ConnectionError:
    print("event:", corp_error_agent.capture())
    print("again:", corp_error_agent.capture())
"""


def test_capture_reports_the_current_exception_as_handled(agent_venv, backend, sandbox):
    backend.set_reply("/suggest", HINT)
    script = sandbox.script("pay.py", CAPTURE)
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(": ", 1) for line in proc.stdout.decode().splitlines())
    assert out["outside"] == "None" and out["again"] == "None"
    [beacon] = wait_error(backend, "boom-captured")
    assert beacon["handled"] is True and beacon["event_id"] == out["event"]
    assert "in charge" in beacon["trace"]
    assert b"handled-hint-text" not in proc.stderr
    backend.settle()
    assert len(error_beacons(backend)) == 1


def test_capture_is_a_no_op_when_disabled(agent_venv, backend, sandbox):
    script = sandbox.script("pay.py", CAPTURE)
    proc = run(agent_venv.python, [script], sandbox.env(backend.url, {"ERROR_AGENT_ENABLED": "0"}), cwd=sandbox.work)
    assert proc.returncode == 0, proc.stderr
    assert b"event: None" in proc.stdout
    assert not backend.settle()


def test_the_real_server_stores_a_handled_report(agent_venv, sandbox, tmp_path):
    """The beacon's one new field, `handled`, is a JSON boolean within the published server's rules
    (its other fields and sizes unchanged; PROTOCOL-NOTES: it ignores fields it does not know); this
    server stores it and counts it in /api/errors."""
    server = ServerProcess(tmp_path / "errors.db")
    try:
        script = sandbox.script("service.py", SERVICE)
        proc = run(agent_venv.python, [script], sandbox.env(server.url), cwd=sandbox.work)
        assert proc.returncode == 0, proc.stderr
        group = server.wait_group("boom-logged", lambda g: g["count"] >= 1)
        assert group["handled"] == 1 and group["count"] == 1
    finally:
        server.stop()


def test_importing_logging_patches_it_without_loading_the_agent(agent_venv, sandbox):
    code = (
        "import sys, logging; agent = sys.modules['corp_error_agent'];"
        "print(agent._process['loaded'], logging.Logger.callHandlers.__globals__['__name__']);"
        "print(' '.join(sorted(sys.modules)))"
    )
    env = sandbox.env("http://127.0.0.1:9")
    env.pop("COVERAGE_PROCESS_START", None)  # coverage.py imports more itself
    first, modules = run(agent_venv.python, ["-c", code], env).stdout.decode().splitlines()
    off = dict(env, ERROR_AGENT_ENABLED="0")  # the .pth imports the module, which installs nothing
    first_off, modules_off = run(agent_venv.python, ["-c", code], off).stdout.decode().splitlines()
    assert first == "False corp_error_agent"  # patched by the agent's start-up part, the agent proper not loaded
    assert first_off == "False logging"
    assert modules == modules_off  # and nothing more imported

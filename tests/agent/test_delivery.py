"""Never lose a beacon: the spool, its delivery exactly once, and success tracking."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from support import (
    WAIT_TIMEOUT,
    Reply,
    closed_port_url,
    error_beacons,
    failing_source,
    run,
    success_beacons,
    wait_error,
)


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
    script = sandbox.script(
        "flaky.py",
        (
            "import os\n"
            "if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'FAIL')):\n"
            "    raise RuntimeError('boom-until-fixed')\n"
            "print('ok')\n"
        ),
    )
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


def test_an_error_shown_by_a_replaced_excepthook_is_no_clean_run(agent_venv, backend, sandbox):
    """After a failure, a run whose error goes to the user's own sys.excepthook (not the agent's)
    exits 1: no success is reported; the next clean run is the fix."""
    mode = sandbox.work / "MODE"
    script = sandbox.script(
        "flaky.py",
        (
            "import os, sys\n"
            "mode = open('MODE').read() if os.path.exists('MODE') else ''\n"
            "if mode == 'own-hook':\n"
            "    sys.excepthook = lambda *exc: sys.stderr.write('own hook\\n')\n"
            "if mode:\n"
            "    raise RuntimeError('boom-own-hook')\n"
        ),
    )
    env = sandbox.env(backend.url)
    mode.write_text("fail")
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    [error] = wait_error(backend, "boom-own-hook")
    mode.write_text("own-hook")
    own = run(agent_venv.python, [script], env, cwd=sandbox.work)
    assert own.returncode == 1 and own.stderr == b"own hook\n"
    backend.settle()
    assert success_beacons(backend) == []
    mode.unlink()
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 0
    [success] = [r.json for r in backend.wait_for("/beacon", where=lambda b: b.get("kind") == "success")]
    assert success["prev_error_sig"] == error["error_sig"]


def test_a_run_that_exits_with_a_failing_status_is_no_clean_run(agent_venv, backend, sandbox):
    """After a failure, a run that ends with sys.exit(4) is not the fix: no success is reported;
    the next run that exits 0 is."""
    mode = sandbox.work / "MODE"
    script = sandbox.script(
        "job.py",
        (
            "import os, sys\n"
            "mode = open('MODE').read() if os.path.exists('MODE') else ''\n"
            "if mode == 'fail':\n"
            "    raise RuntimeError('boom-then-exit-4')\n"
            "if mode == 'exit':\n"
            "    sys.exit(4)\n"
        ),
    )
    env = sandbox.env(backend.url)
    mode.write_text("fail")
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    [error] = wait_error(backend, "boom-then-exit-4")
    mode.write_text("exit")
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 4
    backend.settle()
    assert success_beacons(backend) == []
    mode.unlink()
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 0
    [success] = [r.json for r in backend.wait_for("/beacon", where=lambda b: b.get("kind") == "success")]
    assert success["prev_error_sig"] == error["error_sig"]


def test_clean_run_sends_nothing(agent_venv, backend, sandbox):
    script = sandbox.script("fine.py", "print('fine')\n")
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.stdout == b"fine\n" and proc.stderr == b""
    assert backend.settle() == []
    assert sandbox.spool() == []


class SilentBackend:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers; it counts them."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sock.settimeout(0.05)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.peers = []
        self.held = []
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.cond:
                self.held.append(conn)
                self.peers.append(peer)
                self.cond.notify_all()
            self._took(conn)

    def _took(self, conn):
        """What happens to an accepted connection: here, nothing (it is held open, unanswered)."""

    def connections(self) -> int:
        """Connections made before this call, by anyone but this method (the accept queue is FIFO)."""
        with socket.create_connection(self.sock.getsockname(), timeout=WAIT_TIMEOUT) as probe:
            me = probe.getsockname()
            with self.cond:
                assert self.cond.wait_for(lambda: me in self.peers, WAIT_TIMEOUT)
                self.peers.remove(me)
                return len(self.peers)

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_backend():
    server = SilentBackend()
    yield server
    server.stop()


def test_a_backend_that_never_answers_is_waited_for_once(agent_venv, silent_backend, sandbox):
    """The process leaves at the wait bound, before its requests time out on their own: that wait
    trips the breaker, so the next failing script neither connects nor waits."""
    env = sandbox.env(silent_backend.url, {"ERROR_AGENT_SUGGEST_TIMEOUT": "1"})
    script = sandbox.script("app.py", failing_source("boom-silent"))
    first = run(agent_venv.python, [script], env, cwd=sandbox.work)
    assert first.returncode == 1 and b"boom-silent" in first.stderr
    assert silent_backend.connections() >= 1
    [breaker] = sandbox.breakers()
    assert "no answer within the 1s wait" in json.loads(breaker.read_text())["reason"]
    before = silent_backend.connections()
    second = run(agent_venv.python, [script], env, cwd=sandbox.work)
    assert second.returncode == 1 and b"boom-silent" in second.stderr
    assert silent_backend.connections() == before  # not even tried
    # both reports kept for later (the first is still claimed by the process that ended mid-delivery)
    assert len(list((sandbox.cache / "spool").glob("*.json*"))) == 2


class TricklingBackend(SilentBackend):
    """Reads each request, then answers one byte of a never-ending header every 0.5 s: no single
    read ever waits long enough for the client's socket timeout."""

    def _took(self, conn):
        threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn):
        try:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100000:
                if self.stopping.wait(0.5):
                    return
                conn.sendall(bytes([byte]))
        except OSError:
            return


def test_a_clean_exit_does_not_wait_for_a_trickling_backend(py, agent_venv, sandbox):
    """The first clean run after a failure delivers its success report within a bounded wait, however
    slowly the backend answers: the run ends, the report stays spooled, the breaker opens."""
    flag = sandbox.work / "FAIL"
    script = sandbox.script(
        "flaky.py", "import os\nif os.path.exists('FAIL'):\n    raise RuntimeError('boom-trickle')\n"
    )
    flag.write_text("")
    assert run(agent_venv.python, [script], sandbox.env(closed_port_url()), cwd=sandbox.work).returncode == 1
    flag.unlink()
    server = TricklingBackend()
    try:
        env = sandbox.env(server.url, {"ERROR_AGENT_SUGGEST_TIMEOUT": "1"})
        clean = run(agent_venv.python, [script], env, cwd=sandbox.work, timeout=30)
        assert clean.returncode == 0 and clean.stderr == b""
        assert server.connections() >= 1
    finally:
        server.stop()
    kinds = [json.loads(p.read_text())["beacon"]["kind"] for p in (sandbox.cache / "spool").glob("*.json*")]
    assert sorted(kinds) == ["error", "success"]
    assert [b for b in sandbox.breakers() if "no answer within" in b.read_text()]


def test_a_delivery_that_succeeds_closes_the_breaker(agent_venv, backend, sandbox):
    env = sandbox.env(backend.url)
    script = sandbox.script("app.py", failing_source("boom-breaker"))
    backend.set_fault("500")
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    assert sandbox.breakers() and len(sandbox.spool()) == 1
    backend.set_fault(None)
    backend.set_reply(
        "/suggest",
        Reply(200, {"match": True, "confidence": 0.9, "hint": "hint-after-flush", "solution": "pip install \"x==1\""}),
    )
    flush = run(agent_venv.python, ["-m", "corp_error_agent", "flush", "--json"], env, cwd=sandbox.work)
    assert flush.returncode == 0 and json.loads(flush.stdout)["delivered"] == 1
    assert sandbox.breakers() == []
    status = run(agent_venv.python, ["-m", "corp_error_agent", "status", "--json"], env, cwd=sandbox.work)
    assert json.loads(status.stdout)["breaker_open"] is False
    again = run(agent_venv.python, [script], env, cwd=sandbox.work)
    assert b"hint-after-flush" in again.stderr  # the next error asks again


def test_compiled_code_cache_keeps_one_file_per_live_install(copy_venv, sandbox, tmp_path):
    """Each error of an install and version loads the agent from one compiled file in the cache dir;
    a new version's file replaces the old one, and files of installs long gone are removed."""
    env = sandbox.env(closed_port_url())
    script = sandbox.script("app.py", failing_source("boom-code-cache"))
    assert run(copy_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    [first] = sandbox.cache.glob("agent-*.code")
    month_ago = time.time() - 31 * 86400
    others = {
        name: sandbox.cache / name
        for name in (
            "agent-0123abcd-0.5.0-1-1.code",  # another install, compiled a month ago: gone
            "agent-0.5.0-cpython-311-1-1.code",  # named as before: gone
            "agent-4567cdef-0.5.0-1-1.code",
        )
    }  # another install, in use: kept
    for name, path in others.items():
        path.write_bytes(b"x")
        if "0123abcd" in name:
            os.utime(path, (month_ago, month_ago))
    agent_file = copy_venv.site_packages / "corp_error_agent.py"
    stat = agent_file.stat()
    os.utime(agent_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # upgraded in place
    assert run(copy_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    remaining = sorted(p.name for p in sandbox.cache.glob("agent-*"))
    [second] = [name for name in remaining if name not in others]
    assert second != first.name and second.split("-")[1] == first.name.split("-")[1]  # same install
    assert remaining == sorted([second, "agent-4567cdef-0.5.0-1-1.code"])


def test_beacons_name_the_host_unless_told_not_to(agent_venv, backend, sandbox, tmp_path):
    flag = sandbox.work / "FAIL"
    script = sandbox.script("flaky.py", "import os\nif os.path.exists('FAIL'):\n    raise RuntimeError('boom-host')\n")
    flag.write_text("")
    assert run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work).returncode == 1
    flag.unlink()
    assert run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work).returncode == 0
    backend.wait_for("/beacon", where=lambda b: b.get("kind") == "success")
    assert {b["kind"]: b.get("host") for b in backend.bodies("/beacon")} == {
        "error": socket.gethostname(),
        "success": socket.gethostname(),
    }

    quiet = sandbox.script("quiet.py", failing_source("boom-no-host"))
    run(agent_venv.python, [quiet], sandbox.env(backend.url, {"ERROR_AGENT_SEND_HOST": "0"}), cwd=sandbox.work)
    [beacon] = wait_error(backend, "boom-no-host")
    assert "host" not in beacon

    from e2e.server_proc import ServerProcess

    server = ServerProcess(tmp_path / "db.sqlite")  # the real server takes beacons with the field
    try:
        run(agent_venv.python, [quiet], sandbox.env(server.url), cwd=sandbox.work)
        server.wait_group("boom-no-host", lambda group: group["count"] == 1)
    finally:
        server.stop()


def _cli(venv, args, env):
    return run(venv.python, ["-m", "corp_error_agent"] + args, env)


def test_a_beacon_the_backend_refuses_is_dropped_and_counted(agent_venv, backend, sandbox):
    backend.set_reply("/beacon", Reply(400, {"error": "missing field"}))
    env = sandbox.env(backend.url)
    script = sandbox.script("app.py", failing_source("boom-refused"))
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    [refused] = backend.wait_for("/beacon")
    assert sandbox.spool() == []  # never retried: the backend will not take it
    [line] = (sandbox.cache / "dropped.log").read_text().splitlines()
    assert line.split()[1:] == ["rejected-400", refused.json["event_id"]]
    status = json.loads(_cli(agent_venv, ["status", "--json"], env).stdout)
    assert status["spool"]["dropped"] == {"rejected-400": 1}
    assert "; dropped: rejected-400 1" in _cli(agent_venv, ["status"], env).stdout.decode()


def test_flush_drops_a_torn_spool_entry(agent_venv, backend, sandbox):
    (sandbox.cache / "spool").mkdir(parents=True)
    torn = sandbox.cache / "spool" / ("00000000000000000001-%s.json" % ("c" * 32))
    torn.write_text('{"beacon": {"kind": "err')
    flush = _cli(agent_venv, ["flush", "--json"], sandbox.env(backend.url))
    assert flush.returncode == 0, flush.stderr
    assert json.loads(flush.stdout) == {"delivered": 0, "rejected": 1, "remaining": 0}
    assert sandbox.spool() == [] and backend.settle() == []


def test_an_unusable_cache_dir_falls_back_to_a_per_user_temp_dir(agent_venv, backend, sandbox):
    in_the_way = sandbox.tmp / "not-a-dir"
    in_the_way.write_text("")
    temp = sandbox.tmp / "tmp"
    temp.mkdir()
    env = sandbox.env(closed_port_url(), {"ERROR_AGENT_CACHE_DIR": str(in_the_way), "TMPDIR": str(temp)})
    script = sandbox.script("app.py", failing_source("boom-temp-dir"))
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    state_dir = temp / ("corp_error_agent-%d" % os.getuid())
    assert len(list((state_dir / "spool").glob("*.json"))) == 1
    flush = _cli(agent_venv, ["flush", "--json"], dict(env, ERROR_AGENT_URL=backend.url))
    assert json.loads(flush.stdout)["delivered"] == 1, flush.stderr
    wait_error(backend, "boom-temp-dir")


def test_with_success_always_clean_runs_wait_in_the_spool_for_the_next_contact(agent_venv, backend, sandbox):
    env = sandbox.env(backend.url, {"ERROR_AGENT_SUCCESS": "always"})
    clean = sandbox.script("fine.py", "print('fine')\n")
    assert run(agent_venv.python, [clean], env, cwd=sandbox.work).stdout == b"fine\n"
    assert backend.settle() == []  # routine successes travel in batches
    [entry] = sandbox.spool()
    success = json.loads(entry.read_text())["beacon"]
    assert success["kind"] == "success" and "prev_error_sig" not in success
    failing = sandbox.script("app.py", failing_source("boom-takes-the-batch"))
    assert run(agent_venv.python, [failing], env, cwd=sandbox.work).returncode == 1
    wait_error(backend, "boom-takes-the-batch")
    [delivered] = backend.wait_for("/beacon", where=lambda b: b.get("kind") == "success")
    assert delivered.json["event_id"] == success["event_id"]
    assert sandbox.spool() == []


def test_an_agent_disabled_in_the_config_file_reports_nothing_until_enabled(agent_venv, backend, sandbox):
    flag = sandbox.work / "FAIL"
    script = sandbox.script("flaky.py", "import os\nif os.path.exists('FAIL'):\n    raise RuntimeError('boom-off')\n")
    env = sandbox.env(backend.url)
    flag.write_text("")
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    [error] = wait_error(backend, "boom-off")
    assert _cli(agent_venv, ["configure", "--disable"], env).returncode == 0
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    flag.unlink()
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 0
    assert len(backend.settle()) == len(backend.of("/beacon")) + len(backend.of("/env")) + len(backend.of("/suggest"))
    assert [b["kind"] for b in backend.bodies("/beacon")] == ["error"]
    assert _cli(agent_venv, ["configure", "--enable"], env).returncode == 0
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 0
    [success] = [r.json for r in backend.wait_for("/beacon", where=lambda b: b.get("kind") == "success")]
    assert success["prev_error_sig"] == error["error_sig"]  # the failure waited while the agent was off


def test_scripts_of_one_file_name_wait_for_their_own_clean_runs(agent_venv, backend, sandbox):
    env = sandbox.env(backend.url)
    source = (
        "import os\nif os.path.exists(os.path.join(os.path.dirname(__file__), 'FAIL')):\n"
        "    raise RuntimeError('boom-in-' + os.path.basename(os.path.dirname(__file__)))\n"
    )
    scripts = {where: sandbox.script("app.py", source, directory=sandbox.work / where) for where in ("one", "two")}
    forgotten = sandbox.cache / "pending" / "app.py" / "file_somewhere_app.py.json"
    forgotten.parent.mkdir(parents=True)
    forgotten.write_text('{"ts": 0, "env_hash": "0", "error_sig": "old"}')
    eight_days_ago = time.time() - 8 * 86400
    os.utime(forgotten, (eight_days_ago, eight_days_ago))
    for where, script in scripts.items():
        (script.parent / "FAIL").write_text("")
        assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
        wait_error(backend, "boom-in-" + where)
    assert not forgotten.exists()  # a failure never followed by a clean run is forgotten after a week
    for where, script in scripts.items():
        (script.parent / "FAIL").unlink()
        assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 0
        backend.wait_for(
            "/beacon",
            where=lambda b, sig="boom-in-" + where: b.get("kind") == "success" and sig in b.get("prev_error_sig", ""),
        )
    assert len(success_beacons(backend)) == 2
    assert not (sandbox.cache / "pending" / "app.py").exists()


def test_a_url_without_scheme_keeps_the_report_and_opens_the_breaker(agent_venv, plain_venv, sandbox):
    script = sandbox.script("app.py", failing_source("boom-no-scheme"))
    env = sandbox.env("errors.example")
    quiet = run(agent_venv.python, [script], env, cwd=sandbox.work)
    without = run(plain_venv.python, [script], env, cwd=sandbox.work)
    assert (quiet.returncode, quiet.stderr) == (without.returncode, without.stderr)
    [breaker] = sandbox.breakers()  # failed as a backend that cannot be reached: not tried again at once
    assert "unknown url type" in json.loads(breaker.read_text())["reason"]
    assert len(list((sandbox.cache / "spool").glob("*.json*"))) == 1  # kept for a correct URL

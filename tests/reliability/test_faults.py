"""Backend faults x host scripts: the host behaves exactly as without the agent, and once the backend
recovers every beacon arrives exactly once (counted by event_id).

The whole matrix runs on CPython 3.11; a smoke of two cells runs on every other interpreter.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from reliability import faults
from support import RecordingBackend, Reply, Sandbox, closed_port_url, failing_source, run


@pytest.fixture(scope="module")
def matrix_scripts(tmp_path_factory):
    return faults.write_scripts(tmp_path_factory.mktemp("hosts"))


@pytest.fixture(scope="module")
def baselines(venv311, matrix_scripts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baseline")
    return {name: faults.baseline(venv311.python, path, Sandbox(tmp / name)) for name, path in matrix_scripts.items()}


def _tls_available(tmp_path):
    if faults.make_cert(tmp_path / "tls") is None:
        pytest.skip("no openssl CLI to make a self-signed certificate")


@pytest.mark.parametrize("fault", faults.FAULTS)
def test_fault_matrix(fault, venv311, matrix_scripts, baselines, tmp_path):
    if fault in faults.TLS_FAULTS:
        _tls_available(tmp_path)
    with ThreadPoolExecutor(3) as pool:
        cells = list(
            pool.map(
                lambda name: faults.run_cell(
                    venv311.python, fault, matrix_scripts[name], baselines[name], tmp_path / name
                ),
                matrix_scripts,
            )
        )
    for cell, name in zip(cells, matrix_scripts):
        base = baselines[name]
        assert cell["same"], faults.describe(cell, base)
        assert cell["generated"] == 1, faults.describe(cell, base)
        assert cell["delivered"] == 1 and cell["duplicated"] == 0, faults.describe(cell, base)
        assert cell["left_in_spool"] == [], faults.describe(cell, base)
        assert cell["flush"].returncode == 0, faults.describe(cell, base)


@pytest.mark.parametrize("fault, script", [("refused", "main"), ("silent", "thread"), ("500", "child")])
def test_fault_smoke_every_interpreter(fault, script, agent_venv, tmp_path):
    scripts = faults.write_scripts(tmp_path / "hosts")
    base = faults.baseline(agent_venv.python, scripts[script], Sandbox(tmp_path / "base"))
    cell = faults.run_cell(agent_venv.python, fault, scripts[script], base, tmp_path / "cell")
    assert faults.cell_ok(cell), faults.describe(cell, base)


def test_a_trusted_tls_backend_takes_the_beacon(agent_venv, sandbox, tmp_path):
    """HTTPS through the agent's bounded opener: the certificate is checked against the trust store
    (here only ours, by SSL_CERT_FILE), and the answer is read; a delivered beacon leaves the spool."""
    _tls_available(tmp_path)
    cert, key = faults.make_cert(tmp_path / "tls")
    listener = faults.TLSListener(cert, key)
    try:
        env = sandbox.env("https://127.0.0.1:%d" % listener.port, {"SSL_CERT_FILE": str(cert)})
        script = sandbox.script("app.py", failing_source("boom-tls"))
        proc = run(agent_venv.python, [script], env, cwd=sandbox.work)
        assert proc.returncode == 1 and b"boom-tls" in proc.stderr
        # whatever the run left (it does not wait for its own delivery), flush delivers over TLS too
        flush = run(agent_venv.python, ["-m", "corp_error_agent", "flush", "--json"], env, cwd=sandbox.work)
        assert flush.returncode == 0 and json.loads(flush.stdout)["remaining"] == 0, flush.stderr
        assert listener.connections >= 1
        assert sandbox.spool() == [] and sandbox.breakers() == []
    finally:
        listener.stop()


def _status(venv, sandbox, url):
    proc = run(venv.python, ["-m", "corp_error_agent", "status", "--json"], sandbox.env(url), cwd=sandbox.work)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("code", [400, 401, 404, 413, 422])
def test_4xx_is_dropped_and_counted_never_retried(code, venv311, sandbox):
    with RecordingBackend() as backend:
        backend.set_reply("/beacon", Reply(code, {"error": "never"}))
        script = sandbox.script("app.py", failing_source("boom-4xx"))
        proc = run(venv311.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
        assert proc.returncode == 1 and b"boom-4xx" in proc.stderr
        backend.wait_for("/beacon")
        backend.settle()
        assert sandbox.spool() == []
        assert _status(venv311, sandbox, backend.url)["spool"]["dropped"] == {"rejected-%d" % code: 1}
        flush = run(
            venv311.python, ["-m", "corp_error_agent", "flush", "--json"], sandbox.env(backend.url), cwd=sandbox.work
        )
        assert json.loads(flush.stdout) == {"delivered": 0, "rejected": 0, "remaining": 0}
        # a second failure sends its own beacon once; the dropped one never comes back
        run(venv311.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
        backend.wait_for("/beacon", 2)
        requests = backend.settle()
        assert len([r for r in requests if r.path == "/beacon"]) == 2
        assert len({r.json["event_id"] for r in requests if r.path == "/beacon"}) == 2
        assert _status(venv311, sandbox, backend.url)["spool"]["dropped"] == {"rejected-%d" % code: 2}


def test_429_keeps_the_beacon_and_honours_retry_after(venv311, sandbox):
    with RecordingBackend() as backend:
        backend.set_fault("429")  # Retry-After: 120
        script = sandbox.script("app.py", failing_source("boom-429"))
        proc = run(venv311.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
        assert proc.returncode == 1
        backend.settle()
        [entry] = sandbox.spool()
        [breaker_file] = sandbox.breakers()
        breaker = json.loads(breaker_file.read_text())
        beacon_ts = json.loads(entry.read_text())["beacon"]["ts"]
        assert 100 <= breaker["until"] - beacon_ts <= 130, breaker  # 120 s, not the default 180
        assert "429" in breaker["reason"]
        # while the breaker is open, the next failure does not contact the backend at all
        before = len(backend.settle())
        run(venv311.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
        assert len(backend.settle()) == before
        assert len(sandbox.spool()) == 2
        backend.set_fault(None)
        flush = run(
            venv311.python, ["-m", "corp_error_agent", "flush", "--json"], sandbox.env(backend.url), cwd=sandbox.work
        )
        assert json.loads(flush.stdout)["delivered"] == 2 and sandbox.spool() == []


def test_drain_is_bounded_per_contact(venv311, sandbox):
    """120 spooled beacons, backend back: one failing process delivers at most 50 (its own first);
    flush delivers the rest, each event exactly once."""
    script = sandbox.script("app.py", failing_source("boom-bounded"))
    env_down = sandbox.env(closed_port_url())
    procs = [run(venv311.python, [script], env_down, cwd=sandbox.work) for _ in range(3)]
    assert all(p.returncode == 1 for p in procs)
    [template] = [json.loads(p.read_text()) for p in sandbox.spool()[:1]]
    spool = sandbox.cache / "spool"
    for i in range(117):
        entry = json.loads(json.dumps(template))
        entry["beacon"]["event_id"] = "%032x" % (i + 1)
        entry["beacon"]["ts"] = template["beacon"]["ts"] - 1000 + i
        (spool / ("%020d-%s.json" % (int(entry["beacon"]["ts"] * 1e6), entry["beacon"]["event_id"]))).write_text(
            json.dumps(entry)
        )
    assert sandbox.reset_breakers() == 1
    with RecordingBackend() as backend:
        run(venv311.python, [script], sandbox.env(backend.url, {"ERROR_AGENT_SUGGEST_TIMEOUT": "20"}), cwd=sandbox.work)
        first = [r.json["event_id"] for r in backend.settle() if r.path == "/beacon"]
        assert 1 <= len(first) <= 50
        flush = run(
            venv311.python, ["-m", "corp_error_agent", "flush", "--json"], sandbox.env(backend.url), cwd=sandbox.work
        )
        assert json.loads(flush.stdout)["remaining"] == 0
        ids = [r.json["event_id"] for r in backend.settle() if r.path == "/beacon"]
    assert len(ids) == len(set(ids)) == 121

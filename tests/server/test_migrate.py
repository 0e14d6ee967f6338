"""`corp-error-server migrate SRC DST`: a SQLite database into PostgreSQL, answering as before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import corp_error_agent
from conftest import REPO, Server, env_body, error_beacon
from corp_error_server.storage import Beacon, Env, open_storage
from pgsupport import db_rows

SIG = "ModuleNotFoundError: No module named 'yaml' @ __main__.main"


def _migrate(src: str, dst: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corp_error_server", "migrate", src, dst],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def _answers(server: Server) -> list:
    groups = server.request("GET", "/api/errors")[1]["groups"]
    details = [server.request("GET", "/api/errors/%d" % g["id"])[1] for g in groups]
    suggest = server.request("POST", "/suggest", {"error_sig": SIG, "env_hash": "bad1"})
    return [groups, details, suggest]


def _fill(server: Server) -> None:
    for i in range(6):
        server.request("POST", "/env", env_body("bad%d" % i, {"pyyaml": "missing" if i else "5.1", "six": "1.16"}))
        server.request("POST", "/env", env_body("ok%d" % i, {"pyyaml": "6.0.1", "six": "1.16"}))
        server.request(
            "POST", "/beacon", error_beacon("bad%d" % i, "s%d" % i, SIG, event_id="ev%d" % i, handled=i == 0)
        )
        server.request(
            "POST",
            "/beacon",
            {
                "kind": "success",
                "env_hash": "ok%d" % i,
                "script_id": "s%d" % i,
                "ts": 1.7e9,
                "prev_env_hash": "bad%d" % i,
                "prev_error_sig": SIG,
            },
        )
    server.request("POST", "/beacon", error_beacon("late", "s9", "KeyError: 'x' @ app.run"))  # env never sent


def test_a_migrated_database_answers_as_the_original(tmp_path, pg_cluster):
    src, dst = str(tmp_path / "errors.db"), pg_cluster.database()
    before = Server(src)
    _fill(before)
    expected = _answers(before)
    assert expected[2][1]["match"] is True
    before.stop()

    result = _migrate(src, dst)
    assert result.returncode == 0, result.stderr
    assert "13 beacons" in result.stdout.splitlines()[-1]
    after = Server(dst)
    try:
        assert _answers(after) == expected
        # a rerun changes nothing
        totals = "SELECT COUNT(*), SUM(counted), (SELECT SUM(fails) FROM counts) FROM beacons"
        rows = db_rows(dst, totals)
        assert _migrate(src, dst).returncode == 0
        assert db_rows(dst, totals) == rows
        # new rows get ids after the copied ones
        assert after.request("POST", "/beacon", error_beacon("bad1", "s1", "OSError: new @ m.f"))[0] == 200
        assert db_rows(dst, "SELECT COUNT(*) FROM beacons") == [(14,)]
        assert {g["signature"] for g in after.request("GET", "/api/errors")[1]["groups"]} >= {"OSError: new @ m.f"}
    finally:
        after.stop()


def test_an_interrupted_migration_leaves_nothing_and_a_rerun_completes(tmp_path, pg_cluster):
    src, dst = str(tmp_path / "big.db"), pg_cluster.database()
    storage = open_storage(src)
    storage.add_env(Env("e1", {"packages": {}}, {"python": "3.11", "pkg:a": "1"}))
    beacon = Beacon(
        kind="error",
        env_hash="e1",
        script_id="s1",
        group_key=corp_error_agent.group_key(SIG),
        signature=SIG,
        trace=None,
        ts=1.7e9,
        event_id=None,
        script_name=None,
        agent=None,
        test=False,
        prev_env_hash=None,
        prev_group_key=None,
        mentions=frozenset(),
    )
    for start in range(0, 20000, 2000):
        storage.add_beacons([(beacon._replace(event_id="b%d" % i), None) for i in range(start, start + 2000)])
    storage.close()

    proc = subprocess.Popen(
        [sys.executable, "-m", "corp_error_server", "migrate", src, dst],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    for line in proc.stdout:
        if line.strip() == "copying beacons":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert db_rows(dst, "SELECT COUNT(*) FROM beacons")[0][0] in (0, 20000)  # all or nothing

    result = _migrate(src, dst)
    assert result.returncode == 0, result.stderr
    assert db_rows(dst, "SELECT COUNT(*), SUM(counted) FROM beacons") == [(20000, 20000)]
    assert db_rows(dst, "SELECT errors, fails FROM groups") == [(20000, 20000)]
    assert db_rows(dst, "SELECT fails FROM counts WHERE feature = 'pkg:a'") == [(20000,)]


def test_a_destination_with_other_data_is_refused_untouched(tmp_path, pg_cluster):
    src, dst = str(tmp_path / "errors.db"), pg_cluster.database()
    open_storage(src).close()
    other = open_storage(dst)
    other.add_env(Env("x1", {"packages": {}}, {"python": "3.12"}))
    other.close()
    result = _migrate(src, dst)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "migrate into an empty database" in result.stderr
    assert db_rows(dst, "SELECT env_hash FROM envs") == [("x1",)]
    missing = _migrate(str(tmp_path / "typo.db"), dst)
    assert missing.returncode == 2 and "no database file" in missing.stderr
    assert not (tmp_path / "typo.db").exists()

"""Unit tests of the spool's claims: who may take an entry back from a process that claimed it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import corp_error_agent as agent

agent._load()


@pytest.fixture
def entry(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    path = spool / ("00000000000000000001-%s.json" % ("a" * 32))
    path.write_text('{"beacon": {"kind": "error"}}')
    return path


def _ended_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid names no process now
    return process.pid


def test_a_claim_names_this_process_and_its_pid_space(entry):
    claimed = agent._spool_claim(str(entry))
    assert claimed == "%s.%d.%s.claimed" % (entry, os.getpid(), agent._pid_space())
    assert not entry.exists() and agent._spool_claim(str(entry)) is None  # one claimant only
    agent._spool_release(claimed, keep=True)
    assert entry.exists()


@pytest.mark.skipif(os.name == "nt", reason="pids are never judged on Windows")
def test_only_an_ended_process_of_this_pid_space_loses_its_claim(entry):
    space = agent._pid_space()
    assert agent._claimant_gone("%s.%d.%s.claimed" % (entry.name, _ended_pid(), space))
    assert not agent._claimant_gone("%s.%d.%s.claimed" % (entry.name, os.getppid(), space))
    # another machine or container sharing the cache dir: its pids mean nothing here
    assert not agent._claimant_gone("%s.%d.%s.claimed" % (entry.name, _ended_pid(), "elsewhere"))
    assert not agent._claimant_gone("%s.%d.%s.claimed" % (entry.name, 10**30, space))


def test_recovery_returns_the_entries_of_ended_claimants_only(entry, tmp_path):
    other = entry.with_name("00000000000000000002-%s.json" % ("b" * 32))
    other.write_text('{"beacon": {"kind": "error"}}')
    space = agent._pid_space()
    entry.rename("%s.%d.%s.claimed" % (entry, _ended_pid(), space))
    held = "%s.%d.%s.claimed" % (other, os.getppid(), space)
    other.rename(held)
    agent._recover_stale_claims(str(tmp_path))
    assert entry.exists() and os.path.exists(held) and not other.exists()


def test_releasing_a_claim_that_was_handed_on_is_not_an_error(entry):
    claimed = agent._spool_claim(str(entry))
    os.rename(claimed, str(entry))  # a recovery judged us gone and put the entry back
    agent._spool_release(claimed, keep=False)
    agent._spool_release(claimed, keep=True)
    assert entry.exists()


def _put(state_dir, ts: float, event_id: str) -> str:
    return agent._spool_put(str(state_dir), {"beacon": {"ts": ts, "event_id": event_id}})


def _dropped(state_dir) -> list:
    return [line.split()[1:] for line in (state_dir / "dropped.log").read_text().splitlines()]


def test_a_full_spool_drops_its_oldest_entries_and_counts_them(tmp_path):
    (tmp_path / "spool").mkdir()
    now = time.time()
    for n in range(agent._SPOOL_MAX_FILES):
        _put(tmp_path, now + n, "%032x" % n)
    newest = _put(tmp_path, now + agent._SPOOL_MAX_FILES, "f" * 32)
    entries = agent._spool_entries(str(tmp_path))
    assert len(entries) == agent._SPOOL_MAX_FILES and entries[-1] == newest
    assert not any(name.endswith("%032x.json" % 0) for name in entries)
    assert _dropped(tmp_path) == [["spool-full", "%032x" % 0]]


def test_entries_older_than_a_week_expire_and_are_counted(tmp_path):
    (tmp_path / "spool").mkdir()
    _put(tmp_path, time.time() - agent._SPOOL_MAX_AGE - 60, "a" * 32)
    kept = _put(tmp_path, time.time(), "b" * 32)
    assert agent._spool_entries(str(tmp_path)) == [kept]
    assert _dropped(tmp_path) == [["expired", "a" * 32]]


def test_no_spool_directory_is_an_empty_spool(tmp_path):
    assert agent._spool_entries(str(tmp_path / "nowhere")) == []


def test_a_write_that_fails_leaves_neither_the_file_nor_its_temporary(tmp_path):
    path = tmp_path / "entry.json"
    with pytest.raises(TypeError):
        agent._write_atomic(str(path), {"beacon": object()})
    assert list(tmp_path.iterdir()) == []
    agent._write_atomic(str(path), {"beacon": {"kind": "error"}})
    assert json.loads(path.read_text()) == {"beacon": {"kind": "error"}} and list(tmp_path.iterdir()) == [path]


def test_recovery_removes_old_temporaries_and_returns_claims_it_cannot_read(entry, tmp_path):
    spool = entry.parent
    old_tmp, new_tmp = spool / "x.json.1.abcd.tmp", spool / "y.json.2.abcd.tmp"
    for path in (old_tmp, new_tmp):
        path.write_text("{")
    ten_minutes_ago = time.time() - 600
    os.utime(old_tmp, (ten_minutes_ago, ten_minutes_ago))
    entry.rename(str(entry) + ".no-pid.%s.claimed" % agent._pid_space())  # names no process: nobody holds it
    agent._recover_stale_claims(str(tmp_path))
    assert sorted(p.name for p in spool.iterdir()) == sorted([entry.name, new_tmp.name])

"""Unit tests of the spool's claims: who may take an entry back from a process that claimed it."""
from __future__ import annotations

import os
import subprocess
import sys

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
    assert not agent._claimant_gone("%s.%d.%s.claimed" % (entry.name, 10 ** 30, space))


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

"""The fix hint under the traceback: shown when confident, sanitised, suppressible."""

from __future__ import annotations

import pytest

from support import Reply, failing_source, run, wait_error

MATCH = {
    "match": True,
    "confidence": 0.9,
    "hint": "numpy 2 breaks this\x1b[2J\x07 (seen on 12 hosts)",
    "solution": "pip install \x1b]0;pwned\x07'numpy<2'",
    "evidence": {"hosts": 12},
}
BLOCK = (
    b"\n[corp-error-agent] numpy 2 breaks this (seen on 12 hosts)\n"
    b"  fix:        %s -m pip install 'numpy<2'\n"  # the pip of the interpreter that failed
    b"  confidence: 90%%\n"
)


def _runs(agent_venv, plain_venv, backend, sandbox, extra=None):
    script = sandbox.script("app.py", failing_source("boom-hint"))
    with_agent = run(agent_venv.python, [script], sandbox.env(backend.url, extra), cwd=sandbox.work)
    without = run(plain_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    return with_agent, without


def test_hint_shown_and_sanitised(agent_venv, plain_venv, backend, sandbox):
    backend.set_reply("/suggest", Reply(200, MATCH))
    with_agent, without = _runs(agent_venv, plain_venv, backend, sandbox)
    assert with_agent.returncode == without.returncode == 1
    assert with_agent.stderr.startswith(without.stderr)  # the traceback first, unchanged
    assert with_agent.stderr[len(without.stderr) :] == BLOCK % str(agent_venv.python).encode()
    assert b"\x1b" not in with_agent.stderr and b"\x07" not in with_agent.stderr
    assert b"pwned" not in with_agent.stderr
    assert with_agent.stdout == without.stdout


def test_hint_from_django_style_answer(agent_venv, plain_venv, backend, sandbox):
    backend.set_reply(
        "/suggest",
        Reply(
            200,
            {
                "match": True,
                "confidence": 0.95,
                "docs": "",
                "all_suggestions": [],
                "recommendation": "95% of similar errors occurred with numpy version 1.24.0.",
            },
        ),
    )
    with_agent, without = _runs(agent_venv, plain_venv, backend, sandbox)
    tail = with_agent.stderr[len(without.stderr) :]
    assert with_agent.stderr.startswith(without.stderr)
    assert tail.startswith(b"\n[corp-error-agent] 95% of similar errors occurred with numpy version 1.24.0.\n")
    assert b"confidence: 95%" in tail


@pytest.mark.parametrize(
    "answer, extra",
    [
        ({"match": True, "confidence": 0.5, "hint": "low", "solution": "pip install low"}, None),
        (MATCH, {"ERROR_AGENT_MIN_CONFIDENCE": "0.95"}),
        (MATCH, {"ERROR_AGENT_HINT": "0"}),
        ({"match": False, "confidence": 0.99, "hint": "no match", "solution": "x"}, None),
        (
            {"match": True, "confidence": 0.99, "hint": "\x1b[2J\u200b", "solution": None, "docs": "https://d.example"},
            None,
        ),
    ],
    ids=["below-default-min", "below-env-min", "hints-off", "no-match", "nothing-printable"],
)
def test_hint_not_shown(agent_venv, plain_venv, backend, sandbox, answer, extra):
    backend.set_reply("/suggest", Reply(200, answer))
    with_agent, without = _runs(agent_venv, plain_venv, backend, sandbox, extra)
    assert (with_agent.returncode, with_agent.stderr) == (without.returncode, without.stderr)
    wait_error(backend, "boom-hint")  # reporting goes on without hints
    if not extra or "ERROR_AGENT_HINT" not in extra:
        backend.wait_for("/suggest")  # it asked, and chose not to show the answer


def test_hint_names_the_docs(agent_venv, plain_venv, backend, sandbox):
    backend.set_reply("/suggest", Reply(200, dict(MATCH, docs="https://numpy.org/devdocs/numpy_2_0_migration_guide")))
    with_agent, without = _runs(agent_venv, plain_venv, backend, sandbox)
    assert with_agent.stderr[len(without.stderr) :] == (BLOCK % str(agent_venv.python).encode()).replace(
        b"  confidence", b"  docs:       https://numpy.org/devdocs/numpy_2_0_migration_guide\n  confidence"
    )

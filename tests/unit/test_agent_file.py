"""The agent file itself: its two parts fit together, and what it installs is what the repo ships."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
import corp_error_agent as agent  # noqa: E402


def test_agent_proper_lints_clean_with_the_start_up_part(tmp_path):
    # The agent proper is source text compiled at run time: no editor or linter looks inside the
    # string, so this test does. Both parts go into one file, the string's lines where they are.
    source = (ROOT / "corp_error_agent.py").read_text(encoding="utf-8")
    head = source[:source.index("_AGENT = r'''")]
    body = "\n" * (agent._AGENT_FIRST_LINE - 1 - head.count("\n")) + agent._AGENT
    combined = tmp_path / "combined.py"
    combined.write_text(head + body, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "pyflakes", str(combined)], capture_output=True, text=True)
    # The start-up part refers to the string itself, which the combined file replaces.
    expected = ("imported but unused", "undefined name '_AGENT'", "undefined name '_AGENT_FIRST_LINE'")
    problems = [line for line in result.stdout.splitlines() if not any(e in line for e in expected)]
    assert problems == [], "\n".join(problems)


def test_line_numbers_of_the_agent_proper_are_the_file_s():
    agent._load()
    lines = (ROOT / "corp_error_agent.py").read_text(encoding="utf-8").splitlines()
    code = agent.error_signature.__code__
    assert lines[code.co_firstlineno - 1].startswith("def error_signature(")


def test_start_up_byte_code_holds_no_code_of_the_agent_proper():
    # What every Python process loads: the start-up part, plus the agent proper as one string.
    code = compile((ROOT / "corp_error_agent.py").read_text(encoding="utf-8"), "corp_error_agent.py", "exec")
    at_start_up = {c.co_name for c in code.co_consts if hasattr(c, "co_name")}
    proper = {node.name for node in ast.parse(agent._AGENT).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert "activate" in at_start_up and len(proper) > 50
    assert at_start_up & proper == set()
    assert agent._AGENT in code.co_consts


def test_repo_start_up_files_are_what_install_writes():
    assert (ROOT / "corp_error_agent.pth").read_text() == agent._PTH_LINE
    assert (ROOT / "corp_error_agent.start").read_text() == agent._START_LINE

"""The agent file itself: its two parts fit together, and what it installs is what the repo ships."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
import corp_error_agent as agent  # noqa: E402


def test_agent_proper_lints_clean_with_the_start_up_part(tmp_path):
    # The agent proper is source text compiled at run time: no editor or linter looks inside the
    # string, so this test does. The quote lines become blank lines: line numbers stay the file's.
    source = (ROOT / "corp_error_agent.py").read_text(encoding="utf-8")
    combined = tmp_path / "combined.py"
    combined.write_text(source.replace("\nr'''\n", "\n\n", 1).replace("\n'''\n", "\n\n", 1), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "pyflakes", str(combined)], capture_output=True, text=True)
    assert result.stdout == "" and result.returncode == 0, result.stdout + result.stderr


def test_line_numbers_of_the_agent_proper_are_the_file_s():
    agent._load()
    lines = (ROOT / "corp_error_agent.py").read_text(encoding="utf-8").splitlines()
    code = agent.error_signature.__code__
    assert lines[code.co_firstlineno - 1].startswith("def error_signature(")


def test_start_up_byte_code_holds_no_code_of_the_agent_proper():
    # What every Python process loads: the start-up part only, not even the agent proper's text.
    code = compile((ROOT / "corp_error_agent.py").read_text(encoding="utf-8"), "corp_error_agent.py", "exec")
    at_start_up = {c.co_name for c in code.co_consts if hasattr(c, "co_name")}
    proper = {node.name for node in ast.parse(agent._agent_source()).body
              if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert "activate" in at_start_up and len(proper) > 50
    assert at_start_up & proper == set()
    assert not [c for c in code.co_consts if isinstance(c, str) and "def error_signature" in c]


def test_repo_start_up_files_are_what_install_writes():
    assert (ROOT / "corp_error_agent.pth").read_text() == agent._PTH_LINE
    assert (ROOT / "corp_error_agent.start").read_text() == agent._START_LINE


def test_an_upgrade_under_a_running_process_is_not_mixed_in(tmp_path, monkeypatch):
    # The agent proper is read from the file when it is first needed, which may be days after the
    # process started: a file of another version by then must not be compiled into the old start-up part.
    monkeypatch.setenv("ERROR_AGENT_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "corp_error_agent.py"
    copy.write_text((ROOT / "corp_error_agent.py").read_text(encoding="utf-8"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("cea_running", str(copy))
    running = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(running)
    assert "def error_signature(" in running._agent_source()
    upgraded = copy.read_text(encoding="utf-8").replace(
        '__version__ = "%s"' % running.__version__, '__version__ = "99.0"', 1)
    copy.write_text(upgraded, encoding="utf-8")
    with pytest.raises(ImportError, match="another version"):
        running._agent_source()
    assert running._call_agent("scrub", "password=hunter2") is None  # swallowed: the agent stays out
    assert "scrub" not in vars(running)


def test_a_copy_with_crlf_line_endings_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ERROR_AGENT_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "corp_error_agent.py"
    copy.write_bytes((ROOT / "corp_error_agent.py").read_bytes().replace(b"\n", b"\r\n"))
    spec = importlib.util.spec_from_file_location("cea_crlf", str(copy))
    crlf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crlf)
    assert crlf._call_agent("scrub", "password=hunter2") == "password=***"
    assert crlf.error_signature.__code__.co_firstlineno == agent.error_signature.__code__.co_firstlineno


# -- per-user directories, where platformdirs (and so the published 0.4.2 client) puts them ------

HOME = "/home/alice"


def _user_dir(kind, platform, **environ):
    saved = dict(agent.os.environ)
    agent.os.environ["HOME"] = HOME
    try:
        return agent._user_dir(kind, platform=platform, environ=environ)
    finally:
        agent.os.environ.clear()
        agent.os.environ.update(saved)


def test_linux_dirs_follow_xdg():
    assert _user_dir("config", "linux") == HOME + "/.config/corp_error_agent"
    assert _user_dir("cache", "linux") == HOME + "/.cache/corp_error_agent"
    assert _user_dir("config", "linux", XDG_CONFIG_HOME="/cfg") == "/cfg/corp_error_agent"
    assert _user_dir("cache", "linux", XDG_CACHE_HOME="/c") == "/c/corp_error_agent"
    assert _user_dir("cache", "linux", XDG_CACHE_HOME="relative") == HOME + "/.cache/corp_error_agent"


def test_macos_dirs():
    assert _user_dir("config", "darwin") == HOME + "/Library/Application Support/corp_error_agent"
    assert _user_dir("cache", "darwin") == HOME + "/Library/Caches/corp_error_agent"


def test_windows_dirs_use_localappdata():
    base = r"C:\Users\alice\AppData\Local"
    config = _user_dir("config", "win32", LOCALAPPDATA=base)
    cache = _user_dir("cache", "win32", LOCALAPPDATA=base)
    assert config.replace("\\", "/") == base.replace("\\", "/") + "/corp_error_agent/corp_error_agent"
    assert cache.replace("\\", "/") == base.replace("\\", "/") + "/corp_error_agent/corp_error_agent/Cache"
    assert _user_dir("config", "win32").startswith(HOME)  # no LOCALAPPDATA: under the home directory

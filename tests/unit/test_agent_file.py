"""The agent file itself: its two parts fit together, and what it installs is what the repo ships."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import corp_error_agent as agent
from agent_whole import whole_source

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_whole_view_is_the_agent_s_own_split():
    # What linters and coverage read (tests/agent_whole.py) is the start-up part and the agent
    # proper that _load() compiles, each line at its number in the file.
    text = (ROOT / "corp_error_agent.py").read_text(encoding="utf-8")
    whole, lines = whole_source(text).split("\n"), text.split("\n")
    proper = agent._agent_source().split("\n")
    first = next(i for i, line in enumerate(proper) if line)
    assert len(whole) == len(lines) and whole[first - 1] == whole[len(proper) - 1] == ""
    assert whole[first : len(proper) - 1] == proper[first:-1]
    assert whole[: first - 1] == lines[: first - 1] and whole[len(proper) :] == lines[len(proper) :]
    body = ast.parse(whole_source(text)).body
    names = {node.name for node in body if isinstance(node, ast.FunctionDef)}
    names |= {t.id for node in body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assert set(agent.__all__) <= names


def test_agent_file_lints_clean_whole():
    # The agent proper is source text compiled at run time: no editor or linter looks inside the
    # string, so this test hands pyflakes the file whole, findings named by the file's line numbers.
    # (run_tests.sh runs ruff on the same view: python tests/agent_whole.py.)
    api = pytest.importorskip("pyflakes.api", reason="pyflakes is not installed (run_tests.sh installs it)")
    reporter = pytest.importorskip("pyflakes.reporter")
    import io

    out = io.StringIO()
    path = ROOT / "corp_error_agent.py"
    found = api.check(whole_source(path.read_text(encoding="utf-8")), str(path), reporter.Reporter(out, out))
    assert found == 0 and out.getvalue() == "", out.getvalue()


def test_line_numbers_of_the_agent_proper_are_the_file_s():
    agent._load()
    lines = (ROOT / "corp_error_agent.py").read_text(encoding="utf-8").splitlines()
    code = agent.error_signature.__code__
    assert lines[code.co_firstlineno - 1].startswith("def error_signature(")


def test_start_up_byte_code_holds_no_code_of_the_agent_proper():
    # What every Python process loads: the start-up part only, not even the agent proper's text.
    code = compile((ROOT / "corp_error_agent.py").read_text(encoding="utf-8"), "corp_error_agent.py", "exec")
    at_start_up = {c.co_name for c in code.co_consts if hasattr(c, "co_name")}
    proper = {
        node.name for node in ast.parse(agent._agent_source()).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }
    assert at_start_up == {"_entry"} and len(proper) > 50
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
        '__version__ = "%s"' % running.__version__, '__version__ = "99.0"', 1
    )
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

"""Unit tests of the pure event functions in corp_error_agent (imported from the repo root)."""

from __future__ import annotations

import sys

import pytest

import corp_error_agent as agent

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # run_tests.sh installs hypothesis; plain `pytest` without it skips these
    given = None


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home" / "alice"
    path.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(path))
    return str(path)


# -- scrub -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, secret",
    [
        ("connect https://bob:s3cr3tpw@db.example.com/x", "s3cr3tpw"),
        ("postgresql://admin:pa55word@10.0.0.1:5432/db", "pa55word"),
        ("login password=hunter2xyz failed", "hunter2xyz"),
        ("config {'api_key': 'abcd1234efgh'}", "abcd1234efgh"),
        ('SECRET_TOKEN="zz-top-secret"', "zz-top-secret"),
        ("Authorization: Bearer tok-very-secret-42", "tok-very-secret-42"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("aws key AKIAIOSFODNN7EXAMPLE in env", "AKIAIOSFODNN7EXAMPLE"),
        ("token ghp_0123456789abcdefghijklmnopqrstuvwxyzAB used", "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"),
        ("slack xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEA7"),
    ],
)
def test_scrub_removes_secrets(text, secret):
    out = agent.scrub(text)
    assert secret not in out
    assert out.split()[0] == text.split()[0] or "***" in out  # the rest stays readable


def test_scrub_keeps_ordinary_text():
    text = 'File "/usr/lib/python3.11/json/decoder.py", line 355, in raw_decode\nValueError: bad value 42'
    assert agent.scrub(text) == text


def test_scrub_replaces_home(home):
    text = 'File "%s/project/app.py", line 3, in main' % home
    assert agent.scrub(text) == 'File "~/project/app.py", line 3, in main'


def test_scrub_root_home_is_not_replaced(monkeypatch):
    monkeypatch.setenv("HOME", "/")
    assert agent.scrub("/usr/bin/python") == "/usr/bin/python"


# -- group_key -----------------------------------------------------------------------------------


def test_group_key_contract_example():
    ours = "AttributeError: module 'packaging.version' has no attribute 'LegacyVersion' @ __main__.main"
    theirs = "attributeerror: module 'packaging.version' has no attribute 'legacyversion'. did you mean: 'version'?"
    expected = "attributeerror: module 'packaging.version' has no attribute 'legacyversion'"
    assert agent.group_key(ours) == agent.group_key(theirs) == expected


def test_group_key_takes_last_exception_line_of_a_trace():
    trace = (
        'Traceback (most recent call last):\n  File "/home/u/app.py", line 3, in <module>\n'
        "    main()\nKeyError: 'user_id'\n"
    )
    assert agent.group_key(trace) == "keyerror: 'user_id'"


def test_group_key_normalises_paths_numbers_and_addresses():
    a = agent.group_key("filenotfounderror: [errno 2] no such file or directory: '/home/alice/data/1.csv'")
    b = agent.group_key("FileNotFoundError: [Errno 2] No such file or directory: '/srv/bob/x/77.csv' @ m.f")
    assert a == b
    assert agent.group_key("ValueError: <Foo object at 0x7f3a2b1c>") == agent.group_key(
        "valueerror: <foo object at 0xdeadbeef>"
    )


def test_group_key_distinguishes_bugs():
    assert agent.group_key("KeyError: 'a'") != agent.group_key("KeyError: 'b'")
    assert agent.group_key("KeyError: 'a'") != agent.group_key("IndexError: 'a'")


def test_group_key_bounded():
    assert len(agent.group_key("ValueError: " + "x" * 5000)) <= 400


# -- error_signature -----------------------------------------------------------------------------


def _capture(func):
    try:
        func()
    except Exception:
        return sys.exc_info()
    raise AssertionError("did not raise")


def _outer(path):
    def inner():
        raise FileNotFoundError("cannot open %s (object %r, try 3)" % (path, object()))

    return inner()


def test_a_path_in_parentheses_keeps_its_closing_one():
    line = "ImportError: cannot import name 'X' from 'pkg.mod' (/srv/app/pkg/mod.py)"
    assert agent.group_key(line) == "importerror: cannot import name 'x' from 'pkg.mod' (<path>)"
    assert agent.group_key("OSError: (C:\\tmp\\x(1).txt) gone") == "oserror: (<path>) gone"


def test_error_signature_format_and_frames():
    sig = agent.error_signature(*_capture(lambda: _outer("/home/alice/cfg.toml")))
    exc_line, frames = sig.split(" @ ")
    assert exc_line.startswith("FileNotFoundError: cannot open <path>")
    assert "0x" not in exc_line and "alice" not in exc_line and " 3)" not in exc_line
    names = frames.split(" < ")
    assert len(names) <= 3
    assert names[0] == __name__ + "._outer.<locals>.inner" or names[0].endswith(".inner")
    assert names[1].endswith("._outer")
    assert "line" not in sig and ".py" not in sig


def test_error_signature_same_bug_same_sig_different_bug_different_sig():
    a = agent.error_signature(*_capture(lambda: _outer("/home/alice/cfg.toml")))
    b = agent.error_signature(*_capture(lambda: _outer("/tmp/tmpab12cd/cfg.toml")))
    c = agent.error_signature(*_capture(lambda: {}["missing"]))
    assert a == b
    assert a != c


def test_error_signature_type_names():
    class LocalError(Exception):
        pass

    def boom():
        raise LocalError("x")

    sig = agent.error_signature(*_capture(boom))
    assert sig.startswith(__name__ + ".test_error_signature_type_names.<locals>.LocalError: x @ ")
    assert agent.error_signature(*_capture(lambda: 1 / 0)).startswith("ZeroDivisionError: division by zero @ ")


def test_error_signature_bounded_and_hostile_str():
    class Hostile(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    def boom():
        raise Hostile()

    assert agent.error_signature(*_capture(boom)).startswith(__name__)
    sig = agent.error_signature(*_capture(lambda: (_ for _ in ()).throw(ValueError("y" * 5000))))
    assert len(sig) <= 400


def test_agent_and_published_client_group_together():
    """group_key(our error_sig) == group_key(the 0.4.2 client's sig: last traceback line, lower-cased)."""
    import traceback

    info = _capture(lambda: _outer("/home/alice/cfg.toml"))
    theirs = "".join(traceback.format_exception(*info)).strip().splitlines()[-1].lower()
    assert agent.group_key(agent.error_signature(*info)) == agent.group_key(theirs)


if given is not None:
    words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_'", min_size=1, max_size=8)
    pieces = st.one_of(
        words,
        st.integers(0, 10**6).map(str),
        st.just("/home/user/x.py"),
        st.integers(0, 2**48).map(hex),
        st.just("'/tmp/tmp_x1/y'"),
    )

    @settings(max_examples=150, deadline=None)
    @given(st.lists(pieces, min_size=1, max_size=8).map(" ".join))
    def test_group_key_agrees_across_clients(message):
        info = _capture(lambda: (_ for _ in ()).throw(ValueError(message)))
        import traceback

        theirs = "".join(traceback.format_exception(*info)).strip().splitlines()[-1].lower()
        assert agent.group_key(agent.error_signature(*info)) == agent.group_key(theirs)

    @settings(max_examples=150, deadline=None)
    @given(st.text(max_size=200))
    def test_scrub_is_idempotent(text):
        once = agent.scrub(text)
        assert agent.scrub(once) == once


def test_format_trace_of_a_traceback_the_formatter_cannot_read_keeps_the_exception_line():
    error = ValueError("boom-unformattable")
    assert agent.format_trace(ValueError, error, "not a traceback") == "ValueError: boom-unformattable\n"


def test_distributions_named_without_a_version_are_read_from_their_metadata(tmp_path):
    (tmp_path / "Plain_Name-1.0.dist-info").mkdir()
    (tmp_path / "weird.dist-info").mkdir()
    (tmp_path / "weird.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: Weird.Pkg\nVersion: 2.3\n")
    (tmp_path / "broken.dist-info").mkdir()  # no METADATA: nothing to tell
    (tmp_path / "not-a-dist").mkdir()
    assert agent._scan_distributions([str(tmp_path)]) == {"plain-name": "1.0", "weird-pkg": "2.3"}

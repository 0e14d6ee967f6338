"""What leaves the machine: secrets and the home directory scrubbed; stable signatures and ids."""

from __future__ import annotations

import json
import os

from support import Sandbox, run, wait_error

SECRETS = (
    "hunter2xyz",
    "s3cr3tpw",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "tok-very-secret-42",
)

LEAKY = '''import os
def connect():
    raise ConnectionError("login failed password=hunter2xyz for https://bob:s3cr3tpw@db.example.com/x "
                          "aws AKIAIOSFODNN7EXAMPLE gh ghp_0123456789abcdefghijklmnopqrstuvwxyzAB "
                          "Authorization: Bearer tok-very-secret-42 "
                          "file " + os.path.join(os.path.expanduser("~"), "data", "input.csv"))
connect()
'''


def test_secrets_and_home_scrubbed(agent_venv, backend, sandbox):
    script = sandbox.script("app.py", LEAKY, directory=sandbox.home / "projects" / "secretproj")
    env = sandbox.env(backend.url, {"HTTPS_PROXY": "http://proxyuser:pr0xyPw@proxy.example:3128"})
    proc = run(agent_venv.python, [script], env, cwd=sandbox.work)
    assert b"hunter2xyz" in proc.stderr  # the user still sees the real traceback
    [beacon] = wait_error(backend, "ConnectionError")
    backend.wait_for("/env")
    backend.wait_for("/suggest")
    sent = b"\n".join(r.body for r in backend.settle())
    home = str(sandbox.home).encode()
    for secret in SECRETS + ("pr0xyPw",):
        assert secret.encode() not in sent, secret
    assert home not in sent
    assert "~/projects/secretproj/app.py" in beacon["trace"]
    assert "~/data/input.csv" in beacon["trace"] or "<path>" in beacon["trace"]


def test_env_vars_allow_list(agent_venv, backend, sandbox):
    script = sandbox.script("app.py", "raise ValueError('boom-env')\n")
    env = sandbox.env(
        backend.url,
        {
            "ERROR_AGENT_ENV_ALLOW": "MY_SETTING,UNSET_ONE",
            "MY_SETTING": "hello",
            "NOT_ALLOWED_VAR": "zzz-not-allowed",
            "TZ": "Europe/Paris",
        },
    )
    run(agent_venv.python, [script], env, cwd=sandbox.work)
    wait_error(backend, "boom-env")
    env_vars = backend.wait_for("/env")[0].json["env_vars"]
    assert env_vars["MY_SETTING"] == "hello"
    assert env_vars["UNSET_ONE"] == "MISSING"
    assert env_vars["TZ"] == "Europe/Paris"
    assert env_vars["CONDA_PREFIX"] == "MISSING"
    assert b"zzz-not-allowed" not in b"".join(r.body for r in backend.settle())


BUG = '''import os
class Thing:
    pass
def load(path):
    raise FileNotFoundError("cannot read %s for %r (attempt 3 of 5, id 0x%x)" % (path, Thing(), id(path)))
load(os.path.join(os.path.expanduser("~"), "cfg", "settings.toml"))
'''
OTHER_BUG = '''def load(path):
    raise TypeError("unsupported operand for %s" % path)
load("settings")
'''


def _run_bug(venv, backend, sb: Sandbox, source: str, where: str) -> dict:
    script = sb.script("app.py", source, directory=sb.home / where)
    run(venv.python, [script], sb.env(backend.url), cwd=sb.work)
    before = len([b for b in backend.bodies("/beacon") if b and b.get("kind") == "error"])
    return wait_error(backend, count=before)[-1]


def test_error_sig_same_bug_same_signature_across_homes(agent_venv, backend, tmp_path):
    first = _run_bug(agent_venv, backend, Sandbox(tmp_path / "alice"), BUG, "work/a")
    second = _run_bug(agent_venv, backend, Sandbox(tmp_path / "bob-the-second-user"), BUG, "deeper/place/b")
    other = _run_bug(agent_venv, backend, Sandbox(tmp_path / "carol"), OTHER_BUG, "work/a")
    assert first["event_id"] != second["event_id"]
    assert first["error_sig"] == second["error_sig"]
    assert first["error_sig"].startswith("FileNotFoundError: ")
    assert "__main__.load < __main__.<module>" in first["error_sig"]
    for token in ("alice", "bob-the-second", "0x", "settings.toml", ":6", "line"):
        assert token not in first["error_sig"], token
    assert len(first["error_sig"]) <= 400
    assert other["error_sig"] != first["error_sig"]
    # same script content -> same script_id on any machine; different content -> different id
    assert first["script_id"] == second["script_id"]
    assert other["script_id"] != first["script_id"]


def test_trace_bounded_keeps_the_end(agent_venv, backend, sandbox):
    script = sandbox.script("big.py", "raise RuntimeError('x' * 200000 + ' the-very-end')\n")
    run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    [beacon] = wait_error(backend, "the-very-end")
    assert len(beacon["trace"]) <= 25000
    assert beacon["trace"].rstrip().endswith("the-very-end")
    assert len(json.dumps(beacon)) < 64 * 1024


def test_undecodable_bytes_in_names_and_messages_reach_the_server_as_valid_text(agent_venv, backend, sandbox):
    # A file name with a byte that is not UTF-8 becomes a lone surrogate in Python; strict servers
    # refuse such JSON text, and the report with it.
    name = os.fsdecode(b"b\xffd.py")
    script = sandbox.script(name, "raise ValueError('boom-bytes ' + %r)\n" % os.fsdecode(b"\xfe"))
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1
    [beacon] = wait_error(backend, "boom-bytes")
    assert beacon["script_name"] == "b\\udcffd.py"
    for request in backend.of("/beacon") + backend.of("/env"):
        # strict UTF-8 holds no lone surrogate: this raises if the JSON escaped one
        json.dumps(json.loads(request.body), ensure_ascii=False).encode("utf-8")

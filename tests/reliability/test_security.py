"""Security review: escape injection through server text, secrets in traces and env values, file
permissions, and the token never written anywhere but the Authorization header."""

from __future__ import annotations

import json
import os
import re
import stat

from support import RecordingBackend, Reply, closed_port_url, failing_source, run, wait_error

INJECTED = (
    "\x1b]0;owned-title\x07 \x1b[2J\x1b[H \x1b[31mred\x1b[0m \x9b31m c1-csi \x9d0;osc\x9c "
    "\x1bPdcs\x1b\\ \r\nFAKE LINE\n\x08\x08\x7f tail"
)
# Trojan-Source style: bidi overrides/isolates and zero-width characters make the shown command differ
# from the one a person copies.
BIDI = "pip install \u202egnikcap\u202c==21.3 \u2066x\u2069 \u200bzero\u200dwidth \ufeff"
SECRETS = {
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "github": "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "slack": "xoxb-1234567890-abcdefghij",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "url": "https://bob:s3cr3tpw@db.example.com/x",
    "password": "password=hunter2xyz",
    "bearer": "Authorization: Bearer tok-very-secret-42",
}
# the part of each that must not leave the machine
SECRET_CORES = [
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "xoxb-1234567890-abcdefghij",
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "s3cr3tpw",
    "hunter2xyz",
    "tok-very-secret-42",
]


def _hint_block(venv311, sandbox, backend, text):
    backend.set_reply(
        "/suggest",
        Reply(
            200,
            {
                "match": True,
                "confidence": 0.99,
                "hint": "hint " + text,
                "solution": "pip install x " + text,
                "docs": text,
            },
        ),
    )
    script = sandbox.script("app.py", failing_source("boom-escape"))
    env = sandbox.env(backend.url)
    base = run(venv311.python, [script], dict(env, ERROR_AGENT_ENABLED="0"), cwd=sandbox.work)
    proc = run(venv311.python, [script], env, cwd=sandbox.work)
    assert proc.returncode == base.returncode and proc.stdout == base.stdout
    assert proc.stderr.startswith(base.stderr)
    block = proc.stderr[len(base.stderr) :].decode("utf-8")
    assert "[corp-error-agent] hint" in block and "fix:" in block, block
    return block


def test_escape_sequences_from_the_server_never_reach_the_terminal(venv311, sandbox, backend):
    block = _hint_block(venv311, sandbox, backend, INJECTED)
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", block), repr(block)
    assert len(block.strip("\n").split("\n")) == 4, repr(block)  # hint, fix, docs, confidence


def test_bidi_and_invisible_characters_from_the_server_are_removed(venv311, sandbox, backend):
    block = _hint_block(venv311, sandbox, backend, BIDI)
    assert not re.search(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]", block), repr(block)


def test_secrets_in_traces_and_allowed_env_values_never_leave(venv311, sandbox, backend):
    message = " | ".join(SECRETS.values())
    script = sandbox.script(
        "leak.py",
        (
            "db_url = %r\n"
            "def connect():\n"
            "    token = 'ghp_0123456789abcdefghijklmnopqrstuvwxyzAB'  # %s\n"
            "    raise ConnectionError(%r)\n"
            "connect()\n"
        )
        % (SECRETS["url"], SECRETS["aws"], message),
    )
    env_value = "x " + message
    env = sandbox.env(
        backend.url,
        {
            "ERROR_AGENT_ENV_ALLOW": "MY_SERVICE_CONFIG,HTTPS_PROXY",
            "MY_SERVICE_CONFIG": env_value,
            "HTTPS_PROXY": "http://proxyuser:pr0xyPassw0rd@proxy.corp:3128",
        },
    )
    proc = run(venv311.python, [script], env, cwd=sandbox.work)
    assert proc.returncode == 1
    wait_error(backend, "ConnectionError")
    backend.wait_for("/env")
    requests = backend.settle()
    wire = b"\n".join(r.body for r in requests)
    raw_text = wire.decode("utf-8")
    assert b"MY_SERVICE_CONFIG" in wire  # the allowed variable was sent, scrubbed
    for secret in SECRET_CORES + ["pr0xyPassw0rd"]:
        assert secret.encode() not in wire, secret
        assert json.dumps(secret)[1:-1] not in raw_text, secret
    for request in requests:
        assert "authorization" not in request.headers or not request.headers["authorization"].endswith(
            tuple(SECRET_CORES)
        )


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_file_permissions(venv311, sandbox):
    script = sandbox.script("app.py", failing_source("boom-perms"))
    env = dict(sandbox.env(closed_port_url()))
    proc = run(
        venv311.python,
        [
            "-c",
            "import os, runpy, sys; os.umask(0o022); sys.argv = [sys.argv[1]]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')",
            script,
        ],
        env,
        cwd=sandbox.work,
    )
    assert proc.returncode == 1
    configure = run(
        venv311.python,
        ["-m", "corp_error_agent", "configure", "--url", "http://127.0.0.1:9", "--token", "tok-file-perms-1234"],
        env,
        cwd=sandbox.work,
    )
    assert configure.returncode == 0, configure.stderr
    config = sandbox.config_home / "corp_error_agent" / "config.json"
    assert _mode(config) == 0o600
    assert _mode(sandbox.cache) == 0o700
    assert _mode(sandbox.cache / "spool") == 0o700
    assert _mode(sandbox.cache / "pending") == 0o700
    entries = sandbox.spool()
    assert entries and all(_mode(p) == 0o600 for p in entries)
    for path in sandbox.cache.rglob("*"):
        if path.is_file():
            assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))


def test_token_only_in_the_authorization_header(venv311, sandbox, tmp_path):
    token = "tok-NEVER-LOGGED-%s" % os.urandom(8).hex()
    from reliability.test_server_hostile import Server

    server = Server(tmp_path / "db.sqlite", env={"CORP_ERROR_SERVER_TOKEN": token})
    try:
        url = "http://%s:%d" % (server.host, server.port)
        env = sandbox.env(url, {"ERROR_AGENT_TOKEN": token})
        script = sandbox.script("app.py", failing_source("boom-token"))
        assert run(venv311.python, [script], env, cwd=sandbox.work).returncode == 1
        # backend down: the beacon waits in the spool, with no token in it
        assert (
            run(
                venv311.python, [script], sandbox.env(closed_port_url(), {"ERROR_AGENT_TOKEN": token}), cwd=sandbox.work
            ).returncode
            == 1
        )
        status = run(venv311.python, ["-m", "corp_error_agent", "status", "--json"], env, cwd=sandbox.work)
        assert token not in status.stdout.decode() and token not in status.stderr.decode()
        flush = run(venv311.python, ["-m", "corp_error_agent", "flush"], env, cwd=sandbox.work)
        assert flush.returncode == 0, flush.stdout + flush.stderr
        sandbox.reset_breakers()
        with RecordingBackend() as backend:
            run(venv311.python, [script], sandbox.env(backend.url, {"ERROR_AGENT_TOKEN": token}), cwd=sandbox.work)
            requests = backend.settle()
            assert requests and all(r.headers.get("authorization") == "Bearer " + token for r in requests)
            assert all(token.encode() not in r.body for r in requests)
        stored = server.target
        stored.token = token
        groups = json.loads(stored.send("GET", "/api/errors")[1])["groups"]
        assert sum(g["count"] for g in groups) == 2
        for group in groups:
            assert token not in stored.send("GET", "/api/errors/%d" % group["id"])[1].decode()
    finally:
        server.stop()
    assert token not in "".join(server.log)
    for path in list(sandbox.cache.rglob("*")) + list(sandbox.tmp.rglob("*.json")):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path

"""The command line (issue 4), each command as a subprocess against real venvs and the test backend."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.request

import pytest

from support import (
    AGENT_FILES,
    ROOT,
    WAIT_TIMEOUT,
    RecordingBackend,
    Reply,
    clean_env,
    closed_port_url,
    failing_source,
    pyenv_root,
    run,
    tree,
    wait_error,
)


def cli(venv, args, env, **kw):
    return run(venv.python, ["-m", "corp_error_agent"] + list(args), env, **kw)


def bare_copy(tmp_path):
    """Nothing but the one file, as on an air-gapped host."""
    directory = tmp_path / "bare"
    directory.mkdir(exist_ok=True)
    shutil.copy2(ROOT / "corp_error_agent.py", directory / "corp_error_agent.py")
    return directory / "corp_error_agent.py"


def test_install_from_bare_copy_then_uninstall(py, fresh_venv, backend, sandbox, tmp_path):
    venv = fresh_venv("none")
    before = tree(venv.path)
    agent_file = bare_copy(tmp_path)
    env = sandbox.env(backend.url)
    proc = run(venv.python, [agent_file, "install"], env, cwd=sandbox.work)
    assert proc.returncode == 0, proc.stderr
    for name in AGENT_FILES:
        assert (venv.site_packages / name).is_file(), name
    assert "corp_error_agent" in (venv.site_packages / "corp_error_agent.pth").read_text()
    assert (venv.site_packages / "corp_error_agent.start").read_text().strip().startswith("corp_error_agent:")
    pyc = venv.site_packages / "__pycache__" / ("corp_error_agent.cpython-3%d.pyc" % py.minor)
    assert pyc.is_file(), "install must byte-compile (PYTHONDONTWRITEBYTECODE is common in images)"
    installed = tree(venv.path)
    again = run(venv.python, [agent_file, "install"], env, cwd=sandbox.work)  # idempotent
    assert again.returncode == 0 and tree(venv.path) == installed

    script = sandbox.script("app.py", failing_source("boom-installed"))
    assert run(venv.python, [script], env, cwd=sandbox.work).returncode == 1
    wait_error(backend, "boom-installed")

    proc = cli(venv, ["uninstall"], env, cwd=sandbox.work)
    assert proc.returncode == 0, proc.stderr
    assert tree(venv.path) == before
    proc = run(venv.python, [script], env, cwd=sandbox.work)
    assert proc.returncode == 1
    assert len([r for r in backend.settle() if r.path == "/beacon"]) == 1  # gone: no new beacon


def test_install_into_target_dir(py, fresh_venv, sandbox, tmp_path):
    venv = fresh_venv("none")
    target = tmp_path / "image-site"
    target.mkdir()
    env = sandbox.env()
    proc = run(venv.python, [bare_copy(tmp_path), "install", "--target", target], env, cwd=sandbox.work)
    assert proc.returncode == 0, proc.stderr
    assert {n for n in AGENT_FILES} <= {p.name for p in target.iterdir()}
    assert str(target) in proc.stdout.decode()  # says where
    proc = run(venv.python, [bare_copy(tmp_path), "uninstall", "--target", target], env, cwd=sandbox.work)
    assert proc.returncode == 0, proc.stderr
    assert tree(target) == []


def _status(venv, env, returncode=0):
    proc = cli(venv, ["status", "--json"], env)
    assert proc.returncode == returncode, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_configure_precedence_env_user_system(fresh_venv, sandbox):
    venv = fresh_venv("copy")
    with RecordingBackend() as system_be, RecordingBackend() as user_be, RecordingBackend() as env_be:
        env = sandbox.env()
        del env["XDG_CONFIG_HOME"]  # the default ~/.config location
        script = sandbox.script("app.py", failing_source("boom-precedence"))

        proc = cli(venv, ["configure", "--scope", "system", "--url", system_be.url], env)
        assert proc.returncode == 0, proc.stderr
        system_file = venv.path / "etc" / "corp_error_agent" / "config.json"
        assert json.loads(system_file.read_text())["backend_url"] == system_be.url
        run(venv.python, [script], env, cwd=sandbox.work)
        wait_error(system_be, "boom-precedence")
        url = _status(venv, env)["settings"]["url"]
        assert (url["value"], "system" in url["source"]) == (system_be.url, True)

        proc = cli(venv, ["configure", "--url", user_be.url], env)
        assert proc.returncode == 0, proc.stderr
        user_file = sandbox.home / ".config" / "corp_error_agent" / "config.json"
        assert json.loads(user_file.read_text())["backend_url"] == user_be.url
        assert str(user_file) in proc.stdout.decode()  # says where
        run(venv.python, [script], env, cwd=sandbox.work)
        wait_error(user_be, "boom-precedence")
        url = _status(venv, env)["settings"]["url"]
        assert (url["value"], "user" in url["source"]) == (user_be.url, True)

        env["ERROR_AGENT_URL"] = env_be.url
        run(venv.python, [script], env, cwd=sandbox.work)
        wait_error(env_be, "boom-precedence")
        url = _status(venv, env)["settings"]["url"]
        assert (url["value"], "env" in url["source"]) == (env_be.url, True)

        assert len([r for r in system_be.settle() if r.path == "/beacon"]) == 1
        assert len([r for r in user_be.settle() if r.path == "/beacon"]) == 1


def test_configure_user_honours_xdg_keeps_unknown_keys_and_protects_token(fresh_venv, backend, sandbox):
    venv = fresh_venv("copy")
    env = sandbox.env()
    user_file = sandbox.config_home / "corp_error_agent" / "config.json"
    user_file.parent.mkdir(parents=True)
    user_file.write_text(json.dumps({"backend_url": "http://old.example:1", "team": "payments"}))
    proc = cli(venv, ["configure", "--url", backend.url, "--token", "tok-in-file"], env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(user_file.read_text())
    assert data["team"] == "payments" and data["backend_url"] == backend.url and data["token"] == "tok-in-file"
    assert stat.S_IMODE(os.stat(user_file).st_mode) == 0o600
    script = sandbox.script("app.py", failing_source("boom-token-file"))
    run(venv.python, [script], env, cwd=sandbox.work)
    [req] = backend.wait_for("/beacon")
    assert req.headers.get("authorization") == "Bearer tok-in-file"


def test_configure_system_scope_in_venv(fresh_venv, sandbox, tmp_path):
    venv = fresh_venv("copy")
    env = sandbox.env()
    proc = cli(
        venv,
        [
            "configure",
            "--scope",
            "system",
            "--url",
            "http://errors.corp.example:8000",
            "--no-hints",
            "--min-confidence",
            "0.75",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr
    system_file = venv.path / "etc" / "corp_error_agent" / "config.json"
    data = json.loads(system_file.read_text())
    assert data["backend_url"] == "http://errors.corp.example:8000"
    assert not (sandbox.config_home / "corp_error_agent").exists()
    other_home = tmp_path / "someone-else"
    other_home.mkdir()
    other = dict(env, HOME=str(other_home), XDG_CONFIG_HOME=str(other_home / ".config"))
    settings = _status(venv, other, returncode=1)["settings"]  # 1: errors.corp.example does not resolve
    assert settings["url"]["value"] == "http://errors.corp.example:8000"
    assert settings["hints"]["value"] is False
    assert settings["min_confidence"] == {"value": 0.75, "source": "system file"}


def test_flush_after_backend_comes_back(agent_venv, backend, sandbox):
    script = sandbox.script("app.py", failing_source("boom-flush"))
    run(agent_venv.python, [script], sandbox.env(closed_port_url()), cwd=sandbox.work)
    assert len(sandbox.spool()) == 1
    down = cli(agent_venv, ["flush", "--json"], sandbox.env(closed_port_url()))
    assert down.returncode != 0
    assert json.loads(down.stdout)["remaining"] == 1
    up = cli(agent_venv, ["flush", "--json"], sandbox.env(backend.url))
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    assert (result["delivered"], result["remaining"]) == (1, 0)
    wait_error(backend, "boom-flush")
    assert sandbox.spool() == []


def test_status_json_fields(agent_venv, backend, sandbox):
    data = _status(agent_venv, sandbox.env(backend.url, {"ERROR_AGENT_MIN_CONFIDENCE": "0.8"}))
    settings = data["settings"]
    assert settings["url"]["value"] == backend.url and "env" in settings["url"]["source"]
    assert settings["min_confidence"]["value"] == 0.8
    assert settings["hints"]["source"] == "default"
    assert any(p.endswith("corp_error_agent.pth") for p in data["hook"]["installed"])
    assert data["hook"]["active"] is True
    assert data["spool"]["count"] == 0
    assert data["backend"]["reachable"] is True and data["backend"]["token_refused"] is False


def test_status_says_when_the_backend_refuses_the_token(agent_venv, backend, sandbox):
    # /healthz answers without a token; the reports would not: status must not look healthy
    backend.set_reply("/suggest", Reply(401, {"error": "missing or wrong bearer token"}))
    env = sandbox.env(backend.url, {"ERROR_AGENT_TOKEN": "tok-wrong", "ERROR_AGENT_MIN_CONFIDENCE": "abc"})
    proc = cli(agent_venv, ["status", "--json"], env)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["backend"]["token_refused"] is True and data["ok"] is False
    assert data["settings"]["min_confidence"]["value"] == 0.6
    assert "not a number" in data["settings"]["min_confidence"]["source"]
    text = cli(agent_venv, ["status"], env).stdout.decode()
    assert "the backend refuses the token: every report would be dropped" in text


def test_status_says_a_config_file_is_ignored(agent_venv, backend, sandbox):
    """A truncated config file falls back to the defaults at every event: status must not look healthy."""
    config = sandbox.config_home / "corp_error_agent" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"backend_url": ')
    proc = cli(agent_venv, ["status"], sandbox.env(backend.url))
    assert proc.returncode == 1, proc.stdout
    problem = "%s is not valid JSON (line 1, column 17: Expecting value) (ignored)" % config
    assert "config:         PROBLEM: " + problem in proc.stdout.decode()
    data = json.loads(cli(agent_venv, ["status", "--json"], sandbox.env(backend.url)).stdout)
    assert data["ok"] is False and data["config_problems"] == [problem]


def test_status_fails_in_words_when_nothing_listens(agent_venv, sandbox):
    url = closed_port_url()
    proc = cli(agent_venv, ["status"], sandbox.env(url))
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert (
        "PROBLEM: unreachable: nothing listens at %s (connection refused)" % url[len("http://") :]
        in proc.stdout.decode()
    )


@pytest.fixture
def other_web_server(tmp_path):
    """Some web server that is not a backend: `python -m http.server` (GET answers 404, POST 501)."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        port = re.search(r"port (\d+)", line).group(1)
        yield "http://127.0.0.1:%s" % port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_status_and_test_say_a_url_is_some_other_web_server(agent_venv, sandbox, other_web_server):
    env = sandbox.env(other_web_server)
    status = cli(agent_venv, ["status"], env)
    assert status.returncode == 1
    text = status.stdout.decode()
    assert (
        "PROBLEM: not a corp-error-agent backend: GET /healthz answered HTTP 404 and POST /suggest HTTP 501 "
        "(check the URL)"
        in text
        and "answers (HTTP" not in text
    )
    test = cli(agent_venv, ["test"], env)
    assert test.returncode == 1
    assert (
        "HTTP 501: the server does not implement POST /beacon: not a corp-error-agent backend (check the URL)"
        in test.stdout.decode()
    )


def test_status_probes_the_token_of_the_real_server_without_an_error_in_its_log(agent_venv, sandbox, tmp_path):
    env = clean_env({"PYTHONPATH": str(ROOT), "ERROR_AGENT_ENABLED": "0", "CORP_ERROR_SERVER_TOKEN": "tok-right"})
    server = subprocess.Popen(
        [sys.executable, "-m", "corp_error_server", "--port", "0", "--db", str(tmp_path / "db")],
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = server.stderr.readline()
        assert line.startswith("listening on http://"), line
        url = line.split()[-1]
        good = cli(agent_venv, ["status", "--json"], sandbox.env(url, {"ERROR_AGENT_TOKEN": "tok-right"}))
        assert good.returncode == 0, good.stdout
        assert json.loads(good.stdout)["backend"]["server"].startswith("corp-error-server")
        bad = cli(agent_venv, ["status"], sandbox.env(url, {"ERROR_AGENT_TOKEN": "tok-wrong"}))
        assert bad.returncode == 1 and "HTTP 401: the backend refuses the token" in bad.stdout.decode()
        none = cli(agent_venv, ["status"], sandbox.env(url))
        assert none.returncode == 1 and "HTTP 401: the backend wants a token" in none.stdout.decode()
        with urllib.request.urlopen(url + "/healthz", timeout=WAIT_TIMEOUT) as response:  # after the last probe
            assert response.status == 200
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[1].splitlines()
    suggests = [line for line in log if '"POST /suggest"' in line]
    assert [line.split('"')[2].split()[0] for line in suggests] == ["200", "401", "401"], log


def test_status_does_not_show_token(agent_venv, backend, sandbox):
    proc = cli(agent_venv, ["status", "--json"], sandbox.env(backend.url, {"ERROR_AGENT_TOKEN": "tok-hidden-77"}))
    assert proc.returncode == 0 and b"tok-hidden-77" not in proc.stdout + proc.stderr


def test_test_command(agent_venv, backend, sandbox):
    proc = cli(agent_venv, ["test"], sandbox.env(backend.url))
    assert proc.returncode == 0, proc.stderr
    [beacon] = backend.wait_for("/beacon", where=lambda b: b.get("test") is True)
    backend.wait_for("/suggest")
    status = json.loads(cli(agent_venv, ["status", "--json"], sandbox.env(backend.url)).stdout)
    assert status["last_delivery"]["url"] == backend.url and status["last_delivery"]["status"] == 204
    down = cli(agent_venv, ["test"], sandbox.env(closed_port_url()))
    assert down.returncode != 0


BAD_USAGE = {
    "scheme": ["configure", "--url", "ftp://example.com"],
    "no-host": ["configure", "--url", "http://"],
    "scope": ["configure", "--url", "http://x.example", "--scope", "galaxy"],
    "min-confidence": ["configure", "--min-confidence", "abc"],
    "target-not-dir": ["install", "--target", "{file}"],
    "unknown-command": ["frobnicate"],
    "no-command": [],
    "unknown-option": ["status", "--bogus"],
    "enable-and-disable": ["configure", "--enable", "--disable"],
    "hints-and-no-hints": ["configure", "--hints", "--no-hints"],
    "min-confidence-range": ["configure", "--min-confidence", "1.5"],
    "nothing-to-configure": ["configure", "--scope", "system"],
}


@pytest.mark.parametrize("case", sorted(BAD_USAGE))
def test_bad_usage_exit_2_one_line(agent_venv, sandbox, case):
    a_file = sandbox.script("not-a-dir.txt", "x")
    args = [a.replace("{file}", str(a_file)) for a in BAD_USAGE[case]]
    proc = cli(agent_venv, args, sandbox.env())
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not (sandbox.config_home / "corp_error_agent").exists()


def test_snapshot_is_what_an_error_sends(py, agent_venv, backend, sandbox):
    env = sandbox.env(backend.url)
    proc = cli(agent_venv, ["snapshot", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    assert re.fullmatch(r"[0-9a-f]{1,12}", snap["env_hash"])
    assert "corp-error-agent==0.5.0" in snap["packages"]
    assert snap["python_ver"] == py.full_version
    script = sandbox.script("app.py", failing_source("boom-snapshot"))
    run(agent_venv.python, [script], env, cwd=sandbox.work)
    [beacon] = wait_error(backend, "boom-snapshot")
    assert beacon["env_hash"] == snap["env_hash"]
    assert backend.wait_for("/env")[0].json == snap


def test_entry_points_agree(agent_venv, sandbox, tmp_path):
    env = sandbox.env("http://127.0.0.1:9")
    outputs = [
        cli(agent_venv, ["snapshot", "--json"], env),
        run(agent_venv.python, [agent_venv.bin / "corp-error-agent", "snapshot", "--json"], env),
        run(agent_venv.python, [bare_copy(tmp_path), "snapshot", "--json"], env),
    ]
    for proc in outputs:
        assert proc.returncode == 0, proc.stderr
    assert json.loads(outputs[0].stdout) == json.loads(outputs[1].stdout) == json.loads(outputs[2].stdout)
    for command in ("configure", "status", "test", "flush", "snapshot", "install", "uninstall"):
        proc = cli(agent_venv, [command, "--help"], env)
        assert proc.returncode == 0 and b"usage" in proc.stdout.lower(), command


def _one_line_failure(proc, words: str) -> None:
    """Exit status 1 and the reason on one line of stderr, no traceback."""
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and words in lines[0], (proc.stdout, proc.stderr)


def test_configure_leaves_a_config_file_that_is_not_an_object_alone(agent_venv, sandbox):
    user_file = sandbox.config_home / "corp_error_agent" / "config.json"
    user_file.parent.mkdir(parents=True)
    user_file.write_text('["http://127.0.0.1:1"]')
    proc = cli(agent_venv, ["configure", "--url", "http://errors.example"], sandbox.env())
    _one_line_failure(proc, "%s is not a JSON object; fix or remove it first" % user_file)
    assert user_file.read_text() == '["http://127.0.0.1:1"]'


def test_configure_refuses_a_url_no_client_can_use_and_test_says_why_a_set_one_fails(agent_venv, sandbox):
    refused = {
        "errors.example": "expected http(s)://host[:port]",
        "http://a b": "a URL has no spaces or control characters",
        "http://errors.example:99999": "the port must be a number from 1 to 65535",
        "http://errors.example:0": "the port must be a number from 1 to 65535",
        "http://[::1": "expected http(s)://host[:port]",
    }
    for url, words in refused.items():
        proc = cli(agent_venv, ["configure", "--url", url], sandbox.env())
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].endswith(": " + words), (url, lines)
    assert not (sandbox.config_home / "corp_error_agent").exists()
    env = dict(sandbox.env(), ERROR_AGENT_URL="errors.example")  # set by hand, not by configure
    proc = cli(agent_venv, ["test"], env)
    assert proc.returncode == 1
    assert "errors.example is not a backend URL: expected http(s)://host[:port]" in proc.stdout.decode()


def test_configure_says_where_a_config_file_is_not_json(agent_venv, sandbox):
    user_file = sandbox.config_home / "corp_error_agent" / "config.json"
    user_file.parent.mkdir(parents=True)
    user_file.write_text('{"hints": nope}')
    proc = cli(agent_venv, ["configure", "--no-hints"], sandbox.env())
    _one_line_failure(proc, "%s is not valid JSON (line 1, column 11: Expecting value)" % user_file)
    assert user_file.read_text() == '{"hints": nope}'


def test_configure_token_empty_removes_the_token(agent_venv, sandbox):
    user_file = sandbox.config_home / "corp_error_agent" / "config.json"
    assert cli(agent_venv, ["configure", "--token", "s3cret", "--no-hints"], sandbox.env()).returncode == 0
    proc = cli(agent_venv, ["configure", "--token", ""], sandbox.env())
    assert proc.returncode == 0 and proc.stdout.decode().endswith("(token removed)\n")
    assert json.loads(user_file.read_text()) == {"hints": False}


def test_configure_says_why_it_cannot_write(agent_venv, sandbox):
    (sandbox.config_home / "corp_error_agent").write_text("a file where the directory goes")
    proc = cli(agent_venv, ["configure", "--no-hints"], sandbox.env())
    _one_line_failure(proc, "cannot write %s" % (sandbox.config_home / "corp_error_agent" / "config.json"))


def test_uninstall_leaves_an_agent_pip_installed_to_pip(agent_venv, sandbox):
    before = tree(agent_venv.site_packages)
    proc = cli(agent_venv, ["uninstall"], sandbox.env())
    _one_line_failure(proc, "was installed by pip: run pip uninstall corp-error-agent")
    assert tree(agent_venv.site_packages) == before


@pytest.fixture
def old_pythons():
    """The newest CPython 3.6 and 3.7 under pyenv: the bare file reaches them, pip would not."""
    found = [sorted((pyenv_root() / "versions").glob("3.%d.*/bin/python" % minor)) for minor in (6, 7)]
    if not any(found):
        pytest.skip("no CPython 3.6 or 3.7 under %s/versions" % pyenv_root())
    return [paths[-1] for paths in found if paths]


@pytest.mark.parametrize("command", ["install", "status", "snapshot"])
def test_a_python_older_than_3_8_gets_one_line_and_exit_2(sandbox, tmp_path, old_pythons, command):
    target = tmp_path / "site"
    target.mkdir()
    for old in old_pythons:
        args = [command, "--target", str(target)] if command == "install" else [command]
        proc = run(old, [str(bare_copy(tmp_path))] + args, sandbox.env())
        lines = proc.stderr.decode().splitlines()
        version = old.parent.parent.name
        assert proc.returncode == 2 and proc.stdout == b"", (old, proc)
        assert lines == ["corp-error-agent: error: the agent needs Python 3.8 or newer; this is %s" % version]
    assert list(target.iterdir()) == []


def test_a_python_older_than_3_8_starts_with_no_hook_of_the_agent(sandbox, tmp_path, old_pythons):
    """A .pth line of a shared site directory reaches every interpreter that reads it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in AGENT_FILES:
        shutil.copy2(ROOT / name, shared / name)
    probe = "import site, sys; site.addsitedir(%r); print(sys.excepthook is sys.__excepthook__); raise ValueError(1)"
    for old in old_pythons:
        proc = run(old, ["-c", probe % str(shared)], sandbox.env())
        assert proc.returncode == 1 and proc.stdout == b"True\n", (old, proc)
        assert proc.stderr.decode().splitlines()[-1] == "ValueError: 1"
        assert sandbox.spool() == []


def test_install_for_the_user_is_refused_in_a_venv(agent_venv, sandbox):
    proc = cli(agent_venv, ["install", "--user"], sandbox.env())
    _one_line_failure(proc, "the user site-packages is disabled for this interpreter (a venv?); use --target")
    assert not (sandbox.home / ".local").exists()


def test_an_installed_agent_installs_itself_elsewhere_and_over_itself(py, copy_venv, backend, sandbox, tmp_path):
    target = tmp_path / "image-site"
    target.mkdir()
    env = sandbox.env(backend.url)
    proc = cli(copy_venv, ["install", "--target", target], env)
    assert proc.returncode == 0, proc.stderr
    assert (target / "corp_error_agent.py").read_bytes() == (ROOT / "corp_error_agent.py").read_bytes()
    assert (target / "__pycache__" / ("corp_error_agent.cpython-3%d.pyc" % py.minor)).is_file()
    # into its own site-packages: the module is the file running, left as it is; the hook files rewritten
    (copy_venv.site_packages / "corp_error_agent.pth").write_text("# damaged\n")
    proc = cli(copy_venv, ["install"], env)
    assert proc.returncode == 0, proc.stderr
    assert (copy_venv.site_packages / "corp_error_agent.pth").read_text() == (ROOT / "corp_error_agent.pth").read_text()
    script = sandbox.script("app.py", failing_source("boom-reinstalled"))
    assert run(copy_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    wait_error(backend, "boom-reinstalled")
    proc = cli(copy_venv, ["uninstall", "--target", target], env)
    assert proc.returncode == 0, proc.stderr
    assert tree(target) == []
    proc = cli(copy_venv, ["uninstall", "--target", target], env)
    assert proc.returncode == 0 and b"nothing: not installed in" in proc.stdout


def test_install_and_uninstall_say_what_is_in_the_way(agent_venv, sandbox, tmp_path):
    target = tmp_path / "site"
    (target / "corp_error_agent.py").mkdir(parents=True)  # a directory where the module goes
    proc = cli(agent_venv, ["install", "--target", target], sandbox.env())
    _one_line_failure(proc, "cannot install into %s: Is a directory" % target)
    proc = cli(agent_venv, ["uninstall", "--target", target], sandbox.env())
    _one_line_failure(proc, "cannot uninstall from %s: Is a directory" % target)
    assert (target / "corp_error_agent.py").is_dir()


def test_test_command_says_why_the_backend_refused(agent_venv, backend, sandbox):
    backend.set_reply("/beacon", Reply(413, {"error": "body over 1000000 bytes"}))
    backend.set_reply("/suggest", Reply(200, body=b"<html>\x1b[2J not json</html>"))
    env = sandbox.env(backend.url)
    proc = cli(agent_venv, ["test", "--json"], env)
    assert proc.returncode == 1, proc.stderr
    results = json.loads(proc.stdout)
    assert results["beacon"]["error"] == "HTTP 413: POST /beacon is over the backend's size limit"
    assert results["beacon"]["answer"] == {"error": "body over 1000000 bytes"}
    assert results["suggest"]["ok"] is True and results["suggest"]["answer"] == "<html> not json</html>"
    text = cli(agent_venv, ["test"], env).stdout.decode()
    assert 'HTTP 413: POST /beacon is over the backend\'s size limit {"error": "body over 1000000 bytes"}' in text
    backend.set_reply("/beacon", Reply(418, {}))
    proc = cli(agent_venv, ["test", "--json"], env)
    assert json.loads(proc.stdout)["beacon"]["error"] == "HTTP 418"
    backend.set_fault("500")
    proc = cli(agent_venv, ["test", "--json"], env)
    results = json.loads(proc.stdout)
    assert results["beacon"] == dict(
        results["beacon"],
        ok=False,
        status=500,
        error=("HTTP 500: the backend failed to answer POST /beacon: reports wait in the spool"),
    )


def test_status_names_a_server_that_fails_the_probe(agent_venv, backend, sandbox):
    backend.set_reply("/healthz", Reply(200, {"ok": True, "schema_version": 7}))
    backend.set_fault("500", paths=["/suggest"])
    data = _status(agent_venv, sandbox.env(backend.url), returncode=1)
    assert data["backend"]["server"] == "corp-error-server (schema 7)"
    assert (
        data["backend"]["problem"] == "HTTP 500: the backend failed to answer POST /suggest: reports wait in the spool"
    )


def test_status_takes_a_backend_without_healthz_for_the_published_server(agent_venv, backend, sandbox):
    backend.set_fault("garbage", paths=["/healthz"])  # some page, not our server's JSON; /suggest answers
    data = _status(agent_venv, sandbox.env(backend.url))
    assert data["ok"] is True
    assert data["backend"]["server"] == "a backend without /healthz (the published 0.4.2 Django server?)"


@pytest.fixture
def not_http_server():
    """A server of another protocol (SSH, say): it greets every connection with a banner and hangs up."""
    server = socket.create_server(("127.0.0.1", 0))

    def greet():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    yield "127.0.0.1:%d" % server.getsockname()[1]
    server.close()
    thread.join(timeout=10)


def test_status_says_a_server_of_another_protocol_does_not_answer_in_http(agent_venv, sandbox, not_http_server):
    proc = cli(agent_venv, ["status"], sandbox.env("http://" + not_http_server))
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert "PROBLEM: unreachable: %s did not answer in HTTP (BadStatusLine)" % not_http_server in proc.stdout.decode()


@pytest.mark.parametrize("failure", ["tls", "silent"])
def test_status_says_in_words_why_a_backend_gives_no_answer(agent_venv, backend, sandbox, failure):
    where = "127.0.0.1:%d" % backend.port
    url = ("https://" if failure == "tls" else "http://") + where
    if failure != "tls":
        backend.set_fault(failure)
    proc = cli(agent_venv, ["status"], sandbox.env(url))
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    problem = proc.stdout.decode().split("PROBLEM: ")[1]
    assert problem.startswith(
        {
            "tls": "unreachable: TLS with %s failed: " % where,
            "silent": "unreachable: no answer from %s within 5s" % where,
        }[failure]
    ), problem


def test_status_shows_the_breaker_and_closes_it_once_the_backend_answers(agent_venv, backend, sandbox):
    env = sandbox.env(backend.url)
    script = sandbox.script("app.py", failing_source("boom-status-breaker"))
    backend.set_fault("500")
    assert run(agent_venv.python, [script], env, cwd=sandbox.work).returncode == 1
    [breaker] = sandbox.breakers()
    proc = cli(agent_venv, ["status"], env)
    assert proc.returncode == 1
    assert re.search(r"breaker: +open until \S+ \S+ after HTTP 500: errors are spooled, not sent", proc.stdout.decode())
    assert breaker.exists()
    backend.set_fault(None)
    proc = cli(agent_venv, ["status"], env)
    assert proc.returncode == 0, proc.stdout
    assert "breaker:        closed: the backend answers again (it opened after HTTP 500)" in proc.stdout.decode()
    assert sandbox.breakers() == []


def test_ctrl_c_ends_a_command_waiting_on_the_backend(agent_venv, backend, sandbox):
    backend.set_fault("silent")
    proc = subprocess.Popen(
        [str(agent_venv.python), "-m", "corp_error_agent", "status"],
        env=sandbox.env(backend.url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        backend.wait_for("/healthz")  # the command waits for the answer now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out, err) == (130, b"", b"")

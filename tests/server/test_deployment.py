"""The deployment files under deploy/ and the commands in docs/deployment.md match the real CLIs."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from corp_error_server import DEFAULT_MAX_BODY
from corp_error_server.__main__ import _parser
from gunicorn_support import gunicorn_python
from support import ROOT

DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "deployment.md"


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((DEPLOY / name).read_text())
    assert {"Unit", "Service", "Install"} <= set(unit.sections()), name
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    return unit


def _exec_start(name: str) -> list:
    argv = shlex.split(_unit(name)["Service"]["ExecStart"])
    assert os.path.isabs(argv[0])
    return argv


def _doc_commands(program: str) -> list:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith(program + " ")]


def test_the_embedded_server_unit_runs_a_valid_command_on_its_state_directory():
    unit = _unit("corp-error-server.service")
    argv = _exec_start("corp-error-server.service")
    assert Path(argv[0]).name == "corp-error-server"
    args = _parser().parse_args(argv[1:])  # an unknown option would exit here
    assert args.db.startswith("/var/lib/%s/" % unit["Service"]["StateDirectory"])
    assert args.host == "127.0.0.1"


def test_the_documented_server_commands_parse():
    commands = _doc_commands("corp-error-server")
    assert commands
    for argv in commands:
        if argv[1:2] and not argv[1].startswith("-"):  # a subcommand: it must exist and take these options
            result = subprocess.run(
                ["python3", "-m", "corp_error_server", *argv[1:], "--help"],
                cwd=str(ROOT),
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, (argv, result.stderr)
        else:
            _parser().parse_args(argv[1:])
    assert _exec_start("corp-error-server.service")[1:] in [a[1:] for a in commands]  # the doc shows the unit's


def test_the_gunicorn_unit_is_a_valid_gunicorn_command_for_the_app(tmp_path):
    argv = _exec_start("corp-error-server-gunicorn.service")
    assert Path(argv[0]).name == "gunicorn" and argv[-1] == "corp_error_server:app"
    assert argv[1:] in [a[1:] for a in _doc_commands("gunicorn")]  # the doc shows the unit's command
    # gunicorn itself checks every option and imports the app (which opens no database until a request)
    check = subprocess.run(
        [str(gunicorn_python()), "-m", "gunicorn", "--check-config", *argv[1:]],
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=str(ROOT), CORP_ERROR_SERVER_DB=str(tmp_path / "x.db")),
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("unit", ["corp-error-server.service", "corp-error-server-gunicorn.service"])
def test_nginx_proxies_to_where_the_units_listen(unit):
    conf = (DEPLOY / "nginx-corp-error-server.conf").read_text()
    code = re.sub(r"#.*", "", conf)
    assert code.count("{") == code.count("}")
    assert all(line.strip().endswith((";", "{", "}")) for line in code.splitlines() if line.strip())
    upstream = re.search(r"upstream (\w+) \{(.*?)\}", code, re.S)
    assert "proxy_pass http://%s;" % upstream.group(1) in code
    backend = re.search(r"server ([\d.]+:\d+);", upstream.group(2)).group(1)
    argv = _exec_start(unit)
    if "--bind" in argv:
        assert argv[argv.index("--bind") + 1] == backend
    else:
        args = _parser().parse_args(argv[1:])
        assert "%s:%d" % (args.host, args.port) == backend
    size = re.search(r"client_max_body_size (\d+)m;", code).group(1)
    assert int(size) * 1024 * 1024 == DEFAULT_MAX_BODY


def test_the_documented_wheel_is_the_one_this_repo_builds():
    # PyPI's corp-error-agent is the 0.4.2 client: an install command naming another wheel installs no server
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    documents = [ROOT / "README.md", DOC, ROOT / "docs" / "storage.md", *sorted(DEPLOY.glob("*.service"))]
    named = {name for path in documents for name in re.findall(r"corp_error_agent-[^\s\"`\[]+\.whl", path.read_text())}
    assert named == {"corp_error_agent-%s-py3-none-any.whl" % version}
    for path in documents:
        assert not re.search(r"pip install \"?corp-error-agent\b", path.read_text()), path

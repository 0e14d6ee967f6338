"""The published corp-error-agent 0.4.2 client, from the registry, talking to this server.

Wheels are cached under the repository's .cache/ (gitignored); from nothing the test downloads
them. It is skipped, saying why, only when the package index cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

import corp_error_agent
from conftest import REPO, env_body, error_beacon

CACHE = REPO / ".cache" / "compat-0.4.2"
WHEELS = CACHE / "wheels"
OUR_SIG = "AttributeError: module 'requests' has no attribute 'LegacyAPI' @ __main__.<module>"
SCRIPT = "import os, requests\nif os.environ.get('BROKEN'):\n    requests.LegacyAPI\n"
# what our agent sends for the same script on another machine: the trace names the file (job.py)
OUR_TRACE = (
    "Traceback (most recent call last):\n  File \"~/work/job.py\", line 3, in <module>\n"
    "    requests.LegacyAPI\n" + OUR_SIG.split(" @ ")[0] + "\n"
)


def _pip(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "-q", *args], capture_output=True, text=True, timeout=300
    )


def _index_reachable() -> str:
    try:
        urllib.request.urlopen("https://pypi.org/simple/corp-error-agent/", timeout=10).close()
        return ""
    except OSError as error:
        return str(error)


@pytest.fixture(scope="module")
def old_client(tmp_path_factory) -> str:
    venv = tmp_path_factory.mktemp("venv042")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    spec = "corp-error-agent==0.4.2"
    if _pip(python, "install", "--no-index", "--find-links", str(WHEELS), spec).returncode != 0:
        unreachable = _index_reachable()
        if unreachable:
            print("skipping: package index unreachable: " + unreachable)
            pytest.skip("package index unreachable: " + unreachable)
        WHEELS.mkdir(parents=True, exist_ok=True)
        download = _pip(python, "download", "-d", str(WHEELS), spec)
        assert download.returncode == 0, download.stderr
        install = _pip(python, "install", "--no-index", "--find-links", str(WHEELS), spec)
        assert install.returncode == 0, install.stderr
    return python


def _version(python: str, module: str) -> str:
    # (not with ERROR_AGENT_ENABLED=0: the 0.4.2 client then calls sys.exit(0) inside site.py, fatally)
    return subprocess.run(
        [python, "-c", "import %s; print(%s.__version__)" % (module, module)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=os.path.dirname(python),
    ).stdout.strip()  # away from this repo's agent module


def _run(python: str, tmp_path, url: str, broken: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERROR_AGENT_", "PYTHON"))}
    env.update(
        ERROR_AGENT_URL=url,
        ERROR_AGENT_SUGGEST_TIMEOUT="10",
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    if broken:
        env["BROKEN"] = "1"
    return subprocess.run(
        [python, str(tmp_path / "job.py")], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120
    )


def _group(server) -> dict:
    groups = server.request("GET", "/api/errors")[1]["groups"]
    assert len(groups) == 1, groups
    return groups[0]


def _wait(server, predicate) -> dict:
    deadline = time.monotonic() + 30
    while True:
        group = _group(server)
        if predicate(group) or time.monotonic() > deadline:
            return group


def test_old_client_groups_with_our_agent_and_gets_the_fix_it_observed(old_client, server, tmp_path):
    requests_version = _version(old_client, "requests")
    # our agents on other machines hit the same bug and observed three fixes: requests 2.0.0 works
    for i in range(3):
        before, after = "before%d" % i, "after%d" % i
        server.request("POST", "/env", env_body(before, {"requests": requests_version, "urllib3": "2.%d.0" % i}))
        server.request("POST", "/env", env_body(after, {"requests": "2.0.0", "urllib3": "2.%d.0" % i}))
        server.request("POST", "/beacon", error_beacon(before, "ours%d" % i, OUR_SIG, trace=OUR_TRACE))
        server.request(
            "POST",
            "/beacon",
            {
                "kind": "success",
                "env_hash": after,
                "script_id": "ours%d" % i,
                "ts": time.time(),
                "prev_env_hash": before,
                "prev_error_sig": OUR_SIG,
            },
        )
    (tmp_path / "job.py").write_text(SCRIPT)

    first = _run(old_client, tmp_path, server.url, broken=True)
    assert first.returncode == 1 and "AttributeError" in first.stderr
    group = _wait(server, lambda g: g["count"] == 4 and g["failing_runs"] == 4)
    assert group["group_key"] == corp_error_agent.group_key(OUR_SIG)
    assert (group["count"], group["failing_runs"]) == (4, 4), "the 0.4.2 beacon and its /env must both arrive"
    detail = server.request("GET", "/api/errors/%d" % group["id"])[1]
    old_env = detail["recent"][0]["env_hash"]
    assert len(old_env) == 12 and detail["recent"][0]["error_sig"].startswith("attributeerror:")

    # its environment is known now: the next failure gets the hint learned from our agents' fixes
    second = _run(old_client, tmp_path, server.url, broken=True)
    assert second.returncode == 1
    assert "requests %s -> 2.0.0" % requests_version in second.stderr, second.stderr
    answer = server.request("POST", "/suggest", {"error_sig": detail["recent"][0]["error_sig"], "env_hash": old_env})[1]
    assert answer["match"] and answer["solution"] == 'pip install "requests==2.0.0"', json.dumps(answer)

    # a clean run: 0.4.2 posts its success beacon from a thread started in atexit, which the
    # interpreter no longer waits for, so it rarely arrives; what it would send counts for the group
    clean = _run(old_client, tmp_path, server.url, broken=False)
    assert clean.returncode == 0, clean.stderr
    script_id = detail["recent"][0]["script_id"]
    status = server.request(
        "POST", "/beacon", {"kind": "success", "env_hash": old_env, "script_id": script_id, "ts": time.time()}
    )[0]
    assert status == 200
    assert _group(server)["succeeding_runs"] >= 4

"""The dashboard in a real Chromium (Playwright), against a real server fed by real agent runs.

Two venvs that differ only in a made-up library (tinylib 2.0 removed the function a script calls),
the agent copied into both, the reference server as a subprocess. The browser walks list -> group
-> environment diff -> resolve, a new failure makes the group regressed; a script with a hostile
name raising a hostile message is shown as text and runs nothing; no request leaves the server's
origin; the fleet page names this machine, as the agent sent its host name. Screenshots are kept
under .cache/artifacts/dashboard/.
"""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path

import pytest

import support
from corp_error_server import demo
from e2e.server_proc import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = support.CACHE / "artifacts" / "dashboard"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
HOSTILE_MESSAGE = (
    '<script>window.pwned = 1; alert(1)</script>"\'><img src=x onerror="window.pwned = 2; alert(2)">'
    ' <a href="javascript:alert(3)">click</a>'
)
HOSTILE_NAME = 'evil"\'><svg onload=alert(4)>.py'
FIX = 'pip install "tinylib==1.0"'


def _browser_or_skip():
    if not CHROMIUM.exists():
        pytest.skip("no Chromium at %s (apt-get install chromium)" % CHROMIUM)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed in the tooling venv")
    return sync_playwright


def _venv(py, path: Path, version: str) -> support.Venv:
    """A venv with the agent files copied in and tinylib ``version`` unpacked (a pure wheel is a zip)."""
    venv = support.make_venv(py.exe, path, py.version, "copy")
    with zipfile.ZipFile(demo.build_wheel(path.parent, version)) as wheel:
        wheel.extractall(str(venv.site_packages))
    return venv


def _run(venv: support.Venv, script: Path, env: dict, status: int) -> None:
    proc = support.run(venv.python, [script], env, cwd=script.parent)
    assert proc.returncode == status, proc.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("py", ["3.11"], indirect=True)
def test_list_group_diff_resolve_regression_and_hostile_traces(py, tmp_path, sandbox):
    sync_playwright = _browser_or_skip()
    new = _venv(py, tmp_path / "new" / "venv", demo.NEW)
    old = _venv(py, tmp_path / "old" / "venv", demo.OLD)
    server = ServerProcess(tmp_path / "errors.db")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        env = sandbox.env(server.url)
        report = sandbox.script("report.py", demo.SCRIPT)
        _run(new, report, env, 1)  # fails with tinylib 2.0
        server.wait_group("tinylib", lambda g: g["failing_runs"] >= 1)
        _run(old, report, env, 0)  # runs clean with 1.0: an observed fix
        server.wait_group("tinylib", lambda g: g["succeeding_runs"] >= 1 and g["suggestion"]["match"])
        hostile = sandbox.script(HOSTILE_NAME, "raise ValueError(%r)\n" % HOSTILE_MESSAGE)
        _run(new, hostile, env, 1)
        server.wait_group("valueerror", lambda g: g["count"] >= 1)

        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=ARGS,
                viewport={"width": 1360, "height": 900},
            )
            foreign, dialogs, csp = [], [], []

            def route(route):
                if route.request.url.startswith(server.url + "/"):
                    route.continue_()
                else:
                    foreign.append(route.request.url)
                    route.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.on("console", lambda msg: csp.append(msg.text) if "Content Security Policy" in msg.text else None)

            # the list: both groups, the fix and its confidence, the hostile script name as text
            page.goto(server.url + "/")
            rows = page.locator("table.groups tbody tr")
            assert rows.count() == 2
            listing = page.inner_text("table.groups")
            assert FIX in listing and HOSTILE_NAME in listing
            page.screenshot(path=str(ARTIFACTS / "list.png"), full_page=True)

            # a group: the hint in words, the observed fix, the paired bars
            page.click("a:has-text('tinylib')")
            page.wait_for_url(server.url + "/group/*")
            assert FIX in page.inner_text(".hint")
            assert "package tinylib is 2.0 here" in page.inner_text(".hint")
            assert page.locator("figure.feature svg.bars").count() >= 1
            page.screenshot(path=str(ARTIFACTS / "group.png"), full_page=True)
            group_url = page.url

            # the environment diff of the observed fix
            page.click("a:has-text('full diff')")
            diff = page.inner_text("table.diff")
            assert "package tinylib\t2.0\t1.0" in diff
            page.screenshot(path=str(ARTIFACTS / "diff.png"), full_page=True)
            page.goto(group_url)

            # resolve; the next failure makes the group regressed
            page.click("button[value=resolve]")
            page.wait_for_url(group_url)
            assert page.inner_text("h1 + p .status") == "resolved"
            _run(new, report, env, 1)
            server.wait_group("tinylib", lambda g: g["status"] == "regressed")
            page.reload()
            assert page.inner_text("h1 + p .status") == "regressed"
            page.goto(server.url + "/?status=regressed")
            assert page.locator("table.groups tbody tr").count() == 1
            assert "tinylib" in page.inner_text("table.groups")

            # the hostile group: shown as text, nothing runs, no javascript: link
            page.goto(server.url + "/?q=valueerror")
            page.click("table.groups a")
            page.wait_for_url(server.url + "/group/*")
            for summary in page.locator("details:not([open]) > summary").all():
                summary.click()
            trace = page.inner_text("details pre")
            assert '<script>window.pwned = 1; alert(1)</script>' in trace and 'onerror="window.pwned = 2' in trace
            assert HOSTILE_NAME in page.inner_text("details summary")
            assert page.evaluate("typeof window.pwned") == "undefined"
            assert page.locator("main img, main script, main svg[onload], a[href^='javascript']").count() == 0
            page.screenshot(path=str(ARTIFACTS / "hostile.png"), full_page=True)

            # the fleet: the agent sent this machine's host name with every beacon
            page.goto(server.url + "/fleet")
            fleet = page.inner_text("main")
            assert "1 machine(s) reported" in fleet and socket.gethostname() in fleet
            page.screenshot(path=str(ARTIFACTS / "fleet.png"), full_page=True)
            context.close()
        assert dialogs == []
        assert foreign == []
        assert csp == []
    finally:
        server.stop()

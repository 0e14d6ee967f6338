"""The dashboard over HTTP from a real server process: headers, sign-in, CSRF, triage, filters, host, fleet."""

from __future__ import annotations

import re

import pytest

from e2e.server_proc import ServerProcess

from .helpers import SIG, Browser, csrf_of, env_body, error_beacon, success_beacon

TOKEN = "s3cret-token"


@pytest.fixture
def start(db_target):
    """The server on each backend (SQLite, PostgreSQL where installed): the queries are the same SQL."""
    started = []

    def run(*args: str) -> Browser:
        assert not started, "one server per test: db_target is one database"
        server = ServerProcess(db_target, *args)
        started.append(server)
        return Browser(server.url)

    yield run
    for server in started:
        server.stop()


def _populate(browser: Browser, token=None) -> None:
    assert browser.post_json("/env", env_body("e1", {"tinylib": "2.0"}), token) == 201
    assert browser.post_json("/env", env_body("e2", {"tinylib": "1.0"}, python="3.12.1"), token) == 201
    for _ in range(3):
        assert (
            browser.post_json("/beacon", error_beacon("e1", "s1", script_name="report.py", host="build-7"), token)
            == 200
        )
    assert browser.post_json("/beacon", success_beacon("e2", "s1", "e1", host="laptop-3"), token) == 200


def test_pages_carry_the_security_headers_and_no_inline_script(start):
    browser = start()
    _populate(browser)
    for path in ("/", "/group/1", "/env/e1", "/diff?a=e1&b=e2", "/fleet", "/nowhere"):
        status, headers, page = browser.get(path)
        assert status == (404 if path == "/nowhere" else 200), (path, page)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["content-type"].startswith("text/html")
        assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/app.js" defer>'], path
        assert " style=" not in page and "<style" not in page
    assert browser.get("/static/app.js")[1]["content-type"].startswith("text/javascript")
    assert browser.get("/api/errors")[1]["x-content-type-options"] == "nosniff"


def test_with_a_token_the_pages_ask_for_it_once_then_use_an_httponly_cookie(start):
    browser = start("--token", TOKEN)
    _populate(browser, TOKEN)
    status, _, page = browser.get("/group/1")
    assert status == 401 and 'type="password"' in page and "tinylib" not in page
    assert 'name="next" value="/group/1"' in page
    assert browser.request("POST", "/login", form={"token": "wrong", "next": "/group/1"})[0] == 401
    assert "cea_session" not in browser.cookies
    status, headers, _ = browser.request("POST", "/login", form={"token": TOKEN, "next": "/group/1"})
    assert status == 303 and headers["location"] == "/group/1"
    session = [c for c in headers["set-cookie"].split("\n") if c.startswith("cea_session=")][0]
    assert "HttpOnly" in session and "SameSite=Strict" in session
    status, _, page = browser.get("/group/1")
    assert status == 200 and "tinylib" in page
    assert browser.api("/api/errors")["total"] == 1  # reading the API with the cookie
    assert browser.post_json("/beacon", error_beacon("e1", "s1")) == 401  # but not writing
    anonymous = Browser(browser.base)
    assert anonymous.get("/fleet")[0] == 401 and anonymous.get("/api/errors")[0] == 401
    status, headers, _ = anonymous.request("POST", "/login", form={"token": TOKEN, "next": "//evil.example/"})
    assert status == 303 and headers["location"] == "/"


def test_triage_needs_the_forms_csrf_token_and_a_resolved_group_regresses(start):
    browser = start()
    _populate(browser)
    status, _, page = browser.get("/group/1")
    csrf = csrf_of(page)
    assert browser.cookies["cea_csrf"] == csrf
    assert browser.request("POST", "/group/1/status", form={"action": "resolve"})[0] == 403
    assert browser.request("POST", "/group/1/status", form={"action": "resolve", "csrf": "0" * 32})[0] == 403
    other = Browser(browser.base)  # another browser's cookie does not match this form
    assert other.request("POST", "/group/1/status", form={"action": "resolve", "csrf": csrf})[0] == 403
    assert (
        browser.request(
            "POST",
            "/group/1/status",
            form={"action": "resolve", "csrf": csrf},
            headers={"Origin": "http://evil.example"},
        )[0]
        == 403
    )
    assert browser.request("POST", "/group/1/status", form={"action": "explode", "csrf": csrf})[0] == 400
    assert browser.api("/api/errors/1")["status"] == "new"

    status, headers, _ = browser.request("POST", "/group/1/status", form={"action": "resolve", "csrf": csrf})
    assert status == 303 and headers["location"] == "/group/1"
    assert browser.api("/api/errors/1")["status"] == "resolved"
    assert "status-resolved" in browser.get("/group/1")[2]
    assert browser.post_json("/beacon", error_beacon("e1", "s1")) == 200
    assert browser.api("/api/errors/1")["status"] == "regressed"
    assert [g["id"] for g in browser.api("/api/errors?status=regressed")["groups"]] == [1]
    assert browser.api("/api/errors?status=resolved")["total"] == 0

    browser.request("POST", "/group/1/status", form={"action": "ignore", "csrf": csrf})
    assert browser.post_json("/beacon", error_beacon("e1", "s1")) == 200
    assert browser.api("/api/errors/1")["status"] == "ignored"  # ignored stays ignored
    browser.request("POST", "/group/1/status", form={"action": "reopen", "csrf": csrf})
    assert browser.api("/api/errors/1")["status"] == "new"


def test_api_filters_sort_total_and_iso_times(start):
    browser = start()
    browser.post_json("/env", env_body("a", {"requests": "2.31.0"}))
    browser.post_json("/env", env_body("b", {"requests": "2.32.0"}, python="3.12.1"))
    for _ in range(3):
        browser.post_json("/beacon", error_beacon("a", "s1", "KeyError: 'k' @ etl.load", script_name="etl.py"))
    browser.post_json("/beacon", error_beacon("b", "s2", "ValueError: bad 100%_done @ app.run", script_name="app.py"))
    everything = browser.api("/api/errors")
    assert everything["total"] == 2 and everything["groups"][0]["signature"].startswith("ValueError")
    group = everything["groups"][0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", group["last_seen_iso"]) and group["status"] == "new"
    assert group["script_names"] == ["app.py"]
    assert [g["count"] for g in browser.api("/api/errors?sort=count")["groups"]] == [3, 1]
    assert [g["scripts"] for g in browser.api("/api/errors?package=requests==2.31.0")["groups"]] == [1]
    assert browser.api("/api/errors?package=Requests==2.32.0")["groups"][0]["signature"].startswith("ValueError")
    assert browser.api("/api/errors?python=3.12")["total"] == 1
    assert browser.api("/api/errors?python=3.11.7")["total"] == 1
    assert browser.api("/api/errors?script=s1")["groups"][0]["count"] == 3
    assert browser.api("/api/errors?q=100%25_done")["total"] == 1  # % and _ are literal
    assert browser.api("/api/errors?q=50%25")["total"] == 0
    page = browser.api("/api/errors?limit=1&offset=1")
    assert page["total"] == 2 and len(page["groups"]) == 1 and page["offset"] == 1
    status, _, body = browser.request("GET", "/api/errors?package=requests", headers={"Accept": "application/json"})
    assert status == 400 and "name==version" in body
    status, _, page = browser.get("/?package=requests")
    assert status == 400 and "name==version" in page and "<h1>Error 400</h1>" in page
    listing = browser.get("/?python=3.11&sort=count")[2]
    assert "KeyError" in listing and "ValueError" not in listing


def test_host_is_stored_and_shown_on_the_fleet_page(start):
    browser = start()
    _populate(browser)
    browser.post_json("/beacon", error_beacon("e2", "s9", "KeyError: 'x' @ a.b", host='<b>"evil-host"</b>'))
    recent = browser.api("/api/errors/1")["recent"]
    assert {r["host"] for r in recent} == {"build-7"}
    status, _, fleet = browser.get("/fleet")
    assert status == 200
    assert "build-7" in fleet and "laptop-3" in fleet and "&lt;b&gt;&quot;evil-host&quot;&lt;/b&gt;" in fleet
    assert "<b>\"evil-host\"" not in fleet
    assert "3 machine(s) reported" in fleet


def test_group_environment_and_diff_pages(start):
    browser = start()
    _populate(browser)
    page = browser.get("/group/1")[2]
    assert 'pip install &quot;tinylib==1.0&quot;' in page
    assert 'href="/diff?a=e1&amp;b=e2"' in page  # the observed fix, with its diff
    assert "<details open>" in page and "AttributeError: module &#x27;tinylib&#x27;" in page
    assert "report.py on build-7" in page and "<td>laptop-3</td>" in page  # hosts of the runs
    diff = browser.get("/diff?a=e1&b=e2")[2]
    assert re.search(r"package tinylib</td><td class=\"before\">2\.0</td><td class=\"after\">1\.0", diff)
    env = browser.get("/env/e1")[2]
    assert "tinylib" in env and "report.py" in env and 'href="/group/1"' in env
    assert browser.get("/env/nope")[0] == 404
    assert browser.get("/diff?a=e1&b=nope")[0] == 404
    assert browser.get("/group/99")[0] == 404
    assert SIG.split(" @ ")[0].replace("'", "&#x27;") in browser.get("/")[2]

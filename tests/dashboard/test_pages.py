"""Rendering and escaping of the dashboard pages (pure functions, no server)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from corp_error_server import pages
from corp_error_server.app import HTTPError, _group_query, _location, _safe_next, feature_diff
from corp_error_server.storage import GROUP_SORTS, GROUP_STATUSES

HOSTILE = (
    '<script>alert(1)</script>"\'><img src=x onerror=alert(2)> javascript:alert(3) '
    '</textarea></pre></details><svg onload=alert(4)>&amp;'
)
NOW = 1_800_000_000.0


class _Audit(HTMLParser):
    """Collects what a browser would treat as markup: tags, event-handler attributes, URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list = []
        self.handlers: list = []
        self.urls: list = []
        self.text: list = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name))
            if name in ("href", "src", "action", "formaction"):
                self.urls.append(value or "")

    def handle_data(self, data):
        self.text.append(data)


def audit(page: str) -> _Audit:
    parser = _Audit()
    parser.feed(page)
    parser.close()
    return parser


def assert_inert(page: str) -> _Audit:
    found = audit(page)
    assert found.handlers == []
    assert found.tags.count("script") == 1  # the one same-origin /static/app.js
    assert "img" not in found.tags
    assert all(u.startswith("/") and not u.startswith("//") or u.startswith("https://pypi.org/") for u in found.urls), (
        found.urls
    )
    assert HOSTILE.replace("&amp;", "&") in "".join(found.text) or "alert(1)" in "".join(found.text)
    return found


def _group(**extra) -> dict:
    group = {
        "id": 7,
        "group_key": HOSTILE.lower(),
        "signature": "ValueError: " + HOSTILE,
        "first_seen": NOW - 7200,
        "last_seen": NOW - 90,
        "count": 3,
        "failing_runs": 3,
        "succeeding_runs": 1,
        "status": "regressed",
        "status_at": NOW,
        "scripts": 4,
        "script_names": [HOSTILE + ".py", "b.py", "c.py"],
        "envs_affected": 2,
        "latest_env": "e1",
        "daily": [0] * 13 + [3],
        "suggestion": {
            "match": True,
            "confidence": 0.83,
            "solution": 'pip install "%s==1"' % HOSTILE,
            "hint": HOSTILE,
            "docs": "javascript:alert(9)",
            "evidence": {
                "failing_runs": 3,
                "succeeding_runs": 1,
                "observed_fixes": 1,
                "candidates": [
                    {
                        "feature": "pkg:" + HOSTILE,
                        "current": HOSTILE,
                        "suggested": "1",
                        "confidence": 0.83,
                        "fixes": 1,
                        "named_in_trace": True,
                        "runs": {HOSTILE: {"failing": 3, "succeeding": 0}, "1": {"failing": 0, "succeeding": 1}},
                    }
                ],
            },
        },
    }
    group.update(extra)
    return group


def test_list_page_escapes_every_wire_string():
    page = pages.groups_page(
        [_group()], 1, {"q": HOSTILE, "package": HOSTILE}, 50, 0, GROUP_STATUSES, list(GROUP_SORTS), NOW
    )
    found = assert_inert(page)
    assert "form" in found.tags and "svg" in found.tags
    assert 'href="/group/7"' in page
    assert "83%" in page and "regressed" in page
    assert '<time datetime="2027-01-15T07:58:30Z" title="2027-01-15 07:58:30Z">1 min ago</time>' in page


def test_group_page_escapes_traces_names_and_evidence():
    recent = [
        {
            "script_id": "s1",
            "script_name": HOSTILE,
            "env_hash": "e1",
            "host": HOSTILE,
            "ts": NOW,
            "received": NOW,
            "error_sig": HOSTILE,
            "trace": "Traceback:\n" + HOSTILE,
        }
    ]
    fixes = [
        {
            "failing_env": "e1",
            "fixed_env": "e2",
            "script_id": "s1",
            "script_name": HOSTILE,
            "host": HOSTILE,
            "received": NOW,
            "diff": [("pkg:" + HOSTILE, HOSTILE, "1")],
        }
    ]
    scripts = [
        {
            "script_id": "s1",
            "script_name": HOSTILE,
            "host": HOSTILE,
            "hosts": 2,
            "failing": 3,
            "succeeding": 0,
            "last_seen": NOW,
        }
    ]
    envs = [{"env_hash": "e1", "host": HOSTILE, "hosts": 1, "failing": 3, "succeeding": 0, "last_seen": NOW}]
    comparison = [
        {
            "feature": "pkg:" + HOSTILE,
            "score": 0.5,
            "runs": {HOSTILE: {"failing": 3, "succeeding": 0}, "1": {"failing": 0, "succeeding": 1}},
        }
    ]
    page = pages.group_page(
        _group(),
        _group()["suggestion"],
        comparison,
        fixes,
        [("2027-01-15", 3, 1)],
        recent,
        scripts,
        envs,
        {"e1": {"python_ver": HOSTILE, "os_info": HOSTILE}},
        "c" * 32,
        NOW,
    )
    found = assert_inert(page)
    assert found.tags.count("details") == 1 and "pre" in found.tags
    assert "javascript:alert(9)" not in " ".join(found.urls)  # docs link only for pypi.org
    assert '<input type="hidden" name="csrf" value="%s">' % ("c" * 32) in page
    assert 'action="/group/7/status"' in page and 'value="resolve"' in page
    assert "The 1 latest of 2 failing environments." in page


def test_environment_diff_and_fleet_pages_escape():
    env = {
        "env_hash": "e1",
        "received": NOW,
        "snapshot": {
            "python_ver": HOSTILE,
            "os_info": HOSTILE,
            "packages": {HOSTILE: HOSTILE},
            "env_vars": {"X": HOSTILE},
        },
        "groups": [
            {
                "group_id": 7,
                "signature": HOSTILE,
                "script_id": "s",
                "script_name": HOSTILE,
                "host": HOSTILE,
                "failing": 1,
                "succeeding": 0,
                "last_seen": NOW,
            }
        ],
    }
    assert_inert(pages.environment_page(env, NOW))
    assert_inert(pages.diff_page({"env_hash": "e1"}, {"env_hash": "e2"}, [("pkg:" + HOSTILE, HOSTILE, "1")], 3))
    hosts = [
        {"host": HOSTILE, "agent": HOSTILE, "python": HOSTILE, "os": HOSTILE, "envs": 1, "beacons": 2, "last_seen": NOW}
    ]
    assert_inert(pages.fleet_page(hosts, {HOSTILE: 1}, {HOSTILE: 1}, {HOSTILE: 1}, [("2027-01-15", 1, 2)], 14, NOW))
    assert_inert(pages.error_page(404, HOSTILE))


def test_login_page_keeps_only_a_local_next():
    assert _safe_next("//evil.example/x") == "/"
    assert _safe_next("https://evil.example/") == "/"
    assert _safe_next("/\\evil") == "/"
    assert _safe_next("/group/3?x=1") == "/group/3?x=1"
    # a redirect's target goes out in a header: percent-encoded past ASCII, unchanged within it
    assert _location("/\u20ac?q=\u00e9") == "/%E2%82%AC?q=%C3%A9"
    assert _location("/group/3?status=open&sort=last_seen#x") == "/group/3?status=open&sort=last_seen#x"
    page = pages.login_page('/"><script>alert(1)</script>', wrong=True)
    assert "<script>alert" not in page and 'type="password"' in page and "Wrong token" in page


def test_sparkline_and_charts_scale_to_the_largest_count():
    svg = pages.sparkline([0, 1, 2, 4])
    heights = [float(h) for h in re.findall(r'height="([\d.]+)"><title>', svg)]
    assert heights[0] == 0 and heights[-1] == 20 and heights[2] == 10
    assert "<title>4</title>" in svg
    bars = pages.paired_bars({"1.0": {"failing": 0, "succeeding": 3}, "2.0": {"failing": 4, "succeeding": 1}}, 4, 4)
    assert "100%" in bars and "75%" in bars and "25%" in bars
    chart = pages.time_chart([("2027-01-14", 2, 0), ("2027-01-15", 0, 1)])
    assert "2 failing" in chart and "1 succeeding" in chart


@pytest.mark.parametrize(
    "ts, text",
    [(NOW - 5, "5 s ago"), (NOW - 3 * 3600, "3 h ago"), (NOW - 40 * 86400, "1 mo ago"), (NOW + 60, "just now")],
)
def test_relative_times(ts, text):
    assert pages.relative(ts, NOW) == text


def test_exception_type_of_signatures():
    assert pages.exception_type("AttributeError: module 'x' has no attribute 'y' @ a.b") == "AttributeError"
    assert pages.exception_type("requests.exceptions.ConnectionError: refused") == "requests.exceptions.ConnectionError"
    assert pages.exception_type("not a signature at all") == "?"


def test_feature_diff_puts_the_interpreter_first():
    rows, same = feature_diff(
        {"python": "3.11", "pkg:a": "1", "pkg:b": "2", "os": "linux"},
        {"python": "3.12", "pkg:a": "1", "pkg:c": "3", "os": "linux"},
    )
    assert rows == [("python", "3.11", "3.12"), ("pkg:b", "2", "<absent>"), ("pkg:c", "<absent>", "3")]
    assert same == 2


@pytest.mark.parametrize(
    "params, message",
    [
        ({"status": "open"}, "status must be one of"),
        ({"sort": "name"}, "sort must be one of"),
        ({"package": "requests"}, "package must be name==version"),
        ({"python": "three"}, "python must be a version"),
        ({"limit": "0"}, "limit must be between"),
        ({"q": "x" * 201}, "q is longer"),
    ],
)
def test_bad_filters_name_the_parameter(params, message):
    with pytest.raises(HTTPError) as error:
        _group_query(params, 50)
    assert error.value.status == 400 and message in error.value.message


def test_filters_become_features():
    query = _group_query({"package": "Foo_Bar==1.2", "python": "3.11", "status": "resolved"}, 50)
    assert query.features == (("pkg:foo-bar", "1.2"), ("python", "3.11")) and query.status == "resolved"
    assert _group_query({"python": "3.11.7"}, 50).features == (("python_full", "3.11.7"),)


def test_handled_errors_are_marked():
    def page(handled):
        return pages.groups_page([_group(handled=handled)], 1, {}, 50, 0, GROUP_STATUSES, list(GROUP_SORTS), NOW)

    assert '<span class="handled">handled</span>' in page(3)
    assert '<span class="handled">1 handled</span>' in page(1)
    assert 'class="handled"' not in page(0)


def test_comparison_draws_features_that_vary_and_names_those_that_do_not():
    comparison = [
        {
            "feature": "pkg:tinylib",
            "score": 0.4,
            "runs": {"2.0": {"failing": 3, "succeeding": 0}, "1.0": {"failing": 0, "succeeding": 1}},
        },
        {"feature": "arch", "score": 0.0, "runs": {"x86_64": {"failing": 3, "succeeding": 1}}},
    ]
    html_text = pages._comparison(comparison, 3, 1)
    assert html_text.count('<figure class="feature">') == 1 and "package tinylib" in html_text
    assert "The same in every run: architecture x86_64." in html_text

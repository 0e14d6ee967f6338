"""Webhook alerts against real local HTTP endpoints: formats, bounded retries, and ingest never waiting."""

from __future__ import annotations

import io

import pytest

from corp_error_server.alerts import Alerts, parse_webhook
from e2e.server_proc import ServerProcess

from .helpers import Browser, WebhookReceiver, csrf_of, env_body, error_beacon, success_beacon


@pytest.fixture
def receivers():
    made = []

    def make(mode: str) -> WebhookReceiver:
        made.append(WebhookReceiver(mode))
        return made[-1]

    yield make
    for receiver in made:
        receiver.stop()


def test_parse_webhook():
    assert parse_webhook("slack=https://hooks.example/T1") == ("https://hooks.example/T1", "slack")
    assert parse_webhook("http://127.0.0.1:9/x?a=b") == ("http://127.0.0.1:9/x?a=b", "json")
    with pytest.raises(ValueError, match="scheme 'teams=ftp': expected http"):
        parse_webhook("teams=ftp://x")
    with pytest.raises(ValueError, match="no scheme") as refused:  # a URL without its scheme: a secret
        parse_webhook("hooks.slack.com/services/T0/B0/SECRETTOKEN")
    assert "SECRET" not in str(refused.value)


def _event(key: str):
    return [{"event": "new_group", "text": "New error group %s <b>&" % key, "group": {"id": 1}, "suggestion": None}]


def test_a_failing_webhook_is_retried_a_bounded_number_of_times(receivers):
    failing, refusing, fine = receivers("500"), receivers("400"), receivers("ok")
    alerts = Alerts(
        [parse_webhook(failing.url), parse_webhook(refusing.url), parse_webhook("slack=" + fine.url)],
        lambda key, new, regressed: _event(key),
        attempts=3,
        backoff=0.01,
    )
    try:
        alerts.note("group-a", new_group=True)
        assert fine.wait(1) == [{"text": "New error group group-a &lt;b&gt;&amp;"}]  # Slack's own escaping
        assert len(failing.wait(3)) == 3
        assert len(refusing.wait(1)) == 1
        alerts.note("group-b", new_group=True)  # a later event still goes out after the give-up
        assert len(fine.wait(2)) == 2 and len(failing.wait(6)) == 6
        # one sender posts in order: had the 4xx been retried, group-a would come twice before group-b
        assert [b["text"].split()[3] for b in refusing.wait(2)][:2] == ["group-a", "group-b"]
    finally:
        alerts.close()


def test_a_webhook_is_logged_by_scheme_and_host_only(receivers):
    failing, refusing = receivers("500"), receivers("400")
    log = io.StringIO()
    alerts = Alerts(
        [parse_webhook(failing.url + "/T0KEN?key=s3cret"), parse_webhook(refusing.url + "/T0KEN")],
        lambda key, new, regressed: _event(key),
        attempts=2,
        backoff=0.01,
        log=log,
    )
    try:
        alerts.note("group-a", new_group=True)
        assert len(failing.wait(2)) == 2 and len(refusing.wait(1)) == 1
    finally:
        alerts.close()
    for sender in alerts._senders:  # each logs what it gave up on before it takes the close
        sender.thread.join(timeout=30)
    lines = log.getvalue()
    assert "gave up" in lines and "not retried" in lines and "http://127.0.0.1:" in lines
    assert "T0KEN" not in lines and "s3cret" not in lines and "/hook" not in lines


def test_slow_and_failing_webhooks_never_slow_ingest(tmp_path, receivers):
    hanging, failing, generic, slack = receivers("hang"), receivers("500"), receivers("ok"), receivers("ok")
    server = ServerProcess(
        tmp_path / "errors.db",
        "--webhook",
        hanging.url,
        "--webhook",
        "json=" + failing.url,
        "--webhook",
        generic.url,
        "--webhook",
        "slack=" + slack.url,
    )
    try:
        browser = Browser(server.url)
        assert browser.post_json("/env", env_body("e1", {"tinylib": "2.0"})) == 201
        assert browser.post_json("/env", env_body("e2", {"tinylib": "1.0"})) == 201
        assert browser.post_json("/beacon", error_beacon("e1", "s1", script_name="report.py")) == 200
        hanging.wait(1)  # the hanging webhook now holds the alert's connection ...
        failing.wait(1)
        for _ in range(30):  # ... and ingest answers all the same
            assert browser.post_json("/beacon", error_beacon("e1", "s1")) == 200
        assert not hanging.release.is_set()
        new = generic.wait(1, lambda b: b["event"] == "new_group")[0]
        assert new["group"]["id"] == 1 and new["group"]["signature"].startswith("AttributeError")
        assert new["text"].startswith("New error group #1 AttributeError")
        assert slack.wait(1)[0] == {"text": new["text"]}

        # a fix becomes available: one alert with the command, not one per beacon after it
        assert browser.post_json("/beacon", success_beacon("e2", "s1", "e1")) == 200
        fix = generic.wait(1, lambda b: b["event"] == "suggestion")[0]
        assert fix["suggestion"]["solution"] == 'pip install "tinylib==1.0"'
        assert "Fix available" in fix["text"] and 'pip install "tinylib==1.0"' in fix["text"]

        # resolved, then failing again: a regression alert
        page = browser.get("/group/1")[2]
        assert browser.request("POST", "/group/1/status", form={"action": "resolve", "csrf": csrf_of(page)})[0] == 303
        assert browser.post_json("/beacon", error_beacon("e1", "s1")) == 200
        regression = generic.wait(1, lambda b: b["event"] == "regression")[0]
        assert regression["group"]["status"] == "regressed" and "failed again" in regression["text"]
        assert len([b for b in generic.bodies if b["event"] == "suggestion"]) == 1
        assert len([b for b in generic.bodies if b["event"] == "new_group"]) == 1
    finally:
        hanging.release.set()
        server.stop()

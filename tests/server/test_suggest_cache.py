"""What the server keeps of a group between requests (its engine input under the group's revision,
the pages' suggestions and comparisons) never changes an answer: a real server's /suggest and
/api/errors equal the engine run directly on what storage reads now, before and after new runs."""

from __future__ import annotations

import io
import json

import corp_error_agent
from conftest import env_body, error_beacon
from corp_error_server import engine
from corp_error_server.storage import open_storage

SIG = "AttributeError: module 'tinylib' has no attribute 'frobnicate' @ __main__.main"
_ENVS = {"bad%d" % i: {"tinylib": "1.0", "other": "1.%d" % (i % 3)} for i in range(6)}
_ENVS.update({"good%d" % i: {"tinylib": "2.0", "other": "1.%d" % (i % 3)} for i in range(6)})


def _success(env_hash: str, script_id: str, prev_env: str) -> dict:
    return {
        "kind": "success",
        "env_hash": env_hash,
        "script_id": script_id,
        "ts": 1700000001.0,
        "prev_env_hash": prev_env,
        "prev_error_sig": SIG,
    }


def _direct(db: str, env_hash: str) -> dict:
    storage = open_storage(db)
    try:
        data = storage.group_data(corp_error_agent.group_key(SIG))
        return engine.suggest(data, storage.env_features(env_hash))
    finally:
        storage.close()


def _asked(server, env_hash: str, script_id=None) -> dict:
    body = {"error_sig": SIG, "env_hash": env_hash}
    if script_id:
        body["script_id"] = script_id
    status, answer = server.request("POST", "/suggest", body)
    assert status == 200
    return answer


def _runs(server, bad: range, good: range) -> None:
    for i in bad:
        assert server.request("POST", "/beacon", error_beacon("bad%d" % (i % 6), "s%d" % (i % 2), SIG))[0] == 200
    for i in good:
        assert (
            server.request("POST", "/beacon", _success("good%d" % (i % 6), "s%d" % (i % 2), "bad%d" % (i % 6)))[0]
            == 200
        )


def test_kept_answers_equal_the_direct_computation_as_runs_arrive(server):
    for env_hash, packages in _ENVS.items():
        server.request("POST", "/env", env_body(env_hash, packages))
    _runs(server, range(2), range(1))
    asked = [(env, script) for env in ("bad0", "good1") for script in (None, "s0", "s1")]
    before = {q: _asked(server, *q) for q in asked}
    assert {q: _asked(server, *q) for q in asked} == before  # asked again: kept, the same
    assert before == {q: _direct(server.db, q[0]) for q in asked}
    listed = server.request("GET", "/api/errors")[1]["groups"][0]
    assert listed["suggestion"] == _direct(server.db, "bad1")  # the latest failing run's environment

    _runs(server, range(2, 14), range(1, 10))  # the group moves: every kept answer must go
    after = {q: _asked(server, *q) for q in asked}
    assert after == {q: _direct(server.db, q[0]) for q in asked}
    assert after[("bad0", None)]["match"] and after[("bad0", None)] != before[("bad0", None)]
    _runs(server, range(0), range(10, 14))  # successes only: the revision moves with them too
    latest = _asked(server, "bad0")
    assert latest == _direct(server.db, "bad0")
    assert latest["evidence"]["succeeding_runs"] > after[("bad0", None)]["evidence"]["succeeding_runs"]
    group = server.request("GET", "/api/errors")[1]["groups"][0]
    assert group["suggestion"] == _direct(server.db, "bad1") != listed["suggestion"]
    detail = server.request("GET", "/api/errors/%d" % group["id"])[1]
    storage = open_storage(server.db)
    data = storage.group_data(corp_error_agent.group_key(SIG))
    storage.close()
    assert json.dumps(detail["comparison"]) == json.dumps(engine.comparison(data))
    assert detail["suggestion"] == group["suggestion"]


def test_the_lists_suggestions_are_computed_after_ingest_before_any_page_asks(db_target):
    from corp_error_server import create_app

    storage = open_storage(db_target)
    app = create_app("", storage=storage)

    def post(path: str, body: dict) -> str:
        raw = json.dumps(body).encode()
        status = []
        app(
            {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": path,
                "CONTENT_LENGTH": str(len(raw)),
                "CONTENT_TYPE": "application/json",
                "wsgi.input": io.BytesIO(raw),
            },
            lambda s, h: status.append(s),
        )
        return status[0]

    try:
        for env_hash, packages in _ENVS.items():
            post("/env", env_body(env_hash, packages))
        for i in range(12):
            assert post("/beacon", error_beacon("bad%d" % (i % 6), "s1", SIG)).startswith("200")
            assert post("/beacon", _success("good%d" % (i % 6), "s1", "bad%d" % (i % 6))).startswith("200")
        assert app._ahead.wait_idle(60)
        key = corp_error_agent.group_key(SIG)
        head = storage.group_head(key)
        kept_under, kept = app._suggested[head.id]
        assert kept_under == (head.revision, head.latest_env) and kept["match"]
        assert kept == engine.suggest(storage.group_data(key), storage.env_features(head.latest_env))
    finally:
        app.close()


def test_the_engine_answers_alike_for_a_group_it_has_analysed_before():
    import copy
    import random

    from corp_error_server.engine import FixPair, GroupData

    rng = random.Random(7)
    envs = [
        {
            "pkg:tinylib": rng.choice(["1.0", "2.0"]),
            "pkg:other": "1.%d" % rng.randrange(3),
            "python": rng.choice(["3.11", "3.12"]),
        }
        for _ in range(40)
    ]
    for env in envs[::3]:  # requesters of another size: the fix evidence depends on it
        env.update({"env:V%d" % i: "1" for i in range(30)})
    counts: dict = {}
    fails = oks = 0
    for _ in range(300):
        env = rng.choice(envs)
        failed = (env["pkg:tinylib"] == "1.0") != (rng.random() < 0.1)  # a tenth flaky
        fails, oks = fails + failed, oks + (not failed)
        for feature, value in env.items():
            a, b = counts.setdefault(feature, {}).get(value, (0, 0))
            counts[feature][value] = (a + failed, b + (not failed))
    pairs = [FixPair(dict(env, **{"pkg:tinylib": "1.0"}), dict(env, **{"pkg:tinylib": "2.0"})) for env in envs[:2]]
    group = GroupData(fails, oks, counts, {"tinylib"}, pairs, "attributeerror: module 'tinylib'", 30)
    for requester in envs + envs:  # the second round from what the first kept
        assert engine.suggest(group, requester) == engine.suggest(copy.deepcopy(group), requester)
    answers = [engine.suggest(group, requester) for requester in envs]
    assert any(a["match"] for a in answers) and len({json.dumps(a, sort_keys=True) for a in answers}) > 1

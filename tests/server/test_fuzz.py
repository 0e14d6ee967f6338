"""Generated hostile requests against the WSGI application in-process: never a 5xx, store consistent."""

from __future__ import annotations

import io
import json
import random

from corp_error_server import create_app
from corp_error_server.storage import SQLiteStorage, open_storage
from pgsupport import db_rows
from reliability.server_fuzz import FIELDS as _FIELDS  # the wire fields, as the fuzzer of a real server knows them

_PATHS = ["/beacon", "/env", "/suggest", "/healthz", "/api/errors", "/api/errors/1", "/openapi.json", "/x", ""]
_METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "BREW"]


def _value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(12 if depth < 3 else 8)
    return [
        lambda: None,
        lambda: rng.random() < 0.5,
        lambda: rng.randint(-(2**63), 2**63),
        lambda: rng.random() * 1e12,
        lambda: rng.choice(["error", "success", "", "e1", "s1", "2024-01-01T00:00:00Z", "a==1", "MISSING"]),
        lambda: "".join(
            chr(rng.choice([0, 10, 27, 0x41, 0xE9, 0x2028, 0xD800, 0x1F600])) for _ in range(rng.randint(1, 9))
        ),
        lambda: "x" * rng.choice([11, 12, 13, 21, 121, 3000]),
        lambda: "'; DROP TABLE beacons; --",
        lambda: [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))],
        lambda: {rng.choice(_FIELDS + ["a", ""]): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))},
        lambda: ["pkg==%d" % rng.randint(0, 3), "weird", "a @ file:///x"],
        lambda: {"numpy": rng.choice(["1.0", None, 3, ""])},
    ][choice]()


def _body(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if kind == 1:
        return json.dumps(_value(rng)).encode()
    base = {
        "kind": rng.choice(["error", "success"]),
        "env_hash": "e%d" % rng.randrange(5),
        "script_id": "s1",
        "ts": 1.7e9,
        "error_sig": "ValueError: boom",
        "packages": ["a==1"],
        "python_ver": "3.11.7",
        "os_info": "Linux",
        "machine_arch": "x86_64",
    }
    for _ in range(rng.randint(0, 3)):
        base[rng.choice(_FIELDS)] = _value(rng)
    text = json.dumps(base, ensure_ascii=rng.random() < 0.5)
    return text.encode("utf-8", "surrogatepass")


def test_generated_requests_never_get_a_server_error(db_target):
    rng = random.Random(7)
    sqlite = "://" not in db_target
    storage = SQLiteStorage(db_target, synchronous="OFF") if sqlite else open_storage(db_target)
    app = create_app("", storage=storage, max_body=4096)
    statuses = {}
    for _ in range(4000):
        body = _body(rng)
        length = rng.choice([str(len(body)), str(len(body)), "", "-1", "abc", "99999999"])
        environ = {
            "REQUEST_METHOD": rng.choice(_METHODS if rng.random() < 0.2 else ["POST"]),
            "PATH_INFO": rng.choice(_PATHS if rng.random() < 0.3 else ["/beacon", "/env", "/suggest"]),
            "QUERY_STRING": rng.choice(["", "limit=5", "limit=x", "offset=-1"]),
            "CONTENT_TYPE": rng.choice(["application/json", "", "text/plain"]),
            "CONTENT_LENGTH": length,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
        }
        seen = []
        chunks = app(environ, lambda status, headers, exc=None: seen.append(status))  # noqa: B023 (called at once)
        payload = b"".join(chunks)
        code = int(seen[0].split()[0])
        assert code < 500, (environ, body, payload)
        if code >= 400:
            assert "error" in json.loads(payload)
        statuses[code] = statuses.get(code, 0) + 1
    storage.close()
    print("fuzz statuses:", statuses)
    assert statuses.get(200, 0) + statuses.get(204, 0) > 100  # the generator reaches the stores too
    if sqlite:
        assert db_rows(db_target, "PRAGMA integrity_check") == [("ok",)]
    # every counted run has a python feature: the counts, with the runs pending, agree with the group totals
    python_counts = dict(
        (g, (a, b))
        for g, a, b in db_rows(
            db_target,
            "SELECT group_id, SUM(fails), SUM(oks) FROM (SELECT group_id, fails, oks FROM counts WHERE feature = "
            "'python' UNION ALL SELECT group_id, fails, 0 FROM pending_counts) AS runs GROUP BY group_id",
        )
    )
    for group_id, fails, oks in db_rows(db_target, "SELECT id, fails, oks FROM groups"):
        assert tuple(python_counts.get(group_id, (0, 0))) == (fails, oks)
